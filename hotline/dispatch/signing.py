"""HMAC-SHA256 signatures of dispatch traffic in both directions (webhook orders out, status events in).

Signature = hex HMAC-SHA256(secret, "<unix timestamp>.<raw body>"), sent as
``X-Hotline-Signature: sha256=<hex>`` with ``X-Hotline-Timestamp: <unix timestamp>``. The timestamp is
inside the signed bytes, so a captured request cannot be replayed after ``max_age_s``.
"""

from __future__ import annotations

import hashlib
import hmac
import time

from hotline.numbers import ascii_digits

SIGNATURE_HEADER = "X-Hotline-Signature"
TIMESTAMP_HEADER = "X-Hotline-Timestamp"


class SignatureError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def signature(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def sign_headers(secret: str, body: bytes, now: float | None = None) -> dict[str, str]:
    ts = str(int(now if now is not None else time.time()))
    return {TIMESTAMP_HEADER: ts, SIGNATURE_HEADER: signature(secret, ts, body)}


def verify(secret: str, headers: dict[str, str] | object, body: bytes, max_age_s: float,
           now: float | None = None) -> None:
    """Raise SignatureError unless the request is signed with ``secret`` within ``max_age_s``."""
    get = getattr(headers, "get")  # noqa: B009 - CIMultiDict and dict alike
    ts, sig = get(TIMESTAMP_HEADER, ""), get(SIGNATURE_HEADER, "")
    if not secret:
        raise SignatureError("events_disabled", "未配置 dispatch.secret，不接受状态回传。")
    if not ts or not sig:
        raise SignatureError("unsigned", f"缺少签名（{TIMESTAMP_HEADER} / {SIGNATURE_HEADER}）。")
    if not ascii_digits(ts) or len(ts) > 12:
        raise SignatureError("bad_timestamp", f"{TIMESTAMP_HEADER} 须为 Unix 秒数。")
    now = time.time() if now is None else now
    if abs(now - int(ts)) > max_age_s:
        raise SignatureError("stale", "签名已过期（时间戳超出允许范围）。")
    # compare_digest refuses str holding non-ASCII characters (TypeError): such a signature is wrong anyway.
    if not sig.isascii() or not hmac.compare_digest(signature(secret, ts, body), sig.strip()):
        raise SignatureError("bad_signature", "签名不正确。")
