from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hotline.settings import SettingsError, load_settings


def test_shipped_defaults() -> None:
    s = load_settings(env={})
    assert s["server"]["port"] == 8080
    assert s["store"]["redis_url"] == ""


def test_environment_overrides_with_types() -> None:
    s = load_settings(env={"HOTLINE_SERVER__PORT": "9000", "HOTLINE_NLP__CONFIRM_THRESHOLD": "0.7",
                           "REDIS_URL": "redis://127.0.0.1:6390/0"})
    assert s["server"]["port"] == 9000
    assert s["nlp"]["confirm_threshold"] == 0.7
    assert s["store"]["redis_url"] == "redis://127.0.0.1:6390/0"


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"HOTLINE_SERVER__PORT": "eighty"}, "server.port"),
        ({"HOTLINE_NLP__CONFIRM_THRESHOLD": "high"}, "nlp.confirm_threshold"),
        ({"HOTLINE_SERVER__NO_SUCH_KEY": "1"}, "server.no_such_key"),
        ({"HOTLINE_NOSECTION__X": "1"}, "nosection"),
    ],
)
def test_bad_settings_name_the_key(env: dict[str, str], needle: str) -> None:
    with pytest.raises(SettingsError, match=needle.replace(".", r"\.")):
        load_settings(env=env)


def test_site_file_is_checked(tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    site.write_text('[server]\nport = "x"\n')
    with pytest.raises(SettingsError, match=r"server\.port"):
        load_settings(env={}, extra_file=site)
    site.write_text("[server\n")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(env={}, extra_file=site)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hotline", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_version() -> None:
    out = run_cli("--version")
    assert out.returncode == 0 and out.stdout.startswith("hotline ")


def test_bad_setting_stops_serve_with_one_line() -> None:
    out = run_cli("serve", env={"HOTLINE_SERVER__PORT": "eighty"})
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "server.port" in lines[0]
