"""The error family of dimsekit.

Two kinds of protocol error, as h11 does it: the direction is decided where the
error is raised.

* :class:`LocalProtocolError` -- *we* misused the API (asked for a P-DATA before
  the association was established, gave an invalid AE title, ...). Nothing is
  sent to the peer because of it.
* :class:`RemoteProtocolError` -- the *peer* misbehaved (a malformed or
  unexpected PDU, a bad command set).  It carries what must go on the wire in
  answer: the A-ABORT source and reason (PS3.8 Table 9-26) or, while an
  association is being negotiated, the A-ASSOCIATE-RJ result, source and reason
  (PS3.8 Table 9-21).
"""

from __future__ import annotations

import re

__all__ = [
    "DimsekitError",
    "LocalProtocolError",
    "RemoteProtocolError",
    "AssociationRejected",
    "AssociationAborted",
    "ConnectionLost",
    "DIMSETimeout",
    "for_log",
    "printable",
    "ControlEscaper",
]

#: how much of a message (often quoting what a peer sent) goes into one log line
LOG_TEXT_LIMIT = 300


class ControlEscaper:
    """Writes the control characters (C0, DEL, C1) of a text as escapes: what a peer sent,
    made safe for a terminal and a log (an escape sequence in a patient's name or an AE
    title would recolour a terminal, move its cursor or retitle its window; a NUL makes
    grep call a log binary).

    :param keep: control characters left as they are (a log's new lines and tabs).
    :param json_high: DEL and C1 as ``\\u00NN`` -- the JSON escape, for a stream that
        carries JSON whose strings hold them raw -- rather than ``\\xNN``.
    """

    __slots__ = ("_table", "_search")

    def __init__(self, keep: str = "", *, json_high: bool = False) -> None:
        high = "\\u{:04x}" if json_high else "\\x{:02x}"
        kept = {ord(c) for c in keep}
        self._table = {code: f"\\x{code:02x}" for code in range(0x20) if code not in kept}
        self._table.update({code: high.format(code) for code in range(0x7F, 0xA0) if code not in kept})
        self._search = re.compile("[" + "".join(re.escape(chr(c)) for c in sorted(self._table)) + "]").search

    def __call__(self, text: str) -> str:
        return text.translate(self._table) if self._search(text) else text


_escape_all = ControlEscaper()


def printable(text: object) -> str:
    """``str(text)`` with every control character (C0, DEL, C1) as a ``\\xNN`` escape
    (:class:`ControlEscaper`)."""
    return _escape_all(str(text))


def for_log(message: object, limit: int = LOG_TEXT_LIMIT) -> str:
    """``str(message)`` made fit for one log line: a refusal quotes the value a peer
    sent, which may be 70 KB of binary junk.  Control characters become ``\\xNN``
    escapes (a NUL makes grep call the whole log a binary file; a new line would start
    a line the peer wrote), and the text is cut to ``limit`` characters (one request
    must not write 70 KB into the log, nor a flood of them fill the disk)."""
    text = printable(message)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


class DimsekitError(Exception):
    """Base class of every exception dimsekit raises on purpose."""


class LocalProtocolError(DimsekitError):
    """The local application used the API in a way the protocol forbids."""


class RemoteProtocolError(DimsekitError):
    """The peer sent something the protocol forbids.

    :param message: what was wrong, for the log.
    :param abort_source: A-ABORT source to send (PS3.8 Table 9-26): 0 service-user,
        2 service-provider.  Defaults to 2.
    :param abort_reason: A-ABORT reason/diag. (PS3.8 Table 9-26) when the source is
        the service-provider: 0 reason not specified, 1 unrecognized PDU,
        2 unexpected PDU, 4 unrecognized PDU parameter, 5 unexpected PDU
        parameter, 6 invalid PDU parameter value.
    """

    def __init__(self, message: str, *, abort_source: int = 2, abort_reason: int = 0) -> None:
        super().__init__(message)
        self.abort_source = abort_source
        self.abort_reason = abort_reason


class AssociationRejected(DimsekitError):
    """The peer answered our A-ASSOCIATE-RQ with an A-ASSOCIATE-RJ.

    ``result``, ``source`` and ``reason`` are the three fields of the RJ PDU
    (PS3.8 Table 9-21); ``str()`` gives their meaning in words.
    """

    def __init__(self, result: int, source: int, reason: int) -> None:
        self.result = result
        self.source = source
        self.reason = reason
        super().__init__(describe_rejection(result, source, reason))


class AssociationAborted(DimsekitError):
    """The association ended by A-ABORT (from the peer or from us) or A-P-ABORT."""

    def __init__(self, message: str, *, source: int | None = None, reason: int | None = None) -> None:
        super().__init__(message)
        self.source = source
        self.reason = reason


class ConnectionLost(AssociationAborted):
    """The transport connection closed while the association was in use."""


class DIMSETimeout(DimsekitError):
    """No DIMSE response arrived within the DIMSE timeout."""


# PS3.8 Table 9-21: A-ASSOCIATE-RJ PDU fields.
_RJ_RESULT = {1: "rejected-permanent", 2: "rejected-transient"}
_RJ_SOURCE_REASON = {
    (1, 1): "DICOM UL service-user: no-reason-given",
    (1, 2): "DICOM UL service-user: application-context-name-not-supported",
    (1, 3): "DICOM UL service-user: calling-AE-title-not-recognized",
    (1, 7): "DICOM UL service-user: called-AE-title-not-recognized",
    (2, 1): "DICOM UL service-provider (ACSE): no-reason-given",
    (2, 2): "DICOM UL service-provider (ACSE): protocol-version-not-supported",
    (3, 1): "DICOM UL service-provider (Presentation): temporary-congestion",
    (3, 2): "DICOM UL service-provider (Presentation): local-limit-exceeded",
}


def describe_rejection(result: int, source: int, reason: int) -> str:
    """Say an A-ASSOCIATE-RJ (result, source, reason) triple in the standard's words."""
    res = _RJ_RESULT.get(result, f"result {result}")
    why = _RJ_SOURCE_REASON.get((source, reason), f"source {source} reason {reason}")
    return f"association rejected ({res}): {why}"


# PS3.8 Table 9-26: A-ABORT PDU fields.
_ABORT_REASON = {
    0: "reason-not-specified",
    1: "unrecognized-PDU",
    2: "unexpected-PDU",
    4: "unrecognized-PDU parameter",
    5: "unexpected-PDU parameter",
    6: "invalid-PDU-parameter value",
}


def describe_abort(source: int, reason: int) -> str:
    """Say an A-ABORT (source, reason) pair in the standard's words."""
    if source == 0:
        return "aborted by the peer's service-user"
    if source == 2:
        return f"aborted by the service-provider: {_ABORT_REASON.get(reason, f'reason {reason}')}"
    return f"aborted (source {source}, reason {reason})"
