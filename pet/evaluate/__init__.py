"""Evaluation of a synthetic table against the real one it stands for: fidelity, utility
and privacy by attack simulation, and a report a clinician can read in five minutes.

    evaluation = pet.evaluate.evaluate(train, holdout, synthetic, schema)
    pet.evaluate.write_report(evaluation, "report/")   # report.html, report.md, PNGs

`train` is what the synthesizer saw, `holdout` real rows it did not see (the control for
every attack and the test set for utility). Works on any pair of tables with a schema.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from pet.errors import ArgumentError
from pet.evaluate.features import Features, split, subsample
from pet.evaluate.fidelity import Fidelity, fidelity
from pet.evaluate.privacy import Privacy, Risk, privacy
from pet.evaluate.report import markdown, write_report
from pet.evaluate.utility import Utility, utility
from pet.schema import Schema

OUTCOMES: dict[str, tuple[str, tuple[str, ...]]] = {
    "breast_cancer": ("malignant", ("mean_radius", "mean_texture", "mean_smoothness",
                                    "mean_concave_points")),
    "cohort": ("cvd_event", ("age", "sex", "sbp", "total_chol", "hdl", "smoking",
                             "diabetes")),
    "lung": ("dead", ("age", "sex", "ph_ecog")),
}
"""Each workload's clinically meaningful outcome and the regression's terms: diagnosis,
the 10-year CVD event, death during follow-up."""


@dataclass(frozen=True)
class Verdict:
    """One pillar's grade, its numbers and what they mean in plain words."""

    pillar: str
    grade: str
    numbers: str
    reading: str


@dataclass(frozen=True)
class Evaluation:
    """Fidelity, utility (None without a two-level outcome) and privacy of one table."""

    schema: Schema
    rows: dict[str, int]
    fidelity: Fidelity
    utility: Utility | None
    privacy: Privacy

    def summary(self) -> dict[str, Any]:
        """Every headline number, flat (for data cards and benchmark cells)."""
        out: dict[str, Any] = {**self.rows, **self.fidelity.summary(),
                               **self.privacy.summary()}
        if self.utility is not None:
            out |= {"target": self.utility.target, **self.utility.summary()}
        return out

    def verdicts(self) -> list[Verdict]:
        """The three pillars, graded."""
        return [_fidelity_verdict(self.fidelity), _utility_verdict(self.utility),
                _privacy_verdict(self.privacy)]


def evaluate(train: pd.DataFrame, holdout: pd.DataFrame, synthetic: pd.DataFrame,
             schema: Schema, *, target: str | None = None,
             covariates: Sequence[str] | None = None, secret: str | None = None,
             seed: int = 0) -> Evaluation:
    """Evaluate `synthetic` against the real `train` rows it was made from, with `holdout`
    as unseen real rows. `target` (a two-level column) is the utility outcome, by default
    the workload's (OUTCOMES); `secret` the column attribute inference guesses, by
    default the target."""
    for name, frame in (("train", train), ("holdout", holdout), ("synthetic", synthetic)):
        if len(frame) == 0:
            raise ArgumentError(f"the {name} table has no rows")
        schema.validate(frame)
    known = OUTCOMES.get(schema.name)
    if target is None and known is not None:
        target, covariates = known[0], covariates if covariates is not None else known[1]
    found = (utility(train, holdout, synthetic, schema, target, covariates=covariates,
                     seed=seed) if target is not None else None)
    return Evaluation(schema, {"train_rows": len(train), "holdout_rows": len(holdout),
                               "synthetic_rows": len(synthetic)},
                      fidelity(train, synthetic, schema, seed=seed), found,
                      privacy(train, holdout, synthetic, schema, secret=secret or target,
                              seed=seed))


UNINFORMATIVE_AUC = 0.6
"""Below this holdout AUC of a model trained on real rows, the outcome is barely
predictable and TSTR against TRTR compares noise."""
REPRODUCES = {"close": "closely reproduces", "fair": "roughly reproduces",
              "far": "does not reproduce"}


def _fidelity_verdict(found: Fidelity) -> Verdict:
    tvd2 = found.tvd[2]
    grade = "close" if tvd2 < 0.05 else "fair" if tvd2 < 0.15 else "far"
    gap = found.summary()["correlation_gap_max"]
    return Verdict("Fidelity", grade,
                   f"2-way TVD {tvd2:.3f} (1-way {found.tvd[1]:.3f}, 3-way "
                   f"{found.tvd[3]:.3f}); largest correlation gap {gap:.2f}",
                   f"On the schema's bins, pairs of columns are distributed {_share(tvd2)} "
                   f"differently from the real data on average: the synthetic table "
                   f"{REPRODUCES[grade]} the real distributions and pairwise relationships.")


def _utility_verdict(found: Utility | None) -> Verdict:
    if found is None:
        return Verdict("Utility", "not measured", "no two-level outcome named",
                       "Name a two-level outcome (target) to measure what a model trained on "
                       "the synthetic data is worth on real patients.")
    ratio = found.synthetic.auc / found.real.auc
    grade = ("not informative" if found.real.auc < UNINFORMATIVE_AUC else "close"
             if ratio >= 0.95 else "fair" if ratio >= 0.85 else "poor")
    signs = found.summary()["same_sign"]
    coefficients = (f"; {signs:.0%} of regression coefficients keep their sign"
                    if signs == signs else f"; regression not compared ({found.regression_note})")
    return Verdict("Utility", grade,
                   f"AUC {found.synthetic.auc:.3f} trained on synthetic vs {found.real.auc:.3f} "
                   f"on real ({ratio:.0%}){coefficients}",
                   f"{found.target!r} is hardly predictable even by a model trained on the "
                   "real rows, so this comparison says little." if grade == "not informative"
                   else f"A model for {found.target!r} trained on the synthetic rows and "
                   f"tested on real patients it never saw keeps {min(ratio, 1):.0%} of the "
                   "discrimination of one trained on the real rows"
                   + (" (more, by chance, on this holdout)." if ratio > 1 else "."))


def _privacy_verdict(found: Privacy) -> Verdict:
    worst = max(found.risks, key=lambda r: r.interval[1])
    beyond_chance = found.mia_advantage > found.mia_chance
    high = (beyond_chance and found.mia_advantage > 0.2) or found.dcr_excess > 0.4 or any(
        r.interval[0] > 0.1 for r in found.risks)
    elevated = beyond_chance or found.dcr_excess > 0.2 or any(
        r.significant and r.risk > 0.05 for r in found.risks)
    grade = "high risk" if high else "elevated risk" if elevated else "low risk"
    low, up = worst.interval
    return Verdict("Privacy", grade,
                   f"membership advantage {found.mia_advantage:.2f} (chance: up to "
                   f"{found.mia_chance:.2f}); "
                   f"{found.closer_to_train:.0%} of synthetic rows nearer a training row "
                   f"({found.expected_closer:.0%} expected); "
                   f"worst attack {worst.attack} risk {worst.risk:.2f} [{low:.2f}, {up:.2f}]",
                   {"high risk": "Attackers learn about the very patients the data came "
                                 "from: do not share this table.",
                    "elevated risk": "Some attacks do better on the patients the data came "
                                     "from than on others: review before sharing.",
                    "low risk": "No attack does better on the patients the data came from "
                                "than on patients it never saw."}[grade])


def _share(value: float) -> str:
    return f"{value:.0%}" if value >= 0.01 else f"{value:.1%}"


__all__ = ["OUTCOMES", "Evaluation", "Features", "Fidelity", "Privacy", "Risk", "Utility",
           "Verdict", "evaluate", "fidelity", "markdown", "privacy", "split", "subsample",
           "utility", "write_report"]
