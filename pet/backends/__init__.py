"""Backends by name: the one registry the study, services and benchmarks look up."""

from __future__ import annotations

from pet.backends.base import Aggregate, Backend, Privacy
from pet.backends.plaintext import Plaintext
from pet.errors import PetError

BACKENDS: dict[str, type[Backend]] = {Plaintext.name: Plaintext}


def get_backend(name: str) -> Backend:
    """A new backend of the given name, or an error listing the known ones."""
    try:
        return BACKENDS[name]()
    except KeyError:
        raise PetError(f"unknown backend {name!r}; choose one of {sorted(BACKENDS)}") from None


__all__ = ["BACKENDS", "Aggregate", "Backend", "Plaintext", "Privacy", "get_backend"]
