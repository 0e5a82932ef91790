"""What libraries say through stdlib :mod:`logging`, in the node's log.

Two libraries speak to the operator that way: the OpenTelemetry SDK (a batch of
spans it could not send) and pydicom, which says what it finds wrong in a data set
("Invalid value for VR UI: '*'") to its logger and again as a Python warning.  Under
twistd, the logger reached no log at all and the warning came out as a line naming a
file of pydicom's -- nothing of which peer sent the data, nor in which request.

:class:`ToNodeLog` puts a library's records in the node's log, the same message at most
once a minute (a collector down for an hour: 60 lines, not 720; a modality whose every
instance has the same flawed date: one line a minute, with a count).  For pydicom, code
reading a peer's data says what it reads with :class:`about`, and
:func:`route_pydicom` makes the node's log say it::

    pydicom, reading C-FIND message 7 from MODALITY1: Invalid value for VR DA: '2024-01-01'
"""

from __future__ import annotations

import logging
import re
import time
import warnings
from collections.abc import Callable
from contextvars import ContextVar, Token

from twisted.logger import Logger

from dimsekit.errors import for_log

#: the same message (from the same peer) is said at most once in this many seconds
REPEAT_EVERY = 60.0
#: messages remembered for that; past it (messages that differ every time) the recent ones only
_REMEMBERED = 256

_pydicom_log = Logger(namespace="dimsekit.pydicom")
#: what is being read, for pydicom's messages: a context variable, so that a coroutine started
#: inside :class:`about` (its every step runs in the context it was started in) is about it too
_reading: ContextVar[about | None] = ContextVar("dimsekit_reading", default=None)
#: pydicom's pointer to the standard's VR table, on every invalid value: noise in a log line
_SEE_TABLE = re.compile(r"\s*Please see <[^>]*> for allowed values for each VR\.")


class about:
    """``with about(peer, what):`` -- what is being read, for pydicom's messages.

    ``what`` ("reading C-FIND message 7 from MODALITY1", or a callable that makes that
    text: a C-STORE's is made only if pydicom has something to say) is put in front of
    what pydicom says while the block runs, in this thread, and in every step of a
    coroutine started inside it (``Deferred.fromCoroutine`` runs them in the context
    it was called in); ``peer`` (an AE title) keys the repeats.  Nested blocks: the
    innermost speaks."""

    __slots__ = ("peer", "what", "_token")

    def __init__(self, peer: str, what: str | Callable[[], str]) -> None:
        self.peer = peer
        self.what = what
        self._token: Token[about | None] | None = None

    def __enter__(self) -> None:
        self._token = _reading.set(self)

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _reading.reset(self._token)
            self._token = None

    def text(self) -> str:
        return self.what if isinstance(self.what, str) else self.what()


def reading() -> about | None:
    """What is being read here (the innermost :class:`about`), or None."""
    return _reading.get()


class ToNodeLog(logging.Handler):
    """A stdlib logger's records into the node's log, as warnings of ``log``, each
    message at most once in ``period`` seconds per peer (see the module's text).

    ``label`` starts each line ("tracing"); a subclass may say more (:meth:`where`)."""

    def __init__(self, log: Logger, label: str, level: int = logging.WARNING, period: float = REPEAT_EVERY) -> None:
        super().__init__(level)
        self.log = log
        self.label = label
        self.period = period
        self.said: dict[tuple[str, str], list[float]] = {}  # (peer, message) -> [when said, times since]

    def where(self) -> tuple[str, str]:
        """(the peer the message is about, for its repeats; the line's start)."""
        return "", self.label

    def message(self, record: logging.LogRecord) -> str:
        return for_log(record.getMessage())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.message(record)
        except Exception:  # pragma: no cover - a record that cannot be formatted
            message = repr(record.msg)
        peer, start = self.where()
        key = (peer, message)
        now = time.monotonic()  # (logging holds the handler's lock around emit)
        said = self.said.get(key)
        if said is not None and now - said[0] < self.period:
            said[1] += 1
            return
        again = int(said[1]) if said is not None else 0
        if len(self.said) >= _REMEMBERED:
            self.said.clear()
        self.said[key] = [now, 0]
        # (not "message": legacy observers, trial's among them, take that key for their own)
        if again:
            self.log.warn("{start}: {text} ({n} more times in the last {period:g} s)",
                          start=start, text=message, n=again, period=self.period)
        else:
            self.log.warn("{start}: {text}", start=start, text=message)


class _PydicomToNodeLog(ToNodeLog):
    def where(self) -> tuple[str, str]:
        now = reading()
        if now is None:
            return "", "pydicom"
        return now.peer, f"pydicom, {now.text()}"

    def message(self, record: logging.LogRecord) -> str:
        return for_log(_SEE_TABLE.sub("", record.getMessage()))


def route(logger_name: str, handler: ToNodeLog) -> None:
    """``handler`` on the stdlib logger ``logger_name`` (once), which no longer passes its
    records on to the root logger: they are said once, in the node's log."""
    logger = logging.getLogger(logger_name)
    if not any(type(h) is type(handler) for h in logger.handlers):
        logger.addHandler(handler)
    logger.propagate = False


def route_pydicom() -> None:
    """pydicom's messages in the node's log, saying what was being read (:class:`about`).

    The node calls it as it starts; an application embedding dimsekit may call it too.
    pydicom says each message twice, to its logger and as a :class:`UserWarning`: the
    warnings of pydicom's modules are ignored from now on, the logger says them."""
    route("pydicom", _PydicomToNodeLog(_pydicom_log, "pydicom"))
    warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\.|$)")

