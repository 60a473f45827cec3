"""Settings: config/hotline.toml, overridden by HOTLINE_<SECTION>__<KEY> environment variables.

The shipped file is the schema: every key and its type come from it, so a mistyped override or an
unknown key stops start-up with one line naming the key. ``RULES`` adds what a type cannot say (ranges,
allowed values); every value is checked against it, whether it came from a file, the environment or an
override, so ``hotline serve`` and ``hotline check`` refuse the same settings.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import math
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG_DIR = PROJECT_ROOT / "config"
ENV_PREFIX = "HOTLINE_"


class SettingsError(Exception):
    """A setting is missing, unknown or of the wrong type; the message names the key."""


def config_dir() -> Path:
    return Path(os.environ.get("HOTLINE_CONFIG_DIR", DEFAULT_CONFIG_DIR))


def load_toml(path: Path) -> dict[str, Any]:
    try:
        # utf-8-sig: Windows editors put a byte-order mark in front, which TOML itself does not allow.
        return tomllib.loads(path.read_bytes().decode("utf-8-sig"))
    except FileNotFoundError as exc:
        raise SettingsError(f"config file not found: {path}") from exc
    except IsADirectoryError as exc:
        raise SettingsError(f"config file {path} is a directory, not a file") from exc
    except OSError as exc:
        raise SettingsError(f"config file {path} cannot be read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise SettingsError(f"config file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"config file {path} is not valid TOML: {exc}") from exc


def _coerce(key: str, default: Any, raw: Any) -> Any:
    """Turn an override into the type of the shipped default, or fail naming the key."""
    want = type(default)
    if isinstance(raw, str) and want is not str:
        text = raw.strip()
        try:
            if want is bool:
                low = text.lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
                raise ValueError(text)
            if want is int:
                return int(text)
            if want is float:
                return float(text)
            if want in (list, dict):
                value = json.loads(text)
                if not isinstance(value, want):
                    raise ValueError(text)
                return value
        except ValueError as exc:
            raise SettingsError(f"setting {key}: expected {want.__name__}, got {raw!r}") from exc
    if want is float and isinstance(raw, int) and not isinstance(raw, bool):
        return float(raw)
    if not isinstance(raw, want) or (want is int and isinstance(raw, bool)):
        raise SettingsError(f"setting {key}: expected {want.__name__}, got {type(raw).__name__} {raw!r}")
    return raw


def _merge(key_path: str, base: dict[str, Any], over: Mapping[str, Any]) -> None:
    for name, value in over.items():
        key = f"{key_path}.{name}" if key_path else name
        if name not in base:
            raise SettingsError(f"unknown setting {key}")
        if isinstance(base[name], dict):
            if not isinstance(value, Mapping):
                raise SettingsError(f"setting {key}: expected a table")
            _merge(key, base[name], value)
        else:
            base[name] = _coerce(key, base[name], value)


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class Rule:
    """What a setting may hold beyond the type of its default. Numbers: ``lo``..``hi`` inclusive and
    ``above`` exclusive; ``choices``: allowed strings (compared case-insensitively with ``fold_case``);
    ``check``: returns what is wrong, or None. For a list, the rule applies to each item, which must be
    of type ``item``."""

    lo: float | None = None
    hi: float | None = None
    above: float | None = None
    choices: tuple[str, ...] = ()
    fold_case: bool = False
    check: Callable[[Any], str | None] | None = None
    item: type | None = None
    min_items: int = 0
    secret: bool = False  # never repeat the value in a message (a URL may carry a password)

    def describe(self) -> str:
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.above is not None:
            low = f"greater than {_number(self.above)}"
            return low if self.hi is None else f"{low} and at most {_number(self.hi)}"
        if self.lo is not None and self.hi is not None:
            return f"from {_number(self.lo)} to {_number(self.hi)}"
        if self.lo is not None:
            return f"at least {_number(self.lo)}"
        if self.hi is not None:
            return f"at most {_number(self.hi)}"
        return "valid"

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value`` (already of the default's type), or None."""
        if isinstance(value, list):
            if len(value) < self.min_items:
                return "must not be empty" if self.min_items == 1 else f"needs at least {self.min_items} items"
            for item in value:
                typed = self._item_typed(item)
                if typed and self.check is not None:
                    wrong = self.check(item)
                else:
                    wrong = self._item_what() if not typed or self._value(item) else None
                if wrong:
                    return f"each item must be {wrong}, got {item!r}"
            return None
        wrong = self._value(value)
        if wrong and self.secret:
            return f"must be {wrong}"
        return f"must be {wrong}, got {value!r}" if wrong else None

    def _item_typed(self, item: Any) -> bool:
        want = self.item or str
        return not isinstance(item, bool) and isinstance(item, int | float if want is float else want)

    def _item_what(self) -> str:
        if self.choices:
            return self.describe()
        kind = {int: "an integer", float: "a number"}.get(self.item or str, "a string")
        return kind if self.describe() == "valid" else f"{kind} {self.describe()}"

    def _value(self, value: Any) -> str | None:
        if self.check is not None:
            return self.check(value)
        if self.choices:
            seen = value.upper() if self.fold_case else value
            return None if seen in self.choices else self.describe()
        if not isinstance(value, int | float) or isinstance(value, bool):
            return None
        if ((self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi)
                or (self.above is not None and value <= self.above)):
            return self.describe()
        return None


def _timezone(value: str) -> str | None:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        return "an IANA time zone name such as Asia/Shanghai"
    return None


def _redis_url(value: str) -> str | None:
    if not value:
        return None
    want = "empty (the embedded server) or a redis://, rediss:// or unix:// URL"
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        return want
    if (parts.scheme in ("redis", "rediss") and parts.hostname) or (parts.scheme == "unix" and parts.path):
        return None
    return want


def _network(value: str) -> str | None:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return "an address or network such as 10.0.0.0/8"
    return None


PORT = Rule(lo=0, hi=65535)  # 0: any free port (the tests use it)
POSITIVE = Rule(above=0)  # durations, intervals, sizes and counts for which 0 or less means nothing
NON_NEGATIVE = Rule(lo=0)  # where 0 is documented: "off", "no limit", "at once"
AT_LEAST_1 = Rule(lo=1)
PROBABILITY = Rule(lo=0, hi=1)
NETWORKS = Rule(item=str, check=_network)
STRINGS = Rule(item=str)
# Heads of the text models (hotline.nlp.suggest.HEADS; not imported here: settings come first).
HEADS = ("category", "department", "type")

# Every number and list of config/hotline.toml has a rule (tests/test_config_fixes.py checks it); strings
# only where the allowed values are known.
RULES: dict[str, Rule] = {
    "server.port": PORT,
    "server.workers": Rule(lo=0, hi=64),  # 0: one per core; hotline.workers.check_workers
    "server.max_body_bytes": POSITIVE,
    "store.redis_url": Rule(check=_redis_url, secret=True),
    "store.appendfsync": Rule(choices=("always", "everysec", "no")),
    "store.idempotency_ttl_s": POSITIVE,
    "intake.max_text_bytes": POSITIVE,
    "intake.min_text_chars": AT_LEAST_1,
    "intake.timezone": Rule(check=_timezone),
    "intake.max_photos": NON_NEGATIVE,
    "intake.max_photo_bytes": POSITIVE,
    "nlp.confirm_threshold": PROBABILITY,
    "nlp.confirm_margin": PROBABILITY,
    "nlp.confirm_heads": Rule(item=str, choices=HEADS),
    # Above 1: always the table (a probability never reaches it).
    "nlp.department_fallback_below": NON_NEGATIVE,
    "logging.level": Rule(choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), fold_case=True),
    "callbacks.delay_s": NON_NEGATIVE,
    "callbacks.hours_start": Rule(lo=0, hi=23),
    "callbacks.hours_end": Rule(lo=1, hi=24),
    "callbacks.weekdays": Rule(item=int, lo=1, hi=7, min_items=1),
    "callbacks.answer_timeout_s": NON_NEGATIVE,
    "callbacks.max_attempts": AT_LEAST_1,
    "callbacks.max_agent_attempts": AT_LEAST_1,
    "callbacks.link_ttl_s": POSITIVE,
    "callbacks.poll_s": POSITIVE,
    "rates.basic_weight": PROBABILITY,
    "rates.weight_response": PROBABILITY,
    "rates.weight_resolution": PROBABILITY,
    "rates.weight_satisfaction": PROBABILITY,
    "rates.response_hours": POSITIVE,
    "rates.urgent_response_hours": POSITIVE,
    "rates.min_cases_for_ranking": NON_NEGATIVE,
    "dedup.auto_merge": Rule(above=0, hi=1),
    "dedup.suggest": Rule(above=0, hi=1),
    "dedup.default_window_days": POSITIVE,
    "dedup.index_keys": AT_LEAST_1,
    "dedup.posting_cap": AT_LEAST_1,
    "dedup.max_candidates": AT_LEAST_1,
    "dedup.hotspot_min_reporters": AT_LEAST_1,
    "dedup.hotspot_window_s": POSITIVE,
    "dedup.hotspot_similarity": PROBABILITY,
    "wechat.reply_deadline_s": POSITIVE,
    "wechat.max_body_bytes": POSITIVE,
    "wechat.max_clock_skew_s": NON_NEGATIVE,
    "wechat.window_s": POSITIVE,
    "wechat.window_quota": NON_NEGATIVE,
    "wechat.api_timeout_s": POSITIVE,
    "wechat.template_fields": STRINGS,
    "telegram.mode": Rule(choices=("webhook", "poll")),
    "telegram.max_body_bytes": POSITIVE,
    "telegram.max_voice_bytes": POSITIVE,
    "telegram.max_voice_seconds": POSITIVE,
    "telegram.request_timeout_s": POSITIVE,
    "telegram.conversation_timeout_s": NON_NEGATIVE,
    "kb.threshold": Rule(above=0, hi=1),
    "kb.suggest_threshold": PROBABILITY,
    "kb.suggestions": Rule(lo=1, hi=20),
    "kb.half_life_days": NON_NEGATIVE,
    "kb.max_age_days": NON_NEGATIVE,
    "kb.refresh_s": POSITIVE,
    "console.session_idle_s": POSITIVE,
    "console.session_max_s": POSITIVE,
    "console.login_max_failures": AT_LEAST_1,
    "console.login_ip_max_failures": AT_LEAST_1,
    "console.login_window_s": POSITIVE,
    "console.secure_cookies": Rule(choices=("auto", "always", "never")),
    "console.queue_limit": AT_LEAST_1,
    "console.search_scan_limit": AT_LEAST_1,
    "console.search_default_days": AT_LEAST_1,
    "console.supervision_due_soon_h": NON_NEGATIVE,
    "voice.max_streams": AT_LEAST_1,
    "voice.queue_wait_s": NON_NEGATIVE,
    "voice.max_queued": NON_NEGATIVE,
    "voice.stt_threads": AT_LEAST_1,
    "voice.warm_recognizers": Rule(lo=-1),  # -1: as many as max_streams
    "voice.recycle_after_s": POSITIVE,
    "voice.prewarm_s": NON_NEGATIVE,
    # 0: the model's own value; hotline.ivr.decoder checks the upper limits.
    "voice.decoder_beam": NON_NEGATIVE,
    "voice.decoder_max_active": NON_NEGATIVE,
    "voice.decoder_lattice_beam": NON_NEGATIVE,
    "voice.max_calls": NON_NEGATIVE,
    "voice.max_transcribe_s": POSITIVE,
    "voice.audiosocket_port": PORT,
    "voice.pbx_allow": NETWORKS,
    "voice.no_input_s": POSITIVE,
    "voice.end_silence_s": POSITIVE,
    "voice.max_complaint_s": POSITIVE,
    "voice.max_menu_s": POSITIVE,
    "voice.max_call_s": POSITIVE,
    "voice.digit_timeout_s": POSITIVE,
    "voice.vad_threshold": Rule(lo=0, hi=32768),  # RMS of 16-bit samples
    "voice.low_confidence": PROBABILITY,
    "voice.result_ttl_s": POSITIVE,
    "ari.ring_timeout_s": POSITIVE,
    "ari.connect_margin_s": NON_NEGATIVE,
    "ari.max_call_s": POSITIVE,
    "ari.max_concurrent_calls": AT_LEAST_1,
    "ari.request_timeout_s": POSITIVE,
    "dispatch.backend": Rule(choices=("stream", "open311", "webhook")),
    "dispatch.auto_confidence": PROBABILITY,
    "dispatch.max_attempts": AT_LEAST_1,
    "dispatch.backoff_base_s": POSITIVE,
    "dispatch.backoff_max_s": POSITIVE,
    "dispatch.request_timeout_s": POSITIVE,
    "dispatch.claim_idle_s": POSITIVE,
    "dispatch.concurrency": AT_LEAST_1,
    "dispatch.poll_interval_s": NON_NEGATIVE,
    "dispatch.event_max_age_s": POSITIVE,
    "dispatch.sweep_interval_s": POSITIVE,
    "dispatch.media_link_days": POSITIVE,
    "dispatch.open311_api_keys": STRINGS,
    "metrics.allow": NETWORKS,
    "limits.submit_per_minute": NON_NEGATIVE,
    "limits.lookup_per_minute": NON_NEGATIVE,
    "limits.survey_per_minute": NON_NEGATIVE,
    "limits.exempt": NETWORKS,
    "limits.trusted_proxies": NETWORKS,
}

# Pairs that only make sense in one order: (lower, upper, strictly lower).
ORDER: list[tuple[str, str, bool]] = [
    ("callbacks.hours_start", "callbacks.hours_end", True),  # no window across midnight
    ("dedup.suggest", "dedup.auto_merge", False),
    ("kb.suggest_threshold", "kb.threshold", False),
    ("dispatch.backoff_base_s", "dispatch.backoff_max_s", False),
    ("console.session_idle_s", "console.session_max_s", False),
]


def check_values(data: Mapping[str, Any]) -> None:
    """Refuse a value outside its rule, a number that is not finite, or a pair in the wrong order."""
    for section, values in data.items():
        for name, value in values.items() if isinstance(values, Mapping) else ():
            key = f"{section}.{name}"
            if isinstance(value, float) and not math.isfinite(value):
                raise SettingsError(f"setting {key}: must be a finite number, got {value!r}")
            rule = RULES.get(key)
            problem = rule.problem(value) if rule is not None else None
            if problem:
                raise SettingsError(f"setting {key}: {problem}")
    for low, high, strict in ORDER:
        (ls, lk), (hs, hk) = low.split("."), high.split(".")
        a, b = data[ls][lk], data[hs][hk]
        if a > b or (strict and a == b):
            raise SettingsError(f"setting {low}: must be {'below' if strict else 'at most'} {high}, "
                                f"got {_number(a)} and {_number(b)}")


class Settings:
    """Validated settings; read with ``settings["section"]["key"]`` or ``settings.get("section.key")``."""

    def __init__(self, data: dict[str, Any], config_dir: Path) -> None:
        self._data = data
        self.config_dir = config_dir

    def __getitem__(self, section: str) -> dict[str, Any]:
        return self._data[section]

    def get(self, dotted: str) -> Any:
        node: Any = self._data
        for part in dotted.split("."):
            node = node[part]
        return node

    def as_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self._data)

    @property
    def data_dir(self) -> Path:
        return Path(self._data["server"]["data_dir"]).expanduser().resolve()

    def resolve_path(self, dotted: str) -> Path:
        """A path setting, relative ones taken from the project root."""
        path = Path(self.get(dotted)).expanduser()
        return path if path.is_absolute() else PROJECT_ROOT / path


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    extra_file: Path | None = None,
) -> Settings:
    """Shipped file, then an optional site file, then the environment, then explicit overrides."""
    cdir = config_dir()
    data = load_toml(cdir / "hotline.toml")
    if extra_file is not None:
        _merge("", data, load_toml(extra_file))
    env = os.environ if env is None else env
    from_env: dict[str, dict[str, Any]] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX) :].partition("__")
        from_env.setdefault(section.lower(), {})[key.lower()] = value
    if env.get("REDIS_URL"):
        from_env.setdefault("store", {})["redis_url"] = env["REDIS_URL"]
    _merge("", data, from_env)
    if overrides:
        _merge("", data, overrides)
    check_values(data)
    return Settings(data, cdir)
