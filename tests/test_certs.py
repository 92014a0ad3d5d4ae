"""The demo CA and certificates: each leaf chains to the CA, carries the role's name and
hosts, and works in a real mutual-TLS handshake (Python's ssl module as the reference)."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pet.certs import Certificates, make_certificates, role_of
from pet.errors import PetError

ROLES = ("coordinator", "site-1", "site-2")


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"), sites=["site-1", "site-2"],
                             hosts=["localhost", "127.0.0.1", "pet.example"])


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _common_name(name: x509.Name) -> str:
    return str(name.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


@pytest.mark.parametrize("role", ROLES)
def test_each_leaf_chains_to_the_ca_and_names_its_role_and_hosts(made: Certificates,
                                                                 role: str) -> None:
    ca, leaf = _load(made.ca), _load(made.cert(role))
    leaf.verify_directly_issued_by(ca)
    assert _common_name(leaf.subject) == role
    assert role_of(made.cert(role).read_bytes()) == role
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(names.get_values_for_type(x509.DNSName)) == {"localhost", "pet.example", role}
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    usage = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usage) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    key = load_pem_private_key(made.key(role).read_bytes(), password=None)
    assert key.public_key().public_numbers() == leaf.public_key().public_numbers()
    assert key.curve.name == "secp256r1"
    assert stat.S_IMODE(made.key(role).stat().st_mode) == 0o600


def test_the_ca_signs_only_leaves_and_its_key_is_not_kept(made: Certificates) -> None:
    ca = _load(made.ca)
    ca.verify_directly_issued_by(ca)
    assert _common_name(ca.subject) == "pet demo CA"
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert (constraints.ca, constraints.path_length) == (True, 0)
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    assert sorted(p.name for p in made.directory.iterdir()) == sorted(
        ["ca.pem"] + [f"{role}.{ext}" for role in ROLES for ext in ("pem", "key")])


def test_certificates_are_valid_from_five_minutes_ago_for_the_days_asked(
        tmp_path: Path) -> None:
    before = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    made = make_certificates(tmp_path / "new", sites=["site-1"], days=7)
    after = datetime.datetime.now(datetime.UTC)
    for path in (made.ca, made.cert("coordinator"), made.cert("site-1")):
        certificate = _load(path)
        start, end = certificate.not_valid_before_utc, certificate.not_valid_after_utc
        assert before - datetime.timedelta(minutes=5) <= start <= after - datetime.timedelta(
            minutes=5)
        assert before + datetime.timedelta(days=7) <= end <= after + datetime.timedelta(days=7)


def test_an_existing_key_file_is_made_private(tmp_path: Path) -> None:
    stale = tmp_path / "site-1.key"
    stale.write_text("old")
    stale.chmod(0o644)
    made = make_certificates(tmp_path, sites=["site-1"])
    assert made.key("site-1") == stale
    assert stat.S_IMODE(stale.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in stale.read_bytes()


@pytest.mark.parametrize(("sites", "days", "named"), [
    ([], 30, "sites=[]"),
    ("site-1", 30, "'site-1'"),
    (["coordinator"], 30, "'coordinator'"),
    (["a", "b", "a"], 30, "['a']"),
    (["-bad"], 30, "'-bad'"),
    (["bad-"], 30, "'bad-'"),
    (["site_1"], 30, "'site_1'"),
    (["x" * 64], 30, "'" + "x" * 64 + "'"),
    (["ok"], 0, "days=0"),
])
def test_bad_names_and_lifetimes_are_refused_by_name(tmp_path: Path, sites: list[str],
                                                     days: int, named: str) -> None:
    with pytest.raises(PetError) as refused:
        make_certificates(tmp_path / "refused", sites=sites, days=days)
    assert named in str(refused.value)
    assert not (tmp_path / "refused").exists()


def test_the_longest_label_is_accepted(tmp_path: Path) -> None:
    name = "a" + "-" * 61 + "z"
    assert role_of(make_certificates(tmp_path, sites=[name]).cert(name).read_bytes()) == name


def test_an_unknown_role_is_named_with_the_known_ones(made: Certificates) -> None:
    for lookup in (made.cert, made.key):
        with pytest.raises(PetError) as unknown:
            lookup("site-9")
        assert "'site-9'" in str(unknown.value)
        assert all(role in str(unknown.value) for role in ROLES)


def _handshake(made: Certificates, *, cert: Path | None = None, key: Path | None = None,
               server_hostname: str = "localhost") -> tuple[object, object]:
    """One TLS connection to a server holding the coordinator's certificate and requiring
    a client certificate from `made`'s CA. Returns what the client read (or its error)
    and the client's role as the server saw it (or the server's error)."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(made.cert("coordinator"), made.key("coordinator"))
    server.load_verify_locations(made.ca)
    server.verify_mode = ssl.CERT_REQUIRED
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(made.ca)
    if cert is not None:
        client.load_cert_chain(cert, key)
    seen: list[object] = []

    def accept(listener: socket.socket) -> None:
        connection, _ = listener.accept()
        connection.settimeout(5)
        try:
            with server.wrap_socket(connection, server_side=True) as tls:
                peer = ssl.DER_cert_to_PEM_cert(tls.getpeercert(binary_form=True))
                seen.append(role_of(peer.encode()))
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as error:
            seen.append(error)

    with socket.create_server(("127.0.0.1", 0)) as listener:
        thread = threading.Thread(target=accept, args=(listener,), daemon=True)
        thread.start()
        try:
            with socket.create_connection(listener.getsockname(), timeout=5) as raw, \
                    client.wrap_socket(raw, server_hostname=server_hostname) as tls:
                read: object = tls.recv(2)
        except (ssl.SSLError, OSError) as error:
            read = error
        thread.join(5)
    assert not thread.is_alive()
    return read, (seen[0] if seen else None)


@pytest.mark.parametrize("server_hostname", ["localhost", "127.0.0.1", "coordinator"])
def test_mutual_tls_tells_the_server_which_site_calls(made: Certificates,
                                                      server_hostname: str) -> None:
    read, seen = _handshake(made, cert=made.cert("site-1"), key=made.key("site-1"),
                            server_hostname=server_hostname)
    assert (read, seen) == (b"ok", "site-1")


def test_a_client_checks_the_server_is_the_host_it_asked_for(made: Certificates) -> None:
    read, _ = _handshake(made, cert=made.cert("site-1"), key=made.key("site-1"),
                         server_hostname="site-1")
    assert isinstance(read, ssl.SSLCertVerificationError)
    assert "site-1" in read.verify_message


def test_a_client_without_a_certificate_is_refused(made: Certificates) -> None:
    read, seen = _handshake(made)
    assert read != b"ok"
    assert isinstance(seen, ssl.SSLError)
    assert seen.reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE"


def test_a_certificate_from_another_ca_is_refused(made: Certificates, tmp_path: Path) -> None:
    other = make_certificates(tmp_path / "other", sites=["site-1"])
    read, seen = _handshake(made, cert=other.cert("site-1"), key=other.key("site-1"))
    assert read != b"ok"
    assert isinstance(seen, ssl.SSLCertVerificationError)
    assert seen.reason == "CERTIFICATE_VERIFY_FAILED"


def test_role_of_refuses_a_certificate_without_a_common_name(made: Certificates) -> None:
    ca = _load(made.ca)
    nameless = (x509.CertificateBuilder().subject_name(x509.Name([]))
                .issuer_name(ca.subject).public_key(ca.public_key())
                .serial_number(1).not_valid_before(ca.not_valid_before_utc)
                .not_valid_after(ca.not_valid_after_utc))
    signer = load_pem_private_key(made.key("site-1").read_bytes(), password=None)
    pem = nameless.sign(signer, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(PetError, match="no common name"):
        role_of(pem)
