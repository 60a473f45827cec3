"""The store's connection pool: redis-py asyncio connections that pack commands with hiredis.

redis-py packs a command in C (``hiredis.pack_command``) on its synchronous connections only; the
asyncio ones use a pure-Python packer that re-copies the whole buffer for every argument
(redis/redis-py#4176). Creating a case is one script call with about a hundred arguments (the record,
its events, its index postings), and packing it took 70 µs in Python against 8 µs in hiredis. The
bytes on the wire are the same.
"""

from __future__ import annotations

from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.exceptions import DataError


class _HiredisPacking:
    def pack_command(self, *args: Any) -> list[bytes]:
        # The Python packer also splits a multi-word command name ("CONFIG GET") and sends memoryviews
        # without copying; such commands are rare and keep that path.
        first = args[0]
        if (isinstance(first, str) and " " in first) or (isinstance(first, bytes) and b" " in first) or any(
                isinstance(a, memoryview | bytearray) for a in args):
            return super().pack_command(*args)  # type: ignore[misc]
        try:
            return [hiredis.pack_command(args)]
        except TypeError as exc:  # what the Python packer reports for a value it cannot encode
            raise DataError(str(exc)) from exc


class Connection(_HiredisPacking, aioredis.Connection):
    pass


class UnixDomainSocketConnection(_HiredisPacking, aioredis.UnixDomainSocketConnection):
    pass


class SSLConnection(_HiredisPacking, aioredis.SSLConnection):
    pass


_PACKING = {aioredis.Connection: Connection, aioredis.UnixDomainSocketConnection: UnixDomainSocketConnection,
            aioredis.SSLConnection: SSLConnection}


def connection_pool(url: str, **kwargs: Any) -> aioredis.BlockingConnectionPool:
    """A bounded pool for ``url`` (redis://, rediss:// or unix://) whose connections pack with hiredis."""
    pool = aioredis.BlockingConnectionPool.from_url(url, **kwargs)
    pool.connection_class = _PACKING.get(pool.connection_class, pool.connection_class)
    return pool
