"""Vosk speech-to-text: one shared model, one recognizer per stream, a bounded thread pool.

Vosk is blocking C++ behind cffi, so every call into a recognizer runs in this service's own
``ThreadPoolExecutor``. A recognizer is only ever used by one job at a time (each stream awaits its
previous job), recognizers are created one at a time (parallel creation has crashed Kaldi under
OpenMP), and a stream is freed only after its last job has left the thread. The number of live
streams is capped; callers beyond the cap wait a short while in a bounded queue and are otherwise
refused with ``STTBusy`` — the IVR then sends the call to a person instead of running out of memory.

Recognizers are kept warm between streams. A small Vosk model decodes through a graph composed on the
fly (HCLr ∘ Gr), and each recognizer caches the states it has expanded; a fresh recognizer spends about
half its time building that cache again. A finished stream's recognizer is therefore finalised (which
drops the caller's features, i-vector and decoder) and kept for the next stream with the same grammar,
until it has decoded ``recycle_after_s`` of audio: the cache only grows, so an old recognizer is freed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from hotline.ivr import audio
from hotline.ivr.decoder import DecoderError, DecoderOptions, effective_model_dir
from hotline.speech import Transcript, Word

log = logging.getLogger("hotline.ivr.stt")

T = TypeVar("T")
UNKNOWN = "[unk]"
# Chinese and Japanese are written without spaces between words (Korean keeps them).
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def grammar_key(grammar: list[str] | None) -> str:
    """The phrase list Vosk gets for ``grammar`` (blank and repeated phrases dropped, [unk] added); "" for
    free speech. Recognizers are shared between streams with the same key."""
    if not grammar:
        return ""
    phrases = [p for p in dict.fromkeys(g.strip() for g in grammar) if p]
    if UNKNOWN not in phrases:
        phrases.append(UNKNOWN)
    # Vosk's grammar reader does not decode \uXXXX escapes (checked with vosk 0.3.45: "네" escaped is logged as
    # "Ignoring word missing in vocabulary: '\\ub124'"), so non-ASCII phrases must be passed as raw UTF-8.
    return json.dumps(phrases, ensure_ascii=False)


class STTError(Exception):
    """The engine cannot be used (no model, bad model directory)."""


class STTBusy(STTError):
    """Every stream is in use and the wait queue is full or the wait timed out."""


def model_sample_rate(model_dir: Path) -> int:
    """The rate the model's features were trained on (conf/mfcc.conf), 16 kHz when unstated."""
    conf = model_dir / "conf" / "mfcc.conf"
    try:
        for line in conf.read_text(encoding="utf-8").splitlines():
            if line.strip().startswith("--sample-frequency="):
                return int(float(line.split("=", 1)[1]))
    except (OSError, ValueError):
        pass
    return 16000


def looks_like_model(model_dir: Path) -> bool:
    return (model_dir / "am" / "final.mdl").is_file() and (model_dir / "conf" / "model.conf").is_file()


def join_words(words: list[str]) -> str:
    """Vosk separates every word by a space; Chinese text reads without them."""
    out = ""
    for word in words:
        if not word:
            continue
        if out and not (_CJK.match(out[-1]) and _CJK.match(word[0])):
            out += " "
        out += word
    return out


def _transcript(results: list[dict[str, Any]], duration_s: float, offset_s: float = 0.0) -> Transcript:
    """``offset_s``: audio the recognizer decoded before this stream (Vosk times count from its creation)."""
    words: list[Word] = []
    texts: list[str] = []
    for res in results:
        res_words = res.get("result") or []
        if res_words:
            for w in res_words:
                if w.get("word") == UNKNOWN:
                    continue
                start = max(0.0, round(float(w.get("start", 0.0)) - offset_s, 3))
                end = max(start, round(float(w.get("end", 0.0)) - offset_s, 3))
                words.append(Word(str(w.get("word", "")), start, end, float(w.get("conf", 0.0))))
        text = str(res.get("text", "")).strip()
        if text:
            texts.extend(t for t in text.split() if t != UNKNOWN)
    text = join_words([w.word for w in words]) if words else join_words(texts)
    conf = sum(w.conf for w in words) / len(words) if words else 0.0
    return Transcript(text=text, words=words, confidence=round(conf, 4), duration_s=round(duration_s, 3))


@dataclass
class Recognizer:
    """A Kaldi recognizer and the audio it has decoded since it was made."""

    rec: Any
    grammar_key: str  # "" for free speech, else the grammar's phrases as JSON
    samples: int = 0  # at the model's rate; Vosk's word times count from the first of them
    broken: bool = False  # a call into it failed: never handed out again


@dataclass
class StreamUpdate:
    """What one chunk of audio produced: the running partial text, or a final result at an endpoint."""

    partial: str = ""
    final: Transcript | None = None


class SttStream:
    """One recognizer for one call leg. Use ``async with``; ``close`` is idempotent."""

    def __init__(self, service: VoskSTT, rec: Recognizer, in_rate: int, grammar: list[str] | None) -> None:
        self._service = service
        self._rec: Recognizer | None = rec
        self.in_rate = in_rate
        self.grammar = grammar
        self._resampler = audio.Resampler(in_rate, service.model_rate)
        self._results: list[dict[str, Any]] = []
        self._fed = 0  # bytes at in_rate
        self._offset_s = rec.samples / service.model_rate
        self._finalized = False
        self._job: concurrent.futures.Future[Any] | None = None
        self._lock = asyncio.Lock()
        self._closed = False
        self.partial = ""

    @property
    def fed_s(self) -> float:
        return audio.duration_s(self._fed, self.in_rate)

    async def _run(self, fn: Callable[[], T]) -> T:
        async with self._lock:
            held = self._rec
            if held is None:
                raise STTError("stream is closed")
            service = self._service

            def timed() -> tuple[T, float]:
                started = time.perf_counter()
                return fn(), time.perf_counter() - started

            try:
                job = service._pool.submit(timed)
            except RuntimeError as exc:  # the service shut its pool down (app stopping)
                raise STTError("speech service is closed") from exc
            self._job = job
            try:
                # Shield: if the caller is cancelled the job still finishes in its thread; close() waits for it.
                result, busy_s = await asyncio.shield(asyncio.wrap_future(job))
            except asyncio.CancelledError:
                raise
            except BaseException:
                held.broken = True
                raise
            service.decode_seconds += busy_s  # on the event loop: no lock needed
            return result

    async def accept(self, pcm: bytes) -> StreamUpdate:
        if not pcm:
            return StreamUpdate(partial=self.partial)
        self._fed += len(pcm)
        self._finalized = False
        self._service.audio_seconds += audio.duration_s(len(pcm), self.in_rate)
        held = self._rec
        resampler = self._resampler

        def work() -> tuple[bool, str]:
            rec = held.rec
            data = resampler.process(pcm)
            if not data:
                return False, rec.PartialResult()
            held.samples += len(data) // audio.SAMPLE_WIDTH
            if rec.AcceptWaveform(data):
                return True, rec.Result()
            return False, rec.PartialResult()

        endpoint, raw = await self._run(work)
        res = json.loads(raw)
        if endpoint:
            self.partial = ""
            if res.get("text") or res.get("result"):
                self._results.append(res)
                return StreamUpdate(final=_transcript([res], self.fed_s, self._offset_s))
            return StreamUpdate()
        self.partial = join_words([t for t in str(res.get("partial", "")).split() if t != UNKNOWN])
        return StreamUpdate(partial=self.partial)

    async def finish(self) -> Transcript:
        """Flush the recognizer and return everything recognised on this stream."""
        held = self._rec
        resampler = self._resampler

        def work() -> str:
            rec = held.rec
            tail = resampler.process(b"", last=True)
            if tail:
                held.samples += len(tail) // audio.SAMPLE_WIDTH
                rec.AcceptWaveform(tail)
            return rec.FinalResult()

        res = json.loads(await self._run(work))
        self._finalized = True
        if res.get("text") or res.get("result"):
            self._results.append(res)
        self.partial = ""
        return _transcript(self._results, self.fed_s, self._offset_s)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        held, self._rec = self._rec, None
        if held is None:
            return
        try:
            job = self._job
            if job is not None:
                # Never free or hand on a recognizer a pool thread is still inside.
                await asyncio.wait({asyncio.wrap_future(job)})
                if job.cancelled() or job.exception() is not None:
                    held.broken = True
            if not self._finalized and not held.broken:
                # A hang-up or an abandoned menu: end the utterance so that nothing of this caller (features,
                # i-vector, decoder state) is left in the recognizer the next caller gets.
                try:
                    job = self._job = self._service._pool.submit(held.rec.FinalResult)
                except RuntimeError:  # the service is closing: the recognizer is dropped
                    held.broken = True
                else:
                    await asyncio.wait({asyncio.wrap_future(job)})
                    if job.exception() is not None:
                        held.broken = True
        except BaseException:
            held.broken = True  # cancelled while a job may still be inside it: it is never handed on
            raise
        finally:
            self._service._release(held)

    async def __aenter__(self) -> SttStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class VoskSTT:
    """The ``SpeechToText`` of hotline/speech.py on top of Vosk, plus streams for the IVR."""

    def __init__(self, model: Any, *, model_rate: int = 16000, name: str = "vosk", max_streams: int = 4,
                 threads: int = 2, queue_wait_s: float = 5.0, max_queued: int = 8,
                 max_audio_s: float = 600.0, keep_warm: int | None = None, recycle_after_s: float = 900.0) -> None:
        import vosk  # noqa: F401  (the binding must be importable even when the model is given)

        self.model = model
        self.model_rate = model_rate
        self.name = name
        self.max_streams = max(1, max_streams)
        self.queue_wait_s = queue_wait_s
        self.max_queued = max(0, max_queued)
        self.max_audio_s = max_audio_s
        # Idle recognizers kept for the next stream; None keeps as many as can be busy at once.
        self.keep_warm = self.max_streams if keep_warm is None else max(0, keep_warm)
        self.recycle_after_s = recycle_after_s
        self._idle: list[Recognizer] = []  # least recently used first
        self.recognizers_created = 0
        self.recognizers_reused = 0
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="vosk")
        self._slots = asyncio.Semaphore(self.max_streams)
        self._create_lock = threading.Lock()
        self._waiting = 0
        self.active_streams = 0
        self.refused = 0
        # Since start: audio fed to recognizers and time spent decoding it (their ratio is the RTF).
        self.audio_seconds = 0.0
        self.decode_seconds = 0.0
        self.decoder = DecoderOptions()
        self._closed = False

    @classmethod
    def load(cls, model_dir: Path, *, decoder: DecoderOptions | None = None, work_dir: Path | None = None,
             **kwargs: Any) -> VoskSTT:
        """Blocking: loads the model (seconds, hundreds of MB). Call it in a thread.

        ``decoder`` overrides the model's search limits; the linked model copy that carries them is kept
        in ``work_dir`` (required then).
        """
        import vosk

        if not looks_like_model(model_dir):
            raise STTError(f"no Vosk model in {model_dir}")
        decoder = decoder or DecoderOptions()
        load_dir = model_dir
        if decoder.overrides:
            if work_dir is None:
                raise STTError("decoder settings need a work directory")
            try:
                load_dir = effective_model_dir(model_dir, decoder, work_dir)
            except DecoderError as exc:
                raise STTError(str(exc)) from exc
        vosk.SetLogLevel(-1)
        started = time.monotonic()
        try:
            model = vosk.Model(str(load_dir))
        except Exception as exc:  # vosk raises a bare Exception("Failed to create a model")
            raise STTError(f"cannot load the Vosk model in {model_dir}: {exc}") from exc
        log.info("speech model loaded", extra={"event": "stt_model_loaded", "model": model_dir.name,
                                               "decoder": decoder.describe(),
                                               "seconds": round(time.monotonic() - started, 2)})
        stt = cls(model, model_rate=model_sample_rate(model_dir), name=model_dir.name, **kwargs)
        stt.decoder = decoder
        return stt

    # streams --------------------------------------------------------------
    async def open_stream(self, rate: int, grammar: list[str] | None = None, *, wait_s: float | None = None,
                          partial_words: bool = False, fresh: bool = False) -> SttStream:
        """A recognizer for audio at ``rate`` (8 or 16 kHz); ``grammar`` restricts it to those phrases.
        ``fresh``: a new recognizer even when a warm one is idle."""
        if self._closed:
            raise STTError("speech service is closed")
        if rate not in audio.RATES:
            raise STTError(f"unsupported sample rate {rate} (8000 or 16000)")
        await self._acquire(self.queue_wait_s if wait_s is None else wait_s)
        key = grammar_key(grammar)
        held = None if fresh else self._take_idle(key)
        if held is not None:
            held.rec.SetPartialWords(partial_words)  # a flag only; nothing of the recognizer's runs now
            self.recognizers_reused += 1
            return SttStream(self, held, rate, grammar)
        try:
            rec = await asyncio.get_running_loop().run_in_executor(
                self._pool, self._new_recognizer, key, partial_words)
        except RuntimeError as exc:  # the pool was shut down while this caller waited for a slot
            self._release(None)
            raise STTError("speech service is closed") from exc
        except BaseException:
            self._release(None)
            raise
        self.recognizers_created += 1
        return SttStream(self, Recognizer(rec, key), rate, grammar)

    def _new_recognizer(self, key: str, partial_words: bool) -> Any:
        import vosk

        with self._create_lock:
            if key:
                rec = vosk.KaldiRecognizer(self.model, self.model_rate, key)
            else:
                rec = vosk.KaldiRecognizer(self.model, self.model_rate)
            rec.SetWords(True)
            rec.SetPartialWords(partial_words)
            return rec

    def _take_idle(self, key: str) -> Recognizer | None:
        for i in range(len(self._idle) - 1, -1, -1):  # the most recently used is the warmest
            if self._idle[i].grammar_key == key:
                return self._idle.pop(i)
        return None

    def _keep(self, held: Recognizer) -> None:
        worn = held.samples >= self.recycle_after_s * self.model_rate
        if self._closed or held.broken or worn or self.keep_warm == 0:
            self._drop(held)
            return
        self._idle.append(held)
        while len(self._idle) > self.keep_warm:
            self._drop(self._idle.pop(0))

    def _drop(self, held: Recognizer) -> None:
        # Freeing a recognizer frees its graph cache (up to a few hundred MB): done on a pool thread,
        # not on the event loop.
        box = [held.rec]
        held.rec = None
        try:
            self._pool.submit(box.clear)
        except RuntimeError:
            box.clear()

    async def prewarm(self, pcm: bytes, rate: int) -> int:
        """Decode ``pcm`` on new free-speech recognizers, one after the other, and keep them: the first
        callers after a start then get warm ones. Stops when no stream is free (a caller comes first) or
        ``keep_warm`` are warm. Returns how many it warmed."""
        done = 0
        chunk = audio.frame_bytes(rate, 100)
        while done < self.keep_warm and self.warm < self.keep_warm and not self._closed:
            try:
                stream = await self.open_stream(rate, wait_s=0, fresh=True)
            except STTError:  # busy or closing
                break
            async with stream:
                for i in range(0, len(pcm), chunk):
                    await stream.accept(pcm[i:i + chunk])
                await stream.finish()
            done += 1
        return done

    @property
    def warm(self) -> int:
        """Recognizers kept between streams, ready for the next one."""
        return len(self._idle)

    async def _acquire(self, wait_s: float) -> None:
        if not self._slots.locked():
            await self._slots.acquire()
            self.active_streams += 1
            return
        if self._waiting >= self.max_queued or wait_s <= 0:
            self.refused += 1
            raise STTBusy("all speech streams are busy")
        self._waiting += 1
        try:
            await asyncio.wait_for(self._slots.acquire(), wait_s)
        except TimeoutError as exc:
            self.refused += 1
            raise STTBusy("no speech stream became free in time") from exc
        finally:
            self._waiting -= 1
        self.active_streams += 1

    def _release(self, held: Recognizer | None) -> None:
        if held is not None:
            self._keep(held)
        self.active_streams -= 1
        self._slots.release()

    @property
    def waiting(self) -> int:
        return self._waiting

    # SpeechToText ----------------------------------------------------------
    async def transcribe_pcm(self, pcm: bytes, sample_rate: int, grammar: list[str] | None = None) -> Transcript:
        if not 4000 <= sample_rate <= 192000:
            raise STTError(f"unsupported sample rate {sample_rate}")
        limit = int(self.max_audio_s * sample_rate) * audio.SAMPLE_WIDTH
        pcm = pcm[:limit]
        if sample_rate not in audio.RATES:
            # A file at 22.05/44.1/48 kHz: bring it to the model's rate once instead of per chunk.
            pcm, sample_rate = audio.resample(pcm, sample_rate, self.model_rate), self.model_rate
        chunk = audio.frame_bytes(sample_rate, 200)
        async with await self.open_stream(sample_rate, grammar) as stream:
            for i in range(0, len(pcm), chunk):
                await stream.accept(pcm[i:i + chunk])
            return await stream.finish()

    async def transcribe_audio(self, data: bytes) -> Transcript:
        decoded = await audio.decode(data, self.model_rate, max_s=self.max_audio_s)
        return await self.transcribe_pcm(decoded.pcm, decoded.rate)

    async def close(self) -> None:
        self._closed = True
        while self._idle:
            self._drop(self._idle.pop())
        await asyncio.to_thread(self._pool.shutdown, True)
