"""The `plaintext` backend: partials are summed in clear — the exact reference."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pet.backends.base import Aggregate, Backend, Privacy
from pet.errors import PetError
from pet.layout import Layout

_WIRE = np.dtype("<f8")
"""Little-endian float64 on the wire: exact for counts below 2**53."""


def decode(message: bytes, layout: Layout) -> np.ndarray:
    """A float64 vector from its wire form, checked against the layout's length."""
    vector = np.frombuffer(message, dtype=_WIRE)
    if vector.shape != (layout.size,):
        raise PetError(f"a message holds {vector.size} numbers but the layout has {layout.size}")
    return vector


class Plaintext(Backend):
    """Sums in clear: the coordinator sees every site's partial. No formal privacy."""

    name = "plaintext"

    def protect(self, partial: np.ndarray, layout: Layout) -> bytes:
        return np.ascontiguousarray(partial, dtype=_WIRE).tobytes()

    def combine(self, messages: Sequence[bytes], layout: Layout) -> bytes:
        total = np.sum([decode(m, layout) for m in messages], axis=0)
        return total.astype(_WIRE).tobytes()

    def reveal(self, combined: bytes, layout: Layout) -> Aggregate:
        return Aggregate(decode(combined, layout).copy(), np.zeros(layout.size), Privacy())
