"""DCMTK tools against a dimsekit AE served in this process: storescu with a
small and a large PDU (the data set bytes received checked by hash against
DCMTK's own rendering of each file, the elements against the file, and the
PDU sizes used), findscu --cancel stopping a running C-FIND."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from typing import Any

import pytest
from pydicom import dcmread
from twisted.internet import threads

from dimsekit.datasets import decode_dataset
from dimsekit.scu import STUDY_ROOT_FIND
from tests.dimse_e2e.support import (
    CT_FILE,
    EXPLICIT,
    IMPLICIT,
    JPEG2000,
    JPEG2000_FILE,
    JPEG_BASELINE,
    JPEG_FILE,
    MR_FILE,
    MR_IMPLICIT_FILE,
    RT_PLAN_FILE,
    LoopbackTestCase,
    Services,
    sha,
    wait_until,
)
from tests.dimse_e2e.test_async import SlowFind
from tests.interop.conftest import dcmtk

pytestmark = pytest.mark.interop

UNCOMPRESSED = [CT_FILE, MR_FILE, MR_IMPLICIT_FILE, RT_PLAN_FILE]
#: storescu proposes one compressed syntax per run: -xw JPEG 2000 (lossy or lossless), -xy JPEG baseline
J2K = ("-xw", JPEG2000_FILE, JPEG2000)
JPEG = ("-xy", JPEG_FILE, JPEG_BASELINE)


class PduSizes:
    """A plugin that records the size of every P-DATA-TF PDU its associations receive.

    (It frames the bytes the association's protocol is handed by the transport,
    PDU header by PDU header: above the upper layer, the P-DATA-TF PDUs of one
    read go up as one indication, and a PDU's size is not visible there.)
    """

    def __init__(self) -> None:
        self.sizes: list[int] = []

    from dimsekit.hookspecs import hookimpl

    @hookimpl
    def dimsekit_on_association_established(self, association: Any) -> None:
        protocol = association.protocol
        deliver = protocol.dataReceived
        header = bytearray()
        left = 0  # bytes of the current PDU's body still to come

        def framing(data: bytes) -> None:
            nonlocal left
            view = memoryview(data)
            while view:
                if left:
                    taken = min(left, len(view))
                    left -= taken
                    view = view[taken:]
                    continue
                need = 6 - len(header)
                header.extend(view[:need])
                view = view[need:]
                if len(header) == 6:
                    length = int.from_bytes(header[2:6], "big")
                    if header[0] == 0x04:
                        self.sizes.append(6 + length)
                    header.clear()
                    left = length
            deliver(data)

        protocol.dataReceived = framing


def _meaningful(dataset: Any) -> dict[int, Any]:
    """Element values by tag, without what DCMTK drops when it sends: group
    lengths and data set trailing padding."""
    return {int(e.tag): e.value for e in dataset if e.tag.element != 0 and e.tag != 0xFFFCFFFC}


def run(args: list[str], timeout: float = 20.0) -> Any:
    return threads.deferToThread(subprocess.run, args, capture_output=True, text=True, timeout=timeout)


def dcmtk_rendering(path: str, transfer_syntax: str, tmp: str) -> bytes:
    """The data set of ``path`` as DCMTK writes it on the network in ``transfer_syntax``.

    storescu does not send a file's bytes as they are: it parses the file and
    writes the data set again (explicit lengths, no group lengths, no
    padding), in the negotiated transfer syntax.  ``dcmconv`` with the same
    options gives the same bytes, so the hash comparison checks that dimsekit
    received exactly, byte for byte, what storescu sent.
    """
    ts_option = {EXPLICIT: ["+te"], IMPLICIT: ["+ti"]}.get(transfer_syntax, [])
    result = subprocess.run([dcmtk("dcmconv"), "-F", "-g", "+e", "-p", *ts_option, path, tmp],
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 0, result.stdout + result.stderr
    with open(tmp, "rb") as f:
        return f.read()


class StorescuTests(LoopbackTestCase):
    timeout = 30

    async def _storescu(self, *options: str, max_pdu: int, compressed: tuple[str, str, str] = J2K) -> tuple[Services, PduSizes]:
        services = Services(storage_ts=(EXPLICIT, IMPLICIT, JPEG2000, JPEG_BASELINE))
        sizes = PduSizes()
        _, port = await self.serve(services, sizes, max_pdu=max_pdu)
        option, compressed_file, compressed_ts = compressed
        files = [*UNCOMPRESSED, compressed_file]
        result = await run([dcmtk("storescu"), "-R", option, *options, "-aet", "STORESCU", "-aec", "SCP",
                            "127.0.0.1", str(port), *files])
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertEqual(len(services.stored), len(files), result.stdout + result.stderr)
        workdir = tempfile.mkdtemp(prefix="dimsekit-dcmconv-")
        self.addCleanup(shutil.rmtree, workdir, True)
        tmp = os.path.join(workdir, "rendering.dcm")
        for path, stored in zip(files, services.stored, strict=True):
            sent = dcmtk_rendering(path, stored.transfer_syntax, tmp)
            self.assertEqual(sha(stored.data), sha(sent), f"{path} arrived changed")
            self.assertEqual(_meaningful(decode_dataset(stored.data, stored.transfer_syntax)),
                             _meaningful(dcmread(path)), f"{path}: elements differ")
        self.assertEqual(services.stored[-1].transfer_syntax, compressed_ts)
        # a compressed data set is not re-encoded: its pixel data fragments arrive as in the file
        original = dcmread(compressed_file)
        received = decode_dataset(services.stored[-1].data, compressed_ts)
        self.assertEqual(received.PixelData, original.PixelData)
        await wait_until(lambda: self._trackers[0].ended, 5, "storescu released")
        self.assertEqual(self._trackers[0].ended[0][1].ended, "released by the peer")
        return services, sizes

    async def test_max_send_pdu_4096(self):
        services, sizes = await self._storescu("--max-send-pdu", "4096", max_pdu=16384)
        self.assertLessEqual(max(sizes.sizes), 4096)
        self.assertGreater(max(sizes.sizes), 4000)  # the data sets really were cut at 4096
        self.assertGreater(len(sizes.sizes), 39_000 // 4096)

    async def test_large_pdu(self):
        _, sizes = await self._storescu("--max-pdu", "131072", "--max-send-pdu", "131072", max_pdu=131072, compressed=JPEG)
        self.assertLessEqual(max(sizes.sizes), 131072)
        self.assertGreater(max(sizes.sizes), 38_700)  # CT_small's whole data set (38,732 bytes) in one PDU

    async def test_our_maximum_is_honoured_by_storescu(self):
        _, sizes = await self._storescu("--max-send-pdu", "131072", max_pdu=8192)
        self.assertLessEqual(max(sizes.sizes), 8192)
        self.assertGreater(max(sizes.sizes), 8000)


class FindscuCancelTests(LoopbackTestCase):
    timeout = 30

    async def test_findscu_cancel_stops_the_handler(self):
        scp = SlowFind(delay=0.02, count=200)
        _, port = await self.serve(scp)
        result = await run([
            dcmtk("findscu"), "-v", "-S", "--cancel", "3", "-aet", "FINDSCU", "-aec", "SCP",
            "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientName=*", "127.0.0.1", str(port),
        ])
        output = result.stdout + result.stderr
        self.assertEqual(result.returncode, 0, output)
        self.assertIn("Sending Cancel Request (MsgID 1", output)
        self.assertIn("Received Final Find Response (Cancel", output)
        pending = len(re.findall(r"Find Response: \d+ \(Pending\)", output))
        self.assertTrue(3 <= pending <= 5, output)  # one or two may cross the C-CANCEL
        self.assertEqual(len(scp.requests), 1)
        request = scp.requests[0]
        self.assertEqual(request.sop_class_uid, STUDY_ROOT_FIND)
        self.assertTrue(request.cancelled)
        await wait_until(lambda: scp.states and scp.states[-1] == "closed", 5, "the generator closed")
        self.assertLess(len(scp.states), 20, scp.states)
