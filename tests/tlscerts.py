"""Certificates for the TLS tests, made fresh (cryptography): a CA, a server, a client and a
node certificate it signed, and a stranger's self-signed one; certificates issued through an
intermediate CA, by a CA no one trusts, expired ones, and an encrypted key.  Test code, not a
product."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class TLSFiles:
    """Paths of PEM files: ``ca``; ``server_cert``/``server_key`` (names localhost and 127.0.0.1);
    ``client_cert``/``client_key``; ``rogue_cert``/``rogue_key`` (self-signed, trusted by no one);
    ``node_cert``/``node_key``: like the server's, but for client authentication too -- a node
    listens with its certificate and presents the same one when it associates (C-MOVE
    sub-operations), and a server checking client certificates (DCMTK, OpenSSL) refuses one
    whose Extended Key Usage lacks clientAuth ("unsupported certificate");
    ``elsewhere_cert``/``elsewhere_key`` (a server certificate of the CA for elsewhere.example only);
    ``intermediate``: an intermediate CA the CA signed; ``chained_server_cert``/``chained_server_key``
    and ``chained_client_cert``/``chained_client_key``: certificates the intermediate signed, each
    file holding the leaf then the intermediate (``chained_*_leaf``: the leaf alone);
    ``other_ca``: a CA no test trusts, ``other_server_cert``/``other_client_cert`` (keys
    ``other_*_key``) its server and client certificates, for localhost and 127.0.0.1 like ours;
    ``expired_server_cert``/``expired_client_cert`` (keys ``expired_*_key``): of the CA, but no
    longer valid; ``encrypted_key``/``encrypted_pkcs8_key``: ``node_key``'s key encrypted with
    ``KEY_PASSWORD`` (traditional OpenSSL and PKCS#8 PEM)."""

    directory: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path
    rogue_key: Path
    node_cert: Path
    node_key: Path
    elsewhere_cert: Path
    elsewhere_key: Path
    intermediate: Path
    chained_server_cert: Path
    chained_server_key: Path
    chained_server_leaf: Path
    chained_client_cert: Path
    chained_client_key: Path
    chained_client_leaf: Path
    other_ca: Path
    other_server_cert: Path
    other_server_key: Path
    other_client_cert: Path
    other_client_key: Path
    expired_server_cert: Path
    expired_server_key: Path
    expired_client_cert: Path
    expired_client_key: Path
    encrypted_key: Path
    encrypted_pkcs8_key: Path
    rsa_server_cert: Path  # an RSA key (the others are EC): what RSA key transport suites need
    rsa_server_key: Path
    # revocation: certificates of the CA that its CRL lists (keys ``revoked_*_key``); ``crl``: the
    # CA's CRL listing them (PEM), ``crl_der`` the same in DER, ``empty_crl`` one listing nothing,
    # ``expired_crl`` one listing nothing whose next update has passed, ``rogue_crl`` one of the
    # CA's name signed by another key; ``intermediate_crl``: the intermediate CA's, listing nothing
    revoked_server_cert: Path
    revoked_server_key: Path
    revoked_client_cert: Path
    revoked_client_key: Path
    crl: Path
    crl_der: Path
    empty_crl: Path
    expired_crl: Path
    rogue_crl: Path
    intermediate_crl: Path


#: the pass phrase of ``encrypted_key`` and ``encrypted_pkcs8_key``
KEY_PASSWORD = b"dimsekit-test-pass-phrase"


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption()))


def _certificate(subject: str, key, issuer: str, issuer_key, *, ca: bool, usage=None, names=(),
                 expired: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    if expired:  # valid for a while, until yesterday
        now -= datetime.timedelta(days=31)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _server_and_client(server_cert: Path, server_key: Path, client_cert: Path, client_key: Path, issuer: str,
                       issuer_key, *, expired: bool = False) -> list[x509.Certificate]:
    """A server certificate (for localhost and 127.0.0.1) and a client one that ``issuer`` signed, written
    with their keys; returned."""
    local = (x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    made = []
    for cert_path, key_path, subject, usage in (
        (server_cert, server_key, "localhost", ExtendedKeyUsageOID.SERVER_AUTH),
        (client_cert, client_key, "dimsekit test client", ExtendedKeyUsageOID.CLIENT_AUTH),
    ):
        key = _key()
        cert = _certificate(subject, key, issuer, issuer_key, ca=False, usage=[usage], names=local, expired=expired)
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key_path, key)
        made.append(cert)
    return made


def _crl(issuer: str, issuer_key, serials: list[int], *, expired: bool = False) -> x509.CertificateRevocationList:
    now = datetime.datetime.now(datetime.UTC)
    if expired:  # issued two days ago, due to be replaced yesterday
        now -= datetime.timedelta(days=2)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(_name(issuer))
        .last_update(now - datetime.timedelta(minutes=5))
        .next_update(now + datetime.timedelta(days=1))
    )
    for serial in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
        )
    return builder.sign(issuer_key, hashes.SHA256())


def make_tls_files(directory: Path) -> TLSFiles:
    directory.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    ca_key = _key()
    ca_cert = _certificate("dimsekit test CA", ca_key, "dimsekit test CA", ca_key, ca=True)
    files = TLSFiles(directory, *(directory / n for n in (
        "ca.crt", "server.crt", "server.key", "client.crt", "client.key", "rogue.crt", "rogue.key", "node.crt",
        "node.key", "elsewhere.crt", "elsewhere.key", "intermediate.crt", "chained-server.crt", "chained-server.key",
        "chained-server-leaf.crt", "chained-client.crt", "chained-client.key", "chained-client-leaf.crt",
        "other-ca.crt", "other-server.crt", "other-server.key", "other-client.crt", "other-client.key",
        "expired-server.crt", "expired-server.key", "expired-client.crt", "expired-client.key",
        "encrypted.key", "encrypted-pkcs8.key", "rsa-server.crt", "rsa-server.key",
        "revoked-server.crt", "revoked-server.key", "revoked-client.crt", "revoked-client.key",
        "ca.crl", "ca-crl.der", "ca-empty.crl", "ca-expired.crl", "rogue.crl", "intermediate.crl")))
    files.ca.write_bytes(ca_cert.public_bytes(pem))
    local = (x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    elsewhere = (x509.DNSName("elsewhere.example"),)
    for cert_path, key_path, subject, usage, names in (
        (files.server_cert, files.server_key, "localhost", [ExtendedKeyUsageOID.SERVER_AUTH], local),
        (files.client_cert, files.client_key, "dimsekit test client", [ExtendedKeyUsageOID.CLIENT_AUTH], local),
        (files.node_cert, files.node_key, "localhost",
         [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH], local),
        (files.elsewhere_cert, files.elsewhere_key, "elsewhere.example", [ExtendedKeyUsageOID.SERVER_AUTH],
         elsewhere),
    ):
        key = _key()
        cert = _certificate(subject, key, "dimsekit test CA", ca_key, ca=False, usage=usage, names=names)
        cert_path.write_bytes(cert.public_bytes(pem))
        _write_key(key_path, key)
    rogue_key = _key()
    rogue = _certificate("localhost", rogue_key, "localhost", rogue_key, ca=False, names=local)
    files.rogue_cert.write_bytes(rogue.public_bytes(pem))
    _write_key(files.rogue_key, rogue_key)
    server_usage, client_usage = [ExtendedKeyUsageOID.SERVER_AUTH], [ExtendedKeyUsageOID.CLIENT_AUTH]

    # an intermediate CA, and certificates it signed: their files carry it after the leaf
    middle_key = _key()
    middle = _certificate("dimsekit test intermediate CA", middle_key, "dimsekit test CA", ca_key, ca=True)
    files.intermediate.write_bytes(middle.public_bytes(pem))
    for cert_path, leaf_path, key_path, subject, usage in (
        (files.chained_server_cert, files.chained_server_leaf, files.chained_server_key, "localhost", server_usage),
        (files.chained_client_cert, files.chained_client_leaf, files.chained_client_key, "dimsekit chained client",
         client_usage),
    ):
        key = _key()
        cert = _certificate(subject, key, "dimsekit test intermediate CA", middle_key, ca=False, usage=usage,
                            names=local)
        leaf_path.write_bytes(cert.public_bytes(pem))
        cert_path.write_bytes(cert.public_bytes(pem) + middle.public_bytes(pem))
        _write_key(key_path, key)

    # another CA, trusted by no test, with a server and a client certificate
    other_key = _key()
    other = _certificate("another CA", other_key, "another CA", other_key, ca=True)
    files.other_ca.write_bytes(other.public_bytes(pem))
    _server_and_client(files.other_server_cert, files.other_server_key, files.other_client_cert,
                       files.other_client_key, "another CA", other_key)

    # certificates of our CA that are no longer valid
    _server_and_client(files.expired_server_cert, files.expired_server_key, files.expired_client_cert,
                       files.expired_client_key, "dimsekit test CA", ca_key, expired=True)

    # a server certificate with an RSA key
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_cert = _certificate("localhost", rsa_key, "dimsekit test CA", ca_key, ca=False, usage=server_usage,
                            names=local)
    files.rsa_server_cert.write_bytes(rsa_cert.public_bytes(pem))
    _write_key(files.rsa_server_key, rsa_key)

    # revoked certificates of the CA, and CRLs
    revoked = _server_and_client(files.revoked_server_cert, files.revoked_server_key, files.revoked_client_cert,
                                 files.revoked_client_key, "dimsekit test CA", ca_key)
    ca_crl = _crl("dimsekit test CA", ca_key, [cert.serial_number for cert in revoked])
    files.crl.write_bytes(ca_crl.public_bytes(pem))
    files.crl_der.write_bytes(ca_crl.public_bytes(serialization.Encoding.DER))
    files.empty_crl.write_bytes(_crl("dimsekit test CA", ca_key, []).public_bytes(pem))
    files.expired_crl.write_bytes(_crl("dimsekit test CA", ca_key, [], expired=True).public_bytes(pem))
    files.rogue_crl.write_bytes(_crl("dimsekit test CA", _key(), []).public_bytes(pem))
    files.intermediate_crl.write_bytes(_crl("dimsekit test intermediate CA", middle_key, []).public_bytes(pem))

    # the node's key, encrypted
    node_key = serialization.load_pem_private_key(files.node_key.read_bytes(), password=None)
    for path, form in ((files.encrypted_key, serialization.PrivateFormat.TraditionalOpenSSL),
                       (files.encrypted_pkcs8_key, serialization.PrivateFormat.PKCS8)):
        path.write_bytes(node_key.private_bytes(pem, form, serialization.BestAvailableEncryption(KEY_PASSWORD)))
    return files
