"""Built-in health workloads by name: real data shipped in pip packages and a generator."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pet.errors import PetError
from pet.workloads.base import Workload, packaged_schema
from pet.workloads.cohort import cohort
from pet.workloads.reference import breast_cancer, diabetes, lung

WORKLOADS: dict[str, Callable[..., Workload]] = {
    "lung": lung,
    "breast_cancer": breast_cancer,
    "diabetes": diabetes,
    "cohort": cohort,
}


def load(name: str, **options: Any) -> Workload:
    """The workload called `name`, made with its options (e.g. n_sites)."""
    try:
        factory = WORKLOADS[name]
    except KeyError:
        raise PetError(f"unknown workload {name!r}; choose one of {sorted(WORKLOADS)}") from None
    return factory(**options)


__all__ = ["WORKLOADS", "Workload", "breast_cancer", "cohort", "diabetes", "load", "lung",
           "packaged_schema"]
