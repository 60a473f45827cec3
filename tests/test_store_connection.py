"""The store's connections pack commands with hiredis and put the same bytes on the wire as redis-py."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st
from redis.exceptions import DataError

from hotline.redis_server import EmbeddedRedis
from hotline.store import Store
from hotline.store.connection import (
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
    connection_pool,
)

ARGS = st.lists(
    st.one_of(st.text(alphabet=st.characters(exclude_categories=["Cs"])), st.binary(),
              st.integers(min_value=-(2**63), max_value=2**63 - 1),
              st.floats(allow_nan=False)),
    min_size=1, max_size=60,
)


def python_packed(*args: object) -> bytes:
    return b"".join(aioredis.Connection().pack_command(*args))


@given(ARGS)
def test_the_packed_command_is_byte_for_byte_the_python_packers(args: list[object]) -> None:
    assert b"".join(Connection().pack_command("EVALSHA", *args)) == python_packed("EVALSHA", *args)


def test_a_long_script_call_packs_the_same() -> None:
    args = ("EVALSHA", "a" * 40, 41, *(f"hl:dd:k:物业{i}" for i in range(40)), "记录" * 3000, 1795526782.916123,
            b"\x00\xff" * 10, -3)
    packed = Connection().pack_command(*args)
    assert len(packed) == 1
    assert packed[0] == python_packed(*args)


def test_multi_word_names_and_memoryviews_keep_the_python_path() -> None:
    assert b"".join(Connection().pack_command("CONFIG GET", "maxmemory")) == python_packed("CONFIG GET", "maxmemory")
    view = memoryview(b"x" * 10_000)
    assert b"".join(Connection().pack_command("SET", "k", view)) == python_packed("SET", "k", view)


@pytest.mark.parametrize("bad", [None, True, object()])
def test_a_value_that_cannot_be_sent_is_a_data_error(bad: object) -> None:
    with pytest.raises(DataError):
        Connection().pack_command("SET", "k", bad)


@pytest.mark.parametrize(("url", "cls"), [
    ("redis://127.0.0.1:6379/0", Connection),
    ("rediss://127.0.0.1:6380/0", SSLConnection),
    ("unix:///tmp/hotline-test.sock", UnixDomainSocketConnection),
])
def test_every_url_scheme_gets_the_packing_connection(url: str, cls: type) -> None:
    assert connection_pool(url).connection_class is cls


async def test_the_store_round_trips_through_the_packing_connection(redis_server: EmbeddedRedis,
                                                                   key_prefix: str) -> None:
    store = Store.from_url(redis_server.url, prefix=key_prefix)
    try:
        assert store.r.connection_pool.connection_class is UnixDomainSocketConnection
        value = "市民反映：小区物业不作为\u3000" * 2000
        assert await store.r.set(f"{key_prefix}:probe", value)
        assert await store.r.get(f"{key_prefix}:probe") == value
        await store.r.delete(f"{key_prefix}:probe")
    finally:
        await store.close()
