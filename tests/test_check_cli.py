"""``hotline check``: the preflight a site runs before going live, on real configuration, models and store."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest

from hotline.cli import main
from hotline.redis_server import EmbeddedRedis


def run(capsys: pytest.CaptureFixture[str], tmp_path: Path, site: str = "") -> tuple[int, dict[str, Any]]:
    args = ["check", "--data-dir", str(tmp_path / "data"), "--json"]
    if site:
        (tmp_path / "site.toml").write_text(site, encoding="utf-8")
        args += ["--config", str(tmp_path / "site.toml")]
    code = main(args)
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    return code, out


def by_item(out: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {f["item"]: f for f in out["findings"]}


def test_a_fresh_data_dir_passes_with_the_missing_pieces_named(capsys: pytest.CaptureFixture[str],
                                                               tmp_path: Path) -> None:
    code, out = run(capsys, tmp_path)
    found = by_item(out)
    assert code == 0 and out["ok"] is True
    assert found["configuration"]["level"] == "ok" and found["text models"]["level"] == "ok"
    assert "a sample complaint →" in found["text models"]["detail"]
    # The embedded store was started for the check in the given data dir, and answered.
    assert found["store"]["level"] == "ok" and str(tmp_path / "data") in found["store"]["detail"]
    assert found["data directory"]["level"] in ("ok", "warn")
    speech = found["speech model"]
    assert speech["level"] == "warn" and "hotline models fetch small-cn" in speech["detail"]
    # The shipped public_url is the loopback default: links to citizens would not work.
    assert found["public URL"]["level"] == "warn"


def test_a_site_config_with_a_public_https_url_and_an_external_store(capsys: pytest.CaptureFixture[str],
                                                                      tmp_path: Path,
                                                                      redis_server: EmbeddedRedis) -> None:
    site = f'[server]\npublic_url = "https://12345.example.gov.cn"\n[store]\nredis_url = "{redis_server.url}"\n'
    code, out = run(capsys, tmp_path, site)
    found = by_item(out)
    assert code == 0
    assert found["public URL"] == {"level": "ok", "item": "public URL", "detail": "https://12345.example.gov.cn"}
    assert found["store"]["level"] == "ok" and found["store"]["detail"] == redis_server.url


def test_what_would_stop_the_service_is_an_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    site = (f'[store]\nredis_url = "redis://127.0.0.1:{closed}"\n'
            f'[dispatch]\ntables_file = "{tmp_path / "missing.toml"}"\n[server]\npublic_url = "ftp://x"\n')
    code, out = run(capsys, tmp_path, site)
    found = by_item(out)
    assert code == 1 and out["ok"] is False
    assert found["store"]["level"] == "error"
    assert found["dispatch tables"]["level"] == "error" and "missing.toml" in found["dispatch tables"]["detail"]
    assert found["public URL"]["level"] == "error"


def test_unknown_settings_are_named(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out = run(capsys, tmp_path, '[wechat]\ntokn = "typo"\n')
    assert code == 1 and out["findings"] == [
        {"level": "error", "item": "settings", "detail": "unknown setting wechat.tokn"}]


def test_holiday_table_without_the_coming_year_is_a_warning(capsys: pytest.CaptureFixture[str],
                                                            tmp_path: Path) -> None:
    tables = Path(__file__).resolve().parent.parent / "config" / "dispatch.toml"
    text = tables.read_text(encoding="utf-8").replace('holidays = [', 'holidays = ["2000-01-01", ', 1)
    text = "\n".join(line for line in text.splitlines() if not line.startswith('  "2026-'))
    (tmp_path / "dispatch.toml").write_text(text, encoding="utf-8")
    code, out = run(capsys, tmp_path, f'[dispatch]\ntables_file = "{tmp_path / "dispatch.toml"}"\n')
    calendar = by_item(out)["holiday calendar"]
    assert code == 0 and calendar["level"] == "warn" and "no holidays listed for 20" in calendar["detail"]
