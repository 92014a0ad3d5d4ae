"""Linear regression (one round of XᵀX, Xᵀy, yᵀy) and logistic regression (federated
Newton–Raphson: each round sums the gradient and Hessian at public coefficients).

Predictors are mapped onto [-1, 1] with their public bounds before any sum is taken (a
categorical predictor becomes 0/1 indicators, its first category the reference), so each
row adds at most 1 to every element; coefficients and standard errors are mapped back
to the columns' own units exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import special

from pet.errors import QueryError
from pet.layout import Block
from pet.queries.base import (
    Next,
    Query,
    State,
    affine,
    check_iteration,
    from_upper_triangle,
    gram_upper,
)
from pet.schema import Boolean, Categorical, Schema

LOG_FLOOR = float(np.log(1e-12))
"""Per-row log-likelihood floor (probabilities clipped at 1e-12), so its sum is bounded."""


@dataclass(frozen=True)
class Design:
    """Public description of the model matrix: term names and each term's scaling."""

    names: tuple[str, ...]
    center: np.ndarray
    half: np.ndarray

    @property
    def size(self) -> int:
        """Number of terms (parameters)."""
        return len(self.names)

    def to_original(self) -> np.ndarray:
        """Matrix A with β_original = A · β_scaled (the intercept absorbs the centering)."""
        a = np.diag(1.0 / self.half)
        if self.names and self.names[0] == "intercept":
            a[0, 1:] = -self.center[1:] / self.half[1:]
        return a


def make_design(schema: Schema, predictors: tuple[str, ...], intercept: bool) -> Design:
    """Terms for the predictors: numeric ones scaled to [-1, 1], categories as indicators.

    Without an intercept nothing is centered (centering would add one), only scaled.
    """
    names, center, half = (["intercept"], [0.0], [1.0]) if intercept else ([], [], [])
    for name in predictors:
        column = schema[name]
        if isinstance(column, Categorical):
            for category in column.categories[1:]:
                names.append(f"{name}[{category}]")
                center.append(0.0)
                half.append(1.0)
            continue
        c, h = _scaling(column, intercept)
        names.append(name)
        center.append(c)
        half.append(h)
    return Design(tuple(names), np.array(center), np.array(half))


def _scaling(column: object, centered: bool) -> tuple[float, float]:
    center, half = affine(column)  # type: ignore[arg-type]
    if centered:
        return center, half
    lower, upper = column.bounds()  # type: ignore[attr-defined]
    return 0.0, max(abs(lower), abs(upper))


def model_matrix(design: Design, schema: Schema, predictors: tuple[str, ...],
                 data: dict[str, np.ndarray]) -> np.ndarray:
    """Rows × terms matrix with every entry in [-1, 1], filled column by column in place
    (column-major, so each fill is one contiguous vectorised write)."""
    n = len(next(iter(data.values()))) if data else 0
    matrix = np.empty((n, design.size), order="F")
    term = 0
    if design.names and design.names[0] == "intercept":
        matrix[:, 0] = 1.0
        term = 1
    for name in predictors:
        column = schema[name]
        if isinstance(column, Categorical):
            for code in range(1, len(column.categories)):
                matrix[:, term] = data[name] == code
                term += 1
        else:
            matrix[:, term] = (data[name] - design.center[term]) / design.half[term]
            term += 1
    return matrix


@dataclass(frozen=True)
class Fit:
    """Fitted coefficients with standard errors, in the columns' own units."""

    names: tuple[str, ...]
    coef: np.ndarray
    se: np.ndarray
    n: int

    def statistic(self) -> np.ndarray:
        """Coefficient divided by its standard error."""
        return self.coef / self.se

    def pvalues(self) -> np.ndarray:
        """Two-sided p-values (normal reference)."""
        return 2 * special.ndtr(-np.abs(self.statistic()))

    def table(self) -> pd.DataFrame:
        """Coefficients, standard errors, statistics, p-values and 95% intervals."""
        z = special.ndtri(0.975)
        return pd.DataFrame(
            {"coef": self.coef, "se": self.se, "statistic": self.statistic(),
             "p": self.pvalues(), "ci_low": self.coef - z * self.se,
             "ci_high": self.coef + z * self.se},
            index=list(self.names),
        )


@dataclass(frozen=True)
class LinearFit(Fit):
    """Ordinary least squares fit: also R², adjusted R² and the residual standard error."""

    r2: float
    adj_r2: float
    sigma: float
    dof: int

    def pvalues(self) -> np.ndarray:
        """Two-sided p-values from Student's t with the residual degrees of freedom."""
        return 2 * special.stdtr(self.dof, -np.abs(self.statistic()))


@dataclass(frozen=True)
class LogisticFit(Fit):
    """Logistic fit by Newton–Raphson: also the log-likelihood and convergence."""

    log_likelihood: float
    iterations: int
    converged: bool


@dataclass(frozen=True)
class Regression(Query):
    """Shared parts of regressions: the outcome, predictors and the design."""

    outcome: str
    predictors: tuple[str, ...]
    intercept: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "predictors", tuple(self.predictors))

    def inputs(self) -> tuple[str, ...]:
        return (self.outcome, *self.predictors)

    def check(self, schema: Schema) -> None:
        if self.outcome in self.predictors or len(set(self.predictors)) != len(self.predictors):
            raise QueryError(f"{self.describe()}: the outcome and predictors must be distinct")
        if self.design(schema).size == 0:
            raise QueryError(f"{self.describe()}: the model has no terms")

    def design(self, schema: Schema) -> Design:
        """The model's terms and their public scaling."""
        return make_design(schema, self.predictors, self.intercept)

    def parameters(self, schema: Schema) -> int:
        return self.design(schema).size

    def min_rows(self, schema: Schema) -> int:
        """A fit needs more rows than parameters; a noisy n short of that is answered with
        NaN coefficients (`undetermined`), an exact one refused by `answer`."""
        return self.design(schema).size + 1

    def unknown(self, schema: Schema) -> tuple[tuple[str, ...], np.ndarray]:
        """The terms' names and NaN for each: the coefficients of a fit that a noisy n too
        small for the model cannot determine."""
        names = self.design(schema).names
        return names, np.full(len(names), np.nan)

    def solve(self, matrix: np.ndarray, vector: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Solution and inverse of a symmetric system, or a clear error when it is singular."""
        if np.linalg.cond(matrix) > 1e12:
            raise QueryError(
                f"{self.describe()}: the model cannot be fitted; predictors are collinear, "
                "a category is empty, or the outcome is perfectly separated"
            )
        if np.linalg.eigvalsh(matrix)[0] <= 0:
            raise QueryError(
                f"{self.describe()}: the summed matrix is not positive definite, as no "
                "exact sums can be; under DP the noise outweighs the data (raise ε, pool "
                "more rows, or use a central-DP backend)"
            )
        inverse = np.linalg.inv(matrix)
        return inverse @ vector, inverse


@dataclass(frozen=True)
class LinearRegression(Regression):
    """Ordinary least squares of a numeric outcome on predictors."""

    def check(self, schema: Schema) -> None:
        super().check(schema)
        if isinstance(schema[self.outcome], Categorical):
            raise QueryError(f"{self.describe()}: the outcome {self.outcome!r} must be numeric")

    def blocks(self, schema: Schema, state: State) -> tuple[Block, ...]:
        p = self.design(schema).size
        return (Block.sums("xtx", p * (p + 1) // 2), Block.sums("xty", p),
                Block.sums("yty", 1))

    def undetermined(self, parts: dict[str, np.ndarray], schema: Schema,
                     state: State) -> LinearFit:
        names, nan = self.unknown(schema)
        return LinearFit(names, nan, nan.copy(), max(round(parts["n"][0]), 0), r2=np.nan,
                         adj_r2=np.nan, sigma=np.nan, dof=0)

    def _outcome_scaling(self, schema: Schema) -> tuple[float, float]:
        return _scaling(schema[self.outcome], self.intercept)

    def accumulate(self, data: dict[str, np.ndarray], schema: Schema,
                   state: State) -> dict[str, np.ndarray]:
        x = model_matrix(self.design(schema), schema, self.predictors, data)
        center, half = self._outcome_scaling(schema)
        y = (data[self.outcome] - center) / half
        return {"xtx": gram_upper(x), "xty": x.T @ y, "yty": np.array([y @ y])}

    def answer(self, parts: dict[str, np.ndarray], schema: Schema, state: State) -> LinearFit:
        design = self.design(schema)
        p, n = design.size, parts["n"][0]
        if n <= p:
            raise QueryError(f"{self.describe()}: {n:g} rows cannot fit {p} parameters")
        xty, yty = parts["xty"], parts["yty"][0]
        beta, inverse = self.solve(from_upper_triangle(parts["xtx"], p), xty)
        a = design.to_original()
        rss = max(yty - beta @ xty, 0.0)
        tss = yty - xty[0] ** 2 / n if self.intercept else yty
        return self.fit(schema, n, beta, np.diag(a @ inverse @ a.T) * n, rss / n, tss / n)

    def fit(self, schema: Schema, n: float, beta: np.ndarray, spread: np.ndarray,
            rss: float, tss: float) -> LinearFit:
        """The fit from the scaled design's coefficients, diag(A·(XᵀX/n)⁻¹·Aᵀ) with A the
        map to original units, and the residual and total sums of squares per row: all
        that MPC reveals."""
        design = self.design(schema)
        dof = round(n) - design.size
        r2 = 1.0 - rss / tss
        adj = 1.0 - (1.0 - r2) * (n - (1 if self.intercept else 0)) / dof
        center, half = self._outcome_scaling(schema)
        coef = half * (design.to_original() @ beta)
        if self.intercept:
            coef[0] += center
        se = half * np.sqrt(rss / dof * np.maximum(spread, 0.0))
        return LinearFit(design.names, coef, se, round(n), r2=float(r2), adj_r2=float(adj),
                         sigma=float(half * np.sqrt(n * rss / dof)), dof=dof)


@dataclass(frozen=True)
class LogisticState:
    """Public state between Newton rounds: the round number and coefficients (scaled)."""

    iteration: int
    beta: tuple[float, ...]


@dataclass(frozen=True)
class LogisticRegression(Regression):
    """Logistic regression of a boolean outcome, by federated Newton–Raphson (IRLS).

    Each round the sites sum, at the current public coefficients, the gradient
    Σ(y - μ)x, the Hessian Σμ(1 - μ)xxᵀ and the log-likelihood; the coefficients of
    every round are public, as in DataSHIELD's federated GLM. Rounds stop when no
    coefficient (on the scaled design) moves more than `tol`, or after `max_iter`.
    """

    max_iter: int = 25
    tol: float = 1e-8

    def check(self, schema: Schema) -> None:
        super().check(schema)
        if not isinstance(schema[self.outcome], Boolean):
            raise QueryError(f"{self.describe()}: the outcome {self.outcome!r} must be boolean")
        if not 1 <= self.max_iter <= 1000 or not self.tol > 0:
            raise QueryError(f"{self.describe()}: max_iter must be in [1, 1000], tol > 0")

    @property
    def max_rounds(self) -> int:
        return self.max_iter

    def initial_state(self, schema: Schema) -> LogisticState:
        return LogisticState(0, (0.0,) * self.design(schema).size)

    def steering(self, state: State) -> float:
        """The largest coefficient of the round: weights μ(1 − μ) of rows whose scaled
        terms differ by d differ by a factor of at most e^(steering·d)."""
        return float(np.max(np.abs(state.beta), initial=0.0)) if state is not None else 0.0

    def check_state(self, schema: Schema, state: State) -> None:
        """A LogisticState of an iteration before `max_iter`, with one finite coefficient
        per term of the design."""
        p = self.design(schema).size
        check_iteration(self, state, LogisticState, self.max_iter)
        beta = state.beta
        if not (isinstance(beta, tuple | list) and len(beta) == p and all(
                isinstance(b, int | float) and not isinstance(b, bool) and np.isfinite(b)
                for b in beta)):
            raise QueryError(f"{self.describe()}: the state's beta must be {p} finite numbers")

    def undetermined(self, parts: dict[str, np.ndarray], schema: Schema,
                     state: State) -> LogisticFit:
        names, nan = self.unknown(schema)
        return LogisticFit(names, nan, nan.copy(), max(round(parts["n"][0]), 0),
                           log_likelihood=np.nan, iterations=state.iteration + 1,
                           converged=False)

    def blocks(self, schema: Schema, state: State) -> tuple[Block, ...]:
        p = self.design(schema).size
        hessian = Block.sums("hessian", p * (p + 1) // 2, bound=0.25)
        return (Block.sums("gradient", p), hessian,
                Block.sums("log_likelihood", 1, bound=-LOG_FLOOR))

    def accumulate(self, data: dict[str, np.ndarray], schema: Schema,
                   state: State) -> dict[str, np.ndarray]:
        x = model_matrix(self.design(schema), schema, self.predictors, data)
        y = data[self.outcome]
        eta = x @ np.asarray(state.beta)
        log_mu = -np.logaddexp(0, -eta)  # log μ, stable for any η
        mu = np.exp(log_mu)
        log_not_mu = np.maximum(log_mu - eta, LOG_FLOOR)  # log(1 - μ) = log μ - η
        log_mu = np.maximum(log_mu, LOG_FLOOR)
        return {
            "gradient": x.T @ (y - mu),
            "hessian": gram_upper(x * np.sqrt(mu * (1 - mu))[:, None]),
            "log_likelihood": np.array([y @ log_mu + (1 - y) @ log_not_mu]),
        }

    def conclude(self, parts: dict[str, np.ndarray], errors: dict[str, np.ndarray],
                 schema: Schema, state: State) -> LogisticFit | Next:
        """Newton step; converged once the step is below `tol` or below what the
        gradient's aggregation error alone could cause (then more rounds cannot help)."""
        return self._step(parts, schema, state, float(np.max(errors["gradient"], initial=0)))

    def answer(self, parts: dict[str, np.ndarray], schema: Schema,
               state: State) -> LogisticFit | Next:
        return self._step(parts, schema, state, 0.0)

    def _step(self, parts: dict[str, np.ndarray], schema: Schema, state: State,
              gradient_error: float) -> LogisticFit | Next:
        design = self.design(schema)
        step, inverse = self.solve(from_upper_triangle(parts["hessian"], design.size),
                                   parts["gradient"])
        beta = np.asarray(state.beta) + step
        noise_floor = 2 * np.max(np.abs(inverse).sum(axis=1)) * gradient_error
        converged = bool(np.max(np.abs(step)) < max(self.tol, noise_floor))
        if not converged and state.iteration + 1 < self.max_iter:
            return Next(LogisticState(state.iteration + 1, tuple(beta.tolist())))
        a = design.to_original()
        return LogisticFit(design.names, a @ beta, np.sqrt(np.diag(a @ inverse @ a.T)),
                           round(parts["n"][0]),
                           log_likelihood=float(parts["log_likelihood"][0]),
                           iterations=state.iteration + 1, converged=converged)
