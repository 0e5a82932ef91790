"""Certificates for the TLS tests, made fresh (cryptography): a CA, a server, a client and a
node certificate it signed, and a stranger's self-signed one.  Test code, not a product."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class TLSFiles:
    """Paths of PEM files: ``ca``; ``server_cert``/``server_key`` (names localhost and 127.0.0.1);
    ``client_cert``/``client_key``; ``rogue_cert``/``rogue_key`` (self-signed, trusted by no one);
    ``node_cert``/``node_key``: like the server's, but for client authentication too -- a node
    listens with its certificate and presents the same one when it associates (C-MOVE
    sub-operations), and a server checking client certificates (DCMTK, OpenSSL) refuses one
    whose Extended Key Usage lacks clientAuth ("unsupported certificate");
    ``elsewhere_cert``/``elsewhere_key`` (a server certificate of the CA for elsewhere.example only)."""

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


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption()))


def _certificate(subject: str, key, issuer: str, issuer_key, *, ca: bool, usage=None, names=()) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
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


def make_tls_files(directory: Path) -> TLSFiles:
    directory.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    ca_key = _key()
    ca_cert = _certificate("dimsekit test CA", ca_key, "dimsekit test CA", ca_key, ca=True)
    files = TLSFiles(directory, *(directory / n for n in (
        "ca.crt", "server.crt", "server.key", "client.crt", "client.key", "rogue.crt", "rogue.key", "node.crt",
        "node.key", "elsewhere.crt", "elsewhere.key")))
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
    return files
