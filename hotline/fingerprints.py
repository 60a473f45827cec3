"""Scoring inputs rebuilt from what the candidate index keeps of a case.

The index stores each open case's cleaned text, headline, places and norms: enough to score it as the
other side of a pair (``candidate``) without reading the case, or to use it as the query (``query``).
"""

from __future__ import annotations

from hotline.nlp.dedup import Candidate, Fingerprint, Idf, from_cleaned
from hotline.store.dedup import IndexEntry


def query(entry: IndexEntry, idf: Idf) -> Fingerprint:
    return from_cleaned(entry.text, entry.headline, entry.places, idf, entry.norms)


def candidate(entry: IndexEntry, idf: Idf) -> Candidate:
    if entry.norms is None:  # an entry filed before norms were kept
        return Candidate.of(query(entry, idf))
    head_norm, body_norm, body_mass = entry.norms
    return Candidate(entry.text, entry.headline, entry.places, head_norm, body_norm, body_mass)
