"""The asynchronous operations window, C-CANCEL, DIMSE and retrieve timeouts,
and a data set source that fails half-way -- dimsekit <-> dimsekit on 127.0.0.1."""

from __future__ import annotations

import dataclasses

from pydicom.dataset import Dataset
from twisted.internet import defer, reactor, task

from dimsekit.config import ConfigError, from_mapping
from dimsekit.errors import AssociationAborted, DIMSETimeout
from dimsekit.hookspecs import hookimpl
from dimsekit.registry import ServiceClass
from dimsekit.scu import STUDY_ROOT_FIND, STUDY_ROOT_GET, STUDY_ROOT_MOVE
from dimsekit.uids import VERIFICATION
from tests.dimse_e2e.support import (
    CT,
    CT_FILE,
    MR,
    MR_FILE,
    N_CLASS,
    LoopbackTestCase,
    Services,
    counts,
    match,
    wait_until,
    within,
)

CANCEL = 0xFE00


def query() -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientName = "*"
    return ds


class Deferring:
    """N-ACTION handlers that answer only when the test fires their Deferred."""

    def __init__(self):
        self.waiting: list[tuple[int, defer.Deferred]] = []
        self.most_at_once = 0
        self.started: list[int] = []

    def n_action(self, request):
        action = int(request.command["ActionTypeID"])
        d = defer.Deferred()
        self.waiting.append((action, d))
        self.started.append(action)
        self.most_at_once = max(self.most_at_once, len(self.waiting))

        def answer(_):
            self.waiting.remove((action, d))
            reply = Dataset()
            reply.PatientID = f"REPLY{action}"
            return 0x0000, reply

        return d.addCallback(answer)

    def fire(self, index=0):
        self.waiting[index][1].callback(None)

    @hookimpl
    def dimsekit_service_classes(self):
        return [
            ServiceClass(name="deferring", sop_classes=(N_CLASS,), handlers={"N-ACTION": self.n_action}),
            ServiceClass(name="echo", sop_classes=(VERIFICATION,), handlers={"C-ECHO": lambda r: 0}),
        ]


class AsyncWindowTests(LoopbackTestCase):
    async def _start(self, n, *, scp_window=None, scu_window=None):
        handlers = Deferring()
        limits = {}
        if scp_window is not None:
            limits = {"max_operations_invoked": scp_window[0], "max_operations_performed": scp_window[1]}
        _, port = await self.serve(handlers, **limits)
        kwargs = {} if scu_window is None else {"async_window": scu_window}
        assoc = await self.connect(port, [N_CLASS], **kwargs)
        arrived = []
        ops = []
        for i in range(n):
            d = assoc.n_action(N_CLASS, f"1.2.3.{i + 1}", i + 1)
            d.addCallback(lambda response, i=i: arrived.append((i + 1, response)) or response)
            ops.append(d)
        return handlers, assoc, ops, arrived

    async def test_eight_outstanding_answered_out_of_order(self):
        handlers, assoc, ops, arrived = await self._start(8, scp_window=(8, 8), scu_window=(8, 8))
        self.assertEqual(assoc.negotiated.max_outstanding_local, 8)
        self.assertEqual(assoc.negotiated.max_outstanding_remote, 8)
        await wait_until(lambda: len(handlers.waiting) == 8, 5, "8 requests running at the SCP")
        self.assertEqual(len(assoc._operations), 8)
        for index in reversed(range(8)):  # answer the newest first
            handlers.fire(index)
        await within(defer.gatherResults(ops))
        self.assertEqual([action for action, _ in arrived], [8, 7, 6, 5, 4, 3, 2, 1])
        for action, response in arrived:
            self.assertEqual(response.status, 0x0000)
            self.assertEqual(response.ActionTypeID, action)
            self.assertEqual(response.AffectedSOPInstanceUID, f"1.2.3.{action}")
            self.assertEqual(response.dataset.PatientID, f"REPLY{action}")
        self.assertEqual(len({response.MessageIDBeingRespondedTo for _, response in arrived}), 8)
        self.assertEqual(handlers.most_at_once, 8)
        await within(assoc.release())

    async def test_default_window_sends_one_at_a_time(self):
        handlers, assoc, ops, arrived = await self._start(4)
        self.assertEqual(assoc.negotiated.max_outstanding_local, 1)
        for expected in range(1, 5):
            await wait_until(lambda: handlers.waiting, 5, f"request {expected} at the SCP")
            # give the reactor time to (wrongly) deliver a second request
            await task.deferLater(reactor, 0.02, lambda: None)
            self.assertEqual([a for a, _ in handlers.waiting], [expected])
            self.assertEqual(len(assoc._operations), 1)
            handlers.fire()
        await within(defer.gatherResults(ops))
        self.assertEqual([a for a, _ in arrived], [1, 2, 3, 4])
        self.assertEqual(handlers.most_at_once, 1)
        await within(assoc.release())

    async def test_scp_window_smaller_than_proposed_limits_the_scu(self):
        handlers, assoc, ops, arrived = await self._start(6, scp_window=(1, 2), scu_window=(8, 8))
        self.assertEqual(assoc.negotiated.max_outstanding_local, 2)
        await wait_until(lambda: len(handlers.waiting) == 2, 5, "2 requests at the SCP")
        await task.deferLater(reactor, 0.02, lambda: None)
        self.assertEqual(len(handlers.waiting), 2)
        self.assertEqual(len(assoc._operations), 2)  # the other 4 wait on our side, unsent
        self.assertEqual(len(self._trackers[0].associations[0].scp.queue), 0)
        for _ in range(6):
            await wait_until(lambda: handlers.waiting, 5, "a request at the SCP")
            handlers.fire(len(handlers.waiting) - 1)
        await within(defer.gatherResults(ops))
        self.assertEqual(handlers.most_at_once, 2)
        self.assertEqual(sorted(a for a, _ in arrived), [1, 2, 3, 4, 5, 6])
        await within(assoc.release())

    async def test_scp_queues_requests_beyond_its_window(self):
        # A peer that ignores the negotiated window: the SCP still runs at most 2 at once.
        handlers, assoc, ops, arrived = await self._start(0, scp_window=(1, 2), scu_window=(8, 8))
        assoc.negotiated = dataclasses.replace(assoc.negotiated, max_outstanding_local=0)
        ops = [assoc.n_action(N_CLASS, f"1.2.3.{i}", i) for i in range(1, 6)]
        await wait_until(lambda: len(handlers.waiting) == 2, 5, "2 requests running")
        await task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(len(handlers.waiting), 2)
        for _ in range(5):
            await wait_until(lambda: handlers.waiting, 5, "a request running")
            handlers.fire()
        responses = await within(defer.gatherResults(ops))
        self.assertEqual([r.ActionTypeID for r in responses], [1, 2, 3, 4, 5])
        self.assertEqual(handlers.started, [1, 2, 3, 4, 5])
        self.assertEqual(handlers.most_at_once, 2)
        await within(assoc.release())

    def test_window_config_is_validated(self):
        with self.assertRaises(ConfigError) as caught:
            from_mapping({"limits": {"max_operations_performed": 70000}})
        self.assertIn("limits.max_operations_performed", str(caught.exception))
        self.assertEqual(from_mapping({"limits": {"max_operations_invoked": 0}}).limits.max_operations_invoked, 0)


class SlowFind:
    """A C-FIND SCP whose matches come slowly; records how the stream ended."""

    def __init__(self, delay=0.02, count=50):
        self.delay = delay
        self.count = count
        self.states = []
        self.requests = []
        self.never: defer.Deferred | None = None

    async def _matches(self, request):
        try:
            for i in range(self.count):
                await task.deferLater(reactor, self.delay, lambda: None)
                self.states.append(i)
                yield 0xFF00, match(i)
        finally:
            self.states.append("closed" if request.cancelled else "ended")

    def find(self, request):
        self.requests.append(request)
        if request.command["Priority"] == 1:  # HIGH: a handler that just waits (a Deferred)
            self.never = defer.Deferred()
            return self.never
        return self._matches(request)

    async def _forever(self, request):
        i = 0
        while True:
            await task.deferLater(reactor, 0.01, lambda: None)
            i += 1
            yield 0xFF00, None, {"NumberOfRemainingSuboperations": 100, "NumberOfCompletedSuboperations": i,
                                 "NumberOfFailedSuboperations": 0, "NumberOfWarningSuboperations": 0}

    def move(self, request):
        self.requests.append(request)
        return self._forever(request)

    @hookimpl
    def dimsekit_service_classes(self):
        return [
            ServiceClass(name="slow-find", sop_classes=(STUDY_ROOT_FIND,), handlers={"C-FIND": self.find}),
            ServiceClass(name="slow-move", sop_classes=(STUDY_ROOT_MOVE,), handlers={"C-MOVE": self.move}),
            ServiceClass(name="echo", sop_classes=(VERIFICATION,), handlers={"C-ECHO": lambda r: 0}),
        ]


class CancelTests(LoopbackTestCase):
    async def test_cancel_a_running_find(self):
        scp = SlowFind()
        _, port = await self.serve(scp)
        assoc = await self.connect(port, [STUDY_ROOT_FIND, VERIFICATION])
        operation = assoc.find(query())
        seen = []
        async for response in operation:
            seen.append(response)
            if len(seen) == 2:
                operation.cancel()
        final = await within(operation.result)
        self.assertEqual(final.status, CANCEL)
        self.assertLess(len(seen), 10)
        self.assertTrue(scp.requests[0].cancelled)
        await wait_until(lambda: scp.states and scp.states[-1] == "closed", 2, "generator closed")
        self.assertLess(len(scp.states), 12)
        # the association goes on
        self.assertEqual(await within(assoc.echo()), 0x0000)
        await within(assoc.release())

    async def test_cancel_a_handler_waiting_on_a_deferred(self):
        scp = SlowFind()
        _, port = await self.serve(scp)
        assoc = await self.connect(port, [STUDY_ROOT_FIND, VERIFICATION])
        operation = assoc.find(query(), priority=1)
        await wait_until(lambda: scp.never is not None, 2, "the handler runs")
        assoc.cancel(operation)
        final = await within(operation.result)
        self.assertEqual(final.status, CANCEL)
        self.assertTrue(scp.never.called)  # cancelled by the C-CANCEL
        self.assertEqual(await within(assoc.echo()), 0x0000)
        await within(assoc.release())

    async def test_deferred_cancel_sends_c_cancel(self):
        scp = SlowFind()
        _, port = await self.serve(scp)
        assoc = await self.connect(port, [STUDY_ROOT_FIND, VERIFICATION])
        operation = assoc.find(query())
        await wait_until(lambda: operation.responses, 2, "a first match")
        operation.result.cancel()
        with self.assertRaises(defer.CancelledError):
            await operation.result
        await wait_until(lambda: scp.states and scp.states[-1] == "closed", 2, "generator closed")
        self.assertTrue(scp.requests[0].cancelled)
        self.assertEqual(await within(assoc.echo()), 0x0000)
        await within(assoc.release())

    async def test_cancel_a_get_while_its_scp_awaits_a_store_suboperation(self):
        services = Services()
        services.retrieve_files = [CT_FILE, MR_FILE, CT_FILE]
        _, port = await self.serve(services)
        assoc = await self.connect(port, [STUDY_ROOT_GET, CT, MR, VERIFICATION], roles={CT: (True, True), MR: (True, True)})
        stores: list[defer.Deferred] = []

        def on_store(request):
            d = defer.Deferred()
            stores.append(d)
            return d

        operation = assoc.get(query(), on_store=on_store)
        await wait_until(lambda: stores, 2, "the first sub-operation")
        stores[0].callback(0x0000)
        await wait_until(lambda: len(stores) == 2, 2, "the second sub-operation")
        operation.cancel()  # the SCP is awaiting the second C-STORE-RSP
        await task.deferLater(reactor, 0.05, lambda: None)
        stores[1].callback(0x0000)
        final = await within(operation.result)
        self.assertEqual(final.status, CANCEL)
        # the C-CANCEL interrupts the handler where it awaits (CancelledError); this
        # plugin counts the interrupted sub-operation as failed, then the stream stops
        self.assertEqual(final.NumberOfCompletedSuboperations, 1)
        self.assertEqual(final.NumberOfFailedSuboperations, 1)
        self.assertEqual(final.NumberOfRemainingSuboperations, 1)
        self.assertEqual(len(stores), 2)  # no third sub-operation was started
        self.assertEqual(await within(assoc.echo()), 0x0000)
        await within(assoc.release())

    async def test_cancel_of_a_queued_request_never_sends_it(self):
        scp = SlowFind(count=3)
        _, port = await self.serve(scp)
        assoc = await self.connect(port, [STUDY_ROOT_FIND])
        first = assoc.find(query())
        second = assoc.find(query())  # window 1: waits for the first
        second.cancel()
        self.assertEqual((await within(second.result)).status, CANCEL)
        self.assertEqual((await within(first.result)).status, 0x0000)
        self.assertEqual(len(scp.requests), 1)
        await within(assoc.release())


class TimeoutTests(LoopbackTestCase):
    async def test_dimse_timeout_fails_the_request_and_aborts(self):
        handlers = Deferring()
        acceptor, port = await self.serve(handlers)
        scu = self.make_ae("SCU", dimse_timeout=0.2)
        assoc = await self.connect(port, [N_CLASS, VERIFICATION], ae=scu)
        started = reactor.seconds()
        with self.assertRaises(DIMSETimeout) as caught:
            await within(assoc.n_action(N_CLASS, "1.2.3", 1))
        self.assertGreaterEqual(reactor.seconds() - started, 0.19)
        self.assertIn("no DIMSE response within 0.2 s", str(caught.exception))
        self.assertTrue(assoc.ended.startswith("aborted"))
        # the SCP sees the abort; its handler's Deferred is cancelled
        await wait_until(lambda: acceptor.tracker.ended, 2, "the acceptor's association ended")
        self.assertEqual(acceptor.tracker.ended[0][0], "aborted by the peer (A-ABORT)")
        self.assertEqual(len(handlers.waiting), 1)
        self.assertTrue(handlers.waiting[0][1].called)  # cancelled when the association ended
        self.flushLoggedErrors(defer.CancelledError)

    async def test_later_requests_fail_too(self):
        handlers = Deferring()
        _, port = await self.serve(handlers)
        scu = self.make_ae("SCU", dimse_timeout=0.2)
        assoc = await self.connect(port, [N_CLASS, VERIFICATION], ae=scu)
        first = assoc.n_action(N_CLASS, "1.2.3", 1)
        queued = assoc.echo()  # window 1: queued behind the first
        with self.assertRaises(DIMSETimeout):
            await within(first)
        with self.assertRaises(AssociationAborted):
            await within(queued)
        self.flushLoggedErrors(defer.CancelledError)

    async def test_retrieve_total_timeout_despite_pending_responses(self):
        scp = SlowFind()
        _, port = await self.serve(scp)
        scu = self.make_ae("SCU", dimse_timeout=0.3)
        assoc = await self.connect(port, [STUDY_ROOT_MOVE], ae=scu)
        started = reactor.seconds()
        operation = assoc.move(query(), "ANYWHERE", total_timeout=0.6)
        with self.assertRaises(DIMSETimeout) as caught:
            await within(operation.result)
        elapsed = reactor.seconds() - started
        self.assertGreaterEqual(elapsed, 0.59)
        self.assertLess(elapsed, 3)
        self.assertGreater(len(operation.responses), 5)  # pendings kept the DIMSE timer from firing
        self.assertIn("not finished within 0.6 s", str(caught.exception))
        self.assertTrue(assoc.ended.startswith("aborted"))
        await wait_until(lambda: scp.requests[0].cancelled, 2, "the SCP's stream stopped")


    async def test_find_total_timeout(self):
        scp = SlowFind(delay=0.01, count=10_000)
        _, port = await self.serve(scp)
        scu = self.make_ae("SCU", dimse_timeout=0.3)
        assoc = await self.connect(port, [STUDY_ROOT_FIND], ae=scu)
        operation = assoc.find(query(), total_timeout=0.4)
        with self.assertRaises(DIMSETimeout):
            async for _ in operation:
                pass
        self.assertGreater(operation.pending_count, 5)
        self.assertEqual(operation.responses, [])  # consumed by the iteration, not kept
        self.assertTrue(assoc.ended.startswith("aborted"))
        with self.assertRaises(DIMSETimeout):
            await within(operation.result)


class QuietGet(Services):
    """A C-GET SCP that sends no pending response (they are optional, PS3.4
    C.4.3.3.1) and takes ``delay`` seconds before each C-STORE sub-operation."""

    delay = 0.15

    async def _retrieve(self, request, association, originator):
        completed = 0
        for path in self.retrieve_files:
            await task.deferLater(reactor, self.delay, lambda: None)
            response = await association.store(path)
            completed += response.status == 0x0000
        yield 0x0000, None, counts(None, completed, 0)


class GetTimerTests(LoopbackTestCase):
    async def test_sub_operations_keep_a_get_alive_without_pending_responses(self):
        """The C-STORE sub-operations arriving are the C-GET's progress: a
        retrieve longer than the DIMSE timeout is not a dead peer."""
        services = QuietGet()
        services.retrieve_files = [CT_FILE] * 4  # 0.6 s in all, twice the DIMSE timeout
        _, port = await self.serve(services)
        scu = self.make_ae("SCU", dimse_timeout=0.3)
        assoc = await self.connect(port, [STUDY_ROOT_GET, CT], ae=scu, roles={CT: (False, True)})
        stored = []
        operation = assoc.get(query(), on_store=lambda request: stored.append(request) or 0x0000)
        final = await within(operation.result)
        self.assertEqual(final.status, 0x0000)
        self.assertEqual(final.NumberOfCompletedSuboperations, 4)
        self.assertEqual(len(stored), 4)
        self.assertIsNone(assoc.ended)
        await within(assoc.release())

    async def test_a_get_whose_peer_goes_quiet_still_times_out(self):
        services = QuietGet()
        services.delay = 0.6
        services.retrieve_files = [CT_FILE]
        _, port = await self.serve(services)
        scu = self.make_ae("SCU", dimse_timeout=0.3)
        assoc = await self.connect(port, [STUDY_ROOT_GET, CT], ae=scu, roles={CT: (False, True)})
        with self.assertRaises(DIMSETimeout):
            await within(assoc.get(query(), on_store=lambda request: 0x0000).result)
        self.assertTrue(assoc.ended.startswith("aborted"))
        self.flushLoggedErrors(defer.CancelledError)


class MoveTimerTests(LoopbackTestCase):
    async def test_instances_seen_arriving_keep_a_quiet_move_alive(self):
        """A C-MOVE SCP need send no pending response either (PS3.4 C.4.2.3.1):
        the SCU that receives the instances itself (dimsekit move --store-port)
        says so with DimseOperation.progressing(); a move longer than the DIMSE
        timeout is then not a dead peer."""
        moving = []

        class Destination(Services):
            def store(self, request):
                for operation in moving:
                    operation.progressing()
                return super().store(request)

        destination = Destination()
        _, dest_port = await self.serve(destination, ae_title="DEST")
        services = QuietGet()
        services.retrieve_files = [CT_FILE] * 4  # 0.6 s in all, twice the DIMSE timeout
        services.destinations = {"DEST": ("127.0.0.1", dest_port)}
        _, port = await self.serve(services)
        scu = self.make_ae("SCU", dimse_timeout=0.3)
        assoc = await self.connect(port, [STUDY_ROOT_MOVE], ae=scu)
        operation = assoc.move(query(), "DEST")
        moving.append(operation)
        final = await within(operation.result)
        self.assertEqual((final.status, final.NumberOfCompletedSuboperations), (0x0000, 4))
        self.assertEqual(len(destination.stored), 4)
        await within(assoc.release())
        moving.clear()
        assoc = await self.connect(port, [STUDY_ROOT_MOVE], ae=scu)  # without the word: timed out
        with self.assertRaises(DIMSETimeout):
            await within(assoc.move(query(), "DEST").result)
        self.flushLoggedErrors(defer.CancelledError)


class FailingSourceTests(LoopbackTestCase):
    async def test_a_source_failing_half_way_aborts_and_nothing_follows(self):
        services = Services()
        acceptor, port = await self.serve(services, max_operations_performed=4, max_operations_invoked=4)
        assoc = await self.connect(port, [N_CLASS, VERIFICATION], async_window=(4, 4))

        def source():
            yield b"\x00" * 50_000  # several PDUs go out
            raise OSError("disk read failed")

        sent = []
        real_send = assoc.protocol.send_pdata
        assoc.protocol.send_pdata = lambda pdu: sent.append(pdu) or real_send(pdu)
        assoc.pauseProducing()  # as a full transport buffer would: both messages wait in the queue
        failing = assoc.n_action(N_CLASS, "1.2.3", 1, source())
        after = assoc.echo()  # queued behind the message that will fail half-way: must never go out
        self.assertEqual(sent, [])
        assoc.resumeProducing()
        with self.assertRaises(AssociationAborted) as caught:
            await within(failing)
        self.assertIn("disk read failed", str(caught.exception))
        with self.assertRaises(AssociationAborted):
            await within(after)
        pdus = []  # several PDUs of one message may go in one write
        for chunk in sent:
            at = 0
            while at < len(chunk):
                length = int.from_bytes(chunk[at + 2 : at + 6], "big")
                pdus.append(chunk[at : at + 6 + length])
                at += 6 + length
        self.assertGreaterEqual(len(pdus), 3)  # the command and part of the data set left
        self.assertTrue(all(pdu[0] == 0x04 for pdu in pdus))
        last_pdv_header = pdus[-1][10:12]
        self.assertEqual(last_pdv_header[1] & 0x02, 0, "a last fragment was sent")
        await wait_until(lambda: acceptor.tracker.ended, 2, "the acceptor's association ended")
        self.assertEqual(acceptor.tracker.ended[0][0], "aborted by the peer (A-ABORT)")
        self.assertEqual(services.seen, [])  # neither request reached a handler
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
