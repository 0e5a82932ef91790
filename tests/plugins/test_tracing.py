"""The tracing plugin: spans of associations and requests, over loopback associations.

The spans go to the OpenTelemetry SDK's in-memory exporter (its own test tool); the
twistd node sending them over OTLP is tests/interop/test_tracing.py.
"""

from __future__ import annotations

import socket

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from twisted.internet import defer
from twisted.logger import globalLogPublisher

from dimsekit.config import Config, ConfigError, Limits, NodeConfig
from dimsekit.errors import AssociationRejected
from dimsekit.hookspecs import hookimpl
from dimsekit.registry import ServiceClass
from dimsekit.uids import VERIFICATION
from dimsekit_plugins import tracing
from tests.dimse_e2e.support import (
    CT,
    CT_FILE,
    MR,
    N_CLASS,
    STUDY_ROOT_MOVE,
    LoopbackTestCase,
    Services,
    file_dataset_bytes,
    wait_until,
    within,
)
from tests.dimse_e2e.test_tls import TLSTestCase, tls_config


def settings(**section):
    return tracing.TracingSettings.from_config(Config(plugins={"tracing": section}))


def test_off_by_default():
    assert settings() == tracing.TracingSettings(exporter="none")


@pytest.mark.parametrize(("section", "message"), [
    ({"port": 1}, "plugins.tracing.port: unknown key"),
    ({"exporter": "jaeger"}, "plugins.tracing.exporter: 'jaeger' is not one of: none, otlp, console"),
    ({"exporter": "otlp", "endpoint": "collector:4318"}, "is not an http:// or https:// URL"),
    ({"exporter": "console", "endpoint": "http://c:4318/v1/traces"}, 'only with exporter = "otlp"'),
    ({"service_name": " "}, "plugins.tracing.service_name: expected a name"),
    ({"instance_uids": "yes"}, "plugins.tracing.instance_uids: expected true or false"),
])
def test_a_wrong_setting_names_its_key(section, message):
    with pytest.raises(ConfigError, match=message):
        settings(**section)


def test_an_exporter_without_the_sdk_stops_start_up(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_sdk(name, *args, **kwargs):
        if name.startswith("opentelemetry.sdk") or name.startswith("opentelemetry.exporter"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sdk)
    with pytest.raises(ConfigError, match=r"pip install 'dimsekit\[tracing\]'"):
        settings(exporter="otlp")


def test_no_tracer_unless_an_sdk_is_set_up(monkeypatch):
    assert tracing._provider is None
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)  # nobody set one up here
    assert tracing.active_tracer() is None
    # an application (or opentelemetry-instrument) that set the process's provider up: its spans
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    tracer = tracing.active_tracer()
    assert tracer is not None
    tracer.start_span("x").end()
    assert [s.name for s in exporter.get_finished_spans()] == ["x"]


class _Hanging:
    """A C-ECHO handler that never answers (the association ends first)."""

    def __init__(self) -> None:
        self.waiting: list[defer.Deferred] = []

    def echo(self, request):
        d = defer.Deferred()
        self.waiting.append(d)
        return d

    @hookimpl
    def dimsekit_service_classes(self):
        return [ServiceClass(name="verification", sop_classes=(VERIFICATION,), handlers={"C-ECHO": self.echo})]


class TracingTests(LoopbackTestCase):
    def setUp(self):
        super().setUp()
        self.exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        tracing._provider = provider  # what [plugins.tracing] exporter = ... sets up
        self.addCleanup(tracing.stop)

    def spans(self, name=None):
        return [s for s in self.exporter.get_finished_spans() if name is None or s.name == name]

    def association_spans(self, role):
        return [s for s in self.spans("DICOM association") if s.attributes["dicom.role"] == role]

    async def ended(self, count, role="acceptor"):
        await wait_until(lambda: len(self.association_spans(role)) >= count, what=f"{count} {role} span(s)")

    async def test_an_association_and_its_requests(self):
        services = Services()
        ae, port = await self.serve(services, tracing)
        self.assertTrue(tracing.observe_associations(ae))  # what a node does as it starts
        assoc = await self.connect(port, [VERIFICATION, CT])
        client_port = assoc.protocol.transport.getHost().port
        self.assertEqual(await within(assoc.echo()), 0x0000)
        self.assertEqual((await within(assoc.store(CT_FILE))).status, 0x0000)
        services.store_status = 0xA700
        self.assertEqual((await within(assoc.store(CT_FILE))).status, 0xA700)
        await within(assoc.release())
        await self.ended(1)

        (span,) = self.association_spans("acceptor")
        self.assertEqual(span.kind, trace.SpanKind.SERVER)
        self.assertEqual(span.attributes["dicom.calling_ae_title"], "SCU")
        self.assertEqual(span.attributes["dicom.called_ae_title"], "SCP")
        self.assertEqual(span.attributes["network.peer.address"], "127.0.0.1")
        self.assertEqual(span.attributes["network.peer.port"], client_port)
        self.assertIs(span.attributes["dicom.tls"], False)
        self.assertEqual(span.attributes["dicom.association.outcome"], "released")
        self.assertEqual(span.attributes["dicom.requests_answered"], 3)
        self.assertEqual(span.status.status_code, trace.StatusCode.UNSET)

        requests = [s for s in self.spans() if s.parent is not None and s.parent.span_id == span.context.span_id]
        self.assertEqual([s.name for s in requests], ["C-ECHO", "C-STORE", "C-STORE"])
        echo, stored, refused = requests
        self.assertEqual({s.context.trace_id for s in requests}, {span.context.trace_id})
        self.assertEqual(echo.kind, trace.SpanKind.SERVER)
        self.assertEqual(echo.attributes["dicom.sop_class_uid"], VERIFICATION)
        self.assertEqual(echo.attributes["dicom.sop_class"], "Verification SOP Class")
        self.assertEqual(echo.attributes["dicom.status"], 0)
        self.assertEqual(echo.attributes["dicom.status_category"], "success")
        self.assertEqual(stored.attributes["dicom.sop_class_uid"], CT)
        self.assertEqual(stored.attributes["dicom.message_id"] + 1, refused.attributes["dicom.message_id"])
        self.assertNotIn("dicom.sop_instance_uid", stored.attributes)  # not unless asked for
        self.assertEqual(stored.attributes["dicom.dataset_bytes"], len(file_dataset_bytes(CT_FILE)))
        self.assertNotIn("dicom.dataset_bytes", echo.attributes)
        self.assertEqual(refused.attributes["dicom.status"], 0xA700)
        self.assertEqual(refused.attributes["dicom.status_category"], "failure")
        self.assertEqual(refused.status.status_code, trace.StatusCode.ERROR)
        self.assertEqual(refused.status.description, "0xA700")
        for s in requests:
            self.assertLessEqual(span.start_time, s.start_time)
            self.assertLessEqual(s.start_time, s.end_time)
            self.assertLessEqual(s.end_time, span.end_time)

    async def test_requests_refused_before_a_handler_saw_them_have_spans(self):
        # past a limit on their data set: an N-ACTION (0213H), the association going on
        config = Config(node=NodeConfig(ae_title="SCP"),
                        limits=Limits(dimse_timeout=5.0, acse_timeout=5.0, max_n_dataset_size=64))
        services = Services()
        ae, port = await self.serve(services, tracing, config=config)
        self.assertTrue(tracing.observe_associations(ae))  # what a node does as it starts
        assoc = await self.connect(port, [N_CLASS])
        from pydicom.dataset import Dataset

        big = Dataset()
        big.PatientComments = "x" * 200
        refused = await within(assoc.n_action(N_CLASS, "1.2.3.4", 1, big))
        self.assertEqual(refused.status, 0x0213)
        small = Dataset()
        small.PatientID = "7"
        self.assertEqual((await within(assoc.n_action(N_CLASS, "1.2.3.4", 1, small))).status, 0x0000)
        await within(assoc.release())
        await self.ended(1)
        (span,) = self.association_spans("acceptor")
        first, second = sorted(self.spans("N-ACTION"), key=lambda s: s.start_time)
        self.assertEqual(first.parent.span_id, span.context.span_id)
        self.assertEqual(first.kind, trace.SpanKind.SERVER)
        self.assertEqual(first.attributes["dicom.sop_class_uid"], N_CLASS)
        self.assertEqual(first.attributes["dicom.status"], 0x0213)
        self.assertEqual(first.attributes["dicom.error_comment"], "Data set longer than 64 bytes")
        self.assertEqual(first.status.status_code, trace.StatusCode.ERROR)
        self.assertEqual(second.attributes["dicom.status"], 0)
        self.assertEqual(len(services.requests), 1)  # the handler saw the second only

    async def test_a_refused_command_set_with_unexpected_types_still_makes_a_span(self):
        # what could be decoded of a command set that did not validate may be of any type
        ae, port = await self.serve(Services(), tracing)
        self.assertTrue(tracing.observe_associations(ae))
        assoc = await self.connect(port, [VERIFICATION])
        (acceptor,) = [a for a in ae.tracker.associations if not a.is_requestor]
        acceptor._tell("request_refused", {"CommandField": b"\x30\x00", "MessageID": "seven",
                                           "AffectedSOPClassUID": 7}, None, 0x0212, {"ErrorComment": "mistyped"})
        self.assertEqual(len(acceptor.observers), 1)  # the observer did not fail
        await within(assoc.release())
        await self.ended(1)
        (made,) = self.spans("unknown")
        self.assertEqual(made.attributes["dicom.status"], 0x0212)
        self.assertEqual(made.attributes["dicom.message_id"], 0)
        self.assertNotIn("dicom.sop_class_uid", made.attributes)

    async def test_a_refused_command_set_whose_sop_class_is_no_uid_makes_no_pydicom_warning(self):
        # pydicom's UID() validates and warns: a log line without its context in the node's log
        import warnings

        ae, port = await self.serve(Services(), tracing)
        self.assertTrue(tracing.observe_associations(ae))
        assoc = await self.connect(port, [VERIFICATION])
        (acceptor,) = [a for a in ae.tracker.associations if not a.is_requestor]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            acceptor._tell("request_refused", {"CommandField": 0x0001, "MessageID": 3,
                                               "AffectedSOPClassUID": "\x01\x02\x03"}, None, 0x0212, {})
        self.assertEqual(len(acceptor.observers), 1)  # the observer did not fail
        await within(assoc.release())
        await self.ended(1)
        (made,) = self.spans("C-STORE")
        self.assertEqual(made.attributes["dicom.sop_class_uid"], "\x01\x02\x03")
        self.assertNotIn("dicom.sop_class", made.attributes)

    async def test_the_instance_uid_when_asked_for(self):
        tracing._settings = tracing.TracingSettings(instance_uids=True)
        services = Services()
        ae, port = await self.serve(services, tracing)
        self.assertTrue(tracing.observe_associations(ae))  # what a node does as it starts
        assoc = await self.connect(port, [CT])
        await within(assoc.store(CT_FILE))
        await within(assoc.release())
        await self.ended(1)
        (stored,) = self.spans("C-STORE")
        self.assertEqual(stored.attributes["dicom.sop_instance_uid"], services.stored[0].command["AffectedSOPInstanceUID"])

    async def test_a_request_the_association_ends_before_answering(self):
        hanging = _Hanging()
        ae, port = await self.serve(hanging, tracing)
        self.assertTrue(tracing.observe_associations(ae))  # what a node does as it starts
        assoc = await self.connect(port, [VERIFICATION])
        echo = assoc.echo()
        echo.addErrback(lambda _f: None)
        await wait_until(lambda: hanging.waiting, what="the echo in the handler")
        assoc.abort("the test aborts")
        await self.ended(1)
        (span,) = self.association_spans("acceptor")
        self.assertEqual(span.attributes["dicom.association.outcome"], "aborted")
        self.assertEqual(span.status.status_code, trace.StatusCode.ERROR)
        (unanswered,) = self.spans("C-ECHO")
        self.assertEqual(unanswered.parent.span_id, span.context.span_id)
        self.assertEqual(unanswered.status.status_code, trace.StatusCode.ERROR)
        self.assertTrue(unanswered.status.description.startswith("the association ended first: "),
                        unanswered.status.description)
        self.assertNotIn("dicom.status", unanswered.attributes)

    async def test_a_rejected_request_has_a_span_a_bare_connection_none(self):
        config = Config(node=NodeConfig(ae_title="SCP", check_called_ae=True),
                        limits=Limits(dimse_timeout=5.0, acse_timeout=5.0))
        ae, port = await self.serve(Services(), tracing, config=config)
        self.assertTrue(tracing.observe_associations(ae))  # what a node does as it starts
        with self.assertRaises(AssociationRejected):
            await self.connect(port, [VERIFICATION], called="NOT-SCP")
        bare = socket.create_connection(("127.0.0.1", port))
        bare.close()
        await self.ended(1)
        await wait_until(lambda: not ae.tracker.associations or all(a.protocol is None for a in ae.tracker.associations),
                         what="connections closed")
        (span,) = self.association_spans("acceptor")
        self.assertEqual(span.attributes["dicom.called_ae_title"], "NOT-SCP")
        self.assertEqual(span.attributes["dicom.association.outcome"], "rejected")
        self.assertEqual(span.status.status_code, trace.StatusCode.ERROR)
        self.assertEqual(span.attributes["dicom.requests_answered"], 0)

    async def test_the_requestor_side_and_a_move_sub_association(self):
        # The SCP moves to a destination AE (another dimsekit AE): its sub-association
        # and C-STOREs are the requestor's spans; the client's own are too.
        destination_services = Services()
        _dest, dest_port = await self.serve(destination_services, ae_title="DEST")
        services = Services()
        services.destinations = {"DEST": ("127.0.0.1", dest_port)}
        ae, port = await self.serve(services, tracing)
        self.assertTrue(tracing.observe_associations(ae))  # what a node does as it starts
        client = self.make_ae("SCU", tracing)
        tracing.observe_associations(client)
        assoc = await self.connect(port, [STUDY_ROOT_MOVE], ae=client)
        from pydicom.dataset import Dataset

        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = "1.2.3"
        final = await within(assoc.move(query, "DEST").result)
        self.assertEqual(final.status, 0x0000)
        await within(assoc.release())
        await self.ended(2, "requestor")
        await self.ended(1, "acceptor")

        (served,) = self.association_spans("acceptor")
        (move,) = [s for s in self.spans("C-MOVE") if s.kind == trace.SpanKind.SERVER]
        self.assertEqual(move.parent.span_id, served.context.span_id)
        self.assertEqual(move.attributes["dicom.move_destination"], "DEST")
        self.assertEqual(move.attributes["dicom.suboperations.completed"], 2)
        self.assertEqual(move.attributes["dicom.suboperations.failed"], 0)

        sub, own = sorted(self.association_spans("requestor"), key=lambda s: s.attributes["dicom.called_ae_title"])
        self.assertEqual(sub.attributes["dicom.called_ae_title"], "DEST")
        self.assertEqual(sub.kind, trace.SpanKind.CLIENT)
        # the sub-operations go under the C-MOVE (one trace from the request to each instance
        # sent), linked to the association they went over
        stores = self.spans("C-STORE")
        self.assertEqual(len(stores), 2)
        for s in stores:
            self.assertEqual(s.parent.span_id, move.context.span_id)
            self.assertEqual(s.context.trace_id, move.context.trace_id)
            self.assertEqual([link.context.span_id for link in s.links], [sub.context.span_id])
            self.assertEqual(s.kind, trace.SpanKind.CLIENT)
            self.assertEqual(s.attributes["dicom.status"], 0)
        self.assertFalse(tracing._moves)  # forgotten once answered
        self.assertEqual(own.attributes["dicom.called_ae_title"], "SCP")
        (asked,) = [s for s in self.spans("C-MOVE") if s.kind == trace.SpanKind.CLIENT]
        self.assertEqual(asked.parent.span_id, own.context.span_id)
        self.assertEqual(asked.attributes["dicom.status"], 0)
        self.assertEqual(asked.attributes["dicom.suboperations.completed"], 2)
        self.assertEqual(own.attributes["dicom.requests_sent"], 1)

    async def test_two_moves_of_one_requestor_title_and_message_id_at_once_give_no_wrong_parent(self):
        # Two requestors with one AE title, each with its first C-MOVE (Message ID 1): while
        # both run, a sub-operation's Move Originator fields fit either, so it goes under no
        # C-MOVE (under its association, as any request); alone again, under its own.
        held = defer.Deferred()

        class Holding(Services):
            def store(self, request):
                super().store(request)
                if len(self.stored) == 1:
                    return held  # the first sub-operation of the first C-MOVE waits
                return 0x0000

        destination = Holding()
        _dest, dest_port = await self.serve(destination, ae_title="DEST")
        services = Services()
        services.destinations = {"DEST": ("127.0.0.1", dest_port)}
        ae, port = await self.serve(services, tracing)
        self.assertTrue(tracing.observe_associations(ae))
        from pydicom.dataset import Dataset

        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = "1.2.3"
        first = await self.connect(port, [STUDY_ROOT_MOVE], ae=self.make_ae("SCU"))
        second = await self.connect(port, [STUDY_ROOT_MOVE], ae=self.make_ae("SCU"))
        first_move = first.move(query, "DEST").result
        await wait_until(lambda: len(destination.stored) == 1, what="the first C-MOVE's first C-STORE held")
        final = await within(second.move(query, "DEST").result)  # all of it while the first one waits
        self.assertEqual(final.status, 0x0000)
        held.callback(0x0000)
        self.assertEqual((await within(first_move)).status, 0x0000)
        await within(first.release())
        await within(second.release())
        await self.ended(2, "acceptor")
        await self.ended(2, "requestor")

        moves = [s for s in self.spans("C-MOVE") if s.kind == trace.SpanKind.SERVER]
        self.assertEqual(len(moves), 2)
        self.assertEqual({m.attributes["dicom.message_id"] for m in moves}, {1})
        subs = {s.context.span_id: s for s in self.association_spans("requestor")}
        stores = self.spans("C-STORE")
        self.assertEqual(len(stores), 4)
        by_parent: dict = {}
        for s in stores:
            by_parent.setdefault(s.parent.span_id, []).append(s)
        first_span = min(moves, key=lambda m: m.start_time)
        # the first C-MOVE's two: its first began alone, its second after the other C-MOVE ended
        self.assertEqual(len(by_parent.get(first_span.context.span_id, [])), 2)
        # the second's two began while both ran: under their own association, not a C-MOVE
        others = [s for s in stores if s.parent.span_id != first_span.context.span_id]
        self.assertEqual(len(others), 2)
        for s in others:
            self.assertIn(s.parent.span_id, subs)
            self.assertEqual(subs[s.parent.span_id].attributes["dicom.called_ae_title"], "DEST")
        self.assertFalse(tracing._moves)

    async def test_a_get_s_sub_operations_go_under_it(self):
        services = Services()
        ae, port = await self.serve(services, tracing)
        self.assertTrue(tracing.observe_associations(ae))  # what a node does as it starts
        client = self.make_ae("SCU")
        received = []

        def on_store(request):
            received.append(request.sop_instance_uid)
            return 0x0000

        from tests.dimse_e2e.support import STUDY_ROOT_GET

        assoc = await self.connect(port, [STUDY_ROOT_GET, CT, MR], ae=client,
                                   roles={CT: (True, True), MR: (True, True)})
        from pydicom.dataset import Dataset

        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = "1.2.3"
        final = await within(assoc.get(query, on_store=on_store).result)
        self.assertEqual(final.status, 0x0000)
        await within(assoc.release())
        await self.ended(1)
        (get,) = self.spans("C-GET")
        stores = self.spans("C-STORE")
        self.assertEqual(len(stores), len(received))
        self.assertEqual(len(stores), 2)
        (served,) = self.association_spans("acceptor")
        for s in stores:
            self.assertEqual(s.parent.span_id, get.context.span_id)
            self.assertEqual([link.context.span_id for link in s.links], [served.context.span_id])

    async def test_an_observer_that_fails_is_dropped_and_the_association_goes_on(self):
        class Broken:
            calls = 0

            def request_received(self, request):
                Broken.calls += 1
                raise RuntimeError("observer bug")

        broken = Broken()

        class Attach:
            @hookimpl
            def dimsekit_on_association_established(self, association):
                association.observe(broken)

        logged = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        ae, port = await self.serve(Services(), Attach(), tracing)
        self.assertTrue(tracing.observe_associations(ae))  # what a node does as it starts
        assoc = await self.connect(port, [VERIFICATION])
        self.assertEqual(await within(assoc.echo()), 0x0000)
        self.assertEqual(await within(assoc.echo()), 0x0000)
        await within(assoc.release())
        await self.ended(1)
        self.assertEqual(Broken.calls, 1)  # not told again
        failures = [e for e in logged if "log_failure" in e and "no longer told" in e.get("log_format", "")]
        self.assertEqual(len(failures), 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(len(self.spans("C-ECHO")), 2)  # the other observer (tracing) still told


def test_the_sdks_warnings_reach_the_log_at_most_once_a_minute(monkeypatch):
    import logging

    from twisted.logger import formatEvent

    from dimsekit import libraries_log

    logged = []
    globalLogPublisher.addObserver(logged.append)
    clock = [1000.0]
    monkeypatch.setattr(libraries_log.time, "monotonic", lambda: clock[0])
    handler = libraries_log.ToNodeLog(tracing._log, "tracing")
    logger = logging.getLogger("opentelemetry.test")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        for _ in range(5):
            logger.warning("Failed to export span batch code: %s", 503)
            clock[0] += 10
        logger.warning("another \x1b[31mproblem")
        clock[0] += 20  # a minute after the first was said
        logger.warning("Failed to export span batch code: %s", 503)
    finally:
        logger.removeHandler(handler)
        globalLogPublisher.removeObserver(logged.append)
    said = [formatEvent(e) for e in logged if e.get("log_namespace") == "dimsekit.tracing"]
    assert said == [
        "tracing: Failed to export span batch code: 503",
        "tracing: another \\x1b[31mproblem",  # a control character escaped
        "tracing: Failed to export span batch code: 503 (4 more times in the last 60 s)",
    ]


class TracingOverTLSTests(TLSTestCase):
    async def test_an_association_over_tls_says_so(self):
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracing._provider = provider
        self.addCleanup(tracing.stop)
        f = self.files
        config = tls_config("SCP", f, cert=f.server_cert, key=f.server_key, trust=[f.ca])
        ae = self.make_ae("SCP", Services(), tracing, config=config)
        tracing.observe_associations(ae)
        port = await ae.listen(0, tls=True)
        self.addCleanup(port.stopListening)
        association = await self.connect(port.getHost().port, [VERIFICATION], ae=self.client(), tls=True)
        self.assertEqual(await within(association.echo()), 0x0000)
        await within(association.release())
        await wait_until(lambda: any(s.name == "DICOM association" for s in exporter.get_finished_spans()),
                         what="the association's span")
        (span,) = [s for s in exporter.get_finished_spans() if s.name == "DICOM association"]
        self.assertIs(span.attributes["dicom.tls"], True)


def test_without_opentelemetry_installed_no_import_is_tried_again(monkeypatch):
    import builtins

    real_import = builtins.__import__
    tried = []

    def no_otel(name, *args, **kwargs):
        if name.startswith("opentelemetry"):
            tried.append(name)
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_otel)
    monkeypatch.setattr(tracing, "_no_api", False)
    assert tracing.active_tracer() is None
    assert tracing.active_tracer() is None  # every association asks
    assert tried == ["opentelemetry"]


def test_a_node_that_makes_no_spans_gets_no_per_association_hooks(monkeypatch):
    from twisted.internet.testing import MemoryReactorClock

    from dimsekit.ae import ApplicationEntity
    from dimsekit.plugin import make_plugin_manager

    pm = make_plugin_manager(load_entrypoints=False, plugins=[tracing])
    ae = ApplicationEntity("SCP", config=Config(), plugin_manager=pm, reactor=MemoryReactorClock())
    tracing.dimsekit_on_node_started(ae)  # no exporter configured, no SDK set up
    assert not pm.hook.dimsekit_on_association_established.get_hookimpls()
    assert not pm.hook.dimsekit_on_association_ended.get_hookimpls()
    # an application that set up its SDK before starting the node: its spans
    provider = TracerProvider()
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    tracing.dimsekit_on_node_started(ae)
    tracing.dimsekit_on_node_started(ae)  # once is enough
    (impl,) = pm.hook.dimsekit_on_association_established.get_hookimpls()
    assert isinstance(impl.plugin, tracing.AssociationSpans)
    assert len(pm.hook.dimsekit_on_association_ended.get_hookimpls()) == 1
