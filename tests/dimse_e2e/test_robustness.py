"""What goes wrong in handlers and callbacks stays local: unencodable replies,
a raising pending callback, cancelling what C-CANCEL does not apply to, a
transport that no longer takes data."""

from __future__ import annotations

import warnings

from pydicom import dcmread
from pydicom.dataset import Dataset
from twisted.internet import defer, reactor, task

from dimsekit.datasets import decode_dataset
from dimsekit.dimse.commands import CommandField
from dimsekit.hookspecs import hookimpl
from dimsekit.registry import ServiceClass
from dimsekit.scu import STUDY_ROOT_FIND
from dimsekit.uids import VERIFICATION
from tests.dimse_e2e.support import (
    CT,
    CT_FILE,
    N_CLASS,
    LoopbackTestCase,
    Services,
    wait_until,
    within,
)


def unencodable() -> Dataset:
    ds = Dataset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns of the wrong value type, as it should
        ds.add_new(0x00280010, "US", "not a number")  # Rows
    return ds


class Handlers:
    def __init__(self):
        self.store_deferreds = []

    def n_get(self, request):
        return 0x0000, unencodable()

    def store(self, request):
        d = defer.Deferred()
        self.store_deferreds.append(d)
        return d

    @hookimpl
    def dimsekit_service_classes(self):
        return [
            ServiceClass(name="bad-n", sop_classes=(N_CLASS,), handlers={"N-GET": self.n_get}),
            ServiceClass(name="slow-store", sop_classes=(CT,), handlers={"C-STORE": self.store}),
            ServiceClass(name="echo", sop_classes=(VERIFICATION,), handlers={"C-ECHO": lambda r: 0}),
        ]


class RobustnessTests(LoopbackTestCase):
    async def test_unencodable_reply_becomes_processing_failure(self):
        _, port = await self.serve(Handlers())
        assoc = await self.connect(port, [N_CLASS, VERIFICATION])
        response = await within(assoc.n_get(N_CLASS, "1.2.3"))
        self.assertEqual(response.status, 0x0110)
        self.assertIn("encode", response.ErrorComment)
        self.assertIsNone(response.dataset)
        self.assertEqual(await within(assoc.echo()), 0x0000)
        await within(assoc.release())

    async def test_a_raising_pending_callback_does_not_break_the_association(self):
        services = Services()
        _, port = await self.serve(services)
        assoc = await self.connect(port, [STUDY_ROOT_FIND, VERIFICATION])
        calls = []

        def on_pending(response):
            calls.append(response)
            raise RuntimeError("callback bug")

        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        operation = assoc.find(query, on_pending=on_pending)
        final = await within(operation.result)
        self.assertEqual(final.status, 0x0000)
        self.assertEqual(len(calls), 3)
        self.assertEqual(operation.pending_count, 3)
        self.assertEqual(operation.responses, [])  # handed to the callback, not kept
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 3)
        self.assertEqual(await within(assoc.echo()), 0x0000)
        await within(assoc.release())

    async def test_cancelling_a_store_sends_no_c_cancel(self):
        handlers = Handlers()
        _, port = await self.serve(handlers)
        assoc = await self.connect(port, [CT, VERIFICATION])
        sent = []
        real_send = assoc.send_message
        assoc.send_message = lambda context, command, *a, **kw: sent.append(command["CommandField"]) or real_send(context, command, *a, **kw)
        d = assoc.store(CT_FILE)
        await wait_until(lambda: handlers.store_deferreds, 2, "the store reached the SCP")
        d.cancel()
        with self.assertRaises(defer.CancelledError):
            await d
        self.assertEqual(sent, [CommandField.C_STORE_RQ])  # no C-CANCEL-RQ for a C-STORE
        self.assertFalse(handlers.store_deferreds[0].called)
        handlers.store_deferreds[0].callback(0x0000)  # its response still arrives, and is not an error
        self.assertEqual(await within(assoc.echo()), 0x0000)
        await within(assoc.release())

    async def test_c_cancel_for_a_store_is_ignored_by_the_scp(self):
        handlers = Handlers()
        _, port = await self.serve(handlers)
        assoc = await self.connect(port, [CT, VERIFICATION])
        d = assoc.store(CT_FILE)
        await wait_until(lambda: handlers.store_deferreds, 2, "the store reached the SCP")
        (operation,) = assoc._operations.values()
        operation.command_field = CommandField.C_FIND_RQ  # make the SCU send it anyway
        operation.cancel()
        operation.command_field = CommandField.C_STORE_RQ  # what the C-STORE-RSP answers
        await task.deferLater(reactor, 0.1, lambda: None)  # the C-CANCEL-RQ arrives meanwhile
        self.assertFalse(handlers.store_deferreds[0].called)  # the SCP did not cancel the store
        handlers.store_deferreds[0].callback(0x0000)
        self.assertEqual((await within(d)).status, 0x0000)
        await within(assoc.release())

    async def test_nothing_more_is_read_once_the_transport_refuses_data(self):
        services = Services()
        _, port = await self.serve(services)
        assoc = await self.connect(port, [N_CLASS, VERIFICATION])
        reads = []

        def source():
            for i in range(1000):
                reads.append(i)
                yield b"\x00" * 16384

        assoc.protocol.send_pdata = lambda pdu: False  # as when the peer's A-ABORT was just read
        assoc.n_action(N_CLASS, "1.2.3", 1, source()).addErrback(lambda f: None)
        # read: what the first write took (one batch of PDUs, at most the transport's
        # block) and the block in hand -- not the other thousand
        self.assertLessEqual(len(reads) * 16384, assoc.protocol.send_batch + 2 * 16384)
        self.assertLess(len(reads), 10)
        assoc.abort("test")


class SendBatchTests(LoopbackTestCase):
    async def test_a_data_set_goes_out_in_batches_of_pdus_no_larger_than_the_transports_block(self):
        """Many 16 KiB PDUs per write (one pass through the upper layer and Twisted
        each), never more than the transport takes before pausing; the peer gets
        every byte, in order."""
        services = Services()
        _, port = await self.serve(services)
        assoc = await self.connect(port, [CT])
        writes = []
        real_send = assoc.protocol.send_pdata

        def send(pdus):
            writes.append((len(pdus), assoc.protocol.send_batch))
            return real_send(pdus)

        assoc.protocol.send_pdata = send
        pdu_max = assoc.negotiated.peer_maximum_length
        ds = dcmread(CT_FILE)
        ds.PixelData = bytes(range(256)) * 8192  # 2 MiB
        ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1024, 1024, 16, 16, 15
        response = await within(assoc.store(ds))
        self.assertEqual(response.status, 0x0000)
        stored = services.stored[-1]
        self.assertEqual(decode_dataset(stored.data, stored.transfer_syntax).PixelData, ds.PixelData)
        pdus = sum(size for size, _ in writes) // pdu_max
        self.assertLess(len(writes), pdus // 3)  # batched: far fewer writes than PDUs
        self.assertTrue(all(size <= block + pdu_max + 6 for size, block in writes))
        await within(assoc.release())
