"""Output disclosure control for non-DP answers, as DataSHIELD does it, at each site.

A site refuses to contribute a non-empty cell or subgroup smaller than its minimum count,
and a regression with too many parameters for its rows (a site with no rows in the
subgroup contributes zeros, which disclose nothing). The refusal names the rule and
the site's limit but never the count that broke it (that count is what it protects).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pet.errors import DisclosureError
from pet.layout import HEAD, Layout
from pet.queries.base import Query, State


@dataclass(frozen=True)
class DisclosurePolicy:
    """A site's disclosure limits: `min_cell` (1 turns the cell rule off) and the largest
    ratio of model parameters to the site's rows used."""

    min_cell: int = 3
    max_parameter_ratio: float = 0.33
    max_steering: float = 30.0
    """The largest coefficient (on the scaled design) a peer-chosen round state may carry:
    a sharper one could weigh a single row against all others (an honest fit beyond it
    has separated data, whose coefficients are not meaningful anyway)."""
    min_cell_under_dp: bool = False
    """Whether the cell rule also guards DP releases of counts of people. Off by default:
    DP noise is what protects a DP release. A site whose governance demands the rule
    anyway turns it on; it is then applied to the site's own noisy release, never to the
    exact counts (a refusal that depended on the rows would answer a question about them
    for free): under `dp` the site sets its noisy cells below `min_cell` to 0, and it
    refuses such queries under he+dp and mpc+dp, where its message is only a share of the
    noise, whatever its rows."""

    def __post_init__(self) -> None:
        if not isinstance(self.min_cell, int) or self.min_cell < 1:
            raise ValueError(f"min_cell must be a whole number >= 1, got {self.min_cell!r}")
        if not 0 < self.max_parameter_ratio <= 1:
            raise ValueError("max_parameter_ratio must lie in (0, 1], got "
                             f"{self.max_parameter_ratio!r}")
        if not self.max_steering > 0:
            raise ValueError(f"max_steering must be > 0, got {self.max_steering!r}")

    def check_request(self, query: Query, state: State, *, inside_mpc: bool,
                      site: str) -> None:
        """Before any row is read, refuse what would disclose records whatever the data:
        a query whose partial is a fine histogram unless finalized inside MPC, and a
        round state that could single rows out by weight. Off with min_cell 1."""
        if self.min_cell <= 1:
            return
        if query.secure_only and not inside_mpc:
            raise DisclosureError(
                f"{query.describe()} counts rows at thresholds a peer chooses, a histogram "
                "down to single records; this site answers it only under mpc",
                site=site, limit=self.min_cell)
        steering = query.steering(state)
        if steering > self.max_steering:
            raise DisclosureError(
                f"the round's coefficients reach {steering:.3g} on the scaled design, beyond "
                f"this site's {self.max_steering:g}: such weights single out rows (for an "
                "honest fit, the data separate the outcome)", site=site,
                limit=self.max_steering)

    def check(self, partial: np.ndarray, layout: Layout, *, site: str,
              head_only: bool = False) -> None:
        """Raise DisclosureError if the site's partial vector would disclose too much.
        With `head_only` (a backend that reveals no other sum, such as a query finalized
        inside MPC) the cell rule looks at the head blocks (n, missing and clipped
        counts) alone: the answer itself is a pooled statistic, as a mean is."""
        for block, where in layout:
            if head_only and block.name not in HEAD:
                continue
            values = partial[where]
            if block.cells and np.any((values > 0) & (values < self.min_cell)):
                what = "subgroup" if block.name == "n" else f"{block.name!r} cell"
                raise DisclosureError(
                    f"a non-empty {what} has fewer than {self.min_cell} rows here "
                    "(this site's minimum cell count); widen the bins or the subgroup",
                    site=site, limit=self.min_cell,
                )
        rows = layout.split(partial)["n"][0]
        if rows > 0 and layout.parameters > self.max_parameter_ratio * rows:
            raise DisclosureError(
                f"the model fits {layout.parameters} parameters, more than "
                f"{self.max_parameter_ratio:g} per row used here; use fewer predictors",
                site=site, limit=self.max_parameter_ratio,
            )
