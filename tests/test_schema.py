"""Schemas: construction, files, and validation errors that name column, row and limit."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pet.errors import SchemaError
from pet.schema import Boolean, Categorical, Continuous, Integer, Schema, TimeToEvent
from pet.table import open_table

SCHEMA = Schema(
    (
        Continuous("bmi", 10, 60, nullable=True),
        Integer("age", 18, 100),
        Categorical("sex", ("female", "male")),
        Boolean("dead"),
        TimeToEvent("time", "dead", 1000.0),
    ),
    name="toy",
)


def frame(**changes: list) -> pd.DataFrame:
    base = {
        "bmi": [22.5, np.nan, 31.0, 27.2],
        "age": [40, 51, 62, 73],
        "sex": ["female", "male", "male", "female"],
        "dead": [True, False, True, False],
        "time": [10.0, 1000.0, 0.0, 500.5],
    }
    base.update(changes)
    return pd.DataFrame(base)


def test_valid_table_reports_missing_counts_per_column() -> None:
    assert SCHEMA.validate(frame()) == {"bmi": 1, "age": 0, "sex": 0, "dead": 0, "time": 0}


@pytest.mark.parametrize(
    ("changes", "column", "row", "words"),
    [
        ({"bmi": [22.5, 61.0, 31.0, 27.2]}, "bmi", 1, "above the schema's upper bound 60"),
        ({"bmi": [22.5, 9.0, 31.0, 27.2]}, "bmi", 1, "below the schema's lower bound 10"),
        ({"bmi": [22.5, np.inf, 31.0, 27.2]}, "bmi", 1, "above"),
        ({"bmi": ["22.5", "x", "31", "27"]}, "bmi", 1, "'x' is not a number"),
        ({"age": [40, 51, 62.5, 73]}, "age", 2, "not a whole number"),
        ({"age": [40, 51, 62, 101]}, "age", 3, "upper bound 100"),
        ({"age": [40, None, 62, 73]}, "age", 1, "missing value"),
        ({"sex": ["female", "other", "male", "male"]}, "sex", 1, "'other' is not one of"),
        ({"sex": ["female", "male", None, "male"]}, "sex", 2, "missing value"),
        ({"dead": [1, 0, 2, 0]}, "dead", 2, "not a boolean"),
        ({"dead": ["yes", "no", "yes", "no"]}, "dead", 0, "not a boolean"),
        ({"time": [10.0, 1000.5, 0.0, 1.0]}, "time", 1, "upper bound 1000"),
        ({"time": [10.0, 5.0, -1.0, 1.0]}, "time", 2, "lower bound 0"),
    ],
)
def test_each_violation_names_column_row_and_limit(changes: dict, column: str, row: int,
                                                   words: str) -> None:
    with pytest.raises(SchemaError) as caught:
        SCHEMA.validate(frame(**changes))
    assert caught.value.column == column
    assert caught.value.row == row
    assert f"column {column!r}, row {row}: " in str(caught.value)
    assert words in str(caught.value)


def test_bound_violation_carries_the_limit() -> None:
    with pytest.raises(SchemaError) as caught:
        SCHEMA.validate(frame(age=[40, 51, 62, 101]))
    assert caught.value.limit == 100


def test_unknown_and_absent_columns_are_named() -> None:
    with pytest.raises(SchemaError, match=r"'weight'.*does not define"):
        SCHEMA.validate(frame().assign(weight=1.0))
    with pytest.raises(SchemaError, match=r"lacks schema column\(s\) \['dead'\]"):
        SCHEMA.validate(frame().drop(columns="dead"))


def test_booleans_accept_text_and_numbers() -> None:
    encoded = Boolean("b", nullable=True).encode(pd.Series(["True", "false", "1", "0", None]))
    np.testing.assert_array_equal(encoded[:4], [1, 0, 1, 0])
    assert np.isnan(encoded[4])
    # Python booleans with a missing value, an object column without any text
    flags = Boolean("b", nullable=True).encode(pd.Series([True, False, None]))
    np.testing.assert_array_equal(flags[:2], [1, 0])
    assert np.isnan(flags[2])


@pytest.mark.parametrize(
    ("build", "words"),
    [
        (lambda: Continuous("x", 5, 5), "must be below upper bound"),
        (lambda: Continuous("x", 0, float("nan")), "finite number"),
        (lambda: Categorical("c", ("a",)), "at least two"),
        (lambda: Categorical("c", ("a", "a")), "repeat"),
        (lambda: Schema((Boolean("a"), Boolean("a"))), "repeat"),
        (lambda: Schema((TimeToEvent("t", "e", 10),)), "event column 'e' must be a boolean"),
        (lambda: Schema(()), "at least one column"),
        (lambda: Continuous("", 0, 1), "non-empty"),
    ],
)
def test_malformed_schemas_fail_in_the_constructor(build, words: str) -> None:
    with pytest.raises(SchemaError, match=words):
        build()


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_schema_files_round_trip(tmp_path, suffix: str) -> None:
    path = tmp_path / f"schema{suffix}"
    SCHEMA.to_file(path)
    assert Schema.from_file(path) == SCHEMA


def test_schema_file_errors_name_the_column(tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("columns:\n  - {name: age, type: continuous, lower: 0, uper: 9}\n")
    with pytest.raises(SchemaError, match=r"column 'age': unknown key\(s\) \['uper'\]"):
        Schema.from_file(path)
    path.write_text("columns:\n  - {name: age, type: real}\n")
    with pytest.raises(SchemaError, match="unknown column type 'real'"):
        Schema.from_file(path)


@pytest.mark.parametrize("kind", ["frame", "csv", "parquet"])
def test_tables_stream_in_chunks_with_table_wide_row_numbers(tmp_path, kind: str) -> None:
    rows = 1000
    data = pd.concat([frame()] * (rows // 4), ignore_index=True)
    data.loc[rows - 3, "age"] = 120
    source = {"frame": data, "csv": tmp_path / "t.csv", "parquet": tmp_path / "t.parquet"}[kind]
    if kind == "csv":
        data.to_csv(source, index=False)
    if kind == "parquet":
        data.to_parquet(source)
    table = open_table(source, SCHEMA) if kind != "frame" else None
    if table is None:
        with pytest.raises(SchemaError, match=f"row {rows - 3}"):
            open_table(source, SCHEMA)
        return
    assert table.n_rows == rows
    chunks = table.chunks(["age"], chunk_rows=128)
    seen = 0
    with pytest.raises(SchemaError) as caught:
        for chunk in chunks:
            assert chunk.first_row == seen
            seen += chunk.n_rows
    assert caught.value.row == rows - 3
    assert caught.value.column == "age"


def test_file_tables_count_missing_values(tmp_path) -> None:
    path = tmp_path / "t.csv"
    frame().to_csv(path, index=False)
    assert open_table(path, SCHEMA).missing()["bmi"] == 1


def test_numbered_categories_read_the_same_from_a_csv_file_and_a_frame(tmp_path) -> None:
    """A CSV cell is text: '2' names the category 2 of a schema written in YAML with
    numbers, as a frame's 2 names the category '2'; a value no category reads is still
    refused by name and row."""
    schema = Schema((Categorical("year", tuple(range(9))),
                     Categorical("ward", ("1", "2", "10"))))
    frame = pd.DataFrame({"year": [2, 0, 8], "ward": ["10", "1", "2"]})
    (tmp_path / "wards.csv").write_text("year,ward\n2,10\n0,1\n8,2\n")
    expected = {"year": [2.0, 0.0, 8.0], "ward": [2.0, 0.0, 1.0]}
    for table in (open_table(tmp_path / "wards.csv", schema), open_table(frame, schema),
                  open_table(pd.DataFrame({"year": [2.0, 0.0, 8.0], "ward": [10, 1, 2]}),
                             schema)):
        (chunk,) = table.chunks(schema.names)
        assert {k: v.tolist() for k, v in chunk.columns.items()} == expected
    (tmp_path / "bad.csv").write_text("year,ward\n2,10\n9,1\n")
    with pytest.raises(SchemaError, match=r"value '9' is not one of the categories") as bad:
        next(open_table(tmp_path / "bad.csv", schema).chunks(schema.names))
    assert bad.value.column == "year" and bad.value.row == 1


def test_a_missing_file_is_named_not_a_traceback(tmp_path) -> None:
    schema = Schema((Categorical("year", (0, 1)),))
    with pytest.raises(SchemaError, match="no such file"):
        open_table(tmp_path / "nowhere.csv", schema)
