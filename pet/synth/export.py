"""A fit's noisy marginals in an open format, for other generators to train from.

The marginals are DP releases (the fit already paid for them), so publishing them costs
no privacy. A folder holds `marginals.parquet`, one row per measured cell: the
measurement's number, one column per attribute giving the cell's level (empty for
attributes outside that measurement's clique), the noisy count and the noise's standard
deviation on it; and `marginals.json`: the format, the fit's method and (ε, δ), the
number of records, the public domain (per column its levels, labelled, and for a merged
column the share of each original level in its merged level, empty when split
uniformly), and per measurement its clique and σ. Levels are the fit's discretized
levels after any merge: a category, `False`/`True`, a numeric bin `[low, high)` (the last
one closed), a whole number, `missing`, or merged levels joined by ` | `.
"""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pet.errors import PetError
from pet.queries.marginals import level_count
from pet.schema import Boolean, Categorical, Integer
from pet.synth.discretize import Discretization
from pet.synth.domain import Domain
from pet.synth.marginal import NoisyMarginal
from pet.synth.synthesizer import Fit

FORMAT = "pet-marginals/1"
"""The format's name and version, the first field of `marginals.json`."""


def export(fit: Fit, folder: str | Path) -> Path:
    """Write the fit's noisy marginals into `folder` (made if missing); returns it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    domain = fit.discretization.domain()
    described = {
        "format": FORMAT, "method": fit.method, "epsilon": fit.epsilon, "delta": fit.delta,
        "records": fit.model.total,
        "columns": [{"name": name, "kind": fit.discretization.schema[name].kind,
                     "levels": level_labels(fit.discretization, name),
                     "shares": list(fit.discretization.shares.get(name, ()))}
                    for name in domain.attributes],
        "measurements": [{"id": i, "clique": list(m.clique), "sigma": m.sigma,
                          "cells": int(m.values.size)}
                         for i, m in enumerate(fit.measurements)],
    }
    (folder / "marginals.json").write_text(json.dumps(described, indent=1) + "\n")
    cells = [_cells(domain, i, m) for i, m in enumerate(fit.measurements)]
    pd.concat(cells, ignore_index=True).to_parquet(folder / "marginals.parquet", index=False)
    return folder


def read(folder: str | Path) -> tuple[Domain, list[NoisyMarginal], float]:
    """The domain, the noisy marginals and the number of records of an exported folder,
    as pet's estimator (`pet.synth.estimate`) takes them."""
    folder = Path(folder)
    try:
        described = json.loads((folder / "marginals.json").read_text())
        cells = pd.read_parquet(folder / "marginals.parquet")
    except FileNotFoundError as missing:
        raise PetError(f"{folder} holds no exported marginals ({missing.filename} is "
                       "missing); write them with `pet synth export`") from None
    if described.get("format") != FORMAT:
        raise PetError(f"{folder}: format {described.get('format')!r}, not {FORMAT!r}")
    domain = Domain(tuple(c["name"] for c in described["columns"]),
                    tuple(len(c["levels"]) for c in described["columns"]))
    marginals = [_marginal(domain, m, cells[cells["measurement"] == m["id"]])
                 for m in described["measurements"]]
    return domain, marginals, float(described["records"])


def level_labels(discretization: Discretization, name: str) -> list[str]:
    """A column's discretized levels as text, merged levels joined by ` | `."""
    column = discretization.schema[name]
    edges = discretization.edges.get(name)
    if isinstance(column, Categorical):
        labels = [str(c) for c in column.categories]
    elif isinstance(column, Boolean):
        labels = ["False", "True"]
    else:
        labels = _bin_labels(np.asarray(edges), isinstance(column, Integer))
    if column.nullable:
        labels.append("missing")
    if len(labels) != level_count(column, edges):
        raise PetError(f"column {name!r}: {len(labels)} labels for "
                       f"{level_count(column, edges)} levels")
    mapping = discretization.merged.get(name)
    if mapping is None:
        return labels
    return [" | ".join(label for label, to in zip(labels, mapping, strict=True) if to == level)
            for level in range(max(mapping) + 1)]


def _bin_labels(edges: np.ndarray, whole: bool) -> list[str]:
    """`[low, high)` per bin, the last closed; a whole number where a bin holds one."""
    if whole and np.all(np.diff(edges) == 1):
        return [f"{low:g}" for low in edges[:-1]]
    last = len(edges) - 2
    return [f"[{low:g}, {high:g}{']' if i == last else ')'}"
            for i, (low, high) in enumerate(pairwise(edges))]


def _cells(domain: Domain, number: int, measured: NoisyMarginal) -> pd.DataFrame:
    """One measurement's cells, in C order over its clique, as rows of the long table."""
    shape = domain.shape(measured.clique)
    levels = np.unravel_index(np.arange(measured.values.size), shape)
    columns: dict[str, Any] = {"measurement": np.full(measured.values.size, number)}
    for name in domain.attributes:
        inside = name in measured.clique
        columns[name] = pd.array(levels[measured.clique.index(name)] if inside
                                 else [None] * measured.values.size, dtype="Int64")
    columns |= {"count": measured.values, "sd": measured.sd}
    return pd.DataFrame(columns)


def _marginal(domain: Domain, described: dict[str, Any], cells: pd.DataFrame) -> NoisyMarginal:
    """One measurement back from its rows: counts in C order over the clique."""
    clique = tuple(described["clique"])
    shape = domain.shape(clique)
    index = np.ravel_multi_index(tuple(cells[name].to_numpy(dtype=np.int64)
                                       for name in clique), shape)
    values = np.zeros(int(np.prod(shape)))
    values[index] = cells["count"].to_numpy()
    sd = np.ones(values.size)
    sd[index] = cells["sd"].to_numpy()
    sigma = float(described["sigma"])
    scale = None if sigma == 0 or np.allclose(sd, sigma, rtol=1e-12, atol=0) else sd / sigma
    return NoisyMarginal(clique, values, sigma, scale)
