"""A site's table, read in validated chunks so it never has to fit in memory.

Tables come as pandas DataFrames, Parquet or CSV files. Every chunk is checked against
the schema as it is read (the error names the column and the table-wide row), and comes
out encoded as float64 arrays: one pass, vectorised, no Python loop per row.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pet.errors import SchemaError
from pet.schema import Schema

if TYPE_CHECKING:
    from pet.queries.base import Query, State

CHUNK_ROWS = 1 << 18
"""Rows per chunk: large enough that numpy dominates, small enough to bound memory."""


@dataclass(frozen=True)
class Chunk:
    """Encoded columns of consecutive rows, starting at table row `first_row`."""

    first_row: int
    n_rows: int
    columns: dict[str, np.ndarray]


class Table(ABC):
    """Rows of one site, validated against the study's schema as they stream past."""

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self._fingerprinted: tuple[object, str] = (None, "")

    @abstractmethod
    def chunks(self, columns: Sequence[str], *, chunk_rows: int = CHUNK_ROWS) -> Iterator[Chunk]:
        """Yield the named columns, encoded, in chunks of at most `chunk_rows` rows."""

    @property
    @abstractmethod
    def n_rows(self) -> int:
        """Number of rows (from metadata where the format has it)."""

    @abstractmethod
    def to_frame(self) -> pd.DataFrame:
        """The whole table as it was given (for tests and small data only)."""

    def partial(self, query: Query, state: State = None, *,
                site: str | None = None) -> np.ndarray:
        """One site's partial vector of a query's round: pet's own streaming pass over the
        chunks (a source on an engine may compute it there instead)."""
        return query.local(self.chunks(query.used_columns()), self.schema, state, site=site)

    def fingerprint(self, *, chunk_rows: int = CHUNK_ROWS) -> str:
        """SHA-256 (hex) of the table's encoded values: one digest per column over its
        rows in order, then one over those in the schema's order. The same rows give the
        same fingerprint whatever file holds them and however it is read, and a changed
        value a different one. Kept until the table's source changes (`_stamp`)."""
        stamp = self._stamp()
        if stamp is not None and self._fingerprinted[0] == stamp:
            return self._fingerprinted[1]
        columns = {name: hashlib.sha256() for name in self.schema.names}
        for chunk in self.chunks(self.schema.names, chunk_rows=chunk_rows):
            for name, digest in columns.items():
                digest.update(np.ascontiguousarray(chunk.columns[name], dtype="<f8").tobytes())
        whole = hashlib.sha256(b"".join(d.digest() for d in columns.values())).hexdigest()
        self._fingerprinted = (stamp, whole)
        return whole

    def _stamp(self) -> object:
        """What tells whether the table's source changed since its fingerprint was taken;
        None where nothing does (the fingerprint is then taken afresh)."""
        return None

    def missing(self) -> dict[str, int]:
        """Validate every value in one pass; return the missing-value count per column."""
        counts = dict.fromkeys(self.schema.names, 0)
        for chunk in self.chunks(self.schema.names):
            for name, values in chunk.columns.items():
                counts[name] += int(np.isnan(values).sum())
        return counts

    def _encode(self, batch: pa.RecordBatch, first_row: int, columns: Sequence[str]) -> Chunk:
        encoded = self.schema.encode(batch.to_pandas(), first_row=first_row, columns=columns)
        return Chunk(first_row, batch.num_rows, encoded)


class FrameTable(Table):
    """An in-memory pandas DataFrame, validated in full when the table is made."""

    def __init__(self, frame: pd.DataFrame, schema: Schema) -> None:
        super().__init__(schema)
        schema.check_header(frame.columns)
        self._frame = frame.reset_index(drop=True)
        self._encoded = schema.encode(self._frame)
        self._n_rows = len(frame)

    def to_frame(self) -> pd.DataFrame:
        return self._frame.copy()

    def _stamp(self) -> object:
        return "in memory"  # the encoded frame never changes

    @property
    def n_rows(self) -> int:
        return self._n_rows

    def chunks(self, columns: Sequence[str], *, chunk_rows: int = CHUNK_ROWS) -> Iterator[Chunk]:
        for start in range(0, max(self._n_rows, 1), chunk_rows):
            stop = min(start + chunk_rows, self._n_rows)
            yield Chunk(start, stop - start, {c: self._encoded[c][start:stop] for c in columns})


class FileTable(Table):
    """A table read from a file, whose fingerprint holds while the file is unchanged."""

    def __init__(self, path: str | Path, schema: Schema) -> None:
        super().__init__(schema)
        self.path = Path(path)

    def _stamp(self) -> object:
        found = self.path.stat()
        return found.st_mtime_ns, found.st_size, found.st_ino


class ParquetTable(FileTable):
    """A Parquet file, read batch by batch with pyarrow."""

    def __init__(self, path: str | Path, schema: Schema) -> None:
        super().__init__(path, schema)
        schema.check_header(pq.ParquetFile(self.path).schema_arrow.names)

    @property
    def n_rows(self) -> int:
        return pq.ParquetFile(self.path).metadata.num_rows

    def to_frame(self) -> pd.DataFrame:
        return pq.read_table(self.path).to_pandas()

    def chunks(self, columns: Sequence[str], *, chunk_rows: int = CHUNK_ROWS) -> Iterator[Chunk]:
        first_row = 0
        for batch in pq.ParquetFile(self.path).iter_batches(batch_size=chunk_rows,
                                                            columns=list(columns)):
            yield self._encode(batch, first_row, columns)
            first_row += batch.num_rows


class CsvTable(FileTable):
    """A CSV file with a header row, streamed with pyarrow; every cell is parsed by pet
    (not guessed by the reader) so that a bad cell gets pet's error with its row."""

    def __init__(self, path: str | Path, schema: Schema) -> None:
        super().__init__(path, schema)
        with self._reader(CHUNK_ROWS) as reader:
            schema.check_header(reader.schema.names)

    @property
    def n_rows(self) -> int:
        with self._reader(CHUNK_ROWS) as reader:
            return sum(batch.num_rows for batch in reader)

    def to_frame(self) -> pd.DataFrame:
        return pd.read_csv(self.path)

    def chunks(self, columns: Sequence[str], *, chunk_rows: int = CHUNK_ROWS) -> Iterator[Chunk]:
        first_row = 0
        with self._reader(chunk_rows) as reader:
            for batch in reader:
                yield self._encode(batch, first_row, columns)
                first_row += batch.num_rows

    def _reader(self, chunk_rows: int) -> pacsv.CSVStreamingReader:
        # Roughly 64 bytes per row: the reader's block size is in bytes, not rows.
        read = pacsv.ReadOptions(block_size=max(1 << 16, chunk_rows * 64))
        convert = pacsv.ConvertOptions(
            column_types={name: pa.string() for name in self.schema.names},
            strings_can_be_null=True,
        )
        try:
            return pacsv.open_csv(self.path, read_options=read, convert_options=convert)
        except pa.ArrowInvalid as exc:
            raise SchemaError(f"{self.path} is not a readable CSV file: {exc}") from None


def open_table(source: pd.DataFrame | str | Path | Table, schema: Schema) -> Table:
    """A table from a DataFrame, or a .parquet / .csv path (chosen by suffix)."""
    if isinstance(source, Table):
        return source
    if isinstance(source, pd.DataFrame):
        return FrameTable(source, schema)
    path = Path(source)
    if not path.is_file():
        raise SchemaError(f"cannot read {path}: no such file")
    if path.suffix in {".parquet", ".pq"}:
        return ParquetTable(path, schema)
    if path.suffix == ".csv":
        return CsvTable(path, schema)
    raise SchemaError(f"cannot read {path}: use a .parquet or .csv file, or a DataFrame")
