"""DIMSE operations as the SCU sees them: requests, responses, pending streams.

:class:`Response` is one DIMSE response (its command set and data set).
:class:`DimseOperation` is a request in flight: awaitable (gives the final
response), async-iterable (gives each pending response as it arrives),
and cancellable (:meth:`DimseOperation.cancel` sends C-CANCEL-RQ; the
operation then ends with the peer's final status, normally Cancel 0xFE00).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from dimsekit.dimse import status as dimse_status

if TYPE_CHECKING:  # pragma: no cover
    from dimsekit.association import Association

__all__ = ["Response", "DimseOperation"]

_log = Logger(namespace="dimsekit.operations")


@dataclass(slots=True)
class Response:
    """A DIMSE response: its command set (a dict by keyword) and its data set.

    ``dataset`` is a pydicom Dataset when the response carried one (decoded in
    the presentation context's transfer syntax), else None.
    """

    command: dict[str, Any]
    dataset: Any = None

    @property
    def status(self) -> int:
        """The Status (0000,0900) value."""
        return int(self.command.get("Status", 0xFFFF))

    @property
    def category(self) -> dimse_status.Category:
        """Success, warning, failure, cancel or pending (PS3.7 Annex C)."""
        return dimse_status.category(self.status)

    @property
    def status_text(self) -> str:
        """The status code and its name, for logs and CLI output."""
        return dimse_status.describe(self.status)

    def __getattr__(self, name: str) -> Any:
        # command elements by keyword: response.NumberOfCompletedSuboperations
        try:
            return self.command[name]
        except KeyError:
            raise AttributeError(name) from None


@dataclass(eq=False)
class DimseOperation:
    """A request sent and not yet finished.

    * ``await op`` (or ``op.result``, a Deferred) gives the final :class:`Response`;
    * ``async for response in op`` gives each pending response (status
      0xFF00/0xFF01) as it arrives, then stops after the final one (which
      ``op.result`` holds), or raises the operation's failure -- which then
      needs no other handling: ``op.result`` is made only when asked for;
    * ``op.cancel()`` sends C-CANCEL-RQ for it (C-FIND, C-GET, C-MOVE);
      ``op.result`` then fires with the peer's final status;
    * ``op.result.cancel()`` does the same and, per Twisted's rules, fails
      ``op.result`` with CancelledError; so does cancelling a coroutine
      (``Deferred.fromCoroutine``) where it awaits the operation or its next
      pending response.

    Memory stays bounded on huge result sets: pending responses are kept in
    ``responses`` only while nobody consumes them otherwise -- once an
    ``on_pending`` callback is given or iteration has begun, each response
    is handed over and not kept (``pending_count`` still counts them).
    """

    association: Association
    message_id: int
    context_id: int
    on_pending: Callable[[Response], object] | None = None
    #: the request's Command Field (C-CANCEL applies to C-FIND, C-GET and C-MOVE only)
    command_field: int = 0
    responses: list[Response] = field(default_factory=list)
    pending_count: int = 0
    cancel_sent: bool = False
    timer: Any = None
    total_timer: Any = None
    _queue: deque = field(default_factory=deque)
    _waiter: Deferred | None = None
    _done: bool = False
    _iterating: bool = False
    _error: Exception | None = None
    #: the final response once it came (finish())
    _final: Response | None = None
    #: ``result``, made on first use (see there)
    _result: Deferred | None = None
    #: see when_ended()
    _on_end: list[Callable[[], object]] = field(default_factory=list)

    @property
    def result(self) -> Deferred:
        """A Deferred firing with the final :class:`Response`, or failing as the operation does.

        Made when first asked for (by ``await op`` too), already fired if the
        operation is over: an operation whose failure reached its caller
        another way -- raised by ``async for`` -- leaves no failed Deferred
        behind for Twisted to report as "Unhandled error in Deferred" when it
        is collected.  Once asked for, it is the caller's, as any Deferred.
        """
        d = self._result
        if d is None:
            d = self._result = Deferred(lambda _d: self.cancel())
            if self._final is not None:
                d.callback(self._final)
            elif self._error is not None:
                d.errback(self._error)
        return d

    @property
    def final_response(self) -> Response | None:
        """The final :class:`Response`, once it came (None before, or when the operation failed)."""
        return self._final

    @property
    def error(self) -> Exception | None:
        """Why the operation could not end normally (abort, timeout), once it could not."""
        return self._error

    def when_ended(self, callback: Callable[[], object]) -> None:
        """Call ``callback()`` once the operation ends, however it ends (at once if it has)."""
        if self._done:
            callback()
        else:
            self._on_end.append(callback)

    def _ended(self) -> None:
        callbacks, self._on_end = self._on_end, []
        for callback in callbacks:
            callback()

    # -- the association feeds these ------------------------------------------

    def pending(self, response: Response) -> None:
        """A pending response arrived."""
        self.pending_count += 1
        if self.on_pending is None and not self._iterating:
            self.responses.append(response)
        if self.on_pending is not None:
            try:
                self.on_pending(response)
            except Exception:  # the caller's bug must not break the association
                _log.failure("on_pending callback of message {id} failed", id=self.message_id)
        if self._iterating:
            self._push(response)

    def progressing(self) -> None:
        """Work for this operation was seen arriving by another way than its
        responses (a C-MOVE's instances on our own storage SCP, which pending
        responses need not report, PS3.4 C.4.2.3.1): its DIMSE timer starts again."""
        association = self.association
        if not self._done and association._operations.get(self.message_id) is self:
            association._arm_dimse_timer(self)

    def finish(self, response: Response) -> None:
        """The final response arrived."""
        first = not self._done
        self._done = True
        if first and self._error is None:
            self._final = response
        self._ended()
        if self._iterating:
            self._push(None)
        if self._result is not None and not self._result.called:
            self._result.callback(response)

    def fail(self, error: Exception) -> None:
        """The operation cannot end normally (abort, timeout)."""
        first = not self._done
        self._done = True
        if first:
            self._error = error
        self._ended()
        if self._iterating:
            self._push(error)
        if self._result is not None and not self._result.called:
            self._result.errback(error)

    def _push(self, item: object) -> None:
        if self._waiter is not None:
            waiter, self._waiter = self._waiter, None
            waiter.callback(item)
        else:
            self._queue.append(item)

    # -- the caller uses these --------------------------------------------------

    def cancel(self) -> None:
        """Send C-CANCEL-RQ for this operation (once); the peer answers with its
        final status.  Nothing is sent for other than C-FIND, C-GET and C-MOVE
        (PS3.7 9.3.2.3): their ``result`` may still be cancelled, locally."""
        if self.cancel_sent or self._done:
            return
        self.cancel_sent = True
        self.association.send_cancel(self)

    def __await__(self) -> Generator[Any, Any, Response]:
        return self.result.__await__()

    def __aiter__(self) -> DimseOperation:
        if not self._iterating:
            self._iterating = True
            self._queue.extend(self.responses)  # those that came before iteration began
            self.responses = []
            if self._done:
                self._queue.append(self._error)
        return self

    def _stop_waiting(self, waiter: Deferred) -> None:
        if self._waiter is waiter:
            self._waiter = None
        self.cancel()

    async def __anext__(self) -> Response:
        if not self._iterating:
            self.__aiter__()  # called directly (e.g. anext(op)) rather than by ``async for``
        if self._queue:
            item = self._queue.popleft()
        elif self._done:
            raise StopAsyncIteration
        else:
            # Cancelling what awaits the next response (Deferred.fromCoroutine's
            # cancel) cancels the operation, as cancelling ``await op`` does.
            self._waiter = Deferred(self._stop_waiting)
            item = await self._waiter
        if item is None:
            raise StopAsyncIteration
        if isinstance(item, Exception):
            raise item
        return item  # type: ignore[return-value]
