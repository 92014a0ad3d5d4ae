"""Private-PGM's MST and AIM mechanisms on its current release (`mbi` 2.0, JAX on the CPU).

`mbi` 2.0 ships the estimator, not the mechanisms: Private-PGM keeps MST and AIM as
reference scripts beside the package. These are the same mechanisms written from the
papers (MST: McKenna, Miklau & Sheldon 2021; AIM: McKenna et al., VLDB 2022) with the
reference scripts' settings, on `mbi`'s `MirrorDescent` estimator:

- MST: ρ in thirds (every 1-way marginal; d − 1 exponential-mechanism picks of the
  pair the 1-way model gets worst in L1, sensitivity 1, ε = √(8·(ρ/3)/(d − 1)) each;
  the picked pairs), 1-way levels under 3σ merged into one and sampled back uniformly,
  2 500 estimator iterations for selection and 10 000 for the final model.
- AIM: 16·d rounds' worth of budget, 90% to measurement and 10% to selection, the 1-way
  marginals first, then the downward closure of all 2-way marginals scored by weighted
  L1 error less √(2/π)·σ·cells, candidates kept within 80 MB of model, σ halved when a
  measurement barely moved the model, 1 000 warm-started iterations a round.

Run by the `mbi` peer's interpreter only. Noise is numpy's, as in the reference scripts:
this is a benchmark peer, never a release.
"""

from __future__ import annotations

import math
from itertools import combinations
from typing import Any

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

from mbi import Domain, LinearMeasurement, WeightedQuery  # noqa: E402
from mbi.estimation import MirrorDescent  # noqa: E402
from mbi.junction_tree import hypothetical_model_size  # noqa: E402

Clique = tuple[str, ...]


class Data:
    """Integer codes (rows × attributes) on a domain, with marginal counts."""

    def __init__(self, codes: np.ndarray, names: list[str], sizes: list[int]) -> None:
        self.codes, self.names, self.sizes = codes, list(names), list(sizes)
        self.domain = Domain(self.names, self.sizes)

    def count(self, clique: Clique) -> np.ndarray:
        """The clique's marginal counts, flat in C order."""
        index = [self.names.index(a) for a in clique]
        shape = tuple(self.sizes[i] for i in index)
        flat = np.ravel_multi_index(self.codes[:, index].T, shape)
        return np.bincount(flat, minlength=int(np.prod(shape))).astype(np.float64)


def exponential(scores: np.ndarray, epsilon: float, sensitivity: float,
                rng: np.random.Generator) -> int:
    """The exponential mechanism for scores that are not monotonic (factor ε / 2Δ)."""
    logits = 0.5 * epsilon / sensitivity * (scores - scores.max())
    weights = np.exp(logits)
    return int(rng.choice(scores.size, p=weights / weights.sum()))


def mst(data: Data, rho: float, rng: np.random.Generator) -> tuple[Any, dict[str, np.ndarray]]:
    """MST's model on the compressed domain and each compressed column's map."""
    d = len(data.names)
    sigma = math.sqrt(3 / (2 * rho))
    one_sd = sigma * math.sqrt(d)
    noisy = {a: data.count((a,)) + rng.normal(0, one_sd, data.sizes[j])
             for j, a in enumerate(data.names)}
    maps, log1 = {}, []
    codes, sizes = data.codes.copy(), list(data.sizes)
    for j, a in enumerate(data.names):
        kept = noisy[a] >= 3 * one_sd
        if kept.all():
            log1.append(LinearMeasurement(noisy[a], (a,), one_sd))
            continue
        mapping = np.where(kept, np.cumsum(kept) - 1, kept.sum())
        maps[a] = mapping
        codes[:, j], sizes[j] = mapping[data.codes[:, j]], int(kept.sum()) + 1
        weight = np.ones(sizes[j])
        weight[-1] = 1 / math.sqrt((~kept).sum())
        values = np.append(noisy[a][kept], noisy[a][~kept].sum()) * weight
        log1.append(LinearMeasurement(values, (a,), one_sd, query=WeightedQuery(weight)))
    small = Data(codes, data.names, sizes)
    first = MirrorDescent().estimate(small.domain, log1, iters=2500)
    pairs = list(combinations(small.names, 2))
    error = {p: np.abs(small.count(p) - np.ravel(first.project(p).datavector())).sum()
             for p in pairs}
    epsilon = math.sqrt(8 * (rho / 3) / (d - 1))
    component = {a: a for a in small.names}
    tree: list[Clique] = []
    for _ in range(d - 1):
        joining = [p for p in pairs if component[p[0]] != component[p[1]]]
        pick = joining[exponential(np.array([error[p] for p in joining]), epsilon, 1.0, rng)]
        tree.append(pick)
        gone, kept_as = component[pick[1]], component[pick[0]]
        component = {a: kept_as if c == gone else c for a, c in component.items()}
    two_sd = sigma * math.sqrt(d - 1)
    log2 = [LinearMeasurement(small.count(p) + rng.normal(0, two_sd, small.domain.size(p)),
                              p, two_sd) for p in tree]
    return MirrorDescent().estimate(small.domain, log1 + log2, iters=10_000), maps


def aim(data: Data, rho: float, rng: np.random.Generator, *, max_model_mb: float = 80.0,
        iterations: int = 1000) -> Any:
    """AIM's model on the workload of every 2-way marginal."""
    d = len(data.names)
    workload = list(combinations(data.names, 2))
    closure = sorted({s for w in workload for k in (1, 2) for s in combinations(w, k)},
                     key=len)
    weight = {c: float(sum(len(set(c) & set(w)) for w in workload)) for c in closure}
    rounds = 16 * d
    sigma = math.sqrt(rounds / (2 * 0.9 * rho))
    epsilon = math.sqrt(8 * 0.1 * rho / rounds)
    measured = [LinearMeasurement(data.count((a,)) + rng.normal(0, sigma, data.sizes[j]),
                                  (a,), sigma) for j, a in enumerate(data.names)]
    used = d / (2 * sigma**2)
    model = MirrorDescent().estimate(data.domain, measured, iters=iterations)
    done = False
    while not done:
        if rho - used < 2 * (1 / (2 * sigma**2) + epsilon**2 / 8):
            left = rho - used
            sigma, epsilon = math.sqrt(1 / (2 * 0.9 * left)), math.sqrt(8 * 0.1 * left)
            done = True
        used += 1 / (2 * sigma**2) + epsilon**2 / 8
        limit = max_model_mb * used / rho
        cliques = [m.clique for m in measured]
        free = {s for c in cliques for k in range(1, len(c) + 1) for s in combinations(c, k)}
        allowed = [c for c in closure
                   if c in free or hypothetical_model_size(data.domain, [*cliques, c]) <= limit]
        scores = np.array([weight[c] * (np.abs(data.count(c) - np.ravel(
            model.project(c).datavector())).sum() - math.sqrt(2 / math.pi) * sigma
            * data.domain.size(c)) for c in allowed])
        chosen = allowed[exponential(scores, epsilon, max(weight[c] for c in allowed), rng)]
        before = np.ravel(model.project(chosen).datavector())
        measured.append(LinearMeasurement(
            data.count(chosen) + rng.normal(0, sigma, data.domain.size(chosen)), chosen, sigma))
        model = MirrorDescent().estimate(data.domain, measured, iters=iterations,
                                         warm_start=model)
        moved = np.abs(np.ravel(model.project(chosen).datavector()) - before).sum()
        if moved <= math.sqrt(2 / math.pi) * sigma * data.domain.size(chosen):
            sigma, epsilon = sigma / 2, epsilon * 2
    return model


def sample(model: Any, names: list[str], rows: int, method: str,
           maps: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Rows of codes from the model (`method` "round" or "sample"), merged levels drawn
    back uniformly among the levels they hold."""
    synthetic = model.synthetic_data(rows, method=method)
    codes = np.column_stack([np.asarray(synthetic.data[a]) for a in names]).astype(np.int64)
    for a, mapping in maps.items():
        j = names.index(a)
        column = codes[:, j].copy()
        for level in range(int(mapping.max()) + 1):
            members, rows_at = np.flatnonzero(mapping == level), codes[:, j] == level
            column[rows_at] = rng.choice(members, int(rows_at.sum()))
        codes[:, j] = column
    return codes
