"""A test CA and certificates for a demo federation: mutual TLS between coordinator and sites."""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pet.errors import PetError

COORDINATOR = "coordinator"
CA_NAME = "pet demo CA"
# A DNS label (RFC 1123): the role is also the host name a docker-compose service gets.
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


@dataclass(frozen=True)
class Certificates:
    """Where the CA certificate and each role's certificate and key were written."""

    directory: Path
    ca: Path
    roles: dict[str, tuple[Path, Path]]

    def cert(self, role: str) -> Path:
        """The certificate (PEM) of a role."""
        return self._files(role)[0]

    def key(self, role: str) -> Path:
        """The private key (PEM) of a role."""
        return self._files(role)[1]

    def _files(self, role: str) -> tuple[Path, Path]:
        if role not in self.roles:
            raise PetError(f"no certificate for role {role!r}; made for {sorted(self.roles)}")
        return self.roles[role]


def make_certificates(directory: str | Path, *, sites: Sequence[str],
                      hosts: Sequence[str] = ("localhost", "127.0.0.1"),
                      days: int = 30) -> Certificates:
    """Write ca.pem and, for the coordinator and each site, ROLE.pem and ROLE.key (0600).

    Every certificate is valid for each of `hosts` and for its role's own name, and for
    both server and client authentication, since every role is both. The CA's private
    key is never written: this demo CA signs this federation's certificates and nothing
    more, so a copied folder cannot mint new identities.
    """
    _check(sites, days)
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(CA_NAME)
    ca = (_builder(ca_name, ca_name, ca_key.public_key(), now, days)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, key_cert_sign=True, crl_sign=True,
                                       encipher_only=False, decipher_only=False),
                         critical=True)
          .sign(ca_key, hashes.SHA256()))
    ca_path = folder / "ca.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    roles = {role: _leaf(folder, role, hosts, ca, ca_key, now, days)
             for role in (COORDINATOR, *sites)}
    return Certificates(folder, ca_path, roles)


def role_of(certificate_pem: bytes) -> str:
    """The common name of a PEM certificate: the role it was made for, so a server knows
    which peer is calling."""
    certificate = x509.load_pem_x509_certificate(certificate_pem)
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        raise PetError(f"certificate {certificate.subject.rfc4514_string()!r} has no common "
                       "name, so it names no role")
    return str(names[0].value)


def _check(sites: Sequence[str], days: int) -> None:
    if isinstance(sites, str):
        raise PetError(f"sites must be a list of names, got the text {sites!r}")
    if not sites:
        raise PetError(f"a federation needs at least one site, got sites={list(sites)}")
    for name in sites:
        if not _LABEL.match(name):
            raise PetError(f"site name {name!r} is not a valid host label (letters, digits "
                           "and inner hyphens, 1 to 63 characters)")
    if COORDINATOR in sites:
        raise PetError(f"a site may not be called {COORDINATOR!r}: that is the "
                       "coordinator's certificate")
    repeated = sorted({name for name in sites if list(sites).count(name) > 1})
    if repeated:
        raise PetError(f"site names must be distinct; {repeated} appear more than once")
    if days < 1:
        raise PetError(f"certificates must be valid for at least 1 day, got days={days}")


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePublicKey,
             now: datetime.datetime, days: int) -> x509.CertificateBuilder:
    """A certificate valid from 5 minutes ago, so peers with slightly slow clocks accept it."""
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(key).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days)))


def _leaf(folder: Path, role: str, hosts: Sequence[str], ca: x509.Certificate,
          ca_key: ec.EllipticCurvePrivateKey, now: datetime.datetime,
          days: int) -> tuple[Path, Path]:
    """One role's key and certificate, valid for the hosts and the role's own name."""
    key = ec.generate_private_key(ec.SECP256R1())
    names = [_alternative(host) for host in dict.fromkeys([*hosts, role])]
    certificate = (_builder(_name(role), ca.subject, key.public_key(), now, days)
                   .add_extension(x509.SubjectAlternativeName(names), critical=False)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                         ExtendedKeyUsageOID.CLIENT_AUTH]),
                                  critical=False)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                                  critical=True)
                   .sign(ca_key, hashes.SHA256()))
    cert_path, key_path = folder / f"{role}.pem", folder / f"{role}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    # Created 0600 so the key is never readable by others, even for a moment; the chmod
    # covers a key file left by an earlier run, whose mode O_CREAT does not change.
    descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        os.chmod(key_path, 0o600)
        file.write(key.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    return cert_path, key_path


def _alternative(host: str) -> x509.GeneralName:
    """An IP address entry for an address, a DNS entry for a name."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)
