"""The `he` backend: roles (only the analyst can decrypt), exact BFV counts, CKKS sums
within the reported bound, every query against plaintext, and bad input refused."""

from __future__ import annotations

import numpy as np
import pytest
import tenseal as ts
from sympy import isprime

from benchmarks.queries import PRESETS
from pet.backends.base import Limits
from pet.backends.he import (
    CALIBRATION_UPPER,
    HE,
    RING_DEGREE,
    HEError,
    PublicHE,
    bfv_plain_modulus,
    ckks_scale_bits,
    is_prime,
    slot_noise,
)
from pet.errors import PetError
from pet.intervals import BOUND_Z
from pet.layout import Block, Layout
from pet.queries.regression import Fit
from pet.result import answer_vector
from pet.workloads import Workload, cohort
from tests.conftest import NO_CELL_LIMIT

COUNTS = Layout((Block.counts("n", 1), Block.counts("cells", 5000)))  # 2 BFV ciphertexts
MIXED = Layout((Block.counts("n", 1), Block.sums("sum", 2500, bound=2.0)))


@pytest.fixture(scope="module")
def he() -> HE:
    return HE(max_rows_per_site=10**7, max_sites=16)


def aggregate(backend: HE, partials: list[np.ndarray], layout: Layout):
    messages = [backend.protect(p, layout) for p in partials]
    return backend.reveal(backend.combine(messages, layout), layout)


def test_the_public_context_cannot_decrypt(he: HE) -> None:
    site_view = PublicHE(he.public_context, he.limits)
    message = site_view.encrypt(np.arange(COUNTS.size, dtype=float), COUNTS)
    vectors, _ = site_view.load(message, COUNTS, where="test")
    with pytest.raises(ValueError, match="doesn't hold a secret_key"):
        vectors[0].decrypt()
    bundle, contexts = he.public_context, []
    while bundle:  # the bundle is length-prefixed TenSEAL contexts, read independently here
        length = int.from_bytes(bundle[:8], "little")
        contexts.append(ts.context_from(bundle[8:8 + length]))
        bundle = bundle[8 + length:]
    assert len(contexts) == 2
    for context in contexts:
        assert not context.has_secret_key()
        assert not context.has_galois_keys() and not context.has_relin_keys()
    assert he.session_bytes == len(he.public_context) < 1_000_000


def test_a_context_with_a_secret_key_is_refused_as_public(he: HE) -> None:
    secret = he._secret["bfv"].serialize(save_secret_key=True)
    with pytest.raises(HEError, match="must not hold a secret key"):
        PublicHE(b"".join(len(b).to_bytes(8, "little") + b for b in (secret, secret)),
                 he.limits)


def test_bfv_counts_are_exact(he: HE) -> None:
    rng = np.random.default_rng(1)
    partials = [rng.integers(0, 10**7, COUNTS.size).astype(float) for _ in range(5)]
    result = aggregate(he, partials, COUNTS)
    np.testing.assert_array_equal(result.total, np.sum(partials, axis=0))
    assert not np.any(result.error_bounds)


def test_ckks_sums_stay_within_the_reported_bound(he: HE) -> None:
    rng = np.random.default_rng(2)
    for n_sites in (1, 4, 16):
        partials = []
        for _ in range(n_sites):
            partial = rng.uniform(-2, 2, MIXED.size) * 10**7
            partial[0] = rng.integers(0, 10**7)
            partials.append(partial)
        result = aggregate(he, partials, MIXED)
        error = np.abs(result.total - np.sum(partials, axis=0))
        assert result.independent
        assert np.all(error[1:] <= result.error_bounds[1:])
        assert error[0] == result.error_bounds[0] == 0  # a count in a CKKS layout, rounded


def test_the_measured_slot_noise_matches_the_theory_and_bounds_fresh_encryptions(
        he: HE) -> None:
    """Each slot's noise, measured from encryptions of zero, averages to the variance the
    rounding after the special prime's division gives, N(1/6 + N/18)/(2Δ²); it differs
    from slot to slot (with |s(ζ)|², so no one constant would do); and 6.1 of it bounds
    the error of new, independent encryptions in every slot."""
    public, secret = he.public.context("ckks"), he._secret["ckks"]
    noise = slot_noise(public, secret)
    n, scale = RING_DEGREE, 2.0 ** ckks_scale_bits(he.limits)
    theory = n * (1 / 6 + n / 18) / (2 * scale**2)
    measured = noise**2 / (CALIBRATION_UPPER**2)
    assert np.mean(measured) == pytest.approx(theory, rel=0.05)
    assert np.max(noise) > 3 * np.min(noise)
    fresh = np.array([ts.ckks_vector_from(secret, ts.ckks_vector(public, [0.0] * (n // 2))
                                          .serialize()).decrypt() for _ in range(64)])
    assert np.all(np.abs(fresh) <= BOUND_Z * noise)
    assert np.sqrt(np.mean(fresh**2)) == pytest.approx(np.sqrt(theory), rel=0.05)


def test_primality_agrees_with_sympy() -> None:
    rng = np.random.default_rng(3)
    numbers = [*range(0, 2000), 2**61 - 1, 3215031751, 2**35 + 8193,
               *(int(v) for v in rng.integers(2**40, 2**62, 300))]
    assert [is_prime(n) for n in numbers] == [isprime(n) for n in numbers]


def test_plain_modulus_is_a_batching_prime_above_twice_the_worst_count() -> None:
    limits = Limits(max_rows_per_site=10**8, max_sites=100)
    t = bfv_plain_modulus(limits)
    assert isprime(t) and t % (2 * RING_DEGREE) == 1 and t > 2 * 10**10
    with pytest.raises(HEError, match="lower max_rows_per_site or max_sites"):
        bfv_plain_modulus(Limits(max_rows_per_site=10**15, max_sites=10**4))


@pytest.mark.parametrize("workload", ["lung", "breast_cancer", "diabetes", "cohort"])
def test_every_query_matches_plaintext(workload: str, request) -> None:
    data = (cohort(3000, 3, 5) if workload == "cohort"
            else request.getfixturevalue({"lung": "lung3", "breast_cancer": "breast",
                                          "diabetes": "diabetes3"}[workload]))
    _check_queries(data)


def _check_queries(data: Workload) -> None:
    backend = HE(max_rows_per_site=10**6, max_sites=8)
    encrypted = data.study(backend, policy=NO_CELL_LIMIT)
    clear = data.study(policy=NO_CELL_LIMIT)
    for name, query in PRESETS[data.name].items():
        state = query.initial_state(data.schema)
        layout = query.layout(data.schema, state)
        partials = [site.partial(query, state) for site in clear.sites]
        total = aggregate(backend, partials, layout)
        error = np.abs(total.total - np.sum(partials, axis=0))
        assert np.all(error <= total.error_bounds), name  # the sums, within the bound
        if layout.integer:
            assert not np.any(total.error_bounds), name
        secret, reference = encrypted.run(query), clear.run(query)
        assert secret.backend == "he" and secret.n == reference.n, name
        assert secret.missing == reference.missing, name
        got, want = answer_vector(secret.value), answer_vector(reference.value)
        if layout.integer:
            np.testing.assert_array_equal(got, want, err_msg=name)
        elif isinstance(reference.value, Fit):  # Newton's path moves: by a 1000th of an SE
            assert np.all(np.abs(got - want) <= 1e-3 * reference.value.se), name
        else:  # derived answers: within each number's own bound
            assert np.all(np.abs(got - want) <= secret.error_bounds), name
        # Newton rounds stop once steps are within the aggregation error and no longer
        # contract: plaintext stops at tol instead, and two steps at the noise's level
        # contract 4× by chance now and then, so at most one more round than plaintext.
        assert secret.rounds <= reference.rounds + 1, name


def test_messages_under_another_key_are_refused(he: HE) -> None:
    other = HE(max_rows_per_site=10**7, max_sites=16)
    good = he.protect(np.ones(COUNTS.size), COUNTS)
    stranger = other.protect(np.ones(COUNTS.size), COUNTS)
    with pytest.raises(HEError, match="message 1 was encrypted under another key"):
        he.combine([good, stranger], COUNTS)
    with pytest.raises(HEError, match="another key"):
        other.reveal(he.combine([good], COUNTS), COUNTS)


@pytest.mark.parametrize(
    ("tamper", "words"),
    [
        (lambda m: b"garbage" + m, "not an `he` message"),
        (lambda m: m[:-100], "truncated"),
        (lambda m: m[:6] + b"X" + m[7:], "unknown scheme"),
    ],
)
def test_damaged_messages_are_refused(he: HE, tamper, words: str) -> None:
    message = he.protect(np.ones(COUNTS.size), COUNTS)
    with pytest.raises(HEError, match=words):
        he.combine([tamper(message)], COUNTS)


def test_shape_and_scheme_mismatches_are_refused(he: HE) -> None:
    small = Layout((Block.counts("n", 1),))
    with pytest.raises(HEError, match="holds 2 ciphertexts; the layout needs 1"):
        he.combine([he.protect(np.ones(COUNTS.size), COUNTS)], small)
    with pytest.raises(HEError, match="is BFV, but this layout uses CKKS"):
        he.combine([he.protect(np.ones(COUNTS.size), COUNTS)], MIXED)
    wrong = he.protect(np.ones(1), small)
    with pytest.raises(HEError, match="sizes"):
        he.combine([wrong], Layout((Block.counts("n", 2),)))


def test_a_partial_beyond_the_session_limits_is_refused(he: HE) -> None:
    too_many = np.zeros(COUNTS.size)
    too_many[5] = 10**7 + 1
    with pytest.raises(PetError, match=r"element 5 .* max_rows_per_site=10000000"):
        he.protect(too_many, COUNTS)


def test_a_ciphertext_of_other_parameters_is_refused(he: HE) -> None:
    foreign = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=8192,
                         coeff_mod_bit_sizes=[60, 40, 60])
    foreign.global_scale = 2**40
    message = he.protect(np.ones(MIXED.size) * 0.5, MIXED)
    header = message[:27]  # magic, scheme, key id, count of summed encryptions
    vector = ts.ckks_vector(foreign, [1.0] * 2048).serialize()
    forged = header + 2 * (len(vector).to_bytes(8, "little") + vector)
    with pytest.raises(HEError, match="not a ciphertext of this session's parameters"):
        he.combine([forged], MIXED)
