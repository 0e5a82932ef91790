"""One association, either side: its lifetime, sending, receiving, SCP dispatch.

An :class:`Association` is the user of one :class:`~dimsekit.protocol.DicomProtocol`
(it receives the upper layer's indications).  As requestor it is what
:meth:`ApplicationEntity.associate <dimsekit.ae.ApplicationEntity.associate>`
fires with once the A-ASSOCIATE-AC arrived; as acceptor the server factory
makes one per connection and it negotiates for itself.

Sending.  Messages leave one at a time, whole: a message's PDUs are never
interleaved with another's (PS3.8 E.2).  The association is registered as a
streaming producer on its transport, so a large data set (read lazily from a
file) is written only as fast as the peer takes it -- bounded memory, a
reactor that never blocks on a huge write.  A message that fails half-way
aborts the association: a half-sent message is never followed by another.

Requests we send (the SCU API, :mod:`dimsekit.scu`) are kept as
``{message id: DimseOperation}`` (Twisted AMP's pattern): each response is
matched by Message ID Being Responded To, and on abort or connection loss
every outstanding operation fails at once with
:class:`~dimsekit.errors.AssociationAborted`.  Requests beyond the negotiated
asynchronous operations window wait in a queue.

Requests we receive are dispatched by (command, SOP class) to the handler a
plugin registered (:mod:`dimsekit.registry`), or to a handler set on this
association (:attr:`Association.handlers`, e.g. the C-STORE handler of a
C-GET).  Whatever the handler returns is normalised by :mod:`dimsekit.scp`.
"""

from __future__ import annotations

import functools
import itertools
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydicom.uid import UID
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from dimsekit.datasets import decode_dataset
from dimsekit.dimse import status as dimse_status
from dimsekit.dimse.codec import CommandError, encode_command, format_tag
from dimsekit.dimse.commands import NO_DATASET, CommandField
from dimsekit.dimse.fragments import (
    CommandReceived,
    CommandRejected,
    ElementsIgnored,
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
from dimsekit.libraries_log import about
from dimsekit.operations import DimseOperation, Response
from dimsekit.plugin import notify
from dimsekit.scp import _PENDING_CAPABLE, COMMAND_NAMES, Request, ScpRunner, count_final
from dimsekit.scu import ServiceUser, dataset_bytes
from dimsekit.ul import outputs as out
from dimsekit.ul.fsm import State
from dimsekit.ul.negotiation import (
    Negotiated,
    NegotiatedContext,
    check_association_rq,
    negotiate_as_acceptor,
    negotiate_as_requestor,
    reject_congestion,
)
from dimsekit.ul.pdu import AssociateAC, AssociateRJ, AssociateRQ, encode_single_pdata

if TYPE_CHECKING:  # pragma: no cover
    from dimsekit.ae import ApplicationEntity
    from dimsekit.protocol import DicomProtocol

__all__ = ["Association", "AssociationRequest", "Request", "Response", "NO_DATASET"]

_log = Logger(namespace="dimsekit.association")
#: the system a text log observer names for our info lines ("namespace#level")
_LOG_SYSTEM = "dimsekit.association#info"


@dataclass(frozen=True, slots=True)
class AssociationRequest:
    """An incoming A-ASSOCIATE-RQ as the accept and authenticate hooks see it."""

    rq: AssociateRQ
    peer: Any  # the transport's peer address (IAddress)
    association: Association


@dataclass(slots=True)
class _Outgoing:
    """A message waiting to be sent, or being sent: its PDUs, made lazily."""

    pdus: Iterator[bytes]
    started: bool = False
    on_sent: Callable[[], None] | None = None
    #: the request this message is, whose DIMSE timer counts from its last progress
    operation: DimseOperation | None = None
    written: int = 0


@implementer(IPushProducer)
class Association(ServiceUser):
    """One association.  See the module docstring.

    :param ae: the local application entity (identity, policy, plugins, limits).
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
        #: per-association handlers, consulted before the plugins':
        #: (command name, SOP class UID or None for any) -> handler
        self.handlers: dict[tuple[str, str | None], Callable[..., Any]] = {}
        #: send command and data set in one PDU when both fit (some peers drop
        #: the association if we do, so off by default)
        self.pack_pdvs = False
        self._message_ids = itertools.count(1)
        self._operations: dict[int, DimseOperation] = {}
        self._waiting_ops: deque[tuple[DimseOperation, dict[str, Any], Any]] = deque()
        self._outgoing: deque[_Outgoing] = deque()
        self._paused = False
        #: we stopped reading the peer: it does not take what we send (see _READ_PAUSE_QUEUE)
        self._reading_paused = False
        self._pumping = False
        self._writable_waiters: list[Deferred] = []
        limits = ae.config.limits
        self._assembler = MessageAssembler(
            max_dataset_length=limits.max_dataset_size or None,
            max_identifier_length=limits.max_identifier_size or None,
            max_n_dataset_length=limits.max_n_dataset_size or None,
            spool_dir=ae.spool_dir,
        )
        self._release_waiters: list[Deferred] = []
        #: the peer's A-RELEASE-RQ held until our answers to its requests are out
        #: (the timer that bounds the wait), None when not held
        self._release_held: Any = None
        #: bounds the authenticator's decision (Sta3), None when not running
        self._decision_timer: Any = None
        #: while the transport holds our writes back (its send buffer full): since when, and
        #: the timer that aborts an association whose peer takes nothing for dimse_timeout
        self._paused_since = 0.0
        self._stall_timer: Any = None
        #: what waits for our operations to end (a release asked behind them)
        self._idle_actions: list[Callable[[], None]] = []
        self._established_waiter: Deferred | None = Deferred() if is_requestor else None
        self._started = time.monotonic()
        #: when the association began (wall clock, seconds since the epoch): a trace's start
        self.opened_at = time.time()
        self._counted = False
        #: the presentation context IDs messages went over, either way (for the log line)
        self._used_contexts: set[int] = set()
        #: Message ID -> the Request a sink factory was given for its data set
        #: (refused: with its sink_error), handed to the handler once the data set is in
        self._early_requests: dict[int, Request] = {}
        self.scp = ScpRunner(self)
        #: Command Field of our requests -> [final responses received, warnings, failures,
        #: cancels], as ScpRunner.handled counts the peer's (the log line, metrics)
        self.requested: dict[int, list[int]] = {}

    #: who is told of each request this association receives or sends (see observe())
    observers: tuple[Any, ...] = ()

    def observe(self, observer: Any) -> None:
        """Tell ``observer`` of each request from now on (tracing, auditing).

        See :class:`~dimsekit.interfaces.IRequestObserver` for what it is told.
        Called in the reactor thread; an observer that raises is logged and not
        told again.  An association nobody observes pays nothing for this.
        """
        self.observers = (*self.observers, observer)

    def _tell(self, method: str, *args: Any) -> None:
        for observer in self.observers:
            tell = getattr(observer, method, None)
            if tell is None:
                continue
            try:
                tell(*args)
            except Exception:
                _log.failure(
                    "{observer!r} failed in {method}; it is no longer told of {association!r}'s requests",
                    observer=observer, method=method, association=self,
                )
                self.observers = tuple(o for o in self.observers if o is not observer)

    # -- identity ----------------------------------------------------------------

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
        return f"<Association {side} {self.calling_ae_title}->{self.called_ae_title} peer={_address(self.peer)}>"

    # -- UpperLayerUser: indications from the protocol ------------------------------

    def connection_made(self, protocol: DicomProtocol) -> None:
        self.protocol = protocol
        transport = protocol.transport
        self.peer = transport.getPeer() if transport is not None else None
        if transport is not None:
            protocol.register_producer(self)

    def association_indication(self, output: out.AssociateIndication) -> None:
        """We are the acceptor and an A-ASSOCIATE-RQ arrived: decide and answer."""
        rq = self.rq = output.rq
        ae = self.ae
        request: AssociationRequest | None = None  # what the hooks get, made if one is called
        rj = check_association_rq(rq, ae.policy)
        if rj is None:
            accept_hook = ae.pm.hook.dimsekit_accept_association
            if accept_hook.get_hookimpls():  # no plugin decides: no call
                request = AssociationRequest(rq=rq, peer=self.peer, association=self)
                try:
                    rj = accept_hook(request=request)
                except Exception:
                    # as for an authenticator that fails: no verdict, no association
                    _log.failure("a dimsekit_accept_association hook failed; rejecting the association")
                    rj = AssociateRJ(result=1, source=1, reason=1)
        full = None
        if rj is None:
            full = ae.claim_slot(self)
            if full is None:
                self._counted = True
            else:
                rj = reject_congestion(local_limit=True)
        if rj is not None:
            self._reject(rj, full)
            return
        identity = rq.user_information.user_identity_rq
        if identity is None:
            self._accept(None)
            return
        if request is None:
            request = AssociationRequest(rq=rq, peer=self.peer, association=self)
        d = defer.maybeDeferred(ae.pm.hook.dimsekit_authenticate, identity=identity, request=request)
        if not d.called:
            # an authenticator that never decides would hold the association (and its
            # slot) in Sta3 for as long as the peer waits, with no timer of ours
            limit = 2 * (ae.timeouts.acse or 30.0)
            self._decision_timer = self.reactor.callLater(limit, self._undecided, d, limit)
        d.addCallbacks(self._authenticated, self._authentication_failed)

    def _undecided(self, d: Deferred, limit: float) -> None:
        self._decision_timer = None
        if self.protocol is None or self.ended:
            return
        _log.warn(
            "the authenticator gave no verdict on {peer} calling={calling} within {limit:g} s; rejecting",
            peer=_address(self.peer), calling=self.calling_ae_title, limit=limit,
        )
        self._reject(AssociateRJ(result=2, source=1, reason=1))  # rejected-transient, no reason given
        d.cancel()

    def _authenticated(self, verdict: object) -> None:
        self._decision_timer = _stop(self._decision_timer)
        if self.protocol is None or self.ended:
            return
        if verdict is False:
            self._reject(AssociateRJ(result=1, source=1, reason=1))
        else:
            self._accept(verdict if isinstance(verdict, bytes) else None)

    def _authentication_failed(self, failure: Failure) -> None:
        self._decision_timer = _stop(self._decision_timer)
        if self.protocol is None or self.ended:
            return  # ended meanwhile, or rejected for want of a verdict (_undecided)
        _log.failure("authenticator failed; rejecting the association", failure)
        self._reject(AssociateRJ(result=1, source=1, reason=1))

    def _reject(self, rj: AssociateRJ, because: str | None = None) -> None:
        if self._counted:
            self._counted = False
            self.ae.release_slot(self)
        self.ended = f"rejected ({rj.result}/{rj.source}/{rj.reason})"
        why = str(AssociationRejected(rj.result, rj.source, rj.reason))
        _log.info(
            "rejecting association from {peer} calling={calling} called={called}: {why}",
            peer=_address(self.peer), calling=self.calling_ae_title, called=self.called_ae_title,
            why=why if because is None else f"{why}: {because}",
        )
        self.protocol.call("reject", rj)  # type: ignore[union-attr]

    def _accept(self, identity_response: bytes | None) -> None:
        try:
            if identity_response is None:
                # what the policy alone decides: cached per request (ApplicationEntity.negotiate)
                ac: AssociateAC | bytes
                ac, negotiated = self.ae.negotiate(self.rq)  # type: ignore[arg-type]
            else:
                ac, negotiated = negotiate_as_acceptor(
                    self.rq, self.ae.policy, user_identity_response=identity_response  # type: ignore[arg-type]
                )
        except Exception as exc:  # a plugin's extended negotiation failed, or the RQ is unusable
            _log.failure("negotiation failed; aborting the association", Failure(exc))
            self.abort(f"negotiation failed: {exc}")
            return
        self.negotiated = negotiated
        self.protocol.call("accept", ac)  # type: ignore[union-attr]
        self._on_established()

    def association_accepted(self, output: out.AssociateAccepted) -> None:
        """We are the requestor and the peer accepted."""
        try:
            self.negotiated = negotiate_as_requestor(self.rq, output.ac)  # type: ignore[arg-type]
        except RemoteProtocolError as exc:
            _log.warn("invalid A-ASSOCIATE-AC from {peer}: {error}", peer=_address(self.peer), error=exc)
            self._abort_invalid(exc)
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

    def association_rejected_by_provider(self, output: out.ProviderRejection) -> None:
        """The upper layer rejected the peer's A-ASSOCIATE-RQ itself (protocol version)."""
        self.rq = output.rq
        rj = output.rj
        self.ended = f"rejected ({rj.result}/{rj.source}/{rj.reason}): {AssociationRejected(rj.result, rj.source, rj.reason)}"

    def _on_established(self) -> None:
        self.established = True
        pm = self.ae.pm
        notify(pm, pm.hook.dimsekit_on_association_established, association=self)

    def pdata_indication(self, output: out.PDataIndication) -> None:
        """P-DATA-TF arrived: reassemble messages, handle each complete one.

        Once a PDV has ended the association (an abort), the PDVs after it in
        the same PDU are not looked at: no request is performed for an
        association already gone."""
        if self._operations:
            # A C-GET's SCP may send no pending response at all (PS3.4
            # C.4.3.3.1): the C-STORE sub-operations arriving are its progress.
            for operation in self._operations.values():
                if operation.command_field == CommandField.C_GET_RQ:
                    self._arm_dimse_timer(operation)
        try:
            pdvs = output.pdu.pdvs
            receive = self._assembler.receive_from
            at = 0
            while at < len(pdvs):
                if self.ended is not None:
                    return
                events, at = receive(pdvs, at)
                for event in events:
                    kind = type(event)
                    if kind is MessageReceived:
                        self._message(event.context_id, event.command, event.dataset)  # type: ignore[union-attr]
                    elif kind is CommandRejected:
                        self._command_rejected(event)  # type: ignore[arg-type]
                    elif kind is CommandReceived:
                        self._command_received(event)  # type: ignore[arg-type]
                    elif kind is ElementsIgnored:
                        self._elements_ignored(event)  # type: ignore[arg-type]
        except RemoteProtocolError as exc:
            _log.warn("protocol error from {peer}: {error}; aborting", peer=_address(self.peer), error=exc)
            self._abort_invalid(exc)
        except OSError as exc:  # a sink could not write the data set (disk full): a local failure, said
            _log.error("could not take a message from {peer}: {error}; aborting", peer=_address(self.peer),
                       error=exc)
            self.abort(f"could not take a message: {exc}")
        except Exception as exc:  # a sink that failed otherwise: a bug, with its traceback
            _log.failure("could not take a message from {peer}; aborting", Failure(exc), peer=_address(self.peer))
            self.abort(f"could not take a message: {exc}")

    def release_indication(self, output: out.ReleaseIndication) -> None:
        """The peer asks to release.  We answer at once, except as acceptor in a
        collision, where the table has us wait for the A-RELEASE-RP first (Sta10),
        and when requests of the peer's are still being performed: their
        responses go out first (PS3.8 7.2.2: the acceptor may still send P-DATA,
        the requestor may still receive it), for at most :attr:`RELEASE_HOLD` s."""
        if output.collision and not self.is_requestor:
            return
        if not output.collision and (self.scp.running or self.scp.queue):
            n = len(self.scp.running) + len(self.scp.queue)
            _log.info(
                "{peer} asked to release with {n} of its request(s) still being performed: "
                "answering them first (for at most {hold:g} s)",
                peer=_address(self.peer), n=n, hold=self.RELEASE_HOLD,
            )
            self._release_held = self.reactor.callLater(self.RELEASE_HOLD, self._release_hold_expired)
            return
        self._answer_release(collision=output.collision)

    #: how long the peer's A-RELEASE-RQ waits for our answers to its requests:
    #: under the 30 s the peers (DCMTK, pynetdicom, dimsekit) wait for an A-RELEASE-RP
    RELEASE_HOLD = 20.0

    def requests_done(self) -> None:
        """The SCP runner has answered every request of the peer's: a held
        A-RELEASE-RQ is answered once those answers are out."""
        if self._release_held is not None:
            self._when_sent(self._answer_release)

    def _release_hold_expired(self) -> None:
        self._release_held = None
        _log.warn(
            "{peer}: {n} request(s) still not answered {hold:g} s after it asked to release; releasing",
            peer=_address(self.peer), n=len(self.scp.running) + len(self.scp.queue), hold=self.RELEASE_HOLD,
        )
        self._answer_release()

    def _answer_release(self, collision: bool = False) -> None:
        self._release_held = _stop(self._release_held)
        if self.protocol is None or self.ended:
            return
        if self._operations and not collision:
            _log.warn(
                "{peer} released the association with {n} operation(s) of ours outstanding",
                peer=_address(self.peer), n=len(self._operations),
            )
        self.protocol.call("release_response")
        if not collision:
            self._finish("released by the peer")

    def release_confirmation(self, output: out.ReleaseConfirmation) -> None:
        if self.protocol is not None and self.protocol.ul.state == State.STA12:
            self.protocol.call("release_response")  # collision, acceptor side: answer now
        self._finish("released")

    def abort_indication(self, output: out.AbortIndication | out.ProviderAbortIndication) -> None:
        if isinstance(output, out.AbortIndication):
            why = "aborted by the peer (A-ABORT)"
            error = AssociationAborted(why, source=output.source, reason=output.reason)
        elif output.transport_closed:
            why = f"aborted: {output.reason}"
            error = ConnectionLost(output.reason)
        else:
            why = f"aborted: {output.reason}"
            error = AssociationAborted(output.reason)
        self._finish(why, error)

    def connection_lost(self, reason: Failure) -> None:
        # The error is made only when something is left to fail with it
        # (normally the association was released before: nothing is), by
        # _fail_pending, which _finish calls only then.
        value = reason.value if isinstance(reason, Failure) else None
        if isinstance(value, ConnectionLost):  # the transport said why (a TLS handshake that failed)
            self._finish(f"connection closed: {value}", value)
        else:
            self._finish("connection closed", _CONNECTION_LOST)
        self.protocol = None
        self._stall_timer = _stop(self._stall_timer)

    def busy(self) -> bool:
        """Whether work is in progress: a request of ours awaiting its response
        (the DIMSE timeout watches it) or one of the peer's being performed.
        The upper layer's idle timeout does not end a busy association (a
        C-MOVE whose sub-operation takes minutes, a slow query)."""
        return bool(self._operations or self._waiting_ops or self.scp.running or self.scp.queue)

    def _pending(self) -> bool:
        """Whether anything waits on this association: operations, waiters, handlers, a message."""
        return bool(
            self._operations or self._waiting_ops or self._outgoing or self._writable_waiters
            or self._established_waiter is not None or self._release_waiters
            or self.scp.running or self.scp.queue or not self._assembler.idle
        )

    # -- ending ------------------------------------------------------------------------

    def _finish(self, how: str, error: Exception | None = None) -> None:
        """Record how the association ended (the first word counts), fail what was
        pending, fire the end hooks once, and log the association when its
        connection is gone."""
        first = self.ended is None
        if first:
            self.ended = how
        self._release_held = _stop(self._release_held)
        self._decision_timer = _stop(self._decision_timer)
        if self._counted:
            self._counted = False
            self.ae.release_slot(self)
        gone = how.startswith("connection closed")  # the transport is gone: the end of the story
        if self.is_requestor and gone:
            self.ae.requested.discard(self)
        if self._pending():
            self._fail_pending(error)
        if first and self.established:
            pm = self.ae.pm
            if how.startswith("released"):
                notify(pm, pm.hook.dimsekit_on_association_released, association=self)
            else:
                notify(pm, pm.hook.dimsekit_on_association_aborted, association=self, reason=how)
        if gone:
            self._log_end()
            pm = self.ae.pm
            notify(pm, pm.hook.dimsekit_on_association_ended, association=self)

    def _fail_pending(self, error: Exception | None) -> None:
        """Fail or end whatever waits on the association (see :meth:`_pending`)."""
        if error is _CONNECTION_LOST:
            error = ConnectionLost("the connection closed before the association ended")
        failure = error or AssociationAborted(f"association ended ({self.ended})")
        operations, self._operations = self._operations, {}
        waiting, self._waiting_ops = self._waiting_ops, deque()
        for operation in [*operations.values(), *(w[0] for w in waiting)]:
            _cancel_timers(operation)
            operation.fail(failure)
        self._outgoing.clear()
        writable, self._writable_waiters = self._writable_waiters, []
        for d in writable:
            d.callback(None)
        self._idle_actions.clear()
        self.scp.stop_all()
        self._assembler.abort()
        waiter, self._established_waiter = self._established_waiter, None
        if waiter is not None:
            waiter.errback(failure)
        waiters, self._release_waiters = self._release_waiters, []
        for d in waiters:
            if self.ended.startswith("released"):  # type: ignore[union-attr]
                d.callback(None)
            else:
                d.errback(failure)

    def _log_end(self) -> None:
        side = "requestor" if self.is_requestor else "acceptor"
        rq = self.rq
        calling, called = (rq.calling_ae_title, rq.called_ae_title) if rq is not None else ("", "")
        # One line per association, built once, and handed to the logger as
        # its format with the braces doubled: observers that format it (the
        # twistd log file) then find no field to look up.  The parts stay in
        # the event as fields too, for observers that want them (JSON logs).
        text = (
            f"association {side} peer={_address(self.peer)} calling={calling or '-'} "
            f"called={called or '-'} contexts=[{_context_text(self.negotiated, self._used_contexts)}] "
            f"handled=[{_handled_text(self.scp.handled)}] "
            f"{f'requested=[{_handled_text(self.requested)}] ' if self.requested else ''}"
            f"duration={time.monotonic() - self._started:.3f}s ended: {self.ended}"
        )
        #
        # The event is the one ``_log.info(format, text=..., ...)`` would
        # emit, keys and order included, handed to the logger's observer
        # directly: Logger.emit would first look the (constant) level up
        # among all levels and rebuild the keyword dict, a third of the cost
        # of a line that every association pays.
        _log.observer({  # type: ignore[call-arg,misc]
            "text": text,
            "ended": self.ended,
            "calling": calling,
            "called": called,
            "log_system": _LOG_SYSTEM,  # what a text observer shows anyway, not worked out per line
            "log_logger": _log,
            "log_level": LogLevel.info,
            "log_namespace": _log.namespace,
            "log_source": _log.source,
            "log_format": text.replace("{", "{{").replace("}", "}}") if "{" in text or "}" in text else text,
            "log_time": time.time(),
        })

    def release(self) -> Deferred:
        """A-RELEASE: fires with None once released (or fails if aborted).

        Operations requested before it are let finish first (each bounded by
        the DIMSE timeout): the A-RELEASE-RQ goes out once none is outstanding
        or waiting for the asynchronous operations window."""
        if self.protocol is None or not self.established or self.ended:
            return defer.fail(LocalProtocolError(f"association is not established ({self.ended or 'not yet'})"))
        d: Deferred = Deferred()
        self._release_waiters.append(d)
        self._after_operations(lambda: self._when_sent(lambda: self._release_now(d)))
        return d

    def _after_operations(self, action: Callable[[], None]) -> None:
        """Run ``action`` once no operation of ours is outstanding or waiting to
        be sent: a release asked right behind requests lets them finish (each
        bounded by the DIMSE timeout) instead of failing the ones the
        asynchronous operations window had not let out yet."""
        if not self._operations and not self._waiting_ops:
            action()
        else:
            self._idle_actions.append(action)

    def _operations_idle(self) -> None:
        if self._idle_actions and not self._operations and not self._waiting_ops and not self.ended:
            actions, self._idle_actions = self._idle_actions, []
            for action in actions:
                action()

    def _release_now(self, d: Deferred) -> None:
        if self.protocol is None or self.ended:
            return
        try:
            self.protocol.call("release")
        except LocalProtocolError as exc:
            if d in self._release_waiters:
                self._release_waiters.remove(d)
                d.errback(exc)

    def abort(self, reason: str = "aborted by the local user") -> None:
        """A-ABORT: end the association now; outstanding requests fail."""
        if self.protocol is None:
            return
        self._outgoing.clear()
        self.protocol.call("abort", reason)
        self._finish(f"aborted: {reason}", AssociationAborted(reason))

    def _abort_invalid(self, error: RemoteProtocolError) -> None:
        """A-ABORT for a PDU found invalid here, above the upper layer: with the
        service-provider source and ``error``'s reason (PS3.8 Table 9-10, Evt19:
        AA-8; Table 9-26) -- unless ``error`` says the abort is our choice
        (source 0, e.g. a data set above our limit): then as :meth:`abort`."""
        if self.protocol is None:
            return
        if error.abort_source != 2:
            self.abort(str(error))
            return
        self._outgoing.clear()
        self.protocol.call("invalid_pdu", error)
        self._finish(f"aborted: {error}", AssociationAborted(str(error)))

    # -- sending -------------------------------------------------------------------------

    def send_message(
        self,
        context: NegotiatedContext,
        command: dict[str, Any],
        dataset: Any = None,
        on_sent: Callable[[], None] | None = None,
        operation: DimseOperation | None = None,
    ) -> None:
        """Queue one DIMSE message; it goes out whole, after those queued before it.

        :param dataset: None, bytes already in the context's transfer syntax,
            an iterable of such byte blocks (read lazily), or a pydicom Dataset
            (encoded now by pydicom in the context's transfer syntax).
        """
        if self.protocol is None or self.negotiated is None:
            raise LocalProtocolError("association is not established")
        payload = None if dataset is None else dataset_bytes(dataset, context.transfer_syntax)
        self.send_encoded(context, encode_command(command), payload, on_sent, operation)

    def send_encoded(
        self,
        context: NegotiatedContext,
        command: bytes,
        payload: Any = None,
        on_sent: Callable[[], None] | None = None,
        operation: DimseOperation | None = None,
    ) -> None:
        """:meth:`send_message` of a command set already encoded (and validated),
        with a data set already made bytes (or blocks) by
        :func:`~dimsekit.scu.dataset_bytes`."""
        protocol = self.protocol
        negotiated = self.negotiated
        if protocol is None or negotiated is None:
            raise LocalProtocolError("association is not established")
        if payload is None and on_sent is None and not self._outgoing and not self._paused and not self._pumping:
            # The common case of a command-only message (a response, an echo)
            # with nothing queued before it: straight out, no queue entry.
            maximum = negotiated.peer_maximum_length
            if not maximum or len(command) <= (maximum - _PDV_OVERHEAD) & ~1:
                # one PDV in one PDU (as fragment_message would make it)
                protocol.send_pdata(encode_single_pdata(context.context_id, _LAST_COMMAND, command))
                return
            for pdu in fragment_message(context.context_id, command, None, maximum, pack=self.pack_pdvs):
                if not protocol.send_pdata(pdu):
                    break
            return
        pdus = fragment_message(context.context_id, command, payload, negotiated.peer_maximum_length, pack=self.pack_pdvs)
        self._outgoing.append(_Outgoing(pdus, on_sent=on_sent, operation=operation))
        self._pump()
        if (operation is None and not self._reading_paused and len(self._outgoing) > _READ_PAUSE_QUEUE
                and self._answers_waiting() > _READ_PAUSE_QUEUE):
            # The peer keeps sending requests and takes no answer: read no more of it until it does.
            self._reading_paused = True
            protocol.transport.pauseProducing()  # type: ignore[union-attr]

    def _answers_waiting(self) -> int:
        """Messages waiting to go out that are not requests of ours (responses, mostly).  Our own
        requests never stop reading: the peer's responses to them are what lets them go, and two
        peers each waiting for the other to read would never move."""
        return sum(1 for message in self._outgoing if message.operation is None)

    def _when_sent(self, action: Callable[[], None]) -> None:
        """Run ``action`` once every message queued so far has gone out."""
        if not self._outgoing:
            action()
        else:
            self._outgoing.append(_Outgoing(iter(()), on_sent=action))
            self._pump()

    def _pump(self) -> None:
        """Write queued PDUs until the queue is empty or the transport says pause."""
        if self._pumping:
            return
        self._pumping = True
        try:
            outgoing = self._outgoing
            while outgoing and not self._paused and self.protocol is not None:
                message = outgoing[0]
                # The PDUs of one message, up to _SEND_BATCH bytes of them, go to the
                # transport in one write: one pass through the upper layer and
                # Twisted per batch, not per 16 KiB PDU (a data set streaming out).
                batch: list[bytes] = []
                size = 0
                done = False
                limit = min(_SEND_BATCH, getattr(self.protocol, "send_batch", 0))
                try:
                    while size < limit or not batch:
                        pdu = next(message.pdus, None)
                        if pdu is None:
                            done = True
                            break
                        batch.append(pdu)
                        size += len(pdu)
                except Exception as exc:  # reading the data set failed part-way
                    if batch:  # what was made goes out first, as it would have unbatched
                        self.protocol.send_pdata(b"".join(batch))
                    _log.failure("could not produce the rest of a message; aborting", Failure(exc))
                    self.abort(f"message could not be sent whole: {exc}")
                    return
                if batch:
                    message.started = True
                    if self.protocol.send_pdata(batch[0] if len(batch) == 1 else b"".join(batch)) is False:
                        # the association can no longer carry data (the peer's A-ABORT or
                        # A-RELEASE-RQ was just read): read no more of any data set
                        outgoing.clear()
                        return
                    if message.operation is not None:
                        before = message.written
                        message.written += len(batch)
                        if before >> 6 != message.written >> 6:  # a slow peer is not a dead one
                            self._arm_dimse_timer(message.operation)
                if done:
                    outgoing.popleft()
                    if message.operation is not None and message.operation.message_id in self._operations:
                        self._arm_dimse_timer(message.operation)  # the response is due from now
                    if message.on_sent is not None:
                        message.on_sent()
        finally:
            self._pumping = False
        if self._reading_paused and self.protocol is not None and self._answers_waiting() <= _READ_PAUSE_QUEUE // 2:
            self._reading_paused = False
            self.protocol.transport.resumeProducing()  # type: ignore[union-attr]
        self._wake_writable()

    def writable(self) -> Deferred:
        """Fires once the send queue is (nearly) empty and the transport is not
        paused: producers of many messages (pending responses) await it to
        keep memory bounded."""
        if not self._paused and len(self._outgoing) <= 1:
            return defer.succeed(None)
        d: Deferred = Deferred()
        self._writable_waiters.append(d)
        return d

    def _wake_writable(self) -> None:
        if self._writable_waiters and not self._paused and len(self._outgoing) <= 1:
            waiters, self._writable_waiters = self._writable_waiters, []
            for d in waiters:
                d.callback(None)

    # IPushProducer: the transport tells us when its buffer is full or drained.
    def pauseProducing(self) -> None:
        self._paused = True
        self._paused_since = self.reactor.seconds()
        timeout = self.ae.dimse_timeout
        if timeout and self._stall_timer is None and self.protocol is not None:
            self._stall_timer = self.reactor.callLater(timeout, self._send_stalled, timeout)

    def resumeProducing(self) -> None:
        self._paused = False  # the stall timer, if any, finds it so and ends
        self._pump()

    def stopProducing(self) -> None:
        self._paused = True

    def _send_stalled(self, timeout: float) -> None:
        """The stall timer: abort an association whose transport has held our writes back
        for ``timeout`` (dimse_timeout) seconds on end -- a peer that stopped reading.

        Without it a handler streaming responses (C-FIND matches) to such a peer
        waits for ever, keeping its association busy (so never idle), its slot
        and its index cursor.  Our requests have the DIMSE timer; this covers
        everything we send.  One timer per stall, not per pause: a transfer
        pauses every few kilobytes.  The connection is dropped at once, also
        when the association ended already (a DIMSE timeout, a release) and
        only its connection waits: what it holds would never be written, and
        a close waits for that for ever.
        """
        self._stall_timer = None
        protocol = self.protocol
        if not self._paused or protocol is None:
            return
        left = self._paused_since + timeout - self.reactor.seconds()
        if left > 0:  # paused again since, after some progress: wait out the rest
            self._stall_timer = self.reactor.callLater(left, self._send_stalled, timeout)
            return
        reason = f"sending stalled: the peer took nothing of what we sent for {timeout:g} s"
        transport = protocol.transport
        if self.ended:
            _log.warn("{peer}: {reason}; dropping the connection", peer=_address(self.peer), reason=reason)
        else:
            _log.warn("{peer}: {reason}; aborting the association", peer=_address(self.peer), reason=reason)
            self.abort(reason)
        if transport is not None:
            transport.abortConnection()

    # -- requests we send (used by dimsekit.scu) -----------------------------------------

    def next_message_id(self) -> int:
        """A Message ID not used by an operation in progress (PS3.7 9.3.1.1: unique per association)."""
        for _ in range(0x10000):
            message_id = next(self._message_ids) & 0xFFFF
            if message_id and message_id not in self._operations and all(
                w[0].message_id != message_id for w in self._waiting_ops
            ):
                return message_id
        raise LocalProtocolError("no free Message ID: 65535 operations outstanding")

    def start_operation(
        self,
        context: NegotiatedContext,
        command: dict[str, Any],
        dataset: Any = None,
        *,
        on_pending: Callable[[Response], object] | None = None,
        total_timeout: float | None = None,
    ) -> DimseOperation:
        """Send a request (Message ID assigned here) and track it until its final response.

        When the negotiated asynchronous operations window is full, the request
        waits in a queue and is sent when an earlier operation finishes.
        """
        if self.protocol is None or not self.established or self.ended:
            raise LocalProtocolError(f"association is not established ({self.ended or 'not yet'})")
        message_id = self.next_message_id()
        command = {**command, "MessageID": message_id}
        operation = DimseOperation(
            self, message_id, context.context_id, on_pending=on_pending, command_field=int(command["CommandField"])
        )
        limit = self.negotiated.max_outstanding_local if self.negotiated else 1
        if limit and len(self._operations) >= limit:
            self._waiting_ops.append((operation, command, (context, dataset, total_timeout)))
            return operation
        self._launch(operation, command, context, dataset, total_timeout)
        return operation

    def send_request(self, context: NegotiatedContext, command: dict[str, Any], dataset: Any = None) -> Deferred:
        """Send any request (Message ID assigned here); fire with its final :class:`Response`."""
        try:
            return self.start_operation(context, command, dataset).result
        except Exception as exc:
            return defer.fail(exc)

    def _launch(
        self, operation: DimseOperation, command: dict[str, Any], context: NegotiatedContext,
        dataset: Any, total_timeout: float | None,
    ) -> None:
        self._operations[operation.message_id] = operation
        self._used_contexts.add(context.context_id)
        if self.observers:
            self._tell("operation_started", operation, command, context)
        self._arm_dimse_timer(operation)
        if total_timeout:
            operation.total_timer = self.reactor.callLater(
                total_timeout, self._operation_timeout, operation, f"not finished within {total_timeout:g} s"
            )
        try:
            self.send_message(context, command, dataset, operation=operation)
        except Exception as exc:
            self._operations.pop(operation.message_id, None)
            _cancel_timers(operation)
            operation.fail(exc)
            self._operations_idle()

    def _arm_dimse_timer(self, operation: DimseOperation) -> None:
        timeout = self.ae.dimse_timeout
        if not timeout:
            return
        if operation.timer is not None and operation.timer.active():
            operation.timer.reset(timeout)
        else:
            operation.timer = self.reactor.callLater(
                timeout, self._operation_timeout, operation, f"no DIMSE response within {timeout:g} s"
            )

    def _operation_timeout(self, operation: DimseOperation, why: str) -> None:
        if self._operations.pop(operation.message_id, None) is None:
            return
        _cancel_timers(operation)
        message = f"message {operation.message_id}: {why}; aborting the association"
        _log.warn("{peer}: {message}", peer=_address(self.peer), message=message)
        # abort first: whoever awaits the operation finds the association ended
        self.abort(message)
        operation.fail(DIMSETimeout(message))

    def _operation_done(self, operation: DimseOperation) -> None:
        self._operations.pop(operation.message_id, None)
        _cancel_timers(operation)
        limit = self.negotiated.max_outstanding_local if self.negotiated else 1
        while self._waiting_ops and (not limit or len(self._operations) < limit):
            waiting, command, (context, dataset, total_timeout) = self._waiting_ops.popleft()
            self._launch(waiting, command, context, dataset, total_timeout)
        self._operations_idle()

    def send_cancel(self, operation: DimseOperation) -> None:
        """C-CANCEL-RQ for a C-FIND, C-GET or C-MOVE in progress (PS3.7 9.3.2.3)."""
        if operation.command_field not in _CANCELLABLE:
            return
        for index, (waiting, _command, _rest) in enumerate(self._waiting_ops):
            if waiting is operation:  # never sent: no need to ask the peer
                del self._waiting_ops[index]
                operation.finish(Response({"Status": dimse_status.CANCEL, "MessageIDBeingRespondedTo": operation.message_id}))
                self._operations_idle()
                return
        if operation.message_id not in self._operations or self.negotiated is None:
            return
        context = self.negotiated.contexts[operation.context_id]
        command = {
            "CommandField": CommandField.C_CANCEL_RQ,
            "MessageIDBeingRespondedTo": operation.message_id,
            "CommandDataSetType": NO_DATASET,
        }
        self.send_message(context, command)

    # -- receiving -----------------------------------------------------------------------

    def _command_received(self, event: CommandReceived) -> None:
        """A command set is complete.  If a plugin streams this request's data set
        somewhere (C-STORE into the archive), point the assembler at its sink
        now, before the first data set fragment.

        A message on a presentation context that was not accepted ends the
        association here, before its data set is read (and spooled) in vain:
        an A-ABORT, invalid-PDU-parameter value (PS3.8 Table 9-26)."""
        if self.negotiated is None:
            return
        context = self.negotiated.contexts.get(event.context_id)
        if context is None:
            raise RemoteProtocolError(
                f"message on presentation context {event.context_id}, which was not accepted", abort_reason=6
            )
        if not event.has_dataset:
            return
        field = int(event.command.get("CommandField", 0))
        if field & 0x8000:
            return
        name = COMMAND_NAMES.get(field)
        if name is None:
            return
        handlers = self.handlers
        handler = handlers.get((name, context.abstract_syntax), handlers.get((name, None))) if handlers else None
        if handler is not None:
            # a handler of this association takes it (a C-GET's on_store), not the plugin's;
            # it may say where the data set goes as it arrives (its ``sink_for(request)``)
            factory = getattr(handler, "sink_for", None)
        else:
            factory = self.ae.registry.sink_factory(name, context.abstract_syntax)
        if factory is None:
            return
        request = Request(self, context, event.command)
        # The handler gets this same Request (its sink set) once the data set is in.
        self._early_requests[event.command.get("MessageID", -1)] = request
        if self.observers:
            self._tell("request_received", request)
        try:
            sink = factory(request)
        except Exception as exc:  # refused before writing: the handler answers with a status
            request.sink_error = exc
            self._assembler.set_sink(_DiscardSink())
            return
        if sink is not None:
            self._assembler.set_sink(sink)

    def _message(self, context_id: int, command: dict[str, Any], sink: Any) -> None:
        field = int(command["CommandField"])
        negotiated = self.negotiated
        context = negotiated.contexts.get(context_id) if negotiated is not None else None
        if context is None:
            self.abort(f"message on presentation context {context_id}, which was not accepted")
            return
        self._used_contexts.add(context_id)
        if field & 0x8000:
            self._response(context, command, sink)
        elif field == CommandField.C_CANCEL_RQ:
            self.scp.cancel(int(command.get("MessageIDBeingRespondedTo", -1)))
        else:
            early = self._early_requests.pop(command.get("MessageID", -1), None) if self._early_requests else None
            if early is not None and early.command is command and early.context is context:
                request = early  # the one its sink factory saw (C-STORE into the archive)
                request.sink = sink
            else:
                request = Request(self, context, command, sink)
                if self.observers:
                    self._tell("request_received", request)
            self.scp.receive(request)

    def _response(self, context: NegotiatedContext, command: dict[str, Any], sink: Any) -> None:
        message_id = int(command.get("MessageIDBeingRespondedTo", -1))
        operation = self._operations.get(message_id)
        if operation is None:
            _log.warn("response to unknown message {id} from {peer}; ignored", id=message_id, peer=_address(self.peer))
            return
        field = int(command.get("CommandField", 0))
        status = int(command.get("Status", 0xFFFF))
        pending = dimse_status.category(status) is dimse_status.Category.PENDING
        wrong = None
        if operation.command_field and field != operation.command_field | 0x8000:
            asked = COMMAND_NAMES.get(operation.command_field, hex(operation.command_field))
            wrong = f"a {_response_name(field)} answers message {message_id}, a {asked}"
        elif pending and operation.command_field not in _PENDING_CAPABLE:
            wrong = f"a pending status (0x{status:04X}) in a {_response_name(field)}"
        if wrong is not None:  # the operation cannot end well: it fails now, not at the DIMSE timeout
            _log.warn("invalid response from {peer}: {wrong}; the operation fails", peer=_address(self.peer), wrong=wrong)
            self._operation_done(operation)
            operation.fail(RemoteProtocolError(f"invalid response: {wrong}"))
            return
        dataset = None
        if sink is not None:
            try:
                peer = self.remote_ae_title
                with about(peer, lambda: f"reading the {_response_name(field)} to message {message_id} from {peer}"):
                    dataset = decode_dataset(sink.open(), context.transfer_syntax)
            except Exception as exc:
                _log.warn("undecodable data set in a response from {peer}: {error}", peer=_address(self.peer), error=exc)
        response = Response(command, dataset)
        if pending:
            self._arm_dimse_timer(operation)
            operation.pending(response)
            return
        self._operation_done(operation)
        count_final(self.requested, operation.command_field, status)
        operation.finish(response)

    def _elements_ignored(self, event: ElementsIgnored) -> None:
        """The peer put elements of other groups after a command set's group 0000 (PS3.7 6.3.1: a
        command set holds group 0000 only): the command is taken without them, as DCMTK and
        pynetdicom take it, and the log says what was left out."""
        command = event.command
        field = command.get("CommandField")
        if not isinstance(field, int):
            name = "a message"
        elif field & 0x8000:
            name = _response_name(field)
        else:
            name = f"{COMMAND_NAMES.get(field, f'message of Command Field 0x{field:04X}')}-RQ"
        message_id = command.get("MessageIDBeingRespondedTo", command.get("MessageID"))
        _log.warn(
            "{peer} put {tags} after the command elements of {name} (message {id}): not part of a command "
            "set (PS3.7 6.3.1), left out",
            peer=_address(self.peer), tags=", ".join(map(format_tag, event.tags)), name=name, id=message_id,
        )

    def _command_rejected(self, event: CommandRejected) -> None:
        error: CommandError = event.error
        if event.message_id is None:
            self._response_rejected(error)
            return
        field = error.command_field
        if field is None or field not in CommandField.__members__.values() or field & 0x8000 or field == CommandField.C_CANCEL_RQ:
            self.abort(f"request with an unusable Command Field: {error}")
            return
        context = self.negotiated.contexts.get(event.context_id) if self.negotiated else None
        if context is None:
            self.abort(f"message on presentation context {event.context_id}, which was not accepted")
            return
        _log.warn(
            "refusing a request from {peer} with status 0x{status:04X}: {error}",
            peer=_address(self.peer), status=error.status, error=error,
        )
        fields = error.response_fields()
        response = {
            **fields,
            "CommandField": field | 0x8000,
            "MessageIDBeingRespondedTo": event.message_id,
            "CommandDataSetType": NO_DATASET,
        }
        self.send_message(context, response)
        if self.observers:
            self._tell("request_refused", error.command or {}, context, error.status, fields)

    def _response_rejected(self, error: CommandError) -> None:
        """A response (or C-CANCEL-RQ) whose command set cannot be accepted.  If
        it answers an operation of ours, that operation fails now: its final
        response cannot be read and no other is coming, so waiting would last
        until the DIMSE timeout (forever with none)."""
        message_id = error.message_id_being_responded_to
        operation = self._operations.get(message_id) if message_id is not None else None
        field = error.command_field
        if operation is None or (field is not None and not field & 0x8000):  # a C-CANCEL-RQ: the peer's ids
            _log.warn("undecodable response from {peer} ignored: {error}", peer=_address(self.peer), error=error)
            return
        _log.warn(
            "undecodable response to message {id} from {peer}: {error}; the operation fails",
            id=message_id, peer=_address(self.peer), error=error,
        )
        self._operation_done(operation)
        operation.fail(RemoteProtocolError(f"invalid response to message {message_id}: {error.comment}"))


def _response_name(field: int) -> str:
    """"C-ECHO-RSP" for 0x8030 (a response's Command Field), the number otherwise."""
    name = COMMAND_NAMES.get(field & 0x7FFF)
    return f"{name}-RSP" if name is not None and field & 0x8000 else f"message of Command Field 0x{field:04X}"


#: message control header of a whole command set in one PDV (PS3.8 E.2: command, last)
_LAST_COMMAND = 0x03
#: a PDV item's head: item length (4), context ID, control header (PS3.8 Table 9-23)
_PDV_OVERHEAD = 6
#: PDUs of one message written to the transport together, up to this many bytes
_SEND_BATCH = 256 * 1024
#: answers waiting to go out past which the peer is not read until it takes them (and half as
#: many to read again): one that sends requests without reading the responses is held back by
#: TCP, instead of growing our queue with every request it sends (~35 MB/s of C-ECHOs measured)
_READ_PAUSE_QUEUE = 64

_CANCELLABLE = frozenset({CommandField.C_FIND_RQ, CommandField.C_GET_RQ, CommandField.C_MOVE_RQ})


class _DiscardSink:
    """Swallows a data set that was refused before it arrived."""

    size = 0

    def write(self, data: bytes | memoryview) -> None:
        self.size += len(data)

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def open(self) -> Any:
        import io

        return io.BytesIO()


def _stop(timer: Any) -> None:
    """Cancel ``timer`` (a DelayedCall, or None) if it has not run; None, to store in its place."""
    if timer is not None and timer.active():
        timer.cancel()


def _cancel_timers(operation: DimseOperation) -> None:
    operation.timer = _stop(operation.timer)
    operation.total_timer = _stop(operation.total_timer)


def _address(peer: Any) -> str:
    host = getattr(peer, "host", None)
    port = getattr(peer, "port", None)
    return f"{host}:{port}" if host is not None else str(peer)


#: the error a connection lost with work pending ends it with, made when needed
_CONNECTION_LOST = ConnectionLost("the connection closed before the association ended")

#: id(negotiated) -> (negotiated, its contexts' names for the log line, how many); the
#: acceptor's negotiation cache shares one Negotiated between associations
_CONTEXT_NAMES: dict[int, tuple[Negotiated, str, int]] = {}

#: up to this many accepted SOP classes are named in the log line; more (a
#: storage SCU proposing every storage class it knows: DCMTK's storescu ~60,
#: dcm4che's ~120) are counted, and only those messages went over are named
_CONTEXTS_LISTED = 4


def _handled_text(handled: dict[int, list[int]]) -> str:
    """The requests this association answered, for its log line: ``C-STORE 200 (1 warning, 2 failed)``."""
    parts = []
    for field_, (total, warnings, failures, cancels) in handled.items():
        name = COMMAND_NAMES.get(int(field_), "unknown")
        if not (warnings or failures or cancels):
            parts.append(f"{name} {total}")
            continue
        notes = [f"{n} {what}" for n, what in ((warnings, "warning" if warnings == 1 else "warnings"),
                                              (failures, "failed"), (cancels, "cancelled")) if n]
        parts.append(f"{name} {total} ({', '.join(notes)})")
    return ", ".join(parts)


def _context_text(negotiated: Negotiated | None, used: set[int]) -> str:
    """The accepted contexts for the association's log line: their SOP class
    names, sorted -- or, past :data:`_CONTEXTS_LISTED` of them, how many there
    were and the names of those in ``used`` (context IDs messages went over):
    ``62 SOP classes accepted; used: CT Image Storage``."""
    if negotiated is None:
        return ""
    entry = _CONTEXT_NAMES.get(id(negotiated))
    if entry is None or entry[0] is not negotiated:
        unique = sorted({_uid_name(c.abstract_syntax) for c in negotiated.contexts.values()})
        entry = (negotiated, ", ".join(unique), len(unique))
        if len(_CONTEXT_NAMES) >= 256:
            del _CONTEXT_NAMES[next(iter(_CONTEXT_NAMES))]
        _CONTEXT_NAMES[id(negotiated)] = entry
    if entry[2] <= _CONTEXTS_LISTED:
        return entry[1]
    contexts = negotiated.contexts
    names = sorted({_uid_name(contexts[c].abstract_syntax) for c in used if c in contexts})
    return f"{entry[2]} SOP classes accepted; used: {', '.join(names) or 'none'}"


@functools.lru_cache(maxsize=512)
def _uid_name(uid: str) -> str:
    name = UID(uid).name
    return name if name != uid else uid
