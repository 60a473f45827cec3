"""The voice door as an app feature: speech engine, AudioSocket server, chan_websocket endpoint, call outcomes.

With ``[ari]`` configured, resolved phone cases are surveyed by an outbound call (hotline/ivr/outbound.py):
this feature hands the callbacks' survey service its ``SurveyCaller``.

Without a speech model the product still runs: one log line tells the operator what to run, ``app[STT]``
stays unset (chat channels then skip voice notes) and callers hear a prompt and are put through to a person.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
from aiohttp import web

from hotline.appkeys import ANSWERS, INTAKE, SETTINGS, STORE, STT, SURVEYS
from hotline.bodies import read_form
from hotline.ivr import audio, audiosocket, websocket
from hotline.ivr.decoder import DecoderError, DecoderOptions
from hotline.ivr.flow import IvrConfig
from hotline.ivr.models import MODELS
from hotline.ivr.outbound import AriSettings, AriSurveyCaller
from hotline.ivr.prompts import PromptLibrary
from hotline.ivr.service import VoiceService
from hotline.ivr.session import clean_call_id, clean_number
from hotline.ivr.stt import STTError, VoskSTT, looks_like_model
from hotline.limits import address_allowed
from hotline.settings import Settings, SettingsError

log = logging.getLogger("hotline.ivr")

VOICE = web.AppKey("voice", VoiceService)
SURVEY_CALLER = web.AppKey("survey_caller", AriSurveyCaller)
DEFAULT_MODEL = MODELS["small-cn"].name


def model_dir(settings: Settings) -> Path:
    configured = settings["voice"]["model_dir"]
    if not configured:
        return settings.data_dir / "models" / DEFAULT_MODEL
    path = Path(configured).expanduser()
    return path if path.is_absolute() else settings.resolve_path("voice.model_dir")


def decoder_work_dir(settings: Settings) -> Path:
    """Where the linked model copies carrying ``voice.decoder_*`` are kept."""
    return settings.data_dir / "models" / ".decoder"


def load_stt(settings: Settings) -> VoskSTT | None:
    """Blocking. The engine, or None with one clear log line when no usable model is installed."""
    v = settings["voice"]
    decoder = DecoderOptions.from_settings(v)  # checked by ``setup`` already
    path = model_dir(settings)
    if not looks_like_model(path):
        log.warning(f"voice: no speech model in {path}; run `hotline models fetch small-cn` "
                    "(calls are answered and put through to a person until then)",
                    extra={"event": "stt_no_model", "model_dir": str(path)})
        return None
    try:
        return VoskSTT.load(path, decoder=decoder, work_dir=decoder_work_dir(settings),
                            max_streams=v["max_streams"], threads=v["stt_threads"],
                            queue_wait_s=v["queue_wait_s"], max_queued=v["max_queued"],
                            max_audio_s=v["max_transcribe_s"],
                            keep_warm=None if v["warm_recognizers"] < 0 else v["warm_recognizers"],
                            recycle_after_s=v["recycle_after_s"])
    except STTError as exc:
        log.error(f"voice: {exc}; run `hotline models fetch small-cn --force`",
                  extra={"event": "stt_load_failed", "model_dir": str(path)})
        return None


PREWARM_RATE = 8000  # telephone audio, as the callers' streams


def prewarm_audio(prompts: PromptLibrary, names: list[str], seconds: float) -> bytes:
    """The menu prompts, joined, at most ``seconds`` long: speech in the callers' language and words."""
    pcm = prompts.sequence(names, PREWARM_RATE)
    return pcm[:audio.frame_bytes(PREWARM_RATE, int(seconds * 1000))]


async def _prewarm(stt: VoskSTT, pcm: bytes) -> None:
    started = time.monotonic()
    try:
        warmed = await stt.prewarm(pcm, PREWARM_RATE)
    except Exception:  # warming is an optimisation: calls work without it
        log.exception("voice: warming the speech recognizers failed", extra={"event": "stt_prewarm_failed"})
        return
    log.info("speech recognizers warmed", extra={"event": "stt_prewarmed", "recognizers": warmed,
                                                   "seconds": round(time.monotonic() - started, 1)})


def ivr_config(settings: Settings) -> IvrConfig:
    return IvrConfig.load(settings.resolve_path("voice.ivr_file"))


def prompt_library(settings: Settings) -> PromptLibrary:
    override = settings["voice"]["prompts_dir"]
    return PromptLibrary(settings.resolve_path("voice.prompts_dir") if override else None)


async def voice_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    v = settings["voice"]
    if not v["enabled"]:
        yield
        return
    stt = await asyncio.to_thread(load_stt, settings)
    prompts = prompt_library(settings)
    cfg = ivr_config(settings)
    await asyncio.to_thread(prompts.preload, [*cfg.prompts, "beep", *prompts.digits("0123456789")])
    service = VoiceService(settings, app[INTAKE], app[STORE], stt, cfg, prompts, answers=app.get(ANSWERS))
    app[VOICE] = service
    prewarm: asyncio.Task[None] | None = None
    if stt is not None:
        app[STT] = stt
        pcm = prewarm_audio(prompts, list(cfg.prompts), v["prewarm_s"]) if v["prewarm_s"] > 0 else b""
        if pcm:
            prewarm = asyncio.create_task(_prewarm(stt, pcm))
    server: asyncio.Server | None = None
    if v["audiosocket_enabled"]:
        try:
            server = await audiosocket.start_server(service, v["audiosocket_host"], v["audiosocket_port"])
            service.audiosocket_port = server.sockets[0].getsockname()[1]
            log.info("audiosocket listening", extra={"event": "audiosocket_listening",
                                                     "host": v["audiosocket_host"],
                                                     "port": service.audiosocket_port})
        except OSError as exc:
            # A taken port must not take the web and chat doors down with it.
            log.error(f"voice: cannot listen for AudioSocket on {v['audiosocket_host']}:{v['audiosocket_port']}: "
                      f"{exc}", extra={"event": "audiosocket_bind_failed"})
    http: aiohttp.ClientSession | None = None
    ari = AriSettings.from_settings(settings)
    surveys = app.get(SURVEYS)
    if ari.enabled and surveys is not None and server is not None:
        http = aiohttp.ClientSession()
        caller = AriSurveyCaller(ari, app[STORE], http)
        app[SURVEY_CALLER] = caller
        surveys.caller = caller  # phone reporters are now asked by an outbound IVR call
        log.info("outbound survey calls through ARI", extra={"event": "ari_enabled", "context": ari.context})
    elif ari.enabled:
        log.error("ari: outbound survey calls need the AudioSocket server and the callbacks feature; "
                  "phone surveys go to the follow-up agents", extra={"event": "ari_unusable"})
    try:
        yield
    finally:
        if prewarm is not None:
            prewarm.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await prewarm
        if surveys is not None and app.get(SURVEY_CALLER) is not None and surveys.caller is app[SURVEY_CALLER]:
            surveys.caller = None
        if http is not None:
            await http.close()
        if server is not None:
            server.close()
        # Calls still running: treat as hung up, so each keeps what the caller said as a case.
        for session in list(service.active_sessions.values()):
            session.hangup_in()
        for _ in range(100):
            if not service.active_sessions:
                break
            await asyncio.sleep(0.05)
        if server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2)
        if stt is not None:
            await stt.close()


# PBX-facing HTTP ------------------------------------------------------------------------------------
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _pbx_only(handler: Handler) -> Handler:
    """Only ``voice.pbx_allow`` addresses, judged as ``hotline.limits.gate_address`` says: behind
    ``limits.trusted_proxies`` the forwarded client, and refused when a trusted proxy forwarded garbage."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        if not address_allowed(request, request.app[SETTINGS]["voice"]["pbx_allow"]):
            return web.json_response({"error": {"code": "forbidden", "message": "仅限电话交换机访问。"}},
                                     status=403)
        if VOICE not in request.app:
            return web.json_response({"error": {"code": "unavailable", "message": "语音功能未启用。"}},
                                     status=503)
        return await handler(request)

    return wrapped


def _call_id(request: web.Request) -> str:
    raw = request.match_info["call_id"]
    call_id = clean_call_id(raw)
    if call_id != raw:
        raise web.HTTPBadRequest(text="bad call id")
    return call_id


async def announce_call(request: web.Request) -> web.Response:
    """The dialplan tells us the caller before AudioSocket(): ``CURL(url,caller=${CALLERID(num)})``."""
    call_id = _call_id(request)
    form = await read_form(request) if request.can_read_body else {}
    caller = clean_number(str(form.get("caller", "") or request.query.get("caller", "")))
    await request.app[VOICE].calls.announce(call_id, caller)
    return web.Response(status=204)


async def call_status(request: web.Request) -> web.Response:
    rec = await request.app[VOICE].calls.get(_call_id(request))
    if rec is None:
        return web.json_response({"error": {"code": "not_found", "message": "未找到。"}}, status=404)
    return web.json_response({"call_id": rec.call_id, "adapter": rec.adapter, "action": rec.action or "pending",
                              "reason": rec.reason, "case_id": rec.case_id})


async def call_action(request: web.Request) -> web.Response:
    """Plain text for the dialplan: ``transfer``, ``hangup`` or ``pending``/``unknown``."""
    rec = await request.app[VOICE].calls.get(_call_id(request))
    if rec is None:
        return web.Response(text="unknown", status=404)
    return web.Response(text=rec.action or "pending")


async def media(request: web.Request) -> web.StreamResponse:
    return await websocket.media_handler(request.app[VOICE], request)


def setup(app: web.Application) -> None:
    settings = app[SETTINGS]
    ari = AriSettings.from_settings(settings)
    if ari.enabled:
        try:
            ari.check()
        except ValueError as exc:
            raise SettingsError(str(exc)) from exc
    try:
        DecoderOptions.from_settings(settings["voice"])
    except DecoderError as exc:  # at start-up, not when the first call needs the model
        raise SettingsError(f"voice: {exc}") from exc
    app.cleanup_ctx.append(voice_ctx)
    app.router.add_get(settings["voice"]["websocket_path"], _pbx_only(media))
    app.router.add_post("/ivr/calls/{call_id}", _pbx_only(announce_call))
    app.router.add_get("/ivr/calls/{call_id}", _pbx_only(call_status))
    app.router.add_get("/ivr/calls/{call_id}/action", _pbx_only(call_action))
