"""The SCU tools over TLS (PS3.15 B.1) with DCMTK's options (+tls, +tla, +cf, -ic):
to DCMTK storescp, to a pynetdicom AE serving TLS, and to a dimsekit node's TLS
listener.  Mutual authentication works; a certificate either side does not
trust ends the tool with one line saying the handshake failed.

The options without sockets: tests/test_cli_tls_unit.py.
"""

from __future__ import annotations

import os
import ssl
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pynetdicom import AE

from tests.interop.conftest import (
    DIMSEKIT_CLI,
    SAME_CODE,
    VERIFICATION,
    _finish_node,
    dcmtk,
    free_port,
    run,
    same_data_set,
    start_node,
    stop,
    wait_for_port,
)
from tests.terminal import run_on_a_terminal
from tests.tlscerts import KEY_PASSWORD, TLSFiles, make_tls_files

pytestmark = pytest.mark.interop

CT_SMALL = Path(get_testdata_file("CT_small.dcm", download=False))
UNTRUSTED_SERVER = "dimsekit {tool}: TLS handshake failed: certificate verify failed"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return make_tls_files(tmp_path_factory.mktemp("certs"))


def cli(tool: str, port: int, *args: object, timeout: float = 60) -> subprocess.CompletedProcess:
    return run([*DIMSEKIT_CLI, *tool.split(), "127.0.0.1", str(port), "-to", "10", *map(str, args)], timeout=timeout,
               env={**os.environ, **SAME_CODE})


def mutual(certs: TLSFiles) -> list[object]:
    """Our client certificate, and the test CA to check the peer's with."""
    return ["+tls", certs.client_key, certs.client_cert, "+cf", certs.ca]


def one_line(result: subprocess.CompletedProcess, tool: str) -> str:
    """A failure: exit non-zero, nothing on stdout, one line on stderr (returned)."""
    assert result.returncode != 0, result.stdout + result.stderr
    assert result.stdout == "", result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    assert lines[0].startswith(f"dimsekit {tool}: "), lines[0]
    return lines[0]


# -- DCMTK storescp --------------------------------------------------------------------------


@contextmanager
def storescp(directory: Path, *tls: object) -> Iterator[int]:
    """DCMTK storescp on a free port with the TLS options ``tls``; writes into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = directory.parent / f"storescp-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([dcmtk("storescp"), "-od", str(directory), *map(str, tls), str(port)],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, 10.0, proc)
        yield port
    finally:
        stop(proc)


def test_echo_and_store_to_storescp_both_certificates_checked(certs, tmp_path):
    out = tmp_path / "out"
    with storescp(out, "+tls", certs.server_key, certs.server_cert, "+cf", certs.ca) as port:
        echoed = cli("echo", port, *mutual(certs))
        assert echoed.returncode == 0, echoed.stderr
        assert "1/1 Success" in echoed.stdout
        stored = cli("store", port, *mutual(certs), CT_SMALL)
        assert stored.returncode == 0, stored.stdout + stored.stderr
        assert "Stored 1 of 1 instances" in stored.stdout
    files = list(out.iterdir())
    assert len(files) == 1, files
    same_data_set(files[0], CT_SMALL)


def test_a_client_certificate_storescp_does_not_trust_is_refused(certs, tmp_path):
    with storescp(tmp_path / "out", "+tls", certs.server_key, certs.server_cert, "+cf", certs.ca) as port:
        for tool, extra in (("echo", []), ("store", [CT_SMALL])):
            line = one_line(cli(tool, port, "+tls", certs.rogue_key, certs.rogue_cert, "+cf", certs.ca, *extra),
                            tool)
            assert line.startswith(f"dimsekit {tool}: TLS handshake failed: "), line
            assert "unknown ca" in line, line
        # and without a certificate, where storescp requires one (its default with +cf)
        line = one_line(cli("echo", port, "+tla", "+cf", certs.ca), "echo")
        assert line.startswith("dimsekit echo: TLS handshake failed: "), line
        assert "certificate required" in line, line
    assert list((tmp_path / "out").iterdir()) == []


def test_a_server_certificate_we_do_not_trust_is_refused(certs, tmp_path):
    with storescp(tmp_path / "out", "+tls", certs.rogue_key, certs.rogue_cert, "+cf", certs.ca) as port:
        for tool, extra in (("echo", []), ("store", [CT_SMALL])):
            assert one_line(cli(tool, port, *mutual(certs), *extra), tool) == (
                UNTRUSTED_SERVER.format(tool=tool) + " (self-signed certificate: CN=localhost)")
        # -ic: not checked, then it works (the server does check ours)
        echoed = cli("echo", port, "+tls", certs.client_key, certs.client_cert, "-ic")
        assert echoed.returncode == 0, echoed.stderr


def test_certificate_files_with_their_intermediate(certs, tmp_path):
    """+tls KEY CERT where CERT holds our certificate then the intermediate CA that signed
    it: sent with it, so storescp, trusting the root CA only, accepts it; and storescp's own,
    also of the intermediate, chains to the root we trust.  Without the intermediate, refused."""
    with storescp(tmp_path / "out", "+tls", certs.chained_server_key, certs.chained_server_cert,
                  "+cf", certs.ca) as port:
        echoed = cli("echo", port, "+tls", certs.chained_client_key, certs.chained_client_cert, "+cf", certs.ca)
        assert echoed.returncode == 0, echoed.stderr
        assert "1/1 Success" in echoed.stdout
        line = one_line(cli("echo", port, "+tls", certs.chained_client_key, certs.chained_client_leaf,
                            "+cf", certs.ca), "echo")
        assert line.startswith("dimsekit echo: TLS handshake failed: "), line
        assert "unknown ca" in line, line


def test_anonymous_tls_to_a_storescp_that_does_not_ask_for_a_certificate(certs, tmp_path):
    out = tmp_path / "out"
    with storescp(out, "+tls", certs.server_key, certs.server_cert, "-ic") as port:
        stored = cli("store", port, "--anonymous-tls", "--add-cert-file", certs.ca, CT_SMALL)
        assert stored.returncode == 0, stored.stdout + stored.stderr
        echoed = cli("echo", port, "+tla", "+cf", certs.ca)
        assert echoed.returncode == 0, echoed.stderr
    [received] = list(out.iterdir())
    same_data_set(received, CT_SMALL)


def test_an_encrypted_key_is_one_line_not_a_pass_phrase_prompt(certs):
    """Started from a shell (a terminal), a tool given an encrypted key says so and exits:
    OpenSSL's PEM reader would ask for the pass phrase on the terminal and wait."""
    port = free_port()  # nothing listens: the tool must stop before it connects
    for key in (certs.encrypted_key, certs.encrypted_pkcs8_key):
        code, output = run_on_a_terminal([*DIMSEKIT_CLI, "echo", "127.0.0.1", str(port), "-to", "5",
                                          "+tls", str(key), str(certs.node_cert), "+cf", str(certs.ca)],
                                         env={**os.environ, **SAME_CODE}, timeout=30)
        assert "pass phrase:" not in output, output
        assert code == 2, output
        assert output.splitlines() == [
            f"dimsekit echo: tls.private_key: {key} is encrypted (protected by a pass phrase): give an "
            "unencrypted PEM key (dimsekit does not ask for pass phrases)"], output
        assert KEY_PASSWORD.decode() not in output


# -- pynetdicom --------------------------------------------------------------------------------


@contextmanager
def pynetdicom_tls(cert: Path, key: Path, trust: Path | None, ciphers: str | None = None) -> Iterator[int]:
    """A pynetdicom Verification SCP on TLS (an ``ssl.SSLContext``), in threads of this process;
    ``ciphers`` limits its TLS 1.2 cipher suites (and TLS to 1.2)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    if ciphers is not None:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(ciphers)
    if trust is not None:
        context.load_verify_locations(str(trust))
        context.verify_mode = ssl.CERT_REQUIRED
    ae = AE(ae_title="PYTLS")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_supported_context(VERIFICATION)
    server = ae.start_server(("127.0.0.1", 0), block=False, ssl_context=context)
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        ae.shutdown()


def test_echo_to_pynetdicom_over_tls(certs):
    with pynetdicom_tls(certs.server_cert, certs.server_key, certs.ca) as port:
        echoed = cli("echo", port, *mutual(certs), "-aec", "PYTLS", "--repeat", "3")
        assert echoed.returncode == 0, echoed.stderr
        assert "3/3 Success" in echoed.stdout
        # it checks ours: the rogue certificate is refused
        line = one_line(cli("echo", port, "+tls", certs.rogue_key, certs.rogue_cert, "+cf", certs.ca), "echo")
        assert line.startswith("dimsekit echo: TLS handshake failed: "), line


def test_verify_hostname(certs):
    """--verify-hostname: the server's certificate must name the host dialled (the test
    server certificate names 127.0.0.1); one our CA signed for another host is refused then."""
    with pynetdicom_tls(certs.elsewhere_cert, certs.elsewhere_key, None) as port:
        plain = cli("echo", port, "+tla", "+cf", certs.ca)
        assert plain.returncode == 0, plain.stderr  # signed by the CA we trust: enough without the option
        line = one_line(cli("echo", port, "+tla", "+cf", certs.ca, "--verify-hostname"), "echo")
        assert line == "dimsekit echo: TLS handshake failed: the peer's certificate is not for 127.0.0.1 " \
                       "(host name check)", line
    with pynetdicom_tls(certs.server_cert, certs.server_key, certs.ca) as port:
        checked = cli("echo", port, *mutual(certs), "--verify-hostname")
        assert checked.returncode == 0, checked.stderr


def test_a_peer_offering_only_rsa_key_transport_needs_tls_ciphers_compatible(certs):
    """By default the tools offer forward-secret TLS 1.2 suites only (BCP 195); an older peer
    knowing only TLS_RSA_WITH_AES_128_CBC_SHA (PS3.15's AES profile) needs --tls-ciphers compatible."""
    with pynetdicom_tls(certs.rsa_server_cert, certs.rsa_server_key, None, ciphers="AES128-SHA") as port:
        line = one_line(cli("echo", port, "+tla", "+cf", certs.ca), "echo")
        assert line.startswith("dimsekit echo: TLS handshake failed: "), line
        echoed = cli("echo", port, "+tla", "+cf", certs.ca, "--tls-ciphers", "compatible")
        assert echoed.returncode == 0, echoed.stderr


# -- a dimsekit node with a [tls] section --------------------------------------------------------


@pytest.fixture(scope="module")
def tls_node(certs, tmp_path_factory):
    base = tmp_path_factory.mktemp("tls-node")
    tls_port = free_port()
    node = start_node(base, env=SAME_CODE, config=(
        "[tls]\n"
        f"port = {tls_port}\n"
        f'certificate = "{certs.server_cert}"\n'
        f'private_key = "{certs.server_key}"\n'
        f'ca_certificates = ["{certs.ca}"]\n'
    ))
    try:
        node.wait_log(rf"for TLS on 127\.0\.0\.1:{tls_port}", timeout=10)
        node.tls_port = tls_port  # type: ignore[attr-defined]
        yield node
    finally:
        _finish_node(node)


def test_store_find_and_get_over_tls_with_the_node(certs, tls_node, tmp_path):
    port = tls_node.tls_port
    stored = cli("store", port, *mutual(certs), "-aec", "DIMSEKIT", CT_SMALL)
    assert stored.returncode == 0, stored.stdout + stored.stderr
    sent = dcmread(CT_SMALL)
    found = cli("find", port, *mutual(certs), "-aec", "DIMSEKIT", "--json",
                "-k", f"StudyInstanceUID={sent.StudyInstanceUID}", "-k", "PatientName")
    assert found.returncode == 0, found.stderr
    assert f'"{sent.StudyInstanceUID}"' in found.stdout and str(sent.PatientName) in found.stdout
    got_dir = tmp_path / "got"
    got = cli("get", port, *mutual(certs), "-aec", "DIMSEKIT", "-k", f"StudyInstanceUID={sent.StudyInstanceUID}",
              "--out-dir", got_dir)
    assert got.returncode == 0, got.stdout + got.stderr
    [retrieved] = list(got_dir.glob("*.dcm"))
    same_data_set(retrieved, CT_SMALL)
    # the associations were TLS ones on the node's TLS listener
    line = tls_node.wait_log(r"calling=DIMSEKIT called=DIMSEKIT.*released")
    assert "Traceback" not in tls_node.log_text(), line


@pytest.mark.parametrize(("tool", "extra"), [
    ("echo", []), ("store", [CT_SMALL]), ("find", []), ("get", ["-k", "StudyInstanceUID=1.2.3"]),
    ("move", ["-k", "StudyInstanceUID=1.2.3"]), ("mpps create", []), ("commit", [CT_SMALL]),
    ("print", [CT_SMALL]),
])
def test_every_tool_checks_the_servers_certificate(certs, tls_node, tool, extra):
    """Each tool opens its association over TLS and checks what the server shows:
    trusting only the rogue certificate, the node's (our CA's) is refused."""
    result = cli(tool, tls_node.tls_port, "+tls", certs.client_key, certs.client_cert, "+cf", certs.rogue_cert,
                 "-aec", "DIMSEKIT", *extra)
    assert one_line(result, tool) == (
        UNTRUSTED_SERVER.format(tool=tool) + " (self-signed certificate in certificate chain: CN=dimsekit test CA)")


def test_move_receives_its_instances_over_tls_on_its_store_port(certs, tmp_path):
    """With +tls, move --store-port listens for TLS: the node, whose [[remote]] for us says
    tls = true, sends the sub-operations over TLS (its certificate as client, ours as server:
    both have serverAuth and clientAuth, the node certificate of the test CA)."""
    store_port, tls_port = free_port(), free_port()
    (tmp_path / "node").mkdir()
    node = start_node(tmp_path / "node", env=SAME_CODE, config=(
        "[tls]\n"
        f"port = {tls_port}\n"
        f'certificate = "{certs.node_cert}"\n'
        f'private_key = "{certs.node_key}"\n'
        f'ca_certificates = ["{certs.ca}"]\n'
        "[[remote]]\n"
        'ae_title = "MOVESCU"\n'
        'host = "127.0.0.1"\n'
        f"port = {store_port}\n"
        "tls = true\n"
    ))
    try:
        ours = ["+tls", certs.node_key, certs.node_cert, "+cf", certs.ca]
        stored = cli("store", tls_port, *ours, "-aec", "DIMSEKIT", CT_SMALL)
        assert stored.returncode == 0, stored.stdout + stored.stderr
        out = tmp_path / "moved"
        moved = cli("move", tls_port, *ours, "-aec", "DIMSEKIT", "-aet", "MOVESCU", "--store-port", store_port,
                    "--out-dir", out, "-k", f"StudyInstanceUID={dcmread(CT_SMALL).StudyInstanceUID}")
        assert moved.returncode == 0, moved.stdout + moved.stderr
        [received] = list(out.glob("*.dcm"))
        same_data_set(received, CT_SMALL)
        assert "ended: released" in node.wait_log(r"association requestor .*calling=DIMSEKIT called=MOVESCU")
    finally:
        _finish_node(node)


def test_crl_a_revoked_server_certificate_is_refused(certs, tmp_path):
    """+crl: DCMTK's storescp showing a certificate its CA has revoked is refused, and said why."""
    with storescp(tmp_path / "revoked", "+tls", certs.revoked_server_key, certs.revoked_server_cert,
                  "+cf", certs.ca) as port:
        assert cli("echo", port, *mutual(certs)).returncode == 0  # valid otherwise
        for crl in (certs.crl, certs.crl_der):
            assert one_line(cli("echo", port, *mutual(certs), "+crl", crl), "echo") == (
                "dimsekit echo: TLS handshake failed: certificate verify failed (certificate revoked: CN=localhost)")
    with storescp(tmp_path / "good", "+tls", certs.server_key, certs.server_cert, "+cf", certs.ca) as port:
        echoed = cli("echo", port, *mutual(certs), "+crl", certs.crl, "+cra")
        assert echoed.returncode == 0, echoed.stderr
        # a CRL past its next update refuses every certificate of its CA
        assert one_line(cli("echo", port, *mutual(certs), "+crl", certs.expired_crl), "echo").endswith(
            "certificate verify failed (CRL has expired: CN=localhost)")
