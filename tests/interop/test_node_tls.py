"""DICOM over TLS (PS3.15 B.1) with a dimsekit node under twistd.

* DCMTK (storescu, echoscu) and pynetdicom as TLS clients of the node's TLS
  port: what they send arrives as sent; an untrusted certificate, no TLS at
  all, no certificate are refused, each with its line in the node's log; an
  anonymous client is let in when ``verify_peer = false``.
* The node as TLS client: C-MOVE sub-operations to a ``[[remote]]`` with
  ``tls = true`` (DCMTK storescp +tls), with the node's certificate as its
  client certificate; a destination whose certificate it does not trust, or
  that does not speak TLS, fails the sub-operations with a line saying why.
  A storage commitment report to a ``tls = true`` requestor (pynetdicom
  listening with TLS).
* Start-up: an unusable ``[tls]`` key, or a TLS port in use, stops the node
  with one line.

The certificates are made fresh (:mod:`tests.tlscerts`).  The node uses the
"node" certificate: a node presents its certificate as a client too, so it
carries both serverAuth and clientAuth (DCMTK refuses a client certificate
whose Extended Key Usage lacks clientAuth).
"""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt

from dimsekit.datasets import part10_info
from tests.dimse_e2e.test_tls import python_client
from tests.interop.conftest import (
    TWISTD,
    VERIFICATION,
    Node,
    _finish_node,
    dcmtk,
    echoscu,
    free_port,
    run,
    start_node,
    stop,
    tiny_ct,
    wait_for_port,
)
from tests.interop.test_stalled_peer import flood_without_reading
from tests.interop.test_storage_support import (
    RecordingProxy,
    build_corpus,
    index_rows,
    stores_on_the_wire,
    storescu_config,
    temp_files,
    wait_until,
)
from tests.terminal import run_on_a_terminal
from tests.tlscerts import TLSFiles, make_tls_files

pytestmark = pytest.mark.interop

CT = "1.2.840.10008.5.1.4.1.1.2"
STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return make_tls_files(tmp_path_factory.mktemp("certs"))


def tls_section(certs: TLSFiles, port: int, *, cert: Path | None = None, key: Path | None = None,
                **extra: Any) -> str:
    """``[tls]`` with the node certificate (or ``cert`` and ``key``), trusting the test CA."""
    lines = [
        "[tls]",
        f'certificate = "{cert or certs.node_cert}"',
        f'private_key = "{key or certs.node_key}"',
        f'ca_certificates = ["{certs.ca}"]',
        f"port = {port}",
    ]
    lines += [f"{key} = {str(value).lower() if isinstance(value, bool) else value}" for key, value in extra.items()]
    return "\n".join(lines) + "\n"


def remote(title: str, port: int, *, tls: bool) -> str:
    return f'\n[[remote]]\nae_title = "{title}"\nhost = "127.0.0.1"\nport = {port}\ntls = {str(tls).lower()}\n'


class TLSNode:
    """A node listening on a TCP port (``port``) and a TLS one (``tls_port``)."""

    def __init__(self, node: Node, tls_port: int, remotes: dict[str, int]) -> None:
        self.node = node
        self.port = node.port
        self.tls_port = tls_port
        self.remotes = remotes
        self.data = node.workdir / "data"

    def tls_failures(self, reason: str = "") -> int:
        """Association lines ending in a failed TLS handshake (with ``reason``)."""
        return len(re.findall(rf"ended: connection closed: TLS handshake failed: {re.escape(reason)}",
                              self.node.log_text()))


def start_tls_node(directory: Path, certs: TLSFiles, remotes: dict[str, tuple[int, bool]] | None = None,
                   extra: str = "", **tls: Any) -> TLSNode:
    """A node with ``[tls]`` (``tls`` adds keys), ``[[remote]]`` entries {title: (port, tls)},
    and ``extra`` TOML."""
    tls_port = free_port()
    config = (
        '[node]\nae_title = "DIMSEKIT"\ndata_dir = "data"\n\n[plugins.archive]\nfsync = false\n\n'
        + extra + "\n"
        + tls_section(certs, tls_port, **tls)
        + "".join(remote(title, port, tls=secure) for title, (port, secure) in (remotes or {}).items())
    )
    node = start_node(directory, config=config)
    try:
        # the node says it listens on both (once both listen); no probe connection to the TLS port
        node.wait_log(rf"listening on 127\.0\.0\.1:{node.port} and for TLS on 127\.0\.0\.1:{tls_port} ", timeout=10)
    except BaseException:
        stop(node.proc)
        raise
    return TLSNode(node, tls_port, {title: port for title, (port, _) in (remotes or {}).items()})


@pytest.fixture(scope="module")
def tls_node(tmp_path_factory: pytest.TempPathFactory, certs: TLSFiles) -> Iterator[TLSNode]:
    """A node with ``[tls]`` (peers must present a certificate of the test CA) and three
    C-MOVE destinations reached with TLS: TLSSCP (trusted), ROGUESCP (a self-signed
    certificate), PLAINSCP (speaks no TLS)."""
    remotes = {"TLSSCP": (free_port(), True), "ROGUESCP": (free_port(), True), "PLAINSCP": (free_port(), True)}
    node = start_tls_node(tmp_path_factory.mktemp("tlsnode"), certs, remotes)
    yield node
    _finish_node(node.node)


def tls_args(certs: TLSFiles, which: str = "client") -> list[str]:
    """DCMTK's TLS options: our key and certificate, the CA we trust."""
    key, cert = {"client": (certs.client_key, certs.client_cert), "rogue": (certs.rogue_key, certs.rogue_cert),
                 "server": (certs.server_key, certs.server_cert)}[which]
    return ["+tls", str(key), str(cert), "+cf", str(certs.ca)]


def healthy(node: TLSNode, certs: TLSFiles) -> None:
    """The node runs, answers C-ECHO on both ports, and logged no traceback."""
    node.node.assert_healthy()
    result = echoscu(node.tls_port, *tls_args(certs))
    assert result.returncode == 0, result.stdout + result.stderr + node.node.log_text()


def _dataset_bytes(path: Path) -> bytes:
    return path.read_bytes()[part10_info(path).dataset_offset :]


def ct_image(study: str | None = None, patient: str = "TLS-1") -> Dataset:
    """A tiny CT image (4x4 pixels) with File Meta Information."""
    return tiny_ct(study=study, patient_id=patient, patient_name="Tls^Test")


# -- DCMTK clients of the TLS port -----------------------------------------------------------------------


def test_storescu_over_tls_every_file_arrives_as_sent(tls_node, certs, tmp_path):
    corpus = build_corpus(tmp_path / "corpus")
    profile = storescu_config(corpus, tmp_path / "storescu.cfg")
    storescu = [dcmtk("storescu"), "-xf", str(tmp_path / "storescu.cfg"), profile, "+sd", "-aec", "DIMSEKIT"]

    # What storescu sends for these files (it re-encodes them: group lengths ...): recorded
    # on a plain connection to a DCMTK storescp that accepts everything and keeps nothing.
    sink_port = free_port()
    sink = subprocess.Popen([dcmtk("storescp"), "-aet", "DIMSEKIT", "+xa", "--ignore", str(sink_port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for_port(sink_port, 10, sink)
        with RecordingProxy(sink_port) as proxy:
            result = run([*storescu, "-aet", "REFERENCE", "127.0.0.1", str(proxy.port), str(tmp_path / "corpus")],
                         timeout=120)
            assert result.returncode == 0, result.stdout + result.stderr
            sent, _ = stores_on_the_wire(bytes(proxy.recordings[0]))
    finally:
        stop(sink)
    sources = {part10_info(p).sop_instance_uid: p for p in corpus}
    assert set(sent) == set(sources)

    result = run([*storescu, "-aet", "TLSSTORE", *tls_args(certs), "127.0.0.1", str(tls_node.tls_port),
                  str(tmp_path / "corpus")], timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output + tls_node.node.log_text()
    assert "Store Failed" not in output, output
    tls_node.node.wait_log(rf"calling=TLSSTORE called=DIMSEKIT .* handled=\[C-STORE {len(corpus)}\] .*released")

    def indexed() -> dict[str, Any] | None:  # the rows come in batches, 50 ms after an answer at the latest
        rows = {r["sop_instance_uid"]: r for r in index_rows(tls_node.data)}
        return rows if set(sources) <= set(rows) else None

    rows = wait_until(indexed, what="every instance sent over TLS indexed")
    for uid, source in sources.items():
        row = rows[uid]
        path = tls_node.data / row["path"]
        assert _dataset_bytes(path) == sent[uid], f"{source.name}: the stored data set differs from what was sent"
        assert row["transfer_syntax_uid"] == part10_info(source).transfer_syntax, source.name
        assert row["source_ae"] == "TLSSTORE"
    assert temp_files(tls_node.data) == []

    # the plain TCP port works beside it
    extra = ct_image()
    extra.save_as(tmp_path / "plain.dcm", enforce_file_format=True)
    result = run([dcmtk("storescu"), "-aec", "DIMSEKIT", "-aet", "PLAINSTORE", "127.0.0.1", str(tls_node.port),
                  str(tmp_path / "plain.dcm")])
    assert result.returncode == 0, result.stdout + result.stderr
    row = wait_until(lambda: index_rows(tls_node.data, "SELECT * FROM instance WHERE sop_instance_uid = ?",
                                        extra.SOPInstanceUID), what="the instance sent on the plain port indexed")
    assert row[0]["source_ae"] == "PLAINSTORE"
    healthy(tls_node, certs)


@pytest.mark.parametrize("client, logged", [
    # a certificate of no CA we trust
    ("rogue", "certificate verify failed"),
    # no TLS at all: an A-ASSOCIATE-RQ where the ClientHello should be
    ("plain", "wrong version number (the peer does not speak TLS on this connection)"),
    # TLS without a certificate: the node requires one (verify_peer)
    ("anonymous", "peer did not return a certificate"),
])
def test_clients_the_tls_port_refuses(tls_node, certs, client, logged):
    before = tls_node.tls_failures()
    matching = tls_node.tls_failures(logged)
    args = {"rogue": tls_args(certs, "rogue"), "plain": [], "anonymous": ["+tla", "+cf", str(certs.ca)]}[client]
    result = echoscu(tls_node.tls_port, "-aet", "REFUSED", "-to", "10", "-ta", "10", *args)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Echo Response" not in output, output
    wait_until(lambda: tls_node.tls_failures(logged) == matching + 1, what=f"a line 'TLS handshake failed: {logged}'")
    assert tls_node.tls_failures() == before + 1, tls_node.node.log_text()
    assert "calling=REFUSED" not in tls_node.node.log_text()  # no association came of it
    healthy(tls_node, certs)


def test_an_anonymous_client_is_accepted_when_verify_peer_is_false(tmp_path, certs):
    node = start_tls_node(tmp_path, certs, verify_peer=False)
    try:
        # +tla: no certificate of ours; -ic: nor a check of the node's
        result = echoscu(node.tls_port, "-aet", "ANONYMOUS", "+tla", "-ic")
        assert result.returncode == 0, result.stdout + result.stderr + node.node.log_text()
        node.node.wait_log(r"calling=ANONYMOUS called=DIMSEKIT .*handled=\[C-ECHO 1\] .*released")
        healthy(node, certs)  # a client with a certificate still gets in
    finally:
        _finish_node(node.node)


@pytest.mark.parametrize("minimum, accepted", [("1.2", ("1.2", "1.3")), ("1.3", ("1.3",))])
def test_minimum_version(tmp_path, certs, minimum, accepted):
    """[tls] minimum_version reaches the node's listener: a client limited to one version
    (Python's ssl; 1.0 and 1.1 offered at OpenSSL security level 0) is refused below it."""
    node = start_tls_node(tmp_path, certs, minimum_version=f'"{minimum}"')
    try:
        refused = 0
        for version in ("1.0", "1.1", "1.2", "1.3"):
            got = python_client(node.tls_port, version, certs, called="DIMSEKIT")
            if version in accepted:
                assert got == (f"TLSv{version}", "AC"), (version, got, node.node.log_text())
            else:
                refused += 1
                assert got[0] == "refused" and "PROTOCOL_VERSION" in got[1].upper(), (version, got)
        wait_until(lambda: node.tls_failures("unsupported protocol") == refused, what="the refused handshakes' lines")
        node.node.assert_healthy()
    finally:
        _finish_node(node.node)


def test_certificate_files_with_their_intermediate(tmp_path, certs):
    """The node's certificate file holds its certificate then the intermediate CA that
    signed it: DCMTK, trusting the root CA only, accepts it; and DCMTK's client
    certificate, also of the intermediate, sent with it, is accepted by the node
    (which trusts the root only).  Without the intermediate, refused."""
    node = start_tls_node(tmp_path, certs, cert=certs.chained_server_cert, key=certs.chained_server_key)
    try:
        chained = ["+tls", str(certs.chained_client_key), str(certs.chained_client_cert), "+cf", str(certs.ca)]
        result = echoscu(node.tls_port, "-aet", "CHAINED", *chained)
        assert result.returncode == 0, result.stdout + result.stderr + node.node.log_text()
        node.node.wait_log(r"calling=CHAINED called=DIMSEKIT .*handled=\[C-ECHO 1\] .*released")
        leaf_only = ["+tls", str(certs.chained_client_key), str(certs.chained_client_leaf), "+cf", str(certs.ca)]
        refused = echoscu(node.tls_port, "-aet", "LEAFONLY", *leaf_only)
        assert refused.returncode != 0, refused.stdout + refused.stderr
        wait_until(lambda: node.tls_failures("certificate verify failed") == 1, what="the refused handshake's line")
        node.node.assert_healthy()
    finally:
        _finish_node(node.node)


def test_revoked_client_certificates_are_refused(tmp_path, certs):
    """[tls] crls: DCMTK's echoscu with a certificate the CA revoked is refused, and the
    node's line says so; the same CA's valid certificates still get in."""
    node = start_tls_node(tmp_path, certs, crls=f'["{certs.crl}"]')
    try:
        revoked = ["+tls", str(certs.revoked_client_key), str(certs.revoked_client_cert), "+cf", str(certs.ca)]
        result = echoscu(node.tls_port, "-aet", "REVOKED", *revoked)
        assert result.returncode != 0, result.stdout + result.stderr
        wait_until(lambda: node.tls_failures("certificate verify failed (certificate revoked: "
                                             "CN=dimsekit test client)") == 1, what="the refused handshake's line")
        assert "calling=REVOKED" not in node.node.log_text()
        healthy(node, certs)
    finally:
        _finish_node(node.node)


# -- pynetdicom as a TLS client ---------------------------------------------------------------------------


def client_context(certs: TLSFiles) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # checks the server's certificate and host name
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cafile=str(certs.ca))
    context.load_cert_chain(str(certs.client_cert), str(certs.client_key))
    return context


def test_a_peer_that_sends_requests_and_reads_nothing_is_held_back_over_tls_too(tls_node, certs):
    """The node stops reading a TLS peer that takes none of its responses (the TLS transport
    relays the pause to the TCP connection under it), and answers them all once it reads."""
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.connect(("127.0.0.1", tls_node.tls_port))
    sock = client_context(certs).wrap_socket(raw, server_hostname="localhost")
    flood_without_reading(sock, tls_node.node.proc.pid, calling="TLSFLOODER")
    tls_node.node.wait_log(r"calling=TLSFLOODER .*ended: released by the peer")
    healthy(tls_node, certs)


def test_pynetdicom_echo_and_store_over_tls(tls_node, certs):
    ae = AE(ae_title="PYNTLS")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(VERIFICATION)
    ae.add_requested_context(CT, ExplicitVRLittleEndian)
    image = ct_image()
    try:
        assoc = ae.associate("127.0.0.1", tls_node.tls_port, ae_title="DIMSEKIT",
                             tls_args=(client_context(certs), "localhost"))
        assert assoc.is_established, "pynetdicom could not associate over TLS\n" + tls_node.node.log_text()
        try:
            echo = assoc.send_c_echo()
            store = assoc.send_c_store(image)
        finally:
            assoc.release()
        assert assoc.is_released
    finally:
        ae.shutdown()
    assert echo and echo.Status == 0x0000, echo
    assert store and store.Status == 0x0000, store
    tls_node.node.wait_log(r"calling=PYNTLS called=DIMSEKIT .*handled=\[C-ECHO 1, C-STORE 1\] .*released")
    row = wait_until(lambda: index_rows(tls_node.data, "SELECT * FROM instance WHERE sop_instance_uid = ?",
                                        image.SOPInstanceUID), what="the instance indexed")
    assert row[0]["source_ae"] == "PYNTLS"
    kept = dcmread(tls_node.data / row[0]["path"])
    for element in image:
        assert kept[element.tag].value == element.value, element.keyword
    healthy(tls_node, certs)


# -- the node as a TLS client: C-MOVE sub-operations ----------------------------------------------------------


def store_plain(node: TLSNode, directory: Path, count: int) -> tuple[str, list[Dataset]]:
    """``count`` images of one new study, stored on the node's plain port; (study UID, the images)."""
    study = str(generate_uid())
    directory.mkdir()
    images = [ct_image(study, patient="TLS-MOVE") for _ in range(count)]
    for n, image in enumerate(images):
        image.save_as(directory / f"{n}.dcm", enforce_file_format=True)
    result = run([dcmtk("storescu"), "-aec", "DIMSEKIT", "+sd", "127.0.0.1", str(node.port), str(directory)])
    assert result.returncode == 0, result.stdout + result.stderr
    return study, images


def movescu(node: TLSNode, destination: str, study: str) -> str:
    result = run([dcmtk("movescu"), "-v", "-S", "-aec", "DIMSEKIT", "-aem", destination,
                  "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
                  "127.0.0.1", str(node.port)])
    return result.stdout + result.stderr


def tls_storescp(port: int, title: str, received: Path, tls: list[str]) -> subprocess.Popen:
    received.mkdir()
    scp = subprocess.Popen([dcmtk("storescp"), "-v", "-aet", title, "-od", str(received), *tls, str(port)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    wait_for_port(port, 10, scp)  # a plain connection, closed at once: storescp goes on listening
    return scp


def test_c_move_to_a_tls_destination(tls_node, certs, tmp_path):
    study, images = store_plain(tls_node, tmp_path / "images", 3)
    scp = tls_storescp(tls_node.remotes["TLSSCP"], "TLSSCP", tmp_path / "received", tls_args(certs, "server"))
    try:
        output = movescu(tls_node, "TLSSCP", study)
    finally:
        stop(scp)
    scp_output = scp.stdout.read().decode(errors="replace") if scp.stdout else ""
    assert "Received Final Move Response (Success)" in output, output + scp_output + tls_node.node.log_text()
    received = {}
    for path in (tmp_path / "received").iterdir():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = dcmread(path)
        received[ds.SOPInstanceUID] = ds
    assert set(received) == {image.SOPInstanceUID for image in images}, scp_output
    for image in images:
        got = received[image.SOPInstanceUID]
        assert got.PixelData == image.PixelData and got.PatientID == "TLS-MOVE"
    # the node associated with its certificate (storescp checked it against the CA) and released
    tls_node.node.wait_log(rf"association requestor peer=127\.0\.0\.1:{tls_node.remotes['TLSSCP']} "
                           r"calling=DIMSEKIT called=TLSSCP .*ended: released")
    tls_node.node.wait_log(r"C-MOVE of 3 instance\(s\) for MOVESCU: 3 completed, 0 failed")
    healthy(tls_node, certs)


@pytest.mark.parametrize("destination, scp_tls, reason", [
    # its certificate is self-signed: the node does not trust it
    ("ROGUESCP", "rogue", "TLS handshake failed: certificate verify failed (self-signed certificate: CN=localhost)"),
    # it speaks no TLS (storescp closes the connection on the ClientHello)
    ("PLAINSCP", None, "TLS handshake failed: the connection closed before the handshake was done "
                       "(does the peer speak TLS on this connection?)"),
])
def test_c_move_to_a_tls_destination_the_node_cannot_reach_with_tls_fails(tls_node, certs, tmp_path, destination,
                                                                          scp_tls, reason):
    study, _ = store_plain(tls_node, tmp_path / "images", 1)
    scp = tls_storescp(tls_node.remotes[destination], destination, tmp_path / "received",
                       tls_args(certs, scp_tls) if scp_tls else [])
    try:
        output = movescu(tls_node, destination, study)
    finally:
        stop(scp)
    # A702: every sub-operation failed (DCMTK names it "Refused: OutOfResourcesSubOperations")
    assert "Received Final Move Response (Refused: OutOfResourcesSubOperations)" in output, output
    assert list((tmp_path / "received").iterdir()) == []
    line = tls_node.node.wait_log(rf"C-MOVE to {destination}: cannot associate")
    assert line.endswith(f"cannot associate ({reason}); 1 sub-operation(s) failed"), line
    line = tls_node.node.wait_log(rf"association requestor peer=127\.0\.0\.1:{tls_node.remotes[destination]} ")
    assert line.endswith(f"ended: aborted: {reason}"), line
    healthy(tls_node, certs)


# -- the node as a TLS client: the storage commitment report ----------------------------------------------------


class TLSReportListener:
    """pynetdicom listening with TLS (a certificate of the test CA required from the caller)
    as the SCU of Storage Commitment, for the report."""

    def __init__(self, certs: TLSFiles, title: str = "PYNSCU") -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=str(certs.ca))
        context.load_cert_chain(str(certs.server_cert), str(certs.server_key))
        self.reports: list[Any] = []
        self.arrived = threading.Event()
        self.ae = AE(ae_title=title)
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = 10
        self.ae.add_supported_context(STORAGE_COMMITMENT, ExplicitVRLittleEndian, scu_role=False, scp_role=True)
        self.server = self.ae.start_server(("127.0.0.1", 0), block=False, ssl_context=context,
                                           evt_handlers=[(evt.EVT_N_EVENT_REPORT, self._handle)])
        self.port = self.server.server_address[1]

    def _handle(self, event: Any) -> tuple[int, None]:
        self.reports.append((event.assoc.requestor.ae_title, event.event_type, event.event_information))
        self.arrived.set()
        return 0x0000, None

    def close(self) -> None:
        self.server.shutdown()
        self.ae.shutdown()


def test_storage_commitment_report_to_a_tls_requestor(tmp_path, certs):
    listener = TLSReportListener(certs)
    try:
        # report_delay: the SCU has surely released by then, so the report goes on a new association
        node = start_tls_node(tmp_path, certs, {"PYNSCU": (listener.port, True)},
                              extra="[plugins.commitment]\nreport_delay = 1\n")
        try:
            image = ct_image()
            ae = AE(ae_title="PYNSCU")
            ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
            ae.add_requested_context(CT, ExplicitVRLittleEndian)
            ae.add_requested_context(STORAGE_COMMITMENT, ExplicitVRLittleEndian)
            try:
                assoc = ae.associate("127.0.0.1", node.port, ae_title="DIMSEKIT")
                assert assoc.is_established
                try:
                    assert assoc.send_c_store(image).Status == 0x0000
                    info = Dataset()
                    info.TransactionUID = txn = str(generate_uid())
                    item = Dataset()
                    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = CT, image.SOPInstanceUID
                    info.ReferencedSOPSequence = [item]
                    status, _ = assoc.send_n_action(info, 1, STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE)
                    assert status is not None and status.Status == 0x0000, status
                finally:
                    assoc.release()
            finally:
                ae.shutdown()
            assert listener.arrived.wait(20), "no report over TLS\n" + node.node.log_text()
            calling, event_type, report = listener.reports[0]
            assert (calling, event_type, report.TransactionUID) == ("DIMSEKIT", 1, txn)
            assert {str(i.ReferencedSOPInstanceUID) for i in report.ReferencedSOPSequence} == {image.SOPInstanceUID}
            node.node.wait_log(rf"storage commitment {txn}: report .* delivered to PYNSCU on a new association")
            healthy(node, certs)
        finally:
            _finish_node(node.node)
    finally:
        listener.close()


# -- start-up ------------------------------------------------------------------------------------------------


def twistd_with(tmp_path: Path, config: str, port: int | None = None) -> tuple[int, str]:
    (tmp_path / "node.toml").write_text(config)
    result = run([TWISTD, "-n", "--pidfile", "", "dimsekit", "--port", str(port or free_port()),
                  "--interface", "127.0.0.1", "--data-dir", str(tmp_path / "data"),
                  "--config", str(tmp_path / "node.toml")], timeout=30)
    return result.returncode, result.stdout + result.stderr


@pytest.mark.parametrize("key, message", [
    ("missing.key", r"dimsekit: tls\.private_key: cannot read \S*missing\.key \(No such file or directory\)"),
    ("client.key", r"dimsekit: tls\.private_key: \S*client\.key is not the key of the certificate in \S*node\.crt"),
])
def test_an_unusable_tls_key_stops_start_up_with_one_line(tmp_path, certs, key, message):
    config = tls_section(certs, free_port()).replace(str(certs.node_key), str(certs.directory / key))
    code, output = twistd_with(tmp_path, config)
    assert code == 1, output
    assert len(re.findall(message, output)) == 1, output
    assert "Traceback" not in output, output
    assert not (tmp_path / "data").exists()  # nothing started


def test_an_encrypted_tls_key_stops_start_up_with_one_line_not_a_prompt(tmp_path, certs):
    """twistd -n started from a shell (a terminal): OpenSSL's PEM reader would ask for the
    key's pass phrase there and wait for ever; the node says the key is encrypted and stops."""
    config = tls_section(certs, free_port()).replace(str(certs.node_key), str(certs.encrypted_key))
    (tmp_path / "node.toml").write_text(config)
    code, output = run_on_a_terminal([TWISTD, "-n", "--pidfile", "", "dimsekit", "--port", str(free_port()),
                                      "--interface", "127.0.0.1", "--data-dir", str(tmp_path / "data"),
                                      "--config", str(tmp_path / "node.toml")], timeout=30)
    assert "pass phrase:" not in output, output
    assert code == 1, output
    message = rf"dimsekit: tls\.private_key: {re.escape(str(certs.encrypted_key))} is encrypted \(protected by a " \
              r"pass phrase\): give an unencrypted PEM key"
    assert len(re.findall(message, output)) == 1, output
    assert "Traceback" not in output, output
    assert not (tmp_path / "data").exists()  # nothing started


def test_a_tls_port_in_use_stops_start_up_with_one_line(tmp_path, certs):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        tls_port = taken.getsockname()[1]
        port = free_port()
        code, output = twistd_with(tmp_path, tls_section(certs, tls_port), port)
    assert code == 1, output
    lines = [line for line in output.splitlines() if "dimsekit: cannot listen on" in line]
    assert len(lines) == 1, output
    assert f"cannot listen on tcp:{port}:interface=127.0.0.1 and TLS port {tls_port}:interface=127.0.0.1: " \
           f"Couldn't listen on 127.0.0.1:{tls_port}: [Errno 98] Address already in use" in lines[0], output
    assert "Traceback" not in output, output
