"""Association.store() of a compressed file to a peer that accepts its SOP class only
uncompressed: decoded by pydicom and sent in the uncompressed syntax the peer took,
as ``[node] decompress`` (or ``association.decompress``) allows.

The peer is a dimsekit AE whose storage contexts accept the uncompressed syntaxes only.
"""

from __future__ import annotations

import numpy as np
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset

from dimsekit.config import Config, ConfigError, Limits, NodeConfig, from_mapping
from dimsekit.datasets import DatasetError, decode_dataset, decompressible
from tests.dimse_e2e.support import (
    EXPLICIT,
    JPEG_BASELINE,
    JPEG_FILE,
    MR,
    SC,
    LoopbackTestCase,
    Services,
    within,
)

RLE = "1.2.840.10008.1.2.5"
RLE_FILE = get_testdata_file("MR_small_RLE.dcm")  # MR, RLE Lossless


def received(stored):
    """The data set the peer got, as pydicom reads it (its transfer syntax in a File Meta)."""
    dataset = decode_dataset(stored.data, stored.transfer_syntax)
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = stored.transfer_syntax
    return dataset


def test_what_may_be_decompressed():
    assert decompressible(RLE, "lossless") is None
    assert decompressible(RLE, "lossy") is None
    assert "off" in decompressible(RLE, "never")
    assert "is lossy" in decompressible(JPEG_BASELINE, "lossless")
    assert decompressible(JPEG_BASELINE, "lossy") is None  # Pillow decodes it
    assert "cannot decode" in decompressible("1.2.840.10008.1.2.4.100", "lossy")  # MPEG2: pixel data is video


def test_the_setting():
    assert NodeConfig().decompress == "lossless"
    assert NodeConfig().max_decoded_mb == 1024
    assert from_mapping({"node": {"max_decoded_mb": 4096}}).node.max_decoded_mb == 4096
    try:
        from_mapping({"node": {"max_decoded_mb": 0}})
    except ConfigError as exc:
        assert "node.max_decoded_mb: give 1 or more MiB, got 0" in str(exc)
    else:
        raise AssertionError("accepted")
    assert from_mapping({"node": {"decompress": "lossy"}}).node.decompress == "lossy"
    try:
        from_mapping({"node": {"decompress": "always"}})
    except ConfigError as exc:
        assert "node.decompress: 'always' is not one of: never, lossless, lossy" in str(exc)
    else:
        raise AssertionError("accepted")


class DecompressTests(LoopbackTestCase):
    async def store_to_uncompressed_peer(self, path, sop_class, syntax, *, policy=None, node_policy="lossless",
                                         max_decoded_mb=1024):
        services = Services()  # its storage contexts: uncompressed syntaxes only
        _ae, port = await self.serve(services)
        config = Config(node=NodeConfig(ae_title="SCU", decompress=node_policy, max_decoded_mb=max_decoded_mb),
                        limits=Limits(dimse_timeout=5.0, acse_timeout=5.0))
        client = self.make_ae("SCU", config=config)
        assoc = await self.connect(port, [(sop_class, [syntax]), (sop_class, [EXPLICIT])], ae=client)
        self.assertIsNone(assoc.negotiated.context_for(sop_class, syntax, as_scu=True))  # refused as stored
        if policy is not None:
            assoc.decompress = policy
        try:
            response = await within(assoc.store(path))
        finally:
            await within(assoc.release())
        return services, response

    async def test_a_lossless_file_goes_decoded(self):
        services, response = await self.store_to_uncompressed_peer(RLE_FILE, MR, RLE)
        self.assertEqual(response.status, 0x0000)
        (stored,) = services.stored
        self.assertEqual(stored.transfer_syntax, EXPLICIT)
        original = dcmread(RLE_FILE)
        self.assertEqual(stored.command["AffectedSOPInstanceUID"], original.SOPInstanceUID)
        got = received(stored)
        self.assertEqual(got.SOPInstanceUID, original.SOPInstanceUID)
        self.assertEqual(got.PatientName, original.PatientName)
        np.testing.assert_array_equal(got.pixel_array, original.pixel_array)  # every value, as encoded
        self.assertEqual(len(got.PixelData), original.Rows * original.Columns * 2)  # native, not encapsulated

    async def test_never_when_told_so(self):
        with self.assertRaises(DatasetError) as raised:
            await self.store_to_uncompressed_peer(RLE_FILE, MR, RLE, node_policy="never")
        self.assertIn("not decompressed: decompressing is off", str(raised.exception))

    async def test_a_lossy_file_only_when_lossy_is_allowed(self):
        with self.assertRaises(DatasetError) as raised:
            await self.store_to_uncompressed_peer(JPEG_FILE, SC, JPEG_BASELINE)
        self.assertIn("JPEG Baseline (Process 1) is lossy, and only lossless data is decompressed",
                      str(raised.exception))
        services, response = await self.store_to_uncompressed_peer(JPEG_FILE, SC, JPEG_BASELINE, policy="lossy")
        self.assertEqual(response.status, 0x0000)
        (stored,) = services.stored
        got = received(stored)
        original = dcmread(JPEG_FILE)
        self.assertEqual(got.PhotometricInterpretation, "RGB")  # decoded from YBR_FULL_422
        self.assertEqual(got.LossyImageCompression, "01")  # still says what it went through
        np.testing.assert_array_equal(got.pixel_array, original.pixel_array)


def test_a_lossy_file_without_lossy_image_compression_gets_it():
    from dimsekit.datasets import decompressed

    dataset = dcmread(JPEG_FILE)
    del dataset.LossyImageCompression
    decompressed(dataset)
    assert dataset.LossyImageCompression == "01"
    assert dataset.file_meta.TransferSyntaxUID == EXPLICIT
    assert dataset.SOPInstanceUID == dcmread(JPEG_FILE).SOPInstanceUID
    lossless = dcmread(RLE_FILE)
    decompressed(lossless)
    assert "LossyImageCompression" not in lossless


class MultiFrameTests(LoopbackTestCase):
    store_to_uncompressed_peer = DecompressTests.store_to_uncompressed_peer

    async def test_no_more_decoded_at_once_than_max_decoded_mb(self):
        # 1024 x 1024 x 16 bits in RLE: 2 MiB decoded
        from pydicom.uid import RLELossless

        dataset = dcmread(RLE_FILE)
        pixels = (np.arange(1024 * 1024, dtype=np.int16) % 4096).reshape(1024, 1024)
        dataset.Rows = dataset.Columns = 1024
        dataset.compress(RLELossless, pixels, generate_instance_uid=False)
        from tests.dimse_e2e.test_tls import temporary_directory

        path = temporary_directory(self) / "big-rle.dcm"
        dataset.save_as(path, enforce_file_format=True)
        with self.assertRaises(DatasetError) as raised:
            await self.store_to_uncompressed_peer(path, MR, RLE, max_decoded_mb=1)
        self.assertIn("would take 2 MiB, more than the 1 MiB dimsekit decodes at once (max_decoded_mb)",
                      str(raised.exception))
        services, response = await self.store_to_uncompressed_peer(path, MR, RLE, max_decoded_mb=2)
        self.assertEqual(response.status, 0x0000)
        np.testing.assert_array_equal(received(services.stored[0]).pixel_array, pixels)

    async def test_every_frame_of_a_colour_rle_instance(self):
        path = get_testdata_file("SC_rgb_rle_2frame.dcm")  # 2 frames, RGB, RLE Lossless
        services, response = await self.store_to_uncompressed_peer(path, SC, RLE)
        self.assertEqual(response.status, 0x0000)
        (stored,) = services.stored
        got = received(stored)
        original = dcmread(path)
        self.assertEqual(got.NumberOfFrames, 2)
        self.assertEqual(got.PlanarConfiguration, 0)  # native colour data, pixel by pixel
        self.assertEqual(len(got.PixelData), 2 * 100 * 100 * 3)
        np.testing.assert_array_equal(got.pixel_array, original.pixel_array)


def test_an_instance_too_large_to_decode_at_once_is_refused_before_decoding(monkeypatch):
    import dimsekit.datasets as datasets

    dataset = dcmread(RLE_FILE)  # 64 x 64 x 16 bits: 8 KiB decoded
    assert datasets.decoded_size(dataset) == 64 * 64 * 2
    monkeypatch.setattr(datasets, "MAX_DECODED_BYTES", 8191)
    try:
        datasets.decompressed(dataset)
    except DatasetError as exc:
        assert "more than the 0 MiB dimsekit decodes at once" in str(exc)
    else:
        raise AssertionError("decoded")
    assert dataset.file_meta.TransferSyntaxUID == RLE  # untouched
    monkeypatch.setattr(datasets, "MAX_DECODED_BYTES", 8192)
    datasets.decompressed(dataset)
    assert dataset.file_meta.TransferSyntaxUID == EXPLICIT
