"""The `mpc` backend: real party processes with a dealer, exact counts, bounded sums,
every query against plaintext, and clean failure when a party dies or stalls."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import yaml
from scipy import stats

from benchmarks.queries import PRESETS
from pet.backends.base import Limits
from pet.backends.mpc import (
    MPC,
    RECIPROCAL_ERROR,
    SECURE,
    Units,
    _agree,
    _answers,
    _blocks,
    _newton_distance,
    _noise,
    _possible,
)
from pet.errors import PetError, QueryError
from pet.layout import Block, Layout
from pet.mpc.fixed_point import (
    EQUILIBRATED,
    LEAST_SCALE,
    MEAN_GAP,
    moment_precision,
    scale_bits,
)
from pet.mpc.kernels import INV_SQRT_START, RECIPROCAL_START
from pet.mpc.parties import ASKED_BYTES, Parties, Party, PartyConfig, PartyError, Spare, Warm
from pet.queries import (
    Correlation,
    Covariance,
    Cox,
    ExactQuantiles,
    LinearFit,
    LinearRegression,
    LogisticRegression,
    Mean,
    Next,
    StdDev,
    Variance,
    parse,
)
from pet.queries.regression import (
    LogisticFit,
    LogisticState,
    PoissonRegression,
    PoissonState,
    model_matrix,
)
from pet.result import answer_vector
from pet.site import Site
from pet.study import Study
from pet.table import FrameTable
from pet.workloads import Workload, cohort
from services.config import ConfigError, read_site
from tests.conftest import NO_CELL_LIMIT


@pytest.fixture(scope="module")
def mpc():
    backend = MPC(max_rows_per_site=10**7, max_sites=8, parties=PartyConfig(timeout_s=60))
    backend.open(3)
    yield backend
    backend.close()


def test_parties_use_the_dealer_not_party_zero(mpc: MPC) -> None:
    parties = mpc._session(3)
    assert parties.run("provider", [np.zeros(1)] * 3) == ["TrustedThirdParty"] * 3
    names = sorted(p.process.name for p in parties._parties)
    assert names == ["pet-mpc-dealer", "pet-mpc-party-0", "pet-mpc-party-1", "pet-mpc-party-2"]


@pytest.mark.parametrize("workload", ["lung", "breast_cancer", "diabetes", "cohort"])
def test_every_query_matches_plaintext(mpc: MPC, workload: str, request) -> None:
    data = (cohort(2000, 3, 6) if workload == "cohort"
            else request.getfixturevalue({"lung": "lung3", "breast_cancer": "breast_by_3",
                                          "diabetes": "diabetes3"}[workload]))
    secure = Study(data.sites(NO_CELL_LIMIT), backend=mpc)
    clear = data.study(policy=NO_CELL_LIMIT)
    for name, query in PRESETS[data.name].items():
        state = query.initial_state(data.schema)
        layout = query.layout(data.schema, state)
        partials = [site.partial(query, state) for site in clear.sites]
        messages = [mpc.protect(p, layout) for p in partials]
        total = mpc.reveal(mpc.combine(messages, layout), layout)
        error = np.abs(total.total - np.sum(partials, axis=0))
        assert np.all(error <= total.error_bounds), name
        result, reference = secure.run(query), clear.run(query)
        assert result.backend == "mpc" and result.n == reference.n, name
        assert result.missing == reference.missing, name
        got, want = answer_vector(result.value), answer_vector(reference.value)
        if type(query) in SECURE:  # finalized inside MPC: the answer within its bound
            assert np.all(np.abs(got - want) <= result.error_bound), name
            assert "computed inside MPC" in result.privacy.confidentiality, name
            if isinstance(query, LinearRegression | LogisticRegression):
                np.testing.assert_allclose(result.value.se, reference.value.se, rtol=1e-2)
        elif layout.integer:
            np.testing.assert_array_equal(got, want, err_msg=name)
        else:
            # derived from sums within their bound; precision is traded for safe division
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6, err_msg=name)
        assert all(s.bytes_sent > 0 for s in result.sites[1:]), name  # shares on the wire
        assert result.comm_rounds >= result.rounds, name


def test_counts_above_float32_precision_stay_exact(mpc: MPC) -> None:
    layout = Layout((Block.counts("n", 1), Block.counts("cells", 3)))
    partials = [np.array([9_999_999.0, 16_777_217.0 / 3, 3.0, 1.0]).round()] * 3
    total = mpc.reveal(mpc.combine([mpc.protect(p, layout) for p in partials], layout), layout)
    np.testing.assert_array_equal(total.total, np.sum(partials, axis=0))


def test_a_revealed_sum_costs_two_rounds_and_counts_each_once(mpc: MPC) -> None:
    """The parties compare the round they answer (one exchange), then open the sum to
    party 0 (one more); each program reports its own rounds and bytes, so a query's
    figures do not count its sharing twice. A party's bytes, as CrypTen counts them
    (what it sends and receives): its round digest to and from the two others, then its
    share of the sum to party 0."""
    layout = Layout((Block.counts("n", 1), Block.counts("cells", 3)))
    partials = [np.array([5.0, 1.0, 2.0, 2.0])] * 3
    total = mpc.reveal(mpc.combine([mpc.protect(p, layout) for p in partials], layout), layout)
    assert total.comm_rounds == 2
    assert total.site_bytes[1:] == (2 * 2 * ASKED_BYTES + 8 * layout.size,) * 2


def test_scale_leaves_room_for_the_worst_case_sum() -> None:
    layout = Layout((Block.counts("n", 1), Block.sums("s", 2, bound=27.7)))
    bits = scale_bits(layout, Limits(max_rows_per_site=10**8, max_sites=100))
    assert 27.7 * 10**10 * 2.0**bits < 2.0**62
    moments = Layout((Block.counts("n", 1), Block.sums("s", 2)))
    bits = scale_bits(moments, Limits(max_rows_per_site=10**8, max_sites=100))
    assert 10**10 * 2.0**bits < 2.0**46  # what secure programs divide stays small
    with pytest.raises(PetError, match="lower max_rows_per_site or max_sites"):
        scale_bits(layout, Limits(max_rows_per_site=10**12, max_sites=10**4))


def test_a_party_that_dies_during_a_query_fails_it_cleanly_and_the_next_query_works(
        lung3: Workload, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = MPC(max_rows_per_site=10**6, max_sites=4, parties=PartyConfig(timeout_s=30))
    with Study(lung3.sites(NO_CELL_LIMIT), backend=backend) as study:
        victim = backend._parties._parties[1]
        processes = [p.process for p in backend._parties._parties]
        handed = victim.send

        def hand_then_die(message: tuple) -> None:
            """Party 1 gets its program, then dies while the others run it."""
            handed(message)
            os.kill(victim.process.pid, signal.SIGKILL)

        monkeypatch.setattr(victim, "send", hand_then_die)
        with pytest.raises(PartyError, match=r"party 1 died.*nothing was revealed"):
            study.run(Mean("age"))
        assert not any(p.is_alive() for p in processes)
        assert study.run(Mean("age")).value == pytest.approx(lung3.pooled().age.mean())


def test_a_party_found_dead_between_queries_is_replaced_before_the_next(lung3: Workload) -> None:
    backend = MPC(max_rows_per_site=10**6, max_sites=4, parties=PartyConfig(timeout_s=30))
    with Study(lung3.sites(NO_CELL_LIMIT), backend=backend) as study:
        first = backend._parties
        os.kill(first._parties[1].process.pid, signal.SIGKILL)
        first._parties[1].process.join(10)
        assert study.run(Mean("age")).value == pytest.approx(lung3.pooled().age.mean())
        assert backend._parties is not first and backend._parties.alive


def test_a_stalled_party_fails_within_the_deadline(lung3: Workload) -> None:
    backend = MPC(max_rows_per_site=10**6, max_sites=4, parties=PartyConfig(timeout_s=3))
    with Study(lung3.sites(NO_CELL_LIMIT), backend=backend) as study:
        processes = [p.process for p in backend._parties._parties]
        os.kill(processes[2].pid, signal.SIGSTOP)
        # The first wait to run out names the deadline: a party's own wait for the stalled
        # party's message, or this process's wait for a party's answer.
        with pytest.raises(PartyError, match=r"within 3 s; nothing was revealed"):
            study.run(Mean("age"))
        assert not any(p.is_alive() for p in processes)


def test_a_partial_beyond_the_session_limits_is_refused(mpc: MPC) -> None:
    layout = Layout((Block.counts("n", 1),))
    with pytest.raises(PetError, match="max_rows_per_site=10000000"):
        mpc.protect(np.array([1e7 + 1]), layout)
    with pytest.raises(PetError, match=r"shape \(2,\) does not fit the query's layout of 1"):
        mpc.protect(np.array([1.0, 2.0]), layout)


def test_secure_statistics_reveal_only_n_and_the_answer_and_never_go_wrong(mpc: MPC) -> None:
    data = cohort(5000, 2, 9)  # two sites: a third, empty party joins
    clear = data.study(policy=NO_CELL_LIMIT)
    secure = Study(data.sites(NO_CELL_LIMIT), backend=mpc)
    assert mpc._parties.n == 3
    queries = [Mean("sbp"), Variance("hdl"), StdDev("bmi", where="smoking == 'current'"),
               Covariance(("age", "sbp", "hba1c")), Correlation(("age", "bmi", "hdl"))]
    for _ in range(12):  # repeats hunt for truncation errors (off by 2^36 units at 28 bits)
        for query in queries:
            got = answer_vector(secure.run(query).value)
            want = answer_vector(clear.run(query).value)
            result = secure.run(query)
            assert np.all(np.abs(answer_vector(result.value) - want) <= result.error_bound)
            assert np.all(np.abs(got - want) <= result.error_bound)


def test_a_regression_on_lung_takes_at_most_110_rounds_a_solve(mpc: MPC,
                                                                lung3: Workload) -> None:
    """With its dealer's material dealt ahead, a linear regression on lung (4 terms)
    counts at most 110 rounds of communication, and a logistic fit at most 110 a Newton
    round (138 and 134 while each product and output took rounds of its own), each
    answer within its bound."""
    secure = Study(lung3.sites(NO_CELL_LIMIT), backend=mpc)
    clear = lung3.study(policy=NO_CELL_LIMIT)
    for name in ("linear", "logistic"):
        query = PRESETS["lung"][name]
        secure.run(query)
        # A program that fails its copies' check (rarely) is run again, and its rounds
        # are counted again: the fewest over three runs is the program's own count.
        runs = [secure.run(query) for _ in range(3)]
        assert min(r.comm_rounds / r.rounds for r in runs) <= 110, name
        want = answer_vector(clear.run(query).value)
        for result in runs:
            got = answer_vector(result.value)
            assert np.all(np.abs(got - want) <= result.error_bound), name


def test_a_program_run_again_takes_its_dealers_material_in_one_exchange(
        mpc: MPC, lung3: Workload) -> None:
    """Run again with the same public inputs, a secure program asks the dealer once,
    before it starts, for what it asked piece by piece the first time: a 3-column
    correlation's rounds fall from about 200 to under 60, within the same error bound."""
    secure = Study(lung3.sites(NO_CELL_LIMIT), backend=mpc)
    query = Correlation(("age", "meal_cal", "wt_loss"), where="ph_ecog < 3 and age > 41")
    want = answer_vector(lung3.study(policy=NO_CELL_LIMIT).run(query).value)
    first, again = secure.run(query), secure.run(query)
    assert first.comm_rounds > 150 and again.comm_rounds <= 60
    for result in (first, again):
        assert np.all(np.abs(answer_vector(result.value) - want) <= result.error_bound)


@pytest.mark.parametrize("text", [
    'Variance("hdl", where="{w}")',
    'Correlation(("age", "bmi"), where="{w}")',
    'LinearRegression("sbp", ("age", "bmi"), where="{w}")',
    'LogisticRegression("diabetes", ("age",), where="{w}")',
    'ExactQuantiles("hdl", (0.5,), branching=64, where="{w}")',
    'Cox("cvd_time", "cvd_event", ("age",), where="{w}")',
])
def test_a_program_of_the_same_shape_over_other_rows_takes_its_material_dealt_ahead(
        mpc: MPC, text: str) -> None:
    """What a kernel asks the dealer for follows from its shape, not from n: the same
    query over rows filtered otherwise (n from thousands to about a hundred, which moves
    the divisors and whether the sums' low limb joins them) takes its material in one
    exchange, and agrees with plaintext. Asked piece by piece, each request is a round
    trip."""
    data = cohort(3000, 3, 17)
    secure = Study(data.sites(NO_CELL_LIMIT), backend=mpc)
    clear = data.study(policy=NO_CELL_LIMIT)
    results = []
    for where in ("age > 30", "age > 78", "age > 78"):
        query = parse(text.format(w=where))
        result = secure.run(query)
        want = answer_vector(clear.run(query).value)
        assert np.all(np.abs(answer_vector(result.value) - want) <= result.error_bound)
        results.append(result)
    large, small, again = results
    assert 10 * small.n < large.n
    # as many rounds a Newton round as its rerun, whose material is dealt ahead (a fit's
    # last round counts a few more than the others; asked piece by piece, a first round
    # counts from 1.5 times as many, a variance's, to 4, a correlation's)
    assert small.comm_rounds / small.rounds <= 1.05 * again.comm_rounds / again.rounds


@pytest.mark.parametrize("query", [
    Variance("bmi"), LinearRegression("sbp", ("age", "bmi")),
    Cox("cvd_time", "cvd_event", ("age",), grid=8)], ids=["variance", "linear", "cox"])
def test_every_n_asks_the_dealer_for_what_the_shape_recorded(mpc: MPC, query: Any) -> None:
    """The secure program run on sums whose n is set to values that move every
    n-dependent choice a kernel makes (the low limb, the per-row and the moments'
    precision, down to their least) takes the material its shape recorded at the real n,
    in one exchange: no request out of order, none left unused."""
    data = cohort(600, 3, 6)
    schema, sites = data.schema, data.study(policy=NO_CELL_LIMIT).sites
    state = query.initial_state(schema)
    layout = query.layout(schema, state)
    where = _blocks(layout)["n"][0]
    public = mpc.secure_public(query, query.bounded(schema), layout, state)

    def secure(n: float | None) -> dict[str, Any]:
        partials = [np.array(site.partial(query, state), dtype=np.float64) for site in sites]
        if n is not None:
            partials[0][where] = n
            for partial in partials[1:]:
                partial[where] = 0.0
        parties = mpc._session(3)
        parties.run("share_sum", [bytes(ASKED_BYTES) + p.astype("<f8").tobytes()
                                  for p in partials], mpc.share_public(layout))
        return parties.run("secure", [b""] * 3, public)[0]

    secure(None)  # records the shape's requests, if no earlier test did
    dealt = secure(None)["rounds"]
    assert secure(0.0)["values"] is None  # too few rows: the kernel runs, nothing shows
    for n in (2**11 + 1, 2**15 + 1, 2**24 + 5, 2**30):
        assert secure(float(n))["rounds"] == dealt
    assert secure(None)["rounds"] == dealt


def test_a_cox_fits_newton_rounds_share_one_dealing(mpc: MPC, lung3: Workload) -> None:
    """A Cox round's coefficients only multiply inside MPC, so every Newton round after
    the first takes its dealer material in one exchange, already in the first fit: a
    round that asks the dealer piece by piece counts about 700 rounds of communication
    (2 741 for this fit's four), one dealt ahead about 300 (1 745)."""
    query = Cox("time", "dead", ("age",), where="age > 40")
    want = answer_vector(lung3.study(policy=NO_CELL_LIMIT).run(query).value)
    result = Study(lung3.sites(NO_CELL_LIMIT), backend=mpc).run(query)
    assert np.all(np.abs(answer_vector(result.value) - want) <= result.error_bound)
    assert result.rounds >= 3 and result.comm_rounds < 600 * result.rounds


def test_too_few_rows_reveal_nothing_but_the_count(mpc: MPC, lung3: Workload) -> None:
    secure = Study(lung3.sites(NO_CELL_LIMIT), backend=mpc)
    with pytest.raises(PetError, match="too few complete rows"):
        secure.run(Variance("age", where="age > 81"))


def test_too_few_rows_after_material_was_dealt_keep_the_session_in_step(
        mpc: MPC, lung3: Workload) -> None:
    """Material dealt for a program before n is revealed is drawn by the kernel even when
    n then proves too small to reveal anything: the next query runs as usual."""
    secure = Study(lung3.sites(NO_CELL_LIMIT), backend=mpc)
    clear = lung3.study(policy=NO_CELL_LIMIT)
    enough = Variance("meal_cal", where="age > 50")
    secure.run(enough)  # records what a variance of this shape asks the dealer for
    with pytest.raises(PetError, match="too few complete rows"):
        secure.run(Variance("meal_cal", where="age > 81"))
    result = secure.run(enough)
    assert abs(result.value - clear.run(enough).value) <= result.error_bound


@pytest.mark.parametrize(("function", "steps", "base"),
                         [("reciprocal", 20, 2.0), ("inv_sqrt", 10, 4.0)])
def test_normalised_functions_hold_at_both_ends_of_their_range(mpc: MPC, function: str,
                                                               steps: int, base: float) -> None:
    lowest = base**-steps
    x = np.concatenate([[lowest, 1.0, 1 - 2**-22, 0.5, 0.25], np.geomspace(lowest, 1, 25)])
    public = {"function": function, "steps": steps, "precision": 22}
    out = mpc._session(3).run("check", [np.zeros(0)] * 3, {**public, "x": x.tolist()})[0]
    encoded = np.trunc(x * 2**22) / 2**22  # CrypTen encodes public inputs by truncation
    want = 1 / encoded if function == "reciprocal" else 1 / np.sqrt(encoded)
    # the last Newton step's two truncations (under one unit per party each, the first
    # doubled by y ≤ 2) leave at most about ten units of 2^-22 on y ≥ 1
    np.testing.assert_allclose(out["y"] * out["s"], want, rtol=16 * 2**-22)
    assert not out["small"].any()
    out = mpc._session(3).run("check", [np.zeros(0)] * 3,
                              {**public, "x": [lowest * 0.99, lowest / 3]})[0]
    assert out["small"].all()  # below the range: flagged, never silently wrong


def test_the_reciprocals_start_leaves_no_more_than_its_stated_error() -> None:
    """Every division inside MPC (`kernels.newton_reciprocal`) starts from a − b·w on [1/2, 1] and
    ends with a relative error e⁸, e = 1 − w·(a − b·w); the error bounds assume e⁸ is at
    most RECIPROCAL_ERROR, checked here on a fine grid, and the slope is whole, so that
    the start needs no truncation."""
    a, b = RECIPROCAL_START
    w = np.linspace(0.5, 1.0, 1_000_001)
    error = np.abs(1 - w * (a - b * w)) ** 8
    assert error.max() <= RECIPROCAL_ERROR < 2 * error.max()
    assert isinstance(b, int)


def test_the_solves_scaling_bounds_hold_its_start_over_the_whole_range() -> None:
    """The solve scales XᵀX's diagonal by the inverse square root's linear start divided
    by EQUILIBRATED[1], and Cox's residual bound divides by LEAST_SCALE: both hold only if
    EQUILIBRATED brackets (a − b·w)·√w over [1/4, 1], checked here on a fine grid."""
    w = np.linspace(0.25, 1.0, 1_000_001)
    start = (INV_SQRT_START[0] - INV_SQRT_START[1] * w) * np.sqrt(w)
    assert EQUILIBRATED[0] <= start.min() < EQUILIBRATED[0] + 1e-4
    assert EQUILIBRATED[1] - 1e-4 < start.max() <= EQUILIBRATED[1]
    assert start.min() / start.max() >= LEAST_SCALE


def test_a_value_below_a_coarse_encodings_unit_is_flagged(mpc: MPC) -> None:
    """At 2^27 rows and more, per-row values keep 18 fractional bits, and the lowest
    threshold of a diagonal, 4^-10, would encode to 0: a value that rounded to 0 passed
    unflagged into its inverse square root. It is flagged; one unit is not."""
    public = {"function": "inv_sqrt", "steps": 10, "precision": 18, "x": [2.0**-19, 2.0**-18]}
    out = mpc._session(3).run("check", [np.zeros(0)] * 3, public)[0]
    assert out["small"].tolist() == [1, 0]


def test_a_comparison_adds_the_parties_shares_with_carry_save_adders(mpc: MPC) -> None:
    """Five parties' shares reduce to two in three levels of carry-save adders, one more
    than four need and two more than three: each level is one secure AND, its reveal and
    its triple's request (4 counted rounds, the request not dealt ahead here). CrypTen's
    own conversion adds them with a tree of full adders, 7 ANDs a level: three levels for
    five parties, two for three or four. Every number of parties answers the same."""
    x = np.geomspace(2.0**-20, 1, 40)
    public = {"function": "reciprocal", "steps": 20, "precision": 22, "x": x.tolist()}
    outputs = {3: mpc._session(3).run("check", [np.zeros(0)] * 3, public)[0]}
    for parties in (4, 5):
        backend = MPC(max_rows_per_site=10**7, max_sites=parties,
                      parties=PartyConfig(timeout_s=60))
        try:
            outputs[parties] = backend._session(parties).run(
                "check", [np.zeros(0)] * parties, public)[0]
        finally:
            backend.close()
    rounds = {parties: out["rounds"] for parties, out in outputs.items()}
    assert rounds[4] - rounds[3] == 4 and rounds[5] - rounds[3] == 8
    for out in outputs.values():
        np.testing.assert_array_equal(out["s"], outputs[3]["s"])
        np.testing.assert_allclose(out["y"] * out["s"], 1 / (np.trunc(x * 2**22) / 2**22),
                                   rtol=16 * 2**-22)


def test_exact_quantiles_reveal_only_their_digits_and_equal_numpys(mpc: MPC) -> None:
    data = cohort(3000, 3, 2)
    query = ExactQuantiles("hdl", (0.05, 0.5, 0.95), branching=64)
    result = Study(data.sites(NO_CELL_LIMIT), backend=mpc).run(query)
    want = np.quantile(data.pooled()["hdl"].dropna(), query.probs, method="inverted_cdf")
    np.testing.assert_array_equal(result.value, want)
    assert result.error_bound == 0 and "computed inside MPC" in result.privacy.confidentiality


def test_a_fit_beyond_fixed_point_precision_is_refused(mpc: MPC) -> None:
    data = cohort(2000, 3, 5)
    secure = Study(data.sites(NO_CELL_LIMIT), backend=mpc)
    with pytest.raises(PetError, match=r"\(nearly\) constant or the predictors are nearly"):
        secure.run(LinearRegression("sbp", ("age", "sex"), where="sex == 'female'"))


def test_a_nearly_collinear_fit_is_answered_within_its_bounds(mpc: MPC, lung3: Workload) -> None:
    """Weight loss squeezed into half a kilogram (within public bounds of 100): the fit's
    copies spread by 2^24 raw units and more, whose squares, taken whole, passed the
    64-bit ring, and the answer was withheld (or released with a wrapped, too small
    bound); in limbs they are exact, and the intercept's standard error, a few per cent
    noisy from one copy to the next, still agrees between the groups."""
    rng = np.random.default_rng(0)
    sites = []
    for name, table in lung3.tables.items():
        frame = table.to_frame().copy()
        frame["wt_loss"] = 25 + rng.uniform(0, 0.5, len(frame))
        sites.append(Site(name, FrameTable(frame, lung3.schema), policy=NO_CELL_LIMIT))
    query = LinearRegression("meal_cal", ("age", "sex", "ph_ecog", "wt_loss", "ph_karno",
                                          "pat_karno"))
    exact = Study(sites).run(query).value
    for _ in range(2):
        result = Study(sites, backend=mpc).run(query)
        assert np.all(np.abs(result.value.coef - exact.coef) <= result.error_bounds)
        np.testing.assert_allclose(result.value.se, exact.se, rtol=0.1)


def test_a_mean_alone_is_answered(mpc: MPC, lung3: Workload) -> None:
    """A regression on the intercept alone explains nothing by definition: its R² is 0 in
    every copy, where the two sums of squares' rounding made it ±5·10⁻⁵ and the groups
    never agreed within 25%, so the fit was withheld."""
    query = LinearRegression("wt_loss", ())
    exact = Study(lung3.sites(NO_CELL_LIMIT)).run(query).value
    for _ in range(2):
        result = Study(lung3.sites(NO_CELL_LIMIT), backend=mpc).run(query)
        assert np.all(np.abs(result.value.coef - exact.coef) <= result.error_bounds)
        assert result.value.r2 == 0.0


def test_ten_million_rows_neither_overflow_nor_lose_the_answer(mpc: MPC, lung3: Workload) -> None:
    """Every lung row repeated 43,860 times (10^7 rows in all): the answers are those of
    the original rows, within the reported bounds; and a column at either end of its
    public range gives that end as its mean."""
    copies = 43_860
    clear = lung3.study(policy=NO_CELL_LIMIT)
    for name in ("mean", "variance", "correlation", "linear", "exact_quantiles"):
        query = PRESETS["lung"][name]
        state = query.initial_state(lung3.schema)
        while True:
            layout = query.layout(lung3.schema, state)
            partials = [site.partial(query, state) * copies for site in clear.sites]
            combined = mpc.combine([mpc.protect(p, layout) for p in partials], layout)
            conclusion = mpc.conclude(query, lung3.schema, state, combined, layout)
            if not isinstance(conclusion.outcome, Next):
                break
            state = conclusion.outcome.state
        assert conclusion.head[0] == clear.run(query).n * copies, name
        want = query.finalize(np.sum(partials, axis=0), lung3.schema, state)
        got = answer_vector(conclusion.outcome)
        assert np.all(np.abs(got - answer_vector(want)) <= conclusion.error_bound), name
    query = Mean("age")
    layout = query.layout(lung3.schema)
    lower, upper = lung3.schema["age"].bounds()
    for end, scaled in ((lower, -1.0), (upper, 1.0)):
        partials = [np.array([3_333_333.0, scaled * 3_333_333])] * 3  # n, Σ (age never missing)
        combined = mpc.combine([mpc.protect(p, layout) for p in partials], layout)
        conclusion = mpc.conclude(query, lung3.schema, None, combined, layout)
        assert abs(conclusion.outcome - end) <= conclusion.error_bound


def test_copies_that_agree_on_coefficients_but_not_on_standard_errors_are_rerun() -> None:
    def fit(se0: float) -> LinearFit:
        return LinearFit(("intercept", "x"), np.array([1.0, 2.0]), np.array([se0, 0.1]),
                         100, 0.5, 0.49, 1.0, 98)

    assert _agree([(fit(5.0), 1e-6), (fit(5.0 * (1 + 1e-6)), 1e-6)])
    assert not _agree([(fit(5.0), 1e-6), (fit(16.0), 1e-6)])  # a wrapped truncation


def test_a_negative_revealed_spread_reruns_even_when_both_groups_share_it(
        lung3: Workload) -> None:
    """An intercept's revealed a₀ᵀM⁻¹a₀ below zero in both groups (a wrapped truncation)
    would clamp both standard errors to 0, which agree: it is run again instead."""
    query = LinearRegression("age", ("wt_loss",))
    schema = query.bounded(lung3.schema)

    def copy(corner: float) -> dict[str, np.ndarray]:
        return {"values": np.array([0.1, 0.2]), "noise": np.zeros(4), "small": np.array(0.0),
                "diagonal": np.array([2.0, 3.0]), "corner": np.array(corner),
                "rss": np.array(0.4), "tss": np.array(1.0)}

    run = (SECURE[LinearRegression], query, schema, None)
    units = Units.of(3, 3, 200, 12, low=True)
    answers = _answers(*run, [copy(2.0), copy(2.0)], 200.0, units)
    assert answers is not None and _agree(answers) and answers[0][0].se[0] > 0
    assert _answers(*run, [copy(-2.0), copy(-2.0)], 200.0, units) is None
    closing = {**copy(2.0), "inverse": np.array([[2.0, 0.1], [0.1, 3.0]])}
    assert _possible(query, schema, closing)
    closing["inverse"] = np.array([[2.0, 0.1], [0.1, -3.0]])  # a Cox fit's Wald test's
    assert not _possible(query, schema, closing)


def test_a_refusal_in_one_copy_only_reruns_and_in_both_refuses(lung3: Workload) -> None:
    """A wrapped truncation can inflate one copy's count of too-small pivots: only when
    both copies count one is the query refused (as nearly collinear)."""
    query = Cox("time", "dead", ("age",), grid=10)
    state = query.initial_state(lung3.schema)

    def copy(small: float) -> dict[str, np.ndarray]:
        return {"values": np.array([0.1]), "twin": np.array([0.1]), "small": np.array(small),
                "imprecise": np.array(0.0), "log_likelihood_per_row": np.array(-1.0),
                "residual": np.array([0.0]), "diagonal": np.array([1.0]),
                "corner": np.array(0.0)}

    run = (SECURE[Cox], query, lung3.schema, state)
    units = Units.of(3, 3, 200, 12, low=True)
    assert _answers(*run, [copy(0.0), copy(1.0)], 200.0, units) is None
    answers = _answers(*run, [copy(0.0), copy(0.0)], 200.0, units)
    assert answers is not None and _agree(answers)
    with pytest.raises(QueryError, match="nearly collinear"):
        _answers(*run, [copy(1.0), copy(1.0)], 200.0, units)


def limb_sums(deviations: np.ndarray) -> np.ndarray:
    """What the parties reveal of each group's deviations (groups × copies × numbers, raw
    units): Σh², Σh·l and Σl² for d = h·2^16 + l, h = d / 2^16 truncated toward zero."""
    high = np.trunc(deviations / 2**16)
    low = deviations - high * 2**16
    return np.concatenate([(high * high).sum(1), (high * low).sum(1), (low * low).sum(1)],
                          axis=-1)


def test_the_copies_bound_is_students_t_on_their_pooled_spread() -> None:
    """`_noise` against scipy.stats: two groups of copies, raw units at 2^-22, pooled
    over both groups' 62 degrees of freedom, at a failure chance of 10⁻⁹ per number; the
    deviations as large as an ill-conditioned fit's (2^30 raw units), whose squares
    would pass the 64-bit ring whole."""
    copies = 32
    draws = np.random.default_rng(5).normal(0.0, [1e-5, 3e-4, 256.0], size=(2, copies, 3))
    raw = np.rint(draws * 2.0**22)
    deviations = raw - raw.mean(axis=1, keepdims=True)
    pooled = np.sqrt((deviations**2).sum(axis=(0, 1)) / (2 * copies - 2)) / 2.0**22
    quantile = stats.t.ppf(1 - 1e-9 / 2, 2 * copies - 2)
    revealed = limb_sums(deviations)
    np.testing.assert_allclose(_noise(revealed, 22, copies, 2 * copies),
                               quantile * pooled / np.sqrt(2 * copies), rtol=1e-9)
    np.testing.assert_allclose(_noise(revealed, 22, copies, copies),
                               quantile * pooled / np.sqrt(copies), rtol=1e-9)


def test_groups_whose_copies_spread_unlike_are_rerun() -> None:
    """The two groups' squared deviations per number must agree within the F test at
    10⁻⁹: a copy that a wrong truncation threw 2^20 units off swells one group's spread
    beyond any chance, and a square that wrapped the ring leaves limbs no deviations
    have (a negative square, or a cross term beyond Cauchy–Schwarz). Numbers that hardly
    vary at all (a unit of rounding) are not compared."""
    program = SECURE[LinearRegression]
    rng = np.random.default_rng(7)
    deviations = np.rint(rng.normal(0.0, [40.0, 2.0**30, 0.3], size=(2, program.copies, 3)))
    assert program.steady({"deviations": limb_sums(deviations)})
    thrown = deviations.copy()
    thrown[1, 5, 0] += 2.0**20
    assert not program.steady({"deviations": limb_sums(thrown)})
    for number, bad in ((1, -1.0), (4, 1.0)):  # Σh² < 0; |Σh·l| > √(Σh²·Σl²)
        wrapped = limb_sums(deviations)
        wrapped[0, number] = bad * wrapped[0, number] + (bad > 0) * 2.0**50
        assert not program.steady({"deviations": wrapped})
    assert SECURE[Cox].steady({})  # one copy a group: nothing to compare


def test_the_maximum_lies_within_the_newton_distance_of_the_last_step(lung3: Workload) -> None:
    """From coefficients 10⁻² and 10⁻³ away from lung's maximum-likelihood logistic fit
    (statsmodels, on the same scaled design), one exact Newton step lands within
    `_newton_distance` of it, coefficient by coefficient in original units, and the
    bound shrinks with the square of the step, as Newton's method converges."""
    query = LogisticRegression("dead", ("age", "sex", "ph_ecog"))
    schema = query.bounded(lung3.schema)
    design = query.design(schema)
    frame = lung3.pooled().dropna(subset=["dead", "age", "sex", "ph_ecog"])
    data = {"age": frame["age"].to_numpy(), "ph_ecog": frame["ph_ecog"].to_numpy(),
            "sex": pd.Categorical(frame["sex"], schema["sex"].categories).codes}
    x = model_matrix(design, schema, query.predictors, data)
    y = frame["dead"].to_numpy(dtype=np.float64)
    best = sm.Logit(y, x).fit(disp=0, tol=1e-12).params
    original = design.to_original()
    bounds = []
    for away in (1e-2, 1e-3):
        beta = best + away
        mu = 1 / (1 + np.exp(-x @ beta))
        hessian = (x * (mu * (1 - mu))[:, None]).T @ x / len(y)
        step = np.linalg.solve(hessian, x.T @ (y - mu) / len(y))
        inverse = np.linalg.inv(hessian)
        values = {"values": step, "diagonal": np.diag(inverse),
                  "corner": original[0] @ inverse @ original[0]}
        bound = _newton_distance(query, schema, LogisticState(3, tuple(beta)), values,
                                 np.zeros(len(step)))
        assert np.all(np.abs(original @ (beta + step - best)) <= bound)
        bounds.append(bound)
    np.testing.assert_allclose(bounds[1] / bounds[0], 1e-2, rtol=0.5)


def test_a_poisson_step_that_is_never_shortened_moves_by_its_error_alone() -> None:
    """Shortening can scale a step's error by p + 1; a step that no error can carry past
    `STEP_LIMIT` is not shortened, so it moves by its error, and the bound is not
    widened (7 times, for 6 terms, before)."""
    query = PoissonRegression("events", ("age",))
    state = PoissonState(3, (0.1, 0.2))
    assert query.advance_error(None, state, np.array([0.01, -0.02]), 1e-4) == 1e-4
    assert query.advance_error(None, state, np.array([3.0, -2.0]), 1e-4) == pytest.approx(3e-4)


def test_copies_of_a_logistic_round_disagree_when_only_one_has_converged() -> None:
    """One copy finished (a fit) while the other takes another round (Next): the program
    is run again rather than compared element by element."""
    beta = (0.5, -0.25)
    fit = LogisticFit(("a", "b"), np.array(beta), np.array([0.1, 0.1]), 100, -60.0, 5, True)
    step = Next(LogisticState(5, beta))
    assert _agree([(fit, 0.01), (fit, 0.01)])
    assert not _agree([(fit, 0.01), (step, 0.01)])


def test_spare_processes_become_the_parties_and_the_dealer(lung3: Workload) -> None:
    """A server keeps a spare process with CrypTen imported; a session hands it its rank
    and listener, and it computes as a freshly started party would."""
    spares = [Spare() for _ in range(4)]
    parties = Parties(3, PartyConfig(timeout_s=60), spares=spares)
    try:
        assert [p.process for p in parties._parties] == [s.process for s in spares]
        backend = MPC(parties=parties)
        study = Study(lung3.sites(policy=NO_CELL_LIMIT), backend=backend)
        exact = lung3.study("plaintext", policy=NO_CELL_LIMIT).run(Mean("age")).value
        assert study.run(Mean("age")).value == pytest.approx(exact, rel=1e-4)
    finally:
        parties.close()


def test_a_server_takes_its_spare_and_keeps_none_once_closed() -> None:
    """`Warm` hands its spare to the first session and none after closing; a spare that
    is closed takes no session (a fresh party starts instead)."""
    warm = Warm()
    assert warm.take() is None  # never started: every session starts its own
    warm.start()
    spare = warm.take()
    assert spare is not None and spare.alive
    spare.close()
    assert not spare.take(("join",))
    warm.close()
    warm.start()
    assert warm.take() is None


@pytest.mark.parametrize(("mpc", "warm"), [(None, True), ({"warm": False}, False),
                                           ({"warm": "no"}, None)])
def test_a_server_keeps_a_spare_unless_its_configuration_says_not(tmp_path, mpc, warm) -> None:
    spec = {"name": "s", "listen": "127.0.0.1:1", "coordinator": "c", "data": {},
            "tls": {"cert": "c", "key": "k", "ca": "a"}, "ledger": "l", "audit": "a",
            **({"mpc": mpc} if mpc is not None else {})}
    (tmp_path / "site.yaml").write_text(yaml.safe_dump(spec))
    if warm is None:
        with pytest.raises(ConfigError, match="mpc: warm must be true or false"):
            read_site(tmp_path / "site.yaml")
    else:
        assert read_site(tmp_path / "site.yaml").mpc_warm is warm


def test_a_spare_a_session_cannot_use_is_ended(tmp_path) -> None:
    """A join refused before the spare is handed its session (here: no certificate)
    ends the spare rather than leaving it idle until the server exits."""
    spare = Spare()
    with pytest.raises(PartyError, match="needs the federation's certificate"):
        Party(0, 3, PartyConfig(names=("a", "b", "c")), spare=spare)
    assert not spare.alive


def test_a_script_that_starts_parties_outside_a_main_guard_is_told_the_fix(
        tmp_path: Path) -> None:
    """A spawned party imports the script again; without the guard it used to die with
    multiprocessing's bootstrapping error and the study saw only 'party 0 died'."""
    script = tmp_path / "study.py"
    script.write_text("from pet.mpc.parties import Parties\n\nParties(3)\n")
    ran = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert ran.returncode == 1
    assert f"{script}, line 3" in ran.stderr and 'if __name__ == "__main__":' in ran.stderr
    assert "died" not in ran.stderr and "bootstrapping" not in ran.stderr
    guarded = tmp_path / "guarded.py"
    guarded.write_text("from pet.mpc.parties import _require_main_guard\n\n"
                       "if __name__ == \"__main__\":\n    _require_main_guard()\n"
                       "    print(\"checked\")\n")
    ran = subprocess.run([sys.executable, str(guarded)], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert ran.returncode == 0 and ran.stdout == "checked\n", ran.stderr
    guarded.write_text("import os\nfrom pet.mpc.parties import _require_main_guard\n\n"
                       "if __name__ == \"__main__\" and not os.environ.get(\"DRY\"):\n"
                       "    _require_main_guard()\nelse:\n    _require_main_guard()\n")
    ran = subprocess.run([sys.executable, str(guarded)], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr  # one term of an `and` guards too
    ran = subprocess.run([sys.executable, str(guarded)], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path, env={**os.environ, "DRY": "1"})
    assert ran.returncode == 1 and "line 7" in ran.stderr  # the `else:` is not guarded


def _square_modulo(a: int, bits: int) -> bool:
    """Whether a is a square modulo 2^bits: 0, or 4^e·u with u ≡ 1 (mod 8) (or u below
    what the remaining bits can tell apart)."""
    a %= 1 << bits
    if a == 0:
        return True
    zeros = (a & -a).bit_length() - 1
    left = bits - zeros
    return zeros % 2 == 0 and (left < 3 or (a >> zeros) % min(8, 1 << left) == 1)


def test_an_opened_variance_keeps_the_mean_s_low_bits_secret(lung3: Workload, mpc: MPC,
                                                             monkeypatch) -> None:
    """The variance kernel opens A·2^k − m² exactly: unmasked, every opened value would be
    minus a square modulo 2^k, and the square root would give the mean away. Each party
    masks those bits, so most opened values are not: none of six passes by chance with
    probability (1/6)^6."""
    opened = []
    run = MPC._run

    def spy(self: MPC, program: str, n_sites: int, public: dict) -> list:
        outputs = run(self, program, n_sites, public)
        if program == "secure" and outputs[0]["values"] is not None:
            opened.extend(int(v) for v in np.ravel(outputs[0]["values"]["fine"]))
        return outputs

    monkeypatch.setattr(MPC, "_run", spy)
    study = lung3.study(mpc, policy=NO_CELL_LIMIT)
    results = [study.run(Variance("age")) for _ in range(3)]
    bits = MEAN_GAP + moment_precision(results[0].n)
    assert len(opened) == 6
    assert not all(_square_modulo(-value, bits) for value in opened)
    assert all(_square_modulo(k * k, bits) for k in range(1, 200))  # the test's own check
