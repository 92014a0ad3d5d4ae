"""Privacy by attack simulation: what an attacker holding the synthetic table learns about
the people in the real one.

Every attack is scored against the training rows (the synthesizer's input) and, as a
control, against holdout rows it never saw, in equal numbers: what an attack achieves on
the holdout it achieves by learning the population, not the people.

- Distance to closest record (DCR): for each synthetic row, its L1 distance on the
  public-scale features to the nearest training row and to the nearest holdout row. A
  table drawn from the population has a row nearer a training row with probability
  n_train / (n_train + n_holdout); the excess over that, scaled so that a copy scores 1,
  says how much the table sticks to the people it came from.
- Membership inference: the attacker scores each candidate by how close the nearest
  synthetic row is; the ROC of telling training rows from holdout rows, its AUC, and the
  attacker's advantage (the largest TPR − FPR).
- Singling out, linkability and attribute inference, following Giomi et al., "A Unified
  Framework for Quantifying Privacy Risk in Synthetic Data" (PETS 2023), the method of
  the anonymeter package: each attack's success rate on training targets and on control
  targets, the risk (train − control) / (1 − control) with a 95% interval from both
  rates' Wilson intervals (Newcombe's method), and a baseline attacker who guesses at
  random (an attack no better than it has learnt nothing).
"""

# The anonymeter package would pin numpy below 2 and pyarrow 21 against pet's pins, so
# pet carries the method itself: predicates and nearest neighbours over scikit-learn.

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.neighbors import NearestNeighbors

from pet.errors import ArgumentError
from pet.evaluate.features import Features, subsample
from pet.schema import Boolean, Categorical, Integer, Schema

TARGETS = 500
"""Training and control targets per attack (fewer when the tables are smaller)."""
SYNTHETIC_ROWS = 20_000
"""Synthetic rows the attacker searches (a seeded sample of larger tables)."""
REAL_ROWS = 40_000
"""Training and holdout rows DCR searches together (both sampled alike beyond it)."""
PREDICATE_COLUMNS = 5
"""Columns in each singling-out predicate."""
TOLERANCE = 0.05
"""A numeric secret is guessed when within this share of its public range."""


@dataclass(frozen=True)
class Rate:
    """Successes out of trials, with a 95% Wilson interval."""

    successes: int
    trials: int

    @property
    def rate(self) -> float:
        return self.successes / self.trials if self.trials else 0.0

    def interval(self, confidence: float = 0.95) -> tuple[float, float]:
        """Wilson's score interval for the rate."""
        if not self.trials:
            return 0.0, 1.0
        z = float(stats.norm.ppf(0.5 + confidence / 2))
        n, p = self.trials, self.rate
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Risk:
    """One attack: its success on training targets, on control targets, at random."""

    attack: str
    detail: str
    train: Rate
    control: Rate
    baseline: Rate

    @property
    def risk(self) -> float:
        """(train − control) / (1 − control), at least 0."""
        return _risk(self.train.rate, self.control.rate)

    @property
    def interval(self) -> tuple[float, float]:
        """A 95% interval of the risk: Newcombe's interval for the difference of the two
        rates (from each one's Wilson interval, so the control's own sampling error
        counts too), divided by 1 − control."""
        (p, (l1, u1)), (q, (l2, u2)) = ((r.rate, r.interval()) for r in (self.train,
                                                                       self.control))
        low = p - q - np.hypot(p - l1, u2 - q)
        high = p - q + np.hypot(u1 - p, q - l2)
        scale = 1 - q if q < 1 else 1.0
        return max(0.0, low / scale), min(1.0, max(0.0, high / scale))

    @property
    def significant(self) -> bool:
        """Whether the training targets were attacked more successfully than the control
        ones, beyond chance (the interval's lower end above 0)."""
        return self.interval[0] > 0

    @property
    def better_than_random(self) -> bool:
        """Whether the attack beat the random-guess baseline on the training targets."""
        return self.train.rate > self.baseline.interval()[1]


def _risk(rate: float, control: float) -> float:
    return max(0.0, (rate - control) / (1 - control)) if control < 1 else 0.0


@dataclass(frozen=True)
class Privacy:
    """DCR, membership inference and the three Anonymeter attacks."""

    dcr_train: np.ndarray
    dcr_holdout: np.ndarray
    expected_closer: float
    """The share of rows nearer a training row that a draw from the population shows."""
    mia_auc: float
    mia_advantage: float
    mia_roc: tuple[np.ndarray, np.ndarray]
    risks: tuple[Risk, ...]
    mia_chance: float
    """The advantage that chance alone exceeds 5% of the time with these many candidates
    (the two-sample Kolmogorov–Smirnov critical value: the advantage is that statistic)."""

    @property
    def closer_to_train(self) -> float:
        """Share of synthetic rows nearer a training row than any holdout row (ties half)."""
        return float(np.mean(self.dcr_train < self.dcr_holdout)
                     + 0.5 * np.mean(self.dcr_train == self.dcr_holdout))

    @property
    def dcr_excess(self) -> float:
        """How far `closer_to_train` exceeds a population draw's, scaled to a copy's (1);
        at least 0."""
        return _risk(self.closer_to_train, self.expected_closer)

    def summary(self) -> dict[str, float]:
        """The headline numbers."""
        out = {"closer_to_train": self.closer_to_train, "dcr_excess": self.dcr_excess,
               "dcr_train_median": float(np.median(self.dcr_train)),
               "dcr_holdout_median": float(np.median(self.dcr_holdout)),
               "mia_auc": self.mia_auc, "mia_advantage": self.mia_advantage,
               "mia_chance": self.mia_chance}
        for risk in self.risks:
            out[f"{risk.attack} risk"] = risk.risk
        out["max_risk_high"] = max((r.interval[1] for r in self.risks), default=0.0)
        return out


def privacy(train: pd.DataFrame, holdout: pd.DataFrame, synthetic: pd.DataFrame,
            schema: Schema, *, secret: str | None = None, targets: int = TARGETS,
            seed: int = 0) -> Privacy:
    """Run every attack; `secret` is the column attribute inference guesses (default: the
    schema's last column)."""
    count = min(len(train), len(holdout), targets)
    if count < 10:
        raise ArgumentError(f"privacy attacks need at least 10 training and 10 holdout rows, "
                            f"got {len(train)} and {len(holdout)}")
    members, controls = subsample(train, count, seed), subsample(holdout, count, seed + 1)
    released = subsample(synthetic, SYNTHETIC_ROWS, seed + 2)
    features = Features(schema)
    x = {name: features.matrix(frame) for name, frame in
         (("members", members), ("controls", controls), ("synthetic", released))}
    share = min(1.0, REAL_ROWS / (len(train) + len(holdout)))
    near = [features.matrix(subsample(frame, max(1, round(share * len(frame))), seed + 4))
            for frame in (train, holdout)]
    dcr_train, dcr_holdout = (_nearest(rows, x["synthetic"]) for rows in near)
    score = -np.concatenate([_nearest(x["synthetic"], x["members"]),
                             _nearest(x["synthetic"], x["controls"])])
    labels = np.r_[np.ones(count), np.zeros(count)]
    fpr, tpr, _ = roc_curve(labels, score)
    rng = np.random.default_rng(seed + 3)
    equal = min(len(train), len(holdout), REAL_ROWS // 2)
    risks = (_singling_out(schema, subsample(train, equal, seed + 5),
                           subsample(holdout, equal, seed + 6), released, count, rng),
             _linkability(schema, members, controls, released, rng),
             _inference(schema, secret or schema.names[-1], members, controls, released, rng))
    expected = len(near[0]) / (len(near[0]) + len(near[1]))
    return Privacy(dcr_train, dcr_holdout, expected, float(roc_auc_score(labels, score)),
                   float(np.max(tpr - fpr)), (fpr, tpr), risks, _chance(count))


def _chance(count: int) -> float:
    """The 95% critical value of the two-sample KS statistic for `count` against `count`
    (asymptotic: 1.358·√(2 / count))."""
    return float(stats.kstwobign.ppf(0.95) * np.sqrt(2 / count))


def _nearest(points: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """For each query row, the L1 distance to its nearest point."""
    return _neighbours(points, queries)[0]


def _nearest_index(points: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """For each query row, the index of its nearest point in L1."""
    return _neighbours(points, queries)[1]


def _neighbours(points: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each query row's nearest point in L1 (scikit-learn): distance and index."""
    distances, indices = NearestNeighbors(n_neighbors=1, metric="manhattan").fit(
        points).kneighbors(queries)
    return distances[:, 0], indices[:, 0]


# --- singling out ---------------------------------------------------------------------

def _singling_out(schema: Schema, members: pd.DataFrame, controls: pd.DataFrame,
                  synthetic: pd.DataFrame, trials: int, rng: np.random.Generator) -> Risk:
    """`trials` predicates on a few columns read off synthetic rows ("age ≥ 71 and sex =
    female and smoking = current"); one singles out when exactly one row of the training
    (or, as control, the equally many holdout) rows satisfies it. The baseline draws each
    predicate's values at random inside the public domain."""
    names = schema.names
    k = min(PREDICATE_COLUMNS, len(names))
    coded = {n: schema.encode(f) for n, f in (("members", members), ("controls", controls),
                                             ("synthetic", synthetic))}
    medians = {c: np.nanmedian(coded["synthetic"][c]) if np.isfinite(coded["synthetic"][c]).any()
               else 0.0 for c in names}
    attack, baseline = [], []
    for _ in range(trials):
        row = int(rng.integers(len(synthetic)))
        columns = [names[i] for i in rng.choice(len(names), k, replace=False)]
        attack.append([(c, coded["synthetic"][c][row], medians[c]) for c in columns])
        baseline.append([(c, _random_value(schema, c, rng), medians[c]) for c in columns])
    return Risk("singling out", f"{k} columns per predicate",
                Rate(sum(_singles_out(p, coded["members"], schema) for p in attack), trials),
                Rate(sum(_singles_out(p, coded["controls"], schema) for p in attack), trials),
                Rate(sum(_singles_out(p, coded["members"], schema) for p in baseline), trials))


def _random_value(schema: Schema, name: str, rng: np.random.Generator) -> float:
    column = schema[name]
    lower, upper = column.bounds()
    if isinstance(column, Categorical | Boolean | Integer):
        return float(rng.integers(int(lower), int(upper) + 1))
    return float(rng.uniform(lower, upper))


def _singles_out(predicate: list[tuple[str, float, float]], coded: dict[str, np.ndarray],
                 schema: Schema) -> bool:
    """Whether exactly one row satisfies every term: equal to the value for a category or
    boolean, missing for a missing value, at least (above the median) or at most (below
    it) the value for a number."""
    keep = np.ones(len(next(iter(coded.values()))), dtype=bool)
    for name, value, median in predicate:
        values = coded[name]
        if np.isnan(value):
            keep &= np.isnan(values)
        elif isinstance(schema[name], Categorical | Boolean):
            keep &= values == value
        elif value >= median:
            keep &= values >= value
        else:
            keep &= values <= value
    return int(keep.sum()) == 1


# --- linkability ----------------------------------------------------------------------

def _linkability(schema: Schema, members: pd.DataFrame, controls: pd.DataFrame,
                 synthetic: pd.DataFrame, rng: np.random.Generator) -> Risk:
    """The attacker holds two halves of a target's columns from two sources and links them
    when both halves' nearest synthetic rows are the same row. The baseline links at
    random."""
    names = schema.names
    if len(names) < 2:
        raise ArgumentError("linkability needs at least two columns")
    first, second = Features(schema, names[:len(names) // 2]), Features(schema,
                                                                        names[len(names) // 2:])
    rows = [first.matrix(synthetic), second.matrix(synthetic)]

    def linked(frame: pd.DataFrame) -> int:
        a = _nearest_index(rows[0], first.matrix(frame))
        b = _nearest_index(rows[1], second.matrix(frame))
        return int((a == b).sum())

    trials = len(members)
    guesses = rng.integers(len(synthetic), size=(2, trials))
    return Risk("linkability", f"{list(first.columns)} with {list(second.columns)}",
                Rate(linked(members), trials), Rate(linked(controls), trials),
                Rate(int((guesses[0] == guesses[1]).sum()), trials))


# --- attribute inference ----------------------------------------------------------------

def _inference(schema: Schema, secret: str, members: pd.DataFrame, controls: pd.DataFrame,
               synthetic: pd.DataFrame, rng: np.random.Generator) -> Risk:
    """The attacker knows every other column of a target and guesses its secret as that of
    the nearest synthetic row; a number counts as guessed within 5% of its range. The
    baseline guesses the secret of a random synthetic row."""
    column = schema[secret]
    known = Features(schema).without(secret)
    pool = schema.encode(synthetic, columns=[secret])[secret]
    rows = known.matrix(synthetic)

    def guessed(frame: pd.DataFrame, guess: np.ndarray) -> int:
        truth = schema.encode(frame, columns=[secret])[secret]
        both_missing = np.isnan(truth) & np.isnan(guess)
        if isinstance(column, Categorical | Boolean):
            right = truth == guess
        else:
            lower, upper = column.bounds()
            right = np.abs(truth - guess) <= TOLERANCE * (upper - lower)
        return int((right | both_missing).sum())

    def attacked(frame: pd.DataFrame) -> int:
        return guessed(frame, pool[_nearest_index(rows, known.matrix(frame))])

    trials = len(members)
    return Risk("attribute inference", f"secret {secret!r}", Rate(attacked(members), trials),
                Rate(attacked(controls), trials),
                Rate(guessed(members, pool[rng.integers(len(pool), size=trials)]), trials))
