"""`pet schema infer`: a draft schema that reads every value of its file, with round
bounds and each value read off the rows marked for review."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pet.errors import SchemaError
from pet.infer import REVIEW, infer, outward
from pet.schema import Schema
from pet.table import open_table


@pytest.fixture
def table(tmp_path: Path) -> Path:
    rng = np.random.default_rng(4)
    frame = pd.DataFrame({
        "age": rng.integers(21, 81, 300),
        "bmi": rng.normal(27.3, 4.1, 300),
        "arm": rng.choice(["placebo", "drug"], 300),
        "died": rng.integers(0, 2, 300),
        "note": [f"free text {k}" for k in range(300)],
        "consent": rng.choice(["true", "false", "True"], 300),
        "site": "north",
        "unused": np.nan,
        "huge": rng.uniform(0, 1e300, 300),
    })
    frame.loc[[5, 17], "bmi"] = np.nan
    frame.loc[3, "consent"] = None
    path = tmp_path / "trial.csv"
    frame.to_csv(path, index=False)
    return path


def test_the_draft_reads_its_file_with_round_bounds_marked_for_review(table: Path) -> None:
    text = infer(table, max_categories=10)
    spec = yaml.safe_load(text)
    columns = {c["name"]: c for c in spec["columns"]}
    frame = pd.read_csv(table)
    assert spec["name"] == "trial"
    assert columns["age"] == {"name": "age", "type": "integer", "lower": 20, "upper": 90}
    assert columns["bmi"]["type"] == "continuous" and columns["bmi"]["nullable"] is True
    assert columns["bmi"]["lower"] <= frame.bmi.min() and columns["bmi"]["upper"] >= frame.bmi.max()
    assert columns["arm"]["categories"] == ["drug", "placebo"]
    assert columns["died"]["type"] == "boolean"
    assert "note" not in columns and "note: 300 distinct texts" in text
    assert columns["consent"] == {"name": "consent", "type": "boolean", "nullable": True}
    assert "site: a single value" in text and "unused: no values" in text
    assert "huge: values beyond" in text
    assert {columns["bmi"]["lower"], columns["bmi"]["upper"]}.isdisjoint(frame.bmi)
    for line in text.splitlines():
        if "lower:" in line or "categories:" in line:
            assert line.endswith(REVIEW), line
    schema = Schema.from_dict(spec)
    kept = table.with_name("kept.csv")  # a column too varied to categorize is left out
    frame.drop(columns=["note", "site", "unused", "huge"]).to_csv(kept, index=False)
    rows = sum(chunk.n_rows for chunk in open_table(kept, schema).chunks(schema.names))
    assert rows == 300  # every value of the file is valid under the draft


@pytest.mark.parametrize(("low", "high", "expected"), [
    (21, 80, (20, 90)), (72, 2659, (0, 3000)), (-3.2, 4.9, (-4, 5)), (0.013, 0.087, (0.01, 0.09)),
    (41, 49, (40, 50)), (100, 104, (0, 200)), (5, 5, (0, 10)), (0, 0, (0, 10)),
    (0.3, 0.7, (0.2, 0.8)), (0.0009, 0.00099, (0.0008, 0.001))])
def test_bounds_round_outward_past_every_value(low: float, high: float,
                                               expected: tuple[float, float]) -> None:
    lower, upper = outward(low, high)
    assert (lower, upper) == pytest.approx(expected)
    assert (lower < low or lower == low == 0) and upper > high  # never an extreme itself


def test_the_command_prints_the_draft_and_refuses_other_files(table: Path) -> None:
    ran = subprocess.run([sys.executable, "-m", "pet", "schema", "infer", str(table),
                          "--name", "my trial"], capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    assert yaml.safe_load(ran.stdout)["name"] == "my_trial"
    with pytest.raises(SchemaError, match=r"\.csv or \.parquet"):
        infer(table.with_suffix(".xlsx"))
