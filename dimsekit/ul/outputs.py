"""What the sans-I/O upper layer asks of the world around it.

Every entry point of :class:`~dimsekit.ul.connection.UpperLayer` returns a list
of these.  The Twisted adapter (``dimsekit.protocol``) performs the transport
outputs (:class:`Transmit`, :class:`OpenTransport`, :class:`CloseTransport`)
and hands the indications and confirmations (the primitives of PS3.8 section 7)
to the association above.  Timers are not outputs: the core keeps its own
deadlines and reports the next one through ``next_deadline()``.
"""

from __future__ import annotations

from dataclasses import dataclass

from dimsekit.ul.pdu import AssociateAC, AssociateRJ, AssociateRQ, PDataTF

__all__ = [
    "Output",
    "Transmit",
    "OpenTransport",
    "CloseTransport",
    "AssociateIndication",
    "AssociateAccepted",
    "AssociateRejected",
    "ProviderRejection",
    "PDataIndication",
    "ReleaseIndication",
    "ReleaseConfirmation",
    "AbortIndication",
    "ProviderAbortIndication",
]


@dataclass(frozen=True, slots=True)
class Transmit:
    """Write these bytes (one or more whole PDUs) to the transport."""

    data: bytes


@dataclass(frozen=True, slots=True)
class OpenTransport:
    """TRANSPORT CONNECT request (AE-1): open the connection to the peer."""


@dataclass(frozen=True, slots=True)
class CloseTransport:
    """Close the transport connection (after writing what was queued)."""


@dataclass(frozen=True, slots=True)
class AssociateIndication:
    """A-ASSOCIATE indication (AE-6): a peer asks to associate; answer with
    ``accept()`` or ``reject()``."""

    rq: AssociateRQ


@dataclass(frozen=True, slots=True)
class AssociateAccepted:
    """A-ASSOCIATE confirmation, accept (AE-3)."""

    ac: AssociateAC


@dataclass(frozen=True, slots=True)
class AssociateRejected:
    """A-ASSOCIATE confirmation, reject (AE-4)."""

    rj: AssociateRJ


@dataclass(frozen=True, slots=True)
class ProviderRejection:
    """The service-provider itself rejected an A-ASSOCIATE-RQ (AE-6, "otherwise"):
    the local user never got the indication, but should log who asked and why."""

    rq: AssociateRQ
    rj: AssociateRJ


@dataclass(frozen=True, slots=True)
class PDataIndication:
    """P-DATA indication (DT-2, AR-6): a P-DATA-TF PDU arrived."""

    pdu: PDataTF


@dataclass(frozen=True, slots=True)
class ReleaseIndication:
    """A-RELEASE indication (AR-2, AR-8): the peer asks to release; answer with
    ``release_response()``.  ``collision`` is true when we had asked too (AR-8)."""

    collision: bool = False


@dataclass(frozen=True, slots=True)
class ReleaseConfirmation:
    """A-RELEASE confirmation (AR-3, AR-10): the release we asked for is done."""


@dataclass(frozen=True, slots=True)
class AbortIndication:
    """A-ABORT indication (AA-3): the peer's service-user aborted."""

    source: int
    reason: int


@dataclass(frozen=True, slots=True)
class ProviderAbortIndication:
    """A-P-ABORT indication (AA-3, AA-4, AA-8, timeouts): the association ended
    for a reason of the service-provider (ours or the peer's); ``reason`` says
    which in words, for logs and exceptions.  ``transport_closed`` is true when
    the cause is the transport connection closing under the association (AA-4
    on Evt17)."""

    reason: str
    transport_closed: bool = False


Output = (
    Transmit
    | OpenTransport
    | CloseTransport
    | AssociateIndication
    | AssociateAccepted
    | AssociateRejected
    | ProviderRejection
    | PDataIndication
    | ReleaseIndication
    | ReleaseConfirmation
    | AbortIndication
    | ProviderAbortIndication
)
