"""Fidelity: how closely the synthetic table reproduces the real one's distributions.

Marginals are compared on the schema's public bins (the synthesizers' discretization):
the total variation distance of every 1- and 2-way marginal and of a fixed sample of
3-way ones. Each column is also compared on its own values (Wasserstein-1 distance as a
share of the public range, and the Kolmogorov–Smirnov statistic, by scipy), and the
correlation matrices of the two tables (on the public-scale features) are set side by
side.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd
from scipy import stats

from pet.evaluate.features import Features
from pet.schema import Boolean, Categorical, Schema
from pet.synth.discretize import DEFAULT_BINS, Discretization

TRIPLES = 50
"""3-way marginals in the fixed sample (all of them when the schema has fewer)."""


@dataclass(frozen=True)
class Fidelity:
    """Marginal distances by order, per-column distances, and both correlation matrices."""

    tvd: dict[int, float]
    """Mean TVD of the k-way marginals, for k = 1, 2, 3."""
    worst: dict[int, tuple[tuple[str, ...], float]]
    """The k-way marginal farthest apart, and its TVD."""
    columns: pd.DataFrame
    """Per column: its kind, TVD on its bins, Wasserstein-1 distance as a share of its
    range, KS statistic (numeric columns), and its share of missing values in each table."""
    correlation_real: pd.DataFrame
    correlation_synthetic: pd.DataFrame

    @property
    def correlation_gap(self) -> pd.DataFrame:
        """|real − synthetic| correlation, feature by feature (NaN where one is constant)."""
        return (self.correlation_real - self.correlation_synthetic).abs()

    def summary(self) -> dict[str, float]:
        """The headline numbers."""
        gap = self.correlation_gap.to_numpy()
        off = gap[~np.eye(len(gap), dtype=bool)]
        return {"tvd1": self.tvd[1], "tvd2": self.tvd[2], "tvd3": self.tvd[3],
                "correlation_gap_mean": float(np.nanmean(off)) if off.size else 0.0,
                "correlation_gap_max": float(np.nanmax(off)) if off.size else 0.0}


def fidelity(real: pd.DataFrame, synthetic: pd.DataFrame, schema: Schema, *,
             bins: int = DEFAULT_BINS, triples: int = TRIPLES, seed: int = 0) -> Fidelity:
    """Compare a synthetic table with the real one (both validated against the schema)."""
    discretization = Discretization.of(schema, bins=bins)
    sizes = discretization.domain().sizes
    levels = discretization.encode(real), discretization.encode(synthetic)
    index = range(len(schema.names))
    cliques = {1: [(i,) for i in index], 2: list(combinations(index, 2)),
               3: list(combinations(index, 3))}
    if len(cliques[3]) > triples:
        chosen = np.random.default_rng(seed).choice(len(cliques[3]), triples, replace=False)
        cliques[3] = [cliques[3][i] for i in sorted(chosen)]
    tvd, worst = {}, {}
    for k, group in cliques.items():
        distances = [marginal_tvd(*levels, c, sizes) for c in group]
        tvd[k] = float(np.mean(distances)) if distances else 0.0
        if distances:
            at = int(np.argmax(distances))
            worst[k] = tuple(schema.names[i] for i in group[at]), float(distances[at])
    one_way = {schema.names[c[0]]: marginal_tvd(*levels, c, sizes) for c in cliques[1]}
    features = Features(schema)
    names = features.names()
    return Fidelity(tvd, worst, _columns(real, synthetic, schema, one_way),
                    _correlation(features.matrix(real), names),
                    _correlation(features.matrix(synthetic), names))


def marginal_tvd(real: np.ndarray, synthetic: np.ndarray, clique: tuple[int, ...],
                 sizes: tuple[int, ...]) -> float:
    """Total variation distance between the two tables' marginals over a clique of
    columns (rows × columns of levels)."""
    shape = tuple(sizes[i] for i in clique)
    p, q = (np.bincount(np.ravel_multi_index(rows[:, clique].T, shape),
                        minlength=int(np.prod(shape))) / max(len(rows), 1)
            for rows in (real, synthetic))
    return float(0.5 * np.abs(p - q).sum())


def _columns(real: pd.DataFrame, synthetic: pd.DataFrame, schema: Schema,
             one_way: dict[str, float]) -> pd.DataFrame:
    rows = []
    for column in schema.columns:
        a = schema.encode(real, columns=[column.name])[column.name]
        b = schema.encode(synthetic, columns=[column.name])[column.name]
        row = {"column": column.name, "kind": column.kind, "tvd": one_way[column.name],
               "wasserstein": np.nan, "ks": np.nan,
               "missing_real": float(np.isnan(a).mean()),
               "missing_synthetic": float(np.isnan(b).mean())}
        a, b = a[~np.isnan(a)], b[~np.isnan(b)]
        if not isinstance(column, Categorical | Boolean) and a.size and b.size:
            lower, upper = column.bounds()
            row["wasserstein"] = float(stats.wasserstein_distance(a, b) / (upper - lower))
            row["ks"] = float(stats.ks_2samp(a, b).statistic)
        rows.append(row)
    return pd.DataFrame(rows).set_index("column")


def _correlation(matrix: np.ndarray, names: list[str]) -> pd.DataFrame:
    """Pearson correlations of the features (NaN for a constant one), by pandas."""
    return pd.DataFrame(matrix, columns=names).corr()
