"""Certificate revocation lists (``[tls] crls``): revoked certificates refused both ways, what
the lists must hold (every issuer's CRL, the chain's with ``crl_check = "chain"``), lists
out of date, files read again when they change, and the settings that cannot be used."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography import x509
from twisted.logger import globalLogPublisher

from dimsekit.config import from_mapping
from dimsekit.errors import AssociationAborted, ConnectionLost
from dimsekit.tls import TLSContext, TLSError, describe_tls_failure
from dimsekit.uids import VERIFICATION
from tests.dimse_e2e.support import Services, wait_until, within
from tests.dimse_e2e.test_tls import TLSTestCase, tls_config


def publish(path: Path, data: bytes) -> None:
    """A new version of a file put in place whole, as an operator should: written beside it, renamed."""
    staged = path.with_name(path.name + ".new")
    staged.write_bytes(data)
    os.replace(staged, path)


class CRLTestCase(TLSTestCase):
    def certificate(self, name: str) -> tuple[Path, Path]:
        f = self.files
        return {
            "client": (f.client_cert, f.client_key),
            "revoked-client": (f.revoked_client_cert, f.revoked_client_key),
            "chained-client": (f.chained_client_cert, f.chained_client_key),
            "server": (f.server_cert, f.server_key),
            "revoked-server": (f.revoked_server_cert, f.revoked_server_key),
            "chained-server": (f.chained_server_cert, f.chained_server_key),
        }[name]

    def crl_client(self, cert: str = "client", **tls):
        c, k = self.certificate(cert)
        return self.make_ae("SCU", config=tls_config("SCU", self.files, cert=c, key=k, trust=[self.files.ca],
                                                     limits=None, **tls))

    async def serve_with(self, cert: str | Path = "server", key: Path | None = None, **tls):
        c, k = (cert, key) if isinstance(cert, Path) else self.certificate(cert)
        return await self.serve_tls(cert=c, key=k, **tls)

    async def serve_from(self, path: Path, data: bytes, **tls) -> tuple[int, list[str]]:
        """A listener with the ``tls`` settings, one of whose files is ``path`` (written with
        ``data`` first): its port, and the lines dimsekit.tls logs from now on."""
        path.write_bytes(data)
        lines = self.logged()
        _, port = await self.serve_with(**tls)
        return port, lines

    async def accepted(self, port: int, ae) -> None:
        association = await self.connect(port, [VERIFICATION], ae=ae, tls=True)
        self.assertEqual(await within(association.echo()), 0)
        await within(association.release())

    async def refused(self, port: int, ae) -> str:
        with self.assertRaises((ConnectionLost, AssociationAborted)) as caught:
            await self.connect(port, [VERIFICATION], ae=ae, tls=True)
        return str(caught.exception)

    def acceptor_ends(self) -> list[str]:
        ends = self.association_ends()
        return [ended for side, ended in ends if side == "acceptor"]  # a view: filled as lines come

    def logged(self) -> list[str]:
        from twisted.logger import formatEvent

        lines: list[str] = []

        def observe(event: dict) -> None:
            if event.get("log_namespace") == "dimsekit.tls":
                lines.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        return lines


class RevocationTests(CRLTestCase):
    async def test_the_listener_refuses_a_revoked_client_certificate(self):
        ends = self.association_ends()
        server, port = await self.serve_with(crls=[str(self.files.crl)])
        await self.accepted(port, self.crl_client())
        line = await self.refused(port, self.crl_client("revoked-client"))
        self.assertIn("TLS handshake failed: tls alert certificate revoked", line)
        self.assertEqual(server.active, set())
        await wait_until(lambda: sum(side == "acceptor" for side, _ in ends) == 2, what="the acceptor's lines")
        refused = [ended for side, ended in ends if side == "acceptor"][1]
        self.assertIn("TLS handshake failed: certificate verify failed (certificate revoked: CN=dimsekit test client)", refused)

    async def test_without_crls_a_revoked_certificate_is_accepted(self):
        # what the check is for: the certificate is otherwise valid
        _, port = await self.serve_with()
        await self.accepted(port, self.crl_client("revoked-client"))

    async def test_a_client_refuses_a_revoked_server_certificate(self):
        _, port = await self.serve_with("revoked-server")
        for verify_hostname in (False, True):
            line = await self.refused(port, self.crl_client(crls=[str(self.files.crl)],
                                                            verify_hostname=verify_hostname))
            self.assertIn("TLS handshake failed: certificate verify failed (certificate revoked: CN=localhost)", line,
                          verify_hostname)
        _, port = await self.serve_with("server")
        for verify_hostname in (False, True):
            await self.accepted(port, self.crl_client(crls=[str(self.files.crl)], verify_hostname=verify_hostname))

    async def test_a_der_file_and_a_list_that_revokes_nothing(self):
        f = self.files
        _, port = await self.serve_with(crls=[str(f.crl_der)])
        self.assertIn("certificate revoked", await self.refused(port, self.crl_client("revoked-client")))
        await self.accepted(port, self.crl_client())
        _, port = await self.serve_with(crls=str(f.empty_crl))  # one file as a string
        await self.accepted(port, self.crl_client("revoked-client"))

    async def test_an_issuer_without_its_crl_is_refused(self):
        # The chained client's issuer is the intermediate CA: its CRL must be there too.
        f = self.files
        ends = self.association_ends()
        _, port = await self.serve_with(crls=[str(f.crl)])
        await self.refused(port, self.crl_client("chained-client"))
        await wait_until(lambda: any(side == "acceptor" for side, _ in ends), what="the acceptor's line")
        self.assertIn("(unable to get certificate CRL: CN=dimsekit chained client)",
                      [e for s, e in ends if s == "acceptor"][0])
        _, port = await self.serve_with(crls=[str(f.crl), str(f.intermediate_crl)])
        await self.accepted(port, self.crl_client("chained-client"))

    async def test_chain_checks_the_intermediate_against_its_issuers_crl(self):
        f = self.files
        _, port = await self.serve_with(crls=[str(f.intermediate_crl)])  # leaf: the intermediate's is enough
        await self.accepted(port, self.crl_client("chained-client"))
        _, port = await self.serve_with(crls=[str(f.intermediate_crl)], crl_check="chain")
        await self.refused(port, self.crl_client("chained-client"))  # the root's CRL is missing
        _, port = await self.serve_with(crls=[str(f.intermediate_crl), str(f.crl)], crl_check="chain")
        await self.accepted(port, self.crl_client("chained-client"))
        # the other way: a client checking the chained server's whole chain
        _, port = await self.serve_with("chained-server")
        line = await self.refused(port, self.crl_client(crls=[str(f.intermediate_crl)], crl_check="chain"))
        self.assertIn("(unable to get certificate CRL: CN=dimsekit test intermediate CA)", line)
        await self.accepted(port, self.crl_client(crls=[str(f.intermediate_crl), str(f.crl)], crl_check="chain"))

    async def test_a_list_out_of_date_refuses_its_cas_certificates_and_is_said(self):
        lines = self.logged()
        _, port = await self.serve_with(crls=[str(self.files.expired_crl)])
        self.assertTrue(any("was due to be replaced" in line and "CRL has expired" in line for line in lines), lines)
        line = await self.refused(port, self.crl_client())
        self.assertIn("certificate expired", line)  # the server's alert for "CRL has expired"
        _, port = await self.serve_with()
        line = await self.refused(port, self.crl_client(crls=[str(self.files.expired_crl)]))
        self.assertIn("certificate verify failed (CRL has expired: CN=localhost)", line)

    async def test_the_files_are_read_again_when_they_change(self):
        f = self.files
        published = f.directory / "published.crl"
        port, lines = await self.serve_from(published, f.empty_crl.read_bytes(), crls=[str(published)])
        await self.accepted(port, self.crl_client("revoked-client"))
        publish(published, f.crl.read_bytes())  # the next handshake uses it
        self.assertIn("certificate revoked", await self.refused(port, self.crl_client("revoked-client")))
        await self.accepted(port, self.crl_client())
        self.assertTrue(any("read again (1 CA certificates, 1 revocation lists" in line for line in lines), lines)
        # one that cannot be read: the lists in force stay, and the log says so (once)
        published.write_bytes(b"not a CRL at all")
        self.assertIn("certificate revoked", await self.refused(port, self.crl_client("revoked-client")))
        self.assertIn("certificate revoked", await self.refused(port, self.crl_client("revoked-client")))
        stayed = [line for line in lines if "the certificates and revocation lists read before stay in force" in line]
        self.assertEqual(len(stayed), 1, lines)
        self.assertIn("holds no certificate revocation list", stayed[0])
        # ... until it is readable again
        published.write_bytes(f.empty_crl.read_bytes() + b"\n")
        await self.accepted(port, self.crl_client("revoked-client"))

    async def test_a_ca_certificate_added_to_the_trusted_file_is_trusted_from_the_next_handshake(self):
        # A new modality's self-signed certificate (here: a client of another CA) without a restart.
        f = self.files
        trusted = f.directory / "trusted.crt"
        port, lines = await self.serve_from(trusted, f.ca.read_bytes(), ca_certificates=[str(trusted)])
        other = self.client(cert="other")
        self.assertIn("unknown ca", await self.refused(port, other))
        publish(trusted, f.ca.read_bytes() + f.other_ca.read_bytes())
        await self.accepted(port, other)
        await self.accepted(port, self.client())
        self.assertTrue(any("read again (2 CA certificates, 0 revocation lists" in line for line in lines), lines)
        # a file left without a certificate: what was trusted stays, said once
        trusted.write_bytes(b"")
        await self.accepted(port, other)
        await self.accepted(port, other)
        stayed = [line for line in lines if "stay in force" in line]
        self.assertEqual(len(stayed), 1, lines)
        self.assertIn("tls.ca_certificates", stayed[0])

    async def test_a_renewed_certificate_of_ours_is_shown_from_the_next_handshake(self):
        f = self.files
        cert, key = f.directory / "mine.crt", f.directory / "mine.key"
        key.write_bytes(f.server_key.read_bytes())
        port, lines = await self.serve_from(cert, f.server_cert.read_bytes(), cert=cert, key=key)

        async def shown() -> str:
            association = await self.connect(port, [VERIFICATION], ae=self.client(), tls=True)
            serial = association.protocol.transport.getPeerCertificate().to_cryptography().serial_number
            await within(association.release())
            return serial

        old = await shown()
        publish(cert, f.node_cert.read_bytes())  # the certificate first: not its key's -- the old pair stays
        self.assertEqual(await shown(), old)
        self.assertTrue(any("is not the key of the certificate" in line and "stay in force" in line
                            for line in lines), lines)
        publish(key, f.node_key.read_bytes())  # now a pair: in force
        renewed = await shown()
        self.assertNotEqual(renewed, old)
        self.assertEqual(renewed, x509.load_pem_x509_certificate(f.node_cert.read_bytes()).serial_number)
        self.assertTrue(any("our certificate" in line and "read again" in line for line in lines), lines)


    async def test_a_renewed_certificate_not_for_client_authentication_is_said(self):
        # The node associates with a TLS remote (C-MOVE sub-operations, commitment reports):
        # a certificate renewed without clientAuth would be refused there, as start-up says.
        f = self.files
        cert, key = f.directory / "mine.crt", f.directory / "mine.key"
        cert.write_bytes(f.node_cert.read_bytes())  # serverAuth and clientAuth
        key.write_bytes(f.node_key.read_bytes())
        lines = self.logged()
        config = from_mapping({
            "node": {"ae_title": "SCP"}, "limits": {"acse_timeout": 5.0, "dimse_timeout": 5.0},
            "tls": {"certificate": str(cert), "private_key": str(key), "ca_certificates": [str(f.ca)]},
            "remote": [{"ae_title": "DEST", "host": "127.0.0.1", "port": 1, "tls": True}],
        })
        ae = self.make_ae("SCP", Services(), config=config)
        listening = await ae.listen(0, tls=True)
        self.addCleanup(listening.stopListening)
        port = listening.getHost().port

        def said() -> list[str]:
            return [line for line in lines if "lacks clientAuth" in line]

        await self.accepted(port, self.client())
        self.assertEqual(said(), [])
        publish(key, f.server_key.read_bytes())
        publish(cert, f.server_cert.read_bytes())  # serverAuth only
        await self.accepted(port, self.client())  # in force: peers checking client certificates refuse it
        (line,) = said()
        self.assertIn(f"tls.certificate: {cert} is not for client authentication", line)
        await self.accepted(port, self.client())
        self.assertEqual(len(said()), 1)  # said as it was read, not at every handshake


class CRLSettingsTests(CRLTestCase):
    def test_files_that_cannot_be_used_stop_start_up(self):
        f = self.files
        for crl, message in (
            (f.directory / "missing.crl", "tls.crls: cannot read"),
            (f.ca, "holds no certificate revocation list"),
            (f.rogue_crl, "the CRL of CN=dimsekit test CA is not signed by the CA of that name"),
        ):
            config = tls_config("SCP", f, cert=f.server_cert, key=f.server_key, trust=[f.ca], crls=[str(crl)])
            with self.assertRaises(TLSError) as caught:
                TLSContext(config.tls)
            self.assertIn(message, str(caught.exception), crl.name)
            self.assertIn(str(crl), str(caught.exception))

    def test_only_a_refused_certificate_gets_a_reason(self):
        from OpenSSL import SSL

        failed = SSL.Error([("SSL routines", "", "certificate verify failed")])
        self.assertEqual(describe_tls_failure(failed), "TLS handshake failed: certificate verify failed")
        self.assertEqual(describe_tls_failure(failed, object()), "TLS handshake failed: certificate verify failed")

    def test_the_peers_alerts_are_said_in_words(self):
        from OpenSSL import SSL

        for alert, words in (
            ("tlsv1 alert unknown ca", "the peer does not trust the CA of our certificate"),
            ("tlsv13 alert certificate required", "the peer wants a certificate of ours"),
            ("tls alert certificate revoked", "the peer's revocation list names our certificate"),
            ("sslv3 alert certificate expired", "out of date"),
            ("sslv3 alert unsupported certificate", "its Extended Key Usage"),
            ("tlsv1 alert protocol version", "minimum_version"),
        ):
            line = describe_tls_failure(SSL.Error([("SSL routines", "", alert)]))
            self.assertTrue(line.startswith(f"TLS handshake failed: {alert} ("), line)
            self.assertIn(words, line)
        self.assertEqual(describe_tls_failure(SSL.Error([("SSL routines", "", "sslv3 alert handshake failure")])),
                         "TLS handshake failed: sslv3 alert handshake failure")
