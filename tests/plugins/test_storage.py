"""The storage SCP plugin, in process: two application entities joined in memory
(dimsekit.testing.AssociationPair), the real archive on a temporary directory,
its worker threads reporting back through a fake reactor."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from twisted.internet.defer import Deferred

from dimsekit.config import ConfigError, from_mapping
from dimsekit.datasets import part10_info
from dimsekit.dimse.codec import encode_command
from dimsekit.dimse.commands import CommandField, make_command
from dimsekit.hookspecs import hookimpl
from dimsekit.plugin import make_plugin_manager
from dimsekit.registry import UNCOMPRESSED_TRANSFER_SYNTAXES, Registry
from dimsekit.testing import AssociationPair
from dimsekit.uids import storage_sop_classes
from dimsekit_plugins import storage
from dimsekit_plugins.archive import Archive, OutOfResources
from tests.plugins.test_archive_support import (
    CT_IMAGE_STORAGE,
    DEFLATED,
    EXPLICIT_VR_LE,
    MR_IMAGE_STORAGE,
    ThreadedClock,
    encode,
    make_dataset,
    wait_for,
)

JPEG2000 = "1.2.840.10008.1.2.4.91"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


class Provides:
    """An archive backend plugin: hands out the archive it was given (or None)."""

    def __init__(self, archive: Any) -> None:
        self.archive = archive

    @hookimpl
    def dimsekit_archive(self, config):
        return self.archive


class Records:
    """Collects dimsekit_on_instance_stored calls."""

    def __init__(self, fail: bool = False) -> None:
        self.instances: list[Any] = []
        self.fail = fail
        self.called: Deferred = Deferred()

    @hookimpl
    def dimsekit_on_instance_stored(self, instance):
        self.instances.append(instance)
        if not self.called.called:
            self.called.callback(instance)
        if self.fail:
            raise RuntimeError("a forwarder blew up")


class Node:
    """An acceptor with the storage plugin and an archive, a requestor, one association."""

    def __init__(self, root: Path, *, archive_kwargs: dict | None = None, no_archive: bool = False,
                 recorder: Records | None = None, contexts: list | None = None, config: dict | None = None) -> None:
        self.clock = ThreadedClock()
        self.root = root
        self.archive = None if no_archive else Archive(root, reactor=self.clock, min_free_mb=0, **(archive_kwargs or {}))
        self.records = recorder or Records()
        pm = make_plugin_manager(load_entrypoints=False, plugins=[storage, Provides(self.archive), self.records])
        self.pair = AssociationPair(pm, reactor=self.clock, acceptor_config=from_mapping(config or {}))
        self.assoc = self.pair.associate(contexts or [
            (CT_IMAGE_STORAGE, [EXPLICIT_VR_LE]),
            (CT_IMAGE_STORAGE, [DEFLATED]),
            (MR_IMAGE_STORAGE, [EXPLICIT_VR_LE]),
            (SECONDARY_CAPTURE, [JPEG2000]),
        ])

    def wait(self, d: Deferred) -> Any:
        return self.clock.wait(d, pump=self.pair.pump)

    def store(self, ds) -> Any:
        return self.wait(self.assoc.store(ds))

    def raw_store(self, data: bytes, *, sop_instance: str, sop_class: str = CT_IMAGE_STORAGE,
                  transfer_syntax: str = EXPLICIT_VR_LE) -> Any:
        context = self.assoc.context_for(sop_class, transfer_syntax)
        command = {
            "CommandField": CommandField.C_STORE_RQ,
            "AffectedSOPClassUID": sop_class,
            "AffectedSOPInstanceUID": sop_instance,
            "Priority": 0,
            "CommandDataSetType": 0x0001,
        }
        return self.wait(self.assoc.start_operation(context, command, data).result)

    def files(self) -> list[Path]:
        return sorted(p for p in self.root.rglob("*") if p.is_file() and p.suffix in (".dcm", ".part"))

    def close(self) -> None:
        if self.archive is not None:
            self.clock.wait(self.archive.close())


@pytest.fixture
def node(tmp_path):
    n = Node(tmp_path / "data")
    yield n
    n.close()


# -- declaration and settings -----------------------------------------------------------------------


def test_every_storage_sop_class_from_pydicom_is_served_with_a_sink_factory():
    storage.dimsekit_configure(config=from_mapping({}))
    registry = Registry.from_plugins(make_plugin_manager(load_entrypoints=False, plugins=[storage]))
    classes = storage_sop_classes()
    assert len(classes) > 100
    assert set(registry.supported) == {str(uid) for uid in classes}
    for uid in (CT_IMAGE_STORAGE, MR_IMAGE_STORAGE, SECONDARY_CAPTURE, "1.2.840.10008.5.1.4.1.1.88.33"):
        assert registry.handler("C-STORE", uid) is storage.handle_store
        assert registry.sink_factory("C-STORE", uid) is storage.open_sink
        assert registry.supported[uid].scp_role
    syntaxes = registry.supported[CT_IMAGE_STORAGE].transfer_syntaxes
    assert syntaxes == storage.DEFAULT_TRANSFER_SYNTAXES
    assert set(UNCOMPRESSED_TRANSFER_SYNTAXES) <= set(syntaxes)
    for compressed in ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.70",
                       "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.90",
                       JPEG2000, "1.2.840.10008.1.2.5"):
        assert compressed in syntaxes
    # never prefer a lossy syntax over an uncompressed one
    assert syntaxes.index(EXPLICIT_VR_LE) < syntaxes.index("1.2.840.10008.1.2.4.50")


def test_transfer_syntaxes_come_from_the_configuration():
    config = from_mapping({"plugins": {"storage": {"transfer_syntaxes": ["JPEGBaseline8Bit", EXPLICIT_VR_LE]}}})
    storage.dimsekit_configure(config=config)
    try:
        (service,) = storage.dimsekit_service_classes()
        assert service.transfer_syntaxes == ("1.2.840.10008.1.2.4.50", EXPLICIT_VR_LE)
    finally:
        storage.dimsekit_configure(config=from_mapping({}))


@pytest.mark.parametrize("section, key", [
    ({"transfer_syntaxes": ["NoSuchSyntax"]}, "plugins.storage.transfer_syntaxes"),
    ({"transfer_syntaxes": ["1.2.3.4"]}, "plugins.storage.transfer_syntaxes"),
    ({"transfer_syntaxes": [CT_IMAGE_STORAGE]}, "plugins.storage.transfer_syntaxes"),
    ({"transfer_syntaxes": []}, "plugins.storage.transfer_syntaxes"),
    ({"transfer_syntaxes": "1.2.840.10008.1.2"}, "plugins.storage.transfer_syntaxes"),
    ({"duplicates": "last"}, "plugins.storage.duplicates"),
    ({"min_free_mb": -5}, "plugins.storage.min_free_mb"),
    ({"min_free": 5}, "plugins.storage.min_free"),
])
def test_bad_storage_settings_name_the_key(section, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        storage.dimsekit_configure(config=from_mapping({"plugins": {"storage": section}}))


def test_status_for_errors():
    assert storage.status_for(OutOfResources("full")) == (0xA700, {"ErrorComment": "full"})
    assert storage.status_for(OSError("disk")) [0] == 0xA700
    assert storage.status_for(ValueError("bug"))[0] == 0x0110

    class Theirs(Exception):
        status = 0xA901
        offending = (0x00100010,)

    assert storage.status_for(Theirs("x")) == (0xA901, {"ErrorComment": "x", "OffendingElement": [0x00100010]})

    class Refused(Exception):
        status = 0xA702
        offending = (0x00100010,)

    assert "OffendingElement" not in storage.status_for(Refused("x"))[1]  # PS3.4 B.2.3: not with A7xx

    class Nonsense(Exception):
        status = 0  # an exception cannot mean success

    assert storage.status_for(Nonsense())[0] == 0x0110


# -- storing ----------------------------------------------------------------------------------------------


def test_a_stored_instance_is_durable_indexed_and_announced(node):
    ds = make_dataset()
    response = node.store(ds)
    assert response.status == 0x0000
    (path,) = node.files()
    assert path == node.root / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
    assert path.read_bytes()[part10_info(path).dataset_offset :] == encode(ds, EXPLICIT_VR_LE)
    (instance,) = node.records.instances
    assert instance.sop_instance_uid == ds.SOPInstanceUID and Path(instance.path) == path
    assert instance.source_ae == "REQUESTOR"
    found = node.clock.wait(node.archive.lookup(ds.SOPInstanceUID))
    assert found.transfer_syntax == EXPLICIT_VR_LE


def test_a_compressed_file_is_stored_byte_for_byte_as_sent(node):
    source = Path(get_testdata_file("JPEG2000.dcm"))
    info = part10_info(source)
    assert (info.sop_class_uid, info.transfer_syntax) == (SECONDARY_CAPTURE, JPEG2000)
    assert node.store(source).status == 0x0000
    (path,) = node.files()
    stored = part10_info(path)
    assert stored.transfer_syntax == JPEG2000
    assert path.read_bytes()[stored.dataset_offset :] == source.read_bytes()[info.dataset_offset :]
    assert dcmread(path).PixelData == dcmread(source).PixelData


def test_many_instances_on_one_association(node):
    datasets = [make_dataset() for _ in range(20)]
    responses = [node.wait(node.assoc.store(ds)) for ds in datasets]
    assert {r.status for r in responses} == {0x0000}
    assert len(node.files()) == 20
    assert len(node.records.instances) == 20


# -- refusals -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("uid", ["1..2", "..", ".1", "1."])
def test_an_unusable_sop_instance_uid_is_refused_and_nothing_is_written(node, tmp_path, uid):
    before = sorted(tmp_path.rglob("*"))
    ds = make_dataset()
    response = node.raw_store(encode(ds), sop_instance=uid)
    assert response.status == 0x0117
    assert "not a UID" in response.ErrorComment
    assert [p for p in sorted(tmp_path.rglob("*")) if p not in before and p.is_file()] == []
    assert node.records.instances == []


def test_a_data_set_of_another_instance_does_not_match(node):
    ds = make_dataset()
    response = node.raw_store(encode(ds), sop_instance=generate_uid())
    assert response.status == 0xA900
    assert tuple(response.OffendingElement) == (0x00080018,)
    assert node.files() == [] and node.records.instances == []


def test_an_instance_on_the_presentation_context_of_another_sop_class_is_refused(node):
    # PS3.7 D.3.2: a SOP class is used on a presentation context negotiated for
    # it.  An MR instance on the CT context is not stored (whatever its data set).
    ds = make_dataset(sop_class=MR_IMAGE_STORAGE, modality="MR")
    context = node.assoc.context_for(CT_IMAGE_STORAGE, EXPLICIT_VR_LE)
    command = {
        "CommandField": CommandField.C_STORE_RQ,
        "AffectedSOPClassUID": MR_IMAGE_STORAGE,
        "AffectedSOPInstanceUID": ds.SOPInstanceUID,
        "Priority": 0,
        "CommandDataSetType": 0x0001,
    }
    response = node.wait(node.assoc.start_operation(context, command, encode(ds)).result)
    assert response.status == 0x0122
    assert response.AffectedSOPClassUID == MR_IMAGE_STORAGE
    assert response.AffectedSOPInstanceUID == ds.SOPInstanceUID
    assert node.files() == [] and node.records.instances == []
    assert list(node.archive.incoming_dir.glob("*")) == []
    assert node.store(ds).status == 0x0000  # on its own context


def test_an_unparseable_data_set_cannot_be_understood(node):
    response = node.raw_store(b"\x00not deflate\x00", sop_instance=generate_uid(), transfer_syntax=DEFLATED)
    assert response.status == 0xC000
    assert node.files() == []


def test_below_the_disk_floor_the_store_is_refused_out_of_resources(tmp_path):
    node = Node(tmp_path / "data", archive_kwargs={})
    node.archive.min_free_mb = 1e12
    try:
        response = node.store(make_dataset())
        assert response.status == 0xA700
        assert "min_free_mb" in response.ErrorComment
        assert node.files() == []
    finally:
        node.close()


def test_duplicates_reject_answers_duplicate_sop_instance(tmp_path):
    node = Node(tmp_path / "data", archive_kwargs={"duplicates": "reject"})
    try:
        ds = make_dataset()
        assert node.store(ds).status == 0x0000
        response = node.store(ds)
        assert response.status == 0x0111
        assert len(node.files()) == 1 and len(node.records.instances) == 1
    finally:
        node.close()


def test_duplicates_first_answers_success_and_announces_nothing_new(tmp_path):
    node = Node(tmp_path / "data", archive_kwargs={"duplicates": "first"})
    try:
        ds = make_dataset()
        assert node.store(ds).status == 0x0000
        assert node.store(ds).status == 0x0000
        assert len(node.files()) == 1 and len(node.records.instances) == 1
    finally:
        node.close()


def test_without_an_archive_storage_is_refused_out_of_resources(tmp_path):
    node = Node(tmp_path / "data", no_archive=True)
    response = node.store(make_dataset())
    assert response.status == 0xA700
    assert "no archive" in response.ErrorComment
    assert not (tmp_path / "data").exists()
    assert node.store(make_dataset()).status == 0xA700  # the association lives on


def test_a_failing_stored_hook_does_not_change_the_status(tmp_path):
    node = Node(tmp_path / "data", recorder=Records(fail=True))
    try:
        assert node.store(make_dataset()).status == 0x0000
        assert len(node.files()) == 1
    finally:
        node.close()


def test_a_failing_forwarder_does_not_keep_the_instance_from_the_others(tmp_path):
    node = Node(tmp_path / "data")
    broken = Records(fail=True)
    node.pair.acceptor.pm.register(broken)  # registered last: pluggy calls it first
    try:
        assert node.store(make_dataset()).status == 0x0000
        assert len(broken.instances) == 1
        assert [i.sop_instance_uid for i in node.records.instances] == [broken.instances[0].sop_instance_uid]
    finally:
        node.close()


# -- associations that end early -----------------------------------------------------------------------


def test_a_commit_in_flight_when_the_association_aborts_still_completes(node):
    ds = make_dataset()
    node.assoc.store(ds).addErrback(lambda f: None)
    node.pair.pump()  # the whole message arrives; its commit runs in a worker thread
    node.pair.requestor_association.abort("gone")
    node.pair.pump()
    instance = node.clock.wait(node.records.called)
    assert Path(instance.path).exists()
    assert [p.suffix for p in node.files()] == [".dcm"]


def _pdata(context_id: int, control: int, fragment: bytes) -> bytes:
    """A P-DATA-TF PDU with one PDV (PS3.8 9.3.5), written by hand."""
    pdv = struct.pack(">IBB", len(fragment) + 2, context_id, control) + fragment
    return struct.pack(">BBI", 0x04, 0, len(pdv)) + pdv


def test_a_data_set_cut_off_by_the_connection_dropping_leaves_nothing(node):
    ds = make_dataset(pixels=b"\x07\x00" * 1_200_000)  # large enough to be spooled to its file
    data = encode(ds)
    context = node.assoc.context_for(CT_IMAGE_STORAGE, EXPLICIT_VR_LE)
    command = encode_command(make_command(
        CommandField.C_STORE_RQ, dataset=True, MessageID=9, AffectedSOPClassUID=CT_IMAGE_STORAGE,
        AffectedSOPInstanceUID=ds.SOPInstanceUID, Priority=0,
    ))
    received = []
    real_receive = node.archive.receive

    def receive(*args):
        received.append(real_receive(*args))
        return received[-1]

    node.archive.receive = receive
    acceptor = node.pair.connections[-1].acceptor_protocol
    acceptor.dataReceived(_pdata(context.context_id, 0x03, command))  # command, last fragment
    half = len(data) // 2
    for offset in range(0, half, 8000):  # data fragments, none of them the last
        acceptor.dataReceived(_pdata(context.context_id, 0x00, data[offset : min(offset + 8000, half)]))
    (incoming,) = received
    assert incoming.state == "receiving" and incoming.size == half
    assert wait_for(lambda: [p.suffix for p in node.files()] == [".part"])  # a pool thread creates it
    node.pair.disconnect()
    node.clock.run_pending()
    assert incoming.state == "aborted"
    assert node.files() == []
    assert node.records.instances == []
    assert node.clock.wait(node.archive.lookup(ds.SOPInstanceUID)) is None


def test_the_archive_closing_under_a_transfer_answers_out_of_resources(node):
    closing: list[Deferred] = []
    real_receive = node.archive.receive

    def receive(*args):
        incoming = real_receive(*args)
        real_write = incoming.write

        def write(data):
            real_write(data)
            if not closing:
                closing.append(node.archive.close())

        incoming.write = write
        return incoming

    node.archive.receive = receive
    response = node.store(make_dataset(pixels=b"\x05\x00" * 40_000))
    node.wait(closing[0])
    assert response.status == 0xA700
    assert node.files() == []
    assert node.store(make_dataset()).status == 0xA700  # the association goes on


def test_instances_delivered_but_never_handled_are_aborted_when_the_association_ends(node):
    class FakeIncoming:
        aborted = False

        def abort(self):
            self.aborted = True

    class FakeAssociation:
        remote_ae_title = "GONE"

    association = FakeAssociation()
    waiting = FakeIncoming()
    storage._tally(association).waiting.add(waiting)
    storage.dimsekit_on_association_aborted(association=association, reason="test")
    assert waiting.aborted
    assert association not in storage._associations
