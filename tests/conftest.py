"""Shared fixtures: the real workloads, and sites whose disclosure control is off so that
exact answers can be compared with references on the pooled data."""

from __future__ import annotations

import pytest

from pet.disclosure import DisclosurePolicy
from pet.workloads import Workload, breast_cancer, diabetes, lung

NO_CELL_LIMIT = DisclosurePolicy(min_cell=1, max_parameter_ratio=1.0)


@pytest.fixture(scope="session")
def lung3() -> Workload:
    return lung(3)


@pytest.fixture(scope="session")
def lung_by_institution() -> Workload:
    return lung(None)


@pytest.fixture(scope="session")
def breast() -> Workload:
    return breast_cancer(4, seed=1)


@pytest.fixture(scope="session")
def diabetes3() -> Workload:
    return diabetes(3, seed=2)


@pytest.fixture(scope="session")
def breast_by_3() -> Workload:
    return breast_cancer(3, seed=1)
