"""The demo CA and certificates: each leaf chains to the CA, carries the role's name and
hosts, and works in a real mutual-TLS handshake (Python's ssl module as the reference)."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pet.certs import Certificates, make_certificates, role_of
from pet.errors import PetError


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"), sites=["site-1", "site-2"],
                             hosts=["localhost", "127.0.0.1", "pet.example"])


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.mark.parametrize("role", ["coordinator", "site-1", "site-2"])
def test_each_leaf_chains_to_the_ca_and_names_its_role_and_hosts(made: Certificates,
                                                                 role: str) -> None:
    ca, leaf = _load(made.ca), _load(made.cert(role))
    leaf.verify_directly_issued_by(ca)
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == role
    assert role_of(made.cert(role).read_bytes()) == role
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(names.get_values_for_type(x509.DNSName)) == {"localhost", "pet.example", role}
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    usage = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(usage)
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    key = load_pem_private_key(made.key(role).read_bytes(), password=None)
    assert key.public_key().public_numbers() == leaf.public_key().public_numbers()
    assert stat.S_IMODE(made.key(role).stat().st_mode) == 0o600


def test_the_ca_signs_and_its_key_is_not_kept(made: Certificates) -> None:
    ca = _load(made.ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert sorted(p.name for p in made.directory.iterdir()) == sorted(
        ["ca.pem"] + [f"{r}.{e}" for r in ("coordinator", "site-1", "site-2")
                      for e in ("pem", "key")])


@pytest.mark.parametrize(("sites", "days", "words"), [
    ([], 30, "at least one site"),
    (["coordinator"], 30, "'coordinator'"),
    (["a", "a"], 30, "repeat"),
    (["-bad"], 30, "'-bad'"),
    (["x" * 64], 30, "host label"),
    (["ok"], 0, "at least 1 day"),
])
def test_bad_names_and_lifetimes_are_refused(tmp_path: Path, sites: list[str], days: int,
                                             words: str) -> None:
    with pytest.raises(PetError, match=words):
        make_certificates(tmp_path, sites=sites, days=days)


def test_an_unknown_role_is_named(made: Certificates) -> None:
    with pytest.raises(PetError, match="no certificate for role 'site-9'"):
        made.cert("site-9")


def _server(made: Certificates) -> tuple[socket.socket, list[object], threading.Thread]:
    """A TLS server as the coordinator, requiring client certificates from the CA; it
    records the client's name, or the error its handshake failed with."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(made.cert("coordinator"), made.key("coordinator"))
    context.load_verify_locations(made.ca)
    context.verify_mode = ssl.CERT_REQUIRED
    listener = socket.create_server(("127.0.0.1", 0))
    seen: list[object] = []

    def accept() -> None:
        connection, _ = listener.accept()
        try:
            with context.wrap_socket(connection, server_side=True) as tls:
                seen.append(dict(x[0] for x in tls.getpeercert()["subject"])["commonName"])
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as error:
            seen.append(error)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    return listener, seen, thread


def _client(made: Certificates, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(made.ca)
    if cert is not None:
        context.load_cert_chain(cert, key)
    return context


def _connect(listener: socket.socket, context: ssl.SSLContext) -> bytes:
    with socket.create_connection(listener.getsockname(), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        return tls.recv(2)


def test_mutual_tls_knows_the_site_and_refuses_strangers(made: Certificates,
                                                          tmp_path: Path) -> None:
    listener, seen, thread = _server(made)
    with listener:
        assert _connect(listener, _client(made, made.cert("site-1"),
                                          made.key("site-1"))) == b"ok"
    thread.join(5)
    assert seen == ["site-1"]
    other = make_certificates(tmp_path / "other", sites=["site-1"])
    for cert, key in [(None, None), (other.cert("site-1"), other.key("site-1"))]:
        listener, seen, thread = _server(made)
        with listener:
            try:
                reply = _connect(listener, _client(made, cert, key))
            except (ssl.SSLError, OSError):
                reply = b""
            thread.join(5)
        assert reply == b""
        assert len(seen) == 1 and isinstance(seen[0], ssl.SSLError)
