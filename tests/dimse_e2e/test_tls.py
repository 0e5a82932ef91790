"""TLS associations between dimsekit AEs (PS3.15 B.1): mutual authentication with the
``[tls]`` settings, and the handshakes that must fail -- an untrusted certificate either
way, no client certificate when one is required."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from twisted.internet import defer, protocol, reactor
from twisted.logger import globalLogPublisher

from dimsekit.config import ConfigError, from_mapping
from dimsekit.errors import AssociationAborted, ConnectionLost, LocalProtocolError
from dimsekit.tls import TLSConfig, TLSContext, TLSError
from dimsekit.uids import VERIFICATION
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


class TLSAssociationTests(LoopbackTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.files = make_tls_files(temporary_directory(self))

    async def serve_tls(self, **extra):
        f = self.files
        config = tls_config("SCP", f, cert=f.server_cert, key=f.server_key, trust=[f.ca], **extra)
        ae = self.make_ae("SCP", Services(), config=config)
        port = await ae.listen(0, tls=True)
        self.addCleanup(port.stopListening)
        return ae, port.getHost().port

    def client(self, *, cert="client", trust=None, limits=None, **extra):
        f = self.files
        paths = {"client": (f.client_cert, f.client_key), "rogue": (f.rogue_cert, f.rogue_key), None: (None, None)}
        c, k = paths[cert]
        config = tls_config("SCU", f, cert=c, key=k, trust=trust or [f.ca], limits=limits, **extra)
        return self.make_ae("SCU", config=config)

    async def test_echo_over_tls_with_both_certificates_checked(self):
        server, port = await self.serve_tls()
        association = await self.connect(port, [VERIFICATION], ae=self.client(), tls=True)
        status = await within(association.echo())
        self.assertEqual(status, 0x0000)
        transport = association.protocol.transport
        # the peer's certificate as the TLS layer saw it: our CA's client certificate
        self.assertIn(b"dimsekit test CA", repr(transport.getPeerCertificate().get_issuer()).encode())
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
        f = self.files
        config = tls_config("SCP", f, cert=f.elsewhere_cert, key=f.elsewhere_key, trust=[f.ca])
        ae = self.make_ae("SCP", config=config)
        listening = await ae.listen(0, tls=True)
        self.addCleanup(listening.stopListening)
        port = listening.getHost().port
        with self.assertRaises(ConnectionLost) as caught:
            await self.connect(port, [VERIFICATION], ae=self.client(verify_hostname=True), tls=True)
        self.assertEqual(str(caught.exception),
                         "TLS handshake failed: the peer's certificate is not for 127.0.0.1 (host name check)")
        association = await self.connect(port, [VERIFICATION], ae=self.client(), tls=True)  # CA-signed: enough
        await within(association.release())

    async def test_a_server_certificate_we_do_not_trust_fails_the_association(self):
        f = self.files
        config = tls_config("SCP", f, cert=f.rogue_cert, key=f.rogue_key, trust=[f.ca])
        ae = self.make_ae("SCP", config=config)
        listening = await ae.listen(0, tls=True)
        self.addCleanup(listening.stopListening)
        with self.assertRaises(ConnectionLost) as caught:
            await self.connect(listening.getHost().port, [VERIFICATION], ae=self.client(), tls=True)
        self.assertIn("TLS handshake failed: certificate verify failed", str(caught.exception))
        self.assertEqual(ae.active, set())

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

    def association_ends(self) -> list[tuple[str, str]]:
        """(side, how it ended) of every association line logged from now on."""
        ends: list[tuple[str, str]] = []

        def observe(event: dict) -> None:
            if "ended" in event and str(event.get("text", "")).startswith("association "):
                ends.append((event["text"].split()[1], event["ended"]))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        return ends

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
            ({"verify_peer": False, "verify_hostname": True}, "tls.verify_hostname"),
            ({"minimum_version": "1.0", "ca_certificates": ["c"]}, "tls.minimum_version"),
            ({"ca_certificates": []}, "tls.ca_certificates"),
            ({"bogus": 1, "ca_certificates": ["c"]}, "tls.bogus: unknown key"),
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
