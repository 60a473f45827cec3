"""``hotline check``: what would stop or weaken the service, before it goes live and after each change.

- ``hotline check [--data-dir D] [--config F] [--json]``

Each finding is ``ok``, ``warn`` (the service runs, but a part is missing or will misbehave) or ``error``
(``hotline serve`` would not start, or cases could not be stored). Exit status 1 when there is an error.
The checks use the service's own loaders: every feature is set up as ``serve`` does, and the configuration
each feature parses only when it starts (dedup thresholds and tables, callbacks, answers, dispatch, the
phone menu) is parsed by ``check_config``, which ``hotline serve`` runs too, so both refuse the same
settings. The text models are loaded and asked once, the store is pinged (the embedded server of a running
service, or one started for the check). A check that fails in an unforeseen way is an error finding, never
a traceback: with ``--json`` the last line printed is always the one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from hotline.commands.common import add_settings_args, open_store, settings_from_args
from hotline.settings import Settings, SettingsError
from hotline.workers import check_workers, worker_count

OK, WARN, ERROR = "ok", "warn", "error"
MIN_FREE_BYTES = 1 << 30  # below 1 GiB the AOF and recordings soon stop being written
SAMPLE = "小区门口的路灯坏了好几天，晚上很黑"


@dataclass
class Finding:
    level: str
    item: str
    detail: str


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("check", help="check configuration, models and store before going live")
    add_settings_args(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=run_check)


def one_line(exc: BaseException) -> str:
    """An exception as one line: a SettingsError names its key itself, anything else gets its type."""
    lines = str(exc).strip().splitlines()
    if isinstance(exc, SettingsError):
        return lines[0] if lines else "configuration error"
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


# Configuration the features parse only in their start-up hooks, which ``create_app`` does not run. Each
# entry calls the feature's own parser, without a store and without loading the models.

def _workers(settings: Settings) -> None:
    check_workers(settings, worker_count(settings, settings["server"]["workers"]))


def _dedup(settings: Settings) -> None:
    from hotline.dedup import DedupConfig, load_idf

    DedupConfig.from_settings(settings)  # thresholds, windows file, place words
    # A missing table is the service's own warning (every bigram weighs the same); a damaged one, say cut
    # off by a full disk, stops dedup_ctx in the middle of start-up.
    if settings.resolve_path("dedup.idf_file").is_file():
        try:
            load_idf(settings)
        except Exception as exc:
            raise SettingsError(f"dedup.idf_file: {one_line(exc)}; rebuild it with `hotline nlp build-dedup-idf`") \
                from exc


def _callbacks(settings: Settings) -> None:
    from hotline.rates_cases import RateSettings
    from hotline.surveys import CallbackSettings

    CallbackSettings.from_settings(settings["callbacks"], settings["intake"]["timezone"])
    RateSettings.from_settings(settings["rates"])


def _answers(settings: Settings) -> None:
    from hotline.nlp.answers import RetrievalConfig

    try:
        RetrievalConfig.from_settings(settings["kb"])
    except ValueError as exc:
        raise SettingsError(str(exc)) from exc


def _dispatch(settings: Settings) -> None:
    from hotline.dispatch.service import DispatchConfig

    DispatchConfig.from_section(settings["dispatch"])  # the tables: check_calendar


def _voice(settings: Settings) -> None:
    from hotline.ivr.feature import ivr_config, prompt_library

    if not settings["voice"]["enabled"]:
        return
    try:
        cfg = ivr_config(settings)
    except Exception as exc:
        raise SettingsError(f"voice.ivr_file: {settings.resolve_path('voice.ivr_file')}: {one_line(exc)}") from exc
    prompts = prompt_library(settings)
    prompts.preload([*cfg.prompts, "beep", *prompts.digits("0123456789")])


CONFIG_CHECKS: list[tuple[str, Callable[[Settings], None]]] = [
    ("server.workers", _workers), ("dedup", _dedup), ("callbacks", _callbacks), ("kb", _answers),
    ("dispatch", _dispatch), ("voice", _voice),
]


def config_problems(settings: Settings) -> list[str]:
    """One line for each feature that refuses its configuration."""
    problems = []
    for name, parse in CONFIG_CHECKS:
        try:
            parse(settings)
        except SettingsError as exc:
            problems.append(one_line(exc))
        except Exception as exc:  # any failure is a finding, not a traceback
            problems.append(f"{name}: {one_line(exc)}")
    return problems


def check_config(settings: Settings) -> None:
    """What ``hotline serve`` runs before it starts: the first problem as a SettingsError."""
    problems = config_problems(settings)
    if problems:
        raise SettingsError(problems[0])


def check_features(settings: Settings) -> list[Finding]:
    from hotline.app import FEATURE_MODULES, create_app

    try:
        app = create_app(settings)
    except Exception as exc:
        return [Finding(ERROR, "configuration", f"a feature refuses its settings: {one_line(exc)}")]
    problems = config_problems(settings)
    if problems:
        return [Finding(ERROR, "configuration", problem) for problem in problems]
    return [Finding(OK, "configuration", f"{len(FEATURE_MODULES)} features set up, {len(app.router.routes())} routes")]


def check_models(settings: Settings) -> Finding:
    from hotline.classifier import NoModelClassifier, load_classifier

    try:
        classifier = load_classifier(settings)
        started = time.perf_counter()
        suggestion = classifier.suggest(SAMPLE)
        ms = (time.perf_counter() - started) * 1000
    except Exception as exc:  # a damaged model file raises whatever its reader raises
        return Finding(ERROR, "text models", f"cannot load {settings.resolve_path('nlp.models_dir')}: "
                                             f"{one_line(exc)}")
    if isinstance(classifier, NoModelClassifier):
        return Finding(WARN, "text models", f"none in {settings.resolve_path('nlp.models_dir')}: every case "
                                            "goes to a call-taker without a suggestion")
    top = ((suggestion.get("category") or {}).get("top") or [{}])[0].get("label", "?")
    return Finding(OK, "text models", f"{classifier.name}; a sample complaint → {top} in {ms:.1f} ms")


def check_speech(settings: Settings) -> Finding:
    from hotline.ivr.feature import model_dir
    from hotline.ivr.stt import looks_like_model

    path = model_dir(settings)
    if looks_like_model(path):
        return Finding(OK, "speech model", str(path))
    return Finding(WARN, "speech model", f"none in {path}: calls are put through to a person; "
                                         "run `hotline models fetch small-cn`")


def check_calendar(settings: Settings) -> Finding:
    from hotline.dispatch.deadlines import WorkCalendar
    from hotline.dispatch.feature import site_tables

    try:
        tables = site_tables(settings)
    except (SettingsError, OSError) as exc:
        return Finding(ERROR, "dispatch tables", f"{exc}: `hotline serve` would stop at start-up")
    calendar = WorkCalendar.from_tables(tables, settings["intake"]["timezone"])
    missing = calendar.missing_years(time.time())
    if missing:
        return Finding(WARN, "holiday calendar", f"no holidays listed for {', '.join(map(str, missing))}: add "
                                                 "the State Council dates to [calendar] in the dispatch tables")
    years = sorted({d.year for d in tables.holidays})
    return Finding(OK, "holiday calendar", f"holidays listed for {', '.join(map(str, years))}")


def check_public_url(settings: Settings) -> Finding:
    url = str(settings["server"]["public_url"])
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not host:
        return Finding(ERROR, "public URL", f"server.public_url is not an http(s) URL: {url!r}")
    try:
        local = ipaddress.ip_address(host).is_loopback
    except ValueError:
        local = host == "localhost"
    if local:
        return Finding(WARN, "public URL", f"server.public_url is {url}: survey links sent to citizens and photo "
                                          "links in work orders point at this machine only")
    if parts.scheme != "https":
        return Finding(WARN, "public URL", f"{url} is not https: citizens' survey links travel in clear text")
    return Finding(OK, "public URL", url)


def without_password(url: str) -> str:
    """The store's URL as an operator may see it on screen and in CI logs: the password replaced by ***."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.hostname or ""
        host = f"[{host}]" if ":" in host else host
        port = f":{parts.port}" if parts.port is not None else ""
        user = parts.username or ""
        return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))
    except ValueError:  # unparsable: say nothing of it rather than risk repeating a secret
        return "(store.redis_url)"


async def check_store(settings: Settings) -> list[Finding]:
    out = []
    try:
        async with open_store(settings) as store:
            up = await asyncio.wait_for(store.ping(), 5)
    except (OSError, RuntimeError, TimeoutError, ValueError) as exc:
        up, reason = False, str(exc) or type(exc).__name__
    else:
        reason = "no answer to PING"
    where = without_password(settings["store"]["redis_url"]) or f"embedded, in {settings.data_dir / 'redis'}"
    out.append(Finding(OK, "store", where) if up else Finding(ERROR, "store", f"{where}: {reason}"))
    data_dir = settings.data_dir
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=data_dir, prefix=".check-"):
            pass
        free = shutil.disk_usage(data_dir).free
    except OSError as exc:
        out.append(Finding(ERROR, "data directory", f"{data_dir} is not writable: {exc}"))
        return out
    level = OK if free >= MIN_FREE_BYTES else WARN
    out.append(Finding(level, "data directory", f"{data_dir}, {free / (1 << 30):.1f} GiB free"))
    return out


def run_checks(settings: Settings) -> list[Finding]:
    checks: list[tuple[str, Callable[[], Finding | list[Finding]]]] = [
        ("configuration", lambda: check_features(settings)),
        ("text models", lambda: check_models(settings)),
        ("speech model", lambda: check_speech(settings)),
        ("dispatch tables", lambda: check_calendar(settings)),
        ("public URL", lambda: check_public_url(settings)),
        ("store", lambda: asyncio.run(check_store(settings))),
    ]
    findings: list[Finding] = []
    for item, check in checks:
        try:
            found = check()
        except Exception as exc:  # one broken part must not hide the report on the others
            found = Finding(ERROR, item, one_line(exc))
        findings += found if isinstance(found, list) else [found]
    return findings


def run_check(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
    except Exception as exc:  # reported like the others, so that --json stays JSON
        findings = [Finding(ERROR, "settings", one_line(exc))]
    else:
        findings = run_checks(settings)
    failed = any(f.level == ERROR for f in findings)
    if args.json:
        out: dict[str, Any] = {"ok": not failed, "findings": [asdict(f) for f in findings]}
        print(json.dumps(out, ensure_ascii=False))
    else:
        marks = {OK: "ok   ", WARN: "WARN ", ERROR: "ERROR"}
        for f in findings:
            print(f"{marks[f.level]} {f.item}: {f.detail}")
    return 1 if failed else 0
