"""``hotline check``: what would stop or weaken the service, before it goes live and after each change.

- ``hotline check [--data-dir D] [--config F] [--json]``

Each finding is ``ok``, ``warn`` (the service runs, but a part is missing or will misbehave) or ``error``
(``hotline serve`` would not start, or cases could not be stored). Exit status 1 when there is an error.
The checks use the service's own loaders: every feature is set up as ``serve`` does (all configuration
files and their validation), the text models are loaded and asked once, the store is pinged (the
embedded server of a running service, or one started for the check).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

from hotline.commands.common import add_settings_args, open_store, settings_from_args
from hotline.settings import Settings, SettingsError

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


def check_features(settings: Settings) -> Finding:
    from hotline.app import FEATURE_MODULES, create_app

    try:
        app = create_app(settings)
    except (SettingsError, ValueError, OSError, KeyError) as exc:
        return Finding(ERROR, "configuration", f"a feature refuses its settings: {exc}")
    return Finding(OK, "configuration", f"{len(FEATURE_MODULES)} features set up, {len(app.router.routes())} routes")


def check_models(settings: Settings) -> Finding:
    from hotline.classifier import NoModelClassifier, load_classifier

    try:
        classifier = load_classifier(settings)
        started = time.perf_counter()
        suggestion = classifier.suggest(SAMPLE)
        ms = (time.perf_counter() - started) * 1000
    except (OSError, ValueError, KeyError) as exc:
        return Finding(ERROR, "text models", f"cannot load {settings.resolve_path('nlp.models_dir')}: {exc}")
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


async def check_store(settings: Settings) -> list[Finding]:
    out = []
    try:
        async with open_store(settings) as store:
            up = await asyncio.wait_for(store.ping(), 5)
    except (OSError, RuntimeError, TimeoutError, ValueError) as exc:
        up, reason = False, str(exc) or type(exc).__name__
    else:
        reason = "no answer to PING"
    where = settings["store"]["redis_url"] or f"embedded, in {settings.data_dir / 'redis'}"
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
    findings = [check_features(settings), check_models(settings), check_speech(settings),
                check_calendar(settings), check_public_url(settings)]
    findings += asyncio.run(check_store(settings))
    return findings


def run_check(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
    except SettingsError as exc:
        findings = [Finding(ERROR, "settings", str(exc))]
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
