"""Fitting a graphical model to noisy marginals (Private-PGM: McKenna, Sheldon & Miklau,
"Graphical-model based estimation and inference for differential privacy", ICML 2019).

The estimate minimises Σ_c (M(μ)_c − y_c)² / σ_c² over the measured cells c (each weighed
by the inverse variance of its noise, as in the paper's code) and the marginals μ of a
Markov random field, by entropic mirror descent on its log-potentials (the paper's
Algorithm 1) with Armijo backtracking, accelerated by restarted momentum, from a start
read off the measurements. Marginals come from belief propagation over a junction tree,
so memory and time scale with the tree's cliques, never with the full domain.
"""

# pet carries its own estimator rather than depending on one: Private-PGM (mbi) is not on
# PyPI as a maintained package for pet's environment, its 2.x needs JAX, and OpenDP's
# bundled copy (opendp[mbi]) pulls JAX in too; pet keeps to numpy and torch.

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from pet.errors import ArgumentError
from pet.synth.domain import Clique, Domain
from pet.synth.factor import Factor, Summation, logsumexp
from pet.synth.junction_tree import MAX_CELLS, JunctionTree, junction_tree, maximal
from pet.synth.marginal import NoisyMarginal
from pet.synth.model import Model

NOISELESS_SIGMA = 1e-2
"""σ = 0 is weighted as this fraction of the smallest positive σ (or as σ = 1 when every
measurement is exact): heavy enough to dominate, light enough to keep the loss smooth."""

_ARMIJO = 0.5
"""A step is taken when it achieves this fraction of the decrease its linearisation promises."""
_GROWTH = 1.002
"""Growth of the step size after each step taken, once the first refusal has set its scale."""
_FLOOR = 1e-4
"""Cells measured at or below zero start at this fraction of their clique's mean cell."""


def estimate(domain: Domain, marginals: Sequence[NoisyMarginal], *,
             iterations: int = 1000, model: Model | None = None, total: float | None = None,
             callback: Callable[[int, float], None] | None = None,
             max_cells: int = MAX_CELLS) -> Model:
    """The Markov random field whose marginals best fit the noisy `marginals` in weighted
    L2 loss, after `iterations` mirror-descent steps (each one belief propagation).

    `model` warm-starts from an earlier fit over the same domain: its potentials carry over
    exactly, its cliques stay in the model, and each newly measured clique starts fitted.
    `total` is the number of records, estimated from the measurements when None.
    `callback(iteration, loss)` follows progress. Raises ArgumentError for bad input, or
    when a junction-tree clique would exceed `max_cells`.
    """
    marginals = _checked(domain, marginals)
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ArgumentError(f"iterations={iterations!r}; must be an integer ≥ 0")
    if model is not None and model.domain != domain:
        raise ArgumentError("model: the warm-start model is over another domain")
    total = estimate_total(marginals) if total is None else _checked_total(total)
    measured = [m.clique for m in marginals] + (list(model.cliques) if model else [])
    cliques = maximal([domain.ordered(c) for c in measured])
    tree = junction_tree(domain, cliques, max_cells=max_cells)
    theta = (_carried(domain, cliques, model, marginals) if model is not None
             else _from_measurements(tree, cliques, marginals))
    theta = _mirror_descent(_Loss(tree, cliques, marginals, total), theta,
                            iterations=iterations, callback=callback)
    return Model(domain, tree, tuple(cliques), tuple(theta), total)


def estimate_total(marginals: Sequence[NoisyMarginal]) -> float:
    """The number of records: the inverse-variance weighted mean of the measurements' sums
    (the mean of the exact ones when some are noiseless), at least 1."""
    exact = [float(m.values.sum()) for m in marginals if m.sigma == 0]
    if exact:
        return max(1.0, sum(exact) / len(exact))
    precision = np.array([1.0 / (m.sd**2).sum() for m in marginals])
    sums = np.array([m.values.sum() for m in marginals])
    return max(1.0, float(precision @ sums / precision.sum()))


def _checked(domain: Domain, marginals: Sequence[NoisyMarginal]) -> list[NoisyMarginal]:
    marginals = list(marginals)
    if not marginals:
        raise ArgumentError("marginals: nothing to fit; give at least one NoisyMarginal")
    for m in marginals:
        if not isinstance(m, NoisyMarginal):
            raise ArgumentError(f"marginals: {type(m).__name__} is not a NoisyMarginal")
        m.check(domain)
    return marginals


def _checked_total(total: float) -> float:
    value = float(total)
    if not math.isfinite(value) or value <= 0:
        raise ArgumentError(f"total={total!r}; must be finite and > 0")
    return value


def _carried(domain: Domain, cliques: list[Clique], model: Model,
             marginals: list[NoisyMarginal]) -> list[np.ndarray]:
    """The warm-start model's potentials, each added into the clique holding it. A clique
    measured now that no clique of the model holds then takes one step of iterative
    proportional fitting (Deming & Stephan 1940), the log-ratio of its measured to its
    modelled distribution: alone, it makes the model fit that measurement exactly. Of
    several such cliques, each after the first takes the ratio of its distribution given
    the attributes the earlier ones already set, so no attribute's margin is corrected
    twice (a tree of noisy pairs would otherwise raise a hub's noisy margin to the power
    of its degree)."""
    theta = [np.zeros(domain.shape(c)) for c in cliques]
    for clique, values in zip(model.cliques, model.potentials, strict=True):
        k = _holder(domain, cliques, clique)
        theta[k] = theta[k] + Factor(domain.project(clique), values).broadcast(
            domain.project(cliques[k]))
    fresh = maximal([c for c in (domain.ordered(m.clique) for m in marginals)
                     if not any(set(c) <= set(old) for old in model.cliques)])
    fitted: set[str] = set()
    for clique in fresh:
        measured = _log_distribution(_pooled(domain, clique, marginals))
        if measured is None:
            continue
        modelled = np.log(np.maximum(model.project(clique), np.finfo(np.float64).tiny))
        given = tuple(n for n, a in enumerate(clique) if a not in fitted)
        ratio = _given(measured, given) - _given(modelled, given)
        ratio = ratio - logsumexp(ratio, tuple(range(len(clique))))
        k = _holder(domain, cliques, clique)
        theta[k] = theta[k] + ratio.reshape(domain.embedded_shape(clique, cliques[k]))
        fitted.update(clique)
    return theta


def _given(log: np.ndarray, free: tuple[int, ...]) -> np.ndarray:
    """A log distribution conditioned on its axes other than `free` (all when every axis
    is free, where it is left as it is: the ratio is normalised afterwards)."""
    if len(free) == log.ndim:
        return log
    return log - logsumexp(log, free, keepdims=True)


def _from_measurements(tree: JunctionTree, cliques: list[Clique],
                       marginals: list[NoisyMarginal]) -> list[np.ndarray]:
    """A cold start near the optimum: a clique that stands as it is in the junction tree
    starts as the log of its measured distribution given its separator, so a consistent
    tree of measurements is fitted at once; other cliques start at zero. Only the start
    changes, not the loss."""
    domain = tree.domain
    theta = []
    for clique in cliques:
        i = tree.containing(clique)
        log = _log_distribution(_pooled(domain, clique, marginals))
        if tree.cliques[i] != clique or log is None:
            theta.append(np.zeros(domain.shape(clique)))
            continue
        away = tuple(n for n, a in enumerate(clique) if a not in tree.separator(i))
        theta.append(log - logsumexp(log, away, keepdims=True))
    return theta


def _log_distribution(counts: np.ndarray) -> np.ndarray | None:
    """Log of noisy counts read as a distribution: clipped at zero and floored at a small
    fraction of the mean cell, unnormalised; None when no count is positive."""
    counts = np.maximum(counts, 0.0)
    if not counts.any():
        return None
    return np.log(counts + _FLOOR * counts.mean())


def _pooled(domain: Domain, clique: Clique, marginals: list[NoisyMarginal]) -> np.ndarray:
    """The inverse-variance weighted mean of the measurements of exactly `clique` (domain
    order), cell by cell, or the mean of its exact ones."""
    same = [m for m in marginals if domain.ordered(m.clique) == clique]
    used = [m for m in same if m.sigma == 0] or same
    weights = [_in_domain_order(domain, m, np.ones(m.values.size) if m.sigma == 0
                                else 1.0 / m.sd**2) for m in used]
    pooled = sum(w * _in_domain_order(domain, m) for w, m in zip(weights, used, strict=True))
    return pooled / sum(weights)


def _in_domain_order(domain: Domain, m: NoisyMarginal,
                     cells: np.ndarray | None = None) -> np.ndarray:
    """A measurement's values (or other `cells` of its clique, flat in its order) as an
    array with axes in domain order."""
    ordered = domain.ordered(m.clique)
    cells = m.values if cells is None else cells
    return cells.reshape(domain.shape(m.clique)).transpose(
        [m.clique.index(a) for a in ordered])


def _holder(domain: Domain, cliques: list[Clique], clique: Clique) -> int:
    """Index of the smallest of `cliques` holding every attribute of `clique`."""
    return min((k for k, c in enumerate(cliques) if set(clique) <= set(c)),
               key=lambda k: domain.size(cliques[k]))


class _Loss:
    """The weighted L2 loss of one set of measurements, set up once for a junction tree:
    measured values in domain order side by side in one vector, and the sums that map
    tree beliefs onto them and residuals back onto the potentials' cliques."""

    def __init__(self, tree: JunctionTree, cliques: list[Clique],
                 marginals: list[NoisyMarginal], total: float) -> None:
        domain = tree.domain
        self.tree, self.total = tree, total
        self.collect = tree.collector(cliques)
        # Each step's potentials and beliefs are used up within it: two sets of arrays
        # over the tree's cliques serve every step.
        self.buffers = [[np.empty(domain.shape(c)) for c in tree.cliques] for _ in range(2)]
        positive = [m.sigma for m in marginals if m.sigma > 0]
        floor = NOISELESS_SIGMA * min(positive) if positive else 1.0
        ordered = [domain.ordered(m.clique) for m in marginals]
        holders = [_holder(domain, cliques, c) for c in ordered]
        # The tree's beliefs are summed once onto each potential's clique that holds a
        # measurement; each measured clique is then summed from that small marginal.
        held = list(dict.fromkeys(holders))
        self.project = tree.projector([cliques[k] for k in held])
        distinct = list(dict.fromkeys(zip(holders, ordered, strict=True)))
        self.reads = [(held.index(k), Summation(domain.shape(cliques[k]), tuple(
            n for n, a in enumerate(cliques[k]) if a not in clique)))
            for k, clique in distinct]
        self.read_of = [distinct.index(pair) for pair in zip(holders, ordered, strict=True)]
        self.writes: list[list[tuple[slice, tuple[int, ...]]]] = [[] for _ in cliques]
        values, weights, start = [], [], 0
        for k, clique, m in zip(holders, ordered, marginals, strict=True):
            part = slice(start, start + m.values.size)
            start = part.stop
            self.writes[k].append((part, domain.embedded_shape(clique, cliques[k])))
            values.append(_in_domain_order(domain, m).ravel())
            sd = m.sd if m.sigma else np.full(m.values.size, floor)
            weights.append(_in_domain_order(domain, m, 1.0 / sd**2).ravel())
        self.y = np.concatenate(values)
        self.w = np.concatenate(weights)
        # In the probabilities the loss is 2·total²·Σ_i 1/σ_i²-smooth for the ℓ1 norm (the
        # entropy's geometry; σ_i the smallest sd of measurement i), so 1 / (2·total·Σ_i
        # 1/σ_i²) is a step on count gradients that cannot overshoot (Beck & Teboulle
        # 2003): the line search starts there.
        self.safe_step = 1.0 / (2.0 * total * float(sum(w.max() for w in weights)))

    def marginals(self, theta: Sequence[np.ndarray]) -> np.ndarray:
        """The model's counts at the measured cells, for potentials `theta`."""
        collected = self.collect(theta, self.buffers[0])
        held = self.project(self.tree.probabilities(collected, self.buffers[1]))
        distinct = [total(held[h]) for h, total in self.reads]
        return self.total * np.concatenate([distinct[d].ravel() for d in self.read_of])

    def value(self, mu: np.ndarray) -> float:
        """Σ_c (M(μ)_c − y_c)² / σ_c²."""
        r = mu - self.y
        return float((self.w * r) @ r)

    def gradient(self, mu: np.ndarray) -> np.ndarray:
        """The loss's gradient with respect to the measured counts."""
        return 2.0 * self.w * (mu - self.y)

    def on_cliques(self, gradient: np.ndarray) -> list[np.ndarray | None]:
        """The gradient carried to each potential's clique (None where nothing is measured)."""
        out: list[np.ndarray | None] = []
        for parts in self.writes:
            total = None
            for part, shape in parts:
                piece = gradient[part].reshape(shape)
                total = piece if total is None else total + piece
            out.append(total)
        return out


def _mirror_descent(loss: _Loss, theta: list[np.ndarray], *, iterations: int,
                    callback: Callable[[int, float], None] | None) -> list[np.ndarray]:
    """Entropic mirror descent θ ← θ − α ∇L(μ(θ)) (Private-PGM's Algorithm 1) with Nesterov
    momentum on the potentials, restarted whenever a step falls short (O'Donoghue & Candès,
    "Adaptive restart for accelerated gradient schemes", 2015), and Armijo backtracking.

    A step is taken when the loss falls by at least half the decrease its linearisation
    promises. A short step with momentum restarts the momentum; without, it halves α.
    α doubles after each step until the first refusal, so it starts at its scale whatever
    the data, and then creeps up. A taken step's marginals, loss and gradient serve as the
    next iterate's, so each iteration costs one belief propagation.
    """
    mu = loss.marginals(theta)
    value = loss.value(mu)
    grad = loss.gradient(mu)
    direction = loss.on_cliques(grad)
    step, warming, momentum = loss.safe_step, True, 0
    previous = theta
    for t in range(1, iterations + 1):
        plain = [th if g is None else th - step * g
                 for th, g in zip(theta, direction, strict=True)]
        beta = momentum / (momentum + 3)
        trial = plain if momentum == 0 else [
            p + beta * (p - q) for p, q in zip(plain, previous, strict=True)]
        mu_trial = loss.marginals(trial)
        value_trial = loss.value(mu_trial)
        promised = float(grad @ (mu - mu_trial))
        if value - value_trial >= _ARMIJO * max(promised, 0.0):
            theta, mu, value, previous = trial, mu_trial, value_trial, plain
            grad = loss.gradient(mu)
            direction = loss.on_cliques(grad)
            momentum += 1
            step *= 2.0 if warming else _GROWTH
        else:
            warming = False
            if momentum:
                momentum = 0
            else:
                step *= 0.5
        if callback is not None:
            callback(t, value)
    return theta
