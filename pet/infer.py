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
    """One column's entry, as a YAML flow mapping with its review comment (or a comment
    saying why the column cannot be proposed)."""
    known = values.dropna()
    known = known[known.astype(str) != ""] if known.dtype == object else known
    entry: dict[str, object] = {"name": name}
    comment = ""
    if _is_boolean(known):
        entry["type"] = "boolean"
    elif known.nunique() < 2:
        return (f"  # - {name}: {'no values' if known.empty else 'a single value'}: it tells "
                "nothing; leave it out of the study's table")
    elif pd.api.types.is_numeric_dtype(known.dtype):
        numbers = known.to_numpy(dtype=np.float64)
        if not np.all(np.isfinite(numbers)) or np.max(np.abs(numbers)) > LARGEST:
            return (f"  # - {name}: values beyond ±{LARGEST:g}, or not finite: rescale it "
                    "(e.g. to other units) before proposing it")
        lower, upper = outward(float(numbers.min()), float(numbers.max()))
        whole = bool(np.all(np.mod(numbers, 1) == 0))
        entry.update(type="integer" if whole else "continuous", lower=lower, upper=upper)
        comment = f"bounds {REVIEW}"
    else:
        levels = sorted({str(v) for v in known})
        if len(levels) > max_categories:
            return (f"  # - {name}: {len(levels)} distinct texts, too many for a categorical "
                    "column: recode it, or leave it out of the study's table")
        entry.update(type="categorical", categories=levels)
        comment = f"categories {REVIEW}"
    if len(known) < len(values):
        entry["nullable"] = True
    text = yaml.safe_dump(entry, default_flow_style=True, sort_keys=False, width=10_000).strip()
    return f"  - {text}" + (f"  # {comment}" if comment else "")


LARGEST = 1e15
"""Largest magnitude proposed as a bound: beyond it a double no longer holds every whole
number, and pet's scaled sums lose the precision they are checked to."""


def _is_boolean(known: pd.Series) -> bool:
    """Booleans (also as text: true/false in any case), or numbers that are all 0 or 1
    (an event or yes/no indicator)."""
    if len(known) == 0:
        return False
    if pd.api.types.is_bool_dtype(known.dtype):
        return True
    if pd.api.types.is_numeric_dtype(known.dtype):
        return bool(known.isin([0, 1]).all())
    words = {str(v).lower() for v in known}
    return words <= {"true", "false"}


def outward(low: float, high: float) -> tuple[float | int, float | int]:
    """Bounds around [low, high] rounded outward to a multiple of the power of ten at the
    values' order of magnitude (one order up for a single value), never equal to a value
    of the data but 0: 21–80 becomes 20–90; 41–49, 40–50; 72–2659, 0–3000."""
    size = max(abs(low), abs(high)) or 1.0
    step = 10.0 ** math.floor(math.log10(size)) * (10 if low == high else 1)
    lower, upper = _tidy(math.floor(low / step) * step), _tidy(math.ceil(high / step) * step)
    if lower >= low and low != 0:  # compared once tidied: 0.3 / 0.1 is not 3 in floats
        lower = _tidy(lower - step)
    if upper <= high:
        upper = _tidy(upper + step)
    return lower, upper


def _tidy(value: float) -> float | int:
    """A whole number as an int, so that the YAML reads 20, not 20.0."""
    return int(value) if float(value).is_integer() else round(value, 12)
