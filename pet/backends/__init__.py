"""Backends by name: the one registry the study, services and benchmarks look up.

A backend's module is imported when its class is first asked for: `he` brings TenSEAL,
`mpc` the party machinery and its certificates, and a plaintext query through the command
line needs none of them.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Any

from pet.backends.base import Aggregate, Backend, Privacy
from pet.errors import PetError

CLASSES: dict[str, tuple[str, str]] = {
    "plaintext": ("pet.backends.plaintext", "Plaintext"),
    "he": ("pet.backends.he", "HE"),
    "mpc": ("pet.backends.mpc", "MPC"),
    "dp": ("pet.backends.dp", "LocalDP"),
    "he+dp": ("pet.backends.central_dp", "HEDP"),
    "mpc+dp": ("pet.backends.central_dp", "MPCDP"),
}
"""Each backend's module and class, by the backend's name."""


class Registry(Mapping[str, type[Backend]]):
    """The backend classes by name, each imported when first looked up."""

    def __getitem__(self, name: str) -> type[Backend]:
        module, attribute = CLASSES[name]
        return getattr(importlib.import_module(module), attribute)  # type: ignore[no-any-return]

    def __contains__(self, name: object) -> bool:
        return name in CLASSES  # without importing the backend

    def __iter__(self) -> Iterator[str]:
        return iter(CLASSES)

    def __len__(self) -> int:
        return len(CLASSES)


BACKENDS: Mapping[str, type[Backend]] = Registry()


def backend_class(name: str) -> type[Backend]:
    """The backend class of the given name, or an error listing the known ones."""
    if name not in CLASSES:
        raise PetError(f"unknown backend {name!r}; choose one of {sorted(CLASSES)}")
    return BACKENDS[name]


def get_backend(name: str, **options: Any) -> Backend:
    """A new backend of the given name, made with its options (e.g. epsilon for DP)."""
    return backend_class(name)(**options)


def __getattr__(name: str) -> type[Backend]:
    """`from pet.backends import HE` and the other classes, imported then (PEP 562)."""
    for backend, (_, attribute) in CLASSES.items():
        if attribute == name:
            return BACKENDS[backend]
    raise AttributeError(f"module 'pet.backends' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *(attribute for _, attribute in CLASSES.values())])


__all__ = ["BACKENDS", "HE", "HEDP", "MPC", "MPCDP", "Aggregate", "Backend", "LocalDP",
           "Plaintext", "Privacy",
           "backend_class", "get_backend"]
