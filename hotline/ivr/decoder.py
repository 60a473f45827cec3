"""Decoder effort of a Vosk model: beam and active-state limits, set per site without editing the model.

Vosk reads its search limits from the model's own ``conf/model.conf`` and has no API to change them. A
smaller beam and fewer active states decode faster and miss more words; how many more depends on the
model and the callers, so it is a site's choice, measured with ``hotline models eval`` on its own
recordings. The installed model stays untouched (a re-fetch would undo edits): Vosk is pointed at a
sibling directory whose entries link to the model's files and whose ``conf/model.conf`` carries the
overrides.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Outside these the decoder either finds nothing or is slower than any phone line allows.
LIMITS = {"beam": (4.0, 30.0), "max_active": (200, 50_000), "lattice_beam": (0.5, 20.0)}
_FLAGS = {"beam": "--beam", "max_active": "--max-active", "lattice_beam": "--lattice-beam"}


class DecoderError(ValueError):
    pass


@dataclass(frozen=True)
class DecoderOptions:
    """None: the model's own value."""

    beam: float | None = None
    max_active: int | None = None
    lattice_beam: float | None = None

    @classmethod
    def from_settings(cls, voice: dict[str, object]) -> DecoderOptions:
        """``voice.decoder_*``; 0 means the model's own value."""
        def pick(key: str) -> float | None:
            value = voice.get(f"decoder_{key}", 0)
            return value if isinstance(value, int | float) and value > 0 else None

        max_active = pick("max_active")
        return cls(beam=pick("beam"), max_active=int(max_active) if max_active else None,
                   lattice_beam=pick("lattice_beam")).checked()

    def checked(self) -> DecoderOptions:
        for key, (lo, hi) in LIMITS.items():
            value = getattr(self, key)
            if value is not None and not lo <= value <= hi:
                raise DecoderError(f"decoder {key} {value} is outside {lo}–{hi}")
        return self

    @property
    def overrides(self) -> dict[str, str]:
        """Kaldi flag → value, for the options that are set."""
        return {_FLAGS[key]: _number(value) for key in _FLAGS if (value := getattr(self, key)) is not None}

    def describe(self) -> str:
        return ", ".join(f"{flag[2:]}={value}" for flag, value in self.overrides.items()) or "model defaults"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def model_conf(original: str, options: DecoderOptions) -> str:
    """The model's ``model.conf`` with the set options replaced (appended when the model does not set them)."""
    over = options.overrides
    out: list[str] = []
    for line in original.splitlines():
        flag = line.strip().split("=", 1)[0]
        if flag in over:
            continue
        out.append(line)
    out.extend(f"{flag}={value}" for flag, value in over.items())
    return "\n".join(out) + "\n"


def effective_model_dir(model_dir: Path, options: DecoderOptions, work_dir: Path) -> Path:
    """The directory to give ``vosk.Model``: ``model_dir`` itself, or a linked copy under ``work_dir``.

    The copy is named by the model's path and its new ``model.conf``, so a changed setting or a re-fetched
    model gets a new one; it is built in a temporary directory and renamed into place, so a crash never
    leaves a half-built one behind.
    """
    options.checked()
    if not options.overrides:
        return model_dir
    model_dir = model_dir.resolve()
    conf_path = model_dir / "conf" / "model.conf"
    try:
        original = conf_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DecoderError(f"cannot read {conf_path}: {exc}") from exc
    conf = model_conf(original, options)
    digest = hashlib.sha256(f"{model_dir}\n{conf}".encode()).hexdigest()[:12]
    target = work_dir / f"{model_dir.name}.{digest}"
    if (target / "conf" / "model.conf").is_file():
        return target
    work_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{model_dir.name}.", dir=work_dir))
    try:
        for entry in model_dir.iterdir():
            if entry.name != "conf":
                (tmp / entry.name).symlink_to(entry)
        (tmp / "conf").mkdir()
        for entry in (model_dir / "conf").iterdir():
            if entry.name != "model.conf":
                (tmp / "conf" / entry.name).symlink_to(entry)
        (tmp / "conf" / "model.conf").write_text(conf, encoding="utf-8")
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "conf" / "model.conf").is_file():  # not just another process that was faster
                raise
    except OSError as exc:
        raise DecoderError(f"cannot prepare the decoder settings in {work_dir}: {exc}") from exc
    finally:
        if tmp.is_dir():  # left over only when the rename did not happen
            with contextlib.suppress(OSError):
                shutil.rmtree(tmp)
    return target
