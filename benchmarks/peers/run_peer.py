"""Fit one peer's MST or AIM synthesizer on integer codes, sample from it, time it.

Run by the peer's own interpreter (``benchmarks/.peers/<peer>/bin/python``), never by
pet's: it imports the peer's packages. ``driver.run`` is the way pet's benchmark calls it.

    run_peer.py --peer opendp|smartnoise --method mst|aim --data codes.csv
                --domain domain.json --epsilon E --delta D --seed S --rows N
                --out synthetic.csv --stats stats.json [--resample]
    run_peer.py --peer opendp|smartnoise --versions

``codes.csv`` holds one integer column per attribute (codes 0..size-1); ``domain.json``
maps attribute name → size, in column order. The output CSV has the same columns.
With ``--resample`` the same fitted model is sampled a second time with Private-PGM's
``method="sample"`` (i.i.d. sampling) instead of the default ``"round"`` (randomized
rounding) and written beside ``--out`` as ``<out stem>-resampled.csv``.

Privacy: both peers get (ε, δ) and turn it into a zCDP budget ρ with OpenDP's own
zCDP → (ε, δ) conversion (smartnoise's ``cdp_rho`` does exactly this internally; for
OpenDP the same conversion is done here, see ``rho_for``), under add/remove-one-row
neighbouring. The domain (attribute sizes) is public; neither peer spends budget on it.

Seeding: ``--seed`` seeds numpy's global generator and ``random``, which drive
Private-PGM's sampling and smartnoise's exponential mechanism. The measurement noise
of both peers (and OpenDP's selection noise) comes from OpenDP's own samplers, which
cannot be seeded, so fits are not bit-for-bit repeatable.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import os
import platform
import random
import resource
import sys
import time
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any

# The peers use JAX; keep it on the CPU and quiet about absent accelerators.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np

# Smaller ρ than the target, tried in order when OpenDP 0.16's MST/AIM trip over
# their own floating-point budget check ("insufficient budget for query:
# 0.0012177985179769172 > 0.001217798517976917", opendp/opendp#2789). Whether a ρ
# passes is a matter of rounding in the last bits, so the steps are tiny (at most a
# relative 1e-8: no visible change in noise); a smaller ρ only adds noise, so every
# fallback still satisfies the requested (ε, δ).
RHO_BACKOFF = (1.0, *(1 - j * 1e-10 for j in range(1, 100)))

# ρ factors found to pass OpenDP's MST budget check, so that repeated runs with the
# same ε, δ and columns skip the search. The check depends only on OpenDP's version,
# the algorithm, the columns and ρ (not on the data), so an entry stays valid.
RHO_CACHE = Path(__file__).resolve().parent.parent / ".peers" / "cache" / "opendp-rho.json"


def _load_rho_cache() -> dict[str, float]:
    try:
        return json.loads(RHO_CACHE.read_text())
    except (OSError, ValueError):
        return {}


def _store_rho_cache(key: str, factor: float | None) -> None:
    cache = _load_rho_cache()
    if factor is None:
        cache.pop(key, None)
    else:
        cache[key] = factor
    RHO_CACHE.parent.mkdir(parents=True, exist_ok=True)
    tmp = RHO_CACHE.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(cache, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, RHO_CACHE)


PEER_DISTS = {
    "opendp": ["opendp", "mbi", "jax", "jaxlib", "numpy", "polars", "pandas"],
    "mbi": ["mbi", "jax", "jaxlib", "numpy"],
    "smartnoise": [
        "smartnoise-synth",
        "smartnoise-sql",
        "opendp",
        "mbi",
        "jax",
        "jaxlib",
        "numpy",
        "pandas",
        "torch",
    ],
}


def peak_rss_mb() -> float:
    """High-water mark of this process's resident memory (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def versions(peer: str) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in PEER_DISTS[peer]:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def read_inputs(data: Path, domain: Path) -> tuple[list[str], list[int], np.ndarray]:
    sizes_by_name = json.loads(domain.read_text())
    names = list(sizes_by_name)
    sizes = [int(sizes_by_name[n]) for n in names]
    if not names or any(k < 1 for k in sizes):
        raise ValueError("domain.json must map each attribute to a size >= 1")
    with data.open(newline="") as f:
        header = next(csv.reader(f))
    if header != names:
        raise ValueError(f"CSV header {header} does not match domain.json order {names}")
    codes = np.loadtxt(data, delimiter=",", skiprows=1, dtype=np.int64, ndmin=2)
    if codes.shape[1] != len(names):
        raise ValueError(f"expected {len(names)} columns, got {codes.shape[1]}")
    for j, (name, k) in enumerate(zip(names, sizes, strict=True)):
        col = codes[:, j]
        if col.size and (col.min() < 0 or col.max() >= k):
            raise ValueError(f"column {name}: codes must lie in 0..{k - 1}")
    return names, sizes, codes


def write_codes(path: Path, names: list[str], codes: np.ndarray) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(names)
        w.writerows(codes.tolist())


def check_codes(names: list[str], sizes: list[int], codes: np.ndarray, rows: int) -> None:
    if codes.shape != (rows, len(names)):
        raise RuntimeError(f"peer returned shape {codes.shape}, expected {(rows, len(names))}")
    for j, (name, k) in enumerate(zip(names, sizes, strict=True)):
        col = codes[:, j]
        if col.size and (col.min() < 0 or col.max() >= k):
            raise RuntimeError(f"peer returned codes outside 0..{k - 1} in column {name}")


# --------------------------------------------------------------------------- OpenDP


def rho_for(dp: Any, epsilon: float, delta: float) -> float:
    """The ρ whose OpenDP zCDP → (ε, δ) conversion, at this δ, gives at most ε.

    Found as the ρ of the Gaussian mechanism (sensitivity 1) whose scale OpenDP's
    binary search picks for (ε, δ); the conversion depends on ρ only. Same method as
    smartnoise-synth's ``snsynth.utils.cdp_rho``.
    """
    space = dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float)

    def approx_gaussian(scale: float) -> Any:
        zcdp = dp.m.make_gaussian(*space, scale)
        return dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(zcdp), delta=delta)

    scale = dp.binary_search_param(approx_gaussian, d_in=1.0, d_out=(epsilon, delta))
    return float(dp.m.make_gaussian(*space, scale).map(1.0))


def _is_budget_rounding(exc: BaseException) -> bool:
    return "insufficient budget for query" in str(exc)


def fit_opendp(args: argparse.Namespace, names, sizes, codes, stats: dict) -> dict:
    import jax
    import mbi
    import opendp.prelude as dp
    import polars as pl

    dp.enable_features("contrib")
    stats["rss_mb_after_import"] = peak_rss_mb()

    class Estimator:
        """OpenDP's default estimator, dp.mbi.mirror_descent; while ``calibrating``, a
        one-iteration mirror descent (the estimator plays no part in the accounting)."""

        calibrating = False

        def __call__(self, domain, loss_fn, *, potentials=None):
            if self.calibrating:
                return mbi.estimation.mirror_descent(
                    domain, loss_fn, potentials=potentials, iters=1
                )
            return dp.mbi.mirror_descent(domain, loss_fn, potentials=potentials)

    estimator = Estimator()
    algorithm = {"mst": dp.mbi.MST, "aim": dp.mbi.AIM}[args.method](estimator=estimator)
    algo_src = {"mst": "dp.mbi.MST()", "aim": "dp.mbi.AIM()"}[args.method]

    # Every attribute's domain is public. Integer cuts 0..k-2 make exactly k left-open
    # bins (-inf,0], (0,1], ..., (k-2, inf) and OpenDP maps bin i back to code i;
    # `keys` would add a null category to every attribute (k+1 cells). A size-1
    # attribute has no cuts and is given as keys [0].
    cuts = {n: list(range(k - 1)) for n, k in zip(names, sizes, strict=True) if k >= 2}
    keys = {n: [0] for n, k in zip(names, sizes, strict=True) if k == 1}
    schema = {n: pl.Int64 for n in names}
    real = pl.DataFrame({n: codes[:, j] for j, n in enumerate(names)}, schema=schema).lazy()
    # Public stand-in with the same schema, for MST's calibration below.
    rng = np.random.default_rng(args.seed)
    dummy = pl.DataFrame(
        {n: rng.integers(0, k, size=64) for n, k in zip(names, sizes, strict=True)},
        schema=schema,
    ).lazy()

    rho_target = rho_for(dp, args.epsilon, args.delta)

    # OpenDP 0.16's MST/AIM can fail their own floating-point budget check
    # (opendp/opendp#2789); then a ρ smaller by a relative 1e-13..3e-8 is tried. MST's
    # accounting does not depend on the data, so for MST each ρ is first tried on the
    # public stand-in (same measurement, one-iteration estimator) and the real data are
    # only touched with a ρ that passes. AIM's path depends on the data: it is retried.
    backoff: dict[str, Any] = {"rho_target": rho_target, "attempts": []}
    cache_key = json.dumps(
        [metadata.version("opendp"), args.method, names, sizes, rho_target],
        separators=(",", ":"),
    )
    cached = _load_rho_cache().get(cache_key) if args.method == "mst" else None
    factors = RHO_BACKOFF if cached is None else (cached, *(f for f in RHO_BACKOFF if f < cached))
    table = None
    t_all = time.perf_counter()
    for factor in factors:
        rho = rho_target * factor
        attempt: dict[str, Any] = {"factor": factor}
        backoff["attempts"].append(attempt)
        t0 = time.perf_counter()
        context = dp.Context.compositor(
            data=real,
            privacy_unit=dp.unit_of(contributions=1),
            privacy_loss=dp.loss_of(rho=rho),
        )
        query = context.query(rho=rho).contingency_table(
            keys=keys or None, cuts=cuts, algorithm=algorithm
        )
        attempt["build_s"] = time.perf_counter() - t0
        if args.method == "mst" and factor == cached:
            attempt["calibration"] = "cached"
        elif args.method == "mst":
            t0 = time.perf_counter()
            estimator.calibrating = True
            try:
                query.resolve()(dummy)
            except Exception as exc:
                if not _is_budget_rounding(exc):
                    raise
                attempt.update(calibration="failed", calibration_s=time.perf_counter() - t0)
                continue
            finally:
                estimator.calibrating = False
            attempt.update(calibration="ok", calibration_s=time.perf_counter() - t0)
        # Drop what the calibration (or a failed attempt) compiled, so that the fit on
        # the real data pays JAX's compilation like a fit in a fresh process.
        jax.clear_caches()
        t0 = time.perf_counter()
        try:
            table = query.release()
        except Exception as exc:
            if not _is_budget_rounding(exc):
                raise
            attempt.update(release="failed", release_s=time.perf_counter() - t0)
            if args.method == "mst" and factor == cached:
                _store_rho_cache(cache_key, None)
            continue
        attempt.update(release="ok", release_s=time.perf_counter() - t0)
        backoff["rho_used"] = rho
        if args.method == "mst" and factor != cached:
            _store_rho_cache(cache_key, factor)
        # A plain fit: building the measurement (OpenDP's parameter searches) + release.
        stats["fit_s"] = attempt["build_s"] + attempt["release_s"]
        break
    backoff["all_attempts_s"] = time.perf_counter() - t_all
    stats["rss_mb_after_fit"] = peak_rss_mb()
    stats["opendp_budget_backoff"] = backoff
    if table is None:
        raise RuntimeError("OpenDP's budget check failed at every ρ tried (opendp#2789)")
    rho = backoff["rho_used"]

    stats["privacy"] = {
        "epsilon": args.epsilon,
        "delta": args.delta,
        "rho": rho,
        "neighbouring": "add/remove one row",
    }
    stats["model_cliques"] = [list(cl) for cl in table.model.cliques]
    stats["measured_cliques"] = [list(m.clique) for m in table.marginals.flatten()]
    cuts_src = "{" + ", ".join(f"{n!r}: list(range({len(c) + 1} - 1))" for n, c in cuts.items())
    cuts_src += "}"
    stats["call"] = (
        "import opendp.prelude as dp; dp.enable_features('contrib'); "
        f"rho = {rho!r}  # rho_for(eps={args.epsilon}, delta={args.delta}) * "
        f"{rho / rho_target!r}; "
        "dp.Context.compositor(data=<codes as polars LazyFrame, Int64 columns>, "
        "privacy_unit=dp.unit_of(contributions=1), privacy_loss=dp.loss_of(rho=rho))"
        f".query(rho=rho).contingency_table(keys={keys or None!r}, cuts={cuts_src}, "
        f"algorithm={algo_src}).release()"
        f".synthesize(rows={args.rows}, method='round')"
    )
    stats["call_note"] = (
        "the algorithm's estimator is a wrapper that calls dp.mbi.mirror_descent (OpenDP's "
        "default) in the fit; it runs one iteration only while ρ is checked on public dummy "
        "codes (MST, see opendp_budget_backoff)"
    )
    stats["resample_call"] = f"table.synthesize(rows={args.rows}, method='sample')"

    def draw(method: str) -> np.ndarray:
        frame = table.synthesize(rows=args.rows, method=method)
        cols = []
        for n in names:
            series = frame[n]
            if n in keys:  # only possible value 0; OpenDP's extra null cell → 0
                series = series.fill_null(0)
            if series.null_count():
                raise RuntimeError(f"OpenDP synthesized nulls in column {n}")
            cols.append(series.cast(pl.Int64).to_numpy())
        return np.stack(cols, axis=1)

    return {"draw": draw}


# ------------------------------------------------------------------------ smartnoise


def fit_smartnoise(args: argparse.Namespace, names, sizes, codes, stats: dict) -> dict:
    import pandas as pd
    from snsynth import Synthesizer
    from snsynth.transform import TableTransformer
    from snsynth.transform.label import LabelTransformer
    from snsynth.utils import cdp_rho

    importlib.import_module(f"snsynth.{args.method}")  # what Synthesizer.create imports
    stats["rss_mb_after_import"] = peak_rss_mb()
    frame = pd.DataFrame(codes, columns=names)

    # No inferred preprocessing: one LabelTransformer per column, fitted on the public
    # code list 0..k-1 (not on the data), so codes map to themselves, every code keeps
    # its cell even if absent from the data, and the transformer spends no budget.
    transformers = []
    for k in sizes:
        t = LabelTransformer(nullable=False)
        t.fit(list(range(k)))
        transformers.append(t)
    transformer = TableTransformer(transformers)

    synth = Synthesizer.create(args.method, epsilon=float(args.epsilon), delta=float(args.delta))
    t0 = time.perf_counter()
    synth.fit(frame, transformer=transformer, preprocessor_eps=0.0)
    stats["fit_s"] = time.perf_counter() - t0
    stats["rss_mb_after_fit"] = peak_rss_mb()
    spent, _ = transformer.odometer.spent
    if spent != 0.0 or synth.epsilon != float(args.epsilon):
        raise RuntimeError(f"smartnoise spent ε={spent} on preprocessing")

    model = synth.synthesizer  # mbi.MarkovRandomField, fitted by MST()/AIM()
    colnames = [f"col{i}" for i in range(len(names))]  # snsynth's internal names
    stats["privacy"] = {
        "epsilon": args.epsilon,
        "delta": args.delta,
        "rho": float(cdp_rho(float(args.epsilon), float(args.delta))),  # as MST()/AIM() do
        "neighbouring": "add/remove one row",
    }
    stats["model_cliques"] = [[names[colnames.index(c)] for c in cl] for cl in model.cliques]
    stats["model_domain"] = dict(model.domain.config)  # MST: after its domain compression

    # --resample: the same fitted MarkovRandomField, sampled with method="sample". These
    # are the steps of MST/AIMSynthesizer.sample() with only the method changed: MST
    # first undoes its domain compression; the columns are then taken by name.
    def resample_codes() -> np.ndarray:
        dataset = model.synthetic_data(rows=args.rows, method="sample")
        if args.method == "mst":
            dataset = synth.undo_compress_fn(dataset)
        df = dataset.df[colnames]
        decoded = synth._transformer.inverse_transform([tuple(t[1:]) for t in df.itertuples()])
        return decoded[names].to_numpy(dtype=np.int64)

    def draw(method: str) -> np.ndarray:
        if method == "round":
            return synth.sample(args.rows)[names].to_numpy(dtype=np.int64)
        return resample_codes()

    transformer_src = (
        "TableTransformer(ts), ts[j] = LabelTransformer(nullable=False) after "
        f"ts[j].fit(list(range(size_j))), sizes {sizes}"
    )
    stats["call"] = (
        f"synth = snsynth.Synthesizer.create({args.method!r}, epsilon={float(args.epsilon)!r}, "
        f"delta={float(args.delta)!r}); "
        f"synth.fit(<codes as pandas DataFrame>, transformer={transformer_src}, "
        f"preprocessor_eps=0.0); synth.sample({args.rows})"
    )
    stats["resample_call"] = (
        f"synth.synthesizer.synthetic_data(rows={args.rows}, method='sample')"
        + (" → synth.undo_compress_fn" if args.method == "mst" else "")
        + " → columns by name → synth._transformer.inverse_transform"
    )
    return {"draw": draw}


def fit_mbi(args: argparse.Namespace, names, sizes, codes, stats: dict) -> dict:
    """Private-PGM's MST or AIM on mbi 2.0 (`private_pgm.py`), at the given ρ."""
    if args.rho is None:
        raise ValueError("the mbi peer needs --rho (OpenDP's conversion of ε, δ)")
    import private_pgm

    rng = np.random.default_rng(args.seed)
    data = private_pgm.Data(codes, names, sizes)
    stats["rss_mb_after_import"] = peak_rss_mb()
    t0 = time.perf_counter()
    if args.method == "mst":
        model, maps = private_pgm.mst(data, args.rho, rng)
    else:
        model, maps = private_pgm.aim(data, args.rho, rng), {}
    stats["fit_s"] = time.perf_counter() - t0
    stats["rss_mb_after_fit"] = peak_rss_mb()
    stats["privacy"] = {"epsilon": args.epsilon, "delta": args.delta, "rho": args.rho,
                        "neighbours": "add/remove one row"}
    stats["model_cliques"] = [list(c) for c in model.cliques]
    stats["call"] = f"private_pgm.{args.method}(<codes>, rho={args.rho!r})"

    def draw(method: str) -> np.ndarray:
        return private_pgm.sample(model, names, args.rows, method, maps, rng)

    return {"draw": draw}


# ------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--peer", required=True, choices=sorted(PEER_DISTS))
    p.add_argument("--versions", action="store_true", help="print the peer's versions and exit")
    p.add_argument("--method", choices=["mst", "aim"])
    p.add_argument("--data", type=Path)
    p.add_argument("--domain", type=Path)
    p.add_argument("--epsilon", type=float)
    p.add_argument("--delta", type=float)
    p.add_argument("--rho", type=float, help="the zCDP budget (ε, δ) converts to; the mbi "
                   "peer needs it, having no OpenDP to convert with")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rows", type=int)
    p.add_argument("--out", type=Path)
    p.add_argument("--stats", type=Path)
    p.add_argument("--resample", action="store_true")
    args = p.parse_args(argv)

    if args.versions:
        print(json.dumps(versions(args.peer)))
        return 0
    missing = [
        f"--{k}"
        for k in (
            "method",
            "data",
            "domain",
            "epsilon",
            "delta",
            "rows",
            "out",
            "stats",
        )
        if getattr(args, k) is None
    ]
    if missing:
        p.error("missing " + ", ".join(missing))

    stats: dict[str, Any] = {
        "status": "error",
        "peer": args.peer,
        "method": args.method,
        "versions": versions(args.peer),
        "epsilon": args.epsilon,
        "delta": args.delta,
        "seed": args.seed,
        "rows_out": args.rows,
        "argv": sys.argv,
    }
    try:
        random.seed(args.seed)
        np.random.seed(args.seed)
        names, sizes, codes = read_inputs(args.data, args.domain)
        stats["rows_in"] = int(codes.shape[0])
        stats["domain"] = dict(zip(names, sizes, strict=True))
        fit = {"opendp": fit_opendp, "smartnoise": fit_smartnoise, "mbi": fit_mbi}[args.peer]
        fitted = fit(args, names, sizes, codes, stats)

        t0 = time.perf_counter()
        synthetic = fitted["draw"]("round")
        stats["sample_s"] = time.perf_counter() - t0
        check_codes(names, sizes, synthetic, args.rows)
        write_codes(args.out, names, synthetic)
        stats["out"] = str(args.out)

        if args.resample:
            resampled_path = args.out.with_name(args.out.stem + "-resampled" + args.out.suffix)
            t0 = time.perf_counter()
            resampled = fitted["draw"]("sample")
            stats["resample_s"] = time.perf_counter() - t0
            check_codes(names, sizes, resampled, args.rows)
            write_codes(resampled_path, names, resampled)
            stats["out_resampled"] = str(resampled_path)

        stats["status"] = "ok"
        return_code = 0
    except Exception as exc:
        stats["error"] = f"{type(exc).__name__}: {exc}"
        stats["traceback"] = traceback.format_exc()[-4000:]
        traceback.print_exc()
        return_code = 1
    stats["peak_rss_mb"] = peak_rss_mb()
    args.stats.write_text(json.dumps(stats, indent=2, default=str) + "\n")
    return return_code


if __name__ == "__main__":
    sys.exit(main())
