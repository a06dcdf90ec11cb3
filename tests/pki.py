"""Certificates made at test time for the TLS tests: a CA, the switch's
server certificate, controllers' client certificates, and the bad ones a
switch must refuse (self-signed, from another CA, expired). Nothing here is
committed as a file: each test session writes its own under a temp dir.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DAY = datetime.timedelta(days=1)


@dataclass(frozen=True)
class Identity:
    cert: Path
    key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "p4flowtable tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(directory: Path, stem: str, cert: x509.Certificate, key) -> Identity:
    c, k = directory / f"{stem}.crt", directory / f"{stem}.key"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    k.chmod(0o600)
    return Identity(c, k)


class Authority:
    """A CA that signs server and client certificates into ``directory``."""

    def __init__(self, directory: Path, name: str = "p4ft test CA"):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - DAY).not_valid_after(now + 30 * DAY)
                     .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                     .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                  content_commitment=False, key_encipherment=False,
                                                  data_encipherment=False, key_agreement=False,
                                                  encipher_only=False, decipher_only=False), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.ca = directory / f"{name.replace(' ', '-')}.crt"
        self.ca.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, stem: str, cn: str, *, server: bool = False, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
              expired: bool = False) -> Identity:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        start, end = (now - 30 * DAY, now - DAY) if expired else (now - DAY, now + 30 * DAY)
        b = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(self.cert.subject)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(start).not_valid_after(end)
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                   else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
        if server:
            sans = [x509.IPAddress(ipaddress.ip_address(h)) if _is_ip(h) else x509.DNSName(h) for h in hosts]
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return _write(self.directory, stem, b.sign(self.key, hashes.SHA256()), key)


def self_signed(directory: Path, stem: str, cn: str) -> Identity:
    """A client certificate signed by its own key: no CA vouches for it."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - DAY).not_valid_after(now + 30 * DAY)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(key, hashes.SHA256()))
    return _write(directory, stem, cert, key)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


@dataclass(frozen=True)
class Pki:
    """Everything one TLS test needs."""
    ca: Path                 # the CA both the switch and the controllers trust
    switch: Identity         # the switch's server certificate (127.0.0.1, localhost)
    primary: Identity        # a controller's client certificate
    backup: Identity         # a second controller's, same CA
    other_ca: Path           # an unrelated CA
    from_other_ca: Identity  # a client certificate that CA signed
    self_signed: Identity
    expired: Identity        # signed by the right CA, expired yesterday


def make_pki(directory: Path) -> Pki:
    ca = Authority(directory / "ca")
    other = Authority(directory / "other", "other CA")
    return Pki(ca=ca.ca, switch=ca.issue("switch", "switch", server=True),
               primary=ca.issue("primary", "p4ft-primary"), backup=ca.issue("backup", "p4ft-backup"),
               other_ca=other.ca, from_other_ca=other.issue("intruder", "p4ft-primary"),
               self_signed=self_signed(directory, "selfsigned", "p4ft-primary"),
               expired=ca.issue("expired", "p4ft-primary", expired=True))
