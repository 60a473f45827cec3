"""A small recency cache of candidate fingerprints, shared by the duplicate matcher and the hotspots.

Scoring a candidate rebuilds its bigram vectors from the cleaned text kept in the index; the hotspot
evaluation of a new case scores much the same candidates the duplicate check scored a moment before.
"""

from __future__ import annotations

from collections import OrderedDict

from hotline.nlp.dedup import Fingerprint, Idf, from_cleaned
from hotline.store.dedup import IndexEntry


class FingerprintCache:
    def __init__(self, idf: Idf, capacity: int = 256) -> None:
        self.idf = idf
        self.capacity = capacity
        self._fps: OrderedDict[tuple[str, float], Fingerprint] = OrderedDict()

    def of(self, entry: IndexEntry) -> Fingerprint:
        # The creation time is part of the key: an entry re-filed after an edit is a new fingerprint.
        key = (entry.case_id, entry.created_at)
        fp = self._fps.get(key)
        if fp is not None:
            self._fps.move_to_end(key)
            return fp
        fp = from_cleaned(entry.text, entry.headline, entry.places, self.idf, entry.norms)
        self._fps[key] = fp
        if len(self._fps) > self.capacity:
            self._fps.popitem(last=False)
        return fp
