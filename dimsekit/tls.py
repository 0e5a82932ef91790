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
    crls = ["ca.crl"]              # PEM or DER files: certificate revocation lists (none: no revocation check)
    crl_check = "leaf"             # "leaf": the peer's certificate; "chain": its intermediate CAs' too

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

``crls`` turns on revocation checking of peers' certificates, both ways (as
DCMTK's ``+crl``): a certificate its issuer's CRL lists is refused ("certificate
revoked").  Then the CRL of *every* CA that issues peers' certificates must be
in ``crls`` (with ``crl_check = "chain"``, of every CA of a peer's chain below
its root as well): OpenSSL refuses a certificate whose issuer's CRL it lacks
("unable to get certificate CRL"), and one whose CRL is past its next update
("CRL has expired").  A CRL must be signed by a CA of ``ca_certificates`` (or
an intermediate a peer sends).  The log says when a CRL's next update has passed.

Every file of ``[tls]`` is read again, for the connections that follow, as
soon as one changes: put a renewed certificate of ours in place, trust a new
modality's self-signed certificate, or publish a new CRL, without a restart.
Replace a file whole (write it elsewhere, then rename it over the old one); a
file that cannot be used -- or a certificate and key that do not match yet,
between the two renames -- keeps what was read before in force, and the log
says why.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.logger import Logger
from zope.interface import implementer

from dimsekit.config import ConfigError

__all__ = ["TLSConfig", "TLSContext", "TLSError", "from_section", "DEFAULT_TLS_PORT", "CRL_CHECKS", "describe_tls_failure",
           "certificate_problem"]

#: the port registered for DICOM over TLS (PS3.15 B.1, IANA "dicom-tls")
DEFAULT_TLS_PORT = 2762

_VERSIONS = ("1.2", "1.3")
_KEYS = ("certificate", "private_key", "ca_certificates", "port", "verify_peer", "verify_hostname",
         "minimum_version", "ciphers", "crls", "crl_check")
#: ``crl_check``: which certificates of a peer's chain are checked against the CRLs
CRL_CHECKS = ("leaf", "chain")
#: ``ciphers``: OpenSSL cipher strings for TLS 1.2 (None: Twisted's own list)
CIPHER_CHOICES: dict[str, str | None] = {
    # ECDHE/DHE key exchange, AEAD only (BCP 195 / RFC 9325 section 4.2); no anonymous suites
    "forward-secret": "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL:!DSS",
    "compatible": None,
}


_log = Logger(namespace="dimsekit.tls")


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
    crls: tuple[str, ...] = ()
    crl_check: str = "leaf"
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
    for key, kind in (("ca_certificates", "a PEM file"), ("crls", "a CRL file (PEM or DER)")):
        if key in values:
            value = values[key]
            files = [value] if isinstance(value, str) else value
            if not isinstance(files, list) or not files or any(not isinstance(f, str) or not f.strip() for f in files):
                raise ConfigError(f"{prefix}.{key}: give {kind} or a list of them, got {value!r}")
            kwargs[key] = tuple(f.strip() for f in files)
    if "crl_check" in values:
        if values["crl_check"] not in CRL_CHECKS:
            raise ConfigError(f"{prefix}.crl_check: use \"leaf\" or \"chain\", got {values['crl_check']!r}")
        if "crls" not in values:
            raise ConfigError(f"{prefix}.crl_check: needs crls (the revocation lists to check against)")
        kwargs["crl_check"] = values["crl_check"]
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
    if config.crls and not config.verify_peer:
        raise ConfigError(f"{prefix}.crls: needs verify_peer = true (without it no certificate is checked)")
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
        self._minimum = ssl.TLSVersion.TLSv1_3 if config.minimum_version == "1.3" else ssl.TLSVersion.TLSv1_2
        if config.ciphers not in CIPHER_CHOICES:
            raise TLSError(f"{prefix}.ciphers: use {' or '.join(map(repr, CIPHER_CHOICES))}, got {config.ciphers!r}")
        cipher_string = CIPHER_CHOICES[config.ciphers]
        #: extra CertificateOptions arguments: the minimum version, the cipher suites
        self._policy: dict[str, Any] = {"raiseMinimumTo": self._minimum}
        if cipher_string is not None:
            self._policy["acceptableCiphers"] = ssl.AcceptableCiphers.fromOpenSSLCipherString(cipher_string)
        if config.crl_check not in CRL_CHECKS:
            raise TLSError(f"{prefix}.crl_check: use \"leaf\" or \"chain\", got {config.crl_check!r}")
        if config.crls and not config.verify_peer:
            raise TLSError(f"{prefix}.crls: needs verify_peer = true (without it no certificate is checked)")
        #: our certificate and key, what peers' certificates are checked against: read again
        #: when their files change
        self._files = _TLSFiles(self)
        #: the node associates with TLS remotes, so its certificate must be good for client
        #: authentication: a renewed one that is not is said (set by the ApplicationEntity)
        self.acts_as_client = False
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
        if self._files.identity is None:
            return None
        from cryptography import x509
        from cryptography.x509.oid import ExtendedKeyUsageOID

        try:
            usage = self._files.identity.original.to_cryptography().extensions.get_extension_for_class(
                x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            return None  # no restriction
        if ExtendedKeyUsageOID.CLIENT_AUTH in usage or ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in usage:
            return None
        return (f"{self._prefix}.certificate: {self._where(self.config.certificate)} is not for client "
                "authentication (its Extended Key Usage lacks clientAuth): peers that check client "
                "certificates refuse the associations the node opens with it")

    # -- options ----------------------------------------------------------------------

    def _read_identity(self) -> tuple[Any, list[Any]]:
        """Our certificate (Twisted's ``PrivateCertificate``) and the chain after it; (None, []) without."""
        config, ssl = self.config, self._ssl
        if not config.has_identity:
            return None, []
        certs = self._certificates("certificate", config.certificate)
        key = ssl.KeyPair(self._private_key(config.private_key))
        try:
            identity = ssl.PrivateCertificate.fromCertificateAndKeyPair(ssl.Certificate(certs[0]), key)
        except Exception:
            # Caught here: every handshake would fail later, with a vaguer message.
            raise TLSError(f"{self._prefix}.private_key: {self._where(config.private_key)} is not the key of the "
                           f"certificate in {self._where(config.certificate)}") from None
        return identity, certs[1:]

    def _options(self, *, server: bool) -> Any:
        ssl = self._ssl
        kwargs: dict[str, Any] = dict(self._policy)
        kwargs.update(self._identity_options())
        if self.config.verify_peer:
            kwargs.update(trustRoot=self._files.trust)  # a certificate is then required, and checked
        elif server:
            kwargs.update(requireCertificate=False)
        return ssl.CertificateOptions(**kwargs)

    def _identity_options(self) -> dict[str, Any]:
        """Our key, certificate and its chain for Twisted's options, as ``cryptography`` objects:
        pyOpenSSL's ``X509`` and ``PKey`` in an SSL context are deprecated (warned at each
        context made), and once they go every TLS association would fail."""
        if self._files.identity is None:
            return {}  # (a chain without a certificate is refused: ValueError)
        return {"privateKey": self._files.identity.privateKey.original.to_cryptography_key(),
                "certificate": self._files.identity.original.to_cryptography(),
                "extraCertChain": [cert.to_cryptography() for cert in self._files.chain]}

    def server_options(self) -> Any:
        """What the node's TLS listener uses (our certificate; the client's checked if verify_peer)."""
        if self._files.identity is None:
            raise TLSError(f"{self._prefix}.certificate: a TLS listener needs certificate and private_key")
        return _Connections(lambda: self._options(server=True), self._files)

    def client_options(self, host: str) -> Any:
        """What an association we open to ``host`` uses."""
        if self.config.verify_hostname:
            extra: dict[str, Any] = dict(self._policy)
            extra.update(self._identity_options())

            def checking_host_name() -> Any:
                return self._ssl.optionsForClientTLS(
                    host, trustRoot=self._files.trust, extraCertificateOptions=extra,
                )

            return _Connections(checking_host_name, self._files)
        if self._client_options is None:
            self._client_options = _Connections(lambda: self._options(server=False), self._files)
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


def certificate_problem(transport: Any) -> str | None:
    """Why the peer's certificate fails verification, as OpenSSL says it ("certificate
    revoked", "unable to get certificate CRL"...): the certificate a TLS transport got,
    checked again against its context's trust store after a failed handshake; None if
    that finds nothing (or the transport is not Twisted's TLS on pyOpenSSL)."""
    from OpenSSL import crypto

    certificate, error = None, None
    try:
        connection = transport.getHandle()
        refused = _REFUSED.get(connection)
        if refused is not None:
            certificate, chain, error = refused
        else:  # a client's chain starts with the server's certificate (still there once refused)
            chain = list(connection.get_peer_cert_chain() or ())
            certificate = connection.get_peer_certificate() or (chain[0] if chain else None)
        if certificate is None:
            return None
        subject = certificate.to_cryptography().subject.rfc4514_string()
        try:
            crypto.X509StoreContext(connection.get_context().get_cert_store(), certificate, chain).verify_certificate()
        except crypto.X509StoreContextError as exc:
            code = exc.errors[0] if exc.errors else None
            if str(exc) and (error is None or code == error):
                return f"{exc}: {subject}"
        if error is None:
            return None
        return f"{_VERIFY_ERRORS.get(error, f'OpenSSL verification error {error}')}: {subject}"
    except Exception:  # no such transport or handle: nothing to add
        return None


#: what the alerts a peer ends a handshake with say about us (OpenSSL's words, then ours)
_PEER_ALERTS = (
    ("alert unknown ca", "the peer does not trust the CA of our certificate"),
    ("alert certificate required", "the peer wants a certificate of ours"),
    ("alert certificate revoked", "the peer's revocation list names our certificate"),
    ("alert certificate expired", "the peer finds our certificate, or its CA's revocation list, out of date"),
    ("alert unsupported certificate", "the peer refuses our certificate for this use: its Extended Key Usage"),
    ("alert protocol version", "no TLS version both ends accept: minimum_version"),
)


def describe_tls_failure(value: BaseException, transport: Any = None) -> str | None:
    """One line for a failed TLS handshake (an ``OpenSSL.SSL.Error``, or the host name
    check's ``service_identity`` error with ``verify_hostname``), None for anything else.
    With the TLS ``transport``, a refused certificate's line says why (see
    :func:`certificate_problem`)."""
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
    for alert, meaning in _PEER_ALERTS:
        if alert in text:
            text += f" ({meaning})"
            break
    if "certificate verify failed" in text and transport is not None:
        problem = certificate_problem(transport)
        if problem:
            text += f" ({problem})"
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


# -- certificate revocation lists ---------------------------------------------------------

def _load_crls(data: bytes) -> list[Any]:
    """The CRLs of a file's bytes: PEM (any number) or DER (one); ValueError if none."""
    from cryptography import x509

    if b"-----BEGIN X509 CRL-----" not in data:
        return [x509.load_der_x509_crl(data)]
    crls = []
    for block in data.split(b"-----BEGIN X509 CRL-----")[1:]:
        end = block.find(b"-----END X509 CRL-----")
        if end < 0:
            raise ValueError("a PEM block without its END line")
        crls.append(x509.load_pem_x509_crl(b"-----BEGIN X509 CRL-----" + block[: end] + b"-----END X509 CRL-----\n"))
    return crls


class _TLSFiles:
    """Our ``certificate`` and ``private_key``; ``ca_certificates`` and ``crls``, what peers'
    certificates are checked against: read again when one of their files changes.

    :attr:`generation` counts the readings that changed something: the
    connection creators make new SSL contexts when it moves.  A file that
    cannot be used at start up is a :class:`TLSError`; later, what is in force
    stays, and the log says why (once).
    """

    def __init__(self, context: TLSContext) -> None:
        self._context = context
        self.check_chain = context.config.crl_check == "chain"  # (chain: our certificate's CAs)
        self.generation = 0
        self._stamps = self._stat()
        (self.identity, self.chain), self.trust, self.crls, _ = self._read()  # TLSError: start-up stops
        self._refused: tuple[Any, ...] | None = None  # the stamps of files that could not be used (said once)

    def _names(self) -> tuple[str, ...]:
        config = self._context.config
        ours = (config.certificate, config.private_key) if config.has_identity else ()
        return (*ours, *config.ca_certificates, *config.crls)

    def _stat(self) -> tuple[Any, ...]:
        stamps = []
        for name in self._names():
            try:
                stat = self._context.config.path(name).stat()
                stamps.append((stat.st_mtime_ns, stat.st_size, stat.st_ino))
            except OSError:
                stamps.append(None)
        return tuple(stamps)

    def _read(self) -> tuple[tuple[Any, list[Any]], Any, list[Any], int]:
        """(our identity and chain, Twisted's trust root, the CRLs, how many CA certificates); no
        trust root and no CRLs without verify_peer (its files read all the same: a file that
        cannot be used is said)."""
        context, ssl = self._context, self._context._ssl
        identity = context._read_identity()
        trusted = [cert for name in context.config.ca_certificates
                   for cert in context._certificates("ca_certificates", name)]
        if not context.config.verify_peer:
            return identity, None, [], len(trusted)
        if not trusted:
            # from_section refuses this; a TLSConfig made in code must not get past either:
            # with no trust root Twisted's server options check no client certificate at
            # all, and its host name checking client options trust the system's CAs.
            raise TLSError(f"{context._prefix}.ca_certificates: verify_peer needs the CA certificates that peers' "
                           "certificates are checked against")
        trust = ssl.trustRootFromCertificates([ssl.Certificate(cert) for cert in trusted])
        return identity, trust, self._read_crls([cert.to_cryptography() for cert in trusted]), len(trusted)

    def _read_crls(self, trusted: list[Any]) -> list[Any]:
        import datetime

        crls = []
        prefix = self._context._prefix
        now = datetime.datetime.now(datetime.UTC)
        for name in self._context.config.crls:
            where = self._context._where(name)
            data = self._context._read("crls", name)
            try:
                found = _load_crls(data)
            except ValueError as exc:
                raise TLSError(f"{prefix}.crls: {where} holds no certificate revocation list (PEM or DER): "
                               f"{exc}") from None
            for crl in found:
                issuer = crl.issuer.rfc4514_string()
                signer = next((cert for cert in trusted if cert.subject == crl.issuer), None)
                if signer is not None and not crl.is_signature_valid(signer.public_key()):
                    raise TLSError(f"{prefix}.crls: {where}: the CRL of {issuer} is not signed by the CA of that "
                                   "name in ca_certificates")
                if crl.next_update_utc is not None and crl.next_update_utc < now:
                    _log.error("{prefix}.crls: {where}: the CRL of {issuer} was due to be replaced at {due}: "
                               "every certificate that CA issued is refused (\"CRL has expired\") until a newer "
                               "CRL is in its place", prefix=prefix, where=where, issuer=issuer,
                               due=crl.next_update_utc.isoformat())
            crls.extend(found)
        return crls

    def refresh(self) -> int:
        """Read the files again if one changed; the generation of what is in force."""
        stamps = self._stat()
        if stamps == self._stamps or stamps == self._refused:
            return self.generation
        try:
            (identity, chain), trust, crls, count = self._read()
        except TLSError as exc:
            self._refused = stamps
            _log.error("{error}; the certificates and revocation lists read before stay in force", error=exc)
            return self.generation
        self._stamps, self._refused = stamps, None
        renewed = identity is not None and (self.identity is None or identity.dump() != self.identity.dump())
        self.identity, self.chain, self.trust, self.crls = identity, chain, trust, crls
        self.generation += 1
        _log.info("{prefix}: its files read again ({n} CA certificates, {m} revocation lists{ours}): for the "
                  "connections from now on", prefix=self._context._prefix, n=count, m=len(crls),
                  ours=", our certificate" if identity is not None else "")
        if renewed and self._context.acts_as_client:
            problem = self._context.client_auth_problem()
            if problem is not None:  # as start-up says it (the ApplicationEntity)
                _log.warn("{problem}", problem=problem)
        return self.generation

    def install(self, store: Any) -> None:
        """Check the certificates a context verifies against the revocation lists, if any (its ``X509Store``)."""
        if not self.crls:
            return
        from OpenSSL.crypto import X509StoreFlags

        for crl in self.crls:
            store.add_crl(crl)
        store.set_flags(X509StoreFlags.CRL_CHECK | (X509StoreFlags.CRL_CHECK_ALL if self.check_chain else 0))


#: connection -> (the certificate its verification refused first, the peer's chain then, OpenSSL's error)
_REFUSED: weakref.WeakKeyDictionary[Any, tuple[Any, list[Any], int]] = weakref.WeakKeyDictionary()
#: OpenSSL's words for the verification errors (``X509_V_ERR_*``) a peer's certificate most often
#: meets, for when checking it again on its own cannot reproduce the error (an intermediate
#: CA the handshake had is not in the store)
_VERIFY_ERRORS = {
    2: "unable to get issuer certificate",
    3: "unable to get certificate CRL",
    7: "certificate signature failure",
    8: "CRL signature failure",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    11: "CRL is not yet valid",
    12: "CRL has expired",
    18: "self-signed certificate",
    19: "self-signed certificate in certificate chain",
    20: "unable to get local issuer certificate",
    23: "certificate revoked",
    26: "unsupported certificate purpose",
}


def _note_refusal(connection: Any, certificate: Any, error: int, depth: int, ok: int) -> bool:
    """The verify callback of our contexts: OpenSSL's verdict unchanged; the first
    certificate it refuses kept, for :func:`certificate_problem` to say why."""
    if not ok and connection not in _REFUSED:
        try:
            _REFUSED[connection] = (certificate, list(connection.get_peer_cert_chain() or ()), error)
        except Exception:  # pragma: no cover - never fail a verification over a note
            pass
    return bool(ok)


@implementer(IOpenSSLServerConnectionCreator, IOpenSSLClientConnectionCreator)
class _Connections:
    """Twisted's TLS options, with our touches on their SSL context before any handshake:
    the revocation lists in its store (if any), the refused certificates noted.

    Every connection first looks whether the files of ``[tls]`` changed (ours,
    ``ca_certificates``, ``crls``): then it gets new options from ``make`` (a new
    context: one in use is never changed).
    """

    def __init__(self, make: Any, files: _TLSFiles) -> None:
        self._make = make
        self._files = files
        self._options: Any = None
        self._generation = -1
        self._prepared: Any = None  # the context touched

    def _current(self) -> Any:
        generation = self._files.refresh()
        if self._options is None or generation != self._generation:
            options = self._make()
            get_context = getattr(options, "getContext", None)  # not Twisted's host-name-checking options
            if get_context is not None:
                # Touched before its first connection: pyOpenSSL refuses to change a context after.
                self._touch(get_context(), note=True)
            self._options, self._generation = options, generation
        return self._options

    def _touch(self, context: Any, *, note: bool) -> None:
        self._files.install(context.get_cert_store())
        mode = context.get_verify_mode()
        if note and mode:
            context.set_verify(mode, _note_refusal)
        self._prepared = context

    def _prepare(self, connection: Any) -> Any:
        context = connection.get_context()
        if context is not self._prepared:
            # The host name check's options make their context with the first connection, and
            # set their own verify callback on each: the lists go into its store (a store can
            # change), and that callback stays.
            self._touch(context, note=False)
        return connection

    def serverConnectionForTLS(self, tlsProtocol: Any) -> Any:  # noqa: N802 - Twisted's interface
        return self._prepare(self._current().serverConnectionForTLS(tlsProtocol))

    def clientConnectionForTLS(self, tlsProtocol: Any) -> Any:  # noqa: N802 - Twisted's interface
        return self._prepare(self._current().clientConnectionForTLS(tlsProtocol))
