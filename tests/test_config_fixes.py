"""Settings are range-checked in one place, and ``hotline check`` and ``hotline serve`` refuse the same ones.

``hotline check`` used to pass settings that ``hotline serve`` then refused or crashed on, both printed
tracebacks for ordinary mistakes (a mistyped time zone, a taken port, a config path that is a directory),
and values of the right type but an impossible size (a negative poll interval that made a worker spin)
were taken. These run ``hotline.cli.main`` in this process: serve stops before it listens in all but one.
The last ones run ``hotline serve`` as a process, to see all it prints when it cannot start.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from hotline.cli import main
from hotline.redis_server import EmbeddedRedis
from hotline.settings import PROJECT_ROOT, RULES, SettingsError, load_settings, load_toml
from hotline.workers import WorkerPool
from tests.process_support import serve_env

SHIPPED = PROJECT_ROOT / "config" / "hotline.toml"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- D9: ranges ------------------------------------------------------------------------------------------

def test_every_number_and_list_of_the_shipped_file_has_a_rule() -> None:
    shipped = tomllib.loads(SHIPPED.read_text(encoding="utf-8"))
    keys = {f"{section}.{name}": value for section, values in shipped.items() for name, value in values.items()}
    unruled = [k for k, v in keys.items() if isinstance(v, int | float | list) and not isinstance(v, bool)
               and k not in RULES]
    assert unruled == []
    assert [k for k in RULES if k not in keys] == []
    load_settings(env={})  # the shipped values keep their own rules


@pytest.mark.parametrize(("env", "key", "allowed"), [
    ({"HOTLINE_CALLBACKS__POLL_S": "-1"}, "callbacks.poll_s", "greater than 0"),
    ({"HOTLINE_SERVER__MAX_BODY_BYTES": "-1"}, "server.max_body_bytes", "greater than 0"),
    ({"HOTLINE_CALLBACKS__WEEKDAYS": '[0, 9, "x"]'}, "callbacks.weekdays", "an integer from 1 to 7"),
    ({"HOTLINE_CALLBACKS__WEEKDAYS": '[1, "x"]'}, "callbacks.weekdays", "an integer from 1 to 7"),
    ({"HOTLINE_CALLBACKS__WEEKDAYS": "[]"}, "callbacks.weekdays", "must not be empty"),
    ({"HOTLINE_CALLBACKS__HOURS_START": "22", "HOTLINE_CALLBACKS__HOURS_END": "3"}, "callbacks.hours_start",
     "below callbacks.hours_end"),
    ({"HOTLINE_STORE__IDEMPOTENCY_TTL_S": "-5"}, "store.idempotency_ttl_s", "greater than 0"),
    ({"HOTLINE_INTAKE__MIN_TEXT_CHARS": "-3"}, "intake.min_text_chars", "at least 1"),
    ({"HOTLINE_WECHAT__REPLY_DEADLINE_S": "inf"}, "wechat.reply_deadline_s", "finite"),
    ({"HOTLINE_NLP__CONFIRM_THRESHOLD": "nan"}, "nlp.confirm_threshold", "finite"),
    ({"HOTLINE_NLP__CONFIRM_THRESHOLD": "7"}, "nlp.confirm_threshold", "from 0 to 1"),
    ({"HOTLINE_NLP__CONFIRM_HEADS": "[1, 2]"}, "nlp.confirm_heads", "one of category, department, type"),
    ({"HOTLINE_NLP__CONFIRM_HEADS": '["nonsense"]'}, "nlp.confirm_heads", "one of category, department, type"),
    ({"HOTLINE_SERVER__PORT": "99999"}, "server.port", "from 0 to 65535"),
    ({"HOTLINE_SERVER__WORKERS": "-3"}, "server.workers", "from 0 to 64"),
    ({"HOTLINE_LOGGING__LEVEL": "LOUD"}, "logging.level", "one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
    ({"HOTLINE_INTAKE__TIMEZONE": "Mars/Olympus"}, "intake.timezone", "IANA time zone"),
    ({"REDIS_URL": "garbage"}, "store.redis_url", "redis://, rediss:// or unix://"),
    ({"HOTLINE_DEDUP__AUTO_MERGE": "0.2", "HOTLINE_DEDUP__SUGGEST": "0.9"}, "dedup.suggest",
     "at most dedup.auto_merge"),
    ({"HOTLINE_DEDUP__DEFAULT_WINDOW_DAYS": "-1"}, "dedup.default_window_days", "greater than 0"),
    ({"HOTLINE_LIMITS__EXEMPT": '["10.0.0.0/33"]'}, "limits.exempt", "an address or network"),
])
def test_values_out_of_range_name_the_key_and_the_range(env: dict[str, str], key: str, allowed: str) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(env=env)
    assert f"setting {key}: " in str(err.value) and allowed in str(err.value)


def test_a_file_the_environment_and_overrides_are_checked_alike(tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    site.write_text("[callbacks]\npoll_s = -1.0\n", encoding="utf-8")
    for kwargs in ({"extra_file": site}, {"env": {"HOTLINE_CALLBACKS__POLL_S": "-1"}},
                   {"overrides": {"callbacks": {"poll_s": -1.0}}}):
        with pytest.raises(SettingsError, match=r"callbacks\.poll_s: must be greater than 0, got -1\.0"):
            load_settings(**{"env": {}, **kwargs})


def test_ranges_keep_the_edges_the_tests_and_readme_use() -> None:
    edges: dict[str, Any] = {"server": {"port": 0}, "voice": {"prewarm_s": 0.0, "audiosocket_port": 0,
                                                             "warm_recognizers": -1},
                             "callbacks": {"delay_s": 0, "answer_timeout_s": 0, "hours_start": 0, "hours_end": 24},
                             "nlp": {"department_fallback_below": 1.01, "confirm_threshold": 1.0},
                             "logging": {"level": "debug"}, "limits": {"submit_per_minute": 0}}
    load_settings(overrides=edges, env={"REDIS_URL": "unix:///tmp/valkey.sock"})
    for beyond in ({"server": {"port": -1}}, {"server": {"port": 65536}}, {"callbacks": {"poll_s": 0.0}},
                   {"callbacks": {"hours_start": 24, "hours_end": 24}}, {"voice": {"warm_recognizers": -2}}):
        with pytest.raises(SettingsError):
            load_settings(overrides=beyond, env={})


def test_a_bad_redis_url_is_refused_without_repeating_its_password() -> None:
    with pytest.raises(SettingsError, match=r"store\.redis_url") as err:
        load_settings(env={"REDIS_URL": "redis//:s3cret@db.example:6379"})
    assert "s3cret" not in str(err.value)
    with pytest.raises(SettingsError, match=r"store\.redis_url"):
        load_settings(env={"REDIS_URL": "redis://:s3cret@db.example:99999"})


# -- D3: unreadable config files -------------------------------------------------------------------------

def test_config_files_that_cannot_be_read_are_settings_errors(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="is a directory"):
        load_toml(tmp_path)
    latin = tmp_path / "latin1.toml"
    latin.write_bytes('[wechat]\ntoken = "caf\u00e9"\n'.encode("latin-1"))
    with pytest.raises(SettingsError, match="not UTF-8"):
        load_toml(latin)
    # Windows editors save with a byte-order mark; TOML does not allow one, people do not see it.
    bom = tmp_path / "bom.toml"
    bom.write_bytes(b"\xef\xbb\xbf[server]\nport = 8081\n")
    assert load_settings(env={}, extra_file=bom)["server"]["port"] == 8081


# -- D2 and D3: hotline check ----------------------------------------------------------------------------

def check(capsys: pytest.CaptureFixture[str], tmp_path: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    code = main(["check", "--data-dir", str(tmp_path / "data"), "--json", *extra])
    out = capsys.readouterr().out.strip().splitlines()
    return code, json.loads(out[-1])


def site_file(tmp_path: Path, text: str) -> Path:
    site = tmp_path / "site.toml"
    site.write_text(text, encoding="utf-8")
    return site


def cut_idf(tmp_path: Path, mid_character: bool) -> Path:
    """The shipped bigram table as a build stopped by a full disk leaves it."""
    data = (PROJECT_ROOT / "config" / "dedup_idf.tsv").read_bytes()[:20000]
    end = data.rindex(b"\n")
    cut = data[:end - 1]  # within the last line: its count loses a digit
    if mid_character:
        end = data.rindex(b"\n", 0, end)
        while data[end + 1] < 0x80:  # a line that starts with a Chinese character (three bytes)
            end = data.rindex(b"\n", 0, end)
        cut = data[:end + 2]
    path = tmp_path / "idf.tsv"
    path.write_bytes(cut)
    return path


SERVE_REFUSES = [
    ("[dedup]\nauto_merge = 0.2\nsuggest = 0.9\n", "dedup.suggest"),
    ('[dedup]\nwindows_file = "{tmp}/no-such-windows.toml"\n', "dedup.windows_file"),
    ("[dedup]\ndefault_window_days = -1.0\n", "dedup.default_window_days"),
    ("[server]\nworkers = -3\n", "server.workers"),
    ("[server]\nport = -5\n", "server.port"),
    ("[server]\nport = 99999\n", "server.port"),
    ('[logging]\nlevel = "LOUD"\n', "logging.level"),
    ('[dedup]\nidf_file = "{tmp}/idf.tsv"\n', "dedup.idf_file"),
    ("[kb]\nthreshold = 0.3\nsuggest_threshold = 0.5\n", "kb.suggest_threshold"),
    ('[telegram]\ntoken = "1:x"\n[server]\nworkers = 2\n', "telegram.mode"),
]


@pytest.mark.parametrize(("text", "key"), SERVE_REFUSES)
def test_check_fails_on_what_serve_refuses(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch, redis_server: EmbeddedRedis,
                                           text: str, key: str) -> None:
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    cut_idf(tmp_path, mid_character=False)
    site = site_file(tmp_path, text.format(tmp=tmp_path))
    code, out = check(capsys, tmp_path, "--config", str(site))
    errors = [f for f in out["findings"] if f["level"] == "error"]
    assert code == 1 and out["ok"] is False
    assert any(key in f["detail"] and f["item"] in ("settings", "configuration") for f in errors), errors
    # serve refuses it with the same words, before it starts anything (no store, no port).
    monkeypatch.setattr("hotline.commands.serve.setup_logging", lambda *a, **k: None)
    code = main(["serve", "--data-dir", str(tmp_path / "serve"), "--config", str(site)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("hotline: configuration error: ") and key in lines[0]
    assert not (tmp_path / "serve").exists()


def test_a_table_cut_mid_character_stops_serve_with_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             redis_server: EmbeddedRedis) -> None:
    # Before, serve started the store and the models and then died of a UnicodeDecodeError.
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setattr("hotline.commands.serve.setup_logging", lambda *a, **k: None)
    path = cut_idf(tmp_path, mid_character=True)
    site = site_file(tmp_path, f'[dedup]\nidf_file = "{path}"\n')
    code = main(["serve", "--data-dir", str(tmp_path / "data"), "--config", str(site), "--port", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "dedup.idf_file" in err[0] and "not UTF-8" in err[0]


@pytest.mark.parametrize(("config", "needle"), [
    ('[intake]\ntimezone = "Mars/Olympus"\n', "intake.timezone"),
    ("DIRECTORY", "is a directory"),
    ("LATIN1", "not UTF-8"),
])
def test_check_reports_unreadable_settings_as_json(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                   config: str, needle: str) -> None:
    if config == "DIRECTORY":
        path = tmp_path / "conf.d"
        path.mkdir()
    elif config == "LATIN1":
        path = tmp_path / "site.toml"
        path.write_bytes('[wechat]\ntoken = "caf\u00e9"\n'.encode("latin-1"))
    else:
        path = site_file(tmp_path, config)
    code, out = check(capsys, tmp_path, "--config", str(path))
    assert code == 1 and out["ok"] is False
    assert out["findings"][0]["item"] == "settings" and needle in out["findings"][0]["detail"]
    assert "\n" not in out["findings"][0]["detail"]


def test_a_damaged_model_is_an_error_finding_and_the_other_checks_still_report(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # The shipped models, copied, with the category head's weights cut off as by a full disk.
    models = tmp_path / "models"
    shutil.copytree(PROJECT_ROOT / "models", models)
    coef = models / "category" / "coef.npz"
    coef.write_bytes(coef.read_bytes()[:100])
    code, out = check(capsys, tmp_path, "--config", str(site_file(tmp_path, f'[nlp]\nmodels_dir = "{models}"\n')))
    found = {f["item"]: f for f in out["findings"]}
    assert code == 1
    assert found["text models"]["level"] == "error" and "coef.npz" in found["text models"]["detail"]
    assert "\n" not in found["text models"]["detail"]
    assert found["store"]["level"] == "ok" and found["configuration"]["level"] == "ok"


# -- D4: hotline serve start-up failures -------------------------------------------------------------------

@pytest.fixture
def quiet_serve(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, key_prefix: str) -> None:
    """serve in this process: the test's log handler stays, the heap is not frozen, nothing fixed-port."""
    async def no_freeze(_app: Any) -> None:
        return None

    monkeypatch.setattr("hotline.commands.serve.setup_logging", lambda *a, **k: None)
    monkeypatch.setattr("hotline.commands.serve.freeze_heap", no_freeze)
    for name, value in {"HOTLINE_VOICE__AUDIOSOCKET_PORT": "0", "HOTLINE_VOICE__PREWARM_S": "0",
                        "HOTLINE_STORE__KEY_PREFIX": key_prefix}.items():
        monkeypatch.setenv(name, value)


def serve_line(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["serve", *args])
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("{")]
    assert len(lines) == 1, lines
    return code, lines[0]


@pytest.mark.usefixtures("quiet_serve")
def test_serve_on_a_taken_port_says_so_in_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   redis_server: EmbeddedRedis) -> None:
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, line = serve_line(capsys, "--data-dir", str(tmp_path / "data"), "--port", str(port))
    assert code == 1 and line == f"hotline: cannot start: 127.0.0.1:{port} is already in use (another hotline serve?)"


@pytest.mark.usefixtures("quiet_serve")
def test_a_worker_pool_on_a_taken_port_says_so_instead_of_restarting_workers(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        redis_server: EmbeddedRedis) -> None:
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, line = serve_line(capsys, "--data-dir", str(tmp_path / "data"), "--port", str(port), "--workers", "2")
    assert code == 1 and line == f"hotline: cannot start: 127.0.0.1:{port} is already in use (another hotline serve?)"


@pytest.mark.usefixtures("quiet_serve")
def test_telegram_poll_on_a_taken_port_says_so_in_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           redis_server: EmbeddedRedis) -> None:
    """`hotline telegram poll` is the whole service too: the same one line, not a traceback."""
    monkeypatch.setattr("hotline.commands.telegram.setup_logging", lambda *a, **k: None)
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("HOTLINE_TELEGRAM__TOKEN", "123456:TEST")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["telegram", "poll", "--data-dir", str(tmp_path / "data"), "--port", str(port)])
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("{")]
    assert code == 1
    assert lines == [f"hotline: cannot start: 127.0.0.1:{port} is already in use (another hotline serve?)"]


@pytest.mark.usefixtures("quiet_serve")
def test_serve_with_a_store_that_does_not_answer_says_so_in_one_line(capsys: pytest.CaptureFixture[str],
                                                                     tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    port = closed_port()
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{port}")
    code, line = serve_line(capsys, "--data-dir", str(tmp_path / "data"), "--port", "0")
    assert code == 1 and line.startswith("hotline: cannot start: REDIS_URL / store.redis_url does not answer: ")
    assert f"127.0.0.1:{port}" in line


@pytest.mark.usefixtures("quiet_serve")
def test_serve_with_a_data_dir_under_a_file_says_so_in_one_line(capsys: pytest.CaptureFixture[str],
                                                                tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    code, line = serve_line(capsys, "--data-dir", str(tmp_path / "afile" / "var"), "--port", "0")
    assert code == 1 and line.startswith("hotline: cannot start: Not a directory: ")


@pytest.mark.parametrize(("args", "env", "key"), [
    (["--port", "-1"], {}, "server.port"),
    (["--port", "0"], {"HOTLINE_LOGGING__LEVEL": "LOUD"}, "logging.level"),
    (["--port", "0"], {"HOTLINE_INTAKE__TIMEZONE": "Mars/Olympus"}, "intake.timezone"),
    (["--port", "0"], {"REDIS_URL": "garbage"}, "store.redis_url"),
])
def test_serve_refuses_bad_settings_before_it_starts(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch, args: list[str],
                                                     env: dict[str, str], key: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, line = serve_line(capsys, "--data-dir", str(tmp_path / "data"), *args)
    assert code == 2 and line.startswith(f"hotline: configuration error: setting {key}: ")
    assert not (tmp_path / "data").exists()


def test_no_number_may_be_infinite_or_nan() -> None:
    shipped = load_settings(env={}).as_dict()
    floats = [(section, name) for section, values in shipped.items() for name, value in values.items()
              if isinstance(value, float)]
    assert len(floats) > 40
    for section, name in floats:
        for bad in (math.inf, -math.inf, math.nan):
            with pytest.raises(SettingsError, match=f"{section}\\.{name}: must be a finite number"):
                load_settings(overrides={section: {name: bad}}, env={})


def test_check_never_shows_the_store_password(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # A store that does not answer: the finding names it, as an operator can read it on screen or in CI logs.
    monkeypatch.setenv("REDIS_URL", "redis://:s3cret-Pw@127.0.0.1:1/0")
    code, out = check(capsys, tmp_path)
    store = next(f for f in out["findings"] if f["item"] == "store")
    assert code == 1 and store["level"] == "error"
    assert store["detail"].startswith("redis://:***@127.0.0.1:1/0: ")
    assert "s3cret" not in json.dumps(out)


# -- D4 in a real process: what an operator sees on the terminal ---------------------------------------------
# `hotline serve` at the shipped log level (INFO): its JSON log lines, then the one line; never a traceback.
# Before, a damaged model ended start-up in a ModelError traceback, an unreachable store came after the whole
# app had started (five tracebacks of its background tasks), and a pool restarted failing workers for ever.

def serve_stops(tmp_path: Path, *args: str, **env: str) -> tuple[int, str]:
    """``hotline serve`` that cannot start: its exit status and its last stderr line, once stderr is shown to
    hold nothing else than the service's log lines, none with a traceback or above warning."""
    env = serve_env(HOTLINE_LOGGING__LEVEL="INFO", HOTLINE_VOICE__PREWARM_S="0", **env)
    proc = subprocess.Popen([sys.executable, "-m", "hotline", "serve", "--data-dir", str(tmp_path / "data"), *args],
                            cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        _, raw = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # a pool that restarts its workers, and the workers
        _, raw = proc.communicate(timeout=30)
        raise AssertionError(f"hotline serve did not stop: {raw.decode(errors='replace')[-3000:]}") from None
    err = raw.decode("utf-8", "replace")
    assert "Traceback" not in err, err[-3000:]
    lines = err.strip().splitlines()
    assert lines, "nothing said"
    for line in lines[:-1]:
        record = json.loads(line)
        assert record["level"] in ("info", "warning") and "exc" not in record, line
    return proc.returncode, lines[-1]


@pytest.fixture(scope="module")
def damaged_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped models, copied: the department head's weights cut off as by a full disk, and the type head
    without its vocabulary."""
    models = tmp_path_factory.mktemp("damaged") / "models"
    shutil.copytree(PROJECT_ROOT / "models", models)
    weights = models / "department" / "weights.npz"
    weights.write_bytes(weights.read_bytes()[:1000])
    (models / "type" / "vocab.txt").unlink()
    return models


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_with_a_damaged_model_says_which_file_in_one_line(tmp_path: Path, damaged_models: Path,
                                                                workers: str) -> None:
    site = site_file(tmp_path, f'[nlp]\nmodels_dir = "{damaged_models}"\n')
    code, line = serve_stops(tmp_path, "--config", str(site), "--port", "0", "--workers", workers)
    # Heads load in order (category, department, type): the first damaged file is named.
    assert (code, line) == (1, f"hotline: cannot start: {damaged_models}/department/weights.npz: damaged or cut "
                               "off (not a complete .npz archive)")


def test_serve_with_a_model_missing_its_vocabulary_says_so_in_one_line(tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(PROJECT_ROOT / "models", models)
    (models / "category" / "vocab.txt").unlink()
    site = site_file(tmp_path, f'[nlp]\nmodels_dir = "{models}"\n')
    code, line = serve_stops(tmp_path, "--config", str(site), "--port", "0")
    assert (code, line) == (1, f"hotline: cannot start: {models}/category/vocab.txt: missing (an incomplete model)")


def test_serve_with_a_broken_classifier_table_names_the_setting_and_file(tmp_path: Path) -> None:
    # A table of the classifier (nlp.*) is configuration, as the dedup tables are: exit status 2.
    urgency = tmp_path / "urgency.toml"
    urgency.write_text("[emergency\ngroups = 1\n", encoding="utf-8")
    site = site_file(tmp_path, f'[nlp]\nurgency_file = "{urgency}"\n')
    code, line = serve_stops(tmp_path, "--config", str(site), "--port", "0")
    assert code == 2
    assert line.startswith(f"hotline: configuration error: nlp.urgency_file: {urgency} is not valid TOML: ")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_with_a_store_that_does_not_answer_stops_before_the_app_starts(tmp_path: Path, workers: str) -> None:
    port = closed_port()
    code, line = serve_stops(tmp_path, "--port", "0", "--workers", workers, REDIS_URL=f"redis://127.0.0.1:{port}")
    assert code == 1 and line.startswith("hotline: cannot start: REDIS_URL / store.redis_url does not answer: ")
    assert f"127.0.0.1:{port}" in line


def test_serve_on_a_taken_port_says_so_before_it_loads_anything(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, line = serve_stops(tmp_path, "--port", str(port), "--workers", "1")
    assert (code, line) == (1, f"hotline: cannot start: 127.0.0.1:{port} is already in use (another hotline serve?)")
    # Nothing was started (no store, no models, no log lines): it was the first thing tried.
    assert not (tmp_path / "data" / "redis").exists()


@pytest.mark.parametrize(("child", "kind", "message"), [
    # What `hotline serve` in a worker reports on its status pipe when it cannot start.
    ("os.write(int(os.environ['HOTLINE_WORKER_STATUS_FD']), b'start\\tmodels/x: cut off\\n'); sys.exit(1)",
     "start", "models/x: cut off"),
    ("os.write(int(os.environ['HOTLINE_WORKER_STATUS_FD']), b'settings\\tnlp.urgency_file: bad\\n'); sys.exit(2)",
     "settings", "nlp.urgency_file: bad"),
    # A worker that dies of something serve does not explain (its own traceback is in the log).
    ("sys.exit(3)", "start", "exited with status 3 before it was serving"),
], ids=["cannot-start", "configuration", "unexplained"])
async def test_a_worker_that_cannot_start_stops_the_pool_instead_of_being_restarted(
        tmp_path: Path, redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch,
        child: str, kind: str, message: str) -> None:
    settings = load_settings(env={"REDIS_URL": redis_server.url},
                             overrides={"server": {"data_dir": str(tmp_path), "port": 0}})
    pool = WorkerPool(settings, [], 2)
    monkeypatch.setattr(pool, "_child_argv", lambda: [sys.executable, "-c", f"import os, sys; {child}"])
    assert await asyncio.wait_for(pool.run(), 20) == 1
    assert pool.failure is not None and pool.failure.kind == kind and message in pool.failure.message
    assert all(proc.returncode is not None for proc in pool.procs.values())
