"""Chat doors: full conversations (describe → place → confirm → case number) over the real HTTP doors.

Runs the app in-process on loopback with the embedded Valkey (appendfsync always), WeChat pushes signed
(plain or AES) and Telegram updates with the webhook secret, and the loopback Bot API / WeChat API doubles
of tests/chat_support.py on the far side. N citizens talk concurrently; each conversation is 3 pushes.
Prints one JSON object as the last line: per door conversations/s, push p50/p99 ms, cases made.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hotline.app import create_app  # noqa: E402
from hotline.appkeys import STORE  # noqa: E402
from hotline.redis_server import EmbeddedRedis  # noqa: E402
from hotline.settings import load_settings  # noqa: E402
from tests.chat_support import FakeBotAPI, FakeWeChatAPI, WeChatPusher, tg_callback, tg_message, wx_xml  # noqa: E402

TEXTS = ["小区门口路灯不亮已经一周", "马路中间有个大坑很危险", "楼下餐馆油烟扰民严重", "公交站台顶棚破损漏雨",
         "垃圾桶满了没人清运", "夜间施工噪音扰民", "共享单车堵塞人行道", "公园健身器材损坏"]


async def start(url: str, data_dir: Path, **sections: Any) -> tuple[TestClient, web.Application]:
    overrides: dict[str, Any] = {"server": {"data_dir": str(data_dir)}, "store": {"redis_url": url},
                                 "dedup": {"enabled": False}, "logging": {"level": "WARNING"}, **sections}
    app = create_app(load_settings(overrides=overrides, env={}))
    client = TestClient(TestServer(app))
    await client.start_server()
    return client, app


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else 0.0


async def wechat(url: str, data_dir: Path, n: int, conc: int, aes: bool) -> dict[str, Any]:
    fake = FakeWeChatAPI("wxbench", "secret")
    api_server = TestServer(fake.app)
    await api_server.start_server()
    key = base64.b64encode(os.urandom(32)).decode().rstrip("=") if aes else ""
    client, app = await start(url, data_dir, store={"redis_url": url, "key_prefix": f"bwx{int(aes)}"},
                              wechat={"token": "tok", "app_id": "wxbench", "app_secret": "secret", "aes_key": key,
                                      "api_base_url": str(api_server.make_url("")).rstrip("/")})
    pusher = WeChatPusher("tok", key, "wxbench")
    lat: list[float] = []
    errors = 0
    msg_id = [7_000_000_000]

    async def push(openid: str, content: str) -> None:
        nonlocal errors
        msg_id[0] += 1
        xml = wx_xml(openid, "text", msg_id=msg_id[0], Content=content)
        params, body = pusher.encrypted(xml) if aes else pusher.plain(xml)
        t0 = time.perf_counter()
        resp = await client.post("/wechat", params=params, data=body)
        text = await resp.text()
        lat.append((time.perf_counter() - t0) * 1000)
        if resp.status != 200 or text == "success":
            errors += 1

    sem = asyncio.Semaphore(conc)

    async def citizen(i: int) -> None:
        async with sem:
            openid = f"oBench{i:08d}"
            for content in (f"{TEXTS[i % len(TEXTS)]}（第{i}号）", "跳过", "1"):
                await push(openid, content)

    t0 = time.perf_counter()
    await asyncio.gather(*(citizen(i) for i in range(n)))
    elapsed = time.perf_counter() - t0
    cases = await app[STORE].count()
    await client.close()
    await api_server.close()
    return {"conversations_per_s": round(n / elapsed, 1), "push_p50_ms": round(statistics.median(lat), 1),
            "push_p99_ms": round(percentile(lat, 0.99), 1), "cases": cases, "errors": errors}


async def telegram(url: str, data_dir: Path, n: int, conc: int) -> dict[str, Any]:
    token = "1:benchTOKEN"
    fake = FakeBotAPI(token)
    api_server = TestServer(fake.app)
    await api_server.start_server()
    base = str(api_server.make_url("")).rstrip("/")
    client, app = await start(url, data_dir, store={"redis_url": url, "key_prefix": "btg"},
                              telegram={"token": token, "secret_token": "s", "api_base_url": f"{base}/bot",
                                        "file_base_url": f"{base}/file/bot"})
    lat: list[float] = []
    errors = 0
    uid = [0]

    async def post(update: dict[str, Any]) -> None:
        nonlocal errors
        t0 = time.perf_counter()
        resp = await client.post("/telegram/webhook", json=update, headers={"X-Telegram-Bot-Api-Secret-Token": "s"})
        await resp.read()
        lat.append((time.perf_counter() - t0) * 1000)
        errors += resp.status != 200

    sem = asyncio.Semaphore(conc)

    async def citizen(i: int) -> None:
        async with sem:
            chat = 1_000_000 + i
            for text in (f"{TEXTS[i % len(TEXTS)]}（第{i}号）", "跳过"):
                uid[0] += 1
                await post(tg_message(uid[0], chat, text=text))
            uid[0] += 1
            await post(tg_callback(uid[0], chat, "c:yes"))

    t0 = time.perf_counter()
    await asyncio.gather(*(citizen(i) for i in range(n)))
    elapsed = time.perf_counter() - t0
    cases = await app[STORE].count()
    await client.close()
    await api_server.close()
    return {"conversations_per_s": round(n / elapsed, 1), "update_p50_ms": round(statistics.median(lat), 1),
            "update_p99_ms": round(percentile(lat, 0.99), 1), "cases": cases, "errors": errors,
            "bot_api_calls": len(fake.calls)}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        redis = EmbeddedRedis(Path(tmp), appendfsync="always")
        url = redis.start()
        try:
            return {
                "conversations": args.conversations, "concurrency": args.concurrency,
                "wechat_plain": await wechat(url, Path(tmp), args.conversations, args.concurrency, aes=False),
                "wechat_aes": await wechat(url, Path(tmp), args.conversations, args.concurrency, aes=True),
                "telegram": await telegram(url, Path(tmp), args.conversations, args.concurrency),
            }
        finally:
            redis.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--conversations", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--json", action="store_true", help="only the JSON result line")
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    if not args.json:
        for door in ("wechat_plain", "wechat_aes", "telegram"):
            print(door, result[door], file=sys.stderr)
    print(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    main()
