"""Plain JSON of pet's values, for programs that do not run pet (`--json`, `Result.to_dict`).

Only JSON's own kinds come out: numbers, text, true/false, null, lists and objects. Arrays,
Series and tuples become (nested) lists, a DataFrame a list of records (its index as the
first fields), a dataclass an object of its fields with a `"type"` field naming its
class, a time ISO 8601 text, and NaN, ±∞ or a missing value, which JSON has no number
for, null. Unlike `pet.codec` (the wire format), the output is not meant to be read back
into pet's classes: it is what `jq`, R or JavaScript read as is.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd


def plain(value: Any) -> Any:
    """The JSON-ready structure of a value (raises TypeError for a kind it cannot show)."""
    # A pandas value exists only once pandas is imported: a plain answer needs no pandas.
    pd = sys.modules.get("pandas")
    if value is None or (pd is not None and (value is pd.NA or value is pd.NaT)):
        return None
    if isinstance(value, str | bool | np.bool_):
        return value if not isinstance(value, np.bool_) else bool(value)
    if isinstance(value, np.datetime64) or (pd is not None and isinstance(value, pd.Timestamp)):
        import pandas as pd

        return pd.Timestamp(value).isoformat()
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if pd is not None and isinstance(value, pd.DataFrame):
        return plain(records(value))
    if pd is not None and isinstance(value, pd.Series):
        return plain(value.tolist())
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"type": type(value).__name__,
                **{f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}}
    raise TypeError(f"a {type(value).__name__} has no plain JSON form")


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """A DataFrame's rows as records with text column names (a MultiIndex's joined by a
    space), a meaningful index's levels first (named `term`, `level`, ... where unnamed)."""
    import pandas as pd

    flat = frame.copy()
    flat.columns = [" ".join(map(str, c)) if isinstance(c, tuple) else str(c)
                    for c in frame.columns]
    if isinstance(frame.index, pd.RangeIndex):
        return flat.to_dict("records")  # type: ignore[return-value]
    index_names = [name or default for name, default in
                   zip(frame.index.names, ("term", "level", "index_2"), strict=False)]
    flat.index = flat.index.set_names(index_names)
    return flat.reset_index().to_dict("records")  # type: ignore[return-value]


def emit(as_json: bool, text: str, fields: dict[str, Any]) -> None:
    """A command's report: its text, or with `--json` its fields as plain JSON."""
    print(json.dumps(plain(fields), indent=2, allow_nan=False) if as_json else text)
