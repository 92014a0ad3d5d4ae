"""Configuration files of the servers (YAML), read into validated, immutable values.

Every address, port and path a server uses comes from here; a bad file fails at start-up
with a message naming the file and the key.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from pet.disclosure import DisclosurePolicy
from pet.errors import PetError
from pet.limits import DEFAULT_LIMITS, RequestLimits
from pet.mpc.channel import TlsIdentity
from pet.mpc.parties import DEFAULT_PORTS
from pet.relay import Link
from pet.schema import Schema

if TYPE_CHECKING:  # a site's data modules load where a site opens its table
    from pet.table import Table


class ConfigError(PetError):
    """A configuration file the server cannot start from."""


@dataclass(frozen=True)
class Tls:
    """This server's certificate and key, and the CA its peers' certificates must chain
    to (PEM files)."""

    cert: Path
    key: Path
    ca: Path

    def read(self) -> tuple[bytes, bytes, bytes]:
        """Certificate, key and CA, as bytes."""
        return self.cert.read_bytes(), self.key.read_bytes(), self.ca.read_bytes()

    def identity(self) -> TlsIdentity:
        """The same files as the identity of an MPC party (or the dealer)."""
        return TlsIdentity(self.cert, self.key, self.ca)


@dataclass(frozen=True)
class ConsoleConfig:
    """A server's HTTPS port for its metrics and (at a site) its console, and the SHA-256
    digests of the bearer tokens that may read them, by name (`console: {listen,
    officers}`; the officers' file has the analysts' file's form)."""

    listen: str
    officers: dict[str, str]


@dataclass(frozen=True)
class SiteConfig:
    """A site server: its name, where it listens, its data, ledger, audit log and limits."""

    name: str
    listen: str
    tls: Tls
    coordinator: str
    data: dict[str, Any]
    ledger: Path
    audit: Path
    budget: tuple[float, float] | None
    policy: DisclosurePolicy
    allow_plaintext: bool
    mpc_host: str
    mpc_ports: tuple[int, int] = DEFAULT_PORTS
    """The ports this site's MPC party may listen on (it takes the first free one)."""
    mpc_warm: bool = True
    """Keep a spare party process (CrypTen imported) for the next MPC session, started
    once the server serves (`mpc: {warm: false}`: start one per session instead)."""
    mpc_link: Link | None = None
    """An emulated network in front of this site's MPC party (`mpc: {link: {rtt_ms,
    mbit_s}}`, see `pet.relay`): for benchmarks on one host, never needed."""
    federation: tuple[str, ...] = ()
    """The sites this site federates with (itself included), from its own configuration:
    distributed DP sizes this site's noise share by their number."""
    limits: RequestLimits = DEFAULT_LIMITS
    """The most one request may ask of this site (`limits:`)."""
    dataset: str | None = None
    """The name its ledger charges and `budget` configures (`dataset:`; default the
    schema's name)."""
    console: ConsoleConfig | None = None
    """Where its console and metrics are served, and to whom (`console:`; none if absent)."""

    def table(self) -> Table:
        """The site's table: a part of a packaged workload, or a file with a schema. The
        data modules (DuckDB, PostgreSQL, Spark, the workloads) are imported here, not by
        everyone who reads a configuration (the analyst's client among them)."""
        from pet.table import open_table
        from pet.workloads import load

        data = self.data
        if "workload" in data:
            workload = load(data["workload"], n_sites=int(data.get("sites", 3)))
            part = data.get("part", self.name)
            if part not in workload.tables:
                raise ConfigError(f"data.part {part!r} is not a part of workload "
                                  f"{data['workload']!r}; it has {sorted(workload.tables)}")
            return workload.tables[part]
        if "source" in data:
            from pet.sources import open_source  # the engines' drivers: only for a source

            schema = _schema(data["schema"]) if "schema" in data else None
            return open_source(data, schema, secret=_dsn(data))
        if "path" in data and "schema" in data:
            return open_table(Path(data["path"]), _schema(data["schema"]))
        raise ConfigError("data needs {workload, sites, part}, {path, schema} or "
                          "{source, schema, ...}")


def _schema(name: str) -> Schema:
    """A schema file's path (.yaml, .yml or .json), or the name of a schema shipped with
    pet."""
    from pet.workloads import packaged_schema

    path = Path(name)
    if path.suffix not in FILE_SUFFIXES:
        try:
            return packaged_schema(name)
        except FileNotFoundError:
            raise ConfigError(f"data.schema: {name!r} is neither a schema file (.yaml, .yml "
                              "or .json) nor a schema shipped with pet") from None
    try:
        return Schema.from_file(path)
    except OSError as exc:
        raise ConfigError(f"data.schema: cannot read {path}: {exc.strerror}") from None


FILE_SUFFIXES = frozenset({".yaml", ".yml", ".json"})
"""What a schema or cohort definition file's name ends in (anything else names one
shipped with pet)."""

FILE_KEYS = ("path", "parquet", "database", "dsn_file")
"""Keys of `data:` that name a file: a relative one is read from the configuration's
folder, as the TLS files are."""


def _state_file(spec: dict[str, Any], key: str, path: str | Path) -> Path:
    """The ledger or audit file, a relative name read from the configuration's folder.
    pet once read it from the working directory: a file found there and not here is
    refused by name rather than a fresh, empty one started beside it."""
    name = Path(_text(spec, key, path))
    resolved = Path(path).parent / name
    if not name.is_absolute() and not resolved.exists() and name.exists() \
            and name.resolve() != resolved.resolve():
        raise ConfigError(f"{path}: {key} {str(name)!r} is read from the configuration's "
                          f"folder ({resolved}), where there is none; {name.resolve()} is "
                          "where pet once looked (the working directory): move it, or give "
                          "its absolute path")
    return resolved


def _data(spec: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """The `data:` mapping with its relative file names taken from the configuration
    file's folder (a DuckDB `:memory:` database stays as it is)."""
    data, folder = dict(_mapping(spec, "data", path)), Path(path).parent
    for key in FILE_KEYS:
        if isinstance(data.get(key), str) and not data[key].startswith(":"):
            data[key] = str(folder / data[key])
    for key in ("schema", "cohort"):
        if isinstance(data.get(key), str) and Path(data[key]).suffix in FILE_SUFFIXES:
            data[key] = str(folder / data[key])
    return data


def _dsn(data: dict[str, Any]) -> str | None:
    """A database's connection string, from the environment variable `dsn_env` or the
    file `dsn_file`: it may hold a password, so the configuration only says where it is."""
    if "dsn" in data:
        raise ConfigError("data.dsn: a connection string may hold a password; put it in an "
                          "environment variable (dsn_env) or a file (dsn_file)")
    if "dsn_env" in data:
        value = os.environ.get(str(data["dsn_env"]))
        if not value:
            raise ConfigError(f"data.dsn_env: the environment variable {data['dsn_env']!r} "
                              "is not set")
        return value
    if "dsn_file" in data:
        try:
            return Path(data["dsn_file"]).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"data.dsn_file: cannot read {data['dsn_file']}: "
                              f"{exc.strerror}") from None
    return None


@dataclass(frozen=True)
class SiteAddress:
    """Where the coordinator reaches one site."""

    name: str
    address: str


@dataclass(frozen=True)
class CoordinatorConfig:
    """The coordinator: where it listens, its sites, the analysts' token digests, the
    deadline of every call it makes to a site, and the folder where its synthesis service
    keeps fitted models across restarts (None: in memory only)."""

    listen: str
    tls: Tls
    analysts: dict[str, str]
    sites: tuple[SiteAddress, ...]
    deadline_s: float
    fits: Path | None = None
    run_deadline_s: float = 600.0
    """The longest a study run or a synthesizer fit may take when the analyst sets no
    shorter deadline."""
    runs_per_analyst: int = 4
    """Runs and fits one analyst may have under way at once."""
    limits: RequestLimits = DEFAULT_LIMITS
    """The most one request may ask of the coordinator (`limits:`)."""
    mpc_warm: bool = True
    """Keep a spare dealer process for the next MPC session (`mpc: {warm: false}`)."""
    console: ConsoleConfig | None = None
    """Where its metrics are served, and to whom (`console:`; none if absent)."""

    def analyst(self, token: str) -> str | None:
        """The analyst whose bearer token this is, if any (compared as SHA-256 digests)."""
        digest = hashlib.sha256(token.encode()).hexdigest()
        return next((name for name, known in self.analysts.items() if known == digest), None)


def read_site(path: str | Path) -> SiteConfig:
    """A site's configuration file."""
    spec = _read(path)
    budget = spec.get("budget")
    disclosure = spec.get("disclosure") or {}
    return SiteConfig(
        name=_text(spec, "name", path),
        listen=_text(spec, "listen", path),
        tls=_tls(spec, path),
        coordinator=_text(spec, "coordinator", path),
        data=_data(spec, path),
        ledger=_state_file(spec, "ledger", path),
        audit=_state_file(spec, "audit", path),
        budget=(float(budget["epsilon"]), float(budget.get("delta", 0.0))) if budget else None,
        policy=DisclosurePolicy(min_cell=int(disclosure.get("min_cell", 3)),
                                max_parameter_ratio=float(
                                    disclosure.get("max_parameter_ratio", 0.33)),
                                max_steering=float(disclosure.get("max_steering", 30.0)),
                                min_cell_under_dp=_flag(disclosure, "min_cell_under_dp",
                                                        path)),
        allow_plaintext=bool(spec.get("allow_plaintext", True)),
        mpc_host=str((spec.get("mpc") or {}).get("host", "127.0.0.1")),
        mpc_ports=_ports(spec, path),
        mpc_warm=_warm(spec, path),
        mpc_link=_link(spec, path),
        federation=_federation(spec, path),
        limits=_limits(spec, path),
        dataset=_text(spec, "dataset", path) if "dataset" in spec else None,
        console=_console(spec, path),
    )


def _flag(spec: dict[str, Any], key: str, path: str | Path, default: bool = False) -> bool:
    """A true/false setting (`default` when absent); anything else is refused by name."""
    value = spec.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{path}: {key} must be true or false, got {value!r}")
    return value


def _warm(spec: dict[str, Any], path: str | Path) -> bool:
    """`mpc: {warm: ...}` (true when absent)."""
    return _flag(spec.get("mpc") or {}, "warm", f"{path}: mpc", default=True)


def read_coordinator(path: str | Path) -> CoordinatorConfig:
    """The coordinator's configuration file (analysts' digests from their own file)."""
    spec = _read(path)
    analysts = _digests(spec, "analysts", path)
    sites = spec.get("sites")
    if not isinstance(sites, list) or not sites:
        raise ConfigError(f"{path}: 'sites' must list at least one {{name, address}}")
    return CoordinatorConfig(
        listen=_text(spec, "listen", path),
        tls=_tls(spec, path),
        analysts=analysts,
        sites=tuple(SiteAddress(str(s["name"]), str(s["address"])) for s in sites),
        deadline_s=float(spec.get("deadline_s", 120.0)),
        fits=Path(path).parent / _text(spec, "fits", path) if "fits" in spec else None,
        run_deadline_s=_positive(spec, "run_deadline_s", 600.0, path),
        runs_per_analyst=int(_positive(spec, "runs_per_analyst", 4, path)),
        mpc_warm=_warm(spec, path),
        limits=_limits(spec, path),
        console=_console(spec, path),
    )


def _digests(spec: dict[str, Any], key: str, path: str | Path) -> dict[str, str]:
    """The file named by `key` (from the configuration's folder): per person, the SHA-256
    of their bearer token (`name: {token_sha256: HEX}`), never a token itself."""
    file = Path(path).parent / _text(spec, key, path)
    digests = {}
    for name, entry in _read(file).items():
        digest = entry.get("token_sha256") if isinstance(entry, dict) else None
        if not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
            raise ConfigError(f"{file}: {name!r} needs token_sha256, the 64 hexadecimal digits "
                              "of their token's SHA-256")
        digests[str(name)] = digest
    return digests


def _console(spec: dict[str, Any], path: str | Path) -> ConsoleConfig | None:
    """The optional `console: {listen, officers}` section."""
    if "console" not in spec:
        return None
    section = _mapping(spec, "console", path)
    return ConsoleConfig(listen=_text(section, "listen", f"{path}: console"),
                         officers=_digests(section, "officers", path))


def _federation(spec: dict[str, Any], path: str | Path) -> tuple[str, ...]:
    """The site names of `federation` (optional): distinct texts, this site among them."""
    names = spec.get("federation") or []
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise ConfigError(f"{path}: 'federation' must list the names of the federation's "
                          "sites, this one included")
    if len(set(names)) != len(names) or (names and spec.get("name") not in names):
        raise ConfigError(f"{path}: 'federation' must name each site once, this site "
                          f"({spec.get('name')!r}) included; got {names}")
    return tuple(names)


def _link(spec: dict[str, Any], path: str | Path) -> Link | None:
    """`mpc: {link: {rtt_ms: ..., mbit_s: ...}}` (none when absent)."""
    link = (spec.get("mpc") or {}).get("link")
    if link is None:
        return None
    if not isinstance(link, dict) or not set(link) <= {"rtt_ms", "mbit_s"} or (
            "rtt_ms" not in link):
        raise ConfigError(f"{path}: mpc.link must be {{rtt_ms: ..., mbit_s: ...}} (mbit_s "
                          f"optional), got {link!r}")
    rtt, mbit = link["rtt_ms"], link.get("mbit_s")
    if isinstance(rtt, bool) or not isinstance(rtt, int | float) or (
            mbit is not None and (isinstance(mbit, bool) or not isinstance(mbit, int | float))):
        raise ConfigError(f"{path}: mpc.link's rtt_ms and mbit_s must be numbers, got "
                          f"{link!r}")
    try:
        return Link(rtt / 1000, mbit)
    except PetError as error:
        raise ConfigError(f"{path}: mpc.link: {error}") from None


def _ports(spec: dict[str, Any], path: str | Path) -> tuple[int, int]:
    """`mpc: {ports: [low, high]}`, an inclusive range (default DEFAULT_PORTS)."""
    ports = (spec.get("mpc") or {}).get("ports", list(DEFAULT_PORTS))
    if not (isinstance(ports, list) and len(ports) == 2
            and all(isinstance(p, int) and not isinstance(p, bool) for p in ports)
            and 1 <= ports[0] <= ports[1] <= 65535):
        raise ConfigError(f"{path}: mpc.ports must be [low, high] with 1 <= low <= high <= "
                          f"65535, got {ports!r}")
    return ports[0], ports[1]


def _limits(spec: dict[str, Any], path: str | Path) -> RequestLimits:
    """The optional `limits:` section (defaults for what it leaves out)."""
    try:
        return RequestLimits.from_mapping(spec.get("limits"))
    except PetError as error:
        raise ConfigError(f"{path}: limits: {error}") from None


def _positive(spec: dict[str, Any], key: str, default: float, path: str | Path) -> float:
    """An optional number > 0."""
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(f"{path}: {key!r} must be a number > 0, got {value!r}")
    return float(value)


def _read(path: str | Path) -> dict[str, Any]:
    try:
        spec = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"{path} must hold a mapping of settings")
    return spec


def _text(spec: dict[str, Any], key: str, path: str | Path) -> str:
    value = spec.get(key)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{path}: {key!r} must be a non-empty text")
    return value


def _mapping(spec: dict[str, Any], key: str, path: str | Path) -> dict[str, Any]:
    value = spec.get(key)
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: {key!r} must be a mapping")
    return value


def _tls(spec: dict[str, Any], path: str | Path) -> Tls:
    """TLS files, relative paths taken from the configuration file's folder."""
    tls = _mapping(spec, "tls", path)
    folder = Path(path).parent
    return Tls(*(folder / _text(tls, key, path) for key in ("cert", "key", "ca")))
