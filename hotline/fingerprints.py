"""Scoring inputs rebuilt from what the candidate index keeps of a case.

The index stores each open case's cleaned text, headline, places and norms: enough to score it as the
other side of a pair (``candidate``) without reading the case, or to use it as the query (``query``).
"""

from __future__ import annotations

from collections import OrderedDict

from hotline.nlp.dedup import Candidate, Counted, Fingerprint, Idf, from_cleaned, with_counts
from hotline.store.dedup import IndexEntry

# Cases whose bigram counts a process keeps: about 8 kB each. The candidates of a lookup are mostly
# recent cases, and each was counted when it was itself checked.
COUNTS_KEPT = 2048


def query(entry: IndexEntry, idf: Idf) -> Fingerprint:
    return from_cleaned(entry.text, entry.headline, entry.places, idf, entry.norms)


def candidate(entry: IndexEntry, idf: Idf, counted: Counted | None = None) -> Candidate:
    if entry.norms is None:  # an entry filed before norms were kept
        return Candidate.of(query(entry, idf))
    head_norm, body_norm, body_mass = entry.norms
    return Candidate(entry.text, entry.headline, entry.places, head_norm, body_norm, body_mass, counted)


class CandidateCounts:
    """The bigram counts of recently seen cases by id, least recently used dropped first.

    A case is the candidate of many lookups while it is open; its counts are kept with the text and
    headline they were counted from, so an entry whose text changed is counted again."""

    def __init__(self, idf: Idf, size: int = COUNTS_KEPT) -> None:
        self.idf = idf
        self.size = size
        self._kept: OrderedDict[str, tuple[str, str, Counted]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._kept)

    def remember(self, case_id: str, fp: Fingerprint) -> None:
        """Keep the counts of a case just fingerprinted (checked before it is stored)."""
        self._put(case_id, fp.text, fp.headline, Counted.of(fp))

    def candidates(self, entries: list[IndexEntry]) -> list[Candidate]:
        """``candidate`` of each entry with its bigram counts, counting only the ones not kept."""
        found = []
        for entry in entries:
            kept = self._kept.get(entry.case_id)
            if kept is not None and kept[0] == entry.text and kept[1] == entry.headline:
                self._kept.move_to_end(entry.case_id)
                found.append(candidate(entry, self.idf, kept[2]))
            else:
                found.append(candidate(entry, self.idf))
        out = with_counts(found, self.idf)
        for entry, before, after in zip(entries, found, out, strict=True):
            if after.counted is not None and after.counted is not before.counted:
                self._put(entry.case_id, after.text, after.headline, after.counted)
        return out

    def _put(self, case_id: str, text: str, headline: str, counted: Counted) -> None:
        self._kept[case_id] = (text, headline, counted)
        self._kept.move_to_end(case_id)
        while len(self._kept) > self.size:
            self._kept.popitem(last=False)
