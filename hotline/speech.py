"""What the chat channels and the IVR need from speech-to-text, independent of the engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class Word:
    word: str
    start: float
    end: float
    conf: float


@dataclass
class Transcript:
    text: str
    words: list[Word] = field(default_factory=list)
    confidence: float = 0.0  # mean word confidence, 0 when nothing was recognised
    duration_s: float = 0.0


class SpeechToText(Protocol):
    async def transcribe_audio(self, data: bytes) -> Transcript:
        """Any audio container ffmpeg reads (amr, ogg/opus, mp3, wav) → text."""
        ...

    async def transcribe_pcm(self, pcm: bytes, sample_rate: int, grammar: list[str] | None = None) -> Transcript:
        """16-bit little-endian mono PCM at 8 or 16 kHz → text; ``grammar`` limits the phrases."""
        ...
