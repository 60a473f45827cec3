"""PCM helpers for the voice door: ffmpeg decoding, streaming soxr resampling, WAV files, energy.

All PCM here is signed 16-bit little-endian mono ("slin" in Asterisk's words).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr

SAMPLE_WIDTH = 2
RATES = (8000, 16000)
MIN_FILE_RATE, MAX_FILE_RATE = 4000, 192000  # sample rates a WAV file may have


class AudioError(Exception):
    """Audio that cannot be decoded or has an unsupported format; the message is safe to show."""


def frame_bytes(rate: int, ms: int = 20) -> int:
    return rate * SAMPLE_WIDTH * ms // 1000


def duration_s(pcm_len: int, rate: int) -> float:
    return pcm_len / (SAMPLE_WIDTH * rate)


def rms(pcm: bytes) -> float:
    """Root-mean-square level of a PCM chunk (0 … 32768); an odd trailing byte is ignored."""
    n = len(pcm) // SAMPLE_WIDTH
    if n == 0:
        return 0.0
    samples = np.frombuffer(pcm, dtype="<i2", count=n).astype(np.float32)
    return float(np.sqrt(np.mean(samples * samples)))


class Resampler:
    """Streaming resampler that also copes with chunks of odd length (a truncated frame).

    The carry keeps a dangling byte for the next chunk so a sample is never split; soxr keeps its
    filter state between chunks, so chunk boundaries leave no clicks.
    """

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._carry = b""
        self._stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16", quality="HQ") \
            if in_rate != out_rate else None

    def process(self, pcm: bytes, last: bool = False) -> bytes:
        data = self._carry + pcm
        usable = len(data) - len(data) % SAMPLE_WIDTH
        self._carry = data[usable:]
        if last:
            self._carry = b""  # half a sample at the very end is noise, not audio
        if self._stream is None:
            return data[:usable]
        samples = np.frombuffer(data[:usable], dtype="<i2")
        return self._stream.resample_chunk(samples, last=last).astype("<i2").tobytes()


def resample(pcm: bytes, in_rate: int, out_rate: int) -> bytes:
    return Resampler(in_rate, out_rate).process(pcm, last=True)


@dataclass
class PcmAudio:
    pcm: bytes
    rate: int

    @property
    def duration_s(self) -> float:
        return duration_s(len(self.pcm), self.rate)


def wav_bytes(pcm: bytes, rate: int) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(SAMPLE_WIDTH)
        w.setframerate(rate)
        w.writeframes(pcm)
    return buf.getvalue()


def read_wav(data: bytes) -> PcmAudio:
    """A 16-bit PCM WAV (mono or multi-channel, which is mixed down); other WAVs raise AudioError."""
    try:
        with wave.open(io.BytesIO(data), "rb") as w:
            channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
            frames = w.readframes(w.getnframes())
    except (wave.Error, EOFError) as exc:
        raise AudioError(f"not a PCM WAV file: {exc}") from exc
    if width != SAMPLE_WIDTH:
        raise AudioError(f"WAV sample width {width * 8} bit is not supported (16 bit needed)")
    if not MIN_FILE_RATE <= rate <= MAX_FILE_RATE:
        # 0 Hz makes the resampler raise; 1 Hz would turn a short file into hours of audio.
        raise AudioError(f"WAV sample rate {rate} Hz is not supported ({MIN_FILE_RATE}–{MAX_FILE_RATE} Hz)")
    if channels > 1:
        samples = np.frombuffer(frames[: len(frames) - len(frames) % (2 * channels)], dtype="<i2")
        frames = samples.reshape(-1, channels).mean(axis=1).astype("<i2").tobytes()
    return PcmAudio(frames, rate)


async def decode(data: bytes, rate: int = 16000, *, max_s: float = 600.0, timeout_s: float = 60.0,
                 ffmpeg: str = "ffmpeg") -> PcmAudio:
    """Any container ffmpeg reads (amr, ogg/opus, mp3, wav, …) → mono PCM at ``rate``, cut at ``max_s``."""
    if not data:
        raise AudioError("empty audio")
    args = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-i", "pipe:0", "-t", f"{max_s:.3f}",
            "-vn", "-ac", "1", "-ar", str(rate), "-f", "s16le", "-acodec", "pcm_s16le", "pipe:1"]
    try:
        proc = await asyncio.create_subprocess_exec(*args, stdin=asyncio.subprocess.PIPE,
                                                    stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE)
    except FileNotFoundError as exc:
        raise AudioError("ffmpeg is not installed") from exc
    try:
        out, err = await asyncio.wait_for(proc.communicate(data), timeout_s)
    except (TimeoutError, asyncio.CancelledError):
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    except BrokenPipeError:
        # ffmpeg gave up reading (not audio); its exit code and stderr say why.
        out, err = b"", b""
        await proc.wait()
    if proc.returncode != 0:
        reason = err.decode("utf-8", "replace").strip().splitlines()
        raise AudioError(f"cannot decode audio: {reason[-1] if reason else 'ffmpeg failed'}")
    if not out:
        raise AudioError("the file contains no audio")
    return PcmAudio(out, rate)


async def decode_file(path: Path, rate: int = 16000, *, max_s: float = 600.0) -> PcmAudio:
    return await decode(await asyncio.to_thread(path.read_bytes), rate, max_s=max_s)


class WavRecorder:
    """Writes a call's inbound audio to a WAV file as it arrives, up to a maximum length."""

    def __init__(self, path: Path, rate: int, max_s: float) -> None:
        """Raises FileExistsError rather than overwrite: another call's case may point at that recording."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.rate = rate
        self._left = int(max_s * rate) * SAMPLE_WIDTH
        self._carry = b""
        self._file = path.open("xb")
        self._wav: wave.Wave_write | None = wave.open(self._file, "wb")  # noqa: SIM115 (open for the whole call)
        self._wav.setnchannels(1)
        self._wav.setsampwidth(SAMPLE_WIDTH)
        self._wav.setframerate(rate)
        self.bytes_written = 0

    def write(self, pcm: bytes) -> None:
        if self._wav is None or self._left <= 0:
            return
        data = self._carry + pcm
        usable = min(len(data) - len(data) % SAMPLE_WIDTH, self._left)
        self._carry = data[usable:] if usable == len(data) - len(data) % SAMPLE_WIDTH else b""
        self._wav.writeframes(data[:usable])
        self._left -= usable
        self.bytes_written += usable

    def close(self) -> None:
        if self._wav is not None:
            try:
                self._wav.close()  # writes the header's lengths; leaves a file it did not open to us
            finally:
                self._wav = None
                self._file.close()

    @property
    def duration_s(self) -> float:
        return duration_s(self.bytes_written, self.rate)
