"""Backends by name: the one registry the study, services and benchmarks look up."""

from __future__ import annotations

from typing import Any

from pet.backends.base import Aggregate, Backend, Privacy
from pet.backends.central_dp import HEDP, MPCDP
from pet.backends.dp import LocalDP
from pet.backends.he import HE
from pet.backends.mpc import MPC
from pet.backends.plaintext import Plaintext
from pet.errors import PetError

BACKENDS: dict[str, type[Backend]] = {
    backend.name: backend for backend in (Plaintext, HE, MPC, LocalDP, HEDP, MPCDP)}


def backend_class(name: str) -> type[Backend]:
    """The backend class of the given name, or an error listing the known ones."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise PetError(f"unknown backend {name!r}; choose one of {sorted(BACKENDS)}") from None


def get_backend(name: str, **options: Any) -> Backend:
    """A new backend of the given name, made with its options (e.g. epsilon for DP)."""
    return backend_class(name)(**options)


__all__ = ["BACKENDS", "HE", "HEDP", "MPC", "MPCDP", "Aggregate", "Backend", "LocalDP",
           "Plaintext", "Privacy",
           "backend_class", "get_backend"]
