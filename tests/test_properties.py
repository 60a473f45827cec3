"""Property tests (hypothesis): the status machine, text cleaning, the AudioSocket frame reader, id allocation.

Each property is checked against an independent statement of the rule (a reference parser, an explicit list
of forbidden characters, a breadth-first search over TRANSITIONS) rather than against the code's own helpers,
so that a wrong rule in the code makes the test fail instead of agreeing with it.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import struct
import unicodedata
import uuid
from collections import deque
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hotline.ivr.audiosocket import HEADER, message, read_message
from hotline.nlp.clean import MAX_MODEL_CHARS, for_model, to_simplified
from hotline.nlp.text import normalize, sanitize
from hotline.redis_server import EmbeddedRedis
from hotline.status import TRANSITIONS, IllegalTransition, Status, can_move, check_move
from hotline.store import Store

# The whole file stays well under 30 s on the shared 2-core machine.
FAST = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
STATUSES = list(Status)


# status machine ------------------------------------------------------------------------------------------

@FAST
@given(st.lists(st.sampled_from(STATUSES), max_size=60))
def test_random_moves_only_follow_transitions(targets: list[Status]) -> None:
    current = Status.RECEIVED
    path = [current]
    for target in targets:
        allowed = target in TRANSITIONS[current]
        try:
            check_move(current, target)
        except IllegalTransition as exc:
            assert not allowed, f"{current} → {target} is in TRANSITIONS but was refused"
            assert (exc.current, exc.target) == (current, target)
            assert str(current) in str(exc) and str(target) in str(exc)
            continue
        assert allowed, f"{current} → {target} is not in TRANSITIONS but was allowed"
        current = target
        path.append(current)
    # Every step actually taken is an edge of the machine.
    for a, b in itertools.pairwise(path):
        assert b in TRANSITIONS[a]


@FAST
@given(st.sampled_from(STATUSES), st.sampled_from(STATUSES))
def test_check_move_raises_exactly_when_can_move_is_false(current: Status, target: Status) -> None:
    assert can_move(current, target) == (target in TRANSITIONS[current])
    if can_move(current, target):
        check_move(current, target)
    else:
        with pytest.raises(IllegalTransition):
            check_move(current, target)


def test_every_status_has_rules_and_is_reachable_from_received() -> None:
    assert set(TRANSITIONS) == set(Status)
    for targets in TRANSITIONS.values():
        assert targets <= set(Status)
    seen = {Status.RECEIVED}
    todo = deque([Status.RECEIVED])
    while todo:
        for nxt in TRANSITIONS[todo.popleft()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    assert seen == set(Status), f"unreachable: {set(Status) - seen}"
    # No dead end: a case can always be moved on (closed cases can still be reopened).
    assert all(TRANSITIONS[s] for s in Status)


# text cleaning -------------------------------------------------------------------------------------------

# What must never survive cleaning: C0/C1 controls (tab and newline are layout, not control, in sanitize),
# zero-width and bidi-override characters, line/paragraph separators, word joiners, the BOM.
INVISIBLE = (set(range(0x200B, 0x2010)) | set(range(0x2028, 0x202F)) | set(range(0x2060, 0x2070)) | {0xFEFF})


def bad_chars(text: str, allowed: str) -> list[str]:
    return [c for c in text if c not in allowed and (unicodedata.category(c) == "Cc" or ord(c) in INVISIBLE)]


NASTY = (
    "\x00\x01\x07\x08\x0b\x0c\x0e\x1b\x1f\x7f\x80\x85\x9f\t\n\r\u00a0\u1680\u2000\u200b\u200d\u200e\u2028"
    "\u2029\u202a\u202e\u2060\u2066\u3000\ufeff\ufffd"
    "ＡＢＣａｂｃ０１２３！＃％＊＊ＸＸ×"  # full-width letters, digits, mask runs
    "區電話號問題處們這來時發業學車醫環報費"  # traditional characters of the table
    "路灯坏了噪声扰民垃圾小区物业"  # ordinary simplified text
    "😀👍🏽👨‍👩‍👧🇨🇳"  # emoji, skin tone, ZWJ sequence, flag
    "AB市区县镇0000000xX*@.wwhtp:/"  # pieces of admin names, emails and URLs
    "\u0301\u0308\u1100\u1161\u11a8ﬁ①⑩㈱\u2126\u212b\u00a8\u00b4\u02d8\u2017"  # combining marks, jamo,
    # compatibility characters; ¨ ´ ˘ ‗ become a space + combining mark under NFKC
)
text_strategy = st.one_of(
    st.text(),  # any code point except surrogates
    st.text(alphabet=st.sampled_from(NASTY), max_size=200),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x3000, exclude_categories=["Cs"]), max_size=300),
    # Very long letters: a short piece repeated up to ~100k characters.
    st.builds(lambda s, n: s * n, st.text(alphabet=st.sampled_from(NASTY), min_size=1, max_size=50),
              st.integers(1, 2000)),
)


@FAST
@given(text_strategy)
def test_sanitize_removes_controls_and_is_idempotent(text: str) -> None:
    out = sanitize(text)
    assert not bad_chars(out, "\t\n")
    assert "\r" not in out
    assert out == out.strip()
    assert sanitize(out) == out


@FAST
@given(text_strategy)
def test_normalize_is_canonical_and_idempotent(text: str) -> None:
    out = normalize(text)
    assert not bad_chars(out, "\n")
    assert "\t" not in out and "\r" not in out and "\u3000" not in out
    assert "  " not in out and "\n\n\n" not in out
    assert out == out.strip()
    assert unicodedata.is_normalized("NFKC", out)
    assert normalize(out) == out


@FAST
@given(text_strategy, st.integers(1, 2000))
def test_for_model_is_bounded_clean_and_simplified(text: str, max_chars: int) -> None:
    out = for_model(text, max_chars)
    assert len(out) <= max_chars
    assert not bad_chars(out, "")
    assert "\n" not in out and "\t" not in out and "  " not in out
    assert not re.search(r"[A-Z]", out)
    assert to_simplified(out) == out
    # The default bound is the one the models were trained with.
    assert len(for_model(text)) <= MAX_MODEL_CHARS


# AudioSocket frame reader ----------------------------------------------------------------------------------

def reference_parse(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """Independent statement of the wire format: type (1 byte), big-endian length (2 bytes), payload."""
    frames: list[tuple[int, bytes]] = []
    i = 0
    while len(data) - i >= 3:
        kind = data[i]
        length = (data[i + 1] << 8) | data[i + 2]
        if len(data) - i - 3 < length:
            break
        frames.append((kind, data[i + 3:i + 3 + length]))
        i += 3 + length
    return frames, data[i:]


async def read_all(chunks: list[bytes], *, eof: bool = True,
                   timeout_s: float = 2.0) -> tuple[list[tuple[int, bytes]], BaseException]:
    """Feed the chunks as they would arrive from a socket; read messages until the reader gives up."""
    reader = asyncio.StreamReader()

    async def feed() -> None:
        for chunk in chunks:
            reader.feed_data(chunk)
            await asyncio.sleep(0)
        if eof:
            reader.feed_eof()

    feeder = asyncio.create_task(feed())
    frames: list[tuple[int, bytes]] = []
    try:
        while True:
            frames.append(await read_message(reader, timeout_s))
    except Exception as exc:
        error: BaseException = exc
    await feeder
    return frames, error


def check_ending(error: BaseException, rest: bytes) -> None:
    """A stream that ends is reported as IncompleteReadError saying what was missing — never anything else."""
    assert isinstance(error, asyncio.IncompleteReadError), repr(error)
    if len(rest) < HEADER.size:
        assert (error.partial, error.expected) == (rest, HEADER.size)
    else:
        (length,) = struct.unpack(">H", rest[1:3])
        assert (error.partial, error.expected) == (rest[3:], length)


@FAST
@given(st.binary(max_size=3000), st.lists(st.integers(0, 3000), max_size=8))
def test_random_bytes_parse_like_the_reference_or_end_cleanly(data: bytes, cuts: list[int]) -> None:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    chunks = [data[a:b] for a, b in itertools.pairwise(points)]
    frames, error = asyncio.run(read_all(chunks))
    expected, rest = reference_parse(data)
    assert frames == expected
    check_ending(error, rest)


frame_strategy = st.tuples(
    st.one_of(st.sampled_from([0x00, 0x01, 0x03, 0x10, 0x11, 0x12, 0xFF]), st.integers(0, 255)),
    st.one_of(st.binary(max_size=700), st.binary(min_size=320, max_size=320), st.just(b"")),
)


@FAST
@given(st.lists(frame_strategy, max_size=20), st.lists(st.integers(0, 20_000), max_size=12),
       st.integers(0, 40))
def test_valid_frames_split_anywhere_come_back_whole(frames: list[tuple[int, bytes]], cuts: list[int],
                                                    truncate: int) -> None:
    wire = b"".join(message(kind, payload) for kind, payload in frames)
    # Optionally cut the stream short, as a peer that vanishes mid-message does.
    wire = wire[:len(wire) - min(truncate, len(wire))] if truncate % 3 == 0 else wire
    points = sorted({0, len(wire), *(c % (len(wire) + 1) for c in cuts)})
    chunks = [wire[a:b] for a, b in itertools.pairwise(points)]
    got, error = asyncio.run(read_all(chunks))
    expected, rest = reference_parse(wire)
    assert got == expected
    if len(wire) == sum(3 + len(p) for _, p in frames):
        assert got == frames and rest == b""
    check_ending(error, rest)


@settings(max_examples=15, deadline=None)
@given(st.binary(max_size=200))
def test_a_stalled_peer_times_out_instead_of_hanging(data: bytes) -> None:
    # No EOF: after the complete messages, the reader must give up with TimeoutError, not wait for ever.
    frames, error = asyncio.run(read_all([data], eof=False, timeout_s=0.05))
    assert frames == reference_parse(data)[0]
    assert isinstance(error, TimeoutError), repr(error)


def test_message_encoding_limits() -> None:
    assert message(0x10, b"\x01\x02") == b"\x10\x00\x02\x01\x02"
    assert len(message(0x10, bytes(65535))) == 65538
    with pytest.raises(struct.error):  # the length field has 16 bits: a bigger payload cannot be framed
        message(0x10, bytes(65536))


# id allocation against the real embedded valkey --------------------------------------------------------------

ID_FORMAT = re.compile(r"^(\d{8})-(\d{6})$")
TZ = ZoneInfo("Asia/Shanghai")


async def allocate_batches(url: str, sizes: list[int], now: float | None) -> list[list[str]]:
    store = Store.from_url(url, prefix=f"prop{uuid.uuid4().hex[:10]}")
    try:
        batches = []
        for size in sizes:
            batches.append(list(await asyncio.gather(*(store.allocate_id(now) for _ in range(size)))))
        ttl = await store.r.ttl(f"{store.p}:seq:{ID_FORMAT.match(batches[0][0]).group(1)}")  # type: ignore[union-attr]
        assert 0 < ttl <= 3 * 86400, "the day counter must expire, or keys pile up for ever"
        await store.r.delete(*[k async for k in store.r.scan_iter(f"{store.p}:*")])
        return batches
    finally:
        await store.close()


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(1, 80), min_size=1, max_size=5),
       st.one_of(st.none(), st.integers(1_500_000_000, 4_000_000_000).map(float)))
def test_concurrent_ids_are_distinct_well_formed_and_increasing(redis_server: EmbeddedRedis, sizes: list[int],
                                                                now: float | None) -> None:
    before = datetime.now(TZ).strftime("%Y%m%d")
    batches = asyncio.run(allocate_batches(redis_server.url, sizes, now))
    after = datetime.now(TZ).strftime("%Y%m%d")
    all_ids = [i for b in batches for i in b]
    assert len(set(all_ids)) == len(all_ids) == sum(sizes)
    parsed = []
    for case_id in all_ids:
        m = ID_FORMAT.match(case_id)
        assert m, case_id
        parsed.append((m.group(1), int(m.group(2))))
    days = {d for d, _ in parsed}
    assert len(days) == 1
    day = days.pop()
    if now is None:
        assert day in (before, after)
    else:
        assert day == datetime.fromtimestamp(now, TZ).strftime("%Y%m%d")
    # A fresh prefix starts the day at 1; concurrent calls share out 1..n without a gap or a repeat.
    assert sorted(n for _, n in parsed) == list(range(1, sum(sizes) + 1))
    # Batches run one after another, so every id of a later batch is above every id of an earlier one.
    for earlier, later in itertools.pairwise(batches):
        assert max(int(i[-6:]) for i in earlier) < min(int(i[-6:]) for i in later)


async def allocate_on_days(url: str, stamps: list[float]) -> list[str]:
    store = Store.from_url(url, prefix=f"prop{uuid.uuid4().hex[:10]}")
    try:
        ids = list(await asyncio.gather(*(store.allocate_id(t) for t in stamps)))
        await store.r.delete(*[k async for k in store.r.scan_iter(f"{store.p}:*")])
        return ids
    finally:
        await store.close()


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(1_700_000_000, 1_700_000_000 + 5 * 86400), min_size=1, max_size=60))
def test_each_day_has_its_own_sequence(redis_server: EmbeddedRedis, stamps: list[int]) -> None:
    ids = asyncio.run(allocate_on_days(redis_server.url, [float(t) for t in stamps]))
    assert len(set(ids)) == len(ids)
    per_day: dict[str, list[int]] = {}
    for t, case_id in zip(stamps, ids, strict=True):
        day = datetime.fromtimestamp(t, TZ).strftime("%Y%m%d")
        assert case_id.startswith(day + "-")  # the day of the id is the local day of the call (Asia/Shanghai)
        per_day.setdefault(day, []).append(int(case_id[-6:]))
    for numbers in per_day.values():
        assert sorted(numbers) == list(range(1, len(numbers) + 1))
