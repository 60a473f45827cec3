"""Settings: config/hotline.toml, overridden by HOTLINE_<SECTION>__<KEY> environment variables.

The shipped file is the schema: every key and its type come from it, so a mistyped override or an
unknown key stops start-up with one line naming the key.
"""

from __future__ import annotations

import copy
import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG_DIR = PROJECT_ROOT / "config"
ENV_PREFIX = "HOTLINE_"


class SettingsError(Exception):
    """A setting is missing, unknown or of the wrong type; the message names the key."""


def config_dir() -> Path:
    return Path(os.environ.get("HOTLINE_CONFIG_DIR", DEFAULT_CONFIG_DIR))


def load_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise SettingsError(f"config file not found: {path}") from exc
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
    return Settings(data, cdir)
