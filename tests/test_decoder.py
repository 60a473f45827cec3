"""Decoder effort (voice.decoder_*) and the accuracy tool (`hotline models eval`), with the real Vosk engine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hotline.app import create_app
from hotline.appkeys import STT
from hotline.ivr import audio
from hotline.ivr.accuracy import pairs, score
from hotline.ivr.decoder import DecoderError, DecoderOptions, effective_model_dir, model_conf
from hotline.ivr.stt import VoskSTT
from hotline.settings import SettingsError
from tests.conftest import make_settings
from tests.ivr_support import KOREAN_SENTENCE, espeak, ko_model_dir

ROOT = Path(__file__).resolve().parent.parent
CONF = "--min-active=200\n--max-active=3000\n--beam=10.0\n--lattice-beam=2.0\n--frame-subsampling-factor=3\n"


@pytest.fixture(scope="module")
def korean16() -> bytes:
    return espeak(KOREAN_SENTENCE, 16000, voice="ko")


def fake_model(root: Path) -> Path:
    model = root / "vosk-model-x"
    (model / "am").mkdir(parents=True)
    (model / "am" / "final.mdl").write_bytes(b"mdl")
    (model / "graph").mkdir()
    (model / "graph" / "HCLr.fst").write_bytes(b"fst")
    (model / "conf").mkdir()
    (model / "conf" / "model.conf").write_text(CONF)
    (model / "conf" / "mfcc.conf").write_text("--sample-frequency=8000\n")
    return model


def test_model_conf_replaces_only_the_set_options() -> None:
    out = model_conf(CONF, DecoderOptions(beam=8.0, max_active=2000))
    lines = out.splitlines()
    assert "--beam=8" in lines and "--max-active=2000" in lines
    assert "--beam=10.0" not in lines and "--max-active=3000" not in lines
    assert {"--min-active=200", "--lattice-beam=2.0", "--frame-subsampling-factor=3"} <= set(lines)
    # An option the model does not set is added.
    assert model_conf("--beam=10.0\n", DecoderOptions(lattice_beam=1.5)).splitlines() == ["--beam=10.0",
                                                                                          "--lattice-beam=1.5"]


def test_linked_copy_is_built_once_per_setting_and_leaves_the_model_alone(tmp_path: Path) -> None:
    model = fake_model(tmp_path)
    work = tmp_path / "work"
    assert effective_model_dir(model, DecoderOptions(), work) == model  # nothing set: the model itself
    assert not work.exists()

    fast = effective_model_dir(model, DecoderOptions(beam=8.0, max_active=2000), work)
    assert fast.parent == work and fast.name.startswith("vosk-model-x.")
    assert (fast / "am").is_symlink() and (fast / "am" / "final.mdl").read_bytes() == b"mdl"
    assert (fast / "conf" / "mfcc.conf").is_symlink()
    assert "--beam=8" in (fast / "conf" / "model.conf").read_text()
    assert (model / "conf" / "model.conf").read_text() == CONF
    assert effective_model_dir(model, DecoderOptions(beam=8.0, max_active=2000), work) == fast
    other = effective_model_dir(model, DecoderOptions(beam=9.0), work)
    assert other != fast
    # A changed model conf (a re-fetched model) gets a new copy, not the stale one.
    (model / "conf" / "model.conf").write_text(CONF.replace("min-active=200", "min-active=300"))
    assert effective_model_dir(model, DecoderOptions(beam=8.0, max_active=2000), work) != fast
    assert sorted(p.name for p in work.iterdir() if p.name.startswith(".")) == []  # no half-built copies


def test_bad_decoder_values_are_refused(tmp_path: Path) -> None:
    for opts in (DecoderOptions(beam=100.0), DecoderOptions(beam=1.0), DecoderOptions(max_active=10),
                 DecoderOptions(lattice_beam=50.0)):
        with pytest.raises(DecoderError):
            opts.checked()
    assert DecoderOptions.from_settings({"decoder_beam": 0.0, "decoder_max_active": 0}) == DecoderOptions()
    assert DecoderOptions.from_settings({"decoder_beam": 8.0, "decoder_max_active": 2000}).describe() == \
        "beam=8, max-active=2000"
    with pytest.raises(DecoderError, match="beam"):
        DecoderOptions.from_settings({"decoder_beam": 99.0})
    broken = tmp_path / "broken"
    (broken / "conf").mkdir(parents=True)
    with pytest.raises(DecoderError, match=r"model\.conf"):
        effective_model_dir(broken, DecoderOptions(beam=8.0), tmp_path / "work")


async def test_vosk_decodes_with_the_overridden_search(tmp_path: Path, korean16: bytes) -> None:
    """The override reaches the real engine: a tiny beam changes what it hears."""
    texts = []
    for opts in (DecoderOptions(), DecoderOptions(beam=4.0, max_active=200)):
        stt = VoskSTT.load(ko_model_dir(), decoder=opts, work_dir=tmp_path / "work", threads=1)
        try:
            assert stt.decoder == opts and stt.name == "model"
            texts.append((await stt.transcribe_pcm(korean16, 16000)).text)
        finally:
            await stt.close()
    assert all(texts) and texts[0] != texts[1]
    assert len(list((tmp_path / "work").iterdir())) == 1


async def test_service_loads_the_model_with_the_configured_effort(aiohttp_client: Any, redis_server: Any,
                                                                   tmp_path: Path) -> None:
    settings = make_settings(redis_server.url, tmp_path, "dec",
                             voice={"model_dir": str(ko_model_dir()), "decoder_beam": 8.0,
                                    "decoder_max_active": 2000})
    client = await aiohttp_client(create_app(settings))
    stt = client.app[STT]
    assert stt.decoder == DecoderOptions(beam=8.0, max_active=2000)
    copies = list((tmp_path / "models" / ".decoder").iterdir())
    assert len(copies) == 1 and "--beam=8" in (copies[0] / "conf" / "model.conf").read_text()
    with pytest.raises(SettingsError, match="beam"):
        create_app(make_settings(redis_server.url, tmp_path, "dec", voice={"decoder_beam": 99.0}))


def test_character_error_rate() -> None:
    assert score("我家楼下的路灯坏了", "我家楼下的路灯坏了").cer == 0
    # Spaces (Vosk separates words), punctuation and full-width forms are not errors.
    assert score("我家楼下的路灯，坏了！", "我家 楼下 的 路灯 坏了").cer == 0
    assert score("ＡＢＣ１２", "abc12").cer == 0
    one = score("路灯坏了", "路灯好了")
    assert (one.substitutions, one.deletions, one.insertions, one.cer) == (1, 0, 0, 0.25)
    dropped = score("路灯坏了", "路灯")
    assert (dropped.deletions, dropped.cer) == (2, 0.5)
    assert score("路灯坏了", "").cer == 1.0
    empty = score("", "有声音")
    assert empty.cer is None and empty.insertions == 3


def test_pairs_match_audio_with_references(tmp_path: Path) -> None:
    for name in ("a.wav", "a.txt", "b.ogg", "c.mp3", "c.txt", "notes.md"):
        (tmp_path / name).write_text("x")
    paired, unpaired = pairs(tmp_path)
    assert [(a.name, r.name) for a, r in paired] == [("a.wav", "a.txt"), ("c.mp3", "c.txt")]
    assert [p.name for p in unpaired] == ["b.ogg"]


def test_cli_models_eval(tmp_path: Path, korean16: bytes) -> None:
    data = tmp_path / "calls"
    data.mkdir()
    (data / "k.wav").write_bytes(audio.wav_bytes(korean16, 16000))
    (data / "k.txt").write_text(KOREAN_SENTENCE, encoding="utf-8")
    (data / "broken.mp3").write_bytes(b"\x00garbage" * 50)
    (data / "broken.txt").write_text("坏文件", encoding="utf-8")
    (data / "extra.wav").write_bytes(audio.wav_bytes(korean16[:16000], 16000))
    cli = [sys.executable, "-m", "hotline", "models", "eval", "--data-dir", str(tmp_path / "dd"),
           "--model", str(ko_model_dir())]

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cli, *extra], capture_output=True, text=True, timeout=180, cwd=ROOT)

    done = run("--data", str(data), "--json", "--files")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert (out["files"], out["failed"], out["unpaired"]) == (1, 1, 1)
    assert out["errors"][0]["file"] == "broken.mp3" and "cannot decode audio" in out["errors"][0]["error"]
    heard = out["per_file"][0]["text"]
    assert heard and out["rtf"] > 0 and out["audio_s"] > 1
    assert out["ref_chars"] == len(KOREAN_SENTENCE.replace(" ", ""))
    assert out["cer"] == round(score(KOREAN_SENTENCE, heard).cer, 4) > 0

    # The numbers come from the references given: the transcript as its own reference scores 0.
    (data / "k.txt").write_text(heard, encoding="utf-8")
    again = json.loads(run("--data", str(data), "--json").stdout.strip().splitlines()[-1])
    assert again["cer"] == 0.0 and again["decoder"] == "model defaults"

    fast = run("--data", str(data), "--json", "--beam", "8", "--max-active", "2000")
    assert fast.returncode == 0, fast.stderr
    assert json.loads(fast.stdout.strip().splitlines()[-1])["decoder"] == "beam=8, max-active=2000"

    bad = run("--data", str(data), "--beam", "99")
    assert bad.returncode == 2 and "beam" in bad.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = run("--data", str(empty))
    assert nothing.returncode == 2 and "no audio file" in nothing.stderr
