"""Utility: what an analyst would conclude from the synthetic table instead of the real one.

Three readings. A classifier trained on the synthetic rows and tested on real rows it
never saw (TSTR), against the same classifier trained on the real rows (TRTR): AUC,
accuracy, Brier score and calibration. The same logistic regression fitted to each table
(pet's own, in plaintext at one site), coefficient by coefficient: the sign, and how much
the 95% intervals overlap (Karr et al. 2006). And where the schema has a time-to-event
column, the two Kaplan–Meier curves (lifelines).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from lifelines import KaplanMeierFitter
from sklearn.calibration import calibration_curve
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import accuracy_score, brier_score_loss, roc_auc_score
from threadpoolctl import threadpool_limits

from pet.disclosure import DisclosurePolicy
from pet.errors import ArgumentError, PetError
from pet.evaluate.features import Features
from pet.queries import LogisticFit, LogisticRegression
from pet.schema import Boolean, Categorical, Schema, TimeToEvent
from pet.site import Site
from pet.study import Study
from pet.table import FrameTable

CALIBRATION_BINS = 10


@dataclass(frozen=True)
class Classifier:
    """How well a classifier's predicted probabilities do on the real holdout rows."""

    auc: float
    accuracy: float
    brier: float
    calibration_error: float
    """Expected calibration error: |observed − predicted| rate, weighted over 10 bins."""
    curve: tuple[np.ndarray, np.ndarray]
    """Observed rate and mean prediction per bin (sklearn's calibration curve)."""


@dataclass(frozen=True)
class Survival:
    """Kaplan–Meier curves of the real and synthetic tables on one time grid."""

    column: str
    times: np.ndarray
    real: np.ndarray
    synthetic: np.ndarray

    @property
    def gap(self) -> float:
        """The largest vertical distance between the two curves."""
        return float(np.max(np.abs(self.real - self.synthetic)))


@dataclass(frozen=True)
class Utility:
    """TSTR against TRTR, coefficient agreement, and survival curves."""

    target: str
    real: Classifier
    synthetic: Classifier
    coefficients: pd.DataFrame
    """Per term: coefficient and 95% interval on each table, same sign, interval overlap
    (empty when the regression could not be fitted to one of them; see `regression_note`)."""
    regression_note: str
    survival: Survival | None

    def summary(self) -> dict[str, float]:
        """The headline numbers."""
        table = self.coefficients
        return {"auc_real": self.real.auc, "auc_synthetic": self.synthetic.auc,
                "auc_ratio": self.synthetic.auc / self.real.auc if self.real.auc else np.nan,
                "calibration_error_synthetic": self.synthetic.calibration_error,
                "same_sign": float(table["same_sign"].mean()) if len(table) else np.nan,
                "ci_overlap": float(table["overlap"].mean()) if len(table) else np.nan,
                "survival_gap": self.survival.gap if self.survival else np.nan}


def utility(train: pd.DataFrame, holdout: pd.DataFrame, synthetic: pd.DataFrame,
            schema: Schema, target: str, *, covariates: Sequence[str] | None = None,
            seed: int = 0) -> Utility:
    """Train on the real training rows and on the synthetic rows, test both on the real
    holdout; `target` is a two-level column (boolean, or categorical whose second
    category is the positive outcome), `covariates` the regression's terms (default:
    every numeric and boolean column but the target and follow-up times)."""
    _check_target(schema, target)
    features = Features(schema).without(target, *_follow_up(schema))
    terms = tuple(covariates) if covariates is not None else _default_terms(schema, features)
    trained = {name: _classifier(frame, holdout, features, target, seed)
               for name, frame in (("real", train), ("synthetic", synthetic))}
    coefficients, note = _coefficients(train, synthetic, schema, target, terms)
    return Utility(target, trained["real"], trained["synthetic"], coefficients, note,
                   _survival(train, synthetic, schema))


def _check_target(schema: Schema, target: str) -> None:
    """A classifier and a logistic regression need an outcome of exactly two levels."""
    column = schema[target]
    levels = len(column.categories) if isinstance(column, Categorical) else None
    if not (isinstance(column, Boolean) or levels == 2):
        shape = f" with {levels} categories" if levels is not None else ""
        raise ArgumentError(f"the utility target {target!r} must have two levels (boolean, "
                            f"or categorical with two categories); it is {column.kind}{shape}")


def _binary(frame: pd.DataFrame, schema: Schema, target: str) -> tuple[pd.DataFrame, Schema]:
    """The table and schema with a two-category target as a boolean (its second category
    true, missing values kept), for the logistic regression; a boolean one as it is."""
    column = schema[target]
    if isinstance(column, Boolean):
        return frame, schema
    first, second = column.categories
    frame = frame.assign(**{target: frame[target].map({first: False, second: True})})
    flag = Boolean(target, nullable=column.nullable, description=column.description)
    return frame, Schema(tuple(flag if c.name == target else c for c in schema.columns),
                         schema.name)


def _follow_up(schema: Schema) -> list[str]:
    """Follow-up times: not known at baseline, so no predictor of the outcome."""
    return [c.name for c in schema.columns if isinstance(c, TimeToEvent)]


def _default_terms(schema: Schema, features: Features) -> tuple[str, ...]:
    return tuple(n for n in features.columns if schema[n].kind != "categorical"
                 and not schema[n].nullable)


def _classifier(train: pd.DataFrame, holdout: pd.DataFrame, features: Features,
                target: str, seed: int) -> Classifier:
    """Gradient-boosted trees (scikit-learn) fitted to `train`, scored on `holdout`."""
    y_train = _labels(train, features.schema, target)
    y_test = _labels(holdout, features.schema, target)
    if len(np.unique(y_test)) < 2:
        raise ArgumentError(f"{target!r} takes one value only in the {len(y_test)} holdout "
                            "rows: no classifier can be scored on it; hold out more rows or "
                            "name another target")
    if len(np.unique(y_train)) < 2:  # a table with one outcome teaches that outcome alone
        p = np.full(len(y_test), float(y_train[0]))
    else:
        model = HistGradientBoostingClassifier(random_state=seed)
        # One OpenMP thread: its threads spin-wait, and on a machine whose cores are busy
        # (a server, a benchmark) they slow a small fit a hundredfold.
        with threadpool_limits(limits=1, user_api="openmp"):
            model.fit(features.matrix(train), y_train)
            p = model.predict_proba(features.matrix(holdout))[:, 1]
    observed, predicted = calibration_curve(y_test, p, n_bins=CALIBRATION_BINS)
    return Classifier(float(roc_auc_score(y_test, p)), float(accuracy_score(y_test, p >= 0.5)),
                      float(brier_score_loss(y_test, p)), _calibration_error(y_test, p),
                      (observed, predicted))


def _labels(frame: pd.DataFrame, schema: Schema, target: str) -> np.ndarray:
    values = schema.encode(frame, columns=[target])[target]
    if np.isnan(values).any():
        raise ArgumentError(f"the utility target {target!r} has missing values")
    return values.astype(int)


def _calibration_error(y: np.ndarray, p: np.ndarray) -> float:
    bins = np.minimum((p * CALIBRATION_BINS).astype(int), CALIBRATION_BINS - 1)
    total = 0.0
    for b in np.unique(bins):
        inside = bins == b
        total += inside.sum() * abs(y[inside].mean() - p[inside].mean())
    return float(total / len(y))


def _coefficients(train: pd.DataFrame, synthetic: pd.DataFrame, schema: Schema, target: str,
                  terms: tuple[str, ...]) -> tuple[pd.DataFrame, str]:
    """pet's logistic regression on each table, term by term; not applicable without
    covariates (an intercept alone says nothing about relationships)."""
    if not terms:
        return (pd.DataFrame(columns=["same_sign", "overlap"]),
                "not applicable: the regression has no covariates")
    fits = {}
    for name, frame in (("real", train), ("synthetic", synthetic)):
        try:
            fit = _fitted(frame, schema, target, terms)
        except PetError as error:
            return pd.DataFrame(columns=["same_sign", "overlap"]), f"{name}: {error}"
        if not fit.converged:
            return (pd.DataFrame(columns=["same_sign", "overlap"]),
                    f"{name}: the logistic regression did not converge")
        fits[name] = fit.table()
    real, synth = fits["real"], fits["synthetic"]
    table = pd.DataFrame({"real": real["coef"], "real_low": real["ci_low"],
                          "real_high": real["ci_high"], "synthetic": synth["coef"],
                          "synthetic_low": synth["ci_low"], "synthetic_high": synth["ci_high"]})
    table["same_sign"] = np.sign(table["real"]) == np.sign(table["synthetic"])
    table["overlap"] = [interval_overlap((r.real_low, r.real_high),
                                         (r.synthetic_low, r.synthetic_high))
                        for r in table.itertuples()]
    return table, ""


def _fitted(frame: pd.DataFrame, schema: Schema, target: str,
            terms: tuple[str, ...]) -> LogisticFit:
    """pet's plaintext logistic regression on one table (no disclosure limits: the table
    never leaves this process)."""
    frame, schema = _binary(frame, schema, target)
    site = Site("table", FrameTable(frame, schema), policy=DisclosurePolicy(min_cell=1,
                                                                            max_parameter_ratio=1))
    return Study([site]).run(LogisticRegression(target, terms)).value


def interval_overlap(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Karr et al.'s interval overlap: the shared length as a share of each interval,
    averaged (1: the same interval, 0: disjoint)."""
    shared = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    widths = [a[1] - a[0], b[1] - b[0]]
    if min(widths) <= 0:
        return float(shared > 0)
    return 0.5 * (shared / widths[0] + shared / widths[1])


def _survival(train: pd.DataFrame, synthetic: pd.DataFrame, schema: Schema) -> Survival | None:
    """Kaplan–Meier curves of the first time-to-event column, if the schema has one."""
    column = next((c for c in schema.columns if isinstance(c, TimeToEvent)), None)
    if column is None:
        return None
    times = np.linspace(0.0, column.upper, 101)
    curves = []
    for frame in (train, synthetic):
        encoded = schema.encode(frame, columns=[column.name, column.event])
        time, event = encoded[column.name], encoded[column.event]
        keep = ~(np.isnan(time) | np.isnan(event))
        fitter = KaplanMeierFitter().fit(time[keep], event[keep].astype(bool))
        curves.append(fitter.survival_function_at_times(times).to_numpy())
    return Survival(column.name, times, curves[0], curves[1])
