"""Who reported a case, as hashes that link one citizen's cases without storing the number again."""

from __future__ import annotations

import hashlib
import re

from hotline.records import Case

_DIGITS = re.compile(r"\D")
# Sender ids that name nobody: a web form, a call without caller id. Linking on them would make every
# anonymous caller "the same caller".
_NOBODY = frozenset({"", "web", "unknown"})


def phone_key(number: str) -> str:
    """The caller hash of a phone number in any notation (137-0000-7777, +86…); '' for no number."""
    digits = _DIGITS.sub("", number or "")
    return hashlib.sha256(f"tel:{digits}".encode()).hexdigest()[:16] if len(digits) >= 5 else ""


def caller_keys(case: Case) -> list[str]:
    """Hashes of who called: the phone number and the channel's own sender id.

    Anonymous web senders (a hash of the client address) are left out: many citizens share one
    address behind a NAT, and "same caller" is too strong a signal to hand out on that basis.
    """
    out = []
    phone = phone_key(case.contact)
    if phone:
        out.append(phone)
    if case.sender not in _NOBODY and not case.sender.startswith("web:"):
        out.append(hashlib.sha256(f"{case.channel}:{case.sender}".encode()).hexdigest()[:16])
    return out
