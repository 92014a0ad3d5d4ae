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
    """The first pivot of an equilibrated matrix lies in [0.708, 1), where the reciprocal
    needs no normalising comparison; each later pivot takes one. The solution and the
    inverse match numpy's."""
    rng = np.random.default_rng(5)
    p = 4
    basis = rng.normal(size=(3 * p, p))
    gram = basis.T @ basis
    root = 1 / np.sqrt(np.diag(gram))
    matrix = gram * np.outer(root, root) * 0.9  # unit diagonal scaled into [0.708, 1)
    rhs = rng.uniform(-0.5, 0.5, size=p)
    compared = []
    below = kernels.below
    monkeypatch.setattr(kernels, "below", lambda x, t: compared.append(x.size()) or below(x, t))
    augmented = crypten.cryptensor(torch.from_numpy(
        np.hstack([matrix, rhs[:, None], np.eye(p)])))
    solved, small = kernels.gauss_jordan(augmented, 10)
    got = solved.get_plain_text().numpy()
    np.testing.assert_allclose(got[:, 0], np.linalg.solve(matrix, rhs), atol=2e-3)
    np.testing.assert_allclose(got[:, 1:], np.linalg.inv(matrix), atol=2e-3)
    assert small.get_plain_text().item() == 0
    assert len(compared) == p - 1
