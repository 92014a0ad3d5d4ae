"""The docker files: the compose file wires a certificate step, a coordinator and three
sites consistently with their configuration files (no docker daemon runs here)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from services.config import read_coordinator, read_site

DOCKER = Path(__file__).resolve().parent.parent / "docker"
COMPOSE = yaml.safe_load((DOCKER / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
SITES = ("site-1", "site-2", "site-3")


def _config(service: str) -> Path:
    """The configuration file a server's command names, as a path in this repository."""
    command = SERVICES[service]["command"]
    assert command[:2] == ["serve", "coordinator" if service == "coordinator" else "site"]
    assert command[2].startswith("/config/")
    return DOCKER / "config" / command[2].removeprefix("/config/")


def _certificates() -> set[str]:
    """The files the `certs` step writes into /certs."""
    command = SERVICES["certs"]["command"]
    assert command[:2] == ["certs", "/certs"]
    sites = command[command.index("--sites") + 1:command.index("--hosts")]
    roles = ["coordinator", *sites]
    return {"/certs/ca.pem"} | {f"/certs/{r}.{e}" for r in roles for e in ("pem", "key")}


def test_the_compose_file_has_a_certificate_step_a_coordinator_and_three_sites() -> None:
    assert set(SERVICES) == {"certs", "coordinator", *SITES}
    hosts = SERVICES["certs"]["command"][SERVICES["certs"]["command"].index("--hosts") + 1:]
    assert {"coordinator", *SITES} <= set(hosts)


@pytest.mark.parametrize("service", ["coordinator", *SITES])
def test_every_server_reads_its_own_configuration_and_mounts_it_read_only(
        service: str) -> None:
    spec = SERVICES[service]
    volumes = spec["volumes"]
    assert "./config:/config:ro" in volumes
    assert "certs:/certs:ro" in volumes
    assert spec["depends_on"]["certs"]["condition"] == "service_completed_successfully"
    config = _config(service)
    parsed = read_coordinator(config) if service == "coordinator" else read_site(config)
    made = _certificates()
    for path in (parsed.tls.cert, parsed.tls.key, parsed.tls.ca):
        assert str(path) in made, f"{config.name} names {path}, which `pet certs` does not make"
    health = spec["healthcheck"]["test"]
    role = health[health.index("--role") + 1]
    assert role == ("coordinator" if service == "coordinator" else parsed.name)


@pytest.mark.parametrize("site", SITES)
def test_sites_keep_their_data_in_their_own_volume_and_match_the_coordinator(
        site: str) -> None:
    config = read_site(_config(site))
    assert config.name == site
    assert config.tls.cert == Path(f"/certs/{site}.pem")
    assert config.coordinator == "coordinator"
    assert config.ledger.parent == config.audit.parent == Path("/var/lib/pet")
    assert f"{site}-data:/var/lib/pet" in SERVICES[site]["volumes"]
    assert f"{site}-data" in COMPOSE["volumes"]
    assert "ports" not in SERVICES[site]
    coordinator = read_coordinator(_config("coordinator"))
    address = {s.name: s.address for s in coordinator.sites}[site]
    assert address.split(":")[0] == site
    assert address.split(":")[1] == config.listen.split(":")[1]
    health = SERVICES[site]["healthcheck"]["test"]
    assert health[health.index("--role") - 3].endswith(config.listen.split(":")[1])


def test_the_coordinator_waits_for_healthy_sites_and_publishes_its_port() -> None:
    spec = SERVICES["coordinator"]
    for site in SITES:
        assert spec["depends_on"][site]["condition"] == "service_healthy"
    port = read_coordinator(_config("coordinator")).listen.split(":")[1]
    assert f"{port}:{port}" in spec["ports"]


def test_the_demo_analyst_token_is_stored_only_as_its_digest() -> None:
    coordinator = read_coordinator(_config("coordinator"))
    assert coordinator.analyst("demo-token-alice") == "alice"
    stored = yaml.safe_load((DOCKER / "config" / "analysts.yaml").read_text())
    assert "demo-token-alice" not in yaml.safe_dump(stored)  # only in a comment


def test_the_dockerfile_copies_only_what_exists_and_installs_crypten_without_deps() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    sources = [s for line in re.findall(r"^COPY (.+)$", text, re.M)
               for s in line.split()[:-1]]
    assert sources
    root = DOCKER.parent
    assert all((root / source).exists() for source in sources), sources
    assert "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in text
    assert "--no-deps crypten==0.4.1" in text
    assert re.search(r"^USER (?!root)", text, re.M)
