"""TLS associations between dimsekit AEs (PS3.15 B.1): mutual authentication with the
``[tls]`` settings, and the handshakes that must fail -- an untrusted certificate either
way, no client certificate when one is required.  With Python's ssl as the other peer:
minimum_version both ways, certificate chains, expired certificates, what verify_peer =
false skips.  The settings: files that cannot be used, encrypted keys (no prompt)."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import struct
import sys
import tempfile
import warnings
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

from OpenSSL import SSL
from twisted.internet import defer, protocol, reactor, threads
from twisted.logger import globalLogPublisher

from dimsekit.config import ConfigError, from_mapping
from dimsekit.errors import (
    AssociationAborted,
    AssociationRejected,
    ConnectionLost,
    LocalProtocolError,
)
from dimsekit.registry import UNCOMPRESSED_TRANSFER_SYNTAXES
from dimsekit.tls import TLSConfig, TLSContext, TLSError
from dimsekit.uids import VERIFICATION
from dimsekit.ul.negotiation import build_associate_rq
from tests.dimse_e2e.support import LoopbackTestCase, Services, wait_until, within
from tests.terminal import run_on_a_terminal
from tests.tlscerts import KEY_PASSWORD, make_tls_files

_CLOSED_EARLY = "TLS handshake failed: the connection closed before the handshake was done"


def temporary_directory(test) -> Path:
    """A directory removed after the test (trial's mktemp() is relative to the working
    directory: it left a tests.dimse_e2e.test_tls/ tree in the checkout)."""
    path = Path(tempfile.mkdtemp(prefix="dimsekit-tls-"))
    test.addCleanup(shutil.rmtree, path, True)
    return path


def tls_config(ae_title: str, files, *, cert: Path | None, key: Path | None, trust: list[Path],
               limits: dict | None = None, **extra):
    section: dict = {"ca_certificates": [str(p) for p in trust], **extra}
    if cert is not None:
        section.update(certificate=str(cert), private_key=str(key))
    return from_mapping({"node": {"ae_title": ae_title},
                         "limits": {"acse_timeout": 5.0, "dimse_timeout": 5.0, **(limits or {})}, "tls": section})


class TLSTestCase(LoopbackTestCase):
    """Fresh certificates; an AE serving TLS, clients with one certificate or another."""

    def setUp(self) -> None:
        super().setUp()
        self.files = make_tls_files(temporary_directory(self))

    async def serve_tls(self, *, cert: Path | None = None, key: Path | None = None, **extra):
        f = self.files
        config = tls_config("SCP", f, cert=cert or f.server_cert, key=key or f.server_key, trust=[f.ca], **extra)
        ae = self.make_ae("SCP", Services(), config=config)
        port = await ae.listen(0, tls=True)
        self.addCleanup(port.stopListening)
        return ae, port.getHost().port

    def client(self, *, cert="client", trust=None, limits=None, **extra):
        f = self.files
        paths = {"client": (f.client_cert, f.client_key), "rogue": (f.rogue_cert, f.rogue_key), None: (None, None),
                 "chained": (f.chained_client_cert, f.chained_client_key),
                 "chained-leaf": (f.chained_client_leaf, f.chained_client_key),
                 "other": (f.other_client_cert, f.other_client_key),
                 "expired": (f.expired_client_cert, f.expired_client_key)}
        c, k = paths[cert]
        config = tls_config("SCU", f, cert=c, key=k, trust=trust or [f.ca], limits=limits, **extra)
        return self.make_ae("SCU", config=config)

    def association_ends(self) -> list[tuple[str, str]]:
        """(side, how it ended) of every association line logged from now on."""
        ends: list[tuple[str, str]] = []

        def observe(event: dict) -> None:
            if "ended" in event and str(event.get("text", "")).startswith("association "):
                ends.append((event["text"].split()[1], event["ended"]))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        return ends


class TLSAssociationTests(TLSTestCase):
    async def test_echo_over_tls_with_both_certificates_checked(self):
        server, port = await self.serve_tls()
        association = await self.connect(port, [VERIFICATION], ae=self.client(), tls=True)
        status = await within(association.echo())
        self.assertEqual(status, 0x0000)
        transport = association.protocol.transport
        # the peer's certificate as the TLS layer saw it: our CA's client certificate
        self.assertIn("dimsekit test CA", transport.getPeerCertificate().to_cryptography().issuer.rfc4514_string())
        await within(association.release())

    async def test_hostname_checked_when_asked(self):
        server, port = await self.serve_tls()
        association = await self.connect(port, [VERIFICATION], ae=self.client(verify_hostname=True), tls=True)
        await within(association.release())

    async def test_hostname_checked_without_a_client_certificate(self):
        server, port = await self.serve_tls(verify_peer=False)
        association = await self.connect(port, [VERIFICATION], ae=self.client(cert=None, verify_hostname=True),
                                         tls=True)
        await within(association.release())

    async def test_a_server_certificate_for_another_host_is_refused_when_hostnames_are_checked(self):
        _, port = await self.serve_tls(cert=self.files.elsewhere_cert, key=self.files.elsewhere_key)
        with self.assertRaises(ConnectionLost) as caught:
            await self.connect(port, [VERIFICATION], ae=self.client(verify_hostname=True), tls=True)
        self.assertEqual(str(caught.exception),
                         "TLS handshake failed: the peer's certificate is not for 127.0.0.1 (host name check)")
        association = await self.connect(port, [VERIFICATION], ae=self.client(), tls=True)  # CA-signed: enough
        await within(association.release())

    async def test_a_server_certificate_we_do_not_trust_fails_the_association(self):
        server, port = await self.serve_tls(cert=self.files.rogue_cert, key=self.files.rogue_key)
        with self.assertRaises(ConnectionLost) as caught:
            await self.connect(port, [VERIFICATION], ae=self.client(), tls=True)
        self.assertIn("TLS handshake failed: certificate verify failed", str(caught.exception))
        self.assertEqual(server.active, set())

    async def test_a_client_without_a_certificate_is_refused_when_one_is_required(self):
        server, port = await self.serve_tls()
        with self.assertRaises(AssociationAborted) as caught:
            await self.connect(port, [VERIFICATION], ae=self.client(cert=None), tls=True)
        self.assertIn("TLS handshake failed: tlsv13 alert certificate required", str(caught.exception))
        self.assertEqual(server.active, set())

    async def test_a_client_certificate_we_do_not_trust_is_refused(self):
        server, port = await self.serve_tls()
        with self.assertRaises(AssociationAborted) as caught:
            await self.connect(port, [VERIFICATION], ae=self.client(cert="rogue"), tls=True)
        self.assertIn("TLS handshake failed: tlsv1 alert unknown ca", str(caught.exception))
        self.assertEqual(server.active, set())

    async def test_anonymous_client_accepted_when_the_server_does_not_verify(self):
        server, port = await self.serve_tls(verify_peer=False)
        association = await self.connect(port, [VERIFICATION], ae=self.client(cert=None), tls=True)
        self.assertEqual(await within(association.echo()), 0)
        await within(association.release())

    async def test_a_server_that_closes_before_the_handshake_is_a_tls_failure(self):
        # A [[remote]] with tls = true that speaks no TLS (DCMTK storescp closes on the
        # ClientHello): the association's error and log line say the handshake failed,
        # not just "transport connection closed by the peer".
        class Closer(protocol.Protocol):
            def dataReceived(self, data: bytes) -> None:
                self.transport.loseConnection()

        listening = reactor.listenTCP(0, protocol.Factory.forProtocol(Closer), interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        ends = self.association_ends()
        with self.assertRaises(ConnectionLost) as caught:
            await self.connect(listening.getHost().port, [VERIFICATION], ae=self.client(), tls=True)
        self.assertIn(_CLOSED_EARLY, str(caught.exception))
        await wait_until(lambda: bool(ends), what="the association's line")
        [(side, ended)] = ends
        self.assertEqual(side, "requestor")
        self.assertIn(_CLOSED_EARLY, ended)

    async def test_a_client_that_closes_before_the_handshake_is_a_tls_failure(self):
        server, port = await self.serve_tls()
        ends = self.association_ends()
        connected = await protocol.ClientCreator(reactor, protocol.Protocol).connectTCP("127.0.0.1", port)
        connected.transport.loseConnection()
        await wait_until(lambda: bool(ends), what="the association's line")
        [(side, ended)] = ends
        self.assertEqual(side, "acceptor")
        self.assertIn(_CLOSED_EARLY, ended)

    async def test_a_server_that_never_answers_the_handshake_is_let_go_after_the_acse_timeout(self):
        # The A-ASSOCIATE-RQ waits in the TLS transport for the handshake; a close then
        # waited for it too -- for ever, with a peer that never answers: the association
        # was given up (ACSE timeout, then the ARTIM timeout for the peer to close), but
        # its connection stayed open.
        closed = defer.Deferred()

        class Silent(protocol.Protocol):
            def connectionLost(self, reason=None) -> None:
                closed.callback(None)

        listening = reactor.listenTCP(0, protocol.Factory.forProtocol(Silent), interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        ends = self.association_ends()
        client = self.client(limits={"acse_timeout": 0.3, "artim_timeout": 0.3})
        with self.assertRaises(AssociationAborted) as caught:
            await self.connect(listening.getHost().port, [VERIFICATION], ae=client, tls=True)
        self.assertIn("no A-ASSOCIATE-AC/RJ from the peer", str(caught.exception))
        await within(closed, 3.0)  # the connection closed
        await wait_until(lambda: bool(ends), what="the association's line")
        [(side, ended)] = ends
        self.assertEqual(side, "requestor")
        self.assertIn("no A-ASSOCIATE-AC/RJ from the peer", ended)

    async def test_a_close_after_the_handshake_is_not_a_tls_failure(self):
        server, port = await self.serve_tls()
        ends = self.association_ends()
        association = await self.connect(port, [VERIFICATION], ae=self.client(), tls=True)
        association.protocol.transport.abortConnection()  # no A-RELEASE, no A-ABORT: just gone
        await wait_until(lambda: len(ends) == 2, what="both associations' lines")
        for side, ended in ends:
            self.assertNotIn("TLS", ended, side)

    async def test_tls_without_settings_is_a_clear_error(self):
        ae = self.make_ae("SCU")
        with self.assertRaises(LocalProtocolError) as caught:
            await ae.associate("127.0.0.1", 1, contexts=[VERIFICATION], tls=True)
        self.assertIn("no [tls] settings", str(caught.exception))


# -- peers that are not dimsekit: Python's ssl module, in a thread ------------------------------------------

#: what Python's ssl calls the TLS versions (TLSv1 and TLSv1_1 are deprecated names: warnings silenced where used)
_PY_VERSIONS = {"1.0": "TLSv1", "1.1": "TLSv1_1", "1.2": "TLSv1_2", "1.3": "TLSv1_3"}

#: an A-ASSOCIATE-RJ (PS3.8 Table 9-21): rejected-permanent, by the service user, no reason given
_ASSOCIATE_RJ = bytes([0x03, 0, 0, 0, 0, 4, 0, 1, 1, 1])


def _limit(context: ssl.SSLContext, version: str) -> None:
    """Only ``version`` (a key of _PY_VERSIONS); TLS 1.0/1.1 need OpenSSL's security level 0,
    or OpenSSL 3 does not even offer them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        value = getattr(ssl.TLSVersion, _PY_VERSIONS[version])
        context.minimum_version = context.maximum_version = value
    if version in ("1.0", "1.1"):
        context.set_ciphers("ALL:@SECLEVEL=0")


def python_client(port: int, version: str, files, *, cert: Path | None = None, key: Path | None = None,
                  trust: Path | None = None, called: str = "SCP", ciphers: str | None = None) -> tuple[str, str]:
    """A TLS client limited to ``version`` with our client certificate (or ``cert``), checking
    the server's against ``trust`` (the test CA): after the handshake it sends an
    A-ASSOCIATE-RQ and reads the answer's PDU type.  (TLS version, "AC"/"RJ"/...), or
    ("refused", OpenSSL's reason).  Blocking, bounded (5 s per socket call): run it in a thread."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(str(trust or files.ca))
    context.load_cert_chain(str(cert or files.client_cert), str(key or files.client_key))
    _limit(context, version)
    if ciphers is not None:
        context.set_ciphers(ciphers)
    rq = build_associate_rq(called_ae_title=called, calling_ae_title="PYSSL",
                            contexts=[(VERIFICATION, UNCOMPRESSED_TRANSFER_SYNTAXES)]).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        try:
            with context.wrap_socket(raw) as tls:
                tls.sendall(rq)
                answer = tls.recv(1)
                return tls.version() or "", {b"\x02": "AC", b"\x03": "RJ", b"\x07": "ABORT"}.get(answer, repr(answer))
        except (ssl.SSLError, ConnectionError) as exc:
            return "refused", str(getattr(exc, "reason", None) or exc)


class PythonServer:
    """A TLS server in a thread for one connection, limited to ``version``, with the test
    server certificate (or ``cert``): it wants a client certificate of ``trust`` (the test
    CA) unless ``trust`` is False, reads the A-ASSOCIATE-RQ and answers an A-ASSOCIATE-RJ.
    ``result`` fires with (TLS version, PDU type received) or ("refused", reason)."""

    def __init__(self, files, version: str, *, cert: Path | None = None, key: Path | None = None,
                 trust: Path | bool | None = None, ciphers: str | None = None) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert or files.server_cert), str(key or files.server_key))
        if trust is not False:
            context.load_verify_locations(str(trust or files.ca))
            context.verify_mode = ssl.CERT_REQUIRED
        _limit(context, version)
        if ciphers is not None:
            context.set_ciphers(ciphers)
        #: the server name the client sent (SNI), None if none
        self.server_name: str | None = None
        context.sni_callback = self._server_name
        self._listening = socket.create_server(("127.0.0.1", 0))
        self._listening.settimeout(5)
        self.port = self._listening.getsockname()[1]
        self.result = threads.deferToThread(self._serve, context)

    def _server_name(self, tls: ssl.SSLObject, name: str | None, context: ssl.SSLContext) -> None:
        self.server_name = name

    def _serve(self, context: ssl.SSLContext) -> tuple[str, str]:
        try:
            raw, _ = self._listening.accept()
        finally:
            self._listening.close()
        raw.settimeout(5)
        with raw:
            try:
                with context.wrap_socket(raw, server_side=True) as tls:
                    pdu = tls.recv(1)
                    tls.sendall(_ASSOCIATE_RJ)
                    return tls.version() or "", {b"\x01": "RQ"}.get(pdu, repr(pdu))
            except (ssl.SSLError, ConnectionError) as exc:
                return "refused", str(getattr(exc, "reason", None) or exc)


def renegotiating_client(port: int, files) -> tuple[str, str]:
    """A TLS 1.2 client (pyOpenSSL) that asks to renegotiate once connected: (version, what
    became of it).  Blocking, bounded (5 s socket timeouts): run it in a thread."""
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_max_proto_version(SSL.TLS1_2_VERSION)
    context.use_certificate_file(str(files.client_cert))
    context.use_privatekey_file(str(files.client_key))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.settimeout(None)  # pyOpenSSL wants a blocking socket: bounded by the kernel's timeouts instead
        for option in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO):
            raw.setsockopt(socket.SOL_SOCKET, option, struct.pack("ll", 5, 0))
        connection = SSL.Connection(context, raw)
        connection.set_connect_state()
        connection.do_handshake()
        version = connection.get_protocol_version_name()
        try:
            connection.renegotiate()
            connection.do_handshake()
            connection.send(b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00")  # an A-RELEASE-RQ
            connection.recv(1)
        except SSL.Error as exc:
            reasons = [entry[-1] for entry in exc.args[0]] if exc.args and isinstance(exc.args[0], list) else [exc]
            return version, "refused: " + "; ".join(map(str, reasons))
        return version, f"renegotiated ({connection.total_renegotiations()})"


def excluded_versions(transport) -> set[str]:
    """The versions an established TLS connection's context would refuse (Twisted turns
    minimum_version into OpenSSL's OP_NO_* options)."""
    options = transport.getHandle().set_options(0)  # adds nothing, returns what is set
    names = {"SSLv3": SSL.OP_NO_SSLv3, "1.0": SSL.OP_NO_TLSv1, "1.1": SSL.OP_NO_TLSv1_1, "1.2": SSL.OP_NO_TLSv1_2,
             "1.3": SSL.OP_NO_TLSv1_3}
    return {name for name, flag in names.items() if options & flag}


class TLSPolicyTests(TLSTestCase):
    """minimum_version, certificate chains, what is checked and what verify_peer = false skips."""

    async def refused(self, port: int, **kwargs) -> str:
        """The one line a client's association failed with (it must fail)."""
        with self.assertRaises((ConnectionLost, AssociationAborted)) as caught:
            await self.connect(port, [VERIFICATION], tls=True, **kwargs)
        return str(caught.exception)

    # -- minimum_version ------------------------------------------------------------------

    async def test_minimum_version_on_the_tls_listener(self):
        for minimum, accepted in (("1.2", ("1.2", "1.3")), ("1.3", ("1.3",))):
            server, port = await self.serve_tls(minimum_version=minimum)
            for version in ("1.0", "1.1", "1.2", "1.3"):
                got = await threads.deferToThread(python_client, port, version, self.files)
                if version in accepted:
                    self.assertEqual(got, (f"TLSv{version}", "AC"), (minimum, version))
                else:
                    self.assertEqual(got[0], "refused", (minimum, version, got))
                    self.assertIn("PROTOCOL_VERSION", got[1].upper(), (minimum, version, got))
        # At OpenSSL 3's default security level, OpenSSL itself refuses TLS 1.0/1.1 whatever
        # Twisted is told: that they are refused says little about minimum_version.  So
        # (below) also what the connection's own options exclude.

    async def test_minimum_version_excludes_the_older_versions_on_both_ends(self):
        for minimum, excluded in (("1.2", {"SSLv3", "1.0", "1.1"}), ("1.3", {"SSLv3", "1.0", "1.1", "1.2"})):
            for verify_hostname in (False, True):  # two ways of making the client's options
                server, port = await self.serve_tls(minimum_version=minimum)
                client = self.client(minimum_version=minimum, verify_hostname=verify_hostname)
                association = await self.connect(port, [VERIFICATION], ae=client, tls=True)
                [accepted] = server.active
                for side, transport in (("client", association.protocol.transport),
                                        ("server", accepted.protocol.transport)):
                    self.assertEqual(excluded_versions(transport), excluded, (minimum, verify_hostname, side))
                await within(association.release())

    async def test_minimum_version_when_we_associate(self):
        for minimum, accepted in (("1.2", ("1.2", "1.3")), ("1.3", ("1.3",))):
            for verify_hostname in (False, True):
                for version in ("1.0", "1.1", "1.2", "1.3"):
                    where = (minimum, verify_hostname, version)
                    server = PythonServer(self.files, version)
                    client = self.client(minimum_version=minimum, verify_hostname=verify_hostname)
                    if version in accepted:
                        with self.assertRaises(AssociationRejected, msg=where):  # the RJ it answers
                            await self.connect(server.port, [VERIFICATION], ae=client, tls=True)
                        self.assertEqual(await within(server.result), (f"TLSv{version}", "RQ"), where)
                    else:
                        line = await self.refused(server.port, ae=client)
                        self.assertIn("TLS handshake failed", line, where)
                        self.assertIn("protocol version", line, where)
                        self.assertEqual((await within(server.result))[0], "refused", where)

    # -- ciphers ------------------------------------------------------------------------

    async def test_rsa_key_transport_is_refused_on_the_listener_unless_compatible(self):
        static_rsa = "AES128-SHA:AES256-GCM-SHA384"  # TLS_RSA_WITH_...: no forward secrecy
        rsa = {"cert": self.files.rsa_server_cert, "key": self.files.rsa_server_key}  # (RSA key transport needs one)
        _, port = await self.serve_tls(**rsa)
        refused = await threads.deferToThread(python_client, port, "1.2", self.files, ciphers=static_rsa)
        self.assertEqual(refused[0], "refused", refused)
        self.assertIn("HANDSHAKE_FAILURE", refused[1].upper().replace(" ", "_"), refused)
        for suite in ("ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-RSA-CHACHA20-POLY1305"):
            got = await threads.deferToThread(python_client, port, "1.2", self.files, ciphers=suite)
            self.assertEqual(got, ("TLSv1.2", "AC"), suite)
        self.assertEqual(await threads.deferToThread(python_client, port, "1.3", self.files), ("TLSv1.3", "AC"))
        _, port = await self.serve_tls(ciphers="compatible", **rsa)  # an older device's AES profile
        got = await threads.deferToThread(python_client, port, "1.2", self.files, ciphers=static_rsa)
        self.assertEqual(got, ("TLSv1.2", "AC"))

    async def test_rsa_key_transport_is_refused_when_we_associate_unless_compatible(self):
        for verify_hostname in (False, True):  # two ways of making the client's options
            rsa = {"cert": self.files.rsa_server_cert, "key": self.files.rsa_server_key}
            server = PythonServer(self.files, "1.2", ciphers="AES128-SHA", **rsa)
            line = await self.refused(server.port, ae=self.client(verify_hostname=verify_hostname))
            self.assertIn("TLS handshake failed", line, verify_hostname)
            self.assertEqual((await within(server.result))[0], "refused", verify_hostname)
            server = PythonServer(self.files, "1.2", ciphers="AES128-SHA", **rsa)
            client = self.client(verify_hostname=verify_hostname, ciphers="compatible")
            with self.assertRaises(AssociationRejected):  # the RJ it answers: the handshake went through
                await self.connect(server.port, [VERIFICATION], ae=client, tls=True)
            self.assertEqual(await within(server.result), ("TLSv1.2", "RQ"), verify_hostname)

    async def test_no_compression_no_tickets_no_client_renegotiation(self):
        # Twisted's defaults and OpenSSL 3's, relied upon: TLS compression (CRIME) and
        # session tickets off on both ends; a client asking to renegotiate (TLS 1.2) refused.
        server, port = await self.serve_tls()
        association = await self.connect(port, [VERIFICATION], ae=self.client(), tls=True)
        [accepted] = server.active
        for transport in (association.protocol.transport, accepted.protocol.transport):
            options = transport.getHandle().set_options(0)
            self.assertTrue(options & SSL.OP_NO_COMPRESSION)
            self.assertTrue(options & SSL.OP_NO_TICKET)
        await within(association.release())
        self.assertEqual(await threads.deferToThread(renegotiating_client, port, self.files),
                         ("TLSv1.2", "refused: no renegotiation"))

    async def test_no_server_name_indication_with_an_address(self):
        # RFC 6066 3: a literal address is no host name to send; with verify_hostname a host
        # name is sent (without it, none: the options then know no host).
        for host, verify_hostname, sent in (("127.0.0.1", True, None), ("127.0.0.1", False, None),
                                            ("localhost", True, "localhost")):
            server = PythonServer(self.files, "1.3")
            client = self.client(verify_hostname=verify_hostname)
            with self.assertRaises(AssociationRejected):
                await within(client.associate(host, server.port, called="SCP", contexts=[VERIFICATION], tls=True))
            self.assertEqual(await within(server.result), ("TLSv1.3", "RQ"))
            self.assertEqual(server.server_name, sent, (host, verify_hostname))

    async def test_a_client_that_never_starts_the_handshake_is_let_go_after_the_artim_timeout(self):
        # Connections that never say a word (nor a ClientHello) must not pile up on the TLS port.
        server, port = await self.serve_tls(limits={"artim_timeout": 0.3})
        closed = defer.Deferred()

        class Mute(protocol.Protocol):
            def connectionLost(self, reason=None) -> None:
                closed.callback(None)

        await protocol.ClientCreator(reactor, Mute).connectTCP("127.0.0.1", port)
        await within(closed, 3.0)

    # -- certificate chains -----------------------------------------------------------------

    async def test_the_server_sends_the_intermediate_of_its_certificate_file(self):
        f = self.files
        server, port = await self.serve_tls(cert=f.chained_server_cert, key=f.chained_server_key)
        for verify_hostname in (False, True):  # the peer trusts the root CA only
            association = await self.connect(port, [VERIFICATION], ae=self.client(verify_hostname=verify_hostname),
                                             tls=True)
            await within(association.release())
        got = await threads.deferToThread(python_client, port, "1.3", f)
        self.assertEqual(got, ("TLSv1.3", "AC"))
        # without the intermediate in the file the same leaf does not chain to the root
        server, port = await self.serve_tls(cert=f.chained_server_leaf, key=f.chained_server_key)
        line = await self.refused(port, ae=self.client())
        self.assertIn("TLS handshake failed: certificate verify failed", line)

    async def test_the_client_sends_the_intermediate_of_its_certificate_file(self):
        f = self.files
        server, port = await self.serve_tls()  # trusts the root CA only
        for verify_hostname in (False, True):
            association = await self.connect(port, [VERIFICATION], tls=True,
                                             ae=self.client(cert="chained", verify_hostname=verify_hostname))
            await within(association.release())
        for version in ("1.2", "1.3"):  # a server that is not dimsekit, trusting the root only
            python = PythonServer(f, version)
            with self.assertRaises(AssociationRejected):
                await self.connect(python.port, [VERIFICATION], ae=self.client(cert="chained"), tls=True)
            self.assertEqual(await within(python.result), (f"TLSv{version}", "RQ"))
        line = await self.refused(port, ae=self.client(cert="chained-leaf"))
        self.assertIn("TLS handshake failed", line)
        self.assertIn("unknown ca", line)
        self.assertEqual(server.active, set())

    # -- what is checked ----------------------------------------------------------------------

    async def test_verify_peer_false_on_the_client_checks_nothing(self):
        f = self.files
        unchecked = from_mapping({"node": {"ae_title": "SCU"}, "limits": {"acse_timeout": 5.0},
                                  "tls": {"certificate": str(f.client_cert), "private_key": str(f.client_key),
                                          "verify_peer": False}})  # and no ca_certificates at all
        for cert, key, checked, refusal in (
            (f.rogue_cert, f.rogue_key, {}, "certificate verify failed"),            # self-signed
            (f.other_server_cert, f.other_server_key, {}, "certificate verify failed"),  # a CA we do not trust
            (f.expired_server_cert, f.expired_server_key, {}, "certificate verify failed"),
            (f.elsewhere_cert, f.elsewhere_key, {"verify_hostname": True}, "the peer's certificate is not for"),
        ):
            server, port = await self.serve_tls(cert=cert, key=key)
            association = await self.connect(port, [VERIFICATION], ae=self.make_ae("SCU", config=unchecked), tls=True)
            self.assertEqual(await within(association.echo()), 0)
            await within(association.release())
            # ... which verify_peer = true (the default) refuses
            line = await self.refused(port, ae=self.client(**checked))
            self.assertIn(f"TLS handshake failed: {refusal}", line, cert.name)

    async def test_a_client_certificate_of_a_ca_we_do_not_trust_is_refused(self):
        server, port = await self.serve_tls()
        line = await self.refused(port, ae=self.client(cert="other"))
        self.assertIn("TLS handshake failed: tlsv1 alert unknown ca", line)
        self.assertEqual(server.active, set())
        # trusted once its CA is
        server, port = await self.serve_tls(ca_certificates=[str(self.files.ca), str(self.files.other_ca)])
        association = await self.connect(port, [VERIFICATION], ae=self.client(cert="other"), tls=True)
        await within(association.release())

    async def test_an_expired_client_certificate_is_refused(self):
        server, port = await self.serve_tls()
        ends = self.association_ends()
        line = await self.refused(port, ae=self.client(cert="expired"))
        self.assertIn("TLS handshake failed: tls alert certificate expired", line)
        self.assertEqual(server.active, set())
        await wait_until(lambda: any(side == "acceptor" for side, _ in ends), what="the acceptor's line")
        [ended] = [ended for side, ended in ends if side == "acceptor"]
        self.assertIn("TLS handshake failed: certificate verify failed", ended)

    async def test_an_expired_server_certificate_is_refused(self):
        f = self.files
        server, port = await self.serve_tls(cert=f.expired_server_cert, key=f.expired_server_key)
        for verify_hostname in (False, True):
            line = await self.refused(port, ae=self.client(verify_hostname=verify_hostname))
            self.assertIn("TLS handshake failed: certificate verify failed", line)
        self.assertEqual(server.active, set())

    async def test_what_ca_certificates_must_hold(self):
        """A chain ends at a root CA or a self-signed certificate of ca_certificates (the
        docs' "root CAs, or peers' self-signed certificates"): a CA-issued certificate of
        the peer, or an intermediate, alone is not trusted (OpenSSL takes no partial chain)."""
        f = self.files
        for cert, key, trust, trusted in (
            (f.rogue_cert, f.rogue_key, f.rogue_cert, True),  # the peer's own, self-signed
            (f.server_cert, f.server_key, f.ca, True),
            (f.server_cert, f.server_key, f.server_cert, False),  # the peer's own, of a CA
            (f.chained_server_cert, f.chained_server_key, f.ca, True),
            (f.chained_server_cert, f.chained_server_key, f.intermediate, False),
        ):
            server, port = await self.serve_tls(cert=cert, key=key)
            client = self.client(trust=[trust])
            if trusted:
                association = await self.connect(port, [VERIFICATION], ae=client, tls=True)
                await within(association.release())
            else:
                line = await self.refused(port, ae=client)
                self.assertIn("TLS handshake failed: certificate verify failed", line, (cert.name, trust.name))

    async def test_the_test_certificates_are_what_they_say(self):
        # the controls of the tests above: the expired ones are otherwise good (our CA,
        # for 127.0.0.1), and Python's ssl refuses them too, saying why
        f = self.files
        server, port = await self.serve_tls(cert=f.expired_server_cert, key=f.expired_server_key)
        got = await threads.deferToThread(python_client, port, "1.3", f)
        self.assertEqual(got, ("refused", "CERTIFICATE_VERIFY_FAILED"))
        server, port = await self.serve_tls(cert=f.other_server_cert, key=f.other_server_key)
        got = await threads.deferToThread(python_client, port, "1.3", f, trust=f.other_ca)
        self.assertEqual(got, ("TLSv1.3", "AC"))


class TLSSettingsTests(LoopbackTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.files = make_tls_files(temporary_directory(self))

    def test_a_missing_file_names_the_key_and_the_path(self):
        f = self.files
        config = tls_config("SCP", f, cert=f.server_cert, key=f.directory / "nope.key", trust=[f.ca])
        with self.assertRaises(TLSError) as caught:
            TLSContext(config.tls)
        self.assertIn("tls.private_key: cannot read", str(caught.exception))
        self.assertIn("nope.key", str(caught.exception))

    def test_a_key_of_another_certificate_is_refused_before_anything_listens(self):
        f = self.files
        config = tls_config("SCP", f, cert=f.server_cert, key=f.client_key, trust=[f.ca])
        with self.assertRaises(TLSError) as caught:
            TLSContext(config.tls)
        self.assertIn("is not the key of the certificate", str(caught.exception))

    def test_a_file_without_certificates(self):
        f = self.files
        config = tls_config("SCP", f, cert=f.server_cert, key=f.server_key, trust=[f.server_key])
        with self.assertRaises(TLSError) as caught:
            TLSContext(config.tls)
        self.assertIn("tls.ca_certificates", str(caught.exception))

    def test_contexts_get_no_deprecated_pyopenssl_objects(self):
        # pyOpenSSL deprecates its X509 and PKey in an SSL context: were they removed, every
        # handshake would fail.  Our key, certificate and chain go in as cryptography's.
        f = self.files
        config = tls_config("SCP", f, cert=f.chained_server_cert, key=f.chained_server_key, trust=[f.ca],
                            crls=[str(f.crl), str(f.intermediate_crl)])
        context = TLSContext(config.tls)
        # what Twisted's TLS protocol offers the options: its factory, wrapping ours
        tls_protocol = SimpleNamespace(factory=SimpleNamespace(wrappedFactory=protocol.Factory()))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            context.server_options().serverConnectionForTLS(tls_protocol)
            context.client_options("127.0.0.1").clientConnectionForTLS(tls_protocol)
            hostname_checked = TLSContext(replace(config.tls, verify_hostname=True))
            hostname_checked.client_options("localhost").clientConnectionForTLS(tls_protocol)
        deprecated = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
        self.assertEqual(deprecated, [])

    def test_relative_paths_are_found_next_to_the_configuration_file(self):
        f = self.files
        toml = f.directory / "node.toml"
        toml.write_text('[tls]\ncertificate = "server.crt"\nprivate_key = "server.key"\nca_certificates = "ca.crt"\n')
        from dimsekit.config import load

        config = load(toml)
        context = TLSContext(config.tls)
        self.assertIsNotNone(context.server_options())

    def test_section_checks(self):
        cases = [
            ({"certificate": "a.crt", "ca_certificates": ["c"]}, "tls.private_key: give both"),
            ({"port": 70000, "ca_certificates": ["c"]}, "tls.port"),
            ({}, "tls.ca_certificates"),
            ({"certificate": "a.crt", "private_key": "a.key"}, "tls.ca_certificates: give the CA certificates"),
            ({"certificate": "a.crt", "private_key": "a.key", "verify_peer": True},
             "tls.ca_certificates: give the CA certificates"),
            ({"verify_peer": False, "verify_hostname": True}, "tls.verify_hostname"),
            ({"minimum_version": "1.0", "ca_certificates": ["c"]}, "tls.minimum_version"),
            ({"ciphers": "ALL", "ca_certificates": ["c"]}, "tls.ciphers: use 'forward-secret' or 'compatible'"),
            ({"ca_certificates": []}, "tls.ca_certificates"),
            ({"bogus": 1, "ca_certificates": ["c"]}, "tls.bogus: unknown key"),
            ({"crls": ["a.crl"], "verify_peer": False}, "tls.crls: needs verify_peer = true"),
            ({"crls": [], "ca_certificates": ["c"]}, "tls.crls: give a CRL file"),
            ({"crls": 3, "ca_certificates": ["c"]}, "tls.crls: give a CRL file"),
            ({"crl_check": "chain", "ca_certificates": ["c"]}, "tls.crl_check: needs crls"),
            ({"crls": ["a.crl"], "crl_check": "all", "ca_certificates": ["c"]}, "tls.crl_check: use \"leaf\" or \"chain\""),
        ]
        for section, message in cases:
            with self.assertRaises(ConfigError) as caught:
                from_mapping({"tls": section})
            self.assertIn(message, str(caught.exception), section)

    def test_an_encrypted_key_is_one_clear_line(self):
        f = self.files
        for key in (f.encrypted_key, f.encrypted_pkcs8_key):
            config = tls_config("SCP", f, cert=f.node_cert, key=key, trust=[f.ca])
            with self.assertRaises(TLSError) as caught:
                TLSContext(config.tls)
            self.assertEqual(str(caught.exception),
                             f"tls.private_key: {key} is encrypted (protected by a pass phrase): give an unencrypted "
                             "PEM key (dimsekit does not ask for pass phrases)")

    def test_an_encrypted_key_asks_for_no_pass_phrase_on_the_terminal(self):
        # OpenSSL's PEM reader, given no pass phrase, asks for one on the controlling
        # terminal and waits: twistd -n or a tool started from a shell hung there.
        f = self.files
        program = (
            "import sys\n"
            "from dimsekit.tls import TLSConfig, TLSContext, TLSError\n"
            "try:\n"
            "    TLSContext(TLSConfig(certificate=sys.argv[1], private_key=sys.argv[2], ca_certificates=(sys.argv[3],)))\n"
            "except TLSError as exc:\n"
            "    print(exc)\n"
            "    sys.exit(3)\n"
        )
        here = str(Path(__file__).resolve().parent.parent.parent)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))}
        for key in (f.encrypted_key, f.encrypted_pkcs8_key):
            code, output = run_on_a_terminal([sys.executable, "-c", program, str(f.node_cert), str(key), str(f.ca)],
                                             env=env, timeout=20)
            self.assertNotIn("pass phrase:", output)
            self.assertEqual(code, 3, output)
            self.assertEqual(output.splitlines(), [f"tls.private_key: {key} is encrypted (protected by a pass phrase): "
                                                   "give an unencrypted PEM key (dimsekit does not ask for pass phrases)"])

    def test_no_message_quotes_a_key(self):
        """A key given where a certificate goes (and the like) is named, never quoted."""
        f = self.files
        secrets = [line for key in (f.server_key, f.node_key, f.encrypted_key, f.encrypted_pkcs8_key)
                   for line in key.read_text().splitlines() if line and not line.startswith(("-----", "Proc-", "DEK-"))]
        secrets.append(KEY_PASSWORD.decode())
        cases = [
            dict(cert=f.server_key, key=f.server_key, trust=[f.ca]),       # a key as the certificate
            dict(cert=f.server_cert, key=f.server_cert, trust=[f.ca]),     # a certificate as the key
            dict(cert=f.server_cert, key=f.server_key, trust=[f.node_key]),  # a key as a CA
            dict(cert=f.server_cert, key=f.node_key, trust=[f.ca]),        # another certificate's key
            dict(cert=f.node_cert, key=f.encrypted_key, trust=[f.ca]),
            dict(cert=f.node_cert, key=f.encrypted_pkcs8_key, trust=[f.ca]),
        ]
        for case in cases:
            config = tls_config("SCP", f, **case)
            with self.assertRaises(TLSError) as caught:
                TLSContext(config.tls)
            message = str(caught.exception)
            self.assertEqual(len(message.splitlines()), 1, message)
            for secret in secrets:
                self.assertNotIn(secret, message)
            self.assertNotIn("BEGIN", message)

    def test_verify_peer_without_ca_certificates_is_refused_in_code_too(self):
        # from_section refuses it (test_section_checks); a TLSConfig made in code (as the
        # tools do) must not fall through to Twisted's options, which then check nothing
        # (server) or trust the system's CAs (client with verify_hostname).
        f = self.files
        for config in (TLSConfig(certificate=str(f.server_cert), private_key=str(f.server_key)),
                       TLSConfig(verify_hostname=True),
                       TLSConfig()):
            with self.assertRaises(TLSError) as caught:
                TLSContext(config)
            self.assertIn("tls.ca_certificates: verify_peer needs the CA certificates", str(caught.exception))
        TLSContext(TLSConfig(verify_peer=False))  # nothing to check against: fine

    def test_a_tls_remote_needs_a_tls_section(self):
        with self.assertRaises(ConfigError) as caught:
            from_mapping({"remote": [{"ae_title": "X", "host": "h", "port": 1, "tls": True}]})
        self.assertIn("remote[0].tls", str(caught.exception))
        config = from_mapping({"remote": [{"ae_title": "X", "host": "h", "port": 1, "tls": True}],
                               "tls": {"verify_peer": False}})
        self.assertTrue(config.remotes[0].tls)
        self.assertEqual(replace(config.tls, port=1).port, 1)



class ClientAuthenticationUsageTests(LoopbackTestCase):
    """The node presents its [tls] certificate when it associates with a tls = true remote:
    one whose Extended Key Usage lacks clientAuth is refused by peers that check (DCMTK),
    so start-up says so."""

    def test_a_server_only_certificate_is_reported_when_a_remote_uses_tls(self):
        import tempfile

        from twisted.logger import globalLogPublisher

        base = Path(tempfile.mkdtemp())
        self.addCleanup(__import__("shutil").rmtree, base)
        f = make_tls_files(base)
        seen: list[str] = []

        def observer(event):
            if event.get("log_namespace") == "dimsekit.ae":
                seen.append(str(event.get("problem", "")))

        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        remote = [{"ae_title": "DEST", "host": "127.0.0.1", "port": 1, "tls": True}]
        for cert, key, remotes, expected in (
            (f.server_cert, f.server_key, remote, 1),   # serverAuth only, a TLS remote: warned
            (f.node_cert, f.node_key, remote, 0),       # serverAuth and clientAuth: fine
            (f.server_cert, f.server_key, [], 0),       # no TLS remote: it never acts as a client
        ):
            seen.clear()
            config = from_mapping({"tls": {"certificate": str(cert), "private_key": str(key),
                                           "ca_certificates": [str(f.ca)]}, "remote": remotes})
            self.make_ae("SCP", config=config)
            self.assertEqual(len([s for s in seen if "lacks clientAuth" in s]), expected, (cert, remotes, seen))
