"""Fixed-window request counters for the per-source rate limits (hotline/limits.py).

Layout (prefix ``hl``): ``hl:rl:<group>:<source>:<window>`` — an integer counter that expires with its
window. Kept in Redis so that every process behind one address shares one budget per client.
"""

from __future__ import annotations

from hotline.store.cases import Store

# INCR and the expiry in one step: a counter must never outlive its window (a stuck counter would
# lock a client out for good). KEYS: counter. ARGV: ttl seconds.
_HIT_LUA = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return n
"""


class RateCounters:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.r = store.r
        self._hit = self.r.register_script(_HIT_LUA)

    def k_counter(self, group: str, source: str, window: int) -> str:
        return f"{self.store.p}:rl:{group}:{source}:{window}"

    async def hit(self, group: str, source: str, window: int, window_s: int) -> int:
        """Count one request of ``source`` in ``window``; returns the count including this one."""
        return int(await self._hit(keys=[self.k_counter(group, source, window)], args=[window_s + 1]))
