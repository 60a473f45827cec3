"""Prompt audio: built from pinyin with espeak-ng, shipped as small WAVs, played at the line's rate.

``hotline ivr prompts build`` renders every text of config/ivr.toml [prompts] and [digits] into
hotline/ivr/prompts/ (8 kHz mono, silence trimmed). At run time ``PromptLibrary`` reads a recorded
replacement from voice.prompts_dir first, then the shipped file, and caches the PCM per sample rate.
"""

from __future__ import annotations

import logging
import math
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from hotline.ivr import audio

log = logging.getLogger("hotline.ivr.prompts")

SHIPPED_DIR = Path(__file__).resolve().parent / "prompts"
BEEP = "beep"
GAP_S = 0.12  # pause between concatenated prompts and between digits


class PromptError(Exception):
    pass


def digit_prompt(d: str) -> str:
    return f"digit_{d}"


def _trim(pcm: bytes, rate: int, threshold: float = 200.0, keep_s: float = 0.03) -> bytes:
    """Cut espeak's leading and trailing silence so digits and sentences join tightly."""
    samples = np.frombuffer(pcm[: len(pcm) - len(pcm) % 2], dtype="<i2")
    if samples.size == 0:
        return b""
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > threshold)
    if loud.size == 0:
        return b""
    keep = int(keep_s * rate)
    start, end = max(0, loud[0] - keep), min(samples.size, loud[-1] + keep)
    return samples[start:end].tobytes()


def tone(rate: int, hz: float = 1000.0, seconds: float = 0.25, level: float = 0.3) -> bytes:
    n = int(rate * seconds)
    t = np.arange(n) / rate
    wave_ = np.sin(2 * math.pi * hz * t) * level * 32767
    fade = min(n // 2, int(0.01 * rate))
    if fade:
        ramp = np.linspace(0.0, 1.0, fade)
        wave_[:fade] *= ramp
        wave_[-fade:] *= ramp[::-1]
    return wave_.astype("<i2").tobytes()


def synthesize(text: str, *, voice: str, speed: int, rate: int, espeak: str = "espeak-ng") -> bytes:
    """One pinyin text → trimmed mono PCM at ``rate``."""
    if shutil.which(espeak) is None:
        raise PromptError(f"{espeak} is not installed (apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "p.wav"
        proc = subprocess.run([espeak, "-v", voice, "-s", str(speed), "-w", str(out), text],
                              capture_output=True, timeout=60, check=False)
        if proc.returncode != 0 or not out.exists():
            raise PromptError(f"espeak-ng failed for {text!r}: {proc.stderr.decode('utf-8', 'replace').strip()}")
        decoded = audio.read_wav(out.read_bytes())
    return audio.resample(_trim(decoded.pcm, decoded.rate), decoded.rate, rate)


def build(prompts: dict[str, str], digits: dict[str, str], out_dir: Path, *, voice: str = "cmn-latn-pinyin",
          speed: int = 165, digit_speed: int = 190, rate: int = 8000) -> list[Path]:
    """Render every prompt and digit, plus the beep, into ``out_dir``; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(name, text, speed) for name, text in prompts.items()]
    jobs += [(digit_prompt(d), text, digit_speed) for d, text in sorted(digits.items())]
    written = []
    for name, text, spd in jobs:
        pcm = synthesize(text, voice=voice, speed=spd, rate=rate)
        if not pcm:
            raise PromptError(f"prompt {name!r} rendered as silence")
        path = out_dir / f"{name}.wav"
        path.write_bytes(audio.wav_bytes(pcm, rate))
        written.append(path)
    path = out_dir / f"{BEEP}.wav"
    path.write_bytes(audio.wav_bytes(tone(rate), rate))
    written.append(path)
    return written


class PromptLibrary:
    """Prompt PCM by name and rate; recorded prompts in ``override_dir`` win over the shipped ones.

    A recorded prompt that cannot be read (not a WAV, 8-bit, a broken header) is logged and the next
    directory's is played instead: one bad file must neither silence the menu nor stop the service.
    """

    def __init__(self, override_dir: Path | None = None, shipped_dir: Path = SHIPPED_DIR) -> None:
        self.dirs = [d for d in (override_dir, shipped_dir) if d is not None]
        self._cache: dict[tuple[str, int], bytes] = {}
        self._decoded: dict[str, audio.PcmAudio | None] = {}
        self._missing: set[str] = set()

    def path(self, name: str) -> Path | None:
        for d in self.dirs:
            p = d / f"{name}.wav"
            if p.is_file():
                return p
        return None

    def has(self, name: str) -> bool:
        return self._decode(name) is not None

    def _decode(self, name: str) -> audio.PcmAudio | None:
        if name in self._decoded:
            return self._decoded[name]
        found: audio.PcmAudio | None = None
        for d in self.dirs:
            p = d / f"{name}.wav"
            if not p.is_file():
                continue
            try:
                found = audio.read_wav(p.read_bytes())
                break
            except (OSError, audio.AudioError) as exc:
                log.error(f"prompt unreadable: {p}: {exc}", extra={"event": "prompt_unreadable", "prompt": name})
        self._decoded[name] = found
        return found

    def pcm(self, name: str, rate: int) -> bytes:
        key = (name, rate)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        decoded = self._decode(name)
        if decoded is None and name not in self._missing:
            self._missing.add(name)
            log.warning("prompt missing; run `hotline ivr prompts build`",
                        extra={"event": "prompt_missing", "prompt": name})
        pcm = audio.resample(decoded.pcm, decoded.rate, rate) if decoded is not None else b""
        self._cache[key] = pcm
        return pcm

    def sequence(self, names: list[str], rate: int) -> bytes:
        """Prompts joined with short pauses, e.g. ["case_number_is", "digit_2", "digit_0", …]."""
        gap = bytes(audio.frame_bytes(rate, int(GAP_S * 1000)))
        parts = [self.pcm(n, rate) for n in names]
        return gap.join(p for p in parts if p)

    @staticmethod
    def digits(number: str) -> list[str]:
        """A case number read digit by digit; the dash and anything else but digits are skipped."""
        return [digit_prompt(ch) for ch in number if ch.isdigit()]

    def preload(self, names: list[str], rates: tuple[int, ...] = audio.RATES) -> None:
        for name in names:
            for rate in rates:
                self.pcm(name, rate)
