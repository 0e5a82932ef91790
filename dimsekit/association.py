"""One association, either side: SCU calls, SCP dispatch, and its lifetime.

An :class:`Association` is the user of one :class:`~dimsekit.protocol.DicomProtocol`
(it receives the upper layer's indications).  As requestor it is returned by
:meth:`ApplicationEntity.associate <dimsekit.ae.ApplicationEntity.associate>`
once the A-ASSOCIATE-AC arrived; as acceptor the server factory makes one per
connection and negotiates for it.

Requests we send are a dict ``{message id: Deferred}`` (Twisted AMP's
pattern): every response is matched by Message ID Being Responded To, and on
abort or connection loss every outstanding Deferred fails at once with
:class:`~dimsekit.errors.AssociationAborted`.  Public calls never raise: they
return a failed Deferred.

Requests we receive are dispatched by (command, SOP class) to the handler a
plugin registered (:mod:`dimsekit.registry`); whatever the handler returns
(a status, a ``(status, dataset)`` pair, a Deferred, a coroutine) is
normalised here once.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from dimsekit.dimse import status as dimse_status
from dimsekit.dimse.codec import CommandError, decode_command, encode_command
from dimsekit.dimse.commands import CommandField
from dimsekit.dimse.fragments import (
    CommandReceived,
    CommandRejected,
    MessageAssembler,
    MessageReceived,
    fragment_message,
)
from dimsekit.errors import (
    AssociationAborted,
    AssociationRejected,
    ConnectionLost,
    DIMSETimeout,
    LocalProtocolError,
    RemoteProtocolError,
)
from dimsekit.uids import VERIFICATION
from dimsekit.ul import outputs as out
from dimsekit.ul.negotiation import (
    Negotiated,
    NegotiatedContext,
    check_association_rq,
    negotiate_as_acceptor,
    negotiate_as_requestor,
    reject_congestion,
)
from dimsekit.ul.pdu import AssociateRJ, AssociateRQ

if TYPE_CHECKING:  # pragma: no cover
    from dimsekit.ae import ApplicationEntity
    from dimsekit.protocol import DicomProtocol

__all__ = ["Association", "AssociationRequest", "Request", "Response"]

_log = Logger(namespace="dimsekit.association")

#: CommandDataSetType value meaning "no data set" (PS3.7 Table E.1-1).
NO_DATASET = 0x0101

_COMMAND_NAMES = {
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


@dataclass(frozen=True, slots=True)
class AssociationRequest:
    """An incoming A-ASSOCIATE-RQ as the accept and authenticate hooks see it."""

    rq: AssociateRQ
    peer: Any  # the transport's peer address (IAddress)
    association: Association


@dataclass(slots=True)
class Response:
    """A DIMSE response: its command set (a dict by keyword) and data set, if any."""

    command: dict[str, Any]
    dataset: Any = None

    @property
    def status(self) -> int:
        return int(self.command.get("Status", 0xFFFF))


@dataclass(slots=True)
class Request:
    """A DIMSE request received as SCP, as a handler sees it."""

    association: Association
    context: NegotiatedContext
    command: dict[str, Any]
    dataset: Any = None  #: the data set sink (None when the request had none)
    cancelled: bool = False  #: set when a C-CANCEL-RQ for it arrived

    @property
    def message_id(self) -> int:
        return int(self.command["MessageID"])

    @property
    def sop_class_uid(self) -> str:
        return str(self.command.get("AffectedSOPClassUID") or self.command.get("RequestedSOPClassUID") or "")


@dataclass(slots=True)
class _Outstanding:
    deferred: Deferred
    timer: Any = None
    responses: list = field(default_factory=list)


class Association:
    """One association.  See the module docstring.

    :param ae: the local application entity (identity, policy, plugins).
    :param reactor: the reactor (time, timers).
    :param is_requestor: which side we are.
    """

    def __init__(self, ae: ApplicationEntity, reactor: Any, *, is_requestor: bool) -> None:
        self.ae = ae
        self.reactor = reactor
        self.is_requestor = is_requestor
        self.protocol: DicomProtocol | None = None
        self.negotiated: Negotiated | None = None
        self.rq: AssociateRQ | None = None
        self.peer: Any = None
        self.established = False
        self.ended: str | None = None
        self._message_ids = itertools.count(1)
        self._outstanding: dict[int, _Outstanding] = {}
        self._assembler = MessageAssembler()
        self._release_waiters: list[Deferred] = []
        self._established_waiter: Deferred | None = Deferred() if is_requestor else None
        self._started = time.monotonic()
        self._counted = False

    # -- identity ----------------------------------------------------------

    @property
    def calling_ae_title(self) -> str:
        return self.rq.calling_ae_title if self.rq else ""

    @property
    def called_ae_title(self) -> str:
        return self.rq.called_ae_title if self.rq else ""

    @property
    def remote_ae_title(self) -> str:
        """The peer's AE title."""
        return self.called_ae_title if self.is_requestor else self.calling_ae_title

    def __repr__(self) -> str:
        side = "requestor" if self.is_requestor else "acceptor"
        return f"<Association {side} {self.calling_ae_title}->{self.called_ae_title} peer={self.peer}>"

    # -- UpperLayerUser: indications from the protocol -----------------------------

    def connection_made(self, protocol: DicomProtocol) -> None:
        self.protocol = protocol
        self.peer = protocol.transport.getPeer() if protocol.transport else None  # type: ignore[union-attr]

    def association_indication(self, output: out.AssociateIndication) -> None:
        """We are the acceptor and an A-ASSOCIATE-RQ arrived: decide and answer."""
        rq = self.rq = output.rq
        ae = self.ae
        request = AssociationRequest(rq=rq, peer=self.peer, association=self)
        rj = check_association_rq(rq, ae.policy)
        if rj is None:
            rj = ae.pm.hook.dimsekit_accept_association(request=request)
        if rj is None and not ae.take_slot(self):
            rj = reject_congestion(local_limit=True)
        else:
            self._counted = rj is None
        if rj is not None:
            self._reject(rj)
            return
        identity = rq.user_information.user_identity_rq
        if identity is None:
            self._accept(None)
            return
        d = defer.maybeDeferred(ae.pm.hook.dimsekit_authenticate, identity=identity, request=request)
        d.addCallbacks(self._authenticated, self._authentication_failed)

    def _authenticated(self, verdict: object) -> None:
        if self.protocol is None or self.ended:
            return
        if verdict is False:
            self._reject(AssociateRJ(result=1, source=1, reason=1))
        else:
            self._accept(verdict if isinstance(verdict, bytes) else None)

    def _authentication_failed(self, failure: Failure) -> None:
        _log.failure("authenticator failed; rejecting the association", failure)
        self._reject(AssociateRJ(result=1, source=1, reason=1))

    def _reject(self, rj: AssociateRJ) -> None:
        self.ended = f"rejected ({rj.result}/{rj.source}/{rj.reason})"
        self.protocol.call("reject", rj)  # type: ignore[union-attr]

    def _accept(self, identity_response: bytes | None) -> None:
        ac, negotiated = negotiate_as_acceptor(self.rq, self.ae.policy, user_identity_response=identity_response)  # type: ignore[arg-type]
        self.negotiated = negotiated
        self.protocol.call("accept", ac)  # type: ignore[union-attr]
        self._on_established()

    def association_accepted(self, output: out.AssociateAccepted) -> None:
        """We are the requestor and the peer accepted."""
        try:
            self.negotiated = negotiate_as_requestor(self.rq, output.ac)  # type: ignore[arg-type]
        except RemoteProtocolError as exc:
            _log.warn("invalid A-ASSOCIATE-AC from {peer}: {error}", peer=self.peer, error=exc)
            self.abort(str(exc))
            return
        self._on_established()
        waiter, self._established_waiter = self._established_waiter, None
        if waiter is not None:
            waiter.callback(self)

    def association_rejected(self, output: out.AssociateRejected) -> None:
        rj = output.rj
        error = AssociationRejected(rj.result, rj.source, rj.reason)
        self.ended = str(error)
        waiter, self._established_waiter = self._established_waiter, None
        if waiter is not None:
            waiter.errback(error)

    def _on_established(self) -> None:
        self.established = True
        self.ae.pm.hook.dimsekit_on_association_established(association=self)

    def pdata_indication(self, output: out.PDataIndication) -> None:
        """P-DATA-TF arrived: reassemble messages, dispatch each complete one."""
        try:
            for pdv in output.pdu.pdvs:
                for event in self._assembler.receive_pdv(pdv):
                    self._message_event(event)
        except RemoteProtocolError as exc:
            _log.warn("protocol error from {peer}: {error}; aborting", peer=self.peer, error=exc)
            self.abort(str(exc), source=exc.abort_source, reason=exc.abort_reason)

    def release_indication(self, output: out.ReleaseIndication) -> None:
        """The peer asks to release.  We answer at once, except as acceptor in a
        collision, where the table has us wait for the A-RELEASE-RP first (Sta10)."""
        if output.collision and not self.is_requestor:
            return
        self.protocol.call("release_response")  # type: ignore[union-attr]
        if not output.collision:
            self._finish("released by the peer")

    def release_confirmation(self, output: out.ReleaseConfirmation) -> None:
        from dimsekit.ul.fsm import State

        if self.protocol is not None and self.protocol.ul.state == State.STA12:
            self.protocol.call("release_response")  # collision, acceptor side: now answer
        self._finish("released")

    def abort_indication(self, output: out.AbortIndication | out.ProviderAbortIndication) -> None:
        if isinstance(output, out.AbortIndication):
            why = "aborted by the peer (A-ABORT)"
            error = AssociationAborted(why, source=output.source, reason=output.reason)
        else:
            why = output.reason
            error = AssociationAborted(why)
        self._finish(why, error)

    def connection_lost(self, reason: Failure) -> None:
        self._finish("connection closed", ConnectionLost("the connection closed before the association ended"))
        self.protocol = None

    # -- ending ---------------------------------------------------------------

    def _finish(self, how: str, error: Exception | None = None) -> None:
        """Record how the association ended (the first word counts), fail what was
        pending, fire the end hooks once, and log the association when its
        connection is gone."""
        first = self.ended is None
        if first:
            self.ended = how
        if self._counted:
            self._counted = False
            self.ae.release_slot(self)
        failure = error or AssociationAborted(f"association ended ({self.ended})")
        outstanding, self._outstanding = self._outstanding, {}
        for pending in outstanding.values():
            if pending.timer is not None and pending.timer.active():
                pending.timer.cancel()
            pending.deferred.errback(failure)
        waiter, self._established_waiter = self._established_waiter, None
        if waiter is not None:
            waiter.errback(failure)
        waiters, self._release_waiters = self._release_waiters, []
        for d in waiters:
            if self.ended.startswith("released"):  # type: ignore[union-attr]
                d.callback(None)
            else:
                d.errback(failure)
        if first and self.established:
            hook = self.ae.pm.hook
            if how.startswith("released"):
                hook.dimsekit_on_association_released(association=self)
            else:
                hook.dimsekit_on_association_aborted(association=self, reason=how)
        if how == "connection closed":
            self._log_end()

    def _log_end(self) -> None:
        contexts = ""
        if self.negotiated is not None:
            contexts = ", ".join(
                sorted({c.abstract_syntax for c in self.negotiated.contexts.values()})
            )
        _log.info(
            "association {side} peer={peer} calling={calling} called={called} contexts=[{contexts}] "
            "duration={duration:.3f}s ended: {ended}",
            side="requestor" if self.is_requestor else "acceptor",
            peer=_address(self.peer),
            calling=self.calling_ae_title or "-",
            called=self.called_ae_title or "-",
            contexts=contexts,
            duration=time.monotonic() - self._started,
            ended=self.ended,
        )

    # -- SCU API ---------------------------------------------------------------

    def release(self) -> Deferred:
        """A-RELEASE: fires with None once released (or fails if aborted)."""
        if self.protocol is None or not self.established or self.ended:
            return defer.fail(LocalProtocolError(f"association is not established ({self.ended or 'not yet'})"))
        d: Deferred = Deferred()
        self._release_waiters.append(d)
        try:
            self.protocol.call("release")
        except LocalProtocolError as exc:
            self._release_waiters.remove(d)
            return defer.fail(exc)
        return d

    def abort(self, reason: str = "aborted by the local user", *, source: int = 0, reason_code: int = 0, **_: Any) -> None:
        """A-ABORT: end the association now; outstanding requests fail."""
        if self.protocol is None:
            return
        self.protocol.call("abort", reason)
        self._finish(f"aborted: {reason}", AssociationAborted(reason))

    def echo(self) -> Deferred:
        """C-ECHO: fires with the status (0x0000 Success) of the C-ECHO-RSP."""
        try:
            context = self._context_for(VERIFICATION)
        except LocalProtocolError as exc:
            return defer.fail(exc)
        command = {
            "CommandField": CommandField.C_ECHO_RQ,
            "AffectedSOPClassUID": VERIFICATION,
            "CommandDataSetType": NO_DATASET,
        }
        return self.send_request(context, command).addCallback(lambda response: response.status)

    def send_request(self, context: NegotiatedContext, command: dict[str, Any], dataset: Any = None) -> Deferred:
        """Send a request (a MessageID is assigned) and fire with its final :class:`Response`."""
        if self.protocol is None or not self.established or self.ended:
            return defer.fail(LocalProtocolError(f"association is not established ({self.ended or 'not yet'})"))
        message_id = next(self._message_ids) & 0xFFFF or next(self._message_ids)
        command = {**command, "MessageID": message_id}
        pending = _Outstanding(Deferred())
        self._outstanding[message_id] = pending
        timeout = self.ae.dimse_timeout
        if timeout:
            pending.timer = self.reactor.callLater(timeout, self._dimse_timeout, message_id)
        self._send(context.context_id, command, dataset)
        return pending.deferred

    def _dimse_timeout(self, message_id: int) -> None:
        pending = self._outstanding.pop(message_id, None)
        if pending is None:
            return
        why = f"no DIMSE response to message {message_id} within {self.ae.dimse_timeout:g} s"
        pending.timer = None
        pending.deferred.errback(DIMSETimeout(why))
        self.abort(why)

    def _context_for(self, abstract_syntax: str) -> NegotiatedContext:
        if self.negotiated is None:
            raise LocalProtocolError("association is not established")
        context = self.negotiated.context_for(abstract_syntax, as_scu=True)
        if context is None:
            raise LocalProtocolError(f"no accepted presentation context for {abstract_syntax}")
        return context

    def _send(self, context_id: int, command: dict[str, Any], dataset: bytes | None) -> None:
        negotiated = self.negotiated
        assert negotiated is not None and self.protocol is not None
        encoded = encode_command(command)
        for pdu in fragment_message(context_id, encoded, dataset, negotiated.peer_maximum_length):
            self.protocol.send_pdata(pdu)

    # -- receiving messages ---------------------------------------------------------

    def _message_event(self, event: object) -> None:
        kind = type(event)
        if kind is MessageReceived:
            self._message(event.context_id, event.command, event.dataset)  # type: ignore[attr-defined]
        elif kind is CommandRejected:
            self._command_rejected(event)
        elif kind is CommandReceived:
            pass  # the default sink takes the data set

    def _message(self, context_id: int, command: dict[str, Any], dataset: Any) -> None:
        field_ = int(command["CommandField"])
        if field_ & 0x8000:
            self._response(command, dataset)
            return
        assert self.negotiated is not None
        context = self.negotiated.contexts.get(context_id)
        if context is None:
            self.abort(f"message on presentation context {context_id}, which was not accepted")
            return
        if field_ == CommandField.C_CANCEL_RQ:
            return  # no operation of ours runs long enough to cancel yet
        self._dispatch(Request(self, context, command, dataset))

    def _response(self, command: dict[str, Any], dataset: Any) -> None:
        message_id = int(command.get("MessageIDBeingRespondedTo", -1))
        pending = self._outstanding.get(message_id)
        if pending is None:
            _log.warn("response to unknown message {id} from {peer}; ignored", id=message_id, peer=self.peer)
            return
        response = Response(command, dataset)
        if dimse_status.category(response.status) is dimse_status.Category.PENDING:
            pending.responses.append(response)
            return
        del self._outstanding[message_id]
        if pending.timer is not None and pending.timer.active():
            pending.timer.cancel()
        pending.deferred.callback(response)

    def _command_rejected(self, event: Any) -> None:
        error: CommandError = event.error
        message_id = event.message_id
        if message_id is None:
            _log.warn("undecodable response from {peer} ignored: {error}", peer=self.peer, error=error)
            return
        if event.context_id is None:
            self.abort(f"undecodable command set: {error}")
            return
        response = {**error.response_fields(), "MessageIDBeingRespondedTo": message_id, "CommandDataSetType": NO_DATASET}
        response.setdefault("CommandField", (error.command_field or 0x0FFF) | 0x8000)
        self._send(event.context_id, response, None)

    def _dispatch(self, request: Request) -> None:
        field_ = int(request.command["CommandField"])
        name = _COMMAND_NAMES.get(field_)
        context = request.context
        handler = None
        if not context.local_scp:
            status = 0x0124  # Not authorized: we did not accept the SCP role here
        elif name is None:
            status = 0x0211  # Unrecognized operation
        else:
            handler = self.ae.registry.handler(name, context.abstract_syntax)
            status = 0x0122  # SOP class not supported
        if handler is None:
            self._respond(request, status)
            return
        d = defer.maybeDeferred(handler, request)
        if isinstance(d, Deferred):
            d.addCallbacks(lambda result: self._respond_result(request, result), lambda f: self._handler_failed(request, f))

    def _respond_result(self, request: Request, result: Any) -> None:
        if isinstance(result, tuple):
            status, dataset = result
        else:
            status, dataset = result, None
        self._respond(request, int(status), dataset)

    def _handler_failed(self, request: Request, failure: Failure) -> None:
        _log.failure(
            "handler for {command} on {sop} failed; answering 0x0110 Processing failure",
            failure,
            command=_COMMAND_NAMES.get(int(request.command["CommandField"])),
            sop=request.sop_class_uid,
        )
        self._respond(request, 0x0110, error_comment=str(failure.value)[:64])

    def _respond(self, request: Request, status: int, dataset: Any = None, *, error_comment: str | None = None) -> None:
        if self.protocol is None or self.ended:
            return
        command = {
            "CommandField": int(request.command["CommandField"]) | 0x8000,
            "MessageIDBeingRespondedTo": request.message_id,
            "CommandDataSetType": NO_DATASET if dataset is None else 0x0000,
            "Status": status,
        }
        affected = request.command.get("AffectedSOPClassUID") or request.command.get("RequestedSOPClassUID")
        if affected:
            command["AffectedSOPClassUID"] = affected
        if error_comment:
            command["ErrorComment"] = error_comment
        self._send(request.context.context_id, command, dataset)


def _address(peer: Any) -> str:
    host = getattr(peer, "host", None)
    port = getattr(peer, "port", None)
    return f"{host}:{port}" if host is not None else str(peer)


__all__ += ["decode_command", "NO_DATASET"]
