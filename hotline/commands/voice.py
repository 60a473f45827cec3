"""Voice commands: ``hotline models fetch``, ``hotline transcribe FILE``, ``hotline ivr prompts build``."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from pathlib import Path

from hotline.commands.common import add_settings_args, settings_from_args


def register(sub: argparse._SubParsersAction) -> None:
    models = sub.add_parser("models", help="speech models (Vosk)")
    msub = models.add_subparsers(dest="models_command", metavar="ACTION")
    fetch = msub.add_parser("fetch", help="download, verify and install an official Chinese Vosk model")
    fetch.add_argument("model", nargs="?", default="small-cn", choices=["small-cn", "cn"],
                       help="small-cn (42 MB, grammar mode for menus; default) or cn (1.3 GB, dictation)")
    fetch.add_argument("--dest", type=Path, help="models directory (default: <data_dir>/models)")
    fetch.add_argument("--url", help="download from this mirror instead of the official address")
    fetch.add_argument("--sha256", help="expected sha256 (required for models without a published one)")
    fetch.add_argument("--force", action="store_true", help="replace an installed model")
    add_settings_args(fetch)
    fetch.set_defaults(handler=fetch_model)

    tr = sub.add_parser("transcribe", help="print the text spoken in an audio file (wav/ogg/amr/mp3)")
    tr.add_argument("file", type=Path)
    tr.add_argument("--model", type=Path, help="Vosk model directory (default: voice.model_dir)")
    tr.add_argument("--json", action="store_true", help="print words with timings and confidence as JSON")
    add_settings_args(tr)
    tr.set_defaults(handler=transcribe)

    ivr = sub.add_parser("ivr", help="phone menu tools")
    isub = ivr.add_subparsers(dest="ivr_command", metavar="ACTION")
    prompts = isub.add_parser("prompts", help="prompt audio")
    psub = prompts.add_subparsers(dest="prompts_command", metavar="ACTION")
    build = psub.add_parser("build", help="render config/ivr.toml prompt texts with espeak-ng into WAV files")
    build.add_argument("--out", type=Path, help="output directory (default: hotline/ivr/prompts)")
    add_settings_args(build)
    build.set_defaults(handler=build_prompts)


def fetch_model(args: argparse.Namespace) -> int:
    from hotline.ivr.models import MODELS, FetchError, fetch

    settings = settings_from_args(args)
    spec = MODELS[args.model]
    if args.sha256:
        spec = dataclasses.replace(spec, sha256=args.sha256.strip().lower())
    dest = args.dest or settings.data_dir / "models"
    last = [-1]

    def progress(got: int, total: int) -> None:
        pct = got * 100 // max(total, 1)
        if pct != last[0] and sys.stderr.isatty():
            last[0] = pct
            print(f"\r{spec.name}: {pct}% ({got // (1 << 20)} / {total // (1 << 20)} MB)", end="", file=sys.stderr)

    try:
        path = asyncio.run(fetch(spec, dest, url=args.url, force=args.force, progress=progress))
    except FetchError as exc:
        print(f"\nhotline: model not installed: {exc}", file=sys.stderr)
        return 1
    print(f"installed {spec.name} in {path}")
    default = dest / spec.name == settings.data_dir / "models" / MODELS["small-cn"].name
    if not default:
        print(f"set voice.model_dir = \"{path}\" (or HOTLINE_VOICE__MODEL_DIR) to use it")
    return 0


def transcribe(args: argparse.Namespace) -> int:
    from hotline.ivr.audio import AudioError
    from hotline.ivr.feature import model_dir
    from hotline.ivr.stt import STTError, VoskSTT

    settings = settings_from_args(args)
    path = args.model or model_dir(settings)
    if not args.file.is_file():
        print(f"hotline: no such file: {args.file}", file=sys.stderr)
        return 2

    async def run() -> int:
        try:
            stt = await asyncio.to_thread(VoskSTT.load, path, threads=1,
                                          max_audio_s=settings["voice"]["max_transcribe_s"])
        except STTError as exc:
            print(f"hotline: {exc}; run `hotline models fetch small-cn`", file=sys.stderr)
            return 1
        try:
            result = await stt.transcribe_audio(await asyncio.to_thread(args.file.read_bytes))
        except AudioError as exc:
            print(f"hotline: {args.file}: {exc}", file=sys.stderr)
            return 1
        finally:
            await stt.close()
        if args.json:
            print(json.dumps(dataclasses.asdict(result), ensure_ascii=False))
        else:
            print(result.text)
        return 0

    return asyncio.run(run())


def build_prompts(args: argparse.Namespace) -> int:
    from hotline.ivr.feature import ivr_config
    from hotline.ivr.prompts import SHIPPED_DIR, PromptError, build

    settings = settings_from_args(args)
    cfg = ivr_config(settings)
    out = args.out or SHIPPED_DIR
    tts = cfg.tts
    try:
        files = build(cfg.prompts, cfg.digits, out, voice=str(tts.get("voice", "cmn-latn-pinyin")),
                      speed=int(tts.get("speed", 165)), digit_speed=int(tts.get("digit_speed", 190)),
                      rate=int(tts.get("rate", 8000)))
    except PromptError as exc:
        print(f"hotline: {exc}", file=sys.stderr)
        return 1
    size = sum(f.stat().st_size for f in files)
    print(f"wrote {len(files)} prompts to {out} ({size // 1024} KB)")
    return 0
