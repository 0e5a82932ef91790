"""``dimsekit store`` without sockets: file collection, context planning, the
decisions taken on what a peer accepted, the summary and the exit status.

The association is a fake (an AE whose ``associate`` answers at once with what
a scripted peer would accept), so the reconnect logic can be driven exactly.
"""

from __future__ import annotations

import argparse
import io
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from twisted.internet import defer, error

from dimsekit.cli import _parser
from dimsekit.cli import store as cli_store
from dimsekit.datasets import (
    DatasetError,
    Part10Info,
    dataset_file_info,
    dataset_uids,
    encode_dataset,
    part10_info,
)
from dimsekit.errors import AssociationAborted, AssociationRejected
from dimsekit.operations import Response
from dimsekit.ul.items import PresentationContextRQ
from dimsekit.ul.negotiation import Negotiated, NegotiatedContext

ILE, ELE, EBE = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"
RLE, J2K = "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.91"
CT, MR, RTDOSE = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.481.2"


def info(sop_class: str, ts: str, name: str = "f", size: int = 1000) -> Part10Info:
    return Part10Info(Path(name), ts, sop_class, f"1.2.3.{sum(map(ord, name))}", 132, size)


def sample(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    assert path, f"pydicom test file {name} is missing"
    return Path(path)


def write_part10(path: Path, sop_class: str = CT, ts: str = ELE) -> Path:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = "1.2.3.4"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    ds.file_meta.TransferSyntaxUID = ts
    ds.save_as(path, enforce_file_format=True)
    return path


# -- collecting files -------------------------------------------------------------------


def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "sub" / "deeper").mkdir(parents=True)
    for rel in ("b.dcm", "a.dcm", "sub/c.dcm", "sub/deeper/d.dcm"):
        (root / rel).write_bytes(b"x")
    return root


def test_directory_without_recurse_takes_its_own_files_sorted(tmp_path):
    root = tree(tmp_path)
    files, missing = cli_store.collect_files([root], recurse=False)
    assert [p.name for p, _ in files] == ["a.dcm", "b.dcm"]
    assert missing == []
    assert all(named is False for _, named in files)


def test_directory_with_recurse_takes_subdirectories_depth_first(tmp_path):
    root = tree(tmp_path)
    files, _ = cli_store.collect_files([root], recurse=True)
    assert [str(p.relative_to(root)) for p, _ in files] == ["a.dcm", "b.dcm", "sub/c.dcm", "sub/deeper/d.dcm"]


def test_named_files_missing_operands_and_duplicates(tmp_path):
    root = tree(tmp_path)
    files, missing = cli_store.collect_files([root / "b.dcm", root, tmp_path / "nope"], recurse=False)
    assert [(p.name, named) for p, named in files] == [("b.dcm", True), ("a.dcm", False)]  # b taken once
    assert [(m.path.name, m.counts) for m in missing] == [("nope", True)]
    assert "no such file" in missing[0].reason


def test_read_files_skips_non_dicom_and_dicomdir(tmp_path):
    good = write_part10(tmp_path / "good.dcm")
    text = tmp_path / "notes.txt"
    text.write_text("not DICOM")
    named_text = tmp_path / "named.txt"
    named_text.write_text("not DICOM either")
    dicomdir = write_part10(tmp_path / "DICOMDIR", sop_class=cli_store.DICOMDIR_SOP_CLASS)
    infos, skipped = cli_store.read_files([(good, False), (text, False), (named_text, True), (dicomdir, False)])
    assert [i.path for i in infos] == [good]
    assert [(s.path.name, s.counts) for s in skipped] == [("notes.txt", False), ("named.txt", True), ("DICOMDIR", False)]
    assert "not a DICOM file" in skipped[0].reason
    assert "DICOMDIR" in skipped[2].reason


@pytest.mark.parametrize("ts", ["1.2.840.10008.1.2", ELE])
def test_read_files_skips_a_file_cut_short_and_it_counts(tmp_path, ts):
    # a file truncated on its disk: its header reads well, its pixel data is short; found in
    # a directory (not named), it still makes the exit status 1 -- it is an image not sent
    whole = write_part10(tmp_path / "whole.dcm", ts=ts)
    ds = dcmread(whole)
    ds.add_new(0x7FE00010, "OW", b"\1\2" * 5000)
    ds.save_as(whole, enforce_file_format=True)
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(whole.read_bytes()[:-10])
    infos, skipped = cli_store.read_files([(whole, False), (cut, False)])
    assert [i.path for i in infos] == [whole]
    assert [(s.path.name, s.counts) for s in skipped] == [("cut.dcm", True)]
    header = 8 if ts == "1.2.840.10008.1.2" else 12  # implicit VR; explicit VR OW
    offset = part10_info(whole).dataset_length - 10000 - header
    assert skipped[0].reason == f"the data set is cut short: (7FE0,0010) at offset {offset} has a value of 10000 " \
                                "bytes, 9990 are left"


def test_read_files_skips_encapsulated_pixel_data_labelled_uncompressed(tmp_path):
    # compressed fragments in a file whose File Meta says Explicit VR Little Endian (a tool that
    # relabelled it): a peer refuses it (the node: 0xC000) or stores no image; not sent, and counted
    from pydicom.encaps import encapsulate

    good = write_part10(tmp_path / "good.dcm")
    ds = dcmread(good)
    ds.add_new(0x7FE00010, "OB", encapsulate([b"\xff\xd8\xff\xd9"]))
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.50"
    ds.save_as(tmp_path / "jpeg.dcm", enforce_file_format=True)
    jpeg = (tmp_path / "jpeg.dcm").read_bytes()
    # pydicom writes no undefined length in a native syntax: the bytes of one that did
    (tmp_path / "relabelled.dcm").write_bytes(good.read_bytes() + jpeg[jpeg.rindex(b"\xe0\x7f\x10\x00"):])
    files = [(tmp_path / name, False) for name in ("good.dcm", "relabelled.dcm", "jpeg.dcm")]
    infos, skipped = cli_store.read_files(files)
    assert [i.path.name for i in infos] == ["good.dcm", "jpeg.dcm"]
    assert [(s.path.name, s.counts) for s in skipped] == [("relabelled.dcm", True)]
    assert skipped[0].reason.startswith("encapsulated Pixel Data in Explicit VR Little Endian (PS3.5 A.4): Pixel Data "
                                        "(7FE0,0010) at offset ")
    assert skipped[0].reason.endswith(" is encapsulated (undefined length), which only a compressed transfer "
                                      "syntax allows (PS3.5 A.4)")


@pytest.mark.parametrize("ts", ["1.2.840.10008.1.2", ELE, "1.2.840.10008.1.2.2"])
def test_a_bare_data_set_is_read_in_the_syntax_it_is_in(tmp_path, ts):
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID, ds.PatientName = CT, "1.2.3.9", "Bare^Set"
    path = tmp_path / "bare"
    path.write_bytes(encode_dataset(ds, ts))
    info = dataset_file_info(path)
    assert (info.transfer_syntax, info.sop_class_uid, info.sop_instance_uid) == (ts, CT, "1.2.3.9")
    assert (info.dataset_offset, info.dataset_length, info.has_meta) == (0, path.stat().st_size, False)
    part10 = dataset_file_info(write_part10(tmp_path / "p10.dcm"))
    assert part10.has_meta and part10.dataset_offset > 128


def test_what_is_no_sendable_bare_data_set_is_refused(tmp_path, recwarn, caplog):
    no_instance = Dataset()
    no_instance.SOPClassUID = CT
    (tmp_path / "no-instance").write_bytes(encode_dataset(no_instance, ELE))
    (tmp_path / "junk").write_bytes(bytes(range(256)) * 8)
    broken = write_part10(tmp_path / "broken.dcm").read_bytes()
    (tmp_path / "broken.dcm").write_bytes(broken[:140])  # DICM, then its File Meta cut short
    for name in ("no-instance", "junk", "broken.dcm"):
        with pytest.raises(DatasetError):
            dataset_file_info(tmp_path / name)
    compressed = dcmread(get_testdata_file("JPEG2000.dcm"))
    (tmp_path / "j2k").write_bytes(encode_dataset(compressed, ELE))
    with pytest.raises(DatasetError, match="compressed"):
        dataset_file_info(tmp_path / "j2k")
    infos, skipped = cli_store.read_files([(tmp_path / n, True) for n in ("junk", "j2k")])
    assert infos == [] and [s.reason for s in skipped][0] == "not a DICOM file"
    assert "compressed" in skipped[1].reason and str(tmp_path) not in skipped[1].reason
    (tmp_path / "README.txt").write_text("not DICOM\n")  # pydicom warns of a VR it guessed
    with pytest.raises(DatasetError):
        dataset_file_info(tmp_path / "README.txt")
    assert [str(w.message) for w in recwarn] == [] and caplog.records == []


def test_read_files_skips_a_file_whose_sop_class_or_transfer_syntax_is_not_a_uid(tmp_path):
    # They would go into the A-ASSOCIATE-RQ, which then could not be sent: no file would go.
    good = write_part10(tmp_path / "good.dcm")
    no_class = tmp_path / "no-class.dcm"
    ds = Dataset()
    ds.preamble = b"\x00" * 128
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ""
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    ds.file_meta.TransferSyntaxUID = ELE
    ds.save_as(no_class, enforce_file_format=False)
    zero = write_part10(tmp_path / "zero.dcm")
    zero.write_bytes(zero.read_bytes().replace(ELE.encode() + b"\x00", b"1.2.840.10008.1.2.01", 1))
    infos, skipped = cli_store.read_files([(good, False), (no_class, True), (zero, False)])
    assert [i.path for i in infos] == [good]
    assert [(s.path.name, s.counts) for s in skipped] == [("no-class.dcm", True), ("zero.dcm", False)]
    assert skipped[0].reason == "File Meta Information: SOP class '' not a UID"
    assert skipped[1].reason == "File Meta Information: transfer syntax '1.2.840.10008.1.2.01' not a UID"


# -- the UIDs the C-STORE-RQ names ------------------------------------------------------------


def write_edited(path: Path, *, meta: tuple[str, str], dataset: tuple[str | None, str | None], ts: str = ELE,
                 tail: bytes = b"") -> Path:
    """A Part 10 file whose File Meta says ``meta`` (SOP class, instance) and whose
    data set holds ``dataset`` (None: the element is missing), as a hand edit or
    a bad converter leaves it; ``tail`` is appended to the file."""
    ds = Dataset()
    ds.PatientName = "Edited^File"
    if dataset[0] is not None:
        ds.SOPClassUID = dataset[0]
    if dataset[1] is not None:
        ds.SOPInstanceUID = dataset[1]
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3.100", "1.2.3.101"
    ds.preamble = b"\x00" * 128
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = meta
    ds.file_meta.TransferSyntaxUID = ts
    ds.file_meta.ImplementationClassUID = "1.2.3.999"
    ds.save_as(path, enforce_file_format=False)  # as it is: pydicom would copy the data set's UIDs into the meta
    if tail:
        with path.open("ab") as f:
            f.write(tail)
    return path


@pytest.mark.parametrize("ts", [ILE, ELE, EBE, "1.2.840.10008.1.2.1.99", J2K])
def test_dataset_uids_reads_the_data_set_not_the_file_meta(tmp_path, ts):
    path = write_edited(tmp_path / "edited.dcm", meta=(CT, "1.2.3.9"), dataset=(MR, "1.2.3.4"), ts=ts)
    info = part10_info(path)
    assert (info.sop_class_uid, info.sop_instance_uid) == (CT, "1.2.3.9")  # what the File Meta says
    assert dataset_uids(info) == (MR, "1.2.3.4")


def test_dataset_uids_reads_only_the_head_of_the_data_set(tmp_path):
    # what follows (0008,0018) is never parsed: garbage there does not matter
    path = write_edited(tmp_path / "edited.dcm", meta=(CT, "1.2.3.9"), dataset=(CT, "1.2.3.4"),
                        tail=b"\xff\xff\xff\xff garbage, not elements" * 1000)
    assert dataset_uids(part10_info(path)) == (CT, "1.2.3.4")
    missing = write_edited(tmp_path / "no-uids.dcm", meta=(CT, "1.2.3.9"), dataset=(None, None))
    assert dataset_uids(part10_info(missing)) == (None, None)
    private = replace(part10_info(path), transfer_syntax="1.2.826.0.1.3680043.9.7433.99")  # unknown: how to parse?
    with pytest.raises(DatasetError, match="cannot read the data set's SOP Class and Instance UIDs: .* not a known"):
        dataset_uids(private)


def meta_info(sop_class: str = CT, sop_instance: str = "1.2.3.9") -> Part10Info:
    return Part10Info(Path("f.dcm"), ELE, sop_class, sop_instance, 200, 1000)


def test_command_uids_are_the_data_sets():
    same = meta_info()
    assert cli_store.command_uids(same, (CT, "1.2.3.9")) == (same, None)
    chosen, warning = cli_store.command_uids(meta_info(), (CT, "1.2.3.4"))
    assert (chosen.sop_class_uid, chosen.sop_instance_uid) == (CT, "1.2.3.4")
    assert (chosen.path, chosen.dataset_offset, chosen.transfer_syntax) == (same.path, 200, ELE)
    assert warning == ("File Meta Information's Media Storage SOP Instance UID 1.2.3.9 is not the data set's "
                       "SOP Instance UID 1.2.3.4: the data set's is sent")
    chosen, warning = cli_store.command_uids(meta_info(), (MR, "1.2.3.4"))
    assert (chosen.sop_class_uid, chosen.sop_instance_uid) == (MR, "1.2.3.4")
    assert "SOP Class UID" in warning and "SOP Instance UID" in warning and warning.count(": the data set's") == 2


def test_command_uids_fall_back_to_the_file_metas_and_say_so():
    chosen, warning = cli_store.command_uids(meta_info(), (CT, None))
    assert (chosen.sop_class_uid, chosen.sop_instance_uid) == (CT, "1.2.3.9")
    assert warning == "the data set has no SOP Instance UID: the File Meta Information's (1.2.3.9) is sent"
    chosen, warning = cli_store.command_uids(meta_info(), (None, "1.2.3.4"))
    assert (chosen.sop_class_uid, chosen.sop_instance_uid) == (CT, "1.2.3.4")
    assert warning.startswith("the data set has no SOP Class UID: the File Meta Information's")
    chosen, warning = cli_store.command_uids(meta_info(), ("CT IMAGE", "1.2.3.9"))  # would break the A-ASSOCIATE-RQ
    assert chosen.sop_class_uid == CT and "'CT IMAGE' is not a UID" in warning
    chosen, warning = cli_store.command_uids(meta_info(), "cannot read the data set's UIDs (truncated)")
    assert chosen == meta_info()
    assert warning == "cannot read the data set's UIDs (truncated); the File Meta Information's UIDs are sent"


def test_read_files_takes_the_data_sets_uids_and_warns_once_per_file(tmp_path):
    edited = write_edited(tmp_path / "edited.dcm", meta=(CT, "1.2.3.9"), dataset=(CT, "1.2.3.4"))
    no_instance = write_edited(tmp_path / "no-instance.dcm", meta=(CT, "1.2.3.7"), dataset=(CT, None))
    good = write_part10(tmp_path / "good.dcm")
    warnings: list[str] = []
    infos, skipped = cli_store.read_files([(edited, False), (no_instance, True), (good, False)], warnings.append)
    assert skipped == []
    assert [(i.path.name, i.sop_class_uid, i.sop_instance_uid) for i in infos] == [
        ("edited.dcm", CT, "1.2.3.4"), ("no-instance.dcm", CT, "1.2.3.7"), ("good.dcm", CT, "1.2.3.4")]
    assert len(warnings) == 2
    assert warnings[0].startswith(f"{edited}: File Meta Information's Media Storage SOP Instance UID 1.2.3.9")
    assert warnings[1] == (f"{no_instance}: the data set has no SOP Instance UID: the File Meta Information's "
                           "(1.2.3.7) is sent")


def test_the_store_command_names_the_data_sets_uids(tmp_path):
    edited = write_edited(tmp_path / "edited.dcm", meta=(CT, "1.2.3.9"), dataset=(MR, "1.2.3.4"))
    good = write_part10(tmp_path / "good.dcm", sop_class=RTDOSE)
    peer = FakePeer()
    code, out, err = run_store(peer, [edited, good], quiet=True)
    assert code == 0, out + err
    assert peer.commands == [("edited.dcm", MR, "1.2.3.4"), ("good.dcm", RTDOSE, "1.2.3.4")]
    # the context proposed is for the data set's SOP class
    assert {pc.abstract_syntax for pc in peer.associations[0].rq.presentation_contexts} == {MR, RTDOSE}
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"dimsekit store: warning: {edited}: "), err
    assert "1.2.3.9" in lines[0] and "1.2.3.4" in lines[0]


# -- presentation contexts ----------------------------------------------------------------


def test_contexts_one_per_syntax_found_and_a_fallback_for_uncompressed_classes():
    infos = [info(CT, ELE, "1"), info(MR, RLE, "2"), info(CT, J2K, "3"), info(CT, ELE, "4"), info(RTDOSE, EBE, "5")]
    assert cli_store.contexts_for(infos) == [
        (CT, (ELE,)), (CT, (J2K,)), (CT, (ELE, ILE)),
        (MR, (RLE,)),  # compressed only: no fallback
        (RTDOSE, (EBE,)), (RTDOSE, (ELE, ILE)),
    ]


def test_one_group_in_file_order_when_the_contexts_fit():
    infos = [info(f"1.2.3.{n % 60}", ELE, str(n)) for n in range(120)]  # 60 classes x 2 contexts
    assert len(cli_store.contexts_for(infos)) == 120
    assert cli_store.plan_groups(infos) == [infos]
    assert cli_store.plan_groups([]) == []


def test_groups_of_at_most_128_contexts_when_more_are_needed():
    infos = [info(f"1.2.3.{n % 200}", [ELE, J2K][n % 2], str(n)) for n in range(600)]  # 200 classes
    assert len(cli_store.contexts_for(infos)) > 128
    groups = cli_store.plan_groups(infos)
    assert len(groups) > 1
    for group in groups:
        assert len(cli_store.contexts_for(group)) <= 128
        positions = [infos.index(i) for i in group]
        assert positions == sorted(positions), "a group keeps the files' order"
        classes_here = {i.sop_class_uid for i in group}
        for other in groups:
            if other is not group:
                assert not classes_here & {i.sop_class_uid for i in other}, "a SOP class split needlessly"
    assert sorted(id(i) for g in groups for i in g) == sorted(id(i) for i in infos)


def test_a_class_needing_more_than_the_limit_is_split_by_transfer_syntax():
    syntaxes = [f"1.2.840.10008.1.2.4.{n}" for n in range(10)] + [ELE]
    infos = [info(CT, ts, str(n)) for n, ts in enumerate(syntaxes)]
    groups = cli_store.plan_groups(infos, limit=4)
    assert all(len(cli_store.contexts_for(g)) <= 4 for g in groups)
    assert sum(len(g) for g in groups) == len(infos)


# -- what an association can carry ---------------------------------------------------


def negotiated(accepted: list[tuple[int, str, str]], rejected: dict[int, int] | None = None) -> Negotiated:
    return Negotiated(
        is_requestor=True,
        contexts={cid: NegotiatedContext(context_id=cid, abstract_syntax=a, transfer_syntax=t,
                                         local_scu=True, local_scp=False) for cid, a, t in accepted},
        rejected=rejected or {},
        local_maximum_length=16384,
        peer_maximum_length=16384,
        max_outstanding_local=1,
        max_outstanding_remote=1,
        peer_implementation_class_uid=None,
        peer_implementation_version_name=None,
    )


def test_can_send_exact_syntax_or_reencodable_fallback():
    n = negotiated([(1, CT, ILE), (3, MR, RLE)])
    assert cli_store.can_send(n, info(CT, ELE))  # re-encoded to ILE
    assert cli_store.can_send(n, info(CT, EBE))
    assert not cli_store.can_send(n, info(CT, J2K))  # compressed, not accepted: no transcoding
    assert cli_store.can_send(n, info(MR, RLE))
    assert not cli_store.can_send(n, info(MR, ELE))  # only RLE accepted for MR
    assert not cli_store.can_send(n, info(RTDOSE, ILE))
    assert not cli_store.can_send(None, info(CT, ELE))


def proposals(contexts: list[tuple[str, tuple[str, ...]]]) -> list[PresentationContextRQ]:
    return [PresentationContextRQ(context_id=2 * n + 1, abstract_syntax=a, transfer_syntaxes=t)
            for n, (a, t) in enumerate(contexts)]


def test_refusal_for_good_only_on_abstract_or_transfer_syntax_not_supported():
    pcs = proposals([(CT, (ELE,)), (CT, (J2K,)), (CT, (ELE, ILE)), (MR, (RLE,))])
    # CT not supported at all
    assert "does not support CT Image Storage" in cli_store.refusal(pcs, {1: 3, 3: 3, 5: 3, 7: 0}, info(CT, ELE))
    # J2K's context refused for its syntax: compressed, so for good
    why = cli_store.refusal(pcs, {3: 4}, info(CT, J2K))
    assert "JPEG 2000" in why and "not decompressed: decompressing is off" in why
    # an uncompressed file is refused for good only when its fallback is too
    assert cli_store.refusal(pcs, {1: 4}, info(CT, ELE)) is None  # its fallback was not refused
    assert "no uncompressed" in cli_store.refusal(pcs, {1: 4, 5: 4}, info(CT, ELE))
    # no-reason or user rejection (a limit, maybe): try again
    assert cli_store.refusal(pcs, {7: 2}, info(MR, RLE)) is None
    assert cli_store.refusal(pcs, {7: 1}, info(MR, RLE)) is None
    assert cli_store.refusal(pcs, {1: 4, 5: 2}, info(CT, ELE)) is None


# -- the sending loop, against a scripted peer -----------------------------------------------


class FakeAssociation:
    def __init__(self, peer: FakePeer, contexts: list[tuple[str, tuple[str, ...]]]) -> None:
        self.peer = peer
        self.rq = argparse.Namespace(presentation_contexts=proposals(contexts))
        accepted, rejected = [], {}
        for pc in self.rq.presentation_contexts:
            verdict = peer.decide(pc, len(accepted))
            if isinstance(verdict, str):
                accepted.append((pc.context_id, pc.abstract_syntax, verdict))
            else:
                rejected[pc.context_id] = verdict
        self.negotiated = negotiated(accepted, rejected)
        self.ended: str | None = None
        self.released = False
        self.stores = 0

    def store(self, dataset: Any) -> defer.Deferred:
        if self.ended:
            return defer.fail(AssociationAborted(self.ended))
        name = Path(getattr(dataset, "path", dataset)).name
        self.peer.stored.append(name)
        self.peer.commands.append((name, getattr(dataset, "sop_class_uid", None),
                                   getattr(dataset, "sop_instance_uid", None)))
        if name in self.peer.abort_on or name in self.peer.abort_always or (
                self.peer.abort_every and self.stores == 0):
            self.peer.abort_on.discard(name)
            self.ended = "aborted by the peer (A-ABORT)"
            return defer.fail(AssociationAborted("aborted by the peer (A-ABORT)"))
        self.stores += 1
        if name in self.peer.end_after:
            self.ended = "aborted by the peer (A-ABORT)"  # just after its response
        return defer.succeed(Response({"Status": self.peer.statuses.get(name, 0x0000)}))

    def release(self) -> defer.Deferred:
        self.released = True
        self.ended = "released"
        return defer.succeed(None)


class FakePeer:
    """Accepts what ``decide(pc, accepted_so_far)`` says: a transfer syntax
    (accepted) or a result code (rejected)."""

    def __init__(self, *, limit: int | None = None, classes: set[str] | None = None,
                 syntaxes: set[str] | None = None, rejection_result: int = 2) -> None:
        self.limit = limit
        self.classes = classes
        self.syntaxes = syntaxes
        self.rejection_result = rejection_result
        self.associations: list[FakeAssociation] = []
        self.stored: list[str] = []
        #: (file name, Affected SOP Class UID, Affected SOP Instance UID) of each C-STORE-RQ
        self.commands: list[tuple[str, str | None, str | None]] = []
        self.statuses: dict[str, int] = {}
        self.abort_on: set[str] = set()  #: files whose first C-STORE the peer aborts the association on
        self.abort_always: set[str] = set()  #: files whose every C-STORE the peer aborts the association on
        self.abort_every = False  #: abort every association on its first C-STORE
        self.end_after: set[str] = set()  #: files after whose response the peer aborts
        self.connect_error: Exception | None = None  #: every association attempt fails so
        #: what the next association attempts do, in turn: fail with the error, or (None) go ahead
        self.connect_script: list[Exception | None] = []
        self.attempts = 0

    def decide(self, pc: PresentationContextRQ, accepted: int) -> str | int:
        if self.limit is not None and accepted >= self.limit:
            return self.rejection_result
        if self.classes is not None and pc.abstract_syntax not in self.classes:
            return 3
        for ts in pc.transfer_syntaxes:
            if self.syntaxes is None or ts in self.syntaxes:
                return ts
        return 4


class FakeAE:
    def __init__(self, peer: FakePeer) -> None:
        self.peer = peer

    def associate(self, host, port, *, called, contexts, connect_timeout):
        assert len(contexts) <= 128
        self.peer.attempts += 1
        if self.peer.connect_error is not None:
            return defer.fail(self.peer.connect_error)
        if self.peer.connect_script:
            scripted = self.peer.connect_script.pop(0)
            if scripted is not None:
                return defer.fail(scripted)
        association = FakeAssociation(self.peer, contexts)
        self.peer.associations.append(association)
        return defer.succeed(association)


def args_for(paths: list[Any], **kw: Any) -> argparse.Namespace:
    return _parser().parse_args(["store", "127.0.0.1", "11112", *map(str, paths),
                                 *[a for k, v in kw.items() for a in ([f"--{k}"] if v is True else [f"--{k}", str(v)])]])


def run_store(peer: FakePeer, paths: list[Any], **kw: Any) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    d = defer.Deferred.fromCoroutine(
        cli_store._run(None, args_for(paths, **kw), out, err, make=lambda reactor, args: FakeAE(peer))
    )
    codes: list[int] = []
    d.addCallback(codes.append)
    assert codes, "the command did not finish against a peer answering at once"
    return codes[0], out.getvalue(), err.getvalue()


def send_infos(peer: FakePeer, infos: list[Part10Info], *, fatal: str | None = None,
               sleeps: list[float] | None = None, **kw: Any) -> cli_store.Tally:
    """``_send`` against the peer; it must end with ``_Fatal(fatal)`` when that is given.
    ``sleeps`` collects the pauses asked for before reconnecting."""
    tally = cli_store.Tally()
    progress = cli_store.Progress(io.StringIO(), len(infos), 0, enabled=False)
    args = args_for(["x"], **kw)
    def sleep(seconds: float) -> defer.Deferred:
        sleeps.append(seconds)
        return defer.succeed(None)

    d = defer.Deferred.fromCoroutine(
        cli_store._send(FakeAE(peer), args, infos, tally, progress, io.StringIO(), sleep if sleeps is not None else None)
    )
    failures: list[Any] = []
    d.addErrback(failures.append)
    if fatal is None:
        assert not failures, failures
    else:
        assert len(failures) == 1 and failures[0].check(cli_store._Fatal), failures
        assert str(failures[0].value) == fatal
    return tally


def test_everything_on_one_association_when_the_peer_takes_it():
    peer = FakePeer()
    infos = [info(CT, ELE, "a"), info(MR, RLE, "b"), info(CT, J2K, "c")]
    tally = send_infos(peer, infos)
    assert peer.stored == ["a", "b", "c"]
    assert len(peer.associations) == 1 and peer.associations[0].released
    assert tally.count("success") == 3 and tally.associations == 1


def test_a_peer_limiting_contexts_gets_new_associations_for_the_rest():
    peer = FakePeer(limit=3)
    infos = [info(f"1.2.3.{n}", J2K, f"f{n}") for n in range(10)]  # 10 contexts, 3 at a time
    tally = send_infos(peer, infos)
    assert sorted(peer.stored) == sorted(f"f{n}" for n in range(10))
    assert tally.count("success") == 10 and tally.count("failure") == 0
    assert len(peer.associations) == 4  # 3 + 3 + 3 + 1
    assert all(len(a.rq.presentation_contexts) <= 10 for a in peer.associations)
    assert [len(a.rq.presentation_contexts) for a in peer.associations] == [10, 7, 4, 1]


def test_a_peer_accepting_nothing_is_tried_per_sop_class_then_failed():
    peer = FakePeer(limit=0, rejection_result=1)
    infos = [info(CT, ELE, "a"), info(MR, ELE, "b"), info(CT, ELE, "c")]
    tally = send_infos(peer, infos)
    assert peer.stored == []
    assert len(peer.associations) == 3  # all together, then CT alone, then MR alone
    assert [o.kind for o in tally.outcomes] == ["failure"] * 3
    assert all("no presentation context accepted" in o.detail for o in tally.outcomes)


def test_an_unsupported_sop_class_fails_at_once_without_retrying():
    peer = FakePeer(classes={CT})
    infos = [info(CT, ELE, "a"), info(MR, ELE, "b"), info(RTDOSE, ILE, "c")]
    tally = send_infos(peer, infos)
    assert peer.stored == ["a"]
    assert len(peer.associations) == 1
    failed = {o.path.name: o.detail for o in tally.outcomes if o.kind == "failure"}
    assert set(failed) == {"b", "c"}
    assert "does not support MR Image Storage" in failed["b"]


def test_a_compressed_file_whose_syntax_is_refused_fails_uncompressed_ones_fall_back():
    peer = FakePeer(syntaxes={ILE})
    infos = [info(CT, ELE, "a"), info(CT, J2K, "b")]
    tally = send_infos(peer, infos)
    assert peer.stored == ["a"]  # via the fallback context, re-encoded
    assert len(peer.associations) == 1
    (failure,) = [o for o in tally.outcomes if o.kind == "failure"]
    assert failure.path.name == "b" and "is lossy, and only lossless data is decompressed" in failure.detail


# -- the command: summary and exit status -----------------------------------------------------


@pytest.fixture
def files(tmp_path) -> list[Path]:
    out = []
    for name in ("CT_small.dcm", "MR_small_RLE.dcm", "rtdose.dcm"):
        target = tmp_path / name
        target.write_bytes(sample(name).read_bytes())
        out.append(target)
    return out


#: pydicom's rtdose.dcm is a file as found in the wild: its File Meta's Media Storage
#: SOP Instance UID (1.2.999...) is not its data set's SOP Instance UID (1.9.999...)
RTDOSE_WARNING = ("rtdose.dcm: File Meta Information's Media Storage SOP Instance UID "
                  "1.2.999.999.99.9.9999.9999.20030818153516 is not the data set's SOP Instance UID "
                  "1.9.999.999.99.9.9999.9999.20030818153516: the data set's is sent")


def without_rtdose_warning(err: str) -> list[str]:
    """The lines on stderr but the warning about rtdose.dcm's UIDs (there once)."""
    warnings = [line for line in err.splitlines() if line.endswith(RTDOSE_WARNING)]
    assert len(warnings) == 1 and warnings[0].startswith("dimsekit store: warning: "), err
    return [line for line in err.splitlines() if line not in warnings]


def test_all_success_exit_0_and_a_summary(files):
    peer = FakePeer()
    code, out, err = run_store(peer, files)
    assert code == 0, out + err
    assert out.startswith("Stored 3 of 3 instances on ANY-SCP@127.0.0.1:11112 (3 Success, 0 Warning, 0 Failure")
    assert "1 association" in out
    assert without_rtdose_warning(err) == []  # not a terminal: no progress line
    assert peer.commands[2] == ("rtdose.dcm", RTDOSE, "1.9.999.999.99.9.9999.9999.20030818153516")


def test_warnings_are_listed_and_exit_0(files):
    peer = FakePeer()
    peer.statuses["MR_small_RLE.dcm"] = 0xB000
    code, out, _ = run_store(peer, files)
    assert code == 0
    assert "1 Warning" in out
    assert "warning  " in out and "MR_small_RLE.dcm: 0xB000 Warning: Coercion of Data Elements" in out


def test_failure_status_listed_by_name_and_exit_1(files):
    peer = FakePeer()
    peer.statuses["rtdose.dcm"] = 0xA700
    code, out, _ = run_store(peer, files)
    assert code == 1
    assert "rtdose.dcm: 0xA700 Refused: Out of Resources" in out


def test_non_dicom_in_a_directory_is_skipped_and_does_not_fail(files, tmp_path):
    (tmp_path / "README.txt").write_text("hello")
    code, out, _ = run_store(FakePeer(), [tmp_path])
    assert code == 0, out
    assert "Stored 3 of 3" in out
    assert "skipped  " in out and "README.txt: not a DICOM file" in out


def test_a_named_non_dicom_file_fails(files, tmp_path):
    text = tmp_path / "README.txt"
    text.write_text("hello")
    code, out, _ = run_store(FakePeer(), [*files, text])
    assert code == 1
    assert "README.txt: not a DICOM file" in out


def test_nothing_to_send_is_one_line_and_exit_1(tmp_path):
    (tmp_path / "README.txt").write_text("hello")
    code, out, err = run_store(FakePeer(), [tmp_path])
    assert code == 1
    assert err == "dimsekit store: no DICOM files to send\n"


@pytest.mark.parametrize("exc, words", [
    (error.ConnectionRefusedError(), "connection refused"),
    (AssociationRejected(1, 1, 7), "called-ae-title-not-recognized"),
])
def test_no_association_is_one_line_on_stderr_and_exit_1(files, exc, words):
    peer = FakePeer()
    peer.connect_error = exc
    code, out, err = run_store(peer, files)
    assert code == 1
    assert out == ""
    (line,) = without_rtdose_warning(err)
    assert line.startswith("dimsekit store: ") and words in line.lower()


def test_abort_midway_sends_that_file_again_first_and_the_rest_on_a_new_association(files):
    peer = FakePeer()
    peer.abort_on.add("MR_small_RLE.dcm")
    code, out, err = run_store(peer, files)
    assert code == 0, out + err  # every file stored in the end
    assert peer.stored == ["CT_small.dcm", "MR_small_RLE.dcm", "MR_small_RLE.dcm", "rtdose.dcm"]
    assert len(peer.associations) == 2
    assert RTDOSE in {pc.abstract_syntax for pc in peer.associations[1].rq.presentation_contexts}
    assert out.startswith("Stored 3 of 3 instances on ANY-SCP@127.0.0.1:11112 (3 Success, 0 Warning, 0 Failure, "
                          "0 not sent)")
    assert "2 associations (1 reconnect after an abort or a lost connection)" in out.splitlines()[0]
    assert without_rtdose_warning(err) == [
        "dimsekit store: aborted by the peer (A-ABORT); a new association for the 2 file(s) left, "
        "MR_small_RLE.dcm again first"]


def test_a_file_whose_association_is_lost_twice_fails_and_the_rest_go_on(files):
    peer = FakePeer()
    peer.abort_always.add("MR_small_RLE.dcm")  # a peer that cannot take this one
    code, out, err = run_store(peer, files)
    assert code == 1  # one file failed
    assert peer.stored == ["CT_small.dcm", "MR_small_RLE.dcm", "MR_small_RLE.dcm", "rtdose.dcm"]
    assert len(peer.associations) == 3
    assert out.startswith("Stored 2 of 3 instances on ANY-SCP@127.0.0.1:11112 (2 Success, 0 Warning, 1 Failure, "
                          "0 not sent)")
    assert "MR_small_RLE.dcm: aborted by the peer (A-ABORT)" in out
    assert without_rtdose_warning(err) == [
        "dimsekit store: aborted by the peer (A-ABORT); a new association for the 2 file(s) left, "
        "MR_small_RLE.dcm again first",
        "dimsekit store: aborted by the peer (A-ABORT); a new association for the 1 file(s) left"]


def test_max_aborts_1_stops_at_the_first_abort_as_storescu_does(files):
    peer = FakePeer()
    peer.abort_on.add("MR_small_RLE.dcm")
    code, out, err = run_store(peer, files, **{"max-aborts": 1})
    assert code == 1
    assert peer.stored == ["CT_small.dcm", "MR_small_RLE.dcm"]
    assert "MR_small_RLE.dcm: aborted by the peer" in out
    assert "not sent " in out and "rtdose.dcm" in out
    assert without_rtdose_warning(err) == ["dimsekit store: aborted by the peer (A-ABORT)"]


def test_a_peer_aborting_every_association_is_given_up_on_after_three_in_a_row():
    peer = FakePeer()
    peer.abort_every = True
    infos = [info(CT, ELE, f"f{n}") for n in range(6)]
    sleeps: list[float] = []
    gave_up = "gave up after 3 associations in a row aborted or not made (aborted by the peer (A-ABORT))"
    tally = send_infos(peer, infos, fatal=gave_up, sleeps=sleeps)
    # f0 aborted, sent again and aborted again: failed; f1 aborted as the run gives up: failed
    assert peer.stored == ["f0", "f0", "f1"] and len(peer.associations) == 3
    assert [(o.path.name, o.kind, o.detail) for o in tally.outcomes] == [
        (f"f{n}", "failure", "aborted by the peer (A-ABORT)") for n in range(2)]
    assert [p.name for p in tally.not_sent] == ["f2", "f3", "f4", "f5"]
    assert (tally.associations, tally.reconnects) == (3, 2)
    assert sleeps == [1.0, 2.0]  # a longer pause after each loss in a row


def test_the_count_of_aborts_in_a_row_restarts_when_the_peer_answers():
    peer = FakePeer()
    peer.abort_on.update({"f1", "f3", "f5"})  # one instance stored between aborts: the peer works
    infos = [info(CT, ELE, f"f{n}") for n in range(7)]
    sleeps: list[float] = []
    tally = send_infos(peer, infos, sleeps=sleeps)
    assert peer.stored == ["f0", "f1", "f1", "f2", "f3", "f3", "f4", "f5", "f5", "f6"]  # each sent again
    assert [o.path.name for o in tally.outcomes if o.kind == "failure"] == []
    assert tally.count("success") == 7 and tally.not_sent == []
    assert (tally.associations, tally.reconnects) == (4, 3)
    assert sleeps == [1.0, 1.0, 1.0]


def test_failed_connections_after_an_abort_count_towards_the_limit():
    peer = FakePeer()
    peer.abort_on.add("f1")
    peer.connect_script = [None, error.ConnectionRefusedError(), None]  # the peer restarting, say
    infos = [info(CT, ELE, f"f{n}") for n in range(4)]
    sleeps: list[float] = []
    tally = send_infos(peer, infos, sleeps=sleeps)
    assert peer.stored == ["f0", "f1", "f1", "f2", "f3"] and peer.attempts == 3
    assert (tally.associations, tally.reconnects) == (2, 1)
    assert sleeps == [1.0, 2.0]
    # refused twice more after the abort: three in a row, given up
    peer = FakePeer()
    peer.abort_on.add("f1")
    peer.connect_script = [None, error.ConnectionRefusedError(), error.ConnectionRefusedError(), None]
    gave_up = "gave up after 3 associations in a row aborted or not made (connection refused)"
    tally = send_infos(peer, [info(CT, ELE, f"f{n}") for n in range(4)], fatal=gave_up)
    assert peer.attempts == 3 and [p.name for p in tally.not_sent] == ["f2", "f3"]
    assert [(o.path.name, o.kind, o.detail) for o in tally.outcomes if o.kind == "failure"] == [
        ("f1", "failure", "aborted by the peer (A-ABORT)")]  # never sent again: failed, with why


def test_a_permanent_rejection_after_an_abort_gives_up_at_once_a_transient_one_is_retried():
    peer = FakePeer()
    peer.abort_on.add("f1")
    peer.connect_script = [None, AssociationRejected(1, 1, 3)]
    why = "association rejected (rejected-permanent): DICOM UL service-user: calling-AE-title-not-recognized"
    tally = send_infos(peer, [info(CT, ELE, f"f{n}") for n in range(4)], fatal=why)
    assert peer.attempts == 2 and [p.name for p in tally.not_sent] == ["f2", "f3"]
    assert [o.path.name for o in tally.outcomes if o.kind == "failure"] == ["f1"]
    peer = FakePeer()
    peer.abort_on.add("f1")
    peer.connect_script = [None, AssociationRejected(2, 3, 1), None]  # temporary congestion
    tally = send_infos(peer, [info(CT, ELE, f"f{n}") for n in range(4)])
    assert peer.stored == ["f0", "f1", "f1", "f2", "f3"] and peer.attempts == 3 and tally.not_sent == []


def test_an_association_the_peer_ends_after_a_response_fails_no_file():
    peer = FakePeer()
    peer.end_after.update({"f1", "f2"})  # e.g. a peer taking so many instances per association
    infos = [info(CT, ELE, f"f{n}") for n in range(4)]
    tally = send_infos(peer, infos)
    assert peer.stored == ["f0", "f1", "f2", "f3"]
    assert tally.count("success") == 4 and tally.not_sent == []
    assert (tally.associations, tally.reconnects) == (3, 2)


def test_the_first_association_failing_is_not_retried(files):
    peer = FakePeer()
    peer.connect_script = [error.ConnectionRefusedError(), None]
    code, out, err = run_store(peer, files)
    assert (code, out, peer.attempts) == (1, "", 1)  # the peer was never reached: no point trying again
    assert without_rtdose_warning(err) == ["dimsekit store: connection refused"]


def test_max_aborts_must_be_a_positive_number(capsys):
    for bad in ("0", "-1", "x"):
        with pytest.raises(SystemExit):
            _parser().parse_args(["store", "h", "104", "f", "--max-aborts", bad])
    assert "--max-aborts" in capsys.readouterr().err
    assert _parser().parse_args(["store", "h", "104", "f"]).max_aborts == cli_store.MAX_ABORTS == 3


def test_quiet_prints_nothing_when_all_is_well(files):
    code, out, err = run_store(FakePeer(), files, quiet=True)
    assert (code, out) == (0, "")
    assert without_rtdose_warning(err) == []  # a warning is printed, quiet or not


def test_options_a_storescu_user_expects():
    args = _parser().parse_args(["store", "h", "104", "a", "b", "-aet", "ME", "-aec", "PACS", "--max-pdu", "4096",
                                 "-to", "5", "-r", "--no-progress"])
    assert (args.aet, args.called, args.max_pdu, args.timeout, args.recurse, args.no_progress) == (
        "ME", "PACS", 4096, 5.0, True, True)
    assert args.paths == ["a", "b"]


# -- progress ----------------------------------------------------------------------------


def test_progress_line_rewritten_in_place_and_cleared():
    stream = io.StringIO()
    progress = cli_store.Progress(stream, total=4, total_bytes=4_000_000, enabled=True)
    progress.update(1, 1_000_000, force=True)
    progress.update(2, 2_000_000, force=True)
    text = stream.getvalue()
    assert text.startswith("\r1/4 instances  1.0/4.0 MB") and "\r2/4 instances  2.0/4.0 MB" in text
    assert "MB/s" in text and "\n" not in text
    progress.clear()
    assert stream.getvalue().endswith("\r")


def test_progress_disabled_writes_nothing():
    stream = io.StringIO()
    progress = cli_store.Progress(stream, total=4, total_bytes=4, enabled=False)
    progress.update(1, 1, force=True)
    progress.clear()
    assert stream.getvalue() == ""


class _PoolNow:
    """A thread pool running each call at once (in this thread)."""

    def callInThreadWithCallback(self, on_result: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        on_result(True, f(*args, **kwargs))


class _ReactorWithPool:
    def getThreadPool(self) -> _PoolNow:
        return _PoolNow()

    def callFromThread(self, f: Any, *args: Any, **kwargs: Any) -> None:
        f(*args, **kwargs)


def test_the_files_after_the_one_sent_are_read_ahead_in_their_order(files, monkeypatch):
    from dimsekit import readahead

    asked: list[str] = []
    monkeypatch.setattr(readahead, "prefetch_file", lambda path, limit: asked.append(Path(path).name) or 1)
    monkeypatch.setattr(FakeAssociation, "reactor", _ReactorWithPool(), raising=False)
    peer = FakePeer()
    code, _out, _err = run_store(peer, files)
    assert code == 0
    sent = [name for name, _cls, _uid in peer.commands]
    assert len(sent) == 3 and asked == sent[1:]


def test_read_files_skips_rle_labelled_jpeg_2000(tmp_path):
    # RLE fragments in a file whose File Meta says JPEG 2000 (as CTN's send_image would send
    # it): not sent, and counted; the same file labelled RLE is sent
    from pydicom.data import get_testdata_file

    ds = dcmread(get_testdata_file("SC_rgb_rle.dcm"))
    ds.save_as(tmp_path / "rle.dcm", enforce_file_format=True)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.91"
    ds.save_as(tmp_path / "labelled-j2k.dcm", enforce_file_format=True)
    infos, skipped = cli_store.read_files([(tmp_path / "rle.dcm", False), (tmp_path / "labelled-j2k.dcm", False)])
    assert [i.path.name for i in infos] == ["rle.dcm"]
    assert [(s.path.name, s.counts) for s in skipped] == [("labelled-j2k.dcm", True)]
    assert skipped[0].reason.startswith("RLE data in JPEG 2000 Image Compression: the first fragment of its Pixel Data")
