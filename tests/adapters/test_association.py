"""Associations end to end through :class:`dimsekit.testing.AssociationPair`.

Two ApplicationEntity objects, their DicomProtocols joined in memory, one
fake clock: negotiation, the plugins' hooks, DIMSE dispatch, timeouts and the
ways an association ends -- without a socket and without sleeping.
"""

from __future__ import annotations

import errno
import gc
from dataclasses import replace

from pydicom.dataset import Dataset
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from dimsekit.config import Config, Limits, NodeConfig, RemoteAE
from dimsekit.dimse.commands import CommandField
from dimsekit.errors import (
    AssociationAborted,
    AssociationRejected,
    ConnectionLost,
    DIMSETimeout,
)
from dimsekit.hookspecs import hookimpl
from dimsekit.plugin import make_plugin_manager
from dimsekit.registry import ServiceClass
from dimsekit.testing import AssociationPair
from dimsekit.ul.items import UserIdentityRQ
from dimsekit.ul.pdu import AssociateRJ, PDataTF, PresentationDataValue, decode

VERIFICATION = "1.2.840.10008.1.1"
#: A private SOP class a test plugin declares without a C-ECHO handler.
PRIVATE_SOP_CLASS = "1.2.826.0.1.3680043.9.7433.1.1"


# -- test plugins ------------------------------------------------------------------


class Services:
    """Declares service classes; ``echo`` is the C-ECHO handler of Verification."""

    def __init__(self, echo=lambda request: 0x0000, *, extra=()):
        self.echo = echo
        self.extra = tuple(extra)

    @hookimpl
    def dimsekit_service_classes(self):
        verification = ServiceClass(
            name="test-verification", sop_classes=(VERIFICATION,), handlers={"C-ECHO": self.echo}
        )
        return [verification, *self.extra]


class Recorder:
    """Records the association boundary hooks."""

    def __init__(self):
        self.calls = []

    @hookimpl
    def dimsekit_on_association_established(self, association):
        self.calls.append(("established", association))

    @hookimpl
    def dimsekit_on_association_released(self, association):
        self.calls.append(("released", association))

    @hookimpl
    def dimsekit_on_association_aborted(self, association, reason):
        self.calls.append(("aborted", association))

    def kinds(self):
        return [kind for kind, _ in self.calls]


class Authenticator:
    """Accepts alice/secret (answering b"welcome"), rejects every other identity."""

    def __init__(self):
        self.seen = []

    @hookimpl
    def dimsekit_authenticate(self, identity, request):
        self.seen.append((identity, request))
        if identity.primary_field == b"alice" and identity.secondary_field == b"secret":
            return b"welcome"
        return False


def identity(user=b"alice", password=b"secret", *, response=True):
    return UserIdentityRQ(
        identity_type=2,
        positive_response_requested=response,
        primary_field=user,
        secondary_field=password,
    )


class AssociationTestCase(SynchronousTestCase):
    """Builds a pair whose both sides record their hooks."""

    def make_pair(self, *plugins, acceptor_config=None, requestor_config=None, **kwargs):
        self.acceptor_hooks = Recorder()
        self.requestor_hooks = Recorder()
        if not any(isinstance(p, Services) for p in plugins):
            plugins = (Services(), *plugins)
        pm = make_plugin_manager(load_entrypoints=False, plugins=[*plugins, self.acceptor_hooks])
        requestor_pm = make_plugin_manager(load_entrypoints=False, plugins=[self.requestor_hooks])
        self.pair = AssociationPair(
            pm,
            requestor_plugin_manager=requestor_pm,
            acceptor_config=acceptor_config,
            requestor_config=requestor_config,
            **kwargs,
        )
        return self.pair

    def assertNoTimersLeft(self):
        self.assertEqual(self.pair.reactor.getDelayedCalls(), [])


# -- the happy paths -------------------------------------------------------------------


class EchoTests(AssociationTestCase):
    def test_echo(self):
        pair = self.make_pair()
        assoc = pair.associate(contexts=[VERIFICATION])
        self.assertTrue(assoc.established)
        self.assertEqual(assoc.remote_ae_title, "ACCEPTOR")
        self.assertEqual(pair.acceptor_association.remote_ae_title, "REQUESTOR")
        d = assoc.echo()
        pair.pump()
        self.assertEqual(self.successResultOf(d), 0x0000)

    def test_many_echos_one_after_the_other(self):
        pair = self.make_pair()
        assoc = pair.associate()
        statuses = [pair.result(assoc.echo()) for _ in range(200)]
        self.assertEqual(statuses, [0x0000] * 200)
        self.assertEqual(pair.acceptor.active, {pair.acceptor_association})

    def test_many_echos_in_flight_at_once(self):
        pair = self.make_pair()
        assoc = pair.associate()
        pending = [assoc.echo() for _ in range(50)]
        pair.pump()
        self.assertEqual([self.successResultOf(d) for d in pending], [0x0000] * 50)

    def test_release(self):
        pair = self.make_pair()
        assoc = pair.associate()
        d = assoc.release()
        pair.pump()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(assoc.ended, "released")
        self.assertEqual(pair.acceptor_association.ended, "released by the peer")
        self.assertTrue(pair.connections[-1].closed)
        self.assertEqual(pair.acceptor.active, set())
        self.assertNoTimersLeft()
        # A released association refuses further work without raising.
        self.failureResultOf(assoc.echo())
        self.failureResultOf(assoc.release())

    def test_one_log_line_per_association(self):
        # The line as Logger.info would emit it (association._log_end hands
        # the event to the logger's observer itself): its keys in emit's
        # order, the info level, the namespace, the whole line as a format
        # without fields (braces doubled) and the parts as fields.
        from twisted.logger import LogLevel, formatEvent, globalLogPublisher

        from dimsekit import association as association_module

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        pair = self.make_pair()
        assoc = pair.associate()
        self.assertEqual(pair.result(assoc.echo()), 0)
        self.assertEqual(pair.result(assoc.echo()), 0)
        pair.result(assoc.release())
        pair.disconnect()
        lines = [e for e in events if e.get("log_namespace") == "dimsekit.association" and "text" in e]
        self.assertEqual(len(lines), 2)  # one per side
        acceptor = next(e for e in lines if e["text"].startswith("association acceptor"))
        self.assertEqual(list(acceptor)[:11], [  # then what legacy observers add
            "text", "ended", "calling", "called", "log_system", "log_logger", "log_level",
            "log_namespace", "log_source", "log_format", "log_time",
        ])
        self.assertIs(acceptor["log_logger"], association_module._log)
        self.assertIs(acceptor["log_level"], LogLevel.info)
        self.assertIsNone(acceptor["log_source"])
        self.assertEqual(acceptor["log_system"], "dimsekit.association#info")
        self.assertEqual((acceptor["calling"], acceptor["called"]), ("REQUESTOR", "ACCEPTOR"))
        self.assertEqual(acceptor["ended"], "released by the peer")
        self.assertIsInstance(acceptor["log_time"], float)
        self.assertEqual(formatEvent(acceptor), acceptor["text"])
        self.assertIn("calling=REQUESTOR called=ACCEPTOR contexts=[Verification SOP Class] handled=[C-ECHO 2] "
                      "duration=", acceptor["text"])
        requestor = next(e for e in lines if e["text"].startswith("association requestor"))
        # it answered nothing; its own requests are counted by their responses
        self.assertIn(" handled=[] requested=[C-ECHO 2] duration=", requestor["text"])
        self.assertNotIn("requested=", acceptor["text"])  # none: not said
        self.assertTrue(acceptor["text"].endswith("ended: released by the peer"))

    def test_the_log_line_counts_the_final_responses_by_outcome(self):
        from dimsekit.association import _handled_text

        self.assertEqual(_handled_text({}), "")
        self.assertEqual(_handled_text({CommandField.C_ECHO_RQ: [1, 0, 0, 0]}), "C-ECHO 1")
        self.assertEqual(_handled_text({CommandField.C_STORE_RQ: [200, 1, 2, 0], CommandField.C_FIND_RQ: [3, 0, 0, 1]}),
                         "C-STORE 200 (1 warning, 2 failed), C-FIND 3 (1 cancelled)")
        self.assertEqual(_handled_text({CommandField.C_STORE_RQ: [5, 2, 0, 0]}), "C-STORE 5 (2 warnings)")

    def test_the_log_line_of_an_association_with_many_contexts_names_those_used(self):
        from twisted.logger import globalLogPublisher

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        private = [f"{PRIVATE_SOP_CLASS}.{n}" for n in range(5)]
        many = ServiceClass(name="test-many", sop_classes=tuple(private), handlers={"C-ECHO": lambda request: 0})
        pair = self.make_pair(Services(extra=[many]))
        assoc = pair.associate(contexts=[VERIFICATION, *private])
        self.assertEqual(pair.result(assoc.echo()), 0)
        pair.result(assoc.release())
        pair.disconnect()
        lines = [e["text"] for e in events if e.get("log_namespace") == "dimsekit.association" and "text" in e]
        self.assertEqual(len(lines), 2)
        for line in lines:  # the acceptor answered on Verification, the requestor asked on it
            self.assertIn(" contexts=[6 SOP classes accepted; used: Verification SOP Class] ", line)

    def test_the_log_line_names_few_contexts_and_counts_many(self):
        from types import SimpleNamespace

        from dimsekit.association import _context_text

        def negotiated(*uids):
            return SimpleNamespace(contexts={
                2 * i + 1: SimpleNamespace(abstract_syntax=uid) for i, uid in enumerate(uids)
            })

        ct, mr = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"
        few = negotiated(VERIFICATION, ct, ct, PRIVATE_SOP_CLASS)  # one SOP class on two contexts counts once
        self.assertEqual(_context_text(few, set()), f"{PRIVATE_SOP_CLASS}, CT Image Storage, Verification SOP Class")
        self.assertEqual(_context_text(None, {1}), "")
        many = negotiated(VERIFICATION, ct, mr, "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.1",
                          "1.2.840.10008.5.1.4.1.1.1.1")
        self.assertEqual(_context_text(many, {3, 5, 99}),  # 99: not a context of this association
                         "6 SOP classes accepted; used: CT Image Storage, MR Image Storage")
        self.assertEqual(_context_text(many, set()), "6 SOP classes accepted; used: none")

    def test_log_line_with_braces_is_not_a_format(self):
        from twisted.logger import formatEvent, globalLogPublisher

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        pair = self.make_pair()
        assoc = pair.associate()
        assoc.abort("odd {reason} }{")
        pair.pump()
        pair.disconnect()
        line = next(e for e in events if e.get("text", "").startswith("association requestor"))
        self.assertTrue(line["text"].endswith("ended: aborted: odd {reason} }{"))
        self.assertEqual(line["log_format"], line["text"].replace("{", "{{").replace("}", "}}"))
        self.assertEqual(formatEvent(line), line["text"])

    def test_two_associations_one_after_the_other(self):
        pair = self.make_pair()
        first = pair.associate()
        pair.result(first.release())
        second = pair.associate()
        self.assertIsNot(first, second)
        self.assertEqual(pair.result(second.echo()), 0)
        self.assertEqual(len(pair.connections), 2)

    def test_deferred_handler_answers_when_it_fires(self):
        later: list[Deferred] = []

        def echo(request):
            later.append(Deferred())
            return later[-1]

        pair = self.make_pair(Services(echo))
        assoc = pair.associate()
        d = assoc.echo()
        pair.pump()
        self.assertNoResult(d)
        later[0].callback(0x0000)
        pair.pump()
        self.assertEqual(self.successResultOf(d), 0x0000)

    def test_coroutine_handler(self):
        async def echo(request):
            return 0x0000

        pair = self.make_pair(Services(echo))
        assoc = pair.associate()
        self.assertEqual(pair.result(assoc.echo()), 0x0000)

    def test_handler_sees_the_request(self):
        seen = []

        def echo(request):
            seen.append(request)
            return 0x0000

        pair = self.make_pair(Services(echo))
        assoc = pair.associate()
        pair.result(assoc.echo())
        (request,) = seen
        self.assertIs(request.association, pair.acceptor_association)
        self.assertEqual(request.sop_class_uid, VERIFICATION)
        self.assertEqual(request.context.abstract_syntax, VERIFICATION)


# -- handlers that fail, SOP classes nobody serves ----------------------------------------


class DispatchFailureTests(AssociationTestCase):
    def test_handler_that_raises_gets_processing_failure_and_association_survives(self):
        def echo(request):
            raise ValueError("the handler broke")

        pair = self.make_pair(Services(echo))
        assoc = pair.associate()
        context = assoc.negotiated.context_for(VERIFICATION)
        command = {
            "CommandField": CommandField.C_ECHO_RQ,
            "AffectedSOPClassUID": VERIFICATION,
            "CommandDataSetType": 0x0101,
        }
        response = pair.result(assoc.send_request(context, command))
        self.assertEqual(response.status, 0x0110)
        self.assertEqual(response.command["ErrorComment"], "the handler broke")
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        # Still established: another request is answered the same way, then a clean release.
        self.assertEqual(pair.result(assoc.echo()), 0x0110)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertIsNone(assoc.ended)
        pair.result(assoc.release())
        self.assertEqual(assoc.ended, "released")
        self.assertEqual(pair.acceptor_association.scp.handled, {CommandField.C_ECHO_RQ: [2, 0, 2, 0]})  # the log line

    def test_handler_returning_garbage_gets_processing_failure(self):
        # A handler must return a status; one that returns None is a plugin bug
        # that must be answered (0x0110), not leave the requestor waiting.
        pair = self.make_pair(Services(lambda request: None))
        assoc = pair.associate()
        d = assoc.echo()
        pair.pump()
        self.assertEqual(self.successResultOf(d), 0x0110)
        self.flushLoggedErrors()

    def test_a_request_reusing_a_message_id_in_use_gets_duplicate_invocation(self):
        # PS3.7 9.1.x / 10.1.x "Status": duplicate invocation (0210H) -- "the
        # Message ID (0000,0110) specified is allocated to another notification
        # or operation".  The request in progress keeps its Message ID and gets
        # its own answer; the second one is refused, its handler never run.
        later: list[Deferred] = []

        def echo(request):
            later.append(Deferred())
            return later[-1]

        window = Config(limits=Limits(max_operations_invoked=4, max_operations_performed=4))
        pair = self.make_pair(Services(echo), acceptor_config=window, requestor_config=window)
        assoc = pair.associate(async_window=(4, 4))
        answers = []
        assoc._response = lambda context, command, sink: answers.append(
            (command["MessageIDBeingRespondedTo"], command["Status"])
        )
        context = assoc.negotiated.context_for(VERIFICATION)
        command = {
            "CommandField": CommandField.C_ECHO_RQ,
            "MessageID": 7,
            "AffectedSOPClassUID": VERIFICATION,
            "CommandDataSetType": 0x0101,
        }
        assoc.send_message(context, command)
        assoc.send_message(context, command)
        pair.pump()
        self.assertEqual(len(later), 1)
        self.assertEqual(answers, [(7, 0x0210)])
        later[0].callback(0x0000)
        pair.pump()
        self.assertEqual(answers, [(7, 0x0210), (7, 0x0000)])
        self.assertIsNone(assoc.ended)

    def test_a_malformed_response_fails_its_operation_at_once(self):
        # A C-ECHO-RSP whose Status (0000,0900) is 3 bytes: the response cannot
        # be read, but its Message ID Being Responded To names the operation,
        # which fails now (the peer will send no other final response) instead
        # of waiting for a DIMSE timeout that may never come (0 = forever).
        from dimsekit.dimse.codec import encode_command
        from dimsekit.errors import RemoteProtocolError

        def echo(request):
            raw = encode_command({
                "CommandField": CommandField.C_ECHO_RSP,
                "MessageIDBeingRespondedTo": request.message_id,
                "AffectedSOPClassUID": VERIFICATION,
                "CommandDataSetType": 0x0101,
            })
            bad_status = b"\x00\x00\x00\x09\x03\x00\x00\x00abc"
            body = raw[12:] + bad_status
            raw = raw[:8] + len(body).to_bytes(4, "little") + body
            request.association.send_encoded(request.context, raw)
            return Deferred()  # never answers otherwise

        pair = self.make_pair(Services(echo), requestor_config=Config(limits=Limits(dimse_timeout=0)))
        assoc = pair.associate()
        d = assoc.echo()
        pair.pump()
        failure = self.failureResultOf(d, RemoteProtocolError)
        self.assertIn("Status", str(failure.value))
        self.assertEqual(assoc._operations, {})
        self.assertIsNone(assoc.ended)

    def test_a_response_of_another_kind_or_a_pending_echo_fails_its_operation_at_once(self):
        # a C-FIND-RSP answering a C-ECHO, or a C-ECHO-RSP with a pending status:
        # the operation cannot end well, and waited for the DIMSE timeout (for ever with 0)
        from dimsekit.dimse.codec import encode_command
        from dimsekit.errors import RemoteProtocolError

        answers = iter([(CommandField.C_FIND_RSP, 0x0000), (CommandField.C_ECHO_RSP, 0xFF00)])

        def echo(request):
            field, status = next(answers)
            request.association.send_encoded(request.context, encode_command({
                "CommandField": field, "MessageIDBeingRespondedTo": request.message_id,
                "AffectedSOPClassUID": VERIFICATION, "CommandDataSetType": 0x0101, "Status": status,
            }))
            return 0x0000  # the real answer comes after, to an operation already failed: ignored

        pair = self.make_pair(Services(echo), requestor_config=Config(limits=Limits(dimse_timeout=0)))
        assoc = pair.associate()
        for words in ("C-FIND-RSP answers message 1, a C-ECHO", "pending status (0xFF00) in a C-ECHO-RSP"):
            d = assoc.echo()
            pair.pump()
            self.assertIn(words, str(self.failureResultOf(d, RemoteProtocolError).value))
            self.assertEqual(assoc._operations, {})
        self.assertIsNone(assoc.ended)

    def test_sop_class_without_handler_gets_0122(self):
        private = ServiceClass(name="private", sop_classes=(PRIVATE_SOP_CLASS,))
        pair = self.make_pair(Services(extra=[private]))
        assoc = pair.associate(contexts=[VERIFICATION, PRIVATE_SOP_CLASS])
        context = assoc.negotiated.context_for(PRIVATE_SOP_CLASS)
        self.assertIsNotNone(context)
        command = {
            "CommandField": CommandField.C_ECHO_RQ,
            "AffectedSOPClassUID": PRIVATE_SOP_CLASS,
            "CommandDataSetType": 0x0101,
        }
        response = pair.result(assoc.send_request(context, command))
        self.assertEqual(response.status, 0x0122)
        self.assertEqual(response.command["MessageIDBeingRespondedTo"], 1)
        self.assertEqual(pair.result(assoc.echo()), 0x0000)  # the association goes on

    def test_context_of_an_undeclared_sop_class_is_not_accepted(self):
        pair = self.make_pair()
        assoc = pair.associate(contexts=[VERIFICATION, PRIVATE_SOP_CLASS])
        self.assertIsNone(assoc.negotiated.context_for(PRIVATE_SOP_CLASS))
        self.assertEqual(len(assoc.negotiated.contexts), 1)


# -- ending: abort, loss, timeouts --------------------------------------------------------


class EndingTests(AssociationTestCase):
    def make_slow_pair(self, **kwargs):
        """Acceptor whose C-ECHO handler never answers."""
        self.never: list[Deferred] = []

        def echo(request):
            self.never.append(Deferred())
            return self.never[-1]

        return self.make_pair(Services(echo), **kwargs)

    def test_requestor_abort_fails_outstanding_requests(self):
        pair = self.make_slow_pair()
        assoc = pair.associate()
        pending = [assoc.echo() for _ in range(3)]
        pair.pump()
        assoc.abort()
        pair.pump()
        for d in pending:
            self.failureResultOf(d, AssociationAborted)
        self.assertTrue(assoc.ended.startswith("aborted"))
        self.assertEqual(pair.acceptor_association.ended, "aborted by the peer (A-ABORT)")
        self.assertTrue(pair.connections[-1].closed)
        self.assertEqual(pair.acceptor.active, set())
        self.assertNoTimersLeft()
        self.assertEqual(self.requestor_hooks.kinds(), ["established", "aborted"])
        self.assertEqual(self.acceptor_hooks.kinds(), ["established", "aborted"])

    def test_acceptor_abort_fails_the_requestors_outstanding_requests(self):
        pair = self.make_slow_pair()
        assoc = pair.associate()
        pending = [assoc.echo() for _ in range(3)]
        pair.pump()
        pair.acceptor_association.abort()
        pair.pump()
        for d in pending:
            failure = self.failureResultOf(d, AssociationAborted)
            self.assertEqual(failure.value.source, 0)  # the peer's service-user
        self.assertEqual(assoc.ended, "aborted by the peer (A-ABORT)")
        self.assertNoTimersLeft()
        self.assertEqual(self.requestor_hooks.kinds(), ["established", "aborted"])
        self.assertEqual(self.acceptor_hooks.kinds(), ["established", "aborted"])

    def test_data_and_abort_in_one_read(self):
        # The requestor's C-ECHO-RQ and its A-ABORT reach the acceptor in one
        # read: the acceptor must not try to answer on the aborted association
        # (no error may escape, be logged, or be left in a Deferred).
        pair = self.make_pair()
        assoc = pair.associate()
        d = assoc.echo()
        assoc.abort()
        pair.pump()
        self.failureResultOf(d, AssociationAborted)
        self.assertEqual(pair.acceptor_association.ended, "aborted by the peer (A-ABORT)")
        gc.collect()  # an unhandled failure left in a Deferred is logged when collected
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_release_and_abort_in_one_read(self):
        # The acceptor reads the A-RELEASE-RQ and the A-ABORT together: its
        # answer to the release indication comes too late and must not raise.
        pair = self.make_pair()
        assoc = pair.associate()
        d = assoc.release()
        assoc.abort()
        pair.pump()
        self.failureResultOf(d, AssociationAborted)
        self.assertTrue(assoc.ended.startswith("aborted"))
        self.assertIsNotNone(pair.acceptor_association.ended)
        self.assertTrue(pair.connections[-1].closed)
        self.assertNoTimersLeft()
        self.assertEqual(len(self.acceptor_hooks.kinds()), 2)  # established + one end

    def test_release_collision(self):
        pair = self.make_pair()
        assoc = pair.associate()
        mine, theirs = assoc.release(), pair.acceptor_association.release()
        pair.pump()
        self.assertIsNone(self.successResultOf(mine))
        self.assertIsNone(self.successResultOf(theirs))
        self.assertEqual(self.requestor_hooks.kinds(), ["established", "released"])
        self.assertEqual(self.acceptor_hooks.kinds(), ["established", "released"])
        self.assertNoTimersLeft()

    def test_a_data_set_over_max_dataset_size_aborts_the_association(self):
        ct = "1.2.840.10008.5.1.4.1.1.2"
        stored = []
        storage = ServiceClass(name="t-store", sop_classes=(ct,), handlers={"C-STORE": lambda r: stored.append(r) or 0})
        config = Config(limits=Limits(max_dataset_size=64 * 1024))
        pair = self.make_pair(Services(extra=[storage]), acceptor_config=config)
        assoc = pair.associate(contexts=[ct, VERIFICATION])

        def instance(size):
            ds = Dataset()
            ds.SOPClassUID, ds.SOPInstanceUID = ct, f"1.2.3.{size}"
            ds.add_new(0x00091010, "OB", b"\0" * size)
            return ds

        self.assertEqual(pair.result(assoc.store(instance(60 * 1024))).status, 0x0000)
        big = assoc.store(instance(70 * 1024))
        pair.pump()
        self.failureResultOf(big, AssociationAborted)
        self.assertEqual(len(stored), 1)
        self.assertIn("data set longer than 65536 bytes", pair.acceptor_association.ended)

    def test_a_query_over_max_identifier_size_is_refused_and_the_association_goes_on(self):
        from twisted.logger import formatEvent, globalLogPublisher

        queries = []

        def find(request):
            queries.append(len(request.dataset()[0x00091010].value))
            match = Dataset()
            match.PatientID = "1"
            yield 0xFF00, match

        service = ServiceClass(name="t-find", sop_classes=(STUDY_ROOT_FIND,), handlers={"C-FIND": find})
        config = Config(limits=Limits(max_identifier_size=64 * 1024))
        pair = self.make_pair(Services(extra=[service]), acceptor_config=config)
        assoc = pair.associate(contexts=[STUDY_ROOT_FIND, VERIFICATION])

        def query(size):
            ds = Dataset()
            ds.QueryRetrieveLevel = "STUDY"
            ds.add_new(0x00091010, "OB", b"\0" * size)
            return ds

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        refused = pair.result(assoc.find(query(70 * 1024), STUDY_ROOT_FIND).result)
        self.assertEqual(refused.status, 0xA700)  # Refused: Out of Resources (PS3.4 C.4.1.1.4)
        self.assertEqual(refused.command["ErrorComment"], "Identifier longer than 65536 bytes")
        self.assertIn("with status 0xA700: Identifier longer than 65536 bytes", "\n".join(map(formatEvent, events)))
        self.assertEqual(queries, [])  # never reached the handler
        self.assertIsNone(pair.acceptor_association.ended)
        answered = assoc.find(query(60 * 1024), STUDY_ROOT_FIND)  # within the limit: performed
        pair.pump()
        pair.advance(0)  # the SCP lets the reactor turn after each match
        self.assertEqual(pair.result(answered.result).status, 0x0000)
        self.assertEqual((queries, answered.pending_count), ([60 * 1024], 1))
        self.assertEqual(pair.result(assoc.echo()), 0)
        pair.result(assoc.release())

    def test_a_data_set_past_the_memory_budget_is_spooled_in_the_aes_spool_dir(self):
        import os
        import tempfile

        spool = tempfile.mkdtemp(prefix="dimsekit-spool-")
        self.addCleanup(os.rmdir, spool)
        where = []

        def find(request):
            sink = request.sink
            where.append(os.readlink(f"/proc/self/fd/{sink._file.fileno()}") if sink.on_disk else "memory")
            return 0x0000

        service = ServiceClass(name="t-find", sop_classes=(STUDY_ROOT_FIND,), handlers={"C-FIND": find})
        pair = self.make_pair(Services(extra=[service]))
        pair.acceptor.spool_dir = spool
        assoc = pair.associate(contexts=[STUDY_ROOT_FIND])
        for size in (1000, 3 << 20):
            query = Dataset()
            query.QueryRetrieveLevel = "STUDY"
            query.add_new(0x00091010, "OB", b"\0" * size)
            self.assertEqual(pair.result(assoc.find(query, STUDY_ROOT_FIND).result).status, 0x0000)
        self.assertEqual(where[0], "memory")
        self.assertTrue(where[1].startswith(spool + "/"), where)  # an anonymous file there, not in /tmp
        pair.result(assoc.release())

    def release_behind_an_echo(self, echo):
        """A pair whose requestor asks to release while its C-ECHO is being performed by
        ``echo`` -- through the UL primitive, as a peer may (our release() would wait)."""
        pair = self.make_pair(Services(echo))
        assoc = pair.associate()
        answered = assoc.echo()
        pair.pump()
        assoc.protocol.call("release")
        pair.pump()
        return pair, assoc, answered

    def test_a_release_asked_while_a_request_runs_waits_for_its_answer(self):
        # PS3.8 7.2.2: the acceptor may still send P-DATA after the A-RELEASE
        # indication, the requestor may still receive it.
        slow = Deferred()
        pair, assoc, echo = self.release_behind_an_echo(lambda request: slow)
        acceptor = pair.acceptor_association
        self.assertIsNone(acceptor.ended)
        pair.advance(acceptor.RELEASE_HOLD / 2)
        self.assertIsNone(assoc.ended)
        slow.callback(0xB000)
        pair.pump()
        self.assertEqual(self.successResultOf(echo), 0xB000)
        self.assertEqual((assoc.ended, acceptor.ended), ("released", "released by the peer"))
        self.assertEqual(self.acceptor_hooks.kinds(), ["established", "released"])
        self.assertNoTimersLeft()

    def test_a_release_asked_behind_requests_lets_them_all_out_first(self):
        # With a window of one outstanding operation, the second echo waits
        # for the first's response: the A-RELEASE-RQ goes after both, instead
        # of failing the one that had not been sent.
        slow = []

        def echo(request):
            slow.append(Deferred())
            return slow[-1]

        pair = self.make_pair(Services(echo))
        assoc = pair.associate()
        first, second = assoc.echo(), assoc.echo()
        released = assoc.release()
        pair.pump()
        self.assertEqual(len(slow), 1)
        self.assertEqual(pair.acceptor_association.protocol.ul.state, 6)  # no release asked yet
        slow[0].callback(0x0000)
        pair.pump()
        self.assertEqual(len(slow), 2)
        self.assertNoResult(released)
        slow[1].callback(0x0000)
        pair.pump()
        self.assertEqual([self.successResultOf(d) for d in (first, second)], [0x0000, 0x0000])
        self.assertIsNone(self.successResultOf(released))
        self.assertEqual(pair.acceptor_association.ended, "released by the peer")
        self.assertNoTimersLeft()

    def test_a_held_release_is_answered_after_a_bounded_wait(self):
        never = Deferred()
        pair, assoc, echo = self.release_behind_an_echo(lambda request: never)
        acceptor = pair.acceptor_association
        pair.advance(acceptor.RELEASE_HOLD - 1)
        self.assertIsNone(assoc.ended)
        pair.advance(1)
        self.assertEqual(assoc.ended, "released")
        self.failureResultOf(echo, AssociationAborted)
        self.assertEqual(acceptor.ended, "released by the peer")
        self.assertNoTimersLeft()

    def test_an_abort_while_a_release_is_held_cancels_the_wait(self):
        never = Deferred()
        pair, assoc, echo = self.release_behind_an_echo(lambda request: never)
        assoc.abort()
        pair.pump()
        self.failureResultOf(echo, AssociationAborted)
        self.assertTrue(pair.acceptor_association.ended.startswith("aborted"))
        self.assertNoTimersLeft()

    def test_acceptor_asks_to_release(self):
        pair = self.make_pair()
        assoc = pair.associate()
        d = pair.acceptor_association.release()
        pair.pump()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(assoc.ended, "released by the peer")

    def test_acse_timeout_while_the_acceptor_decides(self):
        class Undecided:
            @hookimpl
            def dimsekit_authenticate(self, identity, request):
                return Deferred()

        pair = self.make_pair(Undecided())
        d = pair.connect(user_identity=identity())
        self.assertEqual(len(pair.acceptor.active), 1)
        pair.advance(29)
        self.assertNoResult(d)
        pair.advance(1)  # the requestor's ACSE timeout (30 s)
        self.failureResultOf(d, AssociationAborted)
        self.assertEqual(pair.acceptor.active, set())  # the slot is given back
        self.assertTrue(pair.connections[-1].closed)
        self.assertNoTimersLeft()

    def test_an_authenticator_that_never_decides_is_bounded(self):
        # a requestor that waits for ever (no ACSE timeout) would hold the
        # association and its slot in Sta3 for as long as it stays connected
        class Undecided:
            @hookimpl
            def dimsekit_authenticate(self, identity, request):
                return Deferred()

        patient = Config(limits=Limits(acse_timeout=0))
        pair = self.make_pair(Undecided(), requestor_config=patient)
        d = pair.connect(user_identity=identity())
        pair.advance(59)
        self.assertNoResult(d)
        self.assertEqual(len(pair.acceptor.active), 1)
        pair.advance(1)  # twice the acceptor's ACSE timeout
        rejected = self.failureResultOf(d, AssociationRejected).value
        self.assertEqual((rejected.result, rejected.source, rejected.reason), (2, 1, 1))
        self.assertEqual(pair.acceptor.active, set())
        self.assertNoTimersLeft()
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_connection_loss_fails_outstanding_requests(self):
        pair = self.make_slow_pair()
        assoc = pair.associate()
        d = assoc.echo()
        pair.pump()
        pair.disconnect()
        self.failureResultOf(d, AssociationAborted)  # ConnectionLost is one too
        self.assertIn("closed", assoc.ended)
        self.assertIsNone(assoc.protocol)
        self.assertEqual(pair.acceptor.active, set())
        self.assertNoTimersLeft()
        self.assertEqual(self.requestor_hooks.kinds(), ["established", "aborted"])
        self.assertEqual(self.acceptor_hooks.kinds(), ["established", "aborted"])

    def test_connection_loss_is_reported_as_connection_lost(self):
        # errors.ConnectionLost: "The transport connection closed while the
        # association was in use" -- what a caller catches to retry.
        pair = self.make_slow_pair()
        assoc = pair.associate()
        d = assoc.echo()
        pair.pump()
        pair.disconnect()
        self.failureResultOf(d, ConnectionLost)

    def test_dimse_timeout(self):
        pair = self.make_slow_pair(requestor_config=Config(limits=Limits(dimse_timeout=5)))
        assoc = pair.associate()
        d = assoc.echo()
        pair.advance(4.9)
        self.assertNoResult(d)
        pair.advance(0.2)
        failure = self.failureResultOf(d, DIMSETimeout)
        self.assertIn("within 5 s", str(failure.value))
        self.assertTrue(assoc.ended.startswith("aborted"))
        self.assertEqual(pair.acceptor_association.ended, "aborted by the peer (A-ABORT)")
        self.assertTrue(pair.connections[-1].closed)
        self.assertNoTimersLeft()
        self.assertEqual(self.requestor_hooks.kinds(), ["established", "aborted"])
        self.assertEqual(self.acceptor_hooks.kinds(), ["established", "aborted"])

    def test_dimse_timer_is_cancelled_by_the_response(self):
        pair = self.make_pair(requestor_config=Config(limits=Limits(dimse_timeout=5)))
        assoc = pair.associate()
        self.assertEqual(pair.result(assoc.echo()), 0)
        owners = [getattr(call.func, "__self__", None) for call in pair.reactor.getDelayedCalls()]
        self.assertNotIn(assoc, owners)  # only the protocols' timers are left

    def test_idle_association_is_aborted(self):
        pair = self.make_pair(acceptor_config=Config(limits=Limits(idle_timeout=60)),
                              requestor_config=Config(limits=Limits(idle_timeout=0)))
        assoc = pair.associate()
        pair.advance(59)
        self.assertIsNone(assoc.ended)
        pair.result(assoc.echo())  # activity pushes the deadline back
        pair.advance(59)
        self.assertIsNone(assoc.ended)
        pair.advance(2)
        self.assertIsNotNone(assoc.ended)
        self.assertIn("idle", pair.acceptor_association.ended)
        self.assertTrue(pair.connections[-1].closed)
        self.assertNoTimersLeft()

    def test_idle_timeout_spares_an_association_with_a_request_in_progress(self):
        # The acceptor performs a request for longer than its idle timeout
        # (a slow query, a C-MOVE sub-operation): the quiet wire is not an
        # idle association, on either side; once answered, idle counts again.
        pair = self.make_slow_pair(acceptor_config=Config(limits=Limits(idle_timeout=60)),
                                   requestor_config=Config(limits=Limits(idle_timeout=60, dimse_timeout=0)))
        assoc = pair.associate()
        d = assoc.echo()
        pair.advance(150)
        self.assertIsNone(assoc.ended)
        self.assertIsNone(pair.acceptor_association.ended)
        self.never[0].callback(0x0000)
        pair.pump()
        self.assertEqual(self.successResultOf(d), 0x0000)
        pair.advance(61)
        self.assertIn("idle", assoc.ended)

    def test_release_hooks_called_once(self):
        pair = self.make_pair()
        assoc = pair.associate()
        pair.result(assoc.echo())
        pair.result(assoc.release())
        pair.advance(120)  # nothing left to fire
        self.assertEqual(self.requestor_hooks.kinds(), ["established", "released"])
        self.assertEqual(self.acceptor_hooks.kinds(), ["established", "released"])
        self.assertEqual(
            [a for _, a in self.acceptor_hooks.calls], [pair.acceptor_association] * 2
        )
        self.assertEqual([a for _, a in self.requestor_hooks.calls], [assoc] * 2)

    def test_malformed_pdata_is_answered_with_an_abort(self):
        # A data set fragment with no command set before it breaks the message
        # sequence (PS3.7 6.3.1): the acceptor must abort, not raise.
        pair = self.make_slow_pair()
        assoc = pair.associate()
        d = assoc.echo()
        pair.pump()
        stray = PDataTF(pdvs=(PresentationDataValue(context_id=1, control=0x02, data=b"\0\0\0\0"),))
        assoc.protocol.send_pdata(stray.encode())
        pair.pump()
        self.assertIsNotNone(pair.acceptor_association.ended)
        self.assertTrue(pair.connections[-1].closed)
        self.failureResultOf(d, AssociationAborted)
        self.assertEqual(self.acceptor_hooks.kinds(), ["established", "aborted"])

    def test_malformed_pdata_is_aborted_by_the_service_provider(self):
        # PDVs that break the message sequence make the P-DATA-TF an invalid
        # PDU (PS3.8 Table 9-10, Evt19 in Sta6: AA-8): the A-ABORT carries the
        # service-provider source, not the service-user's 0/0.
        pair = self.make_slow_pair()
        assoc = pair.associate()
        stray = PDataTF(pdvs=(PresentationDataValue(context_id=1, control=0x02, data=b"\0\0\0\0"),))
        assoc.protocol.send_pdata(stray.encode())
        pair.pump()
        self.assertEqual(assoc.ended, "aborted: aborted by the service-provider: reason-not-specified")
        self.assertIn("data set fragment without a command set", pair.acceptor_association.ended)
        self.assertTrue(pair.connections[-1].closed)

    def test_a_message_on_a_context_not_accepted_is_aborted_before_its_data_set(self):
        # A C-STORE-RQ on presentation context 3, which was never accepted (only
        # 1, Verification, was proposed): nothing can be done with its data set,
        # so the association ends once the command set is read -- not after the
        # peer has sent (and we have spooled to disk) the whole data set.
        from dimsekit.dimse.codec import encode_command

        pair = self.make_pair()
        assoc = pair.associate()
        command = encode_command({
            "CommandField": CommandField.C_STORE_RQ,
            "MessageID": 1,
            "AffectedSOPClassUID": PRIVATE_SOP_CLASS,
            "AffectedSOPInstanceUID": "1.2.3.4",
            "Priority": 0,
            "CommandDataSetType": 0x0001,
        })
        start = PDataTF(pdvs=(
            PresentationDataValue(context_id=3, control=0x03, data=command),
            PresentationDataValue(context_id=3, control=0x00, data=b"\0" * 1024),
        ))
        assoc.protocol.send_pdata(start.encode())
        pair.pump()
        self.assertIn("presentation context 3", pair.acceptor_association.ended or "")
        self.assertTrue(pair.connections[-1].closed)
        self.assertEqual(assoc.ended, "aborted: aborted by the service-provider: invalid-PDU-parameter value")

    def test_requests_behind_an_abort_in_the_same_pdu_are_not_performed(self):
        # One P-DATA-TF: a request with an unknown Command Field (the acceptor
        # aborts: it has no response type to answer with), then a C-ECHO-RQ.
        # Once aborted, what follows is not performed: a handler run for an
        # association already gone (a C-MOVE would start its sub-operations).
        from dimsekit.dimse.codec import encode_command

        seen = []
        pair = self.make_pair(Services(lambda request: seen.append(request) or 0x0000))
        assoc = pair.associate()
        unknown = encode_command({"CommandField": 0x0FF0, "MessageID": 3, "CommandDataSetType": 0x0101})
        echo = encode_command({
            "CommandField": CommandField.C_ECHO_RQ, "MessageID": 4,
            "AffectedSOPClassUID": VERIFICATION, "CommandDataSetType": 0x0101,
        })
        pdu = PDataTF(pdvs=(
            PresentationDataValue(context_id=1, control=0x03, data=unknown),
            PresentationDataValue(context_id=1, control=0x03, data=echo),
        ))
        assoc.protocol.send_pdata(pdu.encode())
        pair.pump()
        self.assertIn("unknown Command Field", pair.acceptor_association.ended)
        self.assertEqual(seen, [])
        self.assertTrue(pair.connections[-1].closed)

    def test_invalid_associate_ac_is_aborted_by_the_service_provider(self):
        # An A-ASSOCIATE-AC accepting a transfer syntax we did not propose is an
        # invalid PDU (Evt19 -> AA-8): A-ABORT source 2, reason 6
        # (invalid-PDU-parameter value, PS3.8 Table 9-26).
        pair = self.make_pair()
        negotiate = pair.acceptor.negotiate

        def bad_negotiate(rq):
            encoded, negotiated = negotiate(rq)
            ac, _ = decode(encoded)
            contexts = tuple(replace(pc, transfer_syntax="1.2.3.4.5") for pc in ac.presentation_contexts)
            return replace(ac, presentation_contexts=contexts).encode(), negotiated

        pair.acceptor.negotiate = bad_negotiate
        failure = self.failureResultOf(pair.connect(), AssociationAborted)
        self.assertIn("not one proposed", str(failure.value))
        self.assertEqual(
            pair.acceptor_association.ended, "aborted: aborted by the service-provider: invalid-PDU-parameter value"
        )
        self.assertTrue(pair.connections[-1].closed)

    def test_sink_that_fails_to_write_aborts_the_association(self):
        # A sink that cannot take the data set (disk full) is a local failure:
        # the acceptor answers with an A-ABORT and drops the partial data set;
        # the error must not escape the protocol (the connection dropped without
        # an A-ABORT), and the log says it in one line: an operator's disk, not a bug.
        from twisted.logger import formatEvent, globalLogPublisher

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        aborted = []

        class FullDisk:
            size = 0

            def write(self, data):
                raise OSError(errno.ENOSPC, "No space left on device")

            def close(self):
                pass

            def abort(self):
                aborted.append(True)

        storage = ServiceClass(
            name="private-storage", sop_classes=(PRIVATE_SOP_CLASS,),
            handlers={"C-STORE": lambda request: 0x0000}, sink_factories={"C-STORE": lambda request: FullDisk()},
        )
        pair = self.make_pair(Services(extra=[storage]))
        assoc = pair.associate(contexts=[PRIVATE_SOP_CLASS])
        command = {
            "CommandField": CommandField.C_STORE_RQ,
            "AffectedSOPClassUID": PRIVATE_SOP_CLASS,
            "AffectedSOPInstanceUID": "1.2.3.4",
            "Priority": 0,
            "CommandDataSetType": 0x0001,
        }
        d = assoc.send_request(assoc.negotiated.context_for(PRIVATE_SOP_CLASS), command, b"\0" * 1024)
        pair.pump()
        failure = self.failureResultOf(d, AssociationAborted)
        self.assertEqual((failure.value.source, failure.value.reason), (0, 0))  # an A-ABORT came
        self.assertIn("No space left", pair.acceptor_association.ended)
        self.assertEqual(aborted, [True])
        self.assertTrue(pair.connections[-1].closed)
        self.assertEqual(self.flushLoggedErrors(OSError), [])  # no traceback
        self.assertIn("could not take a message from 127.0.0.1:40000: [Errno 28] No space left on device; aborting",
                      [formatEvent(event) for event in events])


# -- rejection --------------------------------------------------------------------------------


class RejectionTests(AssociationTestCase):
    def assertRejected(self, pair, result, source, reason, **kwargs):
        d = pair.connect(**kwargs)
        error = self.failureResultOf(d, AssociationRejected).value
        self.assertEqual((error.result, error.source, error.reason), (result, source, reason))
        self.assertTrue(pair.connections[-1].closed)
        self.assertFalse(pair.requestor_association.established)
        self.assertTrue(pair.acceptor_association.ended.startswith("rejected"))
        return error

    def test_called_ae_title_checked(self):
        pair = self.make_pair(acceptor_config=Config(node=NodeConfig(check_called_ae=True)))
        error = self.assertRejected(pair, 1, 1, 7, called="SOMEONE-ELSE")
        self.assertIn("called-AE-title-not-recognized", str(error))
        self.assertTrue(pair.associate(called="ACCEPTOR").established)

    def test_called_ae_title_not_checked_by_default(self):
        pair = self.make_pair()
        self.assertTrue(pair.associate(called="SOMEONE-ELSE").established)

    def test_unknown_caller(self):
        config = Config(
            node=NodeConfig(allow_unknown_callers=False),
            remotes=(RemoteAE(ae_title="FRIEND", host="127.0.0.1", port=11113),),
        )
        pair = self.make_pair(acceptor_config=config)
        error = self.assertRejected(pair, 1, 1, 3)
        self.assertIn("calling-AE-title-not-recognized", str(error))
        self.assertEqual(self.acceptor_hooks.kinds(), [])
        self.assertEqual(pair.acceptor.active, set())
        self.assertNoTimersLeft()

    def test_known_caller(self):
        config = Config(
            node=NodeConfig(allow_unknown_callers=False),
            remotes=(RemoteAE(ae_title="FRIEND", host="127.0.0.1", port=11113),),
        )
        pair = self.make_pair(acceptor_config=config, requestor_ae_title="FRIEND")
        self.assertTrue(pair.associate().established)

    def test_max_associations(self):
        pair = self.make_pair(acceptor_config=Config(limits=Limits(max_associations=1)))
        first = pair.associate()
        self.assertRejected(pair, 2, 3, 2)  # rejected-transient, local-limit-exceeded
        self.assertEqual(pair.acceptor.active, {pair.connections[0].acceptor_association})
        self.assertEqual(pair.result(first.echo()), 0)  # the first one is untouched
        pair.result(first.release())
        self.assertEqual(pair.acceptor.active, set())
        self.assertTrue(pair.associate().established)  # the slot is free again

    def test_max_associations_per_ae(self):
        from twisted.logger import formatEvent, globalLogPublisher

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        pair = self.make_pair(acceptor_config=Config(limits=Limits(max_associations_per_ae=2)))
        first, second = pair.associate(), pair.associate()
        self.assertRejected(pair, 2, 3, 2)  # a third from REQUESTOR: rejected-transient, local-limit-exceeded
        self.assertIn(
            "calling=REQUESTOR called=ACCEPTOR: association rejected (rejected-transient): DICOM UL service-provider "
            "(Presentation): local-limit-exceeded: 2 associations at once from REQUESTOR ([limits] max_associations_per_ae)",
            "\n".join(map(formatEvent, events)),
        )
        pair.requestor.ae_title = "OTHER"
        other = pair.associate()  # another AE still gets in
        self.assertEqual(len(pair.acceptor.active), 3)
        pair.requestor.ae_title = "REQUESTOR"
        self.assertRejected(pair, 2, 3, 2)
        pair.result(first.release())
        third = pair.associate()  # its slot is free again
        self.assertEqual(pair.result(third.echo()), 0)
        for assoc in (second, other, third):
            pair.result(assoc.release())
        self.assertEqual(pair.acceptor.active, set())

    def test_accept_hook_rejects(self):
        class Gatekeeper:
            def __init__(self):
                self.requests = []

            @hookimpl
            def dimsekit_accept_association(self, request):
                self.requests.append(request)
                return AssociateRJ(result=2, source=1, reason=1)

        gatekeeper = Gatekeeper()
        pair = self.make_pair(gatekeeper)
        self.assertRejected(pair, 2, 1, 1)
        (request,) = gatekeeper.requests
        self.assertEqual(request.rq.calling_ae_title, "REQUESTOR")
        self.assertEqual(request.peer.host, "127.0.0.1")
        self.assertEqual(pair.acceptor.active, set())

    def test_accept_hook_that_raises_rejects(self):
        class Broken:
            @hookimpl
            def dimsekit_accept_association(self, request):
                raise RuntimeError("access list unreachable")

        pair = self.make_pair(Broken())
        self.assertRejected(pair, 1, 1, 1)  # rejected-permanent, service-user, no reason given
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.acceptor_hooks.kinds(), [])
        self.assertEqual(pair.acceptor.active, set())
        self.assertNoTimersLeft()


class Faulty:
    """A plugin whose association boundary hooks all raise (a bug of its own)."""

    def __init__(self):
        self.calls = []

    @hookimpl
    def dimsekit_on_association_established(self, association):
        self.calls.append("established")
        raise RuntimeError("faulty plugin: established")

    @hookimpl
    def dimsekit_on_association_released(self, association):
        self.calls.append("released")
        raise RuntimeError("faulty plugin: released")

    @hookimpl
    def dimsekit_on_association_aborted(self, association, reason):
        self.calls.append("aborted")
        raise RuntimeError("faulty plugin: aborted")


class HookFailureTests(AssociationTestCase):
    """A plugin that raises in a boundary hook costs neither the association
    nor the other plugins their call: it is logged, naming the plugin."""

    def make_faulty_pair(self):
        pair = self.make_pair()
        # registered last: pluggy calls it first, before the Recorders
        self.acceptor_faulty, self.requestor_faulty = Faulty(), Faulty()
        pair.acceptor.pm.register(self.acceptor_faulty, name="faulty")
        pair.requestor.pm.register(self.requestor_faulty, name="faulty")
        return pair

    def logged(self):
        errors = self.flushLoggedErrors(RuntimeError)
        return sorted(str(error.value) for error in errors)

    def test_established_and_released_hooks_that_raise(self):
        from twisted.logger import globalLogPublisher

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        pair = self.make_faulty_pair()
        assoc = pair.associate()
        self.assertTrue(pair.acceptor_association.established)
        self.assertEqual(pair.result(assoc.echo()), 0)
        pair.result(assoc.release())
        self.assertEqual(assoc.ended, "released")
        self.assertEqual(pair.acceptor_association.ended, "released by the peer")
        for recorder, faulty in ((self.acceptor_hooks, self.acceptor_faulty),
                                 (self.requestor_hooks, self.requestor_faulty)):
            self.assertEqual(faulty.calls, ["established", "released"])
            self.assertEqual(recorder.kinds(), ["established", "released"])
        self.assertEqual(pair.acceptor.active, set())
        self.assertEqual(self.logged(), ["faulty plugin: established"] * 2 + ["faulty plugin: released"] * 2)
        lines = [e for e in events if e.get("log_namespace") == "dimsekit.plugin"]
        self.assertEqual({(e["plugin"], e["hook"]) for e in lines}, {
            ("faulty", "dimsekit_on_association_established"),
            ("faulty", "dimsekit_on_association_released"),
        })

    def test_aborted_hook_that_raises(self):
        pair = self.make_faulty_pair()
        assoc = pair.associate()
        assoc.abort()
        pair.pump()
        self.assertTrue(pair.connections[-1].closed)
        for recorder, faulty in ((self.acceptor_hooks, self.acceptor_faulty),
                                 (self.requestor_hooks, self.requestor_faulty)):
            self.assertEqual(faulty.calls, ["established", "aborted"])
            self.assertEqual(recorder.kinds(), ["established", "aborted"])
        self.assertEqual(pair.acceptor.active, set())
        self.assertEqual(self.logged(), ["faulty plugin: aborted"] * 2 + ["faulty plugin: established"] * 2)
        self.assertEqual(pair.result(pair.associate().echo()), 0)  # the node goes on
        self.assertEqual(self.logged(), ["faulty plugin: established"] * 2)


STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"


class GatedFind:
    """A C-FIND SCP whose each match waits for the test to open its gate."""

    def __init__(self, count=3):
        self.count = count
        self.gates = []
        self.requests = []

    async def _matches(self):
        for i in range(self.count):
            gate = Deferred()
            self.gates.append(gate)
            await gate
            match = Dataset()
            match.PatientID = str(i)
            yield 0xFF00, match

    def find(self, request):
        self.requests.append(request)
        return self._matches()

    def service(self):
        return ServiceClass(name="gated-find", sop_classes=(STUDY_ROOT_FIND,), handlers={"C-FIND": self.find})


class AsyncIterationTests(AssociationTestCase):
    def _gated_find(self):
        """A C-FIND on a SCP whose matches wait for the test: (SCP, pair, association, operation)."""
        scp = GatedFind()
        pair = self.make_pair(Services(extra=[scp.service()]))
        assoc = pair.associate(contexts=[STUDY_ROOT_FIND, VERIFICATION])
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        return scp, pair, assoc, assoc.find(query, STUDY_ROOT_FIND)

    def test_cancelling_a_coroutine_iterating_a_find_sends_c_cancel(self):
        from twisted.internet.defer import CancelledError

        scp, pair, assoc, operation = self._gated_find()
        seen = []

        async def collect():
            async for response in operation:
                seen.append(response.dataset.PatientID)

        d = Deferred.fromCoroutine(collect())
        pair.pump()
        scp.gates[0].callback(None)
        pair.pump()
        self.assertEqual(seen, ["0"])
        d.cancel()  # as Deferred.cancel() of an `await operation` does: C-CANCEL-RQ
        pair.pump()
        self.failureResultOf(d, CancelledError)
        self.assertTrue(scp.requests[0].cancelled)
        self.assertEqual(pair.result(operation.result).status, 0xFE00)  # Cancel
        self.assertEqual(seen, ["0"])
        self.assertEqual(pair.result(assoc.echo()), 0)  # the association goes on
        pair.result(assoc.release())

    def _iterate_until_aborted(self):
        """A C-FIND iterated by a coroutine, the association aborted under it: (operation, the coroutine's Deferred)."""
        _, pair, assoc, operation = self._gated_find()

        async def collect():
            async for _response in operation:
                pass

        d = Deferred.fromCoroutine(collect())
        pair.pump()
        assoc.abort()
        pair.pump()
        return operation, d

    def test_a_failure_raised_by_async_for_is_not_reported_unhandled_when_collected(self):
        import gc

        from twisted.logger import globalLogPublisher

        from dimsekit.errors import AssociationAborted

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        operation, d = self._iterate_until_aborted()
        self.failureResultOf(d, AssociationAborted)  # the caller is told, by the iteration
        del operation, d
        gc.collect()
        unhandled = [e for e in events if "Unhandled error in Deferred" in str(e.get("log_format", ""))]
        self.assertEqual(unhandled, [])

    def test_await_after_async_for_raised_raises_again(self):
        from dimsekit.errors import AssociationAborted

        operation, d = self._iterate_until_aborted()
        self.failureResultOf(d, AssociationAborted)
        self.failureResultOf(operation.result, AssociationAborted)  # made now, already failed
        self.assertIs(operation.result, operation.result)  # one Deferred once made

    def test_a_c_get_that_cannot_start_leaves_no_c_store_handler_behind(self):
        from dimsekit.errors import LocalProtocolError

        pair = self.make_pair()
        assoc = pair.associate(contexts=[VERIFICATION])  # no C-GET context
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        operation = assoc.get(query, on_store=lambda request: 0x0000)
        self.failureResultOf(operation.result, LocalProtocolError)
        self.assertNotIn(("C-STORE", None), assoc.handlers)
        pair.result(assoc.release())

    def test_result_asked_for_before_the_end_fires_as_the_operation_ends(self):
        from dimsekit.errors import AssociationAborted

        _, pair, assoc, operation = self._gated_find()
        result = operation.result
        pair.pump()
        self.assertNoResult(result)
        assoc.abort()
        pair.pump()
        self.failureResultOf(result, AssociationAborted)


# -- user identity -----------------------------------------------------------------------------


class UserIdentityTests(AssociationTestCase):
    def test_accepted_with_server_response(self):
        authenticator = Authenticator()
        pair = self.make_pair(authenticator)
        assoc = pair.associate(user_identity=identity())
        self.assertEqual(assoc.negotiated.user_identity_response, b"welcome")
        (seen, request), = authenticator.seen
        self.assertEqual(seen.primary_field, b"alice")
        self.assertIs(request.association, pair.acceptor_association)

    def test_rejected(self):
        pair = self.make_pair(Authenticator())
        error = self.failureResultOf(
            pair.connect(user_identity=identity(password=b"wrong")), AssociationRejected
        ).value
        self.assertEqual((error.result, error.source, error.reason), (1, 1, 1))
        self.assertEqual(self.acceptor_hooks.kinds(), [])
        self.assertEqual(pair.acceptor.active, set())
        self.assertNoTimersLeft()

    def test_no_identity_offered_skips_the_authenticator(self):
        authenticator = Authenticator()
        pair = self.make_pair(authenticator)
        assoc = pair.associate()
        self.assertIsNone(assoc.negotiated.user_identity_response)
        self.assertEqual(authenticator.seen, [])

    def test_no_authenticator_accepts_without_response(self):
        pair = self.make_pair()
        assoc = pair.associate(user_identity=identity())
        self.assertIsNone(assoc.negotiated.user_identity_response)

    def test_asynchronous_authenticator(self):
        class SlowAuthenticator:
            def __init__(self, clock):
                self.clock = clock

            @hookimpl
            def dimsekit_authenticate(self, identity, request):
                d = Deferred()
                self.clock.callLater(2, d.callback, True)
                return d

        pair = self.make_pair()
        pair.acceptor.pm.register(SlowAuthenticator(pair.reactor))
        d = pair.connect(user_identity=identity())
        self.assertNoResult(d)
        pair.advance(2)
        assoc = self.successResultOf(d)
        self.assertTrue(assoc.established)
        self.assertIsNone(assoc.negotiated.user_identity_response)

    def test_authenticator_that_raises_rejects(self):
        class Broken:
            @hookimpl
            def dimsekit_authenticate(self, identity, request):
                raise RuntimeError("directory unreachable")

        pair = self.make_pair(Broken())
        error = self.failureResultOf(pair.connect(user_identity=identity()), AssociationRejected).value
        self.assertEqual((error.result, error.source, error.reason), (1, 1, 1))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


# -- the kit itself ----------------------------------------------------------------------------


class PairTests(AssociationTestCase):
    def test_default_plugin_manager_finds_the_builtin_verification(self):
        pair = AssociationPair()
        assoc = pair.associate()
        self.assertEqual(pair.result(assoc.echo()), 0x0000)

    def test_write_buffer_pauses_and_resumes_the_send_queue(self):
        received = []

        def store(request):
            received.append(request.sink.size)
            return 0x0000

        storage = ServiceClass(name="private-storage", sop_classes=(PRIVATE_SOP_CLASS,), handlers={"C-STORE": store})
        pair = self.make_pair(Services(extra=[storage]), write_buffer=8192)
        assoc = pair.associate(contexts=[PRIVATE_SOP_CLASS], maximum_length=4096)
        context = assoc.negotiated.context_for(PRIVATE_SOP_CLASS)
        command = {
            "CommandField": CommandField.C_STORE_RQ,
            "AffectedSOPClassUID": PRIVATE_SOP_CLASS,
            "AffectedSOPInstanceUID": "1.2.3.4",
            "Priority": 0,
            "CommandDataSetType": 0x0001,
        }
        dataset = bytes(range(256)) * 1024  # 256 KiB
        d = assoc.send_request(context, command, dataset)
        transport = pair.connections[-1].requestor_transport
        self.assertLess(len(transport.value()), 8192 + 16384)  # paused, not all written at once
        self.assertEqual(transport.pauses, 1)
        self.assertEqual(pair.result(d).status, 0x0000)
        self.assertEqual(received, [len(dataset)])
        self.assertGreater(transport.pauses, 10)

    def test_result_of_an_unfired_deferred_is_an_assertion(self):
        pair = self.make_pair()
        with self.assertRaises(AssertionError):
            pair.result(Deferred())

    def test_result_of_a_coroutine(self):
        pair = self.make_pair()

        async def scenario():
            assoc = await pair.connect()
            return await assoc.echo()

        self.assertEqual(pair.result(scenario()), 0)

    def test_result_raises_the_failure(self):
        pair = self.make_pair(acceptor_config=Config(node=NodeConfig(check_called_ae=True)))
        with self.assertRaises(AssociationRejected):
            pair.associate(called="NOBODY")

    def test_endpoint_for_the_application_entity_api(self):
        pair = self.make_pair()
        d = pair.requestor.associate(called="ACCEPTOR", contexts=[VERIFICATION], endpoint=pair.endpoint)
        pair.pump()
        self.assertTrue(self.successResultOf(d).established)

    def test_peer_addresses(self):
        pair = self.make_pair()
        assoc = pair.associate()
        self.assertEqual((assoc.peer.host, assoc.peer.port), ("127.0.0.1", 11112))
        self.assertEqual(pair.acceptor_association.peer.host, "127.0.0.1")


class EndlessFind:
    """A C-FIND SCP with ``count`` large matches, each sent as soon as the transport takes it."""

    def __init__(self, count=10_000):
        self.count = count
        self.sent = 0
        self.closed = False

    def _matches(self):
        try:
            for i in range(self.count):
                match = Dataset()
                match.PatientID = str(i)
                match.PatientComments = "x" * 1000  # LT: up to 10,240 characters
                self.sent += 1
                yield 0xFF00, match
        finally:
            self.closed = True  # its cursor would be released here

    def find(self, request):
        return self._matches()

    def service(self):
        return ServiceClass(name="endless-find", sop_classes=(STUDY_ROOT_FIND,), handlers={"C-FIND": self.find})


class SendStallTests(AssociationTestCase):
    """A peer that stops reading: the transport holds our writes back for ever (LESSONS.md #29)."""

    def _stalled_find(self, dimse_timeout=10.0):
        """A C-FIND whose requestor reads nothing of the answers: (SCP, pair, connection)."""
        scp = EndlessFind()
        config = Config(limits=Limits(dimse_timeout=dimse_timeout))
        pair = self.make_pair(Services(extra=[scp.service()]), write_buffer=65536, acceptor_config=config,
                              requestor_config=Config(limits=Limits(dimse_timeout=0)))
        assoc = pair.associate(contexts=[STUDY_ROOT_FIND])
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        assoc.find(query, STUDY_ROOT_FIND)
        connection = pair.connections[-1]
        # only the request goes over: the requestor reads nothing from now on
        request = connection.requestor_transport.value()
        connection.requestor_transport.clear()
        connection.acceptor_protocol.dataReceived(request)
        for _ in range(200):
            pair.reactor.advance(0)  # the handler sends a match per reactor turn until paused
        self.assertTrue(connection.acceptor_transport.producer_paused)
        return scp, pair, connection

    def test_a_peer_that_reads_nothing_is_aborted_after_the_dimse_timeout(self):
        scp, pair, connection = self._stalled_find()
        sent = scp.sent
        self.assertLess(sent, 200)  # held back, not all 10,000 queued in memory
        acceptor = connection.acceptor_association
        pair.reactor.advance(9.9)
        self.assertIsNone(acceptor.ended)
        self.assertEqual(scp.sent, sent)
        pair.reactor.advance(0.2)
        self.assertEqual(acceptor.ended,
                         "aborted: sending stalled: the peer took nothing of what we sent for 10 s")
        self.assertTrue(connection.acceptor_transport.disconnected)  # dropped (abortConnection), not closed after a flush
        pair.pump()
        self.assertTrue(connection.closed)
        self.assertTrue(scp.closed)  # the handler's generator was closed
        self.assertEqual(self.acceptor_hooks.kinds(), ["established", "aborted"])
        self.assertNoTimersLeft()

    def test_a_slow_reader_is_not_aborted(self):
        scp, pair, connection = self._stalled_find()
        acceptor = connection.acceptor_association
        first = scp.sent
        for _ in range(5):  # every 6 s the peer takes what waits, then stops again
            pair.reactor.advance(6)
            data = connection.acceptor_transport.value()
            connection.acceptor_transport.clear()
            connection.requestor_protocol.dataReceived(data)
            connection.acceptor_transport.drained()
            for _ in range(200):
                pair.reactor.advance(0)
            self.assertTrue(connection.acceptor_transport.producer_paused)
        self.assertIsNone(acceptor.ended)
        self.assertGreater(scp.sent, 5 * first)  # it went on, a buffer-full at a time
        pair.reactor.advance(10)  # then it stops for good
        self.assertTrue(acceptor.ended.startswith("aborted: sending stalled"))

    def test_an_association_ended_otherwise_has_its_stuck_connection_dropped(self):
        # aborted while its peer reads nothing (here by the node itself; a DIMSE timeout
        # of a request we were sending does the same): its A-ABORT cannot go out either,
        # and a close would wait for the unsent bytes for ever
        scp, pair, connection = self._stalled_find()
        acceptor = connection.acceptor_association
        pair.reactor.advance(5)
        acceptor.abort("the node gives up")
        self.assertEqual(acceptor.ended, "aborted: the node gives up")
        self.assertFalse(connection.acceptor_transport.disconnected)
        pair.reactor.advance(5.1)  # 10 s after the stall began
        self.assertTrue(connection.acceptor_transport.disconnected)
        pair.pump()
        self.assertTrue(connection.closed)
        self.assertNoTimersLeft()

    def test_no_dimse_timeout_no_stall_timer(self):
        scp, pair, connection = self._stalled_find(dimse_timeout=0)
        pair.reactor.advance(3600)
        self.assertIsNone(connection.acceptor_association.ended)
        connection.acceptor_association.abort("the test ends it")
        pair.pump()


class ReadBackpressureTests(AssociationTestCase):
    """A peer that sends requests and does not read the responses is not read either, until
    it does: TCP holds it back, rather than our queue of responses growing with each request."""

    def test_a_peer_that_reads_no_responses_is_not_read_until_it_does(self):
        pair = self.make_pair(write_buffer=2048)
        assoc = pair.associate()
        context = assoc.negotiated.context_for(VERIFICATION)
        connection = pair.connections[-1]
        connection.requestor_transport.write_buffer = None  # the peer's requests all go out
        for message_id in range(1, 201):
            assoc.send_message(context, {"CommandField": CommandField.C_ECHO_RQ, "MessageID": message_id,
                                         "AffectedSOPClassUID": VERIFICATION, "CommandDataSetType": 0x0101})
        requests = connection.requestor_transport.value()
        connection.requestor_transport.clear()
        connection.acceptor_protocol.dataReceived(requests)  # the acceptor reads them all; the peer reads nothing
        acceptor = connection.acceptor_association
        self.assertEqual(connection.acceptor_transport.producerState, "paused")  # the socket is not read
        self.assertGreater(len(acceptor._outgoing), 64)
        answers = []
        assoc._response = lambda context, command, sink: answers.append(command["MessageIDBeingRespondedTo"])
        pair.pump()  # the peer reads: every request answered, in order, and the acceptor reads again
        self.assertEqual(answers, list(range(1, 201)))
        self.assertEqual(connection.acceptor_transport.producerState, "producing")
        self.assertIsNone(acceptor.ended)
        pair.result(assoc.release())

    def test_our_own_requests_waiting_never_stop_reading(self):
        # the peer's answers are what lets them go: two peers each waiting for the
        # other to read would never move
        window = Config(limits=Limits(max_operations_invoked=0, max_operations_performed=0))
        pair = self.make_pair(write_buffer=2048, acceptor_config=window, requestor_config=window)
        assoc = pair.associate(async_window=(0, 0))
        connection = pair.connections[-1]
        echoes = [assoc.echo() for _ in range(200)]
        self.assertGreater(len(assoc._outgoing), 64)  # held back by its transport
        self.assertEqual(connection.requestor_transport.producerState, "producing")  # still reads the answers
        pair.pump()
        self.assertEqual([self.successResultOf(d) for d in echoes], [0] * 200)
        pair.result(assoc.release())

    def test_a_few_responses_waiting_do_not_stop_reading(self):
        # a C-FIND streaming to a slow reader keeps reading the peer: its C-CANCEL must get in
        pair = self.make_pair(write_buffer=2048)
        assoc = pair.associate()
        context = assoc.negotiated.context_for(VERIFICATION)
        connection = pair.connections[-1]
        connection.requestor_transport.write_buffer = None
        for message_id in range(1, 41):
            assoc.send_message(context, {"CommandField": CommandField.C_ECHO_RQ, "MessageID": message_id,
                                         "AffectedSOPClassUID": VERIFICATION, "CommandDataSetType": 0x0101})
        requests = connection.requestor_transport.value()
        connection.requestor_transport.clear()
        connection.acceptor_protocol.dataReceived(requests)
        self.assertTrue(connection.acceptor_transport.producer_paused)  # its writes are held back...
        self.assertEqual(connection.acceptor_transport.producerState, "producing")  # ...but it is still read
        pair.pump()
        pair.result(assoc.release())
