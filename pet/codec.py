"""pet's JSON encoding of answers, round states and MPC outputs, for the wire and `--json`.

Numbers, text, lists and string-keyed dicts are plain JSON; arrays, tuples, non-finite
floats and pet's own value classes are tagged objects. Decoding builds only the classes
in `TYPES`, so a peer can never make the receiver run code of its choosing (as pickle
would); anything else is refused with a `CodecError`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import numpy as np

from pet.backends.base import Privacy
from pet.errors import PetError
from pet.hypothesis import Test
from pet.queries import (
    CoxFit,
    LinearFit,
    LogisticFit,
    Next,
    PoissonFit,
    SurvivalCurve,
    TableOneResult,
)
from pet.queries.cox import CoxState
from pet.queries.order import Interval
from pet.queries.regression import LogisticState, PoissonState

TYPES: dict[str, type] = {cls.__name__: cls for cls in (
    LinearFit, LogisticFit, SurvivalCurve, LogisticState, Interval, Next, Privacy, Test,
    CoxFit, CoxState, TableOneResult, PoissonFit, PoissonState)}
"""The value classes a message may carry, by name: answers and round states."""

DTYPES = frozenset({"float64", "int64", "bool", "float32", "int32"})
"""Array element types a message may carry."""


class CodecError(PetError, ValueError):
    """A message that is not a valid encoding of a pet value."""


def dumps(value: Any, *, indent: int | None = None) -> str:
    """The JSON text of a value."""
    return json.dumps(encode(value), indent=indent, allow_nan=False)


def loads(text: str | bytes) -> Any:
    """The value a JSON text encodes; raises CodecError for anything else, nesting too
    deep to read included."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError, MemoryError) as exc:
        raise CodecError(f"not JSON: {type(exc).__name__}: {exc}") from None
    try:
        return decode(data)
    except (RecursionError, MemoryError) as exc:
        raise CodecError(f"a message too deeply nested or too large to decode "
                         f"({type(exc).__name__})") from None


def encode(value: Any) -> Any:
    """A JSON-ready structure for a value."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        number = float(value)
        return number if math.isfinite(number) else {"__float__": str(number)}
    if isinstance(value, np.ndarray):
        if value.dtype.name not in DTYPES:
            raise CodecError(f"arrays of {value.dtype} cannot be encoded")
        return {"__array__": _finite(value.tolist()), "dtype": value.dtype.name,
                "shape": list(value.shape)}
    if isinstance(value, tuple):
        return {"__tuple__": [encode(v) for v in value]}
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise CodecError("only dicts with text keys can be encoded")
        return {"__dict__": {k: encode(v) for k, v in value.items()}}
    name = type(value).__name__
    if dataclasses.is_dataclass(value) and TYPES.get(name) is type(value):
        return {"__type__": name, "fields": {f.name: encode(getattr(value, f.name))
                                             for f in dataclasses.fields(value)}}
    raise CodecError(f"a {name} cannot be encoded")


def decode(data: Any) -> Any:
    """The value of a structure made by `encode`."""
    if data is None or isinstance(data, bool | str | int | float):
        return data
    if isinstance(data, list):
        return [decode(v) for v in data]
    if not isinstance(data, dict) or len(data) == 0:
        raise CodecError(f"unexpected {type(data).__name__} in a message")
    if "__float__" in data:
        text = data["__float__"]
        if text not in ("nan", "inf", "-inf"):
            raise CodecError(f"{text!r} is not a non-finite float")
        return float(text)
    if "__array__" in data:
        return _array(data)
    if "__tuple__" in data:
        return tuple(decode(v) for v in _expect(data, "__tuple__", list))
    if "__dict__" in data:
        return {str(k): decode(v) for k, v in _expect(data, "__dict__", dict).items()}
    if "__type__" in data:
        cls = TYPES.get(data["__type__"])
        if cls is None:
            raise CodecError(f"unknown value class {data['__type__']!r}; a message may "
                             f"carry {sorted(TYPES)}")
        fields = {k: decode(v) for k, v in _expect(data, "fields", dict).items()}
        try:
            return cls(**fields)
        except TypeError as exc:
            raise CodecError(f"bad fields for {cls.__name__}: {exc}") from None
    raise CodecError(f"unknown tagged object with keys {sorted(data)[:5]}")


def _expect(data: dict[str, Any], key: str, kind: type) -> Any:
    value = data.get(key)
    if not isinstance(value, kind):
        raise CodecError(f"{key!r} must be a {kind.__name__}")
    return value


def _array(data: dict[str, Any]) -> np.ndarray:
    dtype = data.get("dtype")
    if dtype not in DTYPES:
        raise CodecError(f"array element type {dtype!r} is not one of {sorted(DTYPES)}")
    try:
        values = np.array(data["__array__"], dtype=object if dtype.startswith("float")
                          else dtype)
        array = values.astype(dtype).reshape(_expect(data, "shape", list))
    except (ValueError, TypeError, OverflowError) as exc:
        raise CodecError(f"bad array: {exc}") from None
    return array


def _finite(values: Any) -> Any:
    """Nested lists with non-finite floats written as text ("nan", "inf", "-inf")."""
    if isinstance(values, list):
        return [_finite(v) for v in values]
    if isinstance(values, float) and not math.isfinite(values):
        return str(values)
    return values
