"""The graphical-model estimator of pet.synth, against independent numpy references.

Measurement noise in these tests is synthetic measurement error drawn from seeded numpy
generators: the estimator only post-processes marginals, whoever measured them.
Statistical tests state their false-failure rate.
"""

from __future__ import annotations

import itertools
import tracemalloc

import numpy as np
import pytest
from scipy import stats

from pet.errors import ArgumentError
from pet.synth import Domain, Model, NoisyMarginal, estimate
from pet.synth.estimation import estimate_total
from pet.synth.factor import Broadcast, Summation
from pet.synth.junction_tree import elimination_order, junction_tree

NAMES = ("a", "b", "c", "d", "e")
TREE = (("a", "b"), ("b", "c"), ("b", "d"), ("c", "e"))
"""Edges of the tree the test table is drawn from (and measured on)."""

FALSE_FAILURE = 1e-6
"""Chance that a correct implementation fails one statistical test of this file."""


def _tree_table(rng: np.random.Generator, domain: Domain, edges: tuple, n: int) -> np.ndarray:
    """n rows drawn from a Bayesian network along `edges` (parent, child), conditionals
    Dirichlet(2) so that no cell is vanishingly rare."""
    table = np.zeros((n, len(domain)), dtype=np.int64)
    root = domain.index(edges[0][0])
    table[:, root] = rng.choice(domain.sizes[root], size=n,
                                p=rng.dirichlet(np.full(domain.sizes[root], 2.0)))
    for parent, child in edges:
        p, c = domain.index(parent), domain.index(child)
        cond = rng.dirichlet(np.full(domain.sizes[c], 2.0), size=domain.sizes[p])
        u = rng.random(n)[:, None]
        table[:, c] = np.minimum((u > cond[table[:, p]].cumsum(axis=1)).sum(axis=1),
                                 domain.sizes[c] - 1)
    return table


def _latent_table(rng: np.random.Generator, domain: Domain, n: int) -> np.ndarray:
    """n rows whose attributes all depend on a hidden class: no tree explains them."""
    latent = rng.integers(0, 3, size=n)
    return np.stack([(rng.random(n)[:, None] > rng.dirichlet(
        np.full(k, 2.0), size=3)[latent].cumsum(axis=1)).sum(axis=1).clip(0, k - 1)
        for k in domain.sizes], axis=1)


def _counts(table: np.ndarray, domain: Domain, clique: tuple[str, ...]) -> np.ndarray:
    """The table's counts over the clique, shaped by the clique (np.add.at reference)."""
    out = np.zeros(domain.shape(clique))
    np.add.at(out, tuple(table[:, [domain.index(a) for a in clique]].T), 1.0)
    return out


def _measure(table: np.ndarray, domain: Domain, cliques, sigma: float = 0.0,
             rng: np.random.Generator | None = None) -> list[NoisyMarginal]:
    """The table's marginals over `cliques`, with Gaussian measurement error of `sigma`."""
    out = []
    for clique in cliques:
        values = _counts(table, domain, clique).ravel()
        if sigma:
            values = values + rng.normal(0.0, sigma, size=values.size)
        out.append(NoisyMarginal(clique, values, sigma))
    return out


def _joint(model: Model) -> np.ndarray:
    """The model's full joint table by brute force (only for tiny test domains)."""
    domain = model.domain
    log = np.zeros(domain.sizes)
    for clique, values in zip(model.cliques, model.potentials, strict=True):
        # Model cliques are in domain order: a reshape lines their axes up with the joint's.
        log = log + values.reshape([n if a in clique else 1
                                    for a, n in zip(domain.attributes, domain.sizes,
                                                    strict=True)])
    joint = np.exp(log - log.max())
    return model.total * joint / joint.sum()


def _marginal_of(joint: np.ndarray, domain: Domain, clique: tuple[str, ...]) -> np.ndarray:
    axes = tuple(i for i, a in enumerate(domain.attributes) if a not in clique)
    ordered = domain.ordered(clique)
    return joint.sum(axis=axes).transpose([ordered.index(a) for a in clique])


@pytest.fixture(scope="module")
def tree_case():
    rng = np.random.default_rng(20240611)
    domain = Domain(NAMES, tuple(int(s) for s in rng.integers(2, 7, size=5)))
    table = _tree_table(rng, domain, TREE, 2000)
    cliques = [(a,) for a in NAMES] + list(TREE)
    model = estimate(domain, _measure(table, domain, cliques), iterations=600)
    return domain, table, cliques, model


# --- Domain and marginals ---------------------------------------------------------------

def test_domain_shapes_projections_and_exact_size():
    domain = Domain(("x", "y", "z"), (2, 3, 4))
    assert len(domain) == 3 and "y" in domain and "w" not in domain
    assert domain.shape(("z", "x")) == (4, 2)
    assert domain.project(("z", "x")) == Domain(("z", "x"), (4, 2))
    assert domain.ordered(("z", "x")) == ("x", "z")
    assert domain.size() == 24 and domain.size(("y",)) == 3 and domain.size(()) == 1
    big = Domain(tuple(f"v{i}" for i in range(30)), (10,) * 30)
    assert big.size() == 10**30 and isinstance(big.size(), int)


@pytest.mark.parametrize(("attributes", "sizes", "field"), [
    (("x", "x"), (2, 2), "attributes"),
    (("x", "y"), (2, 0), "sizes"),
    (("x", "y"), (2,), "sizes"),
    (("x", ""), (2, 2), "attributes"),
])
def test_domain_rejects_bad_fields(attributes, sizes, field):
    with pytest.raises(ArgumentError, match=field):
        Domain(attributes, sizes)


def test_unknown_attribute_is_named_with_the_known_ones():
    domain = Domain(("age", "sex"), (5, 2))
    with pytest.raises(ArgumentError, match=r"'bmi'.*age, sex"):
        domain.size(("age", "bmi"))
    with pytest.raises(ArgumentError, match="'bmi'"):
        estimate(domain, [NoisyMarginal(("bmi",), np.ones(3), 1.0)])


@pytest.mark.parametrize(("values", "sigma", "match"), [
    (np.ones(4), -1.0, "sigma"),
    (np.ones(4), float("nan"), "sigma"),
    (np.array([1.0, np.nan, 0.0, 1.0]), 1.0, "NaN"),
    (np.ones((2, 2)), 1.0, "flat"),
])
def test_noisy_marginal_rejects_bad_fields(values, sigma, match):
    with pytest.raises(ArgumentError, match=match):
        NoisyMarginal(("x", "y"), values, sigma)


def test_wrong_length_names_the_clique_and_its_cells():
    domain = Domain(("x", "y"), (2, 3))
    bad = NoisyMarginal(("y", "x"), np.ones(5), 1.0)
    with pytest.raises(ArgumentError, match=r"\('y', 'x'\).*5 counts.*6 cells"):
        bad.check(domain)
    with pytest.raises(ArgumentError, match=r"\('y', 'x'\)"):
        estimate(domain, [bad])


def test_estimate_rejects_bad_options():
    domain = Domain(("x",), (2,))
    good = [NoisyMarginal(("x",), np.array([3.0, 4.0]), 1.0)]
    with pytest.raises(ArgumentError, match="iterations"):
        estimate(domain, good, iterations=-1)
    with pytest.raises(ArgumentError, match="total"):
        estimate(domain, good, total=0.0)
    with pytest.raises(ArgumentError, match="marginals"):
        estimate(domain, [])
    with pytest.raises(ArgumentError, match="n_rows"):
        estimate(domain, good, iterations=5).sample(-1)


def test_total_is_the_inverse_variance_weighted_mean_of_the_sums():
    one = NoisyMarginal(("x",), np.array([40.0, 60.0]), 2.0)       # sum 100, variance 8
    two = NoisyMarginal(("x", "y"), np.full(8, 11.0), 1.0)        # sum 88, variance 8
    three = NoisyMarginal(("y",), np.array([10.0, 20, 30, 50]), 4.0)  # sum 110, variance 64
    weights = np.array([1 / 8, 1 / 8, 1 / 64])
    expected = weights @ np.array([100.0, 88.0, 110.0]) / weights.sum()
    assert estimate_total([one, two, three]) == pytest.approx(expected)
    exact = NoisyMarginal(("x",), np.array([50.0, 47.0]), 0.0)
    assert estimate_total([one, exact]) == 97.0
    assert estimate_total([NoisyMarginal(("x",), np.array([-9.0, 2.0]), 3.0)]) == 1.0


# --- Junction trees -----------------------------------------------------------------------

@pytest.mark.parametrize("method", ["min_size", "min_fill"])
def test_junction_tree_covers_cliques_with_running_intersection(method):
    rng = np.random.default_rng(7)
    domain = Domain(tuple(f"v{i}" for i in range(9)), tuple(int(s) for s in rng.integers(2, 5, 9)))
    cliques = [tuple(rng.choice(domain.attributes, 3, replace=False)) for _ in range(6)]
    tree = junction_tree(domain, cliques, method=method)
    assert sorted(elimination_order(domain, cliques, method=method)) == sorted(domain.attributes)
    for clique in cliques + [(a,) for a in domain.attributes]:
        assert any(set(clique) <= set(c) for c in tree.cliques)
    for a in domain.attributes:
        holding = {i for i, c in enumerate(tree.cliques) if a in c}
        tops = [i for i in holding if tree.parents[i] not in holding]
        assert len(tops) == 1, f"{a} is in a disconnected set of tree cliques"


def test_junction_tree_over_max_cells_names_the_clique():
    domain = Domain(("x", "y", "z", "w"), (4, 4, 4, 2))
    with pytest.raises(ArgumentError, match=r"\('x', 'y', 'z'\).*64 cells.*max_cells=50"):
        junction_tree(domain, [("x", "y"), ("y", "z"), ("z", "x")], max_cells=50)
    cycle = [NoisyMarginal(c, np.ones(16), 1.0) for c in [("x", "y"), ("y", "z"), ("z", "x")]]
    with pytest.raises(ArgumentError, match=r"\('x', 'y', 'z'\).*64 cells"):
        estimate(domain, cycle, max_cells=50)


@pytest.mark.parametrize("shape", [(16, 2, 16, 16, 2, 2, 2), (5, 1, 7, 2), (64, 3, 2, 200), (3,)])
def test_planned_sums_and_broadcasts_match_numpy(shape):
    rng = np.random.default_rng(11)
    values = rng.random(shape)
    for r in range(len(shape) + 1):
        for axes in itertools.combinations(range(len(shape)), r):
            sums = np.add.reduce(values, axis=axes, keepdims=True)
            np.testing.assert_allclose(Summation(shape, axes)(values), sums, rtol=1e-12)
            piece = rng.random(sums.shape)
            spread = Broadcast(shape, sums.shape)
            np.testing.assert_allclose(spread.apply(np.add, values, piece), values + piece)
            into = values.copy()
            spread.apply(np.multiply, into, piece, out=into)
            np.testing.assert_allclose(into, values * piece)


def _random_model(rng: np.random.Generator, scale: float) -> Model:
    """A model on a small domain whose cliques make a tree of triangles, with Gaussian
    log-potentials of standard deviation `scale`."""
    domain = Domain(tuple("abcdefg"), (3, 2, 4, 2, 3, 2, 5))
    cliques = [("a", "b", "c"), ("b", "c", "d"), ("c", "d", "e"), ("c", "f"), ("e", "g"),
               ("a", "b"), ("d",)]
    tree = junction_tree(domain, cliques)
    return Model(domain, tree, tuple(cliques),
                 tuple(scale * rng.standard_normal(domain.shape(c)) for c in cliques), 1e4)


@pytest.mark.parametrize("scale", [1.0, 300.0])
def test_calibrated_beliefs_are_the_joint_marginals(scale):
    """Peaked potentials (scale 300) leave some separator values hundreds of nats below
    their clique's maximum, the case where each value is shifted by its own maximum."""
    model = _random_model(np.random.default_rng(3), scale)
    joint = _joint(model)
    tree = model.tree
    potentials = tree.collector(model.cliques)(model.potentials)
    beliefs = tree.calibrate(potentials)
    for clique, prob, log in zip(tree.cliques, beliefs.prob, beliefs.log, strict=True):
        expected = _marginal_of(joint, model.domain, clique) / model.total
        np.testing.assert_allclose(prob, expected, rtol=1e-9, atol=1e-300)
        shown = expected > 1e-250
        np.testing.assert_allclose(log[shown], np.log(expected[shown]), rtol=1e-9, atol=1e-9)
    buffers = [np.full(p.shape, np.nan) for p in beliefs.prob]
    for fast, prob in zip(tree.probabilities(potentials, buffers), beliefs.prob, strict=True):
        np.testing.assert_allclose(fast, prob, rtol=1e-12, atol=1e-300)
    for pair in itertools.combinations(model.domain.attributes, 2):
        np.testing.assert_allclose(model.project(pair), _marginal_of(joint, model.domain, pair),
                                   rtol=1e-9, atol=1e-290, err_msg=str(pair))


def test_projecting_beliefs_is_the_adjoint_of_collecting_potentials():
    """⟨collect(θ), p⟩ = Σ_k ⟨θ_k, project(p)_k⟩: the two walk the same nests both ways."""
    rng = np.random.default_rng(5)
    model = _random_model(rng, 1.0)
    tree, domain = model.tree, model.domain
    cliques = [domain.ordered(c) for c in itertools.combinations(domain.attributes, 2)
               if tree.find(c) is not None] + list(model.cliques)
    theta = [rng.standard_normal(domain.shape(c)) for c in cliques]
    prob = [rng.random(domain.shape(c)) for c in tree.cliques]
    left = sum(float(np.vdot(a, b)) for a, b in zip(tree.collector(cliques)(theta), prob,
                                                      strict=True))
    right = sum(float(np.vdot(a, b)) for a, b in zip(theta, tree.projector(cliques)(prob),
                                                       strict=True))
    assert left == pytest.approx(right, rel=1e-12)


# --- (1) noiseless tree -------------------------------------------------------------------

def test_noiseless_tree_reproduces_measured_marginals(tree_case):
    domain, table, cliques, model = tree_case
    for clique in cliques:
        np.testing.assert_allclose(model.project(clique), _counts(table, domain, clique),
                                   rtol=1e-3, atol=1e-3, err_msg=str(clique))
    assert model.total == len(table)


def test_unmeasured_pairs_are_the_tree_factorised_products(tree_case):
    domain, table, _, model = tree_case

    def n(*clique):
        return _counts(table, domain, clique)

    # a–b–c: P(a, c) = Σ_b P(a, b) P(b, c) / P(b)
    a_c = np.einsum("ab,bc->ac", n("a", "b") / n("b"), n("b", "c"))
    np.testing.assert_allclose(model.project(("a", "c")), a_c, rtol=1e-3, atol=1e-3)
    # d–b–c–e: P(d, e) = Σ_{b,c} P(d | b) P(b, c) P(e | c)
    d_e = np.einsum("bd,bc,ce->de", n("b", "d") / n("b")[:, None], n("b", "c"),
                    n("c", "e") / n("c")[:, None])
    np.testing.assert_allclose(model.project(("d", "e")), d_e, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(model.project(("e", "d")), d_e.T, rtol=1e-3, atol=1e-3)
    assert model.project(()) == pytest.approx(len(table))


def test_unmeasured_attribute_is_uniform_and_independent(tree_case):
    domain, table, cliques, _ = tree_case
    wider = Domain((*domain.attributes, "z"), (*domain.sizes, 3))
    model = estimate(wider, _measure(table, domain, cliques), iterations=200)
    np.testing.assert_allclose(model.project(("z",)), np.full(3, len(table) / 3))
    np.testing.assert_allclose(model.project(("a", "z")),
                               np.outer(model.project(("a",)), np.full(3, 1 / 3)))
    assert set(np.unique(model.sample(300, seed=2)[:, -1])) <= {0, 1, 2}


# --- (2) cycles ---------------------------------------------------------------------------

def test_cycle_with_chord_recovers_consistent_marginals():
    rng = np.random.default_rng(5)
    domain = Domain(NAMES, (3, 2, 4, 3, 2))
    table = _latent_table(rng, domain, 3000)
    cliques = [("a", "b"), ("b", "c"), ("c", "d"), ("d", "a"), ("a", "c"),
               ("c", "e"), ("e", "d")]
    model = estimate(domain, _measure(table, domain, cliques), iterations=1500)
    assert max(len(c) for c in model.tree.cliques) == 3
    for clique in cliques:
        np.testing.assert_allclose(model.project(clique), _counts(table, domain, clique),
                                   rtol=1e-3, atol=1e-3, err_msg=str(clique))
    joint = _joint(model)
    for clique in [*itertools.combinations(NAMES, 2), ("e", "b", "a"), ("d", "b", "e", "a")]:
        np.testing.assert_allclose(model.project(clique), _marginal_of(joint, domain, clique),
                                   rtol=1e-9, atol=1e-9, err_msg=str(clique))


# --- (3) sampling -------------------------------------------------------------------------

def _chi_square(observed: np.ndarray, expected: np.ndarray) -> tuple[float, int]:
    """Pearson's statistic and degrees of freedom, cells expecting < 5 pooled into one."""
    observed, expected = observed.ravel(), expected.ravel()
    small = expected < 5
    if small.any():
        observed = np.append(observed[~small], observed[small].sum())
        expected = np.append(expected[~small], expected[small].sum())
    keep = expected > 0
    assert observed[~keep].sum() == 0, "a cell the model gives no mass was sampled"
    observed, expected = observed[keep], expected[keep]
    return float(((observed - expected) ** 2 / expected).sum()), len(expected) - 1


def test_sampled_rows_follow_the_model(tree_case):
    domain, _, _, model = tree_case
    n = 20_000
    rows = model.sample(n, seed=11)
    assert rows.shape == (n, len(domain)) and rows.dtype == np.int64
    assert np.all(rows >= 0) and np.all(rows < np.array(domain.sizes))
    cliques = [(a,) for a in NAMES] + list(itertools.combinations(NAMES, 2))
    # One upper-tail test per clique plus the lower-tail test below share the budget.
    alpha = FALSE_FAILURE / (len(cliques) + 1)
    one_way = []
    for clique in cliques:
        statistic, df = _chi_square(_counts(rows, domain, clique),
                                    model.project(clique) * n / model.total)
        assert stats.chi2.sf(statistic, df) > alpha, clique
        if len(clique) == 1:
            one_way.append((statistic, df))
    # Stratified within each separator value: 1-way counts hug the expected counts (a
    # multinomial's statistic would be near its df), yet another seed draws other rows.
    statistic, df = map(sum, zip(*one_way, strict=True))
    assert statistic < 0.05 * df
    assert not np.array_equal(rows, model.sample(n, seed=12))


def test_sampling_is_seeded():
    domain = Domain(("x", "y"), (3, 2))
    model = estimate(domain, [NoisyMarginal(("x", "y"), np.arange(1.0, 7.0), 0.0)],
                     iterations=50)
    assert np.array_equal(model.sample(500, seed=3), model.sample(500, seed=3))
    assert not np.array_equal(model.sample(500, seed=3), model.sample(500, seed=4))
    assert model.sample(0, seed=1).shape == (0, 2)


# --- (4) scale ----------------------------------------------------------------------------

def test_forty_attributes_fit_and_sample_in_little_memory():
    rng = np.random.default_rng(40)
    names = tuple(f"x{i:02d}" for i in range(40))
    domain = Domain(names, (10,) * 40)
    chain = tuple(itertools.pairwise(names))
    table = _tree_table(rng, domain, chain, 3000)
    marginals = _measure(table, domain, chain, sigma=5.0, rng=rng)
    tracemalloc.start()
    try:
        model = estimate(domain, marginals, iterations=60)
        rows = model.sample(1000, seed=0)
        ends = model.project(("x00", "x39"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 200e6
    assert domain.size() == 10**40
    assert rows.shape == (1000, 40) and rows.min() >= 0 and rows.max() <= 9
    assert ends.shape == (10, 10) and ends.sum() == pytest.approx(model.total)
    assert len(model.tree.cliques) == 39


# --- (5) warm start -----------------------------------------------------------------------

def _losses(domain, marginals, **options) -> list[float]:
    losses: list[float] = []
    estimate(domain, marginals, callback=lambda t, loss: losses.append(loss), **options)
    return losses


TRIANGLES = (("a", "b"), ("b", "c"), ("c", "a"), ("c", "d"), ("d", "e"), ("e", "c"))


def test_warm_start_carries_the_model_exactly():
    rng = np.random.default_rng(8)
    domain = Domain(NAMES, (4, 5, 3, 6, 4))
    table = _latent_table(rng, domain, 5000)
    first = _measure(table, domain, [(a,) for a in NAMES] + list(TRIANGLES), 5.0, rng)
    earlier = estimate(domain, first, iterations=300)
    again = [*first, *_measure(table, domain, [("b", "a"), ("d",)], 5.0, rng)]
    carried = estimate(domain, again, model=earlier, iterations=0)
    for clique in [("a", "b"), ("c", "e"), ("a", "d", "e")]:
        np.testing.assert_allclose(carried.project(clique) / carried.total,
                                   earlier.project(clique) / earlier.total, rtol=1e-9)


def test_warm_start_fits_a_new_clique_at_once():
    rng = np.random.default_rng(8)
    domain = Domain(NAMES, (4, 5, 3, 6, 4))
    table = _latent_table(rng, domain, 5000)
    first = _measure(table, domain, [(a,) for a in NAMES] + list(TRIANGLES), 5.0, rng)
    earlier = estimate(domain, first, iterations=300)
    new = _measure(table, domain, [("d", "b")], 1.0, rng)
    assert new[0].values.min() > 0
    started = estimate(domain, [*first, *new], model=earlier, iterations=0)
    np.testing.assert_allclose(started.project(("d", "b")).ravel() / started.total,
                               new[0].values / new[0].values.sum(), rtol=1e-3)


@pytest.mark.parametrize("shape", ["tree", "triangles"])
def test_warm_start_reaches_a_lower_loss_sooner(shape):
    rng = np.random.default_rng(3)
    domain = Domain(NAMES, (4, 5, 3, 6, 4))
    if shape == "tree":
        table = _tree_table(rng, domain, TREE, 5000)
        before, added = list(TREE[:3]), [TREE[3]]
    else:
        table = _latent_table(rng, domain, 5000)
        before, added = list(TRIANGLES), [("b", "d")]
    first = _measure(table, domain, [(a,) for a in NAMES] + before, 5.0, rng)
    more = [*first, *_measure(table, domain, added, 5.0, rng)]
    earlier = estimate(domain, first, iterations=300)
    cold = _losses(domain, more, iterations=300)
    warm = _losses(domain, more, iterations=300, model=earlier)
    assert all(b <= a for a, b in itertools.pairwise(cold)), "the loss went up"
    target = 1.01 * min(min(cold), min(warm))
    cold_at, warm_at = (next(t for t, loss in enumerate(run) if loss <= target)
                        for run in (cold, warm))
    assert warm_at < cold_at
    assert warm[19] < cold[19]


STAR = (("c", "a"), ("c", "b"), ("c", "d"), ("c", "e"))


def test_warm_start_with_many_noisy_cliques_at_once_is_no_worse_than_cold():
    """A tree of noisy pairs added at once to a 1-way model (MST's second estimate): the
    hub's margin must not be corrected once per edge."""
    rng = np.random.default_rng(5)
    domain = Domain(NAMES, (6, 6, 8, 6, 6))
    table = _tree_table(rng, domain, STAR, 300)
    one_way = _measure(table, domain, [(a,) for a in NAMES], 8.0, rng)
    every = [*one_way, *_measure(table, domain, STAR, 8.0, rng)]
    earlier = estimate(domain, one_way, iterations=300)
    cold = _losses(domain, every, iterations=50)
    warm = _losses(domain, every, iterations=50, model=earlier)
    assert warm[0] <= cold[0]
    assert warm[-1] <= 1.01 * cold[-1]


def test_warm_start_needs_the_same_domain():
    domain = Domain(("x",), (2,))
    model = estimate(domain, [NoisyMarginal(("x",), np.array([1.0, 2.0]), 1.0)], iterations=5)
    other = Domain(("x", "y"), (2, 2))
    with pytest.raises(ArgumentError, match="domain"):
        estimate(other, [NoisyMarginal(("y",), np.array([1.0, 2.0]), 1.0)], model=model)


def test_noiseless_measurements_dominate_noisy_ones():
    rng = np.random.default_rng(12)
    domain = Domain(NAMES, (4, 5, 3, 6, 4))
    table = _tree_table(rng, domain, TREE, 2000)
    exact = _measure(table, domain, [("a",)])
    noisy = _measure(table, domain, [("a", "b"), ("b", "c")], 50.0, rng)
    model = estimate(domain, exact + noisy, iterations=300)
    truth = _counts(table, domain, ("a",))
    assert np.abs(noisy[0].values.reshape(4, 5).sum(axis=1) - truth).max() > 10
    assert np.abs(model.project(("a",)) - truth).max() < 1.0
    assert model.total == len(table)


# --- (7) noisy measurements ---------------------------------------------------------------

def test_noisy_fit_is_closer_to_the_truth_than_the_measurements():
    rng = np.random.default_rng(9)
    domain = Domain(NAMES, (4, 5, 3, 6, 4))
    table = _tree_table(rng, domain, TREE, 2000)
    cliques = [(a,) for a in NAMES] + list(TREE)
    marginals = _measure(table, domain, cliques, sigma=20.0, rng=rng)
    model = estimate(domain, marginals, iterations=500)
    fitted = noisy = 0.0
    for m in marginals:
        truth = _counts(table, domain, m.clique).ravel()
        fitted += np.abs(model.project(m.clique).ravel() - truth).sum()
        noisy += np.abs(m.values - truth).sum()
        assert np.all(model.project(m.clique) >= 0)
    assert fitted < 0.95 * noisy


def test_stratified_draws_add_no_correlation_between_attributes_drawn_apart() -> None:
    """B and C both depend on A and on nothing else in the model: within each value of A
    the sampled B and C must be independent (a sampler that filled each stratum in one
    shared order would tie them together)."""
    rng = np.random.default_rng(5)
    domain = Domain(("a", "b", "c"), (3, 4, 4))
    p_a = np.array([0.5, 0.3, 0.2])
    p_b, p_c = rng.dirichlet(np.ones(4), size=3), rng.dirichlet(np.ones(4), size=3)
    n = 10_000
    exact = [NoisyMarginal(("a", "b"), (n * p_a[:, None] * p_b).ravel(), 1.0),
             NoisyMarginal(("a", "c"), (n * p_a[:, None] * p_c).ravel(), 1.0)]
    model = estimate(domain, exact, iterations=300)
    rows = model.sample(30_000, seed=3)
    statistic = 0.0
    for a in range(3):
        within = rows[rows[:, 0] == a]
        table = np.zeros((4, 4))
        np.add.at(table, (within[:, 1], within[:, 2]), 1)
        statistic += stats.chi2_contingency(table, correction=False)[0]
    assert stats.chi2.sf(statistic, 3 * 9) > 1e-6
