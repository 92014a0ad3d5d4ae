"""The `he` backend: sites encrypt their partials under the analyst's public key (TenSEAL),
the coordinator adds ciphertexts, and only the analyst decrypts, only the aggregate.

Integer layouts (counts) use BFV and come back exact; any layout with a real-valued block
uses CKKS, whose decoding noise the analyst measures for each slot (`slot_noise`) and
bounds, sum by sum; the bound of each number of an answer follows through finalize.
Count blocks in a CKKS layout are rounded back to whole numbers whenever their bound is
below one half, which makes them exact too.

Encryption touches the layout, never the rows: each site encrypts one short vector, packed
into as few ciphertexts as the ring's slots allow. No operation needs rotations or
multiplications, so no Galois or relinearisation keys are made or shipped: the public
context holds the public key and parameters only.
"""

from __future__ import annotations

import hashlib
import math
import struct
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import tenseal as ts
from scipy import special

from pet.backends.base import Aggregate, Backend, Limits, Privacy
from pet.errors import PetError
from pet.intervals import BOUND_Z
from pet.layout import Layout

RING_DEGREE = 4096
"""Smallest ring with 128-bit security for the 109-bit moduli used here; 2048 slots."""

CKKS_MODULI = (60, 49)
"""One 60-bit data prime (holds scale × the largest normalised sum) and the special prime."""

SIGMA = 3.2
"""Standard deviation of SEAL's encryption noise."""

CONFIDENTIALITY = "sites' partials are encrypted; only the analyst decrypts, and only the sum"

MAX_CONTEXT_BYTES = 1 << 20
"""The largest public context a site loads: pet's own (ring degree 4096) is about 260 kB;
a larger ring would multiply the work and bytes of every encryption a request asks for."""
_MAGIC = b"PETHE1"
_SCHEMES = {b"B": "bfv", b"C": "ckks"}


class HEError(PetError):
    """A ciphertext, context or layout that the `he` backend cannot use safely."""


def bfv_plain_modulus(limits: Limits) -> int:
    """Smallest batching prime t ≡ 1 (mod 2N) above twice the largest possible count total,
    so that every sum, and its sign, survives arithmetic modulo t."""
    worst = limits.max_rows_per_site * limits.max_sites
    step = 2 * RING_DEGREE
    candidate = (2 * worst) // step * step + 1
    while candidate <= 2 * worst or not is_prime(candidate):
        candidate += step
    if candidate.bit_length() > 60:
        raise HEError(
            f"counts up to {worst:.3g} (max_rows_per_site × max_sites) need a "
            f"{candidate.bit_length()}-bit BFV plain modulus, above SEAL's 60 bits; "
            "lower max_rows_per_site or max_sites"
        )
    return candidate


def is_prime(n: int) -> bool:
    """Deterministic Miller–Rabin, exact for n < 3.3·10²⁴ (the first twelve primes as
    bases); written here because importing sympy for one test costs a second per process."""
    bases = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)
    if n < 2:
        return False
    for p in bases:
        if n % p == 0:
            return n == p
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for a in bases:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def ckks_scale_bits(limits: Limits) -> int:
    """Scale exponent: the summed, normalised values (|x| ≤ max_sites) times the scale
    must stay below the 60-bit data prime, with one bit to spare."""
    bits = CKKS_MODULI[0] - 2 - math.ceil(math.log2(limits.max_sites + 1))
    if bits < 30:
        raise HEError(f"max_sites={limits.max_sites} leaves CKKS too little precision")
    return bits


CALIBRATION = 256
"""Encryptions of zero the analyst decrypts, once a session, to measure each CKKS slot's
decoding noise (0.4 s)."""
CALIBRATION_FAILURE = 1e-6
"""The chance, per slot, that the measured noise understates the true one."""
CALIBRATION_UPPER = math.sqrt(CALIBRATION / special.chdtri(CALIBRATION, 1 - CALIBRATION_FAILURE))
"""The factor (1.26) from a slot's measured standard deviation to its upper confidence
bound: CALIBRATION squared errors of mean zero sum to σ² times a χ² of as many degrees."""


def slot_noise(public: Any, secret: Any) -> np.ndarray:
    """Each CKKS slot's standard deviation of decoding error for one fresh encryption (of a
    normalised value), measured from CALIBRATION encryptions of zero under the public key
    and raised to its upper 1 − CALIBRATION_FAILURE confidence bound.

    Measured, and per slot, because no constant describes it: SEAL encrypts at the key's
    level and divides by the special prime, which leaves that division's rounding,
    r₀ + r₁·s in every coefficient (s the secret key; the encryption noise itself is
    divided away). In slot k that is R₀ₖ + R₁ₖ·s(ζₖ), Gaussian with a variance that grows
    with |s(ζₖ)|², which differs from slot to slot by more than ten times; over all slots
    the mean variance is N(1/6 + N/18)/(2Δ²), a test's independent check. Only the
    analyst, who holds s, can measure it."""
    slots = _slots("ckks")
    squares = np.zeros(slots)
    for _ in range(CALIBRATION):
        zero = ts.ckks_vector(public, [0.0] * slots).serialize()
        squares += np.asarray(ts.ckks_vector_from(secret, zero).decrypt()) ** 2
    return np.sqrt(squares / CALIBRATION) * CALIBRATION_UPPER


class PublicHE:
    """What the sites and the coordinator hold: the public contexts, which can encrypt and
    add but cannot decrypt. Built from the bytes the analyst sends once per session."""

    def __init__(self, public_context: bytes, limits: Limits) -> None:
        self.limits = limits
        if len(public_context) > MAX_CONTEXT_BYTES:
            raise HEError(f"a public context of {len(public_context)} bytes is larger than the "
                          f"{MAX_CONTEXT_BYTES} a site loads; pet's contexts use ring degree "
                          f"{RING_DEGREE}")
        self.key_id = hashlib.sha256(public_context).digest()[:16]
        parts = _split(public_context)
        if len(parts) != 2:
            raise HEError("a public context bundles one BFV and one CKKS context")
        self._contexts = {scheme: _load_context(part)
                          for scheme, part in zip(("bfv", "ckks"), parts, strict=True)}
        if any(c.has_secret_key() for c in self._contexts.values()):
            raise HEError("a public context must not hold a secret key")
        self._identities: tuple[str, ...] | None = None

    def identities(self) -> tuple[str, ...]:
        """SHA-256 of each public key as this side serialises it once loaded: the same key
        reads the same however a peer packed it, so a site can tell it again."""
        if self._identities is None:
            self._identities = tuple(hashlib.sha256(_public_bytes(c)).hexdigest()
                                     for c in self._contexts.values())
        return self._identities

    def context(self, scheme: str) -> Any:
        """The public TenSEAL context of one scheme ("bfv" or "ckks")."""
        return self._contexts[scheme]

    def scheme(self, layout: Layout) -> str:
        """BFV for layouts of counts only, else CKKS."""
        return "bfv" if layout.integer else "ckks"

    def encrypt(self, partial: np.ndarray, layout: Layout) -> bytes:
        """A site's partial, normalised and packed into as few ciphertexts as fit."""
        self.limits.check(partial, layout)
        limit = _normaliser(layout, self.limits)
        scheme = self.scheme(layout)
        context = self._contexts[scheme]
        slots = _slots(scheme)
        if scheme == "bfv":
            values = np.rint(partial).astype(np.int64)
            encrypt = ts.bfv_vector
        else:
            values = partial / limit
            encrypt = ts.ckks_vector
        parts = [encrypt(context, values[i:i + slots].tolist()).serialize()
                 for i in range(0, layout.size, slots)]
        return _pack(scheme, self.key_id, 1, parts)

    def add(self, messages: Sequence[bytes], layout: Layout) -> bytes:
        """The ciphertext sum of the sites' messages (all of one key, scheme and shape)."""
        if not messages:
            raise HEError("no site sent a ciphertext")
        scheme = self.scheme(layout)
        totals, terms = None, 0
        for index, message in enumerate(messages):
            vectors, count = self.load(message, layout, where=f"message {index}")
            terms += count
            totals = vectors if totals is None else [a + b for a, b in zip(totals, vectors,
                                                                         strict=True)]
        return _pack(scheme, self.key_id, terms, [v.serialize() for v in totals])

    def load(self, message: bytes, layout: Layout, *, where: str,
             context: Any = None) -> tuple[list[Any], int]:
        """The ciphertexts of a message and how many site encryptions they sum, checked
        against this session's key, the layout's scheme and its shape."""
        scheme = self.scheme(layout)
        found, key_id, terms, parts = _unpack(message, where)
        if key_id != self.key_id:
            raise HEError(f"{where} was encrypted under another key than this session's")
        if found != scheme:
            raise HEError(f"{where} is {found.upper()}, but this layout uses {scheme.upper()}")
        slots = _slots(scheme)
        if len(parts) != math.ceil(layout.size / slots):
            raise HEError(f"{where} holds {len(parts)} ciphertexts; the layout needs "
                          f"{math.ceil(layout.size / slots)}")
        context = context or self._contexts[scheme]
        load = ts.bfv_vector_from if scheme == "bfv" else ts.ckks_vector_from
        vectors = []
        for part in parts:
            try:
                vectors.append(load(context, part))
            except (RuntimeError, ValueError, TypeError) as exc:
                raise HEError(f"{where} is not a ciphertext of this session's parameters "
                              f"({exc})") from None
        expected = [min(slots, layout.size - i) for i in range(0, layout.size, slots)]
        if [v.size() for v in vectors] != expected:
            raise HEError(f"{where} has vectors of sizes {[v.size() for v in vectors]}; "
                          f"the layout needs {expected}")
        return vectors, terms


class HE(Backend):
    """Homomorphic-encryption aggregation. The analyst's side (this object) makes the keys;
    `public_context` is all that sites and the coordinator ever receive. Given a public
    context, the object plays their part: it encrypts and adds, and cannot reveal."""

    name = "he"

    def __init__(self, *, max_rows_per_site: int = 10**8, max_sites: int = 100,
                 public_context: bytes | None = None) -> None:
        start = time.perf_counter()
        self.limits = Limits(max_rows_per_site, max_sites)
        self._secret: dict[str, Any] | None = None
        self._slot_noise: np.ndarray | None = None
        if public_context is None:
            bfv = ts.context(ts.SCHEME_TYPE.BFV, poly_modulus_degree=RING_DEGREE,
                             plain_modulus=bfv_plain_modulus(self.limits))
            ckks = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=RING_DEGREE,
                              coeff_mod_bit_sizes=list(CKKS_MODULI))
            ckks.global_scale = 2.0 ** ckks_scale_bits(self.limits)
            self._secret = {"bfv": bfv, "ckks": ckks}
            public_context = _join([_public_bytes(bfv), _public_bytes(ckks)])
        self.public_context = public_context
        self.public = PublicHE(public_context, self.limits)
        self.startup_s = time.perf_counter() - start

    @property
    def session_bytes(self) -> int:
        return len(self.public_context)

    def protect(self, partial: np.ndarray, layout: Layout) -> bytes:
        return self.public.encrypt(partial, layout)

    def combine(self, messages: Sequence[bytes], layout: Layout) -> bytes:
        return self.public.add(messages, layout)

    def reveal(self, combined: bytes, layout: Layout) -> Aggregate:
        if self._secret is None:
            raise HEError("only the analyst, who holds the secret key, can reveal; this side "
                          "holds the public context alone")
        scheme = self.public.scheme(layout)
        vectors, n_sites = self.public.load(combined, layout, where="the aggregate",
                                            context=self._secret[scheme])
        values = np.concatenate([np.asarray(v.decrypt(), dtype=np.float64) for v in vectors])
        if scheme == "bfv":
            return Aggregate(values, np.zeros(layout.size), Privacy(CONFIDENTIALITY))
        limit = _normaliser(layout, self.limits)
        total = values * limit
        bounds = BOUND_Z * np.sqrt(n_sites) * self._noise(layout.size) * limit
        counts = layout.counts_mask()
        exact = counts & (bounds < 0.5)
        total[exact] = np.rint(total[exact])
        bounds[exact] = 0.0
        return Aggregate(total, bounds, Privacy(CONFIDENTIALITY), independent=True)

    def _noise(self, size: int) -> np.ndarray:
        """Each element's decoding noise (`slot_noise`, measured at the first CKKS reveal
        of the session), by the slot it was packed into."""
        if self._slot_noise is None:
            assert self._secret is not None
            self._slot_noise = slot_noise(self.public.context("ckks"), self._secret["ckks"])
        return np.resize(self._slot_noise, size)


def _slots(scheme: str) -> int:
    """Values one ciphertext packs: N for BFV, N/2 for CKKS."""
    return RING_DEGREE if scheme == "bfv" else RING_DEGREE // 2


def _normaliser(layout: Layout, limits: Limits) -> np.ndarray:
    """Per element, the largest partial a site may send: CKKS encrypts partial / this."""
    return layout.bounds() * limits.max_rows_per_site


def _public_bytes(context: Any) -> bytes:
    public = context.copy()
    public.make_context_public()
    return public.serialize(save_public_key=True, save_secret_key=False,
                            save_galois_keys=False, save_relin_keys=False)


def _load_context(data: bytes) -> Any:
    """A TenSEAL context of pet's ring degree (a peer's larger ring is refused: it would
    cost every site many times the work and bytes of each encryption)."""
    try:
        context = ts.context_from(data)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise HEError(f"not a TenSEAL context: {exc}") from None
    degree = context.data.seal_context().first_context_data().parms().poly_modulus_degree()
    if degree != RING_DEGREE:
        raise HEError(f"a public context of ring degree {degree}; pet's sessions use "
                      f"{RING_DEGREE}")
    return context


def _join(parts: Sequence[bytes]) -> bytes:
    return b"".join(struct.pack("<Q", len(p)) + p for p in parts)


def _split(data: bytes, where: str = "the public context") -> list[bytes]:
    parts, offset = [], 0
    while offset < len(data):
        if offset + 8 > len(data):
            raise HEError(f"{where} is truncated")
        (length,) = struct.unpack_from("<Q", data, offset)
        offset += 8
        if offset + length > len(data):
            raise HEError(f"{where} is truncated")
        parts.append(data[offset:offset + length])
        offset += length
    return parts


def _pack(scheme: str, key_id: bytes, terms: int, parts: Sequence[bytes]) -> bytes:
    """Wire form: magic, scheme, key id, number of site encryptions summed, ciphertexts."""
    code = next(k for k, v in _SCHEMES.items() if v == scheme)
    return _MAGIC + code + key_id + struct.pack("<I", terms) + _join(parts)


def _unpack(message: bytes, where: str) -> tuple[str, bytes, int, list[bytes]]:
    start = len(_MAGIC)
    head = start + 1 + 16 + 4
    if len(message) < head or not message.startswith(_MAGIC):
        raise HEError(f"{where} is not an `he` message")
    scheme = _SCHEMES.get(message[start:start + 1])
    if scheme is None:
        raise HEError(f"{where} names an unknown scheme")
    (terms,) = struct.unpack_from("<I", message, start + 17)
    return scheme, message[start + 1:start + 17], terms, _split(message[head:], where)
