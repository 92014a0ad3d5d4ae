"""How long a privacy-ledger charge takes as charges pile up: the median and p99 of a
`Ledger.charge` call with 10², 10³, 10⁴ and 10⁵ charges recorded, in a fresh ledger file
in a temporary folder (on disk: each charge's commit waits for its fsyncs).

The charges before each level are loaded in one transaction (`charge_in`, which keeps the
running totals); only the timed calls are real `charge` calls, one transaction each.
`--baseline REV` also times the ledger at that git revision, its charges loaded by plain
INSERTs (that ledger summed every charge, so loading it charge by charge takes hours).

    python -m benchmarks.ledger --out benchmarks/results/ledger --baseline 6ca9a75
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from benchmarks.harness import machine_info
from pet import ledger as current
from pet.durable import now

LEVELS = (10**2, 10**3, 10**4, 10**5)
DATASET = "site"
BUDGET = (1e4, 1e-3)
"""The dataset's (ε, δ): room for 10⁵ charges under either ledger's composition."""
CHARGE = (0.01, 1e-9)
"""Each charge's (ε, δ): a Gaussian release, as most DP releases are."""

Fill = Callable[[ModuleType, Any, int], None]


def measure(module: ModuleType, fill: Fill, calls: int, folder: Path) -> dict[str, Any]:
    """One ledger implementation's charge latency at each level, in a fresh file."""
    ledger = module.Ledger(folder / f"{module.__name__}.sqlite")
    ledger.set_budget(DATASET, *BUDGET)
    start = time.perf_counter()
    ledger.charge(DATASET, *CHARGE, query="first")  # includes the (ε, δ) → ρ conversion
    first_ms = (time.perf_counter() - start) * 1e3
    recorded, levels = 1, []
    for level in LEVELS:
        fill(module, ledger, level - recorded)
        times = [_timed_charge(ledger) for _ in range(calls)]
        recorded = level + calls
        levels.append({"recorded": level, "calls": calls,
                       "median_ms": float(np.median(times)),
                       "p99_ms": float(np.percentile(times, 99)),
                       "max_ms": float(np.max(times))})
    return {"first_charge_ms": first_ms, "levels": levels}


def _timed_charge(ledger: Any) -> float:
    """Milliseconds one `charge` call takes."""
    start = time.perf_counter()
    ledger.charge(DATASET, *CHARGE, query="Count()")
    return (time.perf_counter() - start) * 1e3


def fill_current(module: ModuleType, ledger: current.Ledger, n: int) -> None:
    """Record n charges in one transaction through `charge_in` (totals kept)."""
    with ledger.transaction() as db:
        for _ in range(n):
            ledger.charge_in(db, DATASET, *CHARGE, query="Count()", request=uuid.uuid4().hex)


def fill_baseline(module: ModuleType, ledger: Any, n: int) -> None:
    """Record n charges in the summing ledger's table by plain INSERTs."""
    epsilon = round(CHARGE[0] * module.EPSILON_SCALE)
    delta = round(CHARGE[1] * module.DELTA_SCALE)
    at = now()
    with ledger.transaction() as db:
        db.executemany("INSERT INTO charges (request, dataset, epsilon, delta, query, at) "
                       "VALUES (?, ?, ?, ?, ?, ?)",
                       [(uuid.uuid4().hex, DATASET, epsilon, delta, "Count()", at)
                        for _ in range(n)])


def baseline(revision: str, folder: Path) -> ModuleType:
    """`pet/ledger.py` as it was at a git revision, imported as a module of its own."""
    source = subprocess.run(["git", "show", f"{revision}:pet/ledger.py"], check=True,
                            capture_output=True, text=True).stdout
    path = folder / "ledger_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("ledger_baseline", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def conditions() -> dict[str, Any]:
    """What else the machine was doing: its load averages and `uptime`."""
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    return {"loadavg": list(os.getloadavg()), "uptime": uptime}


def filesystem(folder: str) -> str:
    """The type of the filesystem a folder lies on (as `df -T` names it)."""
    table = subprocess.run(["df", "-T", folder], capture_output=True, text=True).stdout
    return table.splitlines()[1].split()[1]


def summary(results: dict[str, Any]) -> str:
    """The results as a small Markdown page."""
    machine, runs = results["machine"], results["runs"]
    names = list(runs)
    head = " | ".join(f"{n} median | {n} p99" for n in names)
    lines = [
        "# Ledger charge latency",
        "",
        f"One `Ledger.charge` call (ε={CHARGE[0]:g}, δ={CHARGE[1]:g}, one transaction with "
        "synchronous=FULL) against a ledger already holding N charges; milliseconds. "
        f"Machine: {machine['cpu']}, {machine['cores']} cores, Python {machine['python']}; "
        f"temporary folder {results['folder']} ({results['filesystem']}).",
        "",
        f"Load averages (1, 5, 15 min) before: {_load(results['before'])}; after: "
        f"{_load(results['after'])}: {_busy(results, int(machine['cores']))}.",
        "",
        f"| charges recorded | {head} |",
        "|---:|" + "---:|" * (2 * len(names)),
    ]
    for i, level in enumerate(LEVELS):
        cells = " | ".join(f"{runs[n]['levels'][i]['median_ms']:.2f} | "
                           f"{runs[n]['levels'][i]['p99_ms']:.2f}" for n in names)
        lines.append(f"| {level:,} | {cells} |")
    lines += ["", "Timed calls per level: " + ", ".join(
        f"{n}: {runs[n]['levels'][0]['calls']}" for n in names) + ". First charge of a new "
        "(ε, δ) in a process (OpenDP's conversion to ρ, then remembered): " + ", ".join(
        f"{n}: {runs[n]['first_charge_ms']:.0f} ms" for n in names) + ".", ""]
    return "\n".join(lines)


def _load(conditions: dict[str, Any]) -> str:
    return ", ".join(f"{x:.2f}" for x in conditions["loadavg"])


def _busy(results: dict[str, Any], cores: int) -> str:
    """Whether other work shared the machine, judged by the 1-minute load around the run
    (this run itself keeps about one core busy)."""
    load = max(results["before"]["loadavg"][0], results["after"]["loadavg"][0])
    if load > 1.5:
        return (f"other work was running (load {load:.1f} on {cores} cores), so slow single "
                "calls (p99) include its disk and CPU use")
    return "nothing else of note was running"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ledger"))
    parser.add_argument("--calls", type=int, default=300, help="timed charges per level")
    parser.add_argument("--baseline", metavar="REV", help="also time pet/ledger.py at REV")
    parser.add_argument("--baseline-calls", type=int, default=20,
                        help="timed charges per level for the baseline (slow at 10⁵)")
    args = parser.parse_args(argv)
    info = machine_info()
    results: dict[str, Any] = {
        "machine": {k: info[k] for k in ("cpu", "cores", "memory_gb", "python", "platform")},
        "folder": tempfile.gettempdir(), "filesystem": filesystem(tempfile.gettempdir()),
        "charge": CHARGE, "budget": BUDGET,
        "before": conditions(), "runs": {}}
    with tempfile.TemporaryDirectory(prefix="pet-ledger-") as folder:
        results["runs"]["zCDP, running totals"] = measure(current, fill_current, args.calls,
                                                          Path(folder))
        if args.baseline:
            old = baseline(args.baseline, Path(folder))
            results["runs"][f"sums ({args.baseline})"] = measure(
                old, fill_baseline, args.baseline_calls, Path(folder))
    results["after"] = conditions()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "summary.md").write_text(summary(results))
    print(summary(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
