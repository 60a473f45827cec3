"""Outbound survey calls (回访) through Asterisk ARI, answered by the IVR survey flow.

    survey worker ── POST /ari/channels (endpoint=PJSIP/<number>@<trunk>, context, extension s, channelId=<uuid>,
    (any process)    variables HOTLINE_CALL_ID=<uuid>) ──▶ Asterisk dials the citizen
          │                                                      │ answered: the dialplan context runs
          │ Redis: ocall <uuid> → {case_id, purpose}             ▼ AudioSocket(${HOTLINE_CALL_ID}, host:port)
          │                                           any ``hotline serve`` process: the UUID is an outbound
          └──── waits for "connected", then "result" ◀── call → ``run_survey`` instead of the inbound menu

The originator waits for the connection for ring time + margin, then for the answers for ``max_call_s``.
No connection (no answer, busy, the citizen hung up before answering), an ARI error (4xx/5xx, connection
refused) or a call ended before both questions were answered → ``None``: the callbacks' retry and
follow-up logic (hotline/surveys.py) takes over. Every try is in the case's audit trail.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from hotline.bodies import parse_json
from hotline.ivr.flow import survey_result
from hotline.settings import Settings
from hotline.store import Store
from hotline.store.calls import CONNECTED, CallStore

log = logging.getLogger("hotline.ivr.outbound")

POLL_S = 0.2  # how often the originator looks for messages from the connected call
_DIAL = re.compile(r"^\+?\d{3,20}$")
_TRUNK = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_CONTEXT = re.compile(r"^[A-Za-z0-9._-]{1,80}$")
# An ARI channel or error JSON is a few KB; anything far larger is not Asterisk and must not fill memory.
MAX_ANSWER_BYTES = 64 * 1024


@dataclass
class AriSettings:
    url: str = ""
    user: str = ""
    password: str = field(default="", repr=False)
    trunk: str = ""
    context: str = "hotline-survey"
    caller_id: str = ""
    ring_timeout_s: int = 30
    connect_margin_s: float = 10.0
    max_call_s: float = 180.0
    max_concurrent_calls: int = 4
    request_timeout_s: float = 5.0

    @classmethod
    def from_settings(cls, settings: Settings) -> AriSettings:
        a = settings["ari"]
        return cls(url=a["url"].rstrip("/"), user=a["user"], password=a["password"], trunk=a["trunk"],
                   context=a["context"], caller_id=a["caller_id"], ring_timeout_s=a["ring_timeout_s"],
                   connect_margin_s=a["connect_margin_s"], max_call_s=a["max_call_s"],
                   max_concurrent_calls=a["max_concurrent_calls"], request_timeout_s=a["request_timeout_s"])

    @property
    def enabled(self) -> bool:
        return bool(self.url)

    def check(self) -> None:
        """Refuse a configuration that would put odd text into the dial string or the dialplan."""
        if not self.url.startswith(("http://", "https://")):
            raise ValueError("ari.url must start with http:// or https://")
        if not _TRUNK.match(self.trunk):
            raise ValueError("ari.trunk must be a PJSIP endpoint name (letters, digits, . _ -)")
        if not _CONTEXT.match(self.context):
            raise ValueError("ari.context must be a dialplan context name")
        if self.ring_timeout_s <= 0 or self.max_call_s <= 0 or self.max_concurrent_calls <= 0:
            raise ValueError("ari.ring_timeout_s, max_call_s and max_concurrent_calls must be positive")

    @property
    def base(self) -> str:
        # Accept both http://pbx:8088 and http://pbx:8088/ari.
        return self.url[:-4] if self.url.endswith("/ari") else self.url


class AriError(Exception):
    """``placed``: Asterisk accepted the request (2xx) but its answer was unusable, so a channel may exist."""

    def __init__(self, status: int, message: str, *, placed: bool = False) -> None:
        super().__init__(f"ARI {status or 'unreachable'}: {message}")
        self.status = status
        self.message = message
        self.placed = placed


def dial_number(raw: str) -> str:
    """The number as Asterisk should dial it (digits, optional leading +), or "" when it is not a number."""
    number = re.sub(r"[\s\-()]", "", raw or "")
    return number if _DIAL.match(number) else ""


class AriClient:
    """The two ARI requests we need: originate into the dialplan, and hang up a channel still ringing."""

    def __init__(self, cfg: AriSettings, http: aiohttp.ClientSession, *,
                 max_answer_bytes: int = MAX_ANSWER_BYTES) -> None:
        self.cfg = cfg
        self.http = http
        self.headers = {"Authorization": aiohttp.encode_basic_auth(cfg.user, cfg.password)}
        self.timeout = aiohttp.ClientTimeout(total=cfg.request_timeout_s)
        self.max_answer_bytes = max_answer_bytes

    async def _request(self, method: str, path: str, *, params: dict[str, str],
                       body: dict[str, Any] | None = None) -> tuple[int, Any]:
        try:
            async with self.http.request(method, f"{self.cfg.base}/ari{path}", params=params, json=body,
                                         headers=self.headers, timeout=self.timeout) as resp:
                ok = resp.status < 300
                raw = bytearray()
                async for chunk in resp.content.iter_chunked(16384):
                    raw += chunk
                    if len(raw) > self.max_answer_bytes:
                        raise AriError(resp.status, "response too large", placed=ok)
                # Lenient: a caller name in another charset must not hide the channel id Asterisk returned.
                text = raw.decode("utf-8", errors="replace")
                data: Any = None
                if text.strip():
                    with contextlib.suppress(ValueError):
                        data = parse_json(text)
                if not ok:
                    message = data.get("message", "") if isinstance(data, dict) else text
                    raise AriError(resp.status, str(message)[:200])
                return resp.status, data
        except AriError:
            raise
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            # ValueError: aiohttp's own parsing of a malformed answer (headers, chunking, encoding).
            raise AriError(0, type(exc).__name__) from exc

    async def originate(self, number: str, call_id: str) -> dict[str, Any]:
        """``POST /ari/channels``: dial the citizen; once answered the channel runs ``context,s,1``."""
        params = {"endpoint": f"PJSIP/{number}@{self.cfg.trunk}", "context": self.cfg.context, "extension": "s",
                  "priority": "1", "timeout": str(self.cfg.ring_timeout_s), "channelId": call_id}
        if self.cfg.caller_id:
            params["callerId"] = self.cfg.caller_id
        _status, data = await self._request("POST", "/channels", params=params,
                                            body={"variables": {"HOTLINE_CALL_ID": call_id}})
        if not isinstance(data, dict) or data.get("id") != call_id:
            raise AriError(502, "unexpected originate response", placed=True)
        return data

    async def hangup(self, channel_id: str) -> bool:
        """``DELETE /ari/channels/{id}``; False when the channel is already gone (404)."""
        try:
            await self._request("DELETE", f"/channels/{channel_id}", params={"reason": "normal"})
        except AriError as exc:
            if exc.status == 404:
                return False
            raise
        return True


class AriSurveyCaller:
    """``hotline.surveys.SurveyCaller`` over Asterisk ARI and the AudioSocket/chan_websocket adapters."""

    def __init__(self, cfg: AriSettings, store: Store, http: aiohttp.ClientSession) -> None:
        self.cfg = cfg
        self.store = store
        self.calls = CallStore(store)
        self.ari = AriClient(cfg, http)
        self._slots = asyncio.Semaphore(cfg.max_concurrent_calls)
        self.placed = 0

    @property
    def max_call_s(self) -> float:
        """Upper bound of one try once it has a line: the survey worker's lease on the entry, renewed while
        the try queues for a line and runs."""
        return self.cfg.ring_timeout_s + self.cfg.connect_margin_s + self.cfg.max_call_s + 30

    async def survey_call(self, number: str, case_id: str,
                          ready: Callable[[], Awaitable[bool]] | None = None) -> dict[str, Any] | None:
        async with self._slots:
            # The wait for a line can be long: the survey may have ended or the calling hours closed meanwhile.
            if ready is not None and not await ready():
                return None
            return await self._call(number, case_id)

    async def _call(self, number: str, case_id: str) -> dict[str, Any] | None:
        call_id = str(uuid.uuid4())
        dial = dial_number(number)
        if not dial:
            await self._event(case_id, "survey_call", {"call_id": call_id, "outcome": "bad_number"})
            return None
        ttl = self.cfg.ring_timeout_s + self.cfg.connect_margin_s + self.cfg.max_call_s + 60
        # Registered before dialling: an answered call may connect before the ARI response arrives.
        await self.calls.register(call_id, case_id=case_id, purpose="survey", ttl_s=ttl)
        try:
            channel = await self.ari.originate(dial, call_id)
        except AriError as exc:
            await self.calls.finish(call_id)
            if exc.placed:
                # Asterisk took the request: stop a phone that may be ringing for a call nobody waits for.
                with contextlib.suppress(AriError):
                    await self.ari.hangup(call_id)
            log.warning("survey call not placed", extra={"event": "survey_call_failed", "case_id": case_id,
                                                         "status": exc.status, "error": exc.message})
            await self._event(case_id, "survey_call", {"call_id": call_id, "outcome": "ari_error",
                                                       "status": exc.status, "error": exc.message})
            return None
        self.placed += 1
        # The channel's name carries the phone number: only its id and state go to the log.
        await self._event(case_id, "survey_call_placed", {"call_id": call_id, "state": str(channel.get("state", ""))})
        loop = asyncio.get_running_loop()
        connect_by = loop.time() + self.cfg.ring_timeout_s + self.cfg.connect_margin_s
        connected = False
        result_by = 0.0
        result: dict[str, Any] | None = None
        try:
            while result is None:
                msg = await self.calls.next_message(call_id)
                if msg is None:
                    now = loop.time()
                    if not connected and now >= connect_by:
                        if not await self.calls.abandon(call_id):
                            call = await self.calls.get(call_id)
                            if call is not None and call.state == CONNECTED:
                                # A connection claimed it at the last moment: its messages follow.
                                connected, result_by = True, now + self.cfg.max_call_s
                                continue
                        with contextlib.suppress(AriError):
                            await self.ari.hangup(call_id)  # still ringing somewhere: stop it
                        await self._event(case_id, "survey_call", {"call_id": call_id, "outcome": "no_answer"})
                        return None
                    if connected and now >= result_by:
                        await self._event(case_id, "survey_call", {"call_id": call_id, "outcome": "timeout"})
                        await self.calls.finish(call_id)
                        # Nobody waits for this call's answers any more: end the line rather than leave the
                        # citizen on it (the session's own limit would end it too, but later).
                        with contextlib.suppress(AriError):
                            await self.ari.hangup(call_id)
                        return None
                    await asyncio.sleep(POLL_S)
                    continue
                if msg.get("event") == "connected":
                    connected = True
                    result_by = loop.time() + self.cfg.max_call_s
                elif msg.get("event") == "result":
                    result = msg
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await self.calls.abandon(call_id)
            raise
        await self.calls.finish(call_id)
        raw = result.get("answers") if isinstance(result.get("answers"), dict) else {}
        answers = {str(k): str(v) for k, v in raw.items()}
        got = survey_result(answers)
        complete = got is not None and bool(got.get("satisfaction"))
        outcome = "answered" if complete else ("hung_up" if result.get("hung_up") else "unanswered")
        # Partial answers stay in the trail for the follow-up agent even when the try does not count.
        # The recording of the call (written by the process that took it) is named in the trail.
        audio_ref = str(result.get("audio_ref") or "")[:300]
        await self._event(case_id, "survey_call", {"call_id": call_id, "outcome": outcome, "answers": answers,
                                                   "audio_ref": audio_ref})
        return got if complete else None

    async def _event(self, case_id: str, action: str, data: dict[str, Any]) -> None:
        try:
            await self.store.add_event(case_id, actor="voice:survey", action=action, data=data)
        except Exception:
            log.exception("survey call event failed", extra={"event": "survey_event_failed", "case_id": case_id})

