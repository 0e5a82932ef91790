"""Traces for OpenTelemetry: a span for each association, a child span for each request.

Off unless configured, or unless the process has an OpenTelemetry SDK set up
when the node starts (``opentelemetry-instrument twistd -n dimsekit``, or an
application embedding dimsekit that installed its own tracer provider first;
one that starts an ApplicationEntity without the node service calls
:func:`observe_associations`): then dimsekit's spans go wherever that
provider sends them.  A node that makes no spans pays nothing for this plugin.  To have the node send
them itself (``pip install 'dimsekit[tracing]'``):

.. code-block:: toml

    [plugins.tracing]
    exporter = "otlp"            # "none" (the default), "otlp" (OTLP over HTTP), "console" (JSON to the log)
    endpoint = "http://collector:4318/v1/traces"   # else OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, ...
    service_name = "dimsekit"    # else OTEL_SERVICE_NAME, else "dimsekit"
    instance_uids = false        # true: the SOP Instance UID of each request as an attribute

What a trace holds:

* ``DICOM association`` -- kind SERVER where a peer asked for it, CLIENT
  where the node did (C-MOVE sub-operations, storage commitment reports):
  from the connection to its end.  Attributes ``dicom.role``
  (acceptor/requestor), ``dicom.calling_ae_title``, ``dicom.called_ae_title``,
  ``network.peer.address``, ``network.peer.port``, ``dicom.tls``, and at the end
  ``dicom.association.outcome`` (released, aborted, rejected),
  ``dicom.association.end`` (how it ended, as the log line says it),
  ``dicom.requests_answered``, ``dicom.requests_sent``.  Status ERROR unless
  released.  An A-ASSOCIATE-RQ that was rejected has its span too (a
  connection that never sent one -- a port scan, a health check -- has not).
* one child span per request, named by its command (``C-STORE``,
  ``C-FIND``, ``N-ACTION``...), SERVER for the peer's requests (from its
  command set to the final response: a C-STORE's data transfer included),
  CLIENT for the node's own (from the request sent to the final response).
  Attributes ``dicom.message_id``, ``dicom.sop_class_uid``, ``dicom.sop_class``
  (its name), ``dicom.transfer_syntax_uid``, ``dicom.status`` (the final
  status, an integer), ``dicom.status_category`` (success, warning, failure,
  cancel), ``dicom.error_comment``, for C-GET and C-MOVE
  ``dicom.suboperations.completed`` / ``.failed`` / ``.warning``, for C-MOVE
  ``dicom.move_destination``, for a request with a data set ``dicom.dataset_bytes``
  (as received).  Status ERROR for a failure status, or when the
  association ended before the answer.
* the C-STOREs of a C-MOVE or C-GET the node answers go under that request's
  span, so that one trace shows a retrieve and each instance it sent (a
  C-MOVE's are found by their Move Originator AE title and Message ID), with
  a link to the span of the association they went over.

No patient data goes into a span: AE titles, addresses, UIDs of SOP classes
and transfer syntaxes, statuses -- SOP Instance UIDs only when asked for.
Spans are made in the reactor thread, by the SDK (~25 us a span here) and
sent in batches by the SDK's own thread (protobuf, HTTP: CPU under the same
GIL): 1,000 small instances a second on one association went ~10 % slower
with tracing on, CT instances as fast (benchmarks/README.md).  What could not
be sent the SDK says, and the node's log once a minute.  When the node stops,
what is left is sent (for at most 5 s).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydicom import config as pydicom_config
from pydicom.uid import UID
from twisted.internet import defer
from twisted.internet.interfaces import ISSLTransport
from twisted.logger import Logger

from dimsekit.config import Config, ConfigError
from dimsekit.dimse import status as dimse_status
from dimsekit.dimse.commands import CommandField
from dimsekit.errors import for_log
from dimsekit.hookspecs import hookimpl
from dimsekit.libraries_log import ToNodeLog, route

__all__ = ["FLUSH_TIMEOUT", "AssociationSpans", "RequestSpans", "observe_associations", "TracingSettings", "active_tracer", "association_span", "finish", "stop"]

_log = Logger(namespace="dimsekit.tracing")

_KEYS = ("exporter", "endpoint", "service_name", "instance_uids")
_EXPORTERS = ("none", "otlp", "console")
#: how long a stopping node waits for the last spans to be sent
FLUSH_TIMEOUT = 5.0
_COUNTS = (
    ("NumberOfCompletedSuboperations", "dicom.suboperations.completed"),
    ("NumberOfFailedSuboperations", "dicom.suboperations.failed"),
    ("NumberOfWarningSuboperations", "dicom.suboperations.warning"),
)


@dataclass(frozen=True, slots=True)
class TracingSettings:
    """``[plugins.tracing]``."""

    exporter: str = "none"
    endpoint: str | None = None
    service_name: str | None = None
    instance_uids: bool = False

    @classmethod
    def from_config(cls, config: Config) -> TracingSettings:
        section = config.plugins.get("tracing", {})
        if not isinstance(section, Mapping):
            raise ConfigError("plugins.tracing: write it as a [plugins.tracing] table")
        unknown = sorted(set(section) - set(_KEYS))
        if unknown:
            raise ConfigError(f"plugins.tracing.{unknown[0]}: unknown key; the keys are: {', '.join(_KEYS)}")
        exporter = section.get("exporter", "none")
        if exporter not in _EXPORTERS:
            raise ConfigError(f"plugins.tracing.exporter: {exporter!r} is not one of: {', '.join(_EXPORTERS)}")
        endpoint = section.get("endpoint")
        if endpoint is not None and (not isinstance(endpoint, str) or not endpoint.startswith(("http://", "https://"))):
            raise ConfigError(f"plugins.tracing.endpoint: {endpoint!r} is not an http:// or https:// URL")
        if endpoint is not None and exporter != "otlp":
            raise ConfigError('plugins.tracing.endpoint: only with exporter = "otlp"')
        name = section.get("service_name")
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise ConfigError(f"plugins.tracing.service_name: expected a name, got {name!r}")
        uids = section.get("instance_uids", False)
        if type(uids) is not bool:
            raise ConfigError(f"plugins.tracing.instance_uids: expected true or false, got {uids!r}")
        settings = cls(exporter=exporter, endpoint=endpoint, service_name=name, instance_uids=uids)
        if exporter != "none":
            _sdk(exporter)  # installed? said at start-up, not at the first association
        return settings


def _sdk(exporter: str) -> Any:
    try:
        from opentelemetry.sdk import trace as sdk_trace

        if exporter == "otlp":
            from opentelemetry.exporter.otlp.proto.http import trace_exporter  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"plugins.tracing.exporter: {exporter!r} needs the OpenTelemetry SDK and its OTLP exporter: "
            "pip install 'dimsekit[tracing]' (or exporter = \"none\")"
        ) from None
    return sdk_trace


# -- the tracer -----------------------------------------------------------------------------

#: (requestor AE title, Message ID) -> the spans of the C-MOVEs being answered: their
#: sub-operations' C-STOREs, on an association of their own, name it (Move Originator) and go
#: under it -- unless two requestors with one AE title both have a C-MOVE of that Message ID
#: running: no parent is then better than a wrong one
_moves: dict[tuple[str, int], list[Any]] = {}
#: the command fields a refused request's span reads, and their types
_REFUSED_FIELDS = {
    "CommandField": int, "MessageID": int, "AffectedSOPClassUID": str, "RequestedSOPClassUID": str,
    "AffectedSOPInstanceUID": str, "RequestedSOPInstanceUID": str, "MoveDestination": str,
}
#: the provider the node set up ([plugins.tracing] exporter), one per process; None: none
_provider: Any = None
#: the settings of the node that set it up (instance_uids)
_settings = TracingSettings()
#: the reactor of the node that set it up (its stop waits there)
_reactor: Any = None
#: OpenTelemetry's API is not installed (the tracing extra is not): no spans, ever
_no_api = False


def _make_provider(settings: TracingSettings) -> Any:
    sdk_trace = _sdk(settings.exporter)
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    import dimsekit

    attributes: dict[str, str] = {"service.version": dimsekit.__version__}
    if settings.service_name:
        attributes[SERVICE_NAME] = settings.service_name
    resource = Resource.create(attributes)
    if SERVICE_NAME not in attributes and resource.attributes.get(SERVICE_NAME, "").startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "dimsekit"}))
    if settings.exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=settings.endpoint)
    else:
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        # one line a span (the SDK's default is indented JSON over dozens of log lines)
        exporter = ConsoleSpanExporter(formatter=lambda span: span.to_json(indent=None) + "\n")
    # Not at exit: the node's stop sends what is left, bounded (see _flush); the SDK's own
    # handler would wait out its export timeout and retries for a collector that is down.
    provider = sdk_trace.TracerProvider(resource=resource, shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def _say_sdk_problems() -> None:
    # The SDK's own warnings (a batch it could not send, and why): the stdlib ``logging``
    # they go to reaches no log of twistd's.
    route("opentelemetry", ToNodeLog(_log, "tracing"))


def active_tracer() -> Any:
    """The tracer dimsekit's spans come from: the node's own provider's, else the
    process's OpenTelemetry SDK's when one was set up; None when neither (no spans)."""
    global _no_api
    if _provider is not None:
        return _provider.get_tracer("dimsekit", _version())
    if _no_api:
        return None
    try:
        from opentelemetry import trace
    except ImportError:
        _no_api = True  # once: a failed import searches sys.path again each time (~60 us here)
        return None
    provider = trace.get_tracer_provider()
    if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
        return None
    return provider.get_tracer("dimsekit", _version())


def _version() -> str:
    import dimsekit

    return dimsekit.__version__


def _flush(provider: Any, reactor: Any) -> defer.Deferred:
    """Shut ``provider`` down (its last spans sent) in a thread of its own, for at most
    :data:`FLUSH_TIMEOUT`: a collector that does not answer must not hold the node's stop."""
    done: defer.Deferred = defer.Deferred()

    def shut() -> None:
        try:
            provider.shutdown()
        except Exception:  # pragma: no cover - the SDK logs its own export failures
            pass
        reactor.callFromThread(lambda: done.called or done.callback(None))

    threading.Thread(target=shut, name="dimsekit-tracing-flush", daemon=True).start()
    timer = reactor.callLater(FLUSH_TIMEOUT, lambda: done.called or done.callback(None))
    return done.addBoth(lambda result: (timer.active() and timer.cancel(), result)[1])


def stop() -> defer.Deferred:
    """Send what is left and forget the node's provider (a stopping node; tests)."""
    global _provider, _settings, _reactor
    provider, _provider = _provider, None
    reactor, _reactor = _reactor, None
    _settings = TracingSettings()
    if provider is None:
        return defer.succeed(None)
    if reactor is None or not getattr(reactor, "running", False):
        provider.shutdown()  # no reactor to wait in (tests, an application that set _provider)
        return defer.succeed(None)
    return _flush(provider, reactor)


# -- spans ----------------------------------------------------------------------------------


class RequestSpans:
    """An association's spans (an :class:`~dimsekit.interfaces.IRequestObserver`)."""

    def __init__(self, tracer: Any, association: Any, instance_uids: bool = False) -> None:
        from opentelemetry import trace

        self._trace = trace
        self.tracer = tracer
        self.instance_uids = instance_uids
        self._kind_in = trace.SpanKind.SERVER
        self._kind_out = trace.SpanKind.CLIENT
        self.span = association_span(tracer, association)
        self._context = trace.set_span_in_context(self.span)
        #: the peer's AE title, as a C-MOVE's sub-operations name it (Move Originator)
        self._originator = association.calling_ae_title.strip()
        #: id(request or operation) -> (it, its span), while not answered / not ended
        self.open: dict[int, tuple[Any, Any]] = {}

    def _request_attributes(self, name: str, command: Mapping[str, Any], context: Any) -> dict[str, Any]:
        sop_class = str(command.get("AffectedSOPClassUID") or command.get("RequestedSOPClassUID") or "")
        attributes: dict[str, Any] = {"dicom.command": name, "dicom.message_id": int(command.get("MessageID", 0))}
        if sop_class:
            attributes["dicom.sop_class_uid"] = sop_class
            # not validated: a refused request's command set may hold anything (pydicom would warn)
            label = UID(sop_class, validation_mode=pydicom_config.IGNORE).name
            if label and label != sop_class:
                attributes["dicom.sop_class"] = label
        if context is not None:
            attributes["dicom.transfer_syntax_uid"] = str(context.transfer_syntax)
        if self.instance_uids:
            instance = command.get("AffectedSOPInstanceUID") or command.get("RequestedSOPInstanceUID")
            if instance:
                attributes["dicom.sop_instance_uid"] = str(instance)
        destination = command.get("MoveDestination")
        if destination:
            attributes["dicom.move_destination"] = str(destination).strip()
        return attributes

    def _end(self, span: Any, status: int, fields: Mapping[str, Any]) -> None:
        category = dimse_status.category(status)
        span.set_attribute("dicom.status", status)
        span.set_attribute("dicom.status_category", category.value.lower())  # "success", "failure", ...
        comment = fields.get("ErrorComment")
        if comment:
            span.set_attribute("dicom.error_comment", for_log(comment))
        for field_name, attribute in _COUNTS:
            value = fields.get(field_name)
            if value is not None:
                span.set_attribute(attribute, int(value))
        if category is dimse_status.Category.FAILURE:
            trace = self._trace
            span.set_status(trace.Status(trace.StatusCode.ERROR, f"0x{status:04X}"))
        span.end()

    # -- IRequestObserver --------------------------------------------------------------

    def request_received(self, request: Any) -> None:
        span = self.tracer.start_span(
            request.name, context=self._context, kind=self._kind_in,
            attributes=self._request_attributes(request.name, request.command, request.context),
        )
        self.open[id(request)] = (request, span)
        if request.name == "C-MOVE":
            _moves.setdefault((self._originator, request.message_id), []).append(span)

    def request_answered(self, request: Any, status: int, fields: Mapping[str, Any]) -> None:
        entry = self.open.pop(id(request), None)
        if entry is not None:
            self._forget_move(entry)
            size = getattr(request.sink, "size", None)
            if isinstance(size, int):
                entry[1].set_attribute("dicom.dataset_bytes", size)
            self._end(entry[1], status, fields)

    def request_refused(self, command: Mapping[str, Any], context: Any, status: int, fields: Mapping[str, Any]) -> None:
        from dimsekit.scp import COMMAND_NAMES

        # what could be decoded of a command set that did not validate: the fields read, of their types
        known = {k: v for k, v in command.items() if _REFUSED_FIELDS.get(k) is type(v)}
        name = COMMAND_NAMES.get(known.get("CommandField", 0), "unknown")
        span = self.tracer.start_span(
            name, context=self._context, kind=self._kind_in,
            attributes=self._request_attributes(name, known, context),
        )
        self._end(span, status, fields)

    def _forget_move(self, entry: tuple[Any, Any]) -> None:
        request, span = entry
        if getattr(request, "name", None) == "C-MOVE":
            key = (self._originator, request.message_id)
            spans = _moves.get(key)
            if spans is not None and span in spans:
                spans.remove(span)
                if not spans:
                    del _moves[key]

    def _parent_of(self, command: Mapping[str, Any]) -> Any:
        """The span a request of ours belongs under: the C-MOVE (received on another
        association) or the C-GET (on this one) it is a sub-operation of; else this
        association's span."""
        trace = self._trace
        originator = command.get("MoveOriginatorApplicationEntityTitle")
        if originator:
            moves = _moves.get((str(originator).strip(), int(command.get("MoveOriginatorMessageID", -1))))
            if moves is not None and len(moves) == 1:
                return trace.set_span_in_context(moves[0])
        if int(command.get("CommandField", 0)) == CommandField.C_STORE_RQ:  # a C-GET's sub-operation?
            for it, span in reversed(self.open.values()):
                if getattr(it, "name", None) == "C-GET":
                    return trace.set_span_in_context(span)
        return self._context

    def operation_started(self, operation: Any, command: Mapping[str, Any], context: Any) -> None:
        from dimsekit.scp import COMMAND_NAMES

        name = COMMAND_NAMES.get(int(command.get("CommandField", 0)), "unknown")
        parent = self._parent_of(command)
        links = [] if parent is self._context else [self._trace.Link(self.span.get_span_context())]
        span = self.tracer.start_span(
            name, context=parent, kind=self._kind_out, links=links,
            attributes=self._request_attributes(name, command, context),
        )
        key = id(operation)
        self.open[key] = (operation, span)
        operation.when_ended(lambda: self._operation_ended(key))

    def _operation_ended(self, key: int) -> None:
        entry = self.open.pop(key, None)
        if entry is None:
            return
        operation, span = entry
        response = operation.final_response
        if response is not None:
            command = response.command
            self._end(span, int(command.get("Status", 0xFFFF)), command)
            return
        self._fail(span, f"no final response: {operation.error or 'the operation ended'}")

    def _fail(self, span: Any, why: str) -> None:
        trace = self._trace
        span.set_status(trace.Status(trace.StatusCode.ERROR, for_log(why)))
        span.end()

    # -- the association's end -------------------------------------------------------------

    def ended(self, association: Any) -> None:
        """The association is over: the requests left open end with it, then its span."""
        how = association.ended or "the connection closed"
        for entry in self.open.values():
            self._forget_move(entry)
            self._fail(entry[1], f"the association ended first: {how}")
        self.open.clear()
        finish(self.span, association)


def association_span(tracer: Any, association: Any) -> Any:
    """Start an association's span, as from its connection."""
    from opentelemetry import trace

    requestor = association.is_requestor
    attributes: dict[str, Any] = {
        "dicom.role": "requestor" if requestor else "acceptor",
        "dicom.calling_ae_title": association.calling_ae_title.strip(),
        "dicom.called_ae_title": association.called_ae_title.strip(),
    }
    peer = association.peer
    if getattr(peer, "host", None) is not None:
        attributes["network.peer.address"] = peer.host
        attributes["network.peer.port"] = peer.port
    transport = getattr(association.protocol, "transport", None)
    if transport is not None:
        attributes["dicom.tls"] = ISSLTransport.providedBy(transport)
    return tracer.start_span(
        "DICOM association", kind=trace.SpanKind.CLIENT if requestor else trace.SpanKind.SERVER,
        attributes=attributes, start_time=int(association.opened_at * 1e9),
    )


def _outcome(association: Any) -> str:
    ended = association.ended or ""
    if association.established:
        return "released" if ended.startswith("released") else "aborted"
    return "rejected" if ended.startswith("rejected") else "failed"


def finish(span: Any, association: Any) -> None:
    """End an association's span with how it ended."""
    from opentelemetry import trace

    outcome = _outcome(association)
    span.set_attribute("dicom.association.outcome", outcome)
    span.set_attribute("dicom.association.end", for_log(association.ended or "the connection closed"))
    span.set_attribute("dicom.requests_answered", sum(t[0] for t in association.scp.handled.values()))
    span.set_attribute("dicom.requests_sent", sum(t[0] for t in association.requested.values()))
    if outcome != "released":
        span.set_status(trace.Status(trace.StatusCode.ERROR, outcome))
    span.end()


# -- hooks ----------------------------------------------------------------------------------


@hookimpl
def dimsekit_configure(config: Config) -> None:
    """Check ``[plugins.tracing]`` (and that the SDK is there when an exporter is set)."""
    TracingSettings.from_config(config)


@hookimpl
def dimsekit_on_node_started(ae: Any) -> None:
    """Set up the exporter, when one is configured (once per process); when spans are made
    (that exporter, or the process's own OpenTelemetry SDK), observe the node's associations."""
    global _provider, _settings, _reactor
    settings = TracingSettings.from_config(ae.config)
    _settings = settings
    if settings.exporter != "none" and _provider is None:
        _provider = _make_provider(settings)
        _reactor = ae.reactor
        _say_sdk_problems()
        # "during": after the node's service stopped (a "before" trigger that lets running
        # associations end, then aborts them), so that their spans are sent too
        ae.reactor.addSystemEventTrigger("during", "shutdown", stop)
        if settings.exporter == "otlp":
            where = settings.endpoint or "the OTEL_EXPORTER_OTLP_* endpoint (OTLP over HTTP)"
        else:
            where = "the log"
        _log.info("tracing: spans of associations and requests go to {where}", where=where)
    elif active_tracer() is not None:
        _log.info("tracing: spans of associations and requests go to the process's OpenTelemetry SDK")
    observe_associations(ae)


def observe_associations(ae: Any) -> bool:
    """Have spans made for the associations of ``ae`` (its plugin manager's), if spans are
    made at all (:func:`active_tracer`); whether they are.  The node calls it as it starts;
    an application embedding an ApplicationEntity after setting up its SDK may call it.

    The hooks that do it are registered only then: a node that makes no spans pays nothing
    for this plugin per association (~6 us otherwise, a third of it asking whether an SDK
    is there)."""
    if active_tracer() is None:
        return False
    if not ae.pm.has_plugin(_SPANS_PLUGIN):
        ae.pm.register(AssociationSpans(), name=_SPANS_PLUGIN)
    return True


#: the attribute an association's RequestSpans are kept in, while it lasts
_ATTRIBUTE = "_dimsekit_tracing"
#: the name AssociationSpans is registered under
_SPANS_PLUGIN = "tracing-spans"


class AssociationSpans:
    """The per-association hooks (see :func:`observe_associations`)."""

    @hookimpl
    def dimsekit_on_association_established(self, association: Any) -> None:
        """Start its span and observe its requests."""
        tracer = active_tracer()
        if tracer is None:
            return
        spans = RequestSpans(tracer, association, instance_uids=_settings.instance_uids)
        setattr(association, _ATTRIBUTE, spans)
        association.observe(spans)

    @hookimpl
    def dimsekit_on_association_ended(self, association: Any) -> None:
        """End its spans; a rejected A-ASSOCIATE-RQ gets a span of its own."""
        spans = getattr(association, _ATTRIBUTE, None)
        if spans is not None:
            delattr(association, _ATTRIBUTE)
            spans.ended(association)
            return
        if association.established or association.rq is None:
            return  # established before spans were made; or no A-ASSOCIATE-RQ at all (a scan)
        tracer = active_tracer()
        if tracer is not None:
            finish(association_span(tracer, association), association)
