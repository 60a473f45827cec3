"""Voice commands: ``hotline models fetch|eval``, ``hotline transcribe FILE``, ``hotline ivr prompts build``."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from hotline.commands.common import add_settings_args, settings_from_args
from hotline.ivr.decoder import DecoderError, DecoderOptions
from hotline.settings import Settings

if TYPE_CHECKING:
    from hotline.ivr.stt import VoskSTT


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

    ev = msub.add_parser("eval", help="character error rate and real-time factor on recorded calls")
    ev.add_argument("--data", type=Path, required=True,
                    help="directory of audio files (wav/ogg/amr/mp3), each with a .txt of what was said")
    ev.add_argument("--model", type=Path, help="Vosk model directory (default: voice.model_dir)")
    _decoder_args(ev)
    ev.add_argument("--files", action="store_true", help="also list each file's transcript and CER")
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    add_settings_args(ev)
    ev.set_defaults(handler=eval_model)

    tr = sub.add_parser("transcribe", help="print the text spoken in an audio file (wav/ogg/amr/mp3)")
    tr.add_argument("file", type=Path)
    tr.add_argument("--model", type=Path, help="Vosk model directory (default: voice.model_dir)")
    _decoder_args(tr)
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

    def end_bar() -> None:
        # A progress bar drawn on the terminal leaves the cursor on its line: end that line, so whatever is
        # printed next starts a line of its own. Nothing was drawn when stderr is not a terminal.
        if last[0] >= 0:
            print(file=sys.stderr)

    if dest.exists() and not dest.is_dir():
        print(f"hotline: --dest {dest}: is a file, not a directory", file=sys.stderr)
        return 2
    try:
        path = asyncio.run(fetch(spec, dest, url=args.url, force=args.force, progress=progress))
    except FetchError as exc:
        end_bar()
        print(f"hotline: model not installed: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # the directory cannot be made or written (a file on its path, permissions, disk)
        end_bar()
        where = f": {exc.filename}" if exc.filename else ""
        print(f"hotline: model not installed: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    end_bar()
    print(f"installed {spec.name} in {path}")
    default = dest / spec.name == settings.data_dir / "models" / MODELS["small-cn"].name
    if not default:
        print(f"set voice.model_dir = \"{path}\" (or HOTLINE_VOICE__MODEL_DIR) to use it")
    return 0


def _decoder_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--beam", type=float, help="decoder beam (default: voice.decoder_beam, else the model's)")
    parser.add_argument("--max-active", type=int, help="most active decoder states (default: voice.decoder_max_active)")
    parser.add_argument("--lattice-beam", type=float, help="lattice beam (default: voice.decoder_lattice_beam)")


def _decoder(args: argparse.Namespace, settings: Settings) -> DecoderOptions:
    """The configured decoder effort with the command line's flags on top."""
    base = DecoderOptions.from_settings(settings["voice"])
    return DecoderOptions(beam=args.beam if args.beam is not None else base.beam,
                          max_active=args.max_active if args.max_active is not None else base.max_active,
                          lattice_beam=args.lattice_beam if args.lattice_beam is not None else base.lattice_beam,
                          ).checked()


@dataclasses.dataclass
class _Engine:
    """The model a command transcribes with: directory, decoder effort and the settings around them."""

    settings: Settings
    path: Path
    decoder: DecoderOptions

    async def load(self) -> VoskSTT | None:
        from hotline.ivr.feature import decoder_work_dir
        from hotline.ivr.stt import STTError, VoskSTT

        try:
            return await asyncio.to_thread(VoskSTT.load, self.path, decoder=self.decoder,
                                           work_dir=decoder_work_dir(self.settings), threads=1,
                                           max_audio_s=self.settings["voice"]["max_transcribe_s"])
        except STTError as exc:
            print(f"hotline: {exc}; run `hotline models fetch small-cn`", file=sys.stderr)
            return None


def _engine(args: argparse.Namespace) -> _Engine | None:
    from hotline.ivr.feature import model_dir

    settings = settings_from_args(args)
    try:
        decoder = _decoder(args, settings)
    except DecoderError as exc:
        print(f"hotline: {exc}", file=sys.stderr)
        return None
    return _Engine(settings, args.model or model_dir(settings), decoder)


def eval_model(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from hotline.ivr.accuracy import evaluate, pairs

    if not args.data.is_dir():
        print(f"hotline: not a directory: {args.data}", file=sys.stderr)
        return 2
    engine = _engine(args)
    if engine is None:
        return 2
    items, unpaired = pairs(args.data)
    if not items:
        print(f"hotline: no audio file with a reference .txt in {args.data}", file=sys.stderr)
        return 2

    async def run() -> int:
        stt = await engine.load()
        if stt is None:
            return 1
        bar = tqdm(total=len(items), unit="file", disable=args.json or not sys.stderr.isatty())
        try:
            report = await evaluate(stt, items, step=bar.update)
        finally:
            bar.close()
            await stt.close()
        out = {"model": engine.path.name, "decoder": engine.decoder.describe(), **report.summary(),
               "unpaired": len(unpaired)}
        if args.files or not args.json:
            out["per_file"] = report.files
        out["errors"] = report.failed
        if args.json:
            print(json.dumps(out, ensure_ascii=False))
            return 0
        if args.files:
            for f in report.files:
                print(f"{f['file']}\tCER {f['cer']}\t{f['text']}")
        for f in report.failed:
            print(f"{f['file']}\tfailed: {f['error']}")
        print(f"{out['files']} files, {out['ref_chars']} reference characters: CER {out['cer']}, RTF {out['rtf']} "
              f"({out['decoder']}); {out['failed']} failed, {out['unpaired']} without a .txt")
        return 0

    return asyncio.run(run())


def transcribe(args: argparse.Namespace) -> int:
    from hotline.ivr.audio import AudioError

    if not args.file.is_file():
        print(f"hotline: no such file: {args.file}", file=sys.stderr)
        return 2
    engine = _engine(args)
    if engine is None:
        return 2

    async def run() -> int:
        stt = await engine.load()
        if stt is None:
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
