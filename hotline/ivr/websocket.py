"""Asterisk chan_websocket media endpoint (Asterisk 20.16 / 21.11 / 22.6 / 23+).

Asterisk connects here (``Dial(WebSocket/<websocket_client.conf id>/c(slin16)v(caller=…,call_id=…),,g)``),
first sends the TEXT message ``MEDIA_START connection_id:… channel:… format:slin16 optimal_frame_size:640``,
then the caller's audio in BINARY messages and notifications such as ``DTMF_END digit:5`` in TEXT ones.
We send prompt audio in BINARY messages between ``START_MEDIA_BUFFERING`` and ``STOP_MEDIA_BUFFERING <id>``
(Asterisk frames and times it, answers ``MEDIA_BUFFERING_COMPLETED <id>``), ``FLUSH_MEDIA`` for barge-in,
honour ``MEDIA_XOFF``/``MEDIA_XON``, and finish with ``HANGUP``; the dialplan continues after Dial and
reads the outcome from ``GET /ivr/calls/<call_id>/action`` (README: Voice).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiohttp import WSMsgType, web

from hotline.ivr import audio
from hotline.ivr.service import VoiceService
from hotline.ivr.session import CallOutcome

log = logging.getLogger("hotline.ivr.websocket")

MAX_MESSAGE = 65500  # Asterisk closes the socket and hangs up on a bigger message
FORMATS = {"slin": 8000, "slin16": 16000}
START_TIMEOUT_S = 10.0
COMPLETION_SLACK_S = 3.0


def parse_notification(text: str) -> tuple[str, dict[str, str], list[str]]:
    """``NAME key:value key:value`` → (NAME, {key: value}, [bare words])."""
    parts = text.strip().split()
    if not parts:
        return "", {}, []
    fields: dict[str, str] = {}
    bare: list[str] = []
    for part in parts[1:]:
        key, sep, value = part.partition(":")
        if sep:
            fields[key] = value
        else:
            bare.append(part)
    return parts[0], fields, bare


def usable_frame_size(frame_size: int, rate: int) -> int:
    """Asterisk's ``optimal_frame_size`` if we can send whole frames of it, else 20 ms at ``rate``.

    It must hold whole samples (even) and fit in one message: a frame larger than a message would leave no
    whole frame to send at all, and an odd one would split samples between messages.
    """
    if 2 <= frame_size <= MAX_MESSAGE and frame_size % audio.SAMPLE_WIDTH == 0:
        return frame_size
    return audio.frame_bytes(rate)


class WebSocketTransport:
    name = "websocket"

    def __init__(self, ws: web.WebSocketResponse, rate: int, frame_size: int) -> None:
        self.ws = ws
        self.rate = rate
        self.frame_size = usable_frame_size(frame_size, rate)
        self.xon_timeouts = 0
        self._xon = asyncio.Event()
        self._xon.set()
        self._completed: dict[str, asyncio.Future[None]] = {}
        self._seq = 0

    def notify(self, name: str, fields: dict[str, str], bare: list[str]) -> None:
        if name == "MEDIA_XOFF":
            self._xon.clear()
        elif name == "MEDIA_XON":
            self._xon.set()
        elif name == "MEDIA_BUFFERING_COMPLETED":
            key = bare[0] if bare else fields.get("id", "")
            fut = self._completed.pop(key, None)
            if fut is not None and not fut.done():
                fut.set_result(None)

    async def send_audio(self, pcm: bytes) -> None:
        self._seq += 1
        mark = f"p{self._seq}"
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._completed[mark] = fut
        # Whole frames per message, each message under Asterisk's 65500-byte limit.
        step = (MAX_MESSAGE // self.frame_size) * self.frame_size
        # Asterisk plays in real time: everything, pauses for MEDIA_XOFF included, is over within the prompt's
        # length. A PBX that never sends MEDIA_XON or MEDIA_BUFFERING_COMPLETED must not hold the call.
        deadline = asyncio.get_running_loop().time() + audio.duration_s(len(pcm), self.rate) + COMPLETION_SLACK_S
        sent = 0
        try:
            async with asyncio.timeout_at(deadline):
                await self.ws.send_str("START_MEDIA_BUFFERING")
                for i in range(0, len(pcm), step):
                    await self._xon.wait()
                    await self.ws.send_bytes(pcm[i:i + step])
                    sent = i + step
                await self.ws.send_str(f"STOP_MEDIA_BUFFERING {mark}")
                # Asterisk says when the last frame went out.
                await fut
        except TimeoutError:
            if sent < len(pcm):
                self.xon_timeouts += 1
                log.warning("websocket: no MEDIA_XON, prompt given up", extra={"event": "ws_xon_timeout",
                                                                               "paused": not self._xon.is_set()})
        except ConnectionError:
            pass
        finally:
            self._completed.pop(mark, None)

    async def stop_audio(self) -> None:
        if not self.ws.closed:
            await self.ws.send_str("FLUSH_MEDIA")

    async def end(self, outcome: CallOutcome) -> None:
        if self.ws.closed:
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.send_str("HANGUP")
        await self.ws.close()


async def media_handler(service: VoiceService, request: web.Request) -> web.StreamResponse:
    ws = web.WebSocketResponse(max_msg_size=4 << 20, autoping=True)
    await ws.prepare(request)
    flow_task: asyncio.Task[CallOutcome] | None = None
    try:
        try:
            first = await ws.receive(timeout=START_TIMEOUT_S)
        except TimeoutError:
            await ws.close()
            return ws
        if first.type != WSMsgType.TEXT:
            await ws.close()
            return ws
        name, fields, _ = parse_notification(first.data)
        rate = FORMATS.get(fields.get("format", "slin16"), 0)
        if name != "MEDIA_START" or not rate:
            log.warning("websocket: unsupported start", extra={"event": "ws_bad_start", "start": first.data[:120]})
            with contextlib.suppress(ConnectionError):
                await ws.send_str("HANGUP")
            await ws.close()
            return ws
        try:
            frame_size = int(fields.get("optimal_frame_size", "0"))
        except ValueError:
            frame_size = 0
        transport = WebSocketTransport(ws, rate, frame_size)
        if frame_size and transport.frame_size != frame_size:
            log.warning("websocket: unusable optimal_frame_size, 20 ms frames instead",
                        extra={"event": "ws_bad_frame_size", "frame_size": frame_size})
        call_id = request.query.get("call_id") or fields.get("connection_id", "")
        session = await service.open_call(transport, call_id=call_id, caller=request.query.get("caller", ""), rate=rate)
        flow_task = asyncio.create_task(service.run_flow(session), name=f"ivr-{session.call_id}")
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                await session.audio_in(msg.data)
            elif msg.type == WSMsgType.TEXT:
                name, fields, bare = parse_notification(msg.data)
                if name == "DTMF_END":
                    await session.dtmf_in(fields.get("digit", "")[:1])
                else:
                    transport.notify(name, fields, bare)
            else:
                break
        if not flow_task.done():
            session.hangup_in()
        await flow_task
    except asyncio.CancelledError:
        if flow_task is not None and not flow_task.done():
            flow_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await flow_task
        raise
    except Exception:
        log.exception("websocket call failed", extra={"event": "ws_call_failed"})
    finally:
        if not ws.closed:
            await ws.close()
    return ws
