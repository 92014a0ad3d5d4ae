"""The public schema of a study: column types, public bounds, and validation of tables.

A schema is agreed in the study protocol and never inferred from private data. Its
bounds are what makes sensitivities (DP), plain moduli (HE) and fixed-point ranges (MPC)
computable before any data is touched. Validation encodes a table into float64 arrays
(categories as codes, booleans as 0/1, NaN for a missing value) and stops at the first
bad value with an error that names the column, the row and the broken limit.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import yaml

from pet.errors import SchemaError

if TYPE_CHECKING:
    import pandas as pd

Category = str | int


@dataclass(frozen=True)
class Column(ABC):
    """A named column; `nullable` says whether missing values are allowed (and counted)."""

    name: str
    nullable: bool = field(default=False, kw_only=True)
    description: str = field(default="", kw_only=True)
    kind: ClassVar[str] = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise SchemaError(f"a column name must be a non-empty string, got {self.name!r}")

    @abstractmethod
    def bounds(self) -> tuple[float, float]:
        """Smallest and largest value the column holds once encoded (public)."""

    @abstractmethod
    def _encode(self, values: pd.Series, first_row: int) -> np.ndarray:
        """Validate non-missing values and return all of them as float64, NaN for missing."""

    def encode(self, values: pd.Series, first_row: int = 0) -> np.ndarray:
        """Validate `values` and return them as float64, NaN for missing."""
        encoded = self._encode(values, first_row)
        missing = np.isnan(encoded)
        if not self.nullable and missing.any():
            raise SchemaError(
                "missing value, but the schema does not allow missing values here "
                "(fill it in, or declare the column nullable: true)",
                column=self.name,
                row=first_row + int(np.argmax(missing)),
            )
        return encoded

    def to_dict(self) -> dict[str, Any]:
        """The column as it is written in a schema file."""
        out: dict[str, Any] = {"name": self.name, "type": self.kind}
        out.update(self._options())
        if self.nullable:
            out["nullable"] = True
        if self.description:
            out["description"] = self.description
        return out

    def _options(self) -> dict[str, Any]:
        return {}


@dataclass(frozen=True)
class Continuous(Column):
    """A real-valued column with public clamping bounds [lower, upper]."""

    lower: float
    upper: float
    kind: ClassVar[str] = "continuous"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_bounds_spec(self.name, self.lower, self.upper)

    def bounds(self) -> tuple[float, float]:
        return float(self.lower), float(self.upper)

    def _encode(self, values: pd.Series, first_row: int) -> np.ndarray:
        return _numeric(values, self, first_row, integral=False)

    def _options(self) -> dict[str, Any]:
        return {"lower": self.lower, "upper": self.upper}


@dataclass(frozen=True)
class Integer(Continuous):
    """A whole-number column with public bounds [lower, upper]."""

    kind: ClassVar[str] = "integer"

    def _encode(self, values: pd.Series, first_row: int) -> np.ndarray:
        return _numeric(values, self, first_row, integral=True)


@dataclass(frozen=True)
class TimeToEvent(Column):
    """Follow-up time in [0, upper]; `event` names the boolean column that says whether
    follow-up ended in the event (true) or in censoring (false)."""

    event: str
    upper: float
    kind: ClassVar[str] = "time_to_event"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_bounds_spec(self.name, 0.0, self.upper)
        if not isinstance(self.event, str) or not self.event:
            raise SchemaError("a time-to-event column names its event column (event: ...)",
                              column=self.name)

    def bounds(self) -> tuple[float, float]:
        return 0.0, float(self.upper)

    def _encode(self, values: pd.Series, first_row: int) -> np.ndarray:
        return _numeric(values, self, first_row, integral=False)

    def _options(self) -> dict[str, Any]:
        return {"event": self.event, "upper": self.upper}


@dataclass(frozen=True)
class Boolean(Column):
    """A yes/no column, encoded 0/1; accepts booleans or the numbers 0 and 1."""

    kind: ClassVar[str] = "boolean"

    def bounds(self) -> tuple[float, float]:
        return 0.0, 1.0

    def _encode(self, values: pd.Series, first_row: int) -> np.ndarray:
        import pandas as pd  # here: reading a query or a schema needs no pandas

        series = pd.Series(values, copy=False)
        if series.dtype.kind in "OSU":  # text such as CSV cells: read true/false too
            words = series.map(lambda v: v.lower() if isinstance(v, str) else v)
            series = series.where(~words.isin(_BOOLEAN_WORDS), words.map(_BOOLEAN_WORDS))
        encoded = _as_float(series, self.name, first_row, "a boolean (true/false or 0/1)")
        bad = ~np.isnan(encoded) & (encoded != 0) & (encoded != 1)
        if bad.any():
            row = int(np.argmax(bad))
            raise SchemaError(f"value {encoded[row].item()!r} is not a boolean (true/false or 0/1)",
                              column=self.name, row=first_row + row)
        return encoded


@dataclass(frozen=True)
class Categorical(Column):
    """A column with public categories, encoded as the category's position."""

    categories: tuple[Category, ...]
    kind: ClassVar[str] = "categorical"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "categories", tuple(self.categories))
        if len(self.categories) < 2:
            raise SchemaError("a categorical column needs at least two public categories",
                              column=self.name)
        if len(set(self.categories)) != len(self.categories):
            raise SchemaError(f"categories repeat: {list(self.categories)}", column=self.name)

    def bounds(self) -> tuple[float, float]:
        return 0.0, float(len(self.categories) - 1)

    def code(self, category: Category) -> int:
        """The code of one category, or an error listing the allowed ones."""
        try:
            return self.categories.index(category)
        except ValueError:
            raise SchemaError(
                f"{category!r} is not one of the categories {list(self.categories)}",
                column=self.name, limit=self.categories,
            ) from None

    def _encode(self, values: pd.Series, first_row: int) -> np.ndarray:
        import pandas as pd

        series = pd.Series(values, copy=False)
        codes = pd.Categorical(series, categories=list(self.categories)).codes.copy()
        unknown = (codes < 0) & series.notna().to_numpy()
        texts = [cell_text(c) for c in self.categories]
        if unknown.any() and len(set(texts)) == len(texts):
            # A CSV cell is text and a YAML category may be a number (or the other way
            # round): '2' names the category 2 when no other category reads '2'.
            codes[unknown] = pd.Categorical([cell_text(v) for v in series[unknown]],
                                            categories=texts).codes
            unknown = (codes < 0) & series.notna().to_numpy()
        if unknown.any():
            row = int(np.argmax(unknown))
            raise SchemaError(
                f"value {series.iloc[row]!r} is not one of the categories "
                f"{list(self.categories)}", column=self.name, row=first_row + row,
                limit=self.categories,
            )
        encoded = codes.astype(np.float64)
        encoded[codes < 0] = np.nan
        return encoded

    def _options(self) -> dict[str, Any]:
        return {"categories": list(self.categories)}


_BOOLEAN_WORDS = {"true": 1.0, "false": 0.0}


def cell_text(value: object) -> str:
    """A category or cell as text, a whole float as its whole number (2.0 reads '2')."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _check_bounds_spec(column: str, lower: object, upper: object) -> None:
    for label, value in (("lower", lower), ("upper", upper)):
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not np.isfinite(value):
            raise SchemaError(f"{label} bound must be a finite number, got {value!r}",
                              column=column)
    if not lower < upper:  # type: ignore[operator]
        raise SchemaError(f"lower bound {lower} must be below upper bound {upper}",
                          column=column)


def _numeric(values: pd.Series, column: Column, first_row: int, *, integral: bool) -> np.ndarray:
    """Encode a bounded numeric column: numbers only, inside the bounds, whole if asked."""
    encoded = _as_float(values, column.name, first_row, "a number")
    lower, upper = column.bounds()
    for bad, side, limit in (
        (encoded < lower, "below the schema's lower", lower),
        (encoded > upper, "above the schema's upper", upper),
    ):
        if bad.any():
            row = int(np.argmax(bad))
            raise SchemaError(
                f"value {encoded[row].item()!r} is {side} bound {limit:g} "
                "(correct the value, or widen the bound in the study's schema)",
                column=column.name, row=first_row + row, limit=limit,
            )
    if integral:
        fractional = ~np.isnan(encoded) & (encoded != np.floor(encoded))
        if fractional.any():
            row = int(np.argmax(fractional))
            raise SchemaError(f"value {encoded[row].item()!r} is not a whole number",
                              column=column.name, row=first_row + row)
    return encoded


def _as_float(values: pd.Series, column: str, first_row: int, expected: str) -> np.ndarray:
    """Numbers (and booleans) as float64 with NaN for missing; anything else is an error."""
    import pandas as pd

    series = pd.Series(values, copy=False)
    if series.dtype.kind in "biuf":
        return series.to_numpy(dtype=np.float64, na_value=np.nan)
    numeric = pd.to_numeric(series, errors="coerce")
    bad = numeric.isna().to_numpy() & series.notna().to_numpy()
    if bad.any():
        row = int(np.argmax(bad))
        raise SchemaError(f"value {series.iloc[row]!r} is not {expected}",
                          column=column, row=first_row + row)
    return numeric.to_numpy(dtype=np.float64, na_value=np.nan)


COLUMN_TYPES: dict[str, type[Column]] = {
    c.kind: c for c in (Continuous, Integer, TimeToEvent, Boolean, Categorical)
}


def column_from_dict(spec: Mapping[str, Any]) -> Column:
    """Build a column from its schema-file form, e.g. {name: age, type: continuous, ...}."""
    spec = dict(spec)
    name = spec.pop("name", None)
    kind = spec.pop("type", None)
    if kind not in COLUMN_TYPES:
        raise SchemaError(f"unknown column type {kind!r}; use one of {sorted(COLUMN_TYPES)}",
                          column=name)
    cls = COLUMN_TYPES[kind]
    allowed = {f.name for f in fields(cls)} - {"name"}
    options = spec
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise SchemaError(f"unknown key(s) {unknown} for a {kind} column", column=name)
    try:
        return cls(name, **options)
    except TypeError as exc:
        raise SchemaError(f"bad {kind} column: {exc}", column=name) from None


@dataclass(frozen=True)
class Schema:
    """The public, agreed description of a study's table: an ordered set of columns."""

    columns: tuple[Column, ...]
    name: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "columns", tuple(self.columns))
        if not self.columns:
            raise SchemaError("a schema needs at least one column")
        names = [c.name for c in self.columns]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise SchemaError(f"column names repeat: {repeated}")
        for col in self.columns:
            if isinstance(col, TimeToEvent) and not isinstance(self.get(col.event), Boolean):
                raise SchemaError(
                    f"its event column {col.event!r} must be a boolean column of the schema",
                    column=col.name,
                )

    @property
    def names(self) -> tuple[str, ...]:
        """Column names, in schema order."""
        return tuple(c.name for c in self.columns)

    def get(self, name: str) -> Column | None:
        """The column called `name`, or None."""
        return next((c for c in self.columns if c.name == name), None)

    def __getitem__(self, name: str) -> Column:
        column = self.get(name)
        if column is None:
            raise SchemaError(f"unknown column {name!r}; the schema has {list(self.names)}")
        return column

    def encode(self, frame: pd.DataFrame, *, first_row: int = 0,
               columns: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Validate the requested columns of `frame` (all by default) and encode them."""
        wanted = self.names if columns is None else tuple(columns)
        absent = [name for name in wanted if name not in frame.columns]
        if absent:
            raise SchemaError(f"the table lacks schema column(s) {absent}", column=absent[0])
        return {name: self[name].encode(frame[name], first_row) for name in wanted}

    def validate(self, frame: pd.DataFrame, *, first_row: int = 0) -> dict[str, int]:
        """Check the header and every value of `frame`; return missing counts per column."""
        self.check_header(frame.columns)
        encoded = self.encode(frame, first_row=first_row)
        return {name: int(np.isnan(values).sum()) for name, values in encoded.items()}

    def check_header(self, header: Iterable[str]) -> None:
        """Fail on a column the schema does not know, or a schema column the table lacks."""
        header = [str(h) for h in header]
        unknown = [h for h in header if h not in self.names]
        if unknown:
            raise SchemaError(f"the table has column(s) {unknown} that the schema does not "
                              f"define; the schema has {list(self.names)}", column=unknown[0])
        absent = [n for n in self.names if n not in header]
        if absent:
            raise SchemaError(f"the table lacks schema column(s) {absent}", column=absent[0])

    def to_dict(self) -> dict[str, Any]:
        """The schema as written in a YAML or JSON schema file."""
        return {"name": self.name, "columns": [c.to_dict() for c in self.columns]}

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> Schema:
        """Build a schema from its file form: {name: ..., columns: [...]}."""
        if not isinstance(spec, Mapping) or "columns" not in spec:
            raise SchemaError("a schema file holds a mapping with a 'columns' list")
        return cls(tuple(column_from_dict(c) for c in spec["columns"]),
                   name=str(spec.get("name", "")))

    @classmethod
    def from_file(cls, path: str | Path) -> Schema:
        """Read a schema from a .yaml/.yml or .json file."""
        path = Path(path)
        text = path.read_text()
        spec = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        return cls.from_dict(spec)

    def to_file(self, path: str | Path) -> None:
        """Write the schema as YAML or JSON, chosen by the file's suffix."""
        path = Path(path)
        spec = self.to_dict()
        text = (json.dumps(spec, indent=2) if path.suffix == ".json"
                else yaml.safe_dump(spec, sort_keys=False))
        path.write_text(text)
