"""Requests we receive: dispatch to handlers and normalise what they return.

:class:`Request` is what a handler gets.  :class:`ScpRunner` (one per
association) looks the handler up -- per-association handlers first, then
the plugins' dispatch table, one dictionary lookup -- runs it, and turns its
result into DIMSE responses:

* an ``int`` status; ``(status, dataset)``; ``(status, dataset, fields)``
  where ``fields`` is a dict of extra response command elements (sub-operation
  counts, Error Comment, an assigned Affected SOP Instance UID, ...);
* a Deferred or a coroutine of one of those;
* for C-FIND, C-GET and C-MOVE, an iterable or async iterable of those, each
  with a Pending status (0xFF00/0xFF01) sent as a pending response, ending
  either with a final (non-pending) item or, when it just ends, Success.
  Between two pending responses the reactor runs, so a C-CANCEL-RQ that
  arrives mid-stream is seen before the next response goes out; an async
  generator then gets the CancelledError at its ``yield`` and may give the
  final response itself (else: Cancel with the last pending counts).

A handler that raises gets a failure status (0x0110 Processing failure, or
0xC000 Unable to process for C-FIND/C-GET/C-MOVE) and a log line with the
traceback; the association survives.  Up to the negotiated asynchronous
operations window of requests run at once; more wait their turn.
"""

from __future__ import annotations

import inspect
import weakref
from collections import deque
from collections.abc import AsyncIterable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from twisted.internet import task
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from dimsekit.datasets import DatasetError, decode_dataset, read_in_full
from dimsekit.dimse import status as dimse_status
from dimsekit.dimse.commands import CommandField, make_response
from dimsekit.dimse.responses import encode_status_response
from dimsekit.libraries_log import about
from dimsekit.ul.negotiation import NegotiatedContext

if TYPE_CHECKING:  # pragma: no cover
    from dimsekit.association import Association

__all__ = ["Request", "ScpRunner", "COMMAND_NAMES"]

_log = Logger(namespace="dimsekit.scp")

#: request Command Field -> the name handlers are registered under
COMMAND_NAMES = {
    CommandField.C_STORE_RQ: "C-STORE",
    CommandField.C_GET_RQ: "C-GET",
    CommandField.C_FIND_RQ: "C-FIND",
    CommandField.C_MOVE_RQ: "C-MOVE",
    CommandField.C_ECHO_RQ: "C-ECHO",
    CommandField.N_EVENT_REPORT_RQ: "N-EVENT-REPORT",
    CommandField.N_GET_RQ: "N-GET",
    CommandField.N_SET_RQ: "N-SET",
    CommandField.N_ACTION_RQ: "N-ACTION",
    CommandField.N_CREATE_RQ: "N-CREATE",
    CommandField.N_DELETE_RQ: "N-DELETE",
}

_PENDING_CAPABLE = {CommandField.C_FIND_RQ, CommandField.C_GET_RQ, CommandField.C_MOVE_RQ}
_COUNT_FIELDS = (
    "NumberOfRemainingSuboperations",
    "NumberOfCompletedSuboperations",
    "NumberOfFailedSuboperations",
    "NumberOfWarningSuboperations",
)


@dataclass(eq=False)
class Request:
    """A DIMSE request received as SCP, as a handler sees it.

    ``sink`` holds the request's data set as received (raw bytes in the
    context's transfer syntax: write it to disk unparsed, or call
    :meth:`dataset` to have pydicom decode it).
    """

    association: Association
    context: NegotiatedContext
    command: dict[str, Any]
    sink: Any = None
    cancelled: bool = False  #: a C-CANCEL-RQ for it arrived
    #: the exception a sink factory raised to refuse the data set early (it was discarded)
    sink_error: Exception | None = None
    _dataset: Dataset | None = field(default=None, repr=False)

    @property
    def message_id(self) -> int:
        return int(self.command["MessageID"])

    @property
    def name(self) -> str:
        """"C-STORE", "N-CREATE", ..."""
        return COMMAND_NAMES.get(int(self.command["CommandField"]), "unknown")

    @property
    def sop_class_uid(self) -> str:
        return str(self.command.get("AffectedSOPClassUID") or self.command.get("RequestedSOPClassUID") or "")

    @property
    def sop_instance_uid(self) -> str:
        return str(self.command.get("AffectedSOPInstanceUID") or self.command.get("RequestedSOPInstanceUID") or "")

    @property
    def transfer_syntax(self) -> str:
        return self.context.transfer_syntax

    def dataset(self) -> Dataset | None:
        """The request's data set decoded by pydicom (cached), or None when it had none.

        Except a C-STORE's (kept as received: its handler reads what it needs), it is
        read in full here, every value of every item converted
        (:func:`~dimsekit.datasets.read_in_full`): what a peer sent that cannot be
        read raises :class:`~dimsekit.datasets.DatasetError` (or its
        :class:`~dimsekit.datasets.DatasetValueError`) now, for the handler to
        answer with its failure status, not later from any element it touches.
        """
        if self._dataset is None and self.sink is not None:
            with self.about():
                dataset = decode_dataset(self.sink.open(), self.context.transfer_syntax)
                if self.command.get("CommandField") != CommandField.C_STORE_RQ:
                    read_in_full(dataset)
            self._dataset = dataset
        return self._dataset

    def about(self, doing: str = "reading") -> about:
        """What pydicom says while this request is read (or answered) is said of it, in the
        node's log (:class:`~dimsekit.libraries_log.about`)."""
        peer = self.association.remote_ae_title
        return about(peer, lambda: f"{doing} {self.name} message {self.message_id} from {peer}")


@dataclass(eq=False)
class _Running:
    request: Request
    deferred: Deferred | None = None
    last_counts: dict[str, int] = field(default_factory=dict)


def _is_stream(result: object) -> bool:
    if isinstance(result, str | bytes | bytearray | tuple | dict | Dataset | int) or result is None:
        return False
    return isinstance(result, Iterable | AsyncIterable)


def _normalise(item: object) -> tuple[int, Any, dict[str, Any]]:
    """A handler's answer as (status, dataset or None, extra command fields)."""
    if isinstance(item, int):
        return item, None, {}
    if isinstance(item, tuple) and len(item) in (2, 3):
        status, dataset = int(item[0]), item[1]
        fields = dict(item[2]) if len(item) == 3 and item[2] else {}
        return status, dataset, fields
    raise TypeError(f"a handler returned {item!r}; expected a status, (status, dataset) or (status, dataset, fields)")


#: where a final status other than success is counted in a tally (see count_final)
_TALLY_SLOT = {dimse_status.Category.WARNING: 1, dimse_status.Category.FAILURE: 2, dimse_status.Category.CANCEL: 3}


def count_final(tallies: dict[int, list[int]], command_field: int, status: int) -> None:
    """Count a final response in ``tallies``: Command Field -> [final responses, warnings,
    failures, cancels] (ScpRunner.handled, Association.requested: log lines, metrics)."""
    tally = tallies.get(command_field)
    if tally is None:
        tally = tallies[command_field] = [0, 0, 0, 0]
    tally[0] += 1
    if status:
        slot = _TALLY_SLOT.get(dimse_status.category(status))
        if slot is not None:
            tally[slot] += 1


class ScpRunner:
    """Runs the requests one association receives.  See the module docstring."""

    def __init__(self, association: Association) -> None:
        #: a weak proxy: the association owns its runner, and a runner that
        #: held it back would make every association a reference cycle, freed
        #: only by the cyclic garbage collector (~2 us per association on a
        #: busy node).  Whoever calls into the runner holds the association
        #: (the association itself, a running handler through its Request).
        self.association: Association = weakref.proxy(association)
        self.running: dict[int, _Running] = {}
        self.queue: deque[Request] = deque()
        #: Command Field of the requests -> [final responses sent, warnings, failures, cancels],
        #: for the association's log line
        self.handled: dict[int, list[int]] = {}

    # -- entry points ---------------------------------------------------------------

    def receive(self, request: Request) -> None:
        """A request arrived: run it now, or queue it if the window is full.

        A request whose Message ID is that of one still running or queued is
        refused with Duplicate invocation (0210H, PS3.7 9.1.x / 10.1.x
        "Status": "the Message ID specified is allocated to another
        notification or operation"); the one in progress is left alone."""
        message_id = request.message_id
        if message_id in self.running or any(q.message_id == message_id for q in self.queue):
            _log.warn(
                "{command} message {id} from {peer}: Message ID already in use; answering 0x0210",
                command=request.name, id=message_id, peer=self.association.remote_ae_title,
            )
            sink = request.sink
            if sink is not None and callable(getattr(sink, "abort", None)):
                sink.abort()  # its data set is not going to be used
            self._respond(request, dimse_status.DUPLICATE_INVOCATION, None, {"ErrorComment": "Message ID in use"})
            return
        negotiated = self.association.negotiated
        limit = negotiated.max_outstanding_remote if negotiated is not None else 1
        if limit and len(self.running) >= limit:
            self.queue.append(request)
            return
        self._start(request)

    def cancel(self, message_id: int) -> None:
        """C-CANCEL-RQ: mark the request cancelled; a handler's Deferred is cancelled too.

        Only a C-FIND, C-GET or C-MOVE can be cancelled (PS3.7 9.3.2.3); a
        C-CANCEL-RQ naming anything else is logged and ignored."""
        running = self.running.get(message_id)
        if running is not None and int(running.request.command["CommandField"]) not in _PENDING_CAPABLE:
            _log.warn(
                "C-CANCEL-RQ for {command} message {id} ignored: only C-FIND, C-GET and C-MOVE can be cancelled",
                command=running.request.name, id=message_id,
            )
            return
        if running is None:
            for queued in self.queue:
                if queued.message_id == message_id:
                    queued.cancelled = True
            return  # finished already: PS3.7 9.3.2.3 lets the cancel cross the final response
        running.request.cancelled = True
        if running.deferred is not None and not running.deferred.called:
            running.deferred.cancel()

    def stop_all(self) -> None:
        """The association ended: cancel everything still running or queued."""
        self.queue.clear()
        for running in list(self.running.values()):
            running.request.cancelled = True
            if running.deferred is not None and not running.deferred.called:
                running.deferred.cancel()
        self.running.clear()

    # -- running a request ---------------------------------------------------------------

    def _handler_for(self, request: Request) -> tuple[Any, int]:
        """(handler or None, the status to answer when None)."""
        field_ = int(request.command["CommandField"])
        name = COMMAND_NAMES.get(field_)
        context = request.context
        if name is None:
            return None, 0x0211  # Unrecognized operation
        # An N-EVENT-REPORT is sent by the SCP to the SCU: receiving one needs the SCU role.
        allowed = context.local_scu if field_ == CommandField.N_EVENT_REPORT_RQ else context.local_scp
        if not allowed:
            return None, 0x0124  # Refused: not authorized (role not negotiated)
        handlers = self.association.handlers
        sop_class = context.abstract_syntax
        handler = (handlers.get((name, sop_class)) or handlers.get((name, None))) if handlers else None
        registry = self.association.ae.registry
        if handler is None:
            handler = registry.handlers.get((name, sop_class))
        if handler is None and sop_class in registry.handlers_by_sop_class:
            # The SOP class is served, just not with this operation.
            return None, 0x0211  # Unrecognized operation
        return handler, 0x0122  # Refused: SOP class not supported

    def _start(self, request: Request) -> None:
        handler, status = self._handler_for(request)
        if handler is None:
            self._respond(request, status)
            self._next()
            return
        running = _Running(request)
        message_id = request.message_id
        self.running[message_id] = running
        try:
            # (a coroutine's first step too: what it reads of the request, it reads before its first await)
            with request.about():
                result = handler(request)
                if inspect.iscoroutine(result):
                    result = Deferred.fromCoroutine(result)
        except Exception:
            self._failed(running, Failure())
            return
        if type(result) is int:  # a plain status, the commonest answer (C-ECHO)
            if self.running.pop(message_id, None) is None:
                return  # the handler ended the association meanwhile
            self._respond(request, result)
            if self.queue:
                self._next()
            elif not self.running:
                self.association.requests_done()
            return
        if isinstance(result, Deferred):
            running.deferred = result
            result.addCallbacks(lambda value: self._result(running, value), lambda f: self._failed(running, f))
        else:
            self._result(running, result)

    def _result(self, running: _Running, result: object) -> None:
        if running.request.message_id not in self.running:
            return  # association ended meanwhile
        if _is_stream(result):
            field_ = int(running.request.command["CommandField"])
            if field_ not in _PENDING_CAPABLE:
                self._failed(running, Failure(TypeError(f"{running.request.name} handlers cannot return pending results")))
                return
            with running.request.about("answering"):  # (every step of the stream: a context variable)
                d = Deferred.fromCoroutine(self._stream(running, result))  # type: ignore[arg-type]
            running.deferred = d
            d.addErrback(lambda f: self._failed(running, f))
            return
        try:
            status, dataset, fields = _normalise(result)
        except TypeError:
            self._failed(running, Failure())
            return
        self._finish(running, status, dataset, fields)

    async def _stream(self, running: _Running, results: Iterable[Any] | AsyncIterable[Any]) -> None:
        request = running.request
        association = self.association
        reactor = association.reactor
        final: tuple[int, Any, dict[str, Any]] | None = None
        iterator: Any
        is_async = isinstance(results, AsyncIterable)
        iterator = results.__aiter__() if is_async else iter(results)  # type: ignore[union-attr]
        try:
            while True:
                if request.cancelled:
                    final = await self._cancelled_between(running, iterator)
                    break
                try:
                    item = await iterator.__anext__() if is_async else next(iterator)
                except (StopIteration, StopAsyncIteration):
                    break
                status, dataset, fields = _normalise(item)
                if dimse_status.category(status) is not dimse_status.Category.PENDING:
                    final = (status, dataset, fields)
                    break
                running.last_counts = {k: fields[k] for k in _COUNT_FIELDS if k in fields}
                if request.message_id not in self.running:
                    return
                self._respond(request, status, dataset, fields)
                # Let the reactor read (a C-CANCEL may be waiting) and the transport drain.
                try:
                    await association.writable()
                    await task.deferLater(reactor, 0, lambda: None)
                except CancelledError:
                    if not request.cancelled or request.message_id not in self.running:
                        raise
                    # a C-CANCEL-RQ read here: the loop's next turn hands it to the handler
        finally:
            closer = getattr(iterator, "aclose" if is_async else "close", None)
            if closer is not None:
                outcome = closer()
                if inspect.isawaitable(outcome):
                    await outcome
        if final is None:
            final = (dimse_status.SUCCESS, None, {})
        self._finish(running, *final)

    async def _cancelled_between(self, running: _Running, iterator: Any) -> tuple[int, Any, dict[str, Any]]:
        """The final response of a request cancelled while its handler waits at a pending response.

        An async generator gets the CancelledError there, as it would have in
        whatever it awaited, and may answer with its own final response (a
        C-GET or C-MOVE's counts and Failed SOP Instance UID List, PS3.4
        C.4.2.1.4.2); if it does not, Cancel with the last pending counts."""
        fallback = (dimse_status.CANCEL, None, dict(running.last_counts))
        athrow = getattr(iterator, "athrow", None)
        if athrow is None:
            return fallback
        try:
            item = await athrow(CancelledError())
        except (CancelledError, StopAsyncIteration):
            return fallback
        status, dataset, fields = _normalise(item)
        if dimse_status.category(status) is dimse_status.Category.PENDING:
            return fallback
        return status, dataset, fields

    def _failed(self, running: _Running, failure: Failure) -> None:
        request = running.request
        if request.message_id not in self.running:
            return
        if failure.check(CancelledError):
            self._finish(running, dimse_status.CANCEL, None, dict(running.last_counts))
            return
        field_ = int(request.command["CommandField"])
        status = 0xC000 if field_ in _PENDING_CAPABLE else 0x0110
        _log.failure(
            "{command} handler for {sop} failed; answering 0x{status:04X}",
            failure, command=request.name, sop=request.sop_class_uid, status=status,
        )
        comment = str(failure.value) or type(failure.value).__name__
        # the counts so far, but no Number of Remaining Sub-operations: a Failure
        # response shall not contain it (PS3.4 C.4.2.1.6, C.4.3.1.6)
        counts = {k: v for k, v in running.last_counts.items() if k != "NumberOfRemainingSuboperations"}
        self._finish(running, status, None, {"ErrorComment": comment, **counts})

    def _finish(self, running: _Running, status: int, dataset: Any, fields: dict[str, Any]) -> None:
        self.running.pop(running.request.message_id, None)
        self._respond(running.request, status, dataset, fields)
        self._next()

    def _next(self) -> None:
        negotiated = self.association.negotiated
        limit = negotiated.max_outstanding_remote if negotiated is not None else 1
        while self.queue and (not limit or len(self.running) < limit):
            self._start(self.queue.popleft())
        if not self.running and not self.queue:
            self.association.requests_done()

    def _respond(self, request: Request, status: int, dataset: Any = None, fields: dict[str, Any] | None = None) -> None:
        association = self.association
        if association.protocol is None or association.ended:
            return
        if status != 0xFF00 and status != 0xFF01:  # a final response: count it
            count_final(self.handled, request.command["CommandField"], status)
            if association.observers:
                association._tell("request_answered", request, status, fields or {})
        if dataset is None and not fields:
            encoded = encode_status_response(request.command, status)
            if encoded is not None:
                association.send_encoded(request.context, encoded)
                return
        fields = dict(fields or {})
        if "ErrorComment" in fields:
            fields["ErrorComment"] = _comment(str(fields["ErrorComment"]))
        try:
            command = make_response(request.command, status, dataset=dataset is not None, **fields)
        except Exception as exc:
            _log.error(
                "cannot build the {command} response ({error}); answering 0x0110 instead",
                command=request.name, error=exc,
            )
            command = make_response(request.command, 0x0110, ErrorComment=_comment(str(exc)))
            dataset = None
        try:
            with request.about("answering"):  # (pydicom writing the response's data set)
                association.send_message(request.context, command, dataset)
        except DatasetError as exc:  # the handler's data set cannot be encoded
            _log.error(
                "cannot encode the {command} response's data set ({error}); answering 0x0110 instead",
                command=request.name, error=exc,
            )
            failure = make_response(request.command, 0x0110, ErrorComment=_comment(f"cannot encode the reply: {exc}"))
            association.send_message(request.context, failure)


def _comment(text: str) -> str:
    """Error Comment is LO: at most 64 characters of the default repertoire."""
    return text.encode("ascii", "replace").decode("ascii").replace("\\", "/")[:64]

