"""P4Runtime's transport security: mutual TLS between the controller and
the switch, and the rule for plaintext.

P4Runtime's arbitration (spec 5.4) is not authentication: whoever reaches
the switch's P4Runtime port can claim primary with a higher election id and
write entries. So the daemon verifies the switch's certificate against a CA
and presents its own, and the switch (BMv2 with
``--grpc-server-with-client-auth``, ``p4ft switch`` given ``--tls-ca``)
accepts only clients whose certificate that CA signed.

Plaintext is accepted only to and on a loopback address, where only this
host's processes can reach the port; anywhere else it is refused unless the
operator says ``--insecure`` (and then logged as a warning at every start).
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

log = logging.getLogger("p4ft")


class TlsConfigError(ValueError):
    """A CA, certificate or key the operator named cannot be used."""


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: the CA that signs the peer's certificate, and our own
    certificate and key (a switch serves them; a controller presents them)."""
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    @property
    def enabled(self) -> bool:
        return any((self.ca, self.cert, self.key))

    def _read(self, what: str, path: Path) -> bytes:
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise TlsConfigError(f"{what} {path}: {e.strerror or e}") from None
        if b"-----BEGIN " not in data:
            raise TlsConfigError(f"{what} {path}: not a PEM file")
        return data

    def check(self, *, need_ca: bool, need_identity: bool) -> None:
        """Loads each file the way OpenSSL will at the handshake, so that a
        wrong path, a key of another certificate or a CA that is not a
        certificate is named now rather than as a failed handshake later."""
        if need_ca and not self.ca:
            raise TlsConfigError("--tls-ca is required with TLS: the CA that signed the peer's certificate")
        if need_identity and not (self.cert and self.key):
            raise TlsConfigError("--tls-cert and --tls-key are required together")
        if bool(self.cert) != bool(self.key):
            raise TlsConfigError("--tls-cert and --tls-key are required together")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if self.ca:
            self._read("--tls-ca", self.ca)
            try:
                ctx.load_verify_locations(cafile=str(self.ca))
            except ssl.SSLError as e:
                raise TlsConfigError(f"--tls-ca {self.ca}: not a CA certificate ({e.reason})") from None
        if self.cert:
            self._read("--tls-cert", self.cert)
            self._read("--tls-key", self.key)
            try:
                ctx.load_cert_chain(str(self.cert), str(self.key))
            except ssl.SSLError as e:
                reason = "the key is not the certificate's" if "KEY_VALUES_MISMATCH" in str(e) else e.reason
                raise TlsConfigError(f"--tls-cert {self.cert} / --tls-key {self.key}: {reason}") from None

    def _warn_if_readable(self) -> None:
        """Once, where the key is loaded for use (check() only validates)."""
        mode = Path(self.key).stat().st_mode & 0o777
        if mode & 0o077:
            log.warning("--tls-key %s can be read by other users (mode %o): whoever reads it can act as "
                        "this side of the connection; chmod 600 it", self.key, mode)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        self.check(need_ca=True, need_identity=False)
        if self.key:
            self._warn_if_readable()
        return grpc.ssl_channel_credentials(
            root_certificates=self._read("--tls-ca", self.ca),
            private_key=self._read("--tls-key", self.key) if self.key else None,
            certificate_chain=self._read("--tls-cert", self.cert) if self.cert else None)

    def server_credentials(self) -> grpc.ServerCredentials:
        """The switch's side: its certificate, and with a CA, client
        certificates required and verified (BMv2's
        --grpc-server-with-client-auth)."""
        self.check(need_ca=False, need_identity=True)
        self._warn_if_readable()
        return grpc.ssl_server_credentials(
            [(self._read("--tls-key", self.key), self._read("--tls-cert", self.cert))],
            root_certificates=self._read("--tls-ca", self.ca) if self.ca else None,
            require_client_auth=self.ca is not None)


def host_of(address: str) -> str:
    """The host part of a gRPC target: host:port, [v6]:port, ipv4:/ipv6:/dns: prefixes."""
    a = address
    for prefix in ("ipv4:", "ipv6:", "dns:///", "dns:"):
        if a.startswith(prefix):
            a = a[len(prefix):]
    if a.startswith("unix:"):
        return "unix"
    if a.startswith("["):
        return a[1:a.index("]")] if "]" in a else a
    if a.count(":") == 1:
        return a.rsplit(":", 1)[0]
    return a


def is_local(address: str) -> bool:
    """True where only this host can reach the address: loopback and unix sockets."""
    host = host_of(address)
    if host in ("unix", "localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def plaintext_allowed(address: str, insecure: bool, role: str) -> None:
    """Raises TlsConfigError for plaintext P4Runtime off the host unless the
    operator asked for it; logs a warning when they did."""
    if is_local(address):
        return
    if not insecure:
        raise TlsConfigError(
            f"P4Runtime {role} {address} in plaintext: anyone who reaches that address could claim primary and "
            f"write the switch's entries. Give --tls-ca, --tls-cert and --tls-key, or --insecure to accept it")
    log.warning("P4Runtime %s %s in plaintext (--insecure): whoever reaches it can program the switch",
                role, address)


def handshake_hint(details: str, name: str | None = None) -> str | None:
    """A sentence naming what a failed TLS connection says went wrong, or
    None when the failure does not look like TLS. name: the server name
    the certificate was checked against (--tls-server-name), if given."""
    d = details.lower()
    if "certificate_verify_failed" in d or "certificate verify failed" in d:
        if "expired" in d:
            return "the switch's certificate has expired"
        return "the switch's certificate is not signed by --tls-ca (or does not name this address)"
    if "peer name" in d or "hostname" in d or "subject alternative" in d:
        if name:
            return f"the switch's certificate does not carry the name {name} (--tls-server-name)"
        return ("the switch's certificate does not name this address (give the name it carries with "
                "--tls-server-name)")
    if "wrong_version_number" in d or "wrong version number" in d or "record layer failure" in d \
            or "http2 frame" in d and "ssl" in d:
        return "the switch does not speak TLS on that port (started without TLS?)"
    if "handshake" in d or "ssl" in d or "tls" in d or "alert" in d:
        return "the TLS handshake failed: the switch refused this controller's certificate, or spoke no TLS"
    return None
