"""Filing a case in the candidate index (``hotline/store/dedup.py``) from inside another script.

The index's own filing script and the case-creating script (``hotline/store/cases.py``) share the Lua
function below, so a new case and its index entry can be written in one round trip.
"""

from __future__ import annotations

from dataclasses import dataclass

# KEYS[k0]: the entry's hash, KEYS[k0 + 1]: the open set, KEYS[k0 + 2 ...]: the postings (to the last key).
# ARGV[fields_from ...]: the hash's field/value pairs (to the last argument).
FILE_ENTRY_LUA = """
local function file_entry(k0, id, at, cap, fields_from)
  redis.call('HSET', KEYS[k0], unpack(ARGV, fields_from))
  redis.call('ZADD', KEYS[k0 + 1], at, id)
  for i = k0 + 2, #KEYS do
    redis.call('ZADD', KEYS[i], at, id)
    -- Keep the newest only: a key shared by thousands of cases says little about any one.
    redis.call('ZREMRANGEBYRANK', KEYS[i], 0, -cap - 1)
  end
end
"""


@dataclass
class Filing:
    """A case's index entry as script input: ``keys`` (hash, open set, postings) and ``fields`` (the hash's
    field/value pairs); the case id and creation time come from the case."""

    keys: list[str]
    posting_cap: int
    fields: list[str]
