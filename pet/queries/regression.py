"""Linear regression (one round of XᵀX, Xᵀy, yᵀy), and logistic and Poisson regression
(generalized linear models by federated Newton–Raphson: each round sums the gradient and
Hessian at public coefficients).

Predictors are mapped onto [-1, 1] with their public bounds before any sum is taken (a
categorical predictor becomes 0/1 indicators, its first category the reference), so each
row adds at most 1 to every element; coefficients and standard errors are mapped back
to the columns' own units exactly.

Under DP the revealed sums carry noise of known standard deviation, and both models
answer anyway (post-processing only, no extra budget): linear regression by noisy
sufficient statistics with an adaptive ridge (AdaSSP, Wang 2018), the Newton fits by a
fixed number of noisy Newton rounds that split the query's budget. Each fit then says
how far the noise alone may have moved its coefficients (`Fit.noise_se`).
"""

from __future__ import annotations

import math
from abc import abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from scipy import special

from pet.errors import QueryError
from pet.intervals import Interval, Spread
from pet.layout import Block
from pet.queries.base import (
    Next,
    Query,
    State,
    affine,
    check_iteration,
    from_upper_triangle,
    gram_upper,
    whole,
)
from pet.schema import Boolean, Categorical, Continuous, Integer, Schema, TimeToEvent

if TYPE_CHECKING:
    import pandas as pd

LOG_FLOOR = float(np.log(1e-12))
"""Per-row log-likelihood floor (probabilities clipped at 1e-12), so its sum is bounded."""

NOISE_NORM_MISS = 0.01
"""Probability that the DP noise of a summed matrix outgrows `noise_norm`: the ridge of a
noisy linear fit and the eigenvalue floor of a noisy Hessian leave the true matrix
positive semi-definite but for this chance (in simulation the bound holds far more often:
its concentration step is loose)."""

COEFFICIENT_BOX = 10.0
"""Under DP, the largest coefficient a noisy Newton step may reach on the scaled design.
A term spans [-1, 1] there, so 10 lets one term move the log-odds by 20 across its range
(an odds ratio of 5·10⁸, far beyond any clinical association, and well inside the 30 that
sites' disclosure control accepts in a round state): an honest fit never meets it, and a
step that noise throws further is pulled back instead of running away."""

DP_ROUND_GROWTH = 2.0
"""Ratio of one noisy Newton round's share of the budget to the previous one's."""


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
    """Fitted coefficients with standard errors, in the columns' own units.

    `se` is the sampling standard error (what another sample of patients would change);
    `noise_se` the standard deviation of each coefficient due to the DP noise on the
    sums it was fitted from (what another draw of the noise would change; zeros for an
    exact backend, None is read as zeros). The two are independent, so inference uses
    √(se² + noise_se²).
    """

    names: tuple[str, ...]
    coef: np.ndarray
    se: np.ndarray
    n: int
    noise_se: np.ndarray | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        if self.noise_se is None:
            object.__setattr__(self, "noise_se", np.zeros(np.shape(self.coef)))

    def total_se(self) -> np.ndarray:
        """Standard error from sampling and DP noise together."""
        return np.hypot(self.se, self.noise_se)

    def statistic(self) -> np.ndarray:
        """Coefficient divided by its (total) standard error."""
        return self.coef / self.total_se()

    def pvalues(self) -> np.ndarray:
        """Two-sided p-values (normal reference)."""
        return 2 * special.ndtr(-np.abs(self.statistic()))

    def noise_interval(self, confidence: float = 0.95) -> Interval:
        """Where the exact (noise-free) fit's coefficients lie: coef ± z·noise_se, to first
        order in the noise (see the models' `noise_se`); the point itself without DP.
        It leaves out the shrinkage of a fit whose noise swamped its data in some
        direction (a linear fit's `ridge` > 0, a logistic fit not `converged`), so there
        it holds the exact fit less often than it says."""
        half = special.ndtri(0.5 + confidence / 2) * np.asarray(self.noise_se)
        return self.coef - half, self.coef + half

    def table(self) -> pd.DataFrame:
        """Coefficients, standard errors (sampling, DP noise), statistics, p-values and 95%
        intervals that allow for both."""
        import pandas as pd  # here: reading a query needs no pandas

        z = special.ndtri(0.975)
        total = self.total_se()
        return pd.DataFrame(
            {"coef": self.coef, "se": self.se, "noise_se": self.noise_se,
             "statistic": self.statistic(), "p": self.pvalues(),
             "ci_low": self.coef - z * total, "ci_high": self.coef + z * total},
            index=list(self.names),
        )

    def ratios(self, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """exp(coef) and the exponentiated ends of its confidence interval (from the total
        SE): ratios for models on a log scale; an interval too wide for a float ends at
        inf."""
        z = special.ndtri(0.5 + confidence / 2)
        total = self.total_se()
        with np.errstate(over="ignore"):
            return (np.exp(self.coef), np.exp(self.coef - z * total),
                    np.exp(self.coef + z * total))

    def exponentiated(self, label: str, confidence: float = 0.95) -> pd.DataFrame:
        """`ratios` as a table: column `label`, then `ci_low` and `ci_high`, per term."""
        import pandas as pd

        ratio, low, high = self.ratios(confidence)
        return pd.DataFrame({label: ratio, "ci_low": low, "ci_high": high},
                            index=list(self.names))


@dataclass(frozen=True)
class LinearFit(Fit):
    """Ordinary least squares fit: also R², adjusted R² and the residual standard error.
    `ridge` is the λ a noisy fit added to the diagonal of the scaled XᵀX (0: plain least
    squares; see `LinearRegression.conclude`)."""

    r2: float
    adj_r2: float
    sigma: float
    dof: int
    ridge: float = field(default=0.0, kw_only=True)

    def pvalues(self) -> np.ndarray:
        """Two-sided p-values from Student's t with the residual degrees of freedom."""
        return 2 * special.stdtr(self.dof, -np.abs(self.statistic()))


@dataclass(frozen=True)
class GLMFit(Fit):
    """A generalized linear model fitted by Newton–Raphson: also the log-likelihood at the
    last round's coefficients and convergence."""

    log_likelihood: float
    iterations: int
    converged: bool


@dataclass(frozen=True)
class LogisticFit(GLMFit):
    """Logistic fit by Newton–Raphson: coefficients are log odds ratios."""


@dataclass(frozen=True)
class PoissonFit(GLMFit):
    """Poisson fit by Newton–Raphson: coefficients are log rate ratios (the intercept the
    log rate per unit of exposure at the reference). `robust` says whether `se` is the
    sandwich (HC0) standard error rather than the model-based one."""

    robust: bool = field(default=False, kw_only=True)

    def rate_ratios(self, confidence: float = 0.95) -> pd.DataFrame:
        """exp(coef) with its confidence interval, per term (the intercept's row is the
        reference rate per unit of exposure)."""
        return self.exponentiated("rate_ratio", confidence)


@dataclass(frozen=True)
class Regression(Query):
    """Shared parts of regressions: the outcome, predictors and the design."""

    outcome: str
    predictors: tuple[str, ...]
    intercept: bool = True

    n_weight: ClassVar[float] = 0.1
    """n enters a fit only through the degrees of freedom and the total sum of squares
    (the intercept's diagonal of XᵀX carries its own count), but a noisy n below
    `min_rows` leaves the fit undetermined: a tenth of the weight keeps that rare for a
    few hundred rows at ε = 1 (1.4% of lung's logistic runs under three sites' local
    noise, nearly all in the first round, which has 1/15 of the budget)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "predictors", tuple(self.predictors))

    def numbers(self, answer: Any) -> np.ndarray:
        """A fit's numbers are its coefficients."""
        return np.asarray(answer.coef) if isinstance(answer, Fit) else super().numbers(answer)

    def interval(self, total: np.ndarray, spread: Spread, schema: Schema, state: State,
                 answer: Any) -> Interval | None:
        """A fit's noise-only interval (`Fit.noise_interval`, from its analytic `noise_se`)
        under Gaussian noise; Laplace noise (local pure-ε DP), whose sums have heavier
        tails than a normal, takes the base's exact quantile of the linearised noise."""
        if isinstance(answer, Fit) and spread.kind == "gaussian":
            return answer.noise_interval()
        return super().interval(total, spread, schema, state, answer)

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


def noise_norm(sd: np.ndarray, p: int) -> float:
    """τ: a bound on the spectral norm of the DP noise E of a summed symmetric p × p
    matrix whose upper-triangle elements carry independent noise of standard deviation at
    most s = max(sd), exceeded with probability below `NOISE_NORM_MISS`.

    E‖E‖ ≤ 2s√p (the semicircle's edge for a Gaussian Wigner matrix, whose diagonal here
    has no more variance than the GOE's; simulated means stay below it for p ≤ 20), and
    ‖E‖ is √2·s-Lipschitz in the standard normal draws, so
    P(‖E‖ ≥ 2s√p + t) ≤ 2·exp(−t²/4s²): τ = s·(2√p + 2√log(2/α)) (Gaussian
    concentration; for Laplace noise of the same SD the first term still holds on average
    and the tail is an approximation)."""
    s = float(np.max(sd, initial=0.0))
    return s * (2 * np.sqrt(p) + 2 * np.sqrt(np.log(2 / NOISE_NORM_MISS)))


def noise_covariance(inverse: np.ndarray, vector_sd: np.ndarray, matrix_sd: np.ndarray,
                     solution: np.ndarray) -> np.ndarray:
    """Covariance of x = M⁻¹·b to first order in independent noise on b (per element SD
    `vector_sd`) and on the upper triangle of the symmetric M (SD `matrix_sd`, in
    `gram_upper`'s order): dx = M⁻¹(db − dM·x), where an off-diagonal element's noise
    appears twice in dM, at (i, j) and (j, i)."""
    p = len(solution)
    rows, cols = np.triu_indices(p)
    element = np.arange(len(rows))
    jacobian = np.zeros((p, len(rows)))  # ∂(dM·x)/∂(each upper element's noise)
    jacobian[rows, element] = solution[cols]
    off = rows != cols
    jacobian[cols[off], element[off]] = solution[rows[off]]
    inner = np.diag(np.broadcast_to(vector_sd, p) ** 2) + (
        jacobian * np.broadcast_to(matrix_sd, len(rows)) ** 2) @ jacobian.T
    return inverse @ inner @ inverse.T


@dataclass(frozen=True)
class LinearRegression(Regression):
    """Ordinary least squares of a numeric outcome on predictors."""

    def check(self, schema: Schema) -> None:
        super().check(schema)
        if isinstance(schema[self.outcome], Categorical):
            raise QueryError(f"{self.describe()}: the outcome {self.outcome!r} must be numeric")

    def blocks(self, schema: Schema, state: State) -> tuple[Block, ...]:
        """XᵀX (upper triangle), Xᵀy and yᵀy. Under DP a coefficient moves by
        (XᵀX)⁻¹(dXᵀy − dXᵀX·β): per unit of noise variance XᵀX and Xᵀy weigh alike for
        coefficients of order 1 on the scaled design (terms that span the outcome's
        range), and XᵀX's noise also sets the ridge a small cohort needs. yᵀy only enters
        the residual variance (σ, R², the sampling SEs), where n rows' spread soon
        dwarfs its noise: a tenth of the weight."""
        p = self.design(schema).size
        return (Block.sums("xtx", p * (p + 1) // 2), Block.sums("xty", p),
                Block.sums("yty", 1, weight=0.1))

    def undetermined(self, parts: dict[str, np.ndarray], schema: Schema,
                     state: State) -> LinearFit:
        names, nan = self.unknown(schema)
        return LinearFit(names, nan, nan.copy(), max(round(parts["n"][0]), 0), r2=np.nan,
                         adj_r2=np.nan, sigma=np.nan, dof=0, noise_se=nan.copy())

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

    def conclude(self, parts: dict[str, np.ndarray], errors: dict[str, np.ndarray],
                 schema: Schema, state: State,
                 noise: dict[str, np.ndarray] | None = None) -> LinearFit:
        """Least squares from exact sums (`answer`, which refuses a singular system); from
        DP-noised sums, noisy sufficient statistics with an adaptive ridge, never refused.

        AdaSSP (Wang 2018, "Revisiting differentially private linear regression", Alg. 2)
        releases XᵀX, Xᵀy and the smallest eigenvalue of XᵀX privately and solves
        (XᵀX̃ + λI)β = Xᵀỹ with λ just large enough that the noise cannot make the system
        indefinite. Here the sites release only the noisy sums, so the eigenvalue is read
        off the noisy matrix itself and the noise's spectral norm is bounded from its known
        standard deviation (`noise_norm`, τ): λ = max(0, τ − λ_min(XᵀX̃)). The system's
        smallest eigenvalue is then at least τ, so the exact XᵀX + λI is positive
        semi-definite too but for a chance of `NOISE_NORM_MISS`; a cohort whose noisy
        matrix is already that far from singular gets λ = 0 and no bias. All of it is
        post-processing: no budget beyond the release's. R² and σ come from the noisy
        sums, clipped to their ranges (0 ≤ RSS ≤ TSS), and `noise_se` from
        `noise_covariance` (first order in the noise). With λ > 0 the ridge shrinks the
        coefficients by an amount no SE can state (on 300 rows a site at ε = 1, a 95%
        interval that ignores it held the exact fit 17–88% of the time, and a parametric
        bootstrap no better): the fit then has no `noise_se` (NaN) and no interval."""
        if noise is None:
            return self.answer(parts, schema, state)
        design = self.design(schema)
        p, n = design.size, parts["n"][0]
        xty, yty = parts["xty"], parts["yty"][0]
        matrix = from_upper_triangle(parts["xtx"], p)
        values, vectors = np.linalg.eigh(matrix)
        ridge = max(0.0, noise_norm(noise["xtx"], p) - float(values[0]))
        inverse = (vectors / (values + ridge)) @ vectors.T
        beta = inverse @ xty
        tss = max(yty - xty[0] ** 2 / n if self.intercept else yty, 0.0)
        rss = min(max(yty - 2 * beta @ xty + beta @ matrix @ beta, 0.0), tss)
        a = design.to_original()
        half = self._outcome_scaling(schema)[1]
        covariance = a @ noise_covariance(inverse, noise["xty"], noise["xtx"], beta) @ a.T
        noise_se = half * np.sqrt(np.maximum(np.diag(covariance), 0.0))
        # (XᵀX̃ + λI)⁻¹ for the sampling SEs: it bounds the ridge's sandwich
        # M⁻¹·XᵀX̃·M⁻¹ from above, as XᵀX̃ ≤ M = XᵀX̃ + λI.
        return self.fit(schema, n, beta, np.diag(a @ inverse @ a.T) * n, rss / n, tss / n,
                        noise_se=noise_se if ridge == 0 else np.full(p, np.nan),
                        ridge=ridge)

    def fit(self, schema: Schema, n: float, beta: np.ndarray, spread: np.ndarray,
            rss: float, tss: float, *, noise_se: np.ndarray | None = None,
            ridge: float = 0.0) -> LinearFit:
        """The fit from the scaled design's coefficients, diag(A·(XᵀX/n)⁻¹·Aᵀ) with A the
        map to original units, and the residual and total sums of squares per row: all
        that MPC reveals (a DP fit adds its noise SDs and ridge)."""
        design = self.design(schema)
        dof = round(n) - design.size
        rss = max(rss, 0.0)  # a perfect fit's, computed as a difference, may dip below 0
        # the mean alone explains nothing by definition (the two sums differ by rounding)
        r2 = (0.0 if self.intercept and design.size == 1
              else 1.0 - rss / tss if tss > 0 else np.nan)
        adj = 1.0 - (1.0 - r2) * (n - (1 if self.intercept else 0)) / dof
        center, half = self._outcome_scaling(schema)
        coef = half * (design.to_original() @ beta)
        if self.intercept:
            coef[0] += center
        se = half * np.sqrt(rss / dof * np.maximum(spread, 0.0))
        return LinearFit(design.names, coef, se, round(n), r2=float(r2), adj_r2=float(adj),
                         sigma=float(half * np.sqrt(n * rss / dof)), dof=dof,
                         noise_se=noise_se, ridge=ridge)


@dataclass(frozen=True)
class NewtonState:
    """Public state between Newton rounds: the round number and coefficients (scaled)."""

    iteration: int
    beta: tuple[float, ...]


@dataclass(frozen=True)
class LogisticState(NewtonState):
    """A logistic regression's state between Newton rounds."""


@dataclass(frozen=True)
class PoissonState(NewtonState):
    """A Poisson regression's state between Newton rounds."""


@dataclass(frozen=True)
class NewtonRegression(Regression):
    """A generalized linear model fitted by federated Newton–Raphson (IRLS).

    Each round the sites sum, at the current public coefficients, the gradient of the
    log-likelihood, its negative Hessian (upper triangle) and the log-likelihood itself;
    the coefficients of every round are public, as in DataSHIELD's federated GLM. Rounds
    stop when no coefficient (on the scaled design) moves more than `tol`, or after
    `max_iter`. A model family says what one row adds (`accumulate`) and at most how much
    (`row_bounds`), and how a step moves the coefficients (`advance`).

    Under DP the run takes exactly `dp_rounds` rounds (at most `max_iter`), which split
    the query's one budget (`round_share`), and answers with the last round's fit: see
    `conclude`.
    """

    max_iter: int = 25
    tol: float = 1e-8
    dp_rounds: int = 4

    state_type: ClassVar[type[NewtonState]] = NewtonState
    fit_type: ClassVar[type[GLMFit]] = GLMFit
    min_dp_rounds: ClassVar[int] = 1
    """Fewest rounds a DP run may take."""

    # Hooks of a model family.

    @abstractmethod
    def row_bounds(self, schema: Schema, state: State) -> tuple[float, float]:
        """The most one row adds to an element of the Hessian and to the log-likelihood
        (its gradient terms are at most 1) at the round's state."""

    def extra_blocks(self, schema: Schema, state: State, last: bool) -> tuple[Block, ...]:
        """Blocks the family adds after the Hessian (`last`: the final round of a DP run)."""
        return ()

    def information_scale(self, schema: Schema, state: State) -> float:
        """The public factor every row's gradient and Hessian terms were multiplied by: the
        inverse of the summed Hessian times it is the coefficients' covariance."""
        return 1.0

    def covariance(self, parts: dict[str, np.ndarray], schema: Schema, state: State,
                   inverse: np.ndarray) -> np.ndarray:
        """The coefficients' covariance on the scaled design, from the inverse of the
        round's summed Hessian."""
        return self.information_scale(schema, state) * inverse

    def advance(self, schema: Schema, state: State, step: np.ndarray) -> np.ndarray:
        """The next coefficients from the round's Newton step: β + step."""
        return np.asarray(state.beta, dtype=np.float64) + step

    def advance_error(self, schema: Schema, state: State, step: np.ndarray,
                      error: float) -> float:
        """How far `advance` can move the next coefficients when each element of the step
        is off by at most `error` (MPC's bound on its solve)."""
        return error

    def box(self, schema: Schema) -> np.ndarray:
        """Under DP, the largest magnitude each scaled coefficient may reach."""
        return np.full(self.design(schema).size, COEFFICIENT_BOX)

    def fit_options(self) -> dict[str, Any]:
        """Fields the family's fit takes beyond those every GLM fit has."""
        return {}

    # The shared Newton machinery.

    def check(self, schema: Schema) -> None:
        super().check(schema)
        if not 1 <= self.max_iter <= 1000 or not self.tol > 0:
            raise QueryError(f"{self.describe()}: max_iter must be in [1, 1000], tol > 0")
        least = self.min_dp_rounds
        if not (whole(self.dp_rounds) and least <= self.dp_rounds <= 1000):
            raise QueryError(f"{self.describe()}: dp_rounds must be a whole number in "
                             f"[{least}, 1000], got {self.dp_rounds!r}")

    @property
    def max_rounds(self) -> int:
        return self.max_iter

    @property
    def noisy_rounds(self) -> int:
        """Rounds a DP run takes: `dp_rounds`, or `max_iter` where that caps every run."""
        return min(self.dp_rounds, self.max_iter)

    def round_share(self, state: State) -> float:
        """Round i of a DP run spends 2^i/(2^k − 1) of the budget (k = `noisy_rounds`;
        1, 2, 4, 8 fifteenths for k = 4), nothing after round k.

        The answer carries the last round's noise in full, to first order, but earlier
        rounds' only through the distance they leave to the maximum (which a Newton
        step squares): so the last round gets most (8/15, a noise SD 1.37 times that of a
        single round with the whole budget, where an even split gives 2 times), and the
        first, whose step from zero is of the size of the coefficients themselves, still
        gets enough to head the right way."""
        k, i = self.noisy_rounds, state.iteration
        if i >= k:
            return 0.0
        growth = DP_ROUND_GROWTH
        return growth**i * (growth - 1) / (growth**k - 1)

    def initial_state(self, schema: Schema) -> NewtonState:
        return self.state_type(0, (0.0,) * self.design(schema).size)

    def steering(self, state: State) -> float:
        """The largest coefficient of the round: weights μ(1 − μ) of rows whose scaled
        terms differ by d differ by a factor of at most e^(steering·d)."""
        return float(np.max(np.abs(state.beta), initial=0.0)) if state is not None else 0.0

    def check_state(self, schema: Schema, state: State) -> None:
        """A state of this family of an iteration before `max_iter`, with one finite
        coefficient per term of the design."""
        p = self.design(schema).size
        check_iteration(self, state, self.state_type, self.max_iter)
        beta = state.beta
        if not (isinstance(beta, tuple | list) and len(beta) == p and all(
                isinstance(b, int | float) and not isinstance(b, bool) and _finite(b)
                for b in beta)):
            raise QueryError(f"{self.describe()}: the state's beta must be {p} finite numbers")

    def undetermined(self, parts: dict[str, np.ndarray], schema: Schema,
                     state: State) -> GLMFit:
        names, nan = self.unknown(schema)
        return self.fit_type(names, nan, nan.copy(), max(round(parts["n"][0]), 0),
                             log_likelihood=np.nan, iterations=state.iteration + 1,
                             converged=False, noise_se=nan.copy(), **self.fit_options())

    def blocks(self, schema: Schema, state: State) -> tuple[Block, ...]:
        """Gradient, Hessian (upper triangle), the family's own blocks and the
        log-likelihood at the round's state. Under DP a step moves by H⁻¹(dg − dH·step):
        gradient and Hessian noise weigh alike while steps are of order 1, and the last
        round's Hessian gives the SEs. The log-likelihood never steers the fit and only
        the last DP round's is reported, yet one row may move it by tens of units (see
        `row_bounds`): a weight of 10⁻⁵ there (about 3% of that round's budget for a
        logistic fit) and 10⁻⁷ before (0.3%)."""
        p = self.design(schema).size
        last = state is not None and state.iteration + 1 >= self.noisy_rounds
        hessian, log_likelihood = self.row_bounds(schema, state)
        return (Block.sums("gradient", p),
                Block.sums("hessian", p * (p + 1) // 2, bound=hessian),
                *self.extra_blocks(schema, state, last),
                Block.sums("log_likelihood", 1, bound=log_likelihood,
                           weight=1e-5 if last else 1e-7))

    def conclude(self, parts: dict[str, np.ndarray], errors: dict[str, np.ndarray],
                 schema: Schema, state: State,
                 noise: dict[str, np.ndarray] | None = None) -> GLMFit | Next:
        """Without DP noise, a Newton step; converged once the step is below `tol` or
        below what the gradient's aggregation error alone could cause (then more rounds
        cannot help). With DP noise, a noisy Newton step (`_noisy_step`)."""
        if noise is not None:
            return self._noisy_step(parts, schema, state, noise)
        return self._step(parts, schema, state, float(np.max(errors["gradient"], initial=0)))

    def answer(self, parts: dict[str, np.ndarray], schema: Schema,
               state: State) -> GLMFit | Next:
        return self._step(parts, schema, state, 0.0)

    def make_fit(self, schema: Schema, state: State, beta: np.ndarray, se: np.ndarray,
                 n: float, log_likelihood: float, converged: bool, *,
                 noise_se: np.ndarray | None = None) -> GLMFit:
        """The fit in the columns' units from the scaled design's coefficients and the
        standard errors (already in those units): all that MPC reveals."""
        design = self.design(schema)
        return self.fit_type(design.names, design.to_original() @ beta, se, round(n),
                             log_likelihood=log_likelihood, iterations=state.iteration + 1,
                             converged=converged, noise_se=noise_se, **self.fit_options())

    def _fit(self, parts: dict[str, np.ndarray], schema: Schema, state: State,
             beta: np.ndarray, inverse: np.ndarray, converged: bool,
             noise_se: np.ndarray | None = None) -> GLMFit:
        a = self.design(schema).to_original()
        covariance = a @ self.covariance(parts, schema, state, inverse) @ a.T
        return self.make_fit(schema, state, beta, np.sqrt(np.maximum(np.diag(covariance), 0.0)),
                             parts["n"][0], float(parts["log_likelihood"][0]), converged,
                             noise_se=noise_se)

    def _step(self, parts: dict[str, np.ndarray], schema: Schema, state: State,
              gradient_error: float) -> GLMFit | Next:
        design = self.design(schema)
        step, inverse = self.solve(from_upper_triangle(parts["hessian"], design.size),
                                   parts["gradient"])
        beta = self.advance(schema, state, step)
        noise_floor = 2 * np.max(np.abs(inverse).sum(axis=1)) * gradient_error
        converged = bool(np.max(np.abs(step)) < max(self.tol, noise_floor))
        if not converged and state.iteration + 1 < self.max_iter:
            return Next(self.state_type(state.iteration + 1, tuple(beta.tolist())))
        return self._fit(parts, schema, state, beta, inverse, converged)

    def _noisy_step(self, parts: dict[str, np.ndarray], schema: Schema, state: State,
                    noise: dict[str, np.ndarray]) -> GLMFit | Next:
        """A Newton step from DP-noised sums, never refused (post-processing only).

        The noisy Hessian is projected onto the positive definite matrices with its
        eigenvalues floored at τ (`noise_norm`: what its noise could have taken away), so
        no direction the noise flattened takes an unbounded step; the coefficients are
        then kept in the public `box`. After `noisy_rounds` rounds the step's result is
        the fit, whose `noise_se` is the delta method on this last step alone:
        dβ = H⁻¹(dg − dH·step). That neglects the earlier rounds' noise, which reaches
        the answer only through the distance the round's state is from the maximum — the
        Newton map's derivative vanishes there, so to second order — and the same
        distance's own effect on the step (Newton's quadratic error), and treats floor,
        box and `advance` as inactive.

        `converged` says that the floor left the last Hessian alone and the last step is
        within what noise explains: twice the SD of its own noise and of the previous
        round's (which had 1/`DP_ROUND_GROWTH` of its budget) together. A floored
        Hessian means the noise swamps the data in some direction: the coefficients are
        shrunk there by an amount no SE can state, so the fit then has no `noise_se`
        (NaN) and no interval, rather than one that would hold the exact fit too rarely."""
        design = self.design(schema)
        p = design.size
        values, vectors = np.linalg.eigh(from_upper_triangle(parts["hessian"], p))
        floor = noise_norm(noise["hessian"], p)
        floored = bool(values[0] < floor)
        values = np.maximum(values, floor)
        inverse = (vectors / values) @ vectors.T
        step = inverse @ parts["gradient"]
        box = self.box(schema)
        beta = np.clip(self.advance(schema, state, step), -box, box)
        if state.iteration + 1 < self.noisy_rounds:
            return Next(self.state_type(state.iteration + 1, tuple(beta.tolist())))
        scaled = noise_covariance(inverse, noise["gradient"], noise["hessian"], step)
        step_sd = np.sqrt(np.maximum(np.diag(scaled), 0.0))
        a = design.to_original()
        converged = not floored and bool(np.all(
            np.abs(step) <= 2 * np.sqrt(1 + DP_ROUND_GROWTH) * step_sd))
        noise_se = (np.full(p, np.nan) if floored else
                    np.sqrt(np.maximum(np.diag(a @ scaled @ a.T), 0.0)))
        return self._fit(parts, schema, state, beta, inverse, converged, noise_se)


@dataclass(frozen=True)
class LogisticRegression(NewtonRegression):
    """Logistic regression of a boolean outcome, by federated Newton–Raphson (IRLS): each
    round sums the gradient Σ(y - μ)x, the Hessian Σμ(1 - μ)xxᵀ and the log-likelihood
    (see `NewtonRegression`)."""

    state_type: ClassVar[type[NewtonState]] = LogisticState
    fit_type: ClassVar[type[GLMFit]] = LogisticFit

    def check(self, schema: Schema) -> None:
        super().check(schema)
        if not isinstance(schema[self.outcome], Boolean):
            raise QueryError(f"{self.describe()}: the outcome {self.outcome!r} must be boolean")

    def row_bounds(self, schema: Schema, state: State) -> tuple[float, float]:
        """μ(1 − μ) ≤ 1/4, and each row's log-likelihood is floored at `LOG_FLOOR`."""
        return 0.25, -LOG_FLOOR

    def accumulate(self, data: dict[str, np.ndarray], schema: Schema,
                   state: State) -> dict[str, np.ndarray]:
        x = model_matrix(self.design(schema), schema, self.predictors, data)
        y = data[self.outcome]
        eta = x @ np.asarray(state.beta)
        log_mu = -np.logaddexp(0, -eta)  # log μ, stable for any η
        log_not_mu = log_mu - eta  # log(1 - μ)
        # 1 - μ from its own log, never as 1 minus μ: where μ is within 1e-12 of 1 the
        # difference would keep only 4 of its digits.
        mu, not_mu = np.exp(log_mu), np.exp(log_not_mu)
        return {
            "gradient": x.T @ (y * not_mu - (1 - y) * mu),
            "hessian": gram_upper(x * np.sqrt(mu * not_mu)[:, None]),
            "log_likelihood": np.array([y @ np.maximum(log_mu, LOG_FLOOR)
                                        + (1 - y) @ np.maximum(log_not_mu, LOG_FLOOR)]),
        }


def _finite(value: int | float) -> bool:
    """Whether a number from a peer is a finite double (an int beyond 2¹⁰²⁴ is not)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


STEP_LIMIT = 4.0
"""The most one Poisson Newton step may change any row's linear predictor: ‖Δβ‖₁ on the
scaled design, whose terms all lie in [-1, 1]. From far below the fit a full step
overshoots exponentially (from a rate of 1 towards one of 1000 per unit of exposure, the
first step moves the log rate by 999), so a longer step is shortened to this length, an
e⁴ ≈ 55-fold change of any rate in one round; near the fit steps are short and untouched,
so convergence stays quadratic."""

INTERCEPT_BOX = 30.0
"""Under DP, the largest log rate per unit of exposure (at the design's center) a noisy
Poisson step may reach: e^±30 spans every rate a unit of exposure plausibly carries (from
10⁻¹³ to 10¹³); the other coefficients keep `COEFFICIENT_BOX`."""


def term_ranges(design: Design, schema: Schema,
                predictors: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The least and greatest value of each term of `model_matrix` over the schema's public
    bounds: 1 for the intercept, [0, 1] for a category's indicator, a numeric column's
    bounds scaled as the design scales them (within [-1, 1])."""
    low, high = ([1.0], [1.0]) if design.names[:1] == ("intercept",) else ([], [])
    for name in predictors:
        column = schema[name]
        if isinstance(column, Categorical):
            low += [0.0] * (len(column.categories) - 1)
            high += [1.0] * (len(column.categories) - 1)
            continue
        term = len(low)
        lower, upper = column.bounds()
        low.append((lower - design.center[term]) / design.half[term])
        high.append((upper - design.center[term]) / design.half[term])
    return np.array(low), np.array(high)


def _shortened(step: np.ndarray) -> np.ndarray:
    """The step, scaled down to an L1 norm of at most `STEP_LIMIT`."""
    length = float(np.abs(step).sum())
    return step * (STEP_LIMIT / length) if length > STEP_LIMIT else step


@dataclass(frozen=True)
class PoissonRegression(NewtonRegression):
    """Poisson regression of a count on predictors with a log link: incidence rates per
    unit of `exposure` (a positive numeric column, e.g. person-years, whose log is the
    offset), by federated Newton–Raphson (see `NewtonRegression`). Each round sums the
    gradient Σ(y − μ)x, the Hessian Σμxxᵀ, with `robust` the meat Σ(y − μ)²xxᵀ, and the
    log-likelihood Σ(y·log μ − μ − log y!), at μ = t·exp(xᵀβ).

    The outcome is a count: an integer column with lower bound ≥ 0, or a boolean (an
    event per row). With `robust` the standard errors are the sandwich H⁻¹MH⁻¹ (HC0, as
    statsmodels' `cov_type="HC0"`), valid when the counts are over- or under-dispersed.

    A row with exposure ≤ 0 (no person-time, so log t is undefined) is an error naming
    the column rather than a row silently dropped: a time-to-event column's public lower
    bound is 0, so the schema cannot rule it out. A filter such as `where="time > 0"`
    keeps such rows out up front; without one, a site holding one refuses, which tells
    the analyst that such a row exists there (data validation, as the schema's own
    checks of a table do).

    Bounds. μ has no bound of its own, so every row's gradient, Hessian and meat terms
    are multiplied by the public factor e^(−c), with c = max(log y_max, η_max) from the
    outcome's public upper bound y_max and the largest linear predictor any row can have
    at the round's public coefficients (`term_ranges`, plus the log of the exposure's
    upper bound): then |y − μ|·e^(−c) ≤ 1 and μ·e^(−c) ≤ 1. The Newton step
    H⁻¹g is unchanged by a common factor, the model covariance H⁻¹ is e^(−c) times the
    scaled sums' inverse, and the sandwich's factors cancel (H and M scale by e^(−c) and
    e^(−2c)). The log-likelihood is left in its units with log μ floored at `LOG_FLOOR`,
    and bounded by y_max·max(|LOG_FLOOR|, |η_max|) + e^(η_max) + log(y_max!): where that
    is not a finite number (an outcome bound near the float range) the query is refused,
    as no noise or fixed-point range could cover one row.
    """

    exposure: str | None = field(default=None, kw_only=True)
    robust: bool = field(default=False, kw_only=True)

    state_type: ClassVar[type[NewtonState]] = PoissonState
    fit_type: ClassVar[type[GLMFit]] = PoissonFit
    min_dp_rounds: ClassVar[int] = 2
    """A DP run's first round only finds the rates' level (see `_log_linear_start`)."""

    def inputs(self) -> tuple[str, ...]:
        return (*super().inputs(), *([self.exposure] if self.exposure is not None else []))

    def check(self, schema: Schema) -> None:
        super().check(schema)
        outcome = schema[self.outcome]
        if not (isinstance(outcome, Boolean) or (
                isinstance(outcome, Integer) and outcome.bounds()[0] >= 0)):
            raise QueryError(f"{self.describe()}: the outcome {self.outcome!r} must be a "
                             "count: an integer column with lower bound >= 0, or boolean; it "
                             f"is {outcome.kind} with bounds {list(outcome.bounds())}")
        if self.exposure is not None:
            self._check_exposure(schema)
        if not isinstance(self.robust, bool):
            raise QueryError(f"{self.describe()}: robust must be true or false")
        self.row_bounds(schema, self.initial_state(schema))

    def _check_exposure(self, schema: Schema) -> None:
        if self.exposure in (self.outcome, *self.predictors):
            raise QueryError(f"{self.describe()}: the exposure {self.exposure!r} cannot also "
                             "be the outcome or a predictor")
        column = schema[self.exposure]
        if not isinstance(column, Continuous | TimeToEvent):
            raise QueryError(f"{self.describe()}: the exposure {self.exposure!r} must be "
                             f"numeric person-time, not {column.kind}")
        if column.bounds()[1] <= 0:
            raise QueryError(f"{self.describe()}: the exposure {self.exposure!r} has upper "
                             f"bound {column.bounds()[1]:g}; person-time must be positive")

    def steering(self, state: State) -> float:
        """The largest coefficient but the intercept's: rows' weights μ differ by at most
        e^(steering·d) between rows whose terms differ by d; the intercept weighs every
        row alike, and the offset is the rows' own person-time."""
        if state is None:
            return 0.0
        slopes = state.beta[1:] if self.intercept else state.beta
        return float(np.max(np.abs(slopes), initial=0.0))

    def box(self, schema: Schema) -> np.ndarray:
        box = super().box(schema)
        if self.intercept:
            box[0] = INTERCEPT_BOX
        return box

    def fit_options(self) -> dict[str, Any]:
        return {"robust": self.robust}

    def _max_offset(self, schema: Schema) -> float:
        """The largest offset: the log of the exposure's upper bound (0 without one)."""
        return 0.0 if self.exposure is None else float(np.log(schema[self.exposure].bounds()[1]))

    def _max_eta(self, schema: Schema, state: State) -> float:
        """The largest linear predictor any row can have at the state: each term at the
        end of its public range that raises it, plus the largest offset."""
        low, high = term_ranges(self.design(schema), schema, self.predictors)
        beta = np.asarray(state.beta, dtype=np.float64)
        return float(np.maximum(beta * low, beta * high).sum()) + self._max_offset(schema)

    def _normaliser(self, schema: Schema, state: State) -> float:
        """c = max(log y_max, η_max): e^(−c) brings every row's |y − μ| and μ to at most 1."""
        return max(float(np.log(schema[self.outcome].bounds()[1])), self._max_eta(schema, state))

    def row_bounds(self, schema: Schema, state: State) -> tuple[float, float]:
        """μ·e^(−c) ≤ e^(η_max − c) for the Hessian; for the log-likelihood,
        y_max·max(|LOG_FLOOR|, |η_max|) + e^(η_max) + log(y_max!), refused unless finite."""
        eta = self._max_eta(schema, state)
        most = schema[self.outcome].bounds()[1]
        with np.errstate(over="ignore", invalid="ignore"):
            log_likelihood = (most * max(-LOG_FLOOR, abs(eta)) + np.exp(eta)
                              + special.gammaln(most + 1))
        if not np.isfinite(log_likelihood):
            raise QueryError(
                f"{self.describe()}: unbounded sensitivity: one row's log-likelihood term "
                f"has no finite bound (the outcome {self.outcome!r} reaches {most:g} and the "
                f"linear predictor {eta:g}), so no DP noise, HE scale or MPC range can cover "
                "it; narrow the outcome's bounds with clip")
        hessian = float(np.exp(max(eta - self._normaliser(schema, state), LOG_FLOOR)))
        return hessian, float(log_likelihood)

    def extra_blocks(self, schema: Schema, state: State, last: bool) -> tuple[Block, ...]:
        """With `robust`, the meat Σ(y − μ)²xxᵀ·e^(−2c) (at most 1 per row) in every
        round: an exact run's last round is known only once its step is small, and the
        sandwich needs that round's meat (one extra closing round would cost a round trip
        for p(p+1)/2 sums). Under DP only the last round's is used: a weight of 0.1
        there (it only enters the SEs, where n rows soon outweigh its noise), 10⁻⁷
        before."""
        if not self.robust:
            return ()
        p = self.design(schema).size
        return (Block.sums("meat", p * (p + 1) // 2, weight=0.1 if last else 1e-7),)

    def information_scale(self, schema: Schema, state: State) -> float:
        return float(np.exp(-self._normaliser(schema, state)))

    def covariance(self, parts: dict[str, np.ndarray], schema: Schema, state: State,
                   inverse: np.ndarray) -> np.ndarray:
        """Model-based, e^(−c) times the inverse; robust (HC0), the sandwich
        inverse·M·inverse of the scaled sums, in which the factors cancel. A noisy meat
        is first projected onto the positive semi-definite matrices."""
        if not self.robust:
            return super().covariance(parts, schema, state, inverse)
        values, vectors = np.linalg.eigh(from_upper_triangle(parts["meat"], len(inverse)))
        meat = (vectors * np.maximum(values, 0.0)) @ vectors.T
        return inverse @ meat @ inverse

    def accumulate(self, data: dict[str, np.ndarray], schema: Schema,
                   state: State) -> dict[str, np.ndarray]:
        x = model_matrix(self.design(schema), schema, self.predictors, data)
        y = data[self.outcome]
        eta = x @ np.asarray(state.beta) + self._offset(data)
        c = self._normaliser(schema, state)
        mu = np.exp(eta - c)
        residual = y * np.exp(-c) - mu
        parts = {
            "gradient": x.T @ residual,
            "hessian": gram_upper(x * np.sqrt(mu)[:, None]),
            "log_likelihood": np.array([y @ np.maximum(eta, LOG_FLOOR) - np.exp(eta).sum()
                                        - special.gammaln(y + 1).sum()]),
        }
        if self.robust:
            parts["meat"] = gram_upper(x * residual[:, None])
        return parts

    def _offset(self, data: dict[str, np.ndarray]) -> np.ndarray | float:
        """log t per row, or 0 without an exposure; refuses a row whose t is not positive."""
        if self.exposure is None:
            return 0.0
        time = data[self.exposure]
        if np.any(time <= 0):
            raise QueryError(f"{self.describe()}: the exposure {self.exposure!r} is <= 0 in "
                             f"a row; person-time must be positive (keep such rows out with "
                             f"where=\"{self.exposure} > 0\")")
        return np.log(time)

    def advance(self, schema: Schema, state: State, step: np.ndarray) -> np.ndarray:
        """The log-linear start from β = 0 (`_log_linear_start`); else β + step, the step
        shortened to `STEP_LIMIT`."""
        start = self._log_linear_start(state, step)
        if start is not None:
            return start
        return np.asarray(state.beta, dtype=np.float64) + _shortened(step)

    def advance_error(self, schema: Schema, state: State, step: np.ndarray,
                      error: float) -> float:
        """A step that no error within `error` can take past `STEP_LIMIT` is not shortened
        and moves by `error`; shortening moves a step by at most (p + 1) times its error
        (a radial scaling in the L1 norm); the log-linear start's log ℓ and δⱼ/ℓ move by
        at most error·(1 + |δⱼ|/ℓ)/ℓ, with ℓ = 1 + δ₀ at its least (no bound when that
        is not positive)."""
        spread = (len(step) + 1) * error
        if self._log_linear_start(state, step) is None:
            whole_step = float(np.abs(step).sum()) + len(step) * error <= STEP_LIMIT
            return error if whole_step else spread
        least = 1.0 + float(step[0]) - error
        if not least > 0:
            return float(np.inf)
        return spread * (1 + float(np.max(np.abs(step[1:]), initial=0.0)) / least) / least

    def _log_linear_start(self, state: State, step: np.ndarray) -> np.ndarray | None:
        """The first round's coefficients read on the log scale.

        At β = 0 (μ = t) the Newton step is the weighted least-squares fit of y/t − 1 on
        the terms (weights t): a linear model of the rate, ℓ = 1 + δ₀ at the design's
        center and δⱼ more per unit of term j. Newton's own next steps would bring a
        rate of 1 down to e.g. 0.015 per person-year by at most about 1 on the log scale
        per round; read as log(ℓ + Σδⱼxⱼ) ≈ log ℓ + Σ(δⱼ/ℓ)xⱼ instead, the fit starts at
        the rates' level after one round (the slopes shortened as any step). None
        without an intercept, away from β = 0, or when the linear rate at the center is
        not positive."""
        if state.iteration != 0 or not self.intercept or any(state.beta):
            return None
        level = 1.0 + float(step[0])
        if not level > 0:
            return None
        start = _shortened(np.concatenate([[0.0], step[1:] / level]))
        start[0] = np.log(level)
        return start
