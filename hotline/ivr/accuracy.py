"""Character error rate of speech-to-text on recorded calls with reference texts (``hotline models eval``).

Chinese has no spaces to count words by, so accuracy is the character error rate (CER): edits needed to
turn the transcript into the reference, per reference character, after both are reduced to letters and
digits (punctuation, spacing, width and case are not the recognizer's job). The alignment is jiwer's.
"""

from __future__ import annotations

import asyncio
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jiwer

from hotline.ivr.audio import AudioError
from hotline.ivr.stt import STTError, VoskSTT

AUDIO_SUFFIXES = (".wav", ".ogg", ".oga", ".opus", ".mp3", ".amr", ".m4a", ".flac")


def normalise(text: str) -> str:
    """Letters and digits only, NFKC, lower case."""
    text = unicodedata.normalize("NFKC", text).lower()
    return "".join(ch for ch in text if unicodedata.category(ch)[0] in "LN")


@dataclass
class Score:
    ref_chars: int = 0
    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0

    @property
    def edits(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def cer(self) -> float | None:
        return self.edits / self.ref_chars if self.ref_chars else None

    def add(self, other: Score) -> None:
        self.ref_chars += other.ref_chars
        self.substitutions += other.substitutions
        self.deletions += other.deletions
        self.insertions += other.insertions


def score(reference: str, hypothesis: str) -> Score:
    ref, hyp = normalise(reference), normalise(hypothesis)
    if not ref:  # jiwer refuses an empty reference; everything heard is inserted
        return Score(insertions=len(hyp))
    if not hyp:
        return Score(ref_chars=len(ref), deletions=len(ref))
    out = jiwer.process_characters(ref, hyp)
    return Score(ref_chars=len(ref), substitutions=out.substitutions, deletions=out.deletions,
                 insertions=out.insertions)


def pairs(folder: Path) -> tuple[list[tuple[Path, Path]], list[Path]]:
    """(audio file, its reference ``.txt``) pairs in ``folder``, and the audio files without a reference."""
    paired: list[tuple[Path, Path]] = []
    unpaired: list[Path] = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in AUDIO_SUFFIXES or not path.is_file():
            continue
        ref = path.with_suffix(".txt")
        if ref.is_file():
            paired.append((path, ref))
        else:
            unpaired.append(path)
    return paired, unpaired


@dataclass
class Report:
    total: Score = field(default_factory=Score)
    files: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    audio_s: float = 0.0
    decode_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        cer = self.total.cer
        return {"files": len(self.files), "failed": len(self.failed), "ref_chars": self.total.ref_chars,
                "cer": None if cer is None else round(cer, 4), "substitutions": self.total.substitutions,
                "deletions": self.total.deletions, "insertions": self.total.insertions,
                "audio_s": round(self.audio_s, 1),
                "rtf": round(self.decode_s / self.audio_s, 3) if self.audio_s else None}


async def evaluate(stt: VoskSTT, items: Iterable[tuple[Path, Path]],
                   step: Callable[[], None] | None = None) -> Report:
    """Transcribe each audio file and score it against its reference; a bad file is reported, not fatal."""
    report = Report()
    for audio_path, ref_path in items:
        try:
            reference = ref_path.read_text(encoding="utf-8")
            data = await asyncio.to_thread(audio_path.read_bytes)
            before_audio, before_decode = stt.audio_seconds, stt.decode_seconds
            result = await stt.transcribe_audio(data)
        except (OSError, UnicodeDecodeError, AudioError, STTError) as exc:
            report.failed.append({"file": audio_path.name, "error": str(exc)})
        else:
            audio_s = stt.audio_seconds - before_audio
            report.audio_s += audio_s
            report.decode_s += stt.decode_seconds - before_decode
            one = score(reference, result.text)
            report.total.add(one)
            report.files.append({"file": audio_path.name, "audio_s": round(audio_s, 2),
                                 "ref_chars": one.ref_chars, "edits": one.edits,
                                 "cer": None if one.cer is None else round(one.cer, 4), "text": result.text})
        if step:
            step()
    return report
