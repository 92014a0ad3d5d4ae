"""A first draft of a schema from a data file (`pet schema infer`), for people to review.

A study's schema is public and agreed before any data is touched: its bounds size every
sensitivity, plain modulus and fixed-point range. Reading bounds off private rows would
publish them (the oldest patient's age, the longest stay), so this draft rounds each one
outward to a round number and marks it, and every category list, as read from the data:
each marked line is to be replaced by what is known without the data (the trial's
inclusion criteria, the measurement's range, the coding manual).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from pet.errors import SchemaError

MAX_CATEGORIES = 50
"""Most distinct values a text column may have to be proposed as categorical."""

REVIEW = "from the data: review"


def infer(path: str | Path, *, name: str | None = None,
          max_categories: int = MAX_CATEGORIES) -> str:
    """A schema (YAML text) proposed for the CSV or Parquet file at `path`, each value read
    off its rows marked for review in a comment."""
    path = Path(path)
    frame = _read(path)
    if frame.empty:
        raise SchemaError(f"{path} has no rows to propose a schema from")
    lines = [f"# Proposed by `pet schema infer` from {len(frame)} rows of {path.name}.",
             f"# Every line marked '{REVIEW}' was read off these rows: replace its bounds",
             "# or categories with values known without the data before the schema is",
             "# published, or they disclose the rows they came from.",
             f"name: {_name(name or path.stem)}",
             "columns:"]
    lines += [_column(str(column), frame[column], max_categories) for column in frame.columns]
    return "\n".join(lines) + "\n"


def _read(path: Path) -> pd.DataFrame:
    """The file's rows, with pandas' own types (CSV or Parquet)."""
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        if path.suffix == ".csv":
            return pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise SchemaError(f"cannot read {path}: {exc}") from None
    raise SchemaError(f"{path}: propose a schema from a .csv or .parquet file")


def _name(text: str) -> str:
    """A schema name from a file name: letters, digits and underscores."""
    cleaned = "".join(c if c.isalnum() else "_" for c in text).strip("_")
    return cleaned or "study"


def _column(name: str, values: pd.Series, max_categories: int) -> str:
    """One column's entry, as a YAML flow mapping with its review comment."""
    known = values.dropna()
    entry: dict[str, object] = {"name": name}
    comment = ""
    if _is_boolean(known):
        entry["type"] = "boolean"
    elif pd.api.types.is_numeric_dtype(known.dtype):
        whole = bool(np.all(np.mod(known.to_numpy(dtype=np.float64), 1) == 0))
        lower, upper = outward(float(known.min()), float(known.max()))
        entry.update(type="integer" if whole else "continuous", lower=lower, upper=upper)
        comment = f"bounds {REVIEW}"
    else:
        levels = sorted({str(v) for v in known})
        if len(levels) > max_categories:
            return (f"  # - {name}: {len(levels)} distinct texts, too many for a categorical "
                    "column: recode it, or leave it out of the study's table")
        entry.update(type="categorical", categories=levels)
        comment = f"categories {REVIEW}"
    if values.isna().any():
        entry["nullable"] = True
    text = yaml.safe_dump(entry, default_flow_style=True, sort_keys=False, width=10_000).strip()
    return f"  - {text}" + (f"  # {comment}" if comment else "")


def _is_boolean(known: pd.Series) -> bool:
    """Booleans, or numbers that are all 0 or 1 (an event or yes/no indicator)."""
    if pd.api.types.is_bool_dtype(known.dtype):
        return True
    return (pd.api.types.is_numeric_dtype(known.dtype) and len(known) > 0
            and bool(known.isin([0, 1]).all()))


def outward(low: float, high: float) -> tuple[float | int, float | int]:
    """Bounds around [low, high] rounded outward to a multiple of a power of ten one
    at the range's order of magnitude (21–80 becomes 20–80; 72–2659, 0–3000)."""
    size = (high - low) or abs(high) or 1.0  # one value: round around the value itself
    step = 10.0 ** math.floor(math.log10(size))
    lower, upper = math.floor(low / step) * step, math.ceil(high / step) * step
    if lower == upper:
        lower, upper = lower - step, upper + step
    return _tidy(lower), _tidy(upper)


def _tidy(value: float) -> float | int:
    """A whole number as an int, so that the YAML reads 20, not 20.0."""
    return int(value) if float(value).is_integer() else round(value, 12)
