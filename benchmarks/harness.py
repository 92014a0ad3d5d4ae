"""The harness: runs a profile's cells, each in a fresh process, and keeps what they cost.

Every cell runs in its own worker process so that its peak memory is its own. A finished
cell is appended to `cells.jsonl` in the run folder (flushed and synced) before the next
starts, so an interrupted run loses at most the cell in flight and resumes where it
stopped. Timings are measured here and only reported; no test asserts them.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import os
import platform
import signal
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from benchmarks import postgres
from benchmarks.profile import Cell, Profile
from benchmarks.queries import preset
from benchmarks.report import by_transport, markdown_summary, plot_all
from pet.backends import Backend, get_backend
from pet.client import RemoteStudy
from pet.disclosure import DisclosurePolicy
from pet.result import Result, answer_vector
from pet.site import Site
from pet.sources import DuckDBTable, PostgresTable, Relation, SparkTable, spark_session
from pet.study import Study
from pet.table import ParquetTable, Table
from pet.workloads import Workload, cohort, load
from services.local import LocalFederation, table_data, workload_data
from services.site import SHARED_INPUT

CSV_COLUMNS = (
    "workload", "query", "backend", "sites", "rows_per_site", "epsilon", "repeats",
    "latency_median_s", "latency_p95_s", "throughput_rows_s", "bytes_total", "peak_mem_mb",
    "abs_error", "rel_error", "rho", "epsilon_spent", "delta",
    "site_rows_s", "cpu_s", "bytes_per_site", "rounds", "comm_rounds", "scan_s", "local_s",
    "protect_s",
    "combine_s", "reveal_s", "session_bytes", "startup_s", "transport", "engine",
    "engine_start_s", "bound_ratio", "bound_held", "rtt_ms", "mbit_s", "status", "message",
)
"""One row per cell; the first columns are the ones every run must have to be compared."""
TEXT_COLUMNS = frozenset({"workload", "query", "backend", "transport", "engine", "status",
                          "message"})

OPEN = DisclosurePolicy(min_cell=1, max_parameter_ratio=1.0)
BENCHMARK_BUDGET, BENCHMARK_DELTA = 1e4, 1e-3
"""Each site's (ε, δ) budget in a DP cell, the largest OpenDP converts to ρ (the ledger
holds ρ ≈ 9223 of it): enough for any profile's repeats (ε = 10 costs ρ = 50)."""
"""Benchmarks measure cost, so disclosure control (which refuses small cells) is off."""

COHORT_SEED = 20261123
LIBRARIES = ("pet", "numpy", "pandas", "pyarrow", "scipy", "tenseal", "opendp", "torch",
             "crypten", "grpcio")


def machine_info() -> dict[str, str]:
    """What the numbers were measured on: CPU, cores, memory, Python and library versions."""
    info = {
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count()),
        "memory_gb": f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f}",
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    for name in LIBRARIES:
        try:
            info[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            info[name] = "not installed"
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def build_workload(cell: Cell, data_dir: Path) -> Workload:
    """The cell's data: cohort as Parquet files cached in `data_dir`, others from packages."""
    if cell.rows_per_site is None:
        return load(cell.workload, n_sites=cell.sites)
    directory = data_dir / f"{cell.workload}-{cell.rows_per_site}-{COHORT_SEED}"
    return cohort(cell.rows_per_site, cell.sites, COHORT_SEED, directory=directory, reuse=True)


def run_cell(cell: Cell, data_dir: str) -> dict[str, Any]:
    """Measure one cell (in a worker process); failures become a row with their reason."""
    record: dict[str, Any] = {**asdict(cell), "key": cell.key}
    try:
        record.update(_measure(cell, Path(data_dir)))
        record["status"], record["message"] = "ok", ""
    except Exception as exc:  # any failure is this cell's result, not the whole run's
        record["status"], record["message"] = "error", f"{type(exc).__name__}: {exc}"
    record["peak_mem_mb"] = _peak_rss_mb()
    record["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return record


@contextmanager
def on_engine(workload: Workload, engine: str,
              data_dir: Path) -> Iterator[tuple[Workload, float]]:
    """The workload with each site's Parquet file read by `engine` (pet: as it is; DuckDB
    and Spark read it in place; PostgreSQL holds it as a table, loaded once into a
    cluster kept under `data_dir`), and the seconds the engine took to start: Spark's
    session, PostgreSQL's server and first connection."""
    files = {name: table.path for name, table in workload.tables.items()
             if isinstance(table, ParquetTable)}
    start = time.perf_counter()
    if engine == "pet":
        yield workload, 0.0
    elif engine == "duckdb":
        yield _tables(workload, {name: DuckDBTable(None, Relation(parquet=path),
                                                   workload.schema)
                                 for name, path in files.items()}), 0.0
    elif engine == "spark":
        spark_session(SPARK_MASTER)
        started = time.perf_counter() - start
        yield _tables(workload, {name: SparkTable(SPARK_MASTER, Relation(parquet=str(path)),
                                                  workload.schema)
                                 for name, path in files.items()}), started
    else:
        with postgres.kept(data_dir / "postgres") as dsn:
            started = time.perf_counter() - start
            yield _tables(workload, {name: PostgresTable(dsn, Relation(_loaded(dsn, path)),
                                                         workload.schema)
                                     for name, path in files.items()}), started


SPARK_MASTER = "local[*]"


def _tables(workload: Workload, tables: dict[str, Table]) -> Workload:
    return Workload(workload.name, workload.schema, tables)


def _loaded(dsn: str, path: Path) -> str:
    """The name of the PostgreSQL table holding the Parquet file's rows (its folder and
    name), loaded on first use."""
    name = f"{path.parent.name}-{path.stem}".replace("-", "_")
    if not postgres.has_table(dsn, name):
        postgres.load_parquet(dsn, name, path)
    return name


def _measure(cell: Cell, data_dir: Path) -> dict[str, Any]:
    files = build_workload(cell, data_dir)
    with on_engine(files, cell.engine, data_dir) as (workload, engine_start_s):
        return {**_measured(cell, files, workload), "engine_start_s": engine_start_s}


def _measured(cell: Cell, files: Workload, workload: Workload) -> dict[str, Any]:
    query = preset(cell.workload, cell.query)
    options = {} if cell.epsilon is None else {"epsilon": cell.epsilon}
    with tempfile.TemporaryDirectory(prefix="pet-bench-") as folder, \
            _study(cell, workload, options, Path(folder)) as study:
        for _ in range(cell.warmup):
            study.run(query)
        latencies, cpu, results = [], [], []
        for _ in range(cell.repeats):
            start, cpu_start = time.perf_counter(), time.process_time()
            results.append(study.run(query))
            latencies.append(time.perf_counter() - start)
            cpu.append(time.process_time() - cpu_start)
    last = results[-1]
    rows = workload.n_rows
    site_seconds = np.median([[s.seconds for s in r.sites] for r in results], axis=0)
    backend = study.backend
    return {
        "rows_per_site": rows // cell.sites,
        "latency_median_s": float(np.median(latencies)),
        "latency_p95_s": float(np.percentile(latencies, 95)),
        "latencies_s": latencies,
        "throughput_rows_s": rows / float(np.median(latencies)),
        "site_rows_s": rows / cell.sites / float(np.mean(site_seconds)),
        "site_seconds": site_seconds.tolist(),
        "cpu_s": float(np.median(cpu)),
        "bytes_total": last.bytes_total,
        "bytes_per_site": last.bytes_total / cell.sites,
        "site_bytes": [s.bytes_sent for s in last.sites],
        "rounds": last.rounds,
        "comm_rounds": last.comm_rounds,
        **_phases(results),
        "session_bytes": backend.session_bytes,
        "startup_s": backend.startup_s,
        "rho": last.privacy.rho,
        "epsilon_spent": last.privacy.epsilon,
        "delta": last.privacy.delta,
        **_errors(results, files, query, cell),
        "scan_s": _bare_scan(files, query.used_columns(), cell.warmup, cell.repeats),
    }


@contextmanager
def _study(cell: Cell, workload: Workload, options: dict[str, Any],
           folder: Path) -> Iterator[Study | RemoteStudy]:
    """The cell's study: in-process sites, or a coordinator and site servers on loopback
    asked through the analyst's client (the latency is then the analyst's, end to end)."""
    if cell.transport == "in-process":
        backend = get_backend(cell.backend, **options)
        with Study(_sites(workload, backend, folder), backend=backend) as study:
            yield study
        return
    data = (table_data(workload) if cell.rows_per_site
            else workload_data(cell.workload, cell.sites))
    # Spare MPC processes import torch as the servers start: only where a session uses them.
    federation = LocalFederation(folder, data, link=cell.link,
                                 warm=cell.backend in SHARED_INPUT, site_options={
        "budget": {"epsilon": BENCHMARK_BUDGET, "delta": BENCHMARK_DELTA},
        "disclosure": {"min_cell": OPEN.min_cell,
                       "max_parameter_ratio": OPEN.max_parameter_ratio}})
    with federation, federation.client() as client, \
            client.study(cell.backend, **options) as study:
        yield study


def _sites(workload: Workload, backend: Backend, ledgers: Path) -> list[Site]:
    """The workload's sites without disclosure limits; under DP each keeps a ledger with a
    budget no benchmark run exhausts (the ledger's cost is part of what is measured)."""
    if not backend.differentially_private:
        return workload.sites(OPEN)
    sites = workload.sites(OPEN, ledgers=ledgers)
    for site in sites:
        site.ledger.set_budget(site.dataset, BENCHMARK_BUDGET, BENCHMARK_DELTA)
    return sites


def _phases(results: list[Result]) -> dict[str, float]:
    """Median seconds per phase: a site's local pass and protection (mean over sites), the
    coordinator's combination and the analyst's reveal."""
    return {
        "local_s": float(np.median([np.mean([s.local_s for s in r.sites]) for r in results])),
        "protect_s": float(np.median([np.mean([s.protect_s for s in r.sites])
                                      for r in results])),
        "combine_s": float(np.median([r.combine_s for r in results])),
        "reveal_s": float(np.median([r.reveal_s for r in results])),
    }


def _errors(results: list[Result], files: Workload, query: Any,
            cell: Cell) -> dict[str, float]:
    """Absolute and relative (max-norm) error of the answer against plaintext on pet's own
    pass over the sites' files (an engine's plaintext answer is compared with it too):
    the median over the repeats (one draw of DP noise says little)."""
    if cell.backend == "plaintext" and cell.engine == "pet":
        return {"abs_error": 0.0, "rel_error": 0.0}
    reference = answer_vector(files.study("plaintext", policy=OPEN).run(query).value)
    errors = np.array([answer_vector(r.value) - reference for r in results])
    error = float(np.median(np.max(np.abs(errors), axis=1)))
    scale = float(np.max(np.abs(reference)))
    relative = error / scale if scale else (0.0 if error == 0 else math.inf)
    return {"abs_error": error, "rel_error": relative,
            **_bound_fit(errors, np.array([r.error_bounds for r in results]))}


def _bound_fit(errors: np.ndarray, bounds: np.ndarray) -> dict[str, float]:
    """How well the reported bounds fit the errors over the repeats (rows): the largest,
    over the answer's numbers that err at all, of mean bound ÷ root-mean-square error,
    and the share of (repeat, number) errors within their bounds."""
    rms = np.sqrt(np.mean(errors**2, axis=0))
    erring = rms > 0
    ratio = float(np.max(bounds.mean(axis=0)[erring] / rms[erring])) if erring.any() else 0.0
    return {"bound_ratio": ratio,
            "bound_held": float(np.mean(np.abs(errors) <= bounds))}


def _bare_scan(workload: Workload, columns: tuple[str, ...], warmup: int = 0,
               repeats: int = 1) -> float | None:
    """Median seconds, over `repeats` after `warmup` runs (as the query's own), to read the
    query's columns from every site's Parquet file and sum them with numpy: the floor a
    one-pass `local` can approach. None for in-memory workloads."""
    tables = list(workload.tables.values())
    if not all(isinstance(t, ParquetTable) for t in tables):
        return None
    seconds = []
    for _ in range(warmup + repeats):
        start = time.perf_counter()
        for table in tables:
            for batch in pq.ParquetFile(table.path).iter_batches(columns=list(columns)):
                for array in batch.columns:
                    if pa.types.is_dictionary(array.type):  # categories: sum their codes
                        array = array.indices
                    np.sum(array.to_numpy(zero_copy_only=False))
        seconds.append(time.perf_counter() - start)
    return float(np.median(seconds[warmup:]))


def _peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux VmHWM), in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return math.nan


class RunFolder:
    """A run's folder: finished cells as JSON lines, plus the CSV, JSON and report."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.cells_file = path / "cells.jsonl"
        path.mkdir(parents=True, exist_ok=True)

    def finished(self) -> dict[str, dict[str, Any]]:
        """Cells already measured, by key (a torn last line from a crash is ignored)."""
        done: dict[str, dict[str, Any]] = {}
        if self.cells_file.exists():
            for line in self.cells_file.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                done[record["key"]] = record
        return done

    def append(self, record: dict[str, Any]) -> None:
        """Record one finished cell durably before the next one starts."""
        with self.cells_file.open("a") as file:
            file.write(json.dumps(record, default=_jsonable) + "\n")
            file.flush()
            os.fsync(file.fileno())

    def write(self, profile: Profile, machine: dict[str, str]) -> pd.DataFrame:
        """Write results.csv, run.json, summary.md and the plots from the finished cells."""
        records = list(self.finished().values())
        frame = pd.DataFrame(records).reindex(columns=list(CSV_COLUMNS))
        frame["transport"] = frame["transport"].fillna("in-process")
        for column in CSV_COLUMNS:
            if column not in TEXT_COLUMNS:  # None (not applicable) becomes NaN
                frame[column] = pd.to_numeric(frame[column])
        frame.to_csv(self.path / "results.csv", index=False)
        (self.path / "run.json").write_text(json.dumps(
            {"profile": profile.name, "description": profile.description,
             "machine": machine, "cells": records}, indent=1, default=_jsonable))
        (self.path / "summary.md").write_text(markdown_summary(frame, machine))
        plot_all(by_transport(frame), self.path)
        return frame


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in JSON")


def run_profile(profile: Profile, out: Path, *, data_dir: Path,
                progress: bool = True) -> pd.DataFrame:
    """Run every cell of `profile` not yet finished in `out`; return the results table."""
    folder = RunFolder(out)
    machine = machine_info()
    done = folder.finished()
    pending = [c for c in profile.cells() if c.key not in done]
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        for record in _run_each(pending, data_dir, progress=progress):
            folder.append(record)
    finally:
        frame = folder.write(profile, machine)
    return frame


def _run_each(cells: list[Cell], data_dir: Path, *, progress: bool) -> Iterator[dict[str, Any]]:
    """Each cell in a fresh worker process, with a progress bar showing cell and ETA."""
    context = multiprocessing.get_context("spawn")
    bar = tqdm(cells, unit="cell", disable=not progress, dynamic_ncols=True)
    for cell in bar:
        bar.set_postfix_str(cell.label(), refresh=True)
        # The worker leads a process group of its own, which every server and party it
        # starts joins: a cell past its time is ended with everything it started.
        with ProcessPoolExecutor(max_workers=1, mp_context=context,
                                 initializer=os.setpgrp) as pool:
            future = pool.submit(run_cell, cell, str(data_dir))
            try:
                yield future.result(timeout=cell.timeout_s)
            except BrokenProcessPool:
                yield {**asdict(cell), "key": cell.key, "status": "error",
                       "message": "the worker process died (out of memory, or killed)"}
            except TimeoutError:
                for pid in list(pool._processes):  # the executor names no other handle
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(pid, signal.SIGKILL)
                yield {**asdict(cell), "key": cell.key, "status": "error",
                       "message": f"the cell did not finish within {cell.timeout_s:g} s; its "
                                  "processes were killed"}
