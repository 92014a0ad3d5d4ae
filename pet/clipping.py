"""Clipping bounds a query carries: tighter public bounds for some of its numeric columns.

A schema's bounds are public and wide (age 18–100), and they fix how much one row can
move a sum: DP noise is scaled to them. A query may name tighter bounds for the columns
it reads; every value outside is clamped into them before any sum is taken, so one
row's influence — and the noise that hides it — shrinks to the tighter range. Clamping
biases the answer when many values fall outside, so the result counts the clamped rows
(under DP, a noisy count like any other). The bounds are public: the analyst chooses
them from outside knowledge or from a DP release of the column's quantiles
(`private_bounds`), paid from the query's own budget (`split_budget`).

The query then works on the schema with the narrowed bounds (`narrowed`): its layout,
sensitivity, scaling and answer all follow them; the filter still sees raw values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from pet.errors import QueryError
from pet.mechanisms import epsilon_of, rho_of
from pet.schema import Column, Continuous, Schema, TimeToEvent

if TYPE_CHECKING:  # a study runs queries, whose base imports this module
    from pet.study import Study

Clip = Mapping[str, tuple[float, float]]
"""Column name → (lower, upper) clipping bounds."""
NARROWEST = 1e-9
"""The narrowest clipping range, as a fraction of the schema's: values are scaled by it,
and a range near 0 (a subnormal one divides to ±inf) would make one row's sum unbounded."""


def normalized(clip: Clip | None) -> dict[str, tuple[float, float]]:
    """The bounds as a plain dict of float pairs (refusing anything else)."""
    out: dict[str, tuple[float, float]] = {}
    for name, bounds in dict(clip or {}).items():
        try:
            lower, upper = (float(b) for b in bounds)
        except (TypeError, ValueError):
            raise QueryError(f"clipping bounds of {name!r} must be two numbers (lower, "
                             f"upper), got {bounds!r}") from None
        out[str(name)] = (lower, upper)
    return out


def check(clip: Clip, schema: Schema, inputs: tuple[str, ...], what: str) -> None:
    """Refuse bounds for a column the query does not read, for a column that is not
    numeric, or outside (or not inside) the schema's own bounds."""
    for name, (lower, upper) in clip.items():
        if name not in inputs:
            raise QueryError(f"{what}: clipping bounds for {name!r}, a column the query does "
                             f"not read (it reads {list(inputs)})")
        column = schema[name]
        if not isinstance(column, Continuous | TimeToEvent):
            raise QueryError(f"{what}: column {name!r} is {column.kind}; only numeric "
                             "columns take clipping bounds")
        low, high = column.bounds()
        if not (low <= lower < upper <= high) or not np.isfinite([lower, upper]).all():
            raise QueryError(f"{what}: clipping bounds [{lower:g}, {upper:g}] of {name!r} "
                             f"must be increasing and within the schema's [{low:g}, {high:g}]")
        if upper - lower < NARROWEST * (high - low):
            raise QueryError(f"{what}: clipping bounds [{lower:g}, {upper:g}] of {name!r} "
                             f"are narrower than {NARROWEST:g} of the schema's range: the "
                             "values scaled to them would lose all precision")
        if isinstance(column, TimeToEvent) and lower != 0:
            raise QueryError(f"{what}: a time-to-event column's clipping bounds start at 0 "
                             f"(follow-up time), got {lower:g} for {name!r}")


def narrowed(schema: Schema, clip: Clip) -> Schema:
    """The schema with each clipped column's bounds replaced by its clipping bounds."""
    if not clip:
        return schema
    return replace(schema, columns=tuple(_narrow(c, clip[c.name]) if c.name in clip else c
                                         for c in schema.columns))


def _narrow(column: Column, bounds: tuple[float, float]) -> Column:
    if isinstance(column, TimeToEvent):
        return replace(column, upper=bounds[1])
    return replace(column, lower=bounds[0], upper=bounds[1])


def clamp(values: np.ndarray, bounds: tuple[float, float]) -> tuple[np.ndarray, int]:
    """The values clamped into the bounds, and how many were outside."""
    lower, upper = bounds
    outside = int(np.count_nonzero((values < lower) | (values > upper)))
    return (np.clip(values, lower, upper) if outside else values), outside


def split_budget(epsilon: float, delta: float, share: float) -> tuple[float, float]:
    """Two ε at the same δ whose zCDP costs are `share` and 1 − `share` of the ρ that
    (ε, δ) costs: a query preceded by a DP estimate of its clipping bounds spends, in all,
    what the query alone would have (ρ adds). Under pure ε-DP (δ = 0) the ε splits."""
    if not 0 < share < 1:
        raise QueryError(f"the share spent on clipping bounds must lie in (0, 1), got "
                         f"{share!r}")
    if delta == 0:
        return share * epsilon, (1 - share) * epsilon
    rho = rho_of(epsilon, delta)
    return epsilon_of(share * rho, delta), epsilon_of((1 - share) * rho, delta)


def private_bounds(study: Study, column: str, *, probs: tuple[float, float] = (0.02, 0.98),
                   bins: int = 32, where: str | None = None) -> dict[str, tuple[float, float]]:
    """Clipping bounds for a numeric column from one DP release under the study's own
    backend (and budget): the `probs` quantiles of a noisy histogram on a public grid of
    `bins` bins (grid `Quantiles`), widened to whole grid bins so that they are never a
    record's value. Use them as the next query's `clip`. The noise of a cumulative count
    grows with the bins it adds up, so the grid is coarse; a cohort too small for the
    noise gets bounds near the schema's own (lung's 228 patients at a tenth of ε = 1)."""
    from pet.queries import Quantiles  # the queries' base imports this module

    query = Quantiles(column, probs, bins=bins, where=where)
    if not study.backend.differentially_private:
        raise QueryError("private_bounds estimates clipping bounds under a DP backend; "
                         f"the study runs {study.backend.name}")
    low, high = study.run(query).value
    edges = query.edges(study.schema)
    width = edges[1] - edges[0]
    lower = max(edges[0], float(np.floor((low - edges[0]) / width) * width + edges[0]))
    upper = min(edges[-1], float(np.ceil((high - edges[0]) / width) * width + edges[0]))
    if not upper > lower:
        upper = min(edges[-1], lower + width)
        lower = upper - width
    return {column: (lower, upper)}
