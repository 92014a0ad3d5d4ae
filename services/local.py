"""A whole federation on this host: a coordinator and its sites as separate server
processes on loopback, with a demo CA, an analyst token and their configuration files.

The demo, the integration tests and the benchmark harness start the product exactly as an
operator would (`pet serve ...` with a configuration file), only all on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pet.certs import make_certificates
from pet.client import Client
from pet.errors import PetError
from pet.mpc.parties import free_port
from pet.relay import Link, Relay
from pet.table import CsvTable, ParquetTable
from pet.workloads import Workload, load
from services.config import Tls
from services.security import peer_channel

HOST = "127.0.0.1"
ANALYST = "analyst"


def workload_data(workload: str, n_sites: int) -> dict[str, dict[str, Any]]:
    """Per site, the `data` setting that serves its part of a packaged workload."""
    return {name: {"workload": workload, "sites": n_sites, "part": name}
            for name in load(workload, n_sites=n_sites).tables}


def table_data(workload: Workload) -> dict[str, dict[str, Any]]:
    """Per site, the `data` setting that serves its table, for workloads kept in files: by
    absolute path, as a relative one is read from the configuration's own folder."""
    return {name: {"path": str(Path(table.path).resolve()), "schema": workload.schema.name}
            for name, table in workload.tables.items()
            if isinstance(table, ParquetTable | CsvTable)}


class LocalFederation:
    """A coordinator and one site server per entry of `data` (site name → its `data`
    setting; by default the lung workload at three sites), each its own process.

    `site_options` are written into every site's configuration (e.g. budget, disclosure,
    allow_plaintext); `per_site` adds options for named sites only; `coordinator_options`
    go into the coordinator's (e.g. runs_per_analyst). With a `link` (`pet.relay`), the
    sites are as far from the coordinator and from each other as the link says: the
    coordinator reaches each site through a relay in this process, and each site's MPC
    party sits behind one of its own. The analyst's client reaches the coordinator
    directly. `warm` keeps a spare MPC process at each server (the servers' default);
    without, no server imports torch until an MPC session starts.
    """

    def __init__(self, directory: str | Path, data: Mapping[str, dict[str, Any]] | None = None,
                 *, deadline_s: float = 120.0, site_options: dict[str, Any] | None = None,
                 per_site: dict[str, dict[str, Any]] | None = None,
                 coordinator_options: dict[str, Any] | None = None,
                 startup_timeout_s: float = 120.0, link: Link | None = None,
                 warm: bool = True) -> None:
        self.directory = Path(directory)
        data = data or workload_data("lung", 3)
        self.names = list(data)
        self.certs = make_certificates(self.directory / "certs", sites=self.names)
        self.token = secrets.token_urlsafe(24)
        self.ports = {name: free_port(HOST) for name in ["coordinator", *self.names]}
        self.configs: dict[str, Path] = {}
        self.processes: dict[str, subprocess.Popen] = {}
        self.exit_codes: dict[str, int] = {}
        """Exit code of each server stopped so far (0: a clean stop)."""
        self.startup_timeout_s = startup_timeout_s
        self.link = link
        self._stopped = False
        self.relays: dict[str, Relay] = {}
        """The relay in front of each site, while the federation runs with a link."""
        mpc: dict[str, Any] = {"host": HOST, "warm": warm}
        if link is not None:
            mpc["link"] = {"rtt_ms": link.rtt_s * 1000, "mbit_s": link.mbit_s}
        for name in self.names:
            spec = {"name": name, "listen": f"{HOST}:{self.ports[name]}",
                    "tls": self._tls(name), "coordinator": "coordinator", "data": data[name],
                    "ledger": str(self.directory / name / "ledger.sqlite"),
                    "audit": str(self.directory / name / "audit.sqlite"),
                    "mpc": mpc, "federation": self.names,
                    **(site_options or {}), **(per_site or {}).get(name, {})}
            self.configs[name] = self._write(f"{name}.yaml", spec)
        self._write("analysts.yaml", {ANALYST: {
            "token_sha256": hashlib.sha256(self.token.encode()).hexdigest()}})
        self.configs["coordinator"] = self._write("coordinator.yaml", {
            "listen": f"{HOST}:{self.ports['coordinator']}", "tls": self._tls("coordinator"),
            "analysts": "analysts.yaml", "deadline_s": deadline_s,
            "fits": str(self.directory / "coordinator" / "fits"), "mpc": {"warm": warm},
            "sites": [{"name": n, "address": self._site_address(n)} for n in self.names],
            **(coordinator_options or {})})

    def _site_address(self, name: str) -> str:
        """Where the coordinator reaches a site: the site, or the relay in front of it."""
        if self.link is None:
            return f"{HOST}:{self.ports[name]}"
        self.relays[name] = Relay((HOST, self.ports[name]), self.link, host=HOST)
        return "{}:{}".format(*self.relays[name].address)

    @property
    def address(self) -> str:
        """Where analysts reach the coordinator."""
        return f"{HOST}:{self.ports['coordinator']}"

    def start(self) -> LocalFederation:
        """Start every server and wait until each reports SERVING; if one cannot start,
        stop the others (a `with` block's exit never runs when its start fails)."""
        if self._stopped and self.relays:
            raise PetError("this federation's links ended when it stopped; make a new "
                           "LocalFederation to start one over links again")
        try:
            for name in [*self.names, "coordinator"]:
                self.start_server(name, wait=False)
            for name in [*self.names, "coordinator"]:
                self.wait_serving(name)
        except BaseException:
            self.stop()
            raise
        return self

    def start_server(self, name: str, *, wait: bool = True) -> None:
        """Start one server (a site by name, or "coordinator"); with `wait`, until it
        serves."""
        role = "coordinator" if name == "coordinator" else "site"
        log = (self.directory / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", "pet", "serve", role, str(self.configs[name])],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if wait:
            self.wait_serving(name)

    def wait_serving(self, name: str) -> None:
        """Wait until a server answers its health check with SERVING."""
        deadline = time.monotonic() + self.startup_timeout_s
        address = f"{HOST}:{self.ports[name]}"
        with peer_channel(address, self._tls_files("coordinator")) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                process = self.processes[name]
                if process.poll() is not None:
                    raise PetError(f"{name} exited with code {process.returncode} while "
                                   f"starting; see {self.directory / name}.log")
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise PetError(f"{name} did not start serving within "
                                   f"{self.startup_timeout_s:g} s")
                time.sleep(0.1)

    def stop_server(self, name: str, *, kill: bool = False) -> None:
        """Stop one server: SIGTERM (a clean stop), or SIGKILL with `kill`."""
        process = self.processes.pop(name, None)
        if process is None:
            return
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        self.exit_codes[name] = process.returncode

    def stop(self) -> None:
        """Stop the coordinator, then every site, then the relays."""
        for name in ["coordinator", *self.names]:
            self.stop_server(name)
        for relay in self.relays.values():
            relay.close()
        self._stopped = True

    def client(self, **options: Any) -> Client:
        """The analyst's client of this federation."""
        return Client(self.address, token=self.token, ca=self.certs.ca, **options)

    def __enter__(self) -> LocalFederation:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _tls(self, role: str) -> dict[str, str]:
        return {"cert": str(self.certs.cert(role)), "key": str(self.certs.key(role)),
                "ca": str(self.certs.ca)}

    def _tls_files(self, role: str) -> Tls:
        return Tls(self.certs.cert(role), self.certs.key(role), self.certs.ca)

    def _write(self, name: str, spec: dict[str, Any]) -> Path:
        path = self.directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        return path
