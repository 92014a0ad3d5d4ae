"""The benchmark harness end to end on tiny profiles: well-formed outputs, and resuming
skips finished cells. Timings are recorded, never asserted."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks.harness import CSV_COLUMNS, RunFolder, run_profile
from benchmarks.profile import Profile
from pet.errors import PetError
from pet.relay import Link

TINY = {
    "name": "tiny",
    "repeats": 1,
    "warmup": 0,
    "backends": ["plaintext"],
    "matrices": [{"workloads": ["lung"], "queries": ["mean"], "sites": [2]}],
}
REQUIRED = ["workload", "query", "backend", "sites", "rows_per_site", "epsilon", "repeats",
            "latency_median_s", "latency_p95_s", "throughput_rows_s", "bytes_total",
            "peak_mem_mb", "abs_error", "rel_error", "rho", "epsilon_spent", "delta"]


def run_tiny(out: Path, data: Path, spec: dict = TINY) -> pd.DataFrame:
    return run_profile(Profile.from_dict(spec), out, data_dir=data, progress=False)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[Path, Path, pd.DataFrame]:
    """The quick profile, run once from the command line as CI's smoke test of the
    harness; the tests below read what it wrote."""
    out, data = tmp_path_factory.mktemp("quick"), tmp_path_factory.mktemp("data")
    done = subprocess.run(
        [sys.executable, "-m", "pet", "bench", "quick", "--out", str(out), "--data",
         str(data), "--no-progress"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    return out, data, pd.read_csv(out / "results.csv")


def test_the_quick_profile_writes_csv_json_markdown_and_plots(quick_run) -> None:
    out, _, csv = quick_run
    assert list(csv.columns[: len(REQUIRED)]) == REQUIRED
    assert list(csv.columns) == list(CSV_COLUMNS)
    quick = Profile.load("quick").cells()
    assert sorted(zip(csv.workload, csv["query"], csv.backend, csv.transport, strict=True)) \
        == sorted((c.workload, c.query, c.backend, c.transport) for c in quick)
    assert (csv.status == "ok").all(), csv.message.dropna().tolist()
    assert (csv.latency_p95_s >= csv.latency_median_s).all()
    plain = csv[csv.backend == "plaintext"]
    assert (plain.abs_error == 0).all() and (plain.rel_error == 0).all()
    private = csv.backend == "he+dp"
    assert csv.epsilon[~private].isna().all() and csv.epsilon_spent[~private].isna().all()
    assert (csv.epsilon_spent[private] == 1.0).all()
    assert (csv.peak_mem_mb > 0).all() and (csv.repeats == 2).all()
    run = json.loads((out / "run.json").read_text())
    assert run["machine"]["cores"] and run["machine"]["numpy"] == np.__version__
    logistic = next(c for c in run["cells"]
                    if c["query"] == "logistic" and c["backend"] == "plaintext")
    assert logistic["rounds"] > 1 and len(logistic["latencies_s"]) == 2
    assert len(logistic["site_bytes"]) == 3
    assert logistic["bytes_total"] == sum(logistic["site_bytes"])
    for png in ("latency_vs_rows", "latency_vs_sites", "error_vs_epsilon", "tradeoff"):
        assert (out / f"{png}.png").read_bytes()[:4] == b"\x89PNG"
    summary = (out / "summary.md").read_text()
    assert "| mean |" in summary
    assert "he via services" in summary
    assert re.search(r"## Service overhead\n\n.*\n.*\n\| lung \| mean \| he \| 3 \|", summary)


def test_bytes_match_the_layout_and_sites(quick_run) -> None:
    _, _, frame = quick_run
    mean = frame[(frame["query"] == "mean") & (frame.sites == 2)].iloc[0]
    assert mean.bytes_total == 2 * 8 * (1 + 1)  # n, Σx per site (sbp is never missing)
    assert mean.bytes_per_site == 8 * 2


def test_cohort_cells_are_compared_with_a_bare_scan(quick_run) -> None:
    _, _, frame = quick_run
    assert frame[frame.workload == "cohort"].scan_s.gt(0).all()
    assert frame[frame.workload == "lung"].scan_s.isna().all()


def test_resume_skips_finished_cells_and_runs_only_new_ones(quick_run) -> None:
    out, data, _ = quick_run
    before = (out / "cells.jsonl").read_text().splitlines()
    run_profile(Profile.load("quick"), out, data_dir=data, progress=False)
    assert (out / "cells.jsonl").read_text().splitlines() == before
    frame = run_tiny(out, data)
    after = (out / "cells.jsonl").read_text().splitlines()
    assert after[: len(before)] == before and len(after) == len(before) + 1
    assert len(frame) == len(before) + 1


def test_a_torn_last_line_is_measured_again(tmp_path) -> None:
    folder = RunFolder(tmp_path)
    folder.append({"key": "a", "status": "ok"})
    with folder.cells_file.open("a") as file:
        file.write('{"key": "b", "sta')
    assert list(folder.finished()) == ["a"]


def test_a_cell_past_its_time_is_killed_with_what_it_started(tmp_path) -> None:
    """A worker takes seconds to import pet: at 0.2 s the cell is ended, recorded as an
    error with its reason, and the next cell still runs."""
    spec = {**TINY, "matrices": [{"workloads": ["lung"], "queries": ["mean"], "sites": [3],
                                  "cell_timeout_s": 0.2},
                                 {"workloads": ["lung"], "queries": ["count"], "sites": [3]}]}
    frame = run_tiny(tmp_path / "out", tmp_path / "data", spec)
    assert frame.status.tolist() == ["error", "ok"]
    assert "did not finish within 0.2 s; its processes were killed" in frame.message.iloc[0]


def test_cells_that_fail_are_recorded_with_their_reason(tmp_path) -> None:
    spec = {**TINY, "matrices": [{"workloads": ["lung"], "queries": ["mean"], "sites": [30]}]}
    frame = run_tiny(tmp_path / "out", tmp_path / "data", spec)
    assert frame.status.tolist() == ["error"]
    assert "n_sites must be in [1, 18]" in frame.message.iloc[0]


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"workloads": ["heart"]}, "unknown workload 'heart'"),
        ({"queries": ["median"]}, "unknown query 'median'"),
        ({"backends": ["magic"]}, "unknown backend 'magic'"),
        ({"workloads": ["cohort"], "rows_per_site": []}, "needs rows_per_site"),
        ({"sites": [0]}, "sites must be positive"),
        ({"colour": "blue"}, r"unknown key\(s\) \['colour'\]"),
        ({"engines": ["sqlite"]}, "unknown engine 'sqlite'"),
        ({"engines": ["duckdb"]}, "reads the generated workloads' files"),
        ({"workloads": ["cohort"], "rows_per_site": [100], "engines": ["duckdb"],
          "transports": ["services"]}, "reads the generated workloads' files, in-process"),
        ({"rtts_ms": [20]}, "give transports: \\[services\\]"),
        ({"rtts_ms": [-1], "transports": ["services"]}, "rtt_s must be between 0 and 10"),
        ({"rtts_ms": [20], "mbit_s": 0, "transports": ["services"]}, "mbit_s must be"),
        ({"mbit_s": 100}, "give rtts_ms too"), ({"cell_timeout_s": 0}, "must be positive"),
    ],
)
def test_bad_profiles_are_refused_with_a_reason(change: dict, words: str) -> None:
    matrix = {"workloads": ["lung"], "queries": ["mean"], "backends": ["plaintext"],
              "sites": [2], **change}
    with pytest.raises(PetError, match=words):
        Profile.from_dict({"matrices": [matrix]})


def test_the_wan_profile_runs_each_cell_over_each_link_as_its_own_cell() -> None:
    cells = Profile.load("wan").cells()
    links = {(c.workload, c.query, c.backend): set() for c in cells}
    for c in cells:
        links[(c.workload, c.query, c.backend)].add(c.link)
        assert c.transport == "services" and c.mbit_s == 100
    assert all(found == {Link(r / 1000, 100) for r in (0, 1, 20, 80)}
               for found in links.values())
    assert len({c.key for c in cells}) == len(cells)


def test_shipped_profiles_load_and_full_reaches_ten_million_rows_at_eight_sites() -> None:
    assert Profile.load("quick").cells()
    full = Profile.load("full").cells()
    assert any(c.sites == 8 and c.rows_per_site == 10_000_000 for c in full)
    assert {c.workload for c in full} == {"lung", "breast_cancer", "diabetes", "cohort"}


def test_every_engine_runs_the_same_query_on_the_same_rows(tmp_path) -> None:
    """The engines dimension: each query on pet's own pass, on DuckDB and a local Spark
    session over the same Parquet file, and on a real PostgreSQL server holding its rows
    (loaded once, kept under the data folder), in as many rounds with the same answer,
    each compared with the one bare scan; the servers' start-up is recorded."""
    spec = {**TINY, "matrices": [{"workloads": ["cohort"], "queries": ["logistic"],
                                  "sites": [1], "rows_per_site": [2000],
                                  "engines": ["pet", "duckdb", "postgres", "spark"]}]}
    with tempfile.TemporaryDirectory(prefix="pet-engines-") as data:
        os.chmod(data, 0o755)  # PostgreSQL's own account (where tests run as root) keeps
        frame = run_tiny(tmp_path / "out", Path(data), spec)  # its cluster in there
    assert frame.status.tolist() == ["ok"] * 4, frame.message.tolist()
    assert sorted(frame.engine) == ["duckdb", "pet", "postgres", "spark"]
    assert frame.scan_s.notna().all() and (frame.local_s > 0).all()
    assert frame.rounds.nunique() == 1 and frame.rounds.iloc[0] > 1
    assert (frame.rel_error < 1e-9).all()
    servers = frame[frame.engine.isin(["postgres", "spark"])]
    assert (servers.engine_start_s > 0).all()
    assert (frame[frame.engine.isin(["pet", "duckdb"])].engine_start_s == 0).all()
    assert "## Local pass against the bare scan, by engine" in (
        tmp_path / "out" / "summary.md").read_text()
