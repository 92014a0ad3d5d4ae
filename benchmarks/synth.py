"""Synthesizers side by side: pet's MST and AIM against OpenDP's (`opendp[mbi]`) and
smartnoise-synth's on the same discretized data, in one run.

Every cell fits one synthesizer to one data set at one (ε, δ), `--repeats` times (each
run draws fresh noise), samples as many rows as the data has, and records the fit and
sample time, the peak memory of its process, and the average total variation distance
(TVD) of all 1-way and 2-way marginals and of a fixed sample of 3-way marginals against
the real data. pet runs in a fresh worker process of its own environment; each peer in
its own (built by `benchmarks/peers/setup.sh`), given the very codes pet's public
discretization makes of the real rows.

The held-out tables (`HELDOUT`: real health tables that pip packages ship, which pet was
never tuned on) are coded once for everyone: a numeric column with more than ten values
in ten equal-width bins over its range, any other column by its sorted values, missing
values a code of their own; every column is then categorical. Their rows split 70/30
with a fixed seed: synthesizers fit the 70, TVD is against the 70, and a cell also
scores train-on-synthetic, test-on-real: the AUC on the real 30 of a logistic regression
of the table's stated outcome on the other columns (one-hot), fitted to the synthetic
rows.

    python -m benchmarks.synth --out benchmarks/results/synth
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import resource
import tempfile
import time
from collections.abc import Callable
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.peers import driver
from pet.mechanisms import rho_of
from pet.schema import Categorical, Schema
from pet.synth import SYNTHESIZERS, Curator, Discretization
from pet.synth.domain import Domain
from pet.table import FrameTable
from pet.workloads import Workload, breast_cancer, cohort, lung

DELTA = 1e-6
EPSILONS = (0.5, 1.0, 5.0)
METHODS = ("mst", "aim")
TRIPLES = 30
"""3-way marginals in the fixed sample (all of them when a data set has fewer)."""
TIMEOUT_S = 300.0
"""A peer cell still running after this long is stopped and reported as a timeout."""
DATA_DIR = Path("benchmarks/.data")

HELDOUT_BINS = 10
"""Equal-width bins of a held-out table's numeric columns with more values than this."""
TRAIN_SHARE = 0.7


def _lymph_node() -> pd.DataFrame:
    from lifelines.datasets import load_lymph_node

    return load_lymph_node().drop(columns=["diagdateb", "recdate", "deathdate"])


def _kidney_transplant() -> pd.DataFrame:
    from lifelines.datasets import load_kidney_transplant

    return load_kidney_transplant()


def _rand_hie() -> pd.DataFrame:
    from statsmodels.datasets import randhie

    return randhie.load_pandas().data


def _diabetes() -> pd.DataFrame:
    from sklearn.datasets import load_diabetes

    frame = load_diabetes(as_frame=True, scaled=False).frame
    target = frame.pop("target")
    frame["progressed"] = target > target.median()
    return frame


HELDOUT: dict[str, tuple[Callable[[], pd.DataFrame], str]] = {
    "lymph_node": (_lymph_node, "censdead"),
    "kidney_transplant": (_kidney_transplant, "death"),
    "rand_hie": (_rand_hie, "hlthg"),
    "diabetes": (_diabetes, "progressed"),
}
"""Held-out real health tables, each with the outcome its TSTR AUC predicts: the German
breast cancer study's deaths (lifelines, 686 × 12), kidney transplant deaths (lifelines,
863 × 6), the RAND health insurance experiment's self-rated good health (statsmodels,
20 190 × 10) and diabetes progression above the median (scikit-learn, 442 × 11)."""


def heldout_codes(name: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A held-out table's codes (every column categorical), split into train and test."""
    loader, _ = HELDOUT[name]
    frame = loader()
    codes = pd.DataFrame({c: _coded(frame[c]) for c in frame.columns})
    train = np.random.default_rng(0).random(len(codes)) < TRAIN_SHARE
    return codes[train].reset_index(drop=True), codes[~train].reset_index(drop=True)


def _coded(column: pd.Series) -> np.ndarray:
    """One column's codes: equal-width bins of a many-valued numeric column, otherwise
    its sorted values; a missing value gets the last code."""
    if pd.api.types.is_numeric_dtype(column) and column.nunique() > HELDOUT_BINS:
        edges = np.linspace(column.min(), column.max(), HELDOUT_BINS + 1)
        level = np.clip(np.digitize(column, edges[1:-1]), 0, HELDOUT_BINS - 1)
        known = pd.Series(level, index=column.index).where(column.notna())
        return known.fillna(HELDOUT_BINS).to_numpy(dtype=np.int64)
    return pd.factorize(column, sort=True, use_na_sentinel=False)[0]


def _heldout_workload(name: str) -> Workload:
    """A held-out table's training rows as one data holder's table of categorical codes."""
    train, _ = heldout_codes(name)
    schema = Schema(tuple(Categorical(c, tuple(range(max(2, int(train[c].max()) + 1))),
                                      nullable=False) for c in train.columns), name=name)
    return Workload(name, schema, {name: FrameTable(train, schema)},
                    f"{name}: held-out real table, coded for every synthesizer alike")


DATASETS: dict[str, Callable[[], Workload]] = {
    "breast_cancer": lambda: breast_cancer(1),
    "lung": lambda: lung(1),
    "cohort-100k": lambda: cohort(100_000, 1, 0, directory=DATA_DIR / "synth-100k", reuse=True),
    "cohort-1m": lambda: cohort(1_000_000, 1, 0, directory=DATA_DIR / "synth-1m", reuse=True),
    **{name: (lambda name=name: _heldout_workload(name)) for name in HELDOUT},
}
"""Each data set as one data holder's table (central DP: the peers' setting)."""


def tstr(dataset: str, synthetic: np.ndarray, names: list[str]) -> dict[str, float]:
    """Train on synthetic, test on real: the held-out test rows' AUC of a logistic
    regression of the outcome on the other columns (one-hot) fitted to `synthetic`;
    0.5 when the synthetic rows hold one class only. Empty for other data sets."""
    if dataset not in HELDOUT:
        return {}
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import OneHotEncoder

    _, test = heldout_codes(dataset)
    outcome = names.index(HELDOUT[dataset][1])
    features = [j for j in range(len(names)) if j != outcome]
    target = synthetic[:, outcome] == 1
    if target.all() or not target.any():
        return {"tstr_auc": 0.5}
    encoder = OneHotEncoder(handle_unknown="ignore").fit(
        np.vstack([synthetic[:, features], test.to_numpy()[:, features]]))
    model = LogisticRegression(max_iter=2000).fit(encoder.transform(synthetic[:, features]),
                                                  target)
    scores = model.predict_proba(encoder.transform(test.to_numpy()[:, features]))[:, 1]
    return {"tstr_auc": float(roc_auc_score(test.to_numpy()[:, outcome] == 1, scores))}


def codes_of(workload: Workload) -> tuple[Discretization, np.ndarray]:
    """The public discretization of a workload and its real rows' levels."""
    discretization = Discretization.of(workload.schema)
    table = next(iter(workload.tables.values()))
    chunks = table.chunks(workload.schema.names)  # a chunk at a time: larger than memory
    return discretization, np.concatenate([discretization.levels(c.columns) for c in chunks])


def fidelity(real: np.ndarray, synthetic: np.ndarray, domain: Domain) -> dict[str, float]:
    """Average TVD of all 1-way and 2-way marginals and of the fixed sample of 3-way
    marginals."""
    indices = range(len(domain))
    pairs = list(combinations(indices, 2))
    triples = list(combinations(indices, 3))
    rng = np.random.default_rng(0)
    if len(triples) > TRIPLES:
        triples = [triples[i] for i in sorted(rng.choice(len(triples), TRIPLES, replace=False))]
    return {"tvd1": _tvd(real, synthetic, [(i,) for i in indices], domain),
            "tvd2": _tvd(real, synthetic, pairs, domain),
            "tvd3": _tvd(real, synthetic, triples, domain)}


def _tvd(real: np.ndarray, synthetic: np.ndarray, cliques: list[tuple[int, ...]],
         domain: Domain) -> float:
    distances = []
    for clique in cliques:
        shape = tuple(domain.sizes[i] for i in clique)
        p, q = (np.bincount(np.ravel_multi_index(rows[:, clique].T, shape),
                            minlength=int(np.prod(shape))) / len(rows)
                for rows in (real, synthetic))
        distances.append(0.5 * np.abs(p - q).sum())
    return float(np.mean(distances))


def real_floor(dataset: str) -> dict[str, float]:
    """What real data score on a held-out table: its test rows' TVD against its training
    rows (the floor no synthesizer need beat) and the TSTR AUC of training on them."""
    _, test = heldout_codes(dataset)
    workload = DATASETS[dataset]()
    discretization, real = codes_of(workload)
    held = np.clip(test.to_numpy(dtype=np.int64), 0, np.array(discretization.domain().sizes) - 1)
    return fidelity(real, held, discretization.domain()) | tstr(
        dataset, real, list(discretization.schema.names))


def pet_cell(dataset: str, method: str, epsilon: float, delta: float,
             seed: int) -> dict[str, Any]:
    """One pet cell in a fresh worker process (its peak memory is its own)."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(_pet_worker, (dataset, method, epsilon, delta, seed))


def _pet_worker(dataset: str, method: str, epsilon: float, delta: float,
                seed: int) -> dict[str, Any]:
    workload = DATASETS[dataset]()
    discretization, real = codes_of(workload)
    with tempfile.TemporaryDirectory() as folder:
        (site,) = workload.sites(ledgers=Path(folder))
        site.ledger.set_budget(site.dataset, epsilon, delta)
        start = time.perf_counter()
        with Curator(site, discretization, epsilon=epsilon, delta=delta) as measurer:
            fit = SYNTHESIZERS[method]().fit(measurer)
        fitted = time.perf_counter()
        # On the levels the real rows are scored on: MST's merged levels expanded again.
        synthetic = fit.discretization.expand(fit.model.sample(len(real), seed),
                                              np.random.default_rng(seed))
        sampled = time.perf_counter()
    return {"status": "ok", "fit_s": fitted - start, "sample_s": sampled - fitted,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rho": fit.rho, **fidelity(real, synthetic, discretization.domain()),
            **tstr(dataset, synthetic, list(discretization.schema.names))}


def peer_cell(peer: str, method: str, dataset: str, epsilon: float, delta: float,
              seed: int, work: Path, *, resample: bool = True,
              timeout_s: float = TIMEOUT_S) -> dict[str, Any]:
    """One peer cell through the peer driver, scored on the same real levels."""
    discretization, real = _cached_codes(dataset, work)
    domain = discretization.domain()
    stats = driver.run(peer, method, str(work / f"{dataset}.csv"),
                       dict(zip(domain.attributes, domain.sizes, strict=True)),
                       epsilon=epsilon, delta=delta, seed=seed, rows=len(real),
                       resample=resample, rho=rho_of(epsilon, delta), timeout_s=timeout_s,
                       workdir=work / f"{peer}-{method}-{dataset}-{epsilon:g}-{delta:g}")
    if stats.get("status") == "ok":
        outputs = {"": "synthetic.csv", "resampled": "synthetic-resampled.csv"}
        for label, name in outputs.items():
            path = Path(stats["workdir"]) / name
            if path.exists():
                synthetic = pd.read_csv(path).to_numpy(dtype=np.int64)
                scores = fidelity(real, synthetic, domain) | tstr(
                    dataset, synthetic, list(domain.attributes))
                stats |= {f"{k}_{label}" if label else k: v for k, v in scores.items()}
    return stats


_CODES: dict[str, tuple[Discretization, np.ndarray]] = {}


def _cached_codes(dataset: str, work: Path) -> tuple[Discretization, np.ndarray]:
    """A data set's levels, computed once per run and written where the peers read them."""
    if dataset not in _CODES:
        discretization, real = codes_of(DATASETS[dataset]())
        frame = pd.DataFrame(real, columns=list(discretization.schema.names))
        frame.to_csv(work / f"{dataset}.csv", index=False)
        _CODES[dataset] = discretization, real
    return _CODES[dataset]


def cells(datasets: list[str], impls: list[str], methods: list[str],
          epsilons: list[float], repeats: int, delta: float = DELTA) -> list[dict[str, Any]]:
    """The matrix: every data set × method × ε × repeat, for each implementation."""
    return [{"impl": impl, "dataset": d, "method": m, "epsilon": e, "delta": delta,
             "repeat": r}
            for d in datasets for m in methods for e in epsilons for r in range(repeats)
            for impl in impls]


def run(out: Path, datasets: list[str], impls: list[str], *, methods: list[str],
        epsilons: list[float], repeats: int = 1, delta: float = DELTA,
        timeout_s: float = TIMEOUT_S) -> Path:
    """Run (or resume) the matrix into `out/cells.jsonl`; returns that file. A repeat's
    index is its seed. Peers sample twice from one fitted model: as shipped, and
    re-sampled with true sampling."""
    out.mkdir(parents=True, exist_ok=True)
    log = out / "cells.jsonl"
    done = {_key(json.loads(line)) for line in log.read_text().splitlines()} \
        if log.exists() else set()
    work = Path(tempfile.mkdtemp(prefix="pet-synth-bench-"))
    for cell in cells(datasets, impls, methods, epsilons, repeats, delta):
        if _key(cell) in done:
            continue
        seed = cell["repeat"]
        if cell["impl"] == "pet":
            stats = pet_cell(cell["dataset"], cell["method"], cell["epsilon"], delta, seed)
        else:
            stats = peer_cell(cell["impl"], cell["method"], cell["dataset"], cell["epsilon"],
                              delta, seed, work, timeout_s=timeout_s)
        with log.open("a") as f:
            f.write(json.dumps({**cell, **_kept(stats)}) + "\n")
        print(json.dumps({**cell, **{k: stats.get(k) for k in (
            "status", "fit_s", "tvd2", "tvd3", "tstr_auc", "peak_rss_mb")}}), flush=True)
    return log


def summary(log: Path) -> str:
    """The results as a Markdown table: per data set, method, ε and δ, each
    implementation's median times and memory and its mean fidelity over the repeats (±
    their standard deviation; peers also re-sampled from the same fitted model), and how
    many times faster pet fits than the fastest peer that finished."""
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    lines = ["| data | method | ε | δ | implementation | runs | fit | sample | peak memory "
             "| 1-way TVD | 2-way TVD | 3-way TVD | TSTR AUC | pet faster by |",
             "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    groups: dict[tuple, dict[str, list[dict[str, Any]]]] = {}
    for row in rows:
        cell = groups.setdefault((row["dataset"], row["method"], row["epsilon"],
                                  row.get("delta", DELTA)), {})
        cell.setdefault(row["impl"], []).append(row)
    floors = {dataset: real_floor(dataset) for dataset, *_ in groups if dataset in HELDOUT}
    for dataset, floor in floors.items():
        lines.append(f"| {dataset} | | | | real rows (test against train) | | | | | "
                     f"{floor['tvd1']:.3f} | {floor['tvd2']:.3f} | {floor['tvd3']:.3f} | "
                     f"{floor['tstr_auc']:.3f} | |")
    for (dataset, method, epsilon, delta), by_impl in groups.items():
        fits = {impl: float(np.median([r["fit_s"] for r in runs if r.get("status") == "ok"]))
                for impl, runs in by_impl.items()
                if any(r.get("status") == "ok" for r in runs)}
        peers = [t for impl, t in fits.items() if impl != "pet"]
        speedup = f"{min(peers) / fits['pet']:.0f}×" if "pet" in fits and peers else "—"
        for impl, runs in by_impl.items():
            lines += _rows(f"| {dataset} | {method} | {epsilon:g} | {delta:g} | {impl}", runs,
                           speedup if impl == "pet" else "")
    return "\n".join(lines) + "\n\n" + paired(groups)


PAIRED = (("tvd2", "2-way TVD", -1), ("tstr_auc", "TSTR AUC", 1))
"""The scores the paired comparison pools: key, label, and +1 where higher is better."""


def paired(groups: dict[tuple, dict[str, list[dict[str, Any]]]]) -> str:
    """pet against each peer (as shipped), pooled over every cell where both have two or
    more fits: the mean over cells of pet's mean less the peer's, its standard error
    (each cell's two means independent: √Σ(s²_pet/n_pet + s²_peer/n_peer) / cells), and
    in how many cells pet's mean is the better. One cell's three fits cannot tell a
    difference of a few hundredths of AUC from luck; many cells together can."""
    lines = ["| method | peer | score | cells | pet − peer, mean over cells | "
             "standard error | cells where pet is better |", "|---|---|---|---:|---:|---:|---:|"]
    methods = sorted({method for _, method, *_ in groups})
    peers = sorted({impl for cell in groups.values() for impl in cell} - {"pet"})
    for method, peer in ((m, p) for m in methods for p in peers):
        for key, label, sign in PAIRED:
            pairs = [(_scores(cell.get("pet", []), key), _scores(cell[peer], key))
                     for (_, m, *_), cell in groups.items() if m == method and peer in cell]
            pairs = [(a, b) for a, b in pairs if len(a) > 1 and len(b) > 1]
            if not pairs:
                continue
            gaps = np.array([a.mean() - b.mean() for a, b in pairs])
            spread = math.sqrt(sum(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b)
                                   for a, b in pairs)) / len(pairs)
            lines.append(f"| {method} | {peer} | {label} | {len(pairs)} | {gaps.mean():+.4f} "
                         f"| {spread:.4f} | {int((sign * gaps > 0).sum())} |")
    return "\n".join(lines) + "\n"


def _scores(runs: list[dict[str, Any]], key: str) -> np.ndarray:
    """One score of the runs that finished and recorded it."""
    return np.array([r[key] for r in runs if r.get("status") == "ok" and key in r])


def _rows(head: str, runs: list[dict[str, Any]], speedup: str) -> list[str]:
    ok = [r for r in runs if r.get("status") == "ok"]
    if not ok:
        row = runs[0]
        limit = f" after {row['timeout_s']:.0f} s" if row.get("status") == "timeout" else ""
        return [f"{head} | {len(runs)} | {row.get('status')}{limit} | | | | | | | |"]

    def median(key: str) -> float:
        return float(np.median([r[key] for r in ok]))

    lines = [f"{head} | {len(ok)} | {median('fit_s'):.1f} s | {median('sample_s'):.2f} s | "
             f"{median('peak_rss_mb'):,.0f} MB | {_mean(ok, 'tvd1')} | {_mean(ok, 'tvd2')} | "
             f"{_mean(ok, 'tvd3')} | {_mean(ok, 'tstr_auc')} | {speedup} |"]
    if all("tvd2_resampled" in r for r in ok):
        lines.append(f"{head}, re-sampled | {len(ok)} | | "
                     f"{float(np.median([r.get('resample_s', 0) for r in ok])):.2f} s | | "
                     f"{_mean(ok, 'tvd1_resampled')} | {_mean(ok, 'tvd2_resampled')} | "
                     f"{_mean(ok, 'tvd3_resampled')} | {_mean(ok, 'tstr_auc_resampled')} | |")
    return lines


def _mean(runs: list[dict[str, Any]], key: str) -> str:
    """The mean of a score over the runs, ± their standard deviation when there are more;
    empty where the runs did not record it."""
    if not all(key in r for r in runs):
        return ""
    values = np.array([r[key] for r in runs])
    spread = f" ± {values.std(ddof=1):.3f}" if len(values) > 1 else ""
    return f"{values.mean():.3f}{spread}"


def _key(cell: dict[str, Any]) -> tuple:
    return (cell["impl"], cell["dataset"], cell["method"], cell["epsilon"],
            cell.get("delta", DELTA), cell["repeat"])


def _kept(stats: dict[str, Any]) -> dict[str, Any]:
    """What a cell keeps of its stats: numbers, status, versions, the tail of an error."""
    scores = ("tvd1", "tvd2", "tvd3", "tstr_auc")
    keep = ("status", "fit_s", "sample_s", "resample_s", "peak_rss_mb", "rho", *scores,
            *(f"{k}_resampled" for k in scores), "versions", "stderr_tail", "error",
            "wall_s", "timeout_s")
    return {k: stats[k] for k in keep if k in stats}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/synth"))
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--impls", nargs="+", default=["pet", *driver.PEERS],
                        choices=["pet", *driver.PEERS])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--epsilons", nargs="+", type=float, default=list(EPSILONS))
    parser.add_argument("--delta", type=float, default=DELTA)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--timeout-s", type=float, default=TIMEOUT_S)
    args = parser.parse_args(argv)
    log = run(args.out, args.datasets, args.impls, methods=args.methods,
              epsilons=args.epsilons, repeats=args.repeats, delta=args.delta,
              timeout_s=args.timeout_s)
    (args.out / "summary.md").write_text(summary(log))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
