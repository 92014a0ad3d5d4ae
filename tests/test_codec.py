"""pet's JSON encoding: every answer and round state of every query round-trips exactly,
and anything outside the allowlist is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.queries import PRESETS
from pet.codec import CodecError, dumps, loads
from pet.queries.base import Next
from pet.workloads import Workload
from tests.conftest import NO_CELL_LIMIT


def _same(a: object, b: object) -> bool:
    """Equality that treats arrays (dtype, shape and NaNs included), sequences of them and
    dataclasses alike."""
    if isinstance(a, np.ndarray):
        return (isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
                and np.array_equal(a, b, equal_nan=a.dtype.kind == "f"))
    if isinstance(a, tuple | list):
        return (type(a) is type(b) and len(a) == len(b)
                and all(_same(x, y) for x, y in zip(a, b, strict=True)))
    if hasattr(a, "__dataclass_fields__"):
        return type(a) is type(b) and all(_same(getattr(a, f), getattr(b, f))
                                          for f in a.__dataclass_fields__)
    if isinstance(a, float) and np.isnan(a):
        return isinstance(b, float) and np.isnan(b)
    return a == b and type(a) is type(b)


@pytest.mark.parametrize("name", sorted(PRESETS["lung"]))
def test_every_answer_and_state_round_trips(lung3: Workload, name: str) -> None:
    query = PRESETS["lung"][name]
    schema, state = lung3.schema, query.initial_state(lung3.schema)
    sites = lung3.sites(NO_CELL_LIMIT)
    for _ in range(query.max_rounds):
        assert _same(loads(dumps(state)), state)
        total = sum(site.partial(query, state) for site in sites)
        outcome = query.finalize(total, schema, state)
        if not isinstance(outcome, Next):
            break
        state = outcome.state
    assert _same(loads(dumps(outcome)), outcome)


def test_numbers_keep_their_exact_values() -> None:
    values = {"big": np.array([2**62 + 1, -3], dtype=np.int64), "x": 0.1 + 0.2,
              "odd": np.array([np.nan, np.inf, -np.inf, 5e-324]), "t": (1, "a"), "n": None}
    back = loads(dumps(values))
    assert back["big"].tolist() == [2**62 + 1, -3]
    assert back["x"] == 0.1 + 0.2
    assert _same(back["odd"], values["odd"])
    assert back["t"] == (1, "a") and back["n"] is None
    json.loads(dumps(values))  # standard JSON: no bare NaN or Infinity


@pytest.mark.parametrize("text", [
    '{"__type__": "Popen", "fields": {}}',
    '{"__array__": [1], "dtype": "object", "shape": [1]}',
    '{"__float__": "1e999"}',
    '{"__array__": [1, 2], "dtype": "float64", "shape": [3]}',
    '{"__type__": "LinearFit", "fields": {"bogus": 1}}',
    '{"plain": 1}',
    "not json",
])
def test_anything_else_is_refused(text: str) -> None:
    with pytest.raises(CodecError):
        loads(text)


def test_unknown_objects_cannot_be_encoded() -> None:
    with pytest.raises(CodecError, match="cannot be encoded"):
        dumps(object())


@pytest.mark.parametrize("text", [
    "[" * 600 + "]" * 600,  # JSON reads it; decoding recurses twice as deep
    '{"__array__": [99999999999999999999999], "dtype": "int64", "shape": [1]}',
])
def test_deep_or_overflowing_messages_are_codec_errors(text: str) -> None:
    with pytest.raises(CodecError):
        loads(text)
