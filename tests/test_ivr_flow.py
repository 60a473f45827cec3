"""Menu data, prompts and the outbound survey flow on a session (no network: the transport plays instantly)."""

from __future__ import annotations

import asyncio
import wave
from pathlib import Path

import pytest

from hotline.ivr import audio
from hotline.ivr.flow import IvrConfig, run_survey, survey_result
from hotline.ivr.prompts import BEEP, SHIPPED_DIR, PromptLibrary, build
from hotline.ivr.session import CallOutcome, CallSession, VoiceTimings, clean_call_id, clean_number
from hotline.settings import DEFAULT_CONFIG_DIR

CONFIG = IvrConfig.load(DEFAULT_CONFIG_DIR / "ivr.toml")


class InstantTransport:
    """Plays nothing, instantly; remembers what was played (stand-in for the far side only)."""

    name = "test"

    def __init__(self) -> None:
        self.played: list[int] = []
        self.ended: CallOutcome | None = None

    async def send_audio(self, pcm: bytes) -> None:
        self.played.append(len(pcm))
        await asyncio.sleep(0)

    async def stop_audio(self) -> None:
        return None

    async def end(self, outcome: CallOutcome) -> None:
        self.ended = outcome


def session(transport: InstantTransport, **timings: float) -> CallSession:
    t = VoiceTimings(no_input_s=0.3, max_menu_s=1.0, digit_timeout_s=0.3)
    for k, v in timings.items():
        setattr(t, k, v)
    return CallSession(call_id="c1", caller="13800138000", rate=8000, transport=transport, stt=None,
                       prompts=PromptLibrary(), timings=t)


def test_config_menu_confirm_and_emergency_words() -> None:
    assert CONFIG.menu_keys() == "1230"
    assert CONFIG.menu_by_key("1").action == "complaint"
    assert CONFIG.menu_by_speech("我 要 投诉").action == "complaint"
    assert CONFIG.menu_by_speech("转人工").action == "transfer"
    assert CONFIG.menu_by_speech("今天天气不错") is None
    assert CONFIG.confirm_answer("是 的") == "1" and CONFIG.confirm_answer("不是") == "2"
    assert CONFIG.emergency_word("楼 下 着火 了 快 来") == "着火"
    assert CONFIG.emergency_word("闻到 煤气泄漏 的 味道") == "煤气泄漏"
    assert CONFIG.emergency_word("路灯 坏 了") == ""
    sat = next(q for q in CONFIG.survey if q.id == "satisfaction")
    # The longest phrase wins: 不满意 is not 满意.
    assert sat.match("不满意") == "3" and sat.match("基本 满意") == "2" and sat.match("满意") == "1"


def test_shipped_prompts_cover_the_config() -> None:
    names = [*CONFIG.prompts, BEEP, *PromptLibrary.digits("0123456789")]
    names += [c for c in CONFIG.categories.values()]
    names += [m for m in (q.prompt for q in CONFIG.survey)]
    total = 0
    for name in dict.fromkeys(names):  # a category prompt is also a [prompts] entry: each file counts once
        path = SHIPPED_DIR / f"{name}.wav"
        assert path.is_file(), f"{name}.wav missing: run `hotline ivr prompts build`"
        with wave.open(str(path)) as w:
            assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 8000)
            assert 0.1 < w.getnframes() / 8000 < 15
        total += path.stat().st_size
    assert total < 3 << 20
    lib = PromptLibrary()
    digits = lib.sequence(lib.digits("20261122-000123"), 16000)
    assert audio.duration_s(len(digits), 16000) < 14 * 0.6


def test_prompts_build_with_espeak(tmp_path: Path) -> None:
    files = build({"hello": "ni3 hao3"}, {"1": "yao1"}, tmp_path, rate=8000)
    assert sorted(p.name for p in files) == ["beep.wav", "digit_1.wav", "hello.wav"]
    decoded = audio.read_wav((tmp_path / "hello.wav").read_bytes())
    assert decoded.rate == 8000 and 0.2 < decoded.duration_s < 2 and audio.rms(decoded.pcm) > 500
    # A recorded prompt in the override directory wins over the shipped one.
    lib = PromptLibrary(override_dir=tmp_path)
    assert lib.path("hello") == tmp_path / "hello.wav"
    assert lib.path("greeting") == SHIPPED_DIR / "greeting.wav"
    assert lib.pcm("no_such_prompt", 8000) == b""


async def test_survey_answers_by_keypad() -> None:
    transport = InstantTransport()
    s = session(transport)
    await s.dtmf_in("1")  # 已解决
    await s.dtmf_in("9")  # not an answer: ignored
    await s.dtmf_in("2")  # 基本满意
    answers = await run_survey(s, CONFIG)
    assert answers == {"resolved": "yes", "satisfaction": "basic"}
    assert survey_result(answers) == {"resolved": True, "satisfaction": "basic"}
    assert transport.played  # intro, questions, thanks


async def test_survey_without_answers_and_hangup() -> None:
    s = session(InstantTransport())
    answers = await asyncio.wait_for(run_survey(s, CONFIG), 10)
    assert answers == {"resolved": "", "satisfaction": ""}
    assert survey_result(answers) is None
    s2 = session(InstantTransport())
    await s2.dtmf_in("2")
    s2.hangup_in()
    answers = await run_survey(s2, CONFIG)
    assert answers["satisfaction"] == ""


async def test_collect_digits_terminator_and_truncated_audio() -> None:
    s = session(InstantTransport())
    for key in "2026#":
        await s.dtmf_in(key)
    got = await s.collect(speech=False, max_digits=14)
    assert (got.digits, got.stopped_by) == ("2026", "#")
    # Odd-sized audio (a truncated frame) and junk DTMF do not break the session.
    await s.audio_in(b"\x01")
    await s.audio_in(bytes(321))
    await s.dtmf_in("X")
    got = await s.collect(speech=False)
    assert got.no_input
    await s.close()


@pytest.mark.parametrize(("raw", "ok"), [("1700000000.42", True), ("0b5c6b1e-8a4e-4a31-9d6f-0d1f1a2b3c4d", True),
                                         ("../../etc/passwd", False), ("", False), ("a" * 80, False)])
def test_call_ids_are_safe_file_names(raw: str, ok: bool) -> None:
    cleaned = clean_call_id(raw)
    assert (cleaned == raw) is ok
    assert "/" not in cleaned and len(cleaned) <= 64


def test_caller_numbers() -> None:
    assert clean_number("13800138000") == "13800138000"
    assert clean_number("+86 138-0013-8000") == "+86 138-0013-8000"
    assert clean_number("anonymous") == ""
