"""TLS for DICOM associations (PS3.15 B.1, B.9): settings, and the Twisted endpoints that use them.

Nothing here speaks TLS itself: Twisted's ``twisted.internet.ssl`` (pyOpenSSL)
does, through endpoints.  This module reads what an operator configures --
certificates, the CAs to trust, whether the peer must prove who it is -- and
turns it into a server endpoint for the node's TLS listener and client
endpoints for associations the node or a tool opens.

.. code-block:: toml

    [tls]
    certificate = "node.crt"       # PEM: our certificate (the CA certificates of its chain may follow)
    private_key = "node.key"       # PEM, not encrypted
    ca_certificates = ["ca.crt"]   # PEM files: the root CAs (or peers' self-signed certificates) we trust
    port = 2762                    # the node's TLS listener (0: none); the TCP one stays on [node] port
    verify_peer = true             # the peer must present a certificate we trust (both directions)
    verify_hostname = false        # also check that a server's certificate names the host we dial
    minimum_version = "1.2"        # "1.2" or "1.3" (BCP 195: nothing older)
    ciphers = "forward-secret"     # TLS 1.2 cipher suites: "forward-secret" or "compatible"

Certificates are checked against ``ca_certificates`` in both directions
(mutual authentication, what PS3.15 B.1 asks for).  A peer's chain must end at
one of them: a root CA, or a peer's own self-signed certificate.  An
intermediate CA alone, or a peer's certificate that a CA issued, is not
enough (OpenSSL accepts no partial chain); a peer sends its intermediates
(dimsekit sends those that follow its certificate in ``certificate``).  ``certificate`` is also
the client certificate of the associations the node opens (C-MOVE
sub-operations, storage commitment reports to a ``[[remote]]`` with
``tls = true``): if it has an Extended Key Usage, it needs clientAuth as well
as serverAuth, or peers refuse it ("unsupported certificate").  Host names are not
checked by default: DICOM peers are usually configured by IP address, and
DCMTK does not check them either; ``verify_hostname = true`` turns the check
on for the associations we open.

``ciphers`` chooses TLS 1.2's cipher suites (TLS 1.3's are all forward secret
and authenticated-encryption): ``"forward-secret"`` (the default) allows only
ECDHE/DHE key exchange with AES-GCM or ChaCha20-Poly1305, what BCP 195 (RFC
9325) recommends and the BCP 195 profiles of PS3.15 build on;
``"compatible"`` also allows RSA key transport and CBC suites (OpenSSL's and
Twisted's defaults) -- for older devices that know only PS3.15's AES profile
(TLS_RSA_WITH_AES_128_CBC_SHA).  A handshake that fails for want of a common
cipher suite says "no shared cipher" (or "handshake failure") in the log.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dimsekit.config import ConfigError

__all__ = ["TLSConfig", "TLSContext", "TLSError", "from_section", "DEFAULT_TLS_PORT", "describe_tls_failure"]

#: the port registered for DICOM over TLS (PS3.15 B.1, IANA "dicom-tls")
DEFAULT_TLS_PORT = 2762

_VERSIONS = ("1.2", "1.3")
_KEYS = ("certificate", "private_key", "ca_certificates", "port", "verify_peer", "verify_hostname",
         "minimum_version", "ciphers")
#: ``ciphers``: OpenSSL cipher strings for TLS 1.2 (None: Twisted's own list)
CIPHER_CHOICES: dict[str, str | None] = {
    # ECDHE/DHE key exchange, AEAD only (BCP 195 / RFC 9325 section 4.2); no anonymous suites
    "forward-secret": "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL:!DSS",
    "compatible": None,
}


class TLSError(ConfigError):
    """The TLS settings cannot be used (a file missing or unreadable, a key that does not match)."""


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """``[tls]``: what TLS associations use.  See the module's documentation for each key."""

    certificate: str = ""
    private_key: str = ""
    ca_certificates: tuple[str, ...] = ()
    port: int = DEFAULT_TLS_PORT
    verify_peer: bool = True
    verify_hostname: bool = False
    minimum_version: str = "1.2"
    ciphers: str = "forward-secret"
    #: where relative file names are found (the configuration file's directory)
    base: str = field(default="", compare=False)

    @property
    def has_identity(self) -> bool:
        """A certificate and its key are configured (needed to listen)."""
        return bool(self.certificate and self.private_key)

    def path(self, name: str) -> Path:
        path = Path(name).expanduser()
        return path if path.is_absolute() or not self.base else Path(self.base) / path


def from_section(values: Mapping[str, Any], *, base: str = "", prefix: str = "tls") -> TLSConfig:
    """Read and check a ``[tls]`` table; :class:`~dimsekit.config.ConfigError` names the key."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"[{prefix}] must be a table, got {values!r}")
    for key in values:
        if key not in _KEYS:
            raise ConfigError(f"{prefix}.{key}: unknown key; the keys of [{prefix}] are: {', '.join(sorted(_KEYS))}")
    kwargs: dict[str, Any] = {"base": base}
    for key in ("certificate", "private_key"):
        if key in values:
            value = values[key]
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{prefix}.{key}: give the path of a PEM file, got {value!r}")
            kwargs[key] = value.strip()
    if "ca_certificates" in values:
        value = values["ca_certificates"]
        files = [value] if isinstance(value, str) else value
        if not isinstance(files, list) or not files or any(not isinstance(f, str) or not f.strip() for f in files):
            raise ConfigError(f"{prefix}.ca_certificates: give a PEM file or a list of them, got {value!r}")
        kwargs["ca_certificates"] = tuple(f.strip() for f in files)
    if "port" in values:
        port = values["port"]
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ConfigError(f"{prefix}.port: {port!r} is not a TCP port (0-65535; 0 = no TLS listener)")
        kwargs["port"] = port
    for key in ("verify_peer", "verify_hostname"):
        if key in values:
            if not isinstance(values[key], bool):
                raise ConfigError(f"{prefix}.{key}: true or false, got {values[key]!r}")
            kwargs[key] = values[key]
    if "minimum_version" in values:
        version = values["minimum_version"]
        if version not in _VERSIONS:
            raise ConfigError(f"{prefix}.minimum_version: use \"1.2\" or \"1.3\", got {version!r}")
        kwargs["minimum_version"] = version
    if "ciphers" in values:
        choice = values["ciphers"]
        if choice not in CIPHER_CHOICES:
            raise ConfigError(f"{prefix}.ciphers: use {' or '.join(map(repr, CIPHER_CHOICES))}, got {choice!r}")
        kwargs["ciphers"] = choice
    config = TLSConfig(**kwargs)
    if bool(config.certificate) != bool(config.private_key):
        missing = "private_key" if config.certificate else "certificate"
        raise ConfigError(f"{prefix}.{missing}: give both certificate and private_key, or neither")
    if config.verify_peer and not config.ca_certificates:
        raise ConfigError(f"{prefix}.ca_certificates: give the CA certificates that peers' certificates are checked "
                          "against, or set verify_peer = false (not recommended: anyone could connect)")
    if config.verify_hostname and not config.verify_peer:
        raise ConfigError(f"{prefix}.verify_hostname: needs verify_peer = true")
    return config


class TLSContext:
    """A :class:`TLSConfig` with its files read: makes server and client endpoints.

    Every file is read once, here; a problem raises :class:`TLSError` naming
    the key and the file, before anything listens or connects.
    """

    def __init__(self, config: TLSConfig, *, prefix: str = "tls") -> None:
        from twisted.internet import ssl

        self.config = config
        self._prefix = prefix
        self._ssl = ssl
        self._identity: Any = None
        self._chain: list[Any] = []
        if config.has_identity:
            certs = self._certificates("certificate", config.certificate)
            key = ssl.KeyPair(self._private_key(config.private_key))
            try:
                self._identity = ssl.PrivateCertificate.fromCertificateAndKeyPair(ssl.Certificate(certs[0]), key)
            except Exception:
                # Caught here: every handshake would fail later, with a vaguer message.
                raise TLSError(f"{prefix}.private_key: {self._where(config.private_key)} is not the key of the "
                               f"certificate in {self._where(config.certificate)}") from None
            self._chain = certs[1:]
        trusted = [cert for name in config.ca_certificates for cert in self._certificates("ca_certificates", name)]
        if config.verify_peer and not trusted:
            # from_section refuses this; a TLSConfig made in code must not get past either:
            # with no trust root Twisted's server options check no client certificate at
            # all, and its host name checking client options trust the system's CAs.
            raise TLSError(f"{prefix}.ca_certificates: verify_peer needs the CA certificates that peers' "
                           "certificates are checked against")
        self._trust = ssl.trustRootFromCertificates([ssl.Certificate(c) for c in trusted]) if trusted else None
        self._minimum = ssl.TLSVersion.TLSv1_3 if config.minimum_version == "1.3" else ssl.TLSVersion.TLSv1_2
        if config.ciphers not in CIPHER_CHOICES:
            raise TLSError(f"{prefix}.ciphers: use {' or '.join(map(repr, CIPHER_CHOICES))}, got {config.ciphers!r}")
        cipher_string = CIPHER_CHOICES[config.ciphers]
        #: extra CertificateOptions arguments: the minimum version, the cipher suites
        self._policy: dict[str, Any] = {"raiseMinimumTo": self._minimum}
        if cipher_string is not None:
            self._policy["acceptableCiphers"] = ssl.AcceptableCiphers.fromOpenSSLCipherString(cipher_string)
        #: the client options without a host name check: one for every association (its SSL context made once)
        self._client_options: Any = None

    # -- reading the files ------------------------------------------------------------

    def _where(self, name: str) -> str:
        return str(self.config.path(name))

    def _read(self, key: str, name: str) -> bytes:
        path = self.config.path(name)
        try:
            return path.read_bytes()
        except OSError as exc:
            raise TLSError(f"{self._prefix}.{key}: cannot read {path} ({exc.strerror or exc})") from None

    def _private_key(self, name: str) -> Any:
        """The private key of a PEM file (an ``OpenSSL.crypto.PKey``).

        Read with ``cryptography``, not with ``OpenSSL.crypto.load_privatekey``:
        given an encrypted key and no pass phrase, OpenSSL asks for one on the
        terminal (``Enter PEM pass phrase:``) and waits -- twistd or a tool
        started from a shell would hang there.  No message quotes the file's
        content.
        """
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives.serialization import load_pem_private_key
        from OpenSSL import crypto

        data = self._read("private_key", name)
        where = f"{self._prefix}.private_key: {self._where(name)}"
        try:
            key = load_pem_private_key(data, password=None)
        except TypeError:  # "Password was not given but private key is encrypted"
            raise TLSError(f"{where} is encrypted (protected by a pass phrase): give an unencrypted PEM key "
                           "(dimsekit does not ask for pass phrases)") from None
        except (ValueError, UnsupportedAlgorithm):
            raise TLSError(f"{where} is not an unencrypted PEM private key") from None
        try:
            return crypto.PKey.from_cryptography_key(key)
        except (TypeError, ValueError):
            raise TLSError(f"{where} holds a kind of key TLS does not use ({type(key).__name__})") from None

    def _certificates(self, key: str, name: str) -> list[Any]:
        """The certificates of a PEM file, in order (OpenSSL X509)."""
        from cryptography import x509
        from OpenSSL import crypto

        data = self._read(key, name)
        try:
            found = x509.load_pem_x509_certificates(data)
        except ValueError as exc:
            raise TLSError(f"{self._prefix}.{key}: {self._where(name)} holds no PEM certificate ({exc})") from None
        return [crypto.X509.from_cryptography(c) for c in found]

    def client_auth_problem(self) -> str | None:
        """Why peers that check client certificates would refuse ours (its Extended Key
        Usage lacks clientAuth), or None.  A node presents its certificate when it
        associates too (C-MOVE sub-operations, commitment reports)."""
        if self._identity is None:
            return None
        from cryptography import x509
        from cryptography.x509.oid import ExtendedKeyUsageOID

        try:
            usage = self._identity.original.to_cryptography().extensions.get_extension_for_class(
                x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            return None  # no restriction
        if ExtendedKeyUsageOID.CLIENT_AUTH in usage or ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in usage:
            return None
        return (f"{self._prefix}.certificate: {self._where(self.config.certificate)} is not for client "
                "authentication (its Extended Key Usage lacks clientAuth): peers that check client "
                "certificates refuse the associations the node opens with it")

    # -- options ----------------------------------------------------------------------

    def _options(self, *, server: bool) -> Any:
        ssl = self._ssl
        kwargs: dict[str, Any] = dict(self._policy)
        if self._identity is not None:
            kwargs.update(privateKey=self._identity.privateKey.original, certificate=self._identity.original,
                          extraCertChain=self._chain)
        if self.config.verify_peer:
            kwargs.update(trustRoot=self._trust)  # a certificate is then required, and checked
        elif server:
            kwargs.update(requireCertificate=False)
        return ssl.CertificateOptions(**kwargs)

    def server_options(self) -> Any:
        """What the node's TLS listener uses (our certificate; the client's checked if verify_peer)."""
        if self._identity is None:
            raise TLSError(f"{self._prefix}.certificate: a TLS listener needs certificate and private_key")
        return self._options(server=True)

    def client_options(self, host: str) -> Any:
        """What an association we open to ``host`` uses."""
        if self.config.verify_hostname:
            extra: dict[str, Any] = dict(self._policy)
            if self._identity is not None:  # a chain without a certificate is refused (ValueError)
                extra["extraCertChain"] = self._chain
            return self._ssl.optionsForClientTLS(
                host, trustRoot=self._trust, clientCertificate=self._identity, extraCertificateOptions=extra,
            )
        if self._client_options is None:
            self._client_options = self._options(server=False)
        return self._client_options

    # -- endpoints --------------------------------------------------------------------

    def server_endpoint(self, reactor: Any, port: int | None = None, interface: str = "") -> Any:
        from twisted.internet import endpoints

        return endpoints.SSL4ServerEndpoint(
            reactor, self.config.port if port is None else port, self.server_options(), interface=interface,
        )

    def client_endpoint(self, reactor: Any, host: str, port: int, timeout: float = 30.0) -> Any:
        from twisted.internet import endpoints

        return endpoints.wrapClientTLS(
            self.client_options(host), endpoints.HostnameEndpoint(reactor, host, port, timeout=timeout),
        )


def describe_tls_failure(value: BaseException) -> str | None:
    """One line for a failed TLS handshake (an ``OpenSSL.SSL.Error``, or the host name
    check's ``service_identity`` error with ``verify_hostname``), None for anything else."""
    try:
        from OpenSSL import SSL
    except ImportError:  # pragma: no cover - pyOpenSSL is a dependency (twisted[tls])
        return None
    mismatch = _host_name_mismatch(value)
    if mismatch is not None:
        return "TLS handshake failed: " + mismatch
    if not isinstance(value, SSL.Error):
        return None
    reasons = []
    for entry in value.args[0] if value.args and isinstance(value.args[0], list) else ():
        if isinstance(entry, tuple) and entry:
            reasons.append(str(entry[-1]))
    text = "; ".join(reasons) or str(value) or "the peer closed the connection"
    if "wrong version number" in text or "http request" in text:
        text += " (the peer does not speak TLS on this connection)"
    return "TLS handshake failed: " + text


def _host_name_mismatch(value: BaseException) -> str | None:
    """What a failed host name check says (Twisted reports it as the ``service_identity``
    error, not as an ``SSL.Error``); None for any other error."""
    try:
        from service_identity import CertificateError, VerificationError
    except ImportError:  # pragma: no cover - service_identity is a dependency (twisted[tls])
        return None
    if isinstance(value, VerificationError):
        hosts = []
        for error in getattr(value, "errors", ()):
            wanted = getattr(error, "mismatched_id", None)
            name = getattr(wanted, "hostname", None) or getattr(wanted, "ip", None)
            if name is not None:
                hosts.append(name.decode() if isinstance(name, bytes) else str(name))
        return f"the peer's certificate is not for {', '.join(hosts) or 'the host dialled'} (host name check)"
    if isinstance(value, CertificateError):
        return f"the peer's certificate names no host ({value}) (host name check)"
    return None
