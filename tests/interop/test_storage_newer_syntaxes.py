"""A node as shipped takes video (MPEG-4, from DCMTK storescu) and HTJ2K (from pynetdicom)
and keeps each as received, byte for byte.

The pixel data are made-up bytes in the syntax's encapsulation: the node stores what it
is sent without decoding it, so only the framing has to be right.
"""

from __future__ import annotations

import os

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import MPEG4HP41, HTJ2KLossless, generate_uid
from pynetdicom import AE

from dimsekit.datasets import part10_info
from tests.interop.conftest import _finish_node, dcmtk, run, start_node

pytestmark = pytest.mark.interop

VIDEO_ENDOSCOPIC = "1.2.840.10008.5.1.4.1.1.77.1.1.1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def instance(sop_class: str, syntax: str, **attributes) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "NEWER-1"
    ds.PatientName = "Newer^Syntax"
    for key, value in attributes.items():
        setattr(ds, key, value)
    ds.PixelData = encapsulate([os.urandom(40_001)])  # one fragment, as the encoders make
    ds["PixelData"].VR = "OB"
    return ds


def stored_files(node) -> dict[str, object]:
    return {part10_info(p).sop_instance_uid: p for p in (node.workdir / "dimsekit-data").rglob("*.dcm")}


def test_video_from_storescu_and_htj2k_from_pynetdicom_kept_as_received(tmp_path):
    video = instance(VIDEO_ENDOSCOPIC, MPEG4HP41, Modality="ES", Rows=1080, Columns=1920, NumberOfFrames=30,
                     SamplesPerPixel=3, PhotometricInterpretation="YBR_PARTIAL_420", BitsAllocated=8,
                     BitsStored=8, HighBit=7, PixelRepresentation=0, PlanarConfiguration=0)
    video_path = tmp_path / "clip.dcm"
    video.save_as(video_path, enforce_file_format=True)
    ct = instance(CT_IMAGE_STORAGE, HTJ2KLossless, Modality="CT", Rows=64, Columns=64, SamplesPerPixel=1,
                  PhotometricInterpretation="MONOCHROME2", BitsAllocated=16, BitsStored=16, HighBit=15,
                  PixelRepresentation=0)
    node = start_node(tmp_path)
    try:
        sent = run([dcmtk("storescu"), "-R", "-xn", "-aec", "DIMSEKIT", "127.0.0.1", str(node.port), str(video_path)])
        assert sent.returncode == 0, sent.stdout + sent.stderr

        ae = AE(ae_title="PYNETDICOM")
        ae.add_requested_context(CT_IMAGE_STORAGE, [HTJ2KLossless])
        assoc = ae.associate("127.0.0.1", node.port, ae_title="DIMSEKIT")
        assert assoc.is_established
        try:
            (context,) = assoc.accepted_contexts
            assert context.transfer_syntax == [HTJ2KLossless]
            assert assoc.send_c_store(ct).Status == 0x0000
        finally:
            assoc.release()
    finally:
        _finish_node(node)
    files = stored_files(node)
    for ds, sent_path in ((video, video_path), (ct, None)):
        stored = dcmread(files[ds.SOPInstanceUID])
        assert stored.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
        assert stored.PixelData == ds.PixelData  # the fragments, byte for byte
        if sent_path is not None:
            assert stored.NumberOfFrames == 30
