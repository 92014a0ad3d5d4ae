"""Secure kernels on CrypTen tensors in one process, against numpy."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from pet.crypten_shim import load_crypten
from pet.mpc import kernels


@pytest.fixture(scope="module")
def crypten() -> Iterator[Any]:
    crypten = load_crypten()
    crypten.init()
    yield crypten
    crypten.uninit()


def test_gauss_jordan_solves_an_equilibrated_system_comparing_every_pivot_but_the_first(
        crypten: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A system equilibrated from a diagonal spread over [1/4, 1] (both ends included)
    has its first pivot in [0.708, 1), where the reciprocal needs no normalising
    comparison; each later pivot takes one. D·(DAD)⁻¹·D·b and D·(DAD)⁻¹·D match numpy's
    A⁻¹b and A⁻¹."""
    rng = np.random.default_rng(5)
    p = 4
    basis = rng.normal(size=(3 * p, p))
    gram = basis.T @ basis
    root = 1 / np.sqrt(np.diag(gram))
    spread = np.sqrt([1.0, 0.25, 0.6, 1 - 2**-10])
    matrix = gram * np.outer(root * spread, root * spread)  # diagonal 1, 1/4, 0.6, ~1
    rhs = rng.uniform(-0.5, 0.5, size=p)
    system = kernels.equilibrate(crypten.cryptensor(torch.from_numpy(matrix)), 10)
    scaled, factor = system.matrix, system.factor.get_plain_text().numpy()
    first = scaled.get_plain_text().numpy()[0, 0]
    assert 0.708 - 1e-3 <= first < 1 and system.small.get_plain_text().item() == 0
    compared = []
    below = kernels.below
    monkeypatch.setattr(kernels, "below", lambda x, t: compared.append(x.size()) or below(x, t))
    right = crypten.cryptensor(torch.from_numpy(np.hstack([(factor * rhs)[:, None], np.eye(p)])))
    solved, tiny = kernels.gauss_jordan(crypten.cat([scaled, right], -1), 10)
    got = solved.get_plain_text().numpy()
    np.testing.assert_allclose(factor * got[:, 0], np.linalg.solve(matrix, rhs), atol=5e-3)
    np.testing.assert_allclose(factor[:, None] * got[:, 1:] * factor, np.linalg.inv(matrix),
                               atol=5e-3)
    assert tiny.get_plain_text().item() == 0
    assert len(compared) == p - 1


def test_products_in_one_batch_equal_each_product_taken_alone(crypten: Any) -> None:
    """`kernels.products` multiplies every pair in one exchange: fixed point by fixed
    point (truncated by the left factor's scale), fixed point by an integer tensor and an
    integer tensor by fixed point (not truncated), broadcast across shapes. Each result
    equals CrypTen's own `a * b`, share for share and in its encoding (one process, so
    truncation is deterministic)."""
    rng = np.random.default_rng(11)

    def fixed(*shape: int, precision: int = 16) -> Any:
        return crypten.cryptensor(torch.from_numpy(rng.uniform(-2, 2, size=shape)),
                                  precision=precision)

    power = crypten.cryptensor(torch.tensor([1.0, 4.0, 32.0]), precision=0)
    pairs = [(fixed(3), fixed(3)), (fixed(2, 3), fixed(3).unsqueeze(0)),
             (fixed(3, precision=22), power), (power, fixed(3, precision=20)),
             (fixed(4, 1), fixed(1, 3)), (fixed(3, precision=22), fixed(3, precision=12))]
    for got, (a, b) in zip(kernels.products(pairs), pairs, strict=True):
        want = a * b
        assert got.encoder.scale == want.encoder.scale
        assert torch.equal(got.share, want.share)
