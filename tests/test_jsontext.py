"""JSON text of records and replies: what json would store, read back the same."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from hotline.jsontext import dumps
from hotline.status import Status

VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(alphabet=st.characters(exclude_categories=["Cs"])),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=30,
)


@given(VALUES)
def test_what_is_written_reads_back_as_it_was(value: object) -> None:
    assert json.loads(dumps(value)) == value


def test_chinese_stays_readable_and_odd_values_are_still_written() -> None:
    assert dumps({"text": "小区停水"}) == '{"text":"小区停水"}'
    # Beyond 64 bits orjson refuses; the standard library writes it.
    assert json.loads(dumps({"n": 2**70})) == {"n": 2**70}
    assert json.loads(dumps({"p": np.float64(0.25), "k": np.int64(3), "s": Status.CLASSIFIED})) == \
        {"p": 0.25, "k": 3, "s": "classified"}
    assert json.loads(dumps({1: "a"})) == {"1": "a"}
