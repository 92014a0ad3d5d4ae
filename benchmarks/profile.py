"""Benchmark profiles: named YAML files of matrices whose product is the list of cells."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from benchmarks.profiles import PROFILES_DIR
from benchmarks.queries import QUERY_NAMES, preset
from pet.backends import backend_class
from pet.errors import PetError
from pet.relay import Link
from pet.workloads import WORKLOADS

GENERATED = frozenset({"cohort"})
"""Workloads made at any size (rows per site is a dimension); the others have fixed data."""


TRANSPORTS = ("in-process", "services")
ENGINES = ("pet", "duckdb", "postgres", "spark")
"""What runs a site's local pass: pet's own pass over its Parquet file, DuckDB or a local
Spark session reading the same file in place, or a PostgreSQL server holding its rows as
a table (`pet.sources`)."""


@dataclass(frozen=True)
class Cell:
    """One measurement: a query on a workload under a backend at one size and one ε."""

    workload: str
    query: str
    backend: str
    sites: int
    rows_per_site: int | None
    epsilon: float | None
    repeats: int
    warmup: int
    transport: str = "in-process"
    """How the study reaches its sites: in-process objects, or the gRPC services (a
    coordinator and one site server per site, each its own process, on loopback)."""
    engine: str = "pet"
    """What runs each site's local pass (`ENGINES`)."""
    rtt_ms: float | None = None
    """The round trip an emulated link adds between the coordinator and each site and
    between the sites' MPC parties (`pet.relay`; services only); None: loopback."""
    mbit_s: float | None = None
    """That link's bandwidth each way (None: as fast as loopback)."""
    timeout_s: float | None = None
    """Seconds after which the cell's processes are killed and it is recorded as an error
    (None: no limit). Not part of the cell's identity."""

    @property
    def link(self) -> Link | None:
        """The emulated link between the processes, if any."""
        return None if self.rtt_ms is None else Link(self.rtt_ms / 1000, self.mbit_s)

    @property
    def key(self) -> str:
        """Identity of the cell in a run folder (what resuming matches on)."""
        parts = (self.workload, self.query, self.backend, self.sites, self.rows_per_site,
                 self.epsilon)
        suffix = "" if self.transport == "in-process" else f"/{self.transport}"
        engine = "" if self.engine == "pet" else f"@{self.engine}"
        mbit = "" if self.mbit_s is None else f"{self.mbit_s:g}Mbit"
        link = "" if self.rtt_ms is None else f"~{self.rtt_ms:g}ms/{mbit}"
        return "/".join(str(v) for v in parts) + suffix + engine + link

    def label(self) -> str:
        """Short text for the progress bar."""
        rows = f" rows={self.rows_per_site:,}" if self.rows_per_site else ""
        eps = f" ε={self.epsilon:g}" if self.epsilon is not None else ""
        via = "" if self.transport == "in-process" else f" via {self.transport}"
        on = "" if self.engine == "pet" else f" on {self.engine}"
        over = "" if self.rtt_ms is None else f" over {self.rtt_ms:g} ms"
        return (f"{self.workload}/{self.query}/{self.backend} sites={self.sites}{rows}{eps}"
                f"{via}{on}{over}")


@dataclass(frozen=True)
class Matrix:
    """A product of dimensions; ε applies only to differentially private backends."""

    workloads: tuple[str, ...]
    queries: tuple[str, ...]
    backends: tuple[str, ...]
    sites: tuple[int, ...]
    rows_per_site: tuple[int, ...] = ()
    epsilons: tuple[float, ...] = (1.0,)
    repeats: int = 5
    warmup: int = 1
    transports: tuple[str, ...] = ("in-process",)
    engines: tuple[str, ...] = ("pet",)
    rtts_ms: tuple[float, ...] = ()
    """Round trips of emulated links to run every cell over (services only); none:
    loopback."""
    mbit_s: float | None = None
    cell_timeout_s: float | None = None
    """The most a cell may take (see `Cell.timeout_s`)."""

    def __post_init__(self) -> None:
        for name in self.workloads:
            if name not in WORKLOADS:
                raise PetError(f"profile: unknown workload {name!r}; "
                               f"choose from {sorted(WORKLOADS)}")
            if name in GENERATED and not self.rows_per_site:
                raise PetError(f"profile: workload {name!r} needs rows_per_site")
        for name in self.queries:
            if name not in QUERY_NAMES:
                raise PetError(f"profile: unknown query {name!r}; "
                               f"choose from {list(QUERY_NAMES)}")
        for backend in self.backends:
            backend_class(backend)
        _positive("sites", self.sites)
        _positive("rows_per_site", self.rows_per_site)
        _positive("epsilons", self.epsilons)
        for transport in self.transports:
            if transport not in TRANSPORTS:
                raise PetError(f"profile: unknown transport {transport!r}; choose from "
                               f"{list(TRANSPORTS)}")
        for engine in self.engines:
            if engine not in ENGINES:
                raise PetError(f"profile: unknown engine {engine!r}; choose from "
                               f"{list(ENGINES)}")
        if set(self.engines) != {"pet"} and (
                set(self.transports) != {"in-process"}
                or not set(self.workloads) <= GENERATED):
            raise PetError("profile: an engine other than pet reads the generated workloads' "
                           "files, in-process")
        if self.mbit_s is not None and not self.rtts_ms:
            raise PetError("profile: mbit_s is the bandwidth of the links in rtts_ms; give "
                           "rtts_ms too")
        if self.cell_timeout_s is not None and not self.cell_timeout_s > 0:
            raise PetError("profile: cell_timeout_s must be positive")
        if self.rtts_ms and set(self.transports) != {"services"}:
            raise PetError("profile: emulated links (rtts_ms) join the services' processes; "
                           "give transports: [services]")
        for rtt in self.rtts_ms:
            Link(rtt / 1000, self.mbit_s)  # refuses a bad link here, not mid-run
        if self.repeats < 1 or self.warmup < 0:
            raise PetError("profile: repeats must be >= 1 and warmup >= 0")

    def cells(self) -> list[Cell]:
        """Every cell of the product, in a stable order."""
        out = []
        for workload, query, backend, sites in itertools.product(
                self.workloads, self.queries, self.backends, self.sites):
            if preset(workload, query) is None:
                continue
            rows = self.rows_per_site if workload in GENERATED else (None,)
            dp = backend_class(backend).differentially_private
            for n, eps, via, engine, rtt in itertools.product(
                    rows, self.epsilons if dp else (None,), self.transports, self.engines,
                    self.rtts_ms or (None,)):
                out.append(Cell(workload, query, backend, sites, n, eps, self.repeats,
                                self.warmup, via, engine, rtt,
                                None if rtt is None else self.mbit_s, self.cell_timeout_s))
        return out


@dataclass(frozen=True)
class Profile:
    """A named list of matrices, read from benchmarks/profiles/NAME.yaml or any path."""

    name: str
    description: str
    matrices: tuple[Matrix, ...]

    def cells(self) -> list[Cell]:
        """The cells of all matrices, each once (first occurrence wins)."""
        seen: dict[str, Cell] = {}
        for matrix in self.matrices:
            for cell in matrix.cells():
                seen.setdefault(cell.key, cell)
        return list(seen.values())

    def only(self, *, backends: Sequence[str] = (), workloads: Sequence[str] = ()) -> Profile:
        """The same profile restricted to some backends and/or workloads."""
        matrices = []
        for m in self.matrices:
            kept = replace(
                m,
                backends=tuple(b for b in m.backends if not backends or b in backends),
                workloads=tuple(w for w in m.workloads if not workloads or w in workloads),
            )
            if kept.backends and kept.workloads:
                matrices.append(kept)
        return replace(self, matrices=tuple(matrices))

    @classmethod
    def load(cls, name_or_path: str | Path) -> Profile:
        """A shipped profile by name (`quick`, `full`) or a profile file by path."""
        path = Path(name_or_path)
        if not path.suffix:
            path = PROFILES_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            shipped = sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))
            raise PetError(f"no profile {str(name_or_path)!r}; shipped profiles: {shipped}")
        return cls.from_dict(yaml.safe_load(path.read_text()), default_name=path.stem)

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any], *, default_name: str = "profile") -> Profile:
        """Build from the file form: top-level defaults, then `matrices` that override them."""
        defaults = {k: v for k, v in spec.items()
                    if k not in {"name", "description", "matrices"}}
        matrices = tuple(_matrix({**defaults, **m}) for m in spec.get("matrices", [defaults]))
        return cls(str(spec.get("name", default_name)), str(spec.get("description", "")),
                   matrices)


def _matrix(spec: Mapping[str, Any]) -> Matrix:
    known = set(Matrix.__dataclass_fields__)
    unknown = sorted(set(spec) - known)
    if unknown:
        raise PetError(f"profile: unknown key(s) {unknown}; a matrix takes {sorted(known)}")
    return Matrix(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()})


def _positive(name: str, values: Iterable[float]) -> None:
    if any(v <= 0 for v in values):
        raise PetError(f"profile: every value of {name} must be positive")
