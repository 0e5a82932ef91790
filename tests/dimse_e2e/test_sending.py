"""C-STORE from a Part 10 file: unparsed when the peer accepted its transfer
syntax, re-encoded by pydicom among the uncompressed ones otherwise, refused
with a clear DatasetError for compressed data the peer cannot take."""

from __future__ import annotations

import shutil
import tempfile
import threading
from dataclasses import replace
from pathlib import Path

import pydicom
from pydicom import dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

import dimsekit.scu
from dimsekit.datasets import DatasetError, dataset_file_info, decode_dataset, part10_info
from dimsekit.uids import VERIFICATION
from tests.dimse_e2e.support import (
    BIG_ENDIAN,
    CT,
    CT_FILE,
    EXPLICIT,
    IMPLICIT,
    JPEG2000,
    JPEG2000_FILE,
    JPEG_BASELINE,
    JPEG_FILE,
    MR,
    MR_BIG_ENDIAN_FILE,
    MR_IMPLICIT_FILE,
    RT_PLAN,
    RT_PLAN_FILE,
    SC,
    LoopbackTestCase,
    Services,
    file_dataset_bytes,
    sha,
    within,
)

#: VRs whose values are words in the byte order of the transfer syntax (PS3.5 7.3)
WORD_SIZES = {"OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8}


def same_elements(test, received, path):
    """The file's elements, the words of OW/OL/OF/OD/OV values in ``received``'s byte order."""
    original = dcmread(path)
    swap = original.original_encoding[1] != received.original_encoding[1]
    for elem in original:
        expected = elem.value
        size = WORD_SIZES.get(elem.VR)
        if swap and size and isinstance(expected, bytes):
            expected = b"".join(expected[i : i + size][::-1] for i in range(0, len(expected), size))
        test.assertEqual(received[elem.tag].value, expected, f"{elem.keyword} differs")
    test.assertEqual(len(received), len(original))


def _never(*args, **kwargs):
    raise AssertionError("the data set was parsed or re-encoded")


class Part10SendingTests(LoopbackTestCase):
    def scratch_file(self) -> Path:
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory, True)
        return Path(directory) / "file.dcm"

    def forbid_parsing(self):
        self.patch(pydicom, "dcmread", _never)
        self.patch(dimsekit.scu, "encode_dataset", _never)

    async def _store(self, path, storage_ts, contexts):
        services = Services(storage_ts=storage_ts)
        _, port = await self.serve(services)
        assoc = await self.connect(port, [*contexts, VERIFICATION])
        self.assoc = assoc
        response = await within(assoc.store(path))
        self.assertEqual(response.status, 0x0000)
        (stored,) = services.stored
        await within(assoc.release())
        return stored

    async def test_accepted_transfer_syntax_goes_unparsed(self):
        self.forbid_parsing()
        for path, sop, ts in [(CT_FILE, CT, EXPLICIT), (MR_IMPLICIT_FILE, MR, IMPLICIT),
                              (MR_BIG_ENDIAN_FILE, MR, BIG_ENDIAN), (RT_PLAN_FILE, RT_PLAN, IMPLICIT)]:
            stored = await self._store(path, (ts,), [(sop, [ts])])
            self.assertEqual(stored.transfer_syntax, ts)
            self.assertEqual(sha(stored.data), sha(file_dataset_bytes(path)), path)

    async def test_compressed_file_with_its_syntax_accepted_goes_unparsed(self):
        self.forbid_parsing()
        for path, ts in [(JPEG2000_FILE, JPEG2000), (JPEG_FILE, JPEG_BASELINE)]:
            stored = await self._store(path, (ts, EXPLICIT), [(SC, [ts]), (SC, [EXPLICIT])])
            self.assertEqual(stored.transfer_syntax, ts)
            self.assertEqual(stored.data, file_dataset_bytes(path))

    async def test_uncompressed_file_is_reencoded_for_a_peer_taking_another_syntax(self):
        for path, sop, target in [(CT_FILE, CT, IMPLICIT), (MR_IMPLICIT_FILE, MR, EXPLICIT),
                                  (MR_BIG_ENDIAN_FILE, MR, IMPLICIT)]:
            stored = await self._store(path, (target,), [sop])
            self.assertEqual(stored.transfer_syntax, target)
            self.assertNotEqual(stored.data, file_dataset_bytes(path))
            same_elements(self, decode_dataset(stored.data, target), path)

    async def test_reencoding_runs_in_a_thread_not_the_reactors(self):
        # a C-MOVE to a peer taking only Implicit VR re-encodes every instance:
        # pydicom's read and write must not hold up the reactor's other associations
        threads_seen = []
        encode = dimsekit.scu.encode_dataset

        def spy(*args, **kwargs):
            threads_seen.append(threading.current_thread() is threading.main_thread())
            return encode(*args, **kwargs)

        self.patch(dimsekit.scu, "encode_dataset", spy)
        stored = await self._store(CT_FILE, (IMPLICIT,), [CT])
        self.assertEqual(threads_seen, [False])
        same_elements(self, decode_dataset(stored.data, IMPLICIT), CT_FILE)

    async def test_compressed_file_the_peer_cannot_take_fails_clearly(self):
        services = Services()  # uncompressed only
        _, port = await self.serve(services)
        assoc = await self.connect(port, [(SC, [EXPLICIT, IMPLICIT]), VERIFICATION])
        with self.assertRaises(DatasetError) as caught:
            await within(assoc.store(JPEG2000_FILE))
        message = str(caught.exception)
        self.assertIn("JPEG 2000", message)
        self.assertIn("did not accept", message)
        self.assertIn("JPEG2000.dcm", message)
        self.assertEqual(services.stored, [])
        self.assertEqual(await within(assoc.echo()), 0x0000)  # nothing was sent; the association goes on
        await within(assoc.release())

    async def test_compressed_dataset_the_peer_cannot_take_fails_clearly(self):
        services = Services()
        _, port = await self.serve(services)
        assoc = await self.connect(port, [SC, VERIFICATION])
        with self.assertRaises(DatasetError) as caught:
            await within(assoc.store(dcmread(JPEG_FILE)))
        self.assertIn("JPEG Baseline", str(caught.exception))
        self.assertEqual(await within(assoc.echo()), 0x0000)
        await within(assoc.release())

    async def test_an_unreadable_file_to_reencode_fails_with_a_dataset_error_and_the_association_goes_on(self):
        # File Meta fine, data set broken: pydicom cannot read it to re-encode it.
        # A DatasetError names the file (dimsekit store then fails that file and
        # goes on with the next); the association is untouched.
        broken = self.scratch_file()
        body = b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff\xfe\xff\x00\xe0\x10\x00\x00\x00"  # a sequence cut short
        broken.write_bytes(Path(CT_FILE).read_bytes()[: part10_info(CT_FILE).dataset_offset] + body)
        services = Services(storage_ts=(IMPLICIT,))
        _, port = await self.serve(services)
        assoc = await self.connect(port, [CT, VERIFICATION])
        with self.assertRaises(DatasetError) as caught:
            await within(assoc.store(broken))
        self.assertIn(str(broken), str(caught.exception))
        self.assertEqual(services.stored, [])
        self.assertEqual(await within(assoc.echo()), 0x0000)
        await within(assoc.release())

    async def test_a_file_whose_file_meta_is_in_implicit_vr_sends_its_data_set_from_where_it_starts(self):
        # PS3.10 7.1 has File Meta in Explicit VR, but files with it in Implicit
        # VR are about (and pydicom and DCMTK read them): the data set starts
        # after the meta's last element, wherever the meta's encoding puts it.
        source = dcmread(CT_FILE)
        meta = DicomBytesIO()
        meta.is_implicit_VR, meta.is_little_endian = True, True
        write_dataset(meta, source.file_meta)
        body = file_dataset_bytes(CT_FILE)
        path = self.scratch_file()
        path.write_bytes(b"\x00" * 128 + b"DICM" + meta.getvalue() + body)
        info = part10_info(path)
        self.assertEqual((info.sop_class_uid, info.transfer_syntax), (CT, EXPLICIT))
        self.assertEqual(info.dataset_offset, 132 + len(meta.getvalue()))
        self.forbid_parsing()
        stored = await self._store(path, (EXPLICIT,), [(CT, [EXPLICIT])])
        self.assertEqual(stored.data, body)

    async def test_a_part10info_names_the_uids_of_the_c_store_rq_raw_or_reencoded(self):
        # dimsekit store passes the file as read, with its data set's UIDs where
        # its File Meta's differ: the command names those, however the data goes
        info = replace(dataset_file_info(CT_FILE), sop_instance_uid="1.2.826.0.1.3680043.9.7433.77")
        for storage_ts in (EXPLICIT, IMPLICIT):  # its own syntax (unparsed), another (re-encoded)
            stored = await self._store(info, (storage_ts,), [(CT, [storage_ts])])
            self.assertEqual(stored.command["AffectedSOPInstanceUID"], "1.2.826.0.1.3680043.9.7433.77")
            self.assertEqual(stored.command["AffectedSOPClassUID"], CT)
            self.assertEqual(stored.transfer_syntax, storage_ts)
        # a path: the File Meta's, as before
        stored = await self._store(CT_FILE, (EXPLICIT,), [(CT, [EXPLICIT])])
        self.assertEqual(stored.command["AffectedSOPInstanceUID"], part10_info(CT_FILE).sop_instance_uid)
