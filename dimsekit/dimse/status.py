"""DIMSE status codes: categories, names, and a registry per service.

Every DIMSE response carries a Status (0000,0900), a US.  PS3.7 Annex C sorts
every code into one of five *status classes* by its value alone, and names the
codes the DIMSE services share (Annex C.1 -- C.7).  Service classes (PS3.4)
then give their own meanings to codes in the ranges left to them: Axxx and
Cxxx (failure), Bxxx (warning).

This module gives three things:

* :func:`category` -- the Annex C status class of any 16-bit code;
* :class:`Status` -- one named code (or range of codes) and its class;
* :class:`StatusRegistry` -- the general codes of Annex C, plus the codes each
  service declares for itself (built-in here for C-STORE, C-FIND, C-MOVE and
  C-GET from PS3.4, and by plugins through :func:`register` for the rest).
  :func:`describe` turns a code into a log line: ``"0xA801 Refused: Move
  Destination unknown"``.

Pure data and dictionary look-ups: no I/O, importable anywhere.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from enum import Enum

__all__ = [
    "Category",
    "Status",
    "StatusRegistry",
    "category",
    "register",
    "lookup",
    "describe",
    "DEFAULT_REGISTRY",
    "SUCCESS",
    "CANCEL",
    "PENDING",
    "PENDING_WARNING",
    "PROCESSING_FAILURE",
    "NO_SUCH_SOP_CLASS",
    "SOP_CLASS_NOT_SUPPORTED",
    "NOT_AUTHORIZED",
    "DUPLICATE_INVOCATION",
    "UNRECOGNIZED_OPERATION",
    "MISTYPED_ARGUMENT",
    "RESOURCE_LIMITATION",
    "STORAGE",
    "QR_FIND",
    "QR_MOVE",
    "QR_GET",
]


class Category(Enum):
    """The five status classes of PS3.7 Annex C (table at the head of the annex)."""

    #: "the operation/notification completed successfully" (C.1): 0000.
    SUCCESS = "Success"
    #: "completed, but a deviation was detected" (C.4): 0001, Bxxx, 0107, 0116.
    WARNING = "Warning"
    #: "failed and was not performed" (C.5): Axxx, Cxxx, 01xx, 02xx.
    FAILURE = "Failure"
    #: the operation was terminated by a cancel request (C.6): FE00.
    CANCEL = "Cancel"
    #: the operation is continuing; more responses follow (C.7): FF00, FF01.
    PENDING = "Pending"

    @property
    def is_final(self) -> bool:
        """True for every class but PENDING: this response ends the operation."""
        return self is not Category.PENDING


def category(code: int) -> Category:
    """The status class of ``code`` (PS3.7 Annex C).

    The annex assigns classes by value::

        Success   0000
        Warning   0001 or Bxxx or 0107 or 0116
        Failure   Axxx or Cxxx or 01xx (except 0107 and 0116) or 02xx
        Cancel    FE00
        Pending   FF00 and FF01

    and adds "Implementations shall not use Status Codes with values not listed
    in the table above."  A code outside the table is therefore not a success
    and cannot be trusted as one: it is classed FAILURE, the safe reading.
    """
    if code == 0x0000:
        return Category.SUCCESS
    if code in (0x0001, 0x0107, 0x0116) or 0xB000 <= code <= 0xBFFF:
        return Category.WARNING
    if code == 0xFE00:
        return Category.CANCEL
    if code in (0xFF00, 0xFF01):
        return Category.PENDING
    return Category.FAILURE


_classify = category  # the registry's methods take a parameter named ``category``


@dataclass(frozen=True, slots=True)
class Status:
    """One status meaning: a code (or the range ``code..last``), its name, its class.

    ``service`` is None for the general statuses of PS3.7 Annex C and the
    service's name (``"storage"``, ``"move"``, ...) for a code a service class
    gives its own meaning (PS3.4 "Status" sections).
    """

    code: int
    name: str
    category: Category
    service: str | None = None
    #: Last code of a range such as PS3.4's "A7xx" or "Cxxx"; None = one code.
    last: int | None = None

    def covers(self, code: int) -> bool:
        """True if ``code`` is this status's code or falls in its range."""
        if self.last is None:
            return code == self.code
        return self.code <= code <= self.last

    def __str__(self) -> str:
        return f"0x{self.code:04X} {self.name}"


class StatusRegistry:
    """Named statuses: Annex C general codes plus each service's own.

    Plugins declare their codes once at start-up, e.g.::

        register(service="storage", code=0xA700, name="Refused: Out of Resources",
                 last=0xA7FF)

    A second declaration of the same (service, code) with another name is a
    start-up error (two plugins disagree); the same one again is harmless.
    Look-ups are dictionary reads, safe to do on every response.
    """

    def __init__(self) -> None:
        self._exact: dict[tuple[str | None, int], Status] = {}
        self._ranges: dict[str | None, list[Status]] = {}
        self._lock = threading.Lock()

    def register(
        self,
        service: str | None,
        code: int,
        name: str,
        category: Category | None = None,
        *,
        last: int | None = None,
    ) -> Status:
        """Declare that ``code`` (through ``last``) means ``name`` in ``service``.

        :param service: the service-class name the code belongs to, or None for
            a general (PS3.7 Annex C) code.
        :param category: defaults to the Annex C class of ``code``; give it when
            a service deliberately differs (none in PS3.4 does).
        :param last: end of a range (``0xA7FF`` for "A7xx"); omit for one code.
        :raises ValueError: codes outside 0..0xFFFF, an empty range, or a
            conflicting earlier declaration.
        """
        if not 0 <= code <= 0xFFFF or (last is not None and not code <= last <= 0xFFFF):
            raise ValueError(f"bad status code range 0x{code:04X}..{last!r}")
        status = Status(code, name, category or _classify(code), service, last)
        with self._lock:
            if last is None:
                old = self._exact.get((service, code))
                if old is not None and old != status:
                    raise ValueError(
                        f"status 0x{code:04X} of service {service!r} already declared "
                        f"as {old.name!r}, not {name!r}"
                    )
                self._exact[(service, code)] = status
            else:
                ranges = self._ranges.setdefault(service, [])
                for old in ranges:
                    if (old.code, old.last) == (code, last):
                        if old != status:
                            raise ValueError(
                                f"status range 0x{code:04X}-0x{last:04X} of service "
                                f"{service!r} already declared as {old.name!r}"
                            )
                        return old
                ranges.append(status)
                # Narrowest range first, so "A801" beats "Axxx" if both exist.
                ranges.sort(key=lambda s: (s.last or s.code) - s.code)
        return status

    def _find(self, service: str | None, code: int) -> Status | None:
        status = self._exact.get((service, code))
        if status is not None:
            return status
        for status in self._ranges.get(service, ()):
            if status.covers(code):
                return status
        return None

    def lookup(self, code: int, service: str | None = None) -> Status | None:
        """The declared meaning of ``code``: the service's own first, then Annex C.

        With ``service=None`` only the general codes are consulted, then the
        services' declarations if all that cover ``code`` agree on one name.
        Returns None for a code nobody declared.
        """
        if service is not None:
            found = self._find(service, code)
            if found is not None:
                return found
        found = self._find(None, code)
        if found is not None or service is not None:
            return found
        candidates = {
            s.name: s for svc in self._services() if (s := self._find(svc, code)) is not None
        }
        if len(candidates) == 1:
            return next(iter(candidates.values()))
        return None

    def describe(self, code: int, service: str | None = None) -> str:
        """``code`` in words, for logs and the CLI: ``"0xA801 Refused: Move ..."``.

        A code nobody declared is described by its Annex C class:
        ``"0xD123 Failure (unknown status code)"``; one that services declare
        with different meanings, asked without a service, says so.
        """
        status = self.lookup(code, service)
        if status is not None:
            return f"0x{code:04X} {status.name}"
        if service is None and self._declared_by_services(code):
            return f"0x{code:04X} {_classify(code).value} (meaning depends on the service)"
        return f"0x{code:04X} {_classify(code).value} (unknown status code)"

    def _services(self) -> set[str]:
        return {k[0] for k in self._exact if k[0] is not None} | {
            k for k in self._ranges if k is not None
        }

    def _declared_by_services(self, code: int) -> bool:
        return any(self._find(svc, code) is not None for svc in self._services())


# ---------------------------------------------------------------------------
# PS3.7 Annex C: the general status codes, shared by every DIMSE service.
# Names as the annex's section titles give them: C.1 Success, C.4 Warning,
# C.5 Failure (one subsection per code), C.6 Cancel, C.7 Pending.
# ---------------------------------------------------------------------------
SUCCESS = 0x0000  # C.1 Success
CANCEL = 0xFE00  # C.6 Cancel
PENDING = 0xFF00  # C.7 Pending
PENDING_WARNING = 0xFF01  # Pending, with a warning (PS3.4 C.4.1.1.4: optional keys)
PROCESSING_FAILURE = 0x0110
NO_SUCH_SOP_CLASS = 0x0118
SOP_CLASS_NOT_SUPPORTED = 0x0122
NOT_AUTHORIZED = 0x0124
DUPLICATE_INVOCATION = 0x0210
UNRECOGNIZED_OPERATION = 0x0211
MISTYPED_ARGUMENT = 0x0212
RESOURCE_LIMITATION = 0x0213

_GENERAL: tuple[tuple[int, str], ...] = (
    (0x0000, "Success"),  # C.1
    # C.4 Warning status class
    (0x0001, "Requested optional Attributes are not supported"),  # PS3.4 N-GET tables
    (0x0107, "Attribute List Error"),
    (0x0116, "Attribute Value Out of Range"),
    # C.5 Failure status class
    (0x0105, "No Such Attribute"),
    (0x0106, "Invalid Attribute Value"),
    (0x0110, "Processing Failure"),
    (0x0111, "Duplicate SOP Instance"),
    (0x0112, "No Such SOP Instance"),
    (0x0113, "No Such Event Type"),
    (0x0114, "No Such Argument"),
    (0x0115, "Invalid Argument Value"),
    (0x0117, "Invalid Object Instance"),
    (0x0118, "No Such SOP Class"),
    (0x0119, "Class-Instance Conflict"),
    (0x0120, "Missing Attribute"),
    (0x0121, "Missing Attribute Value"),
    (0x0122, "Refused: SOP Class Not Supported"),
    (0x0123, "No Such Action"),
    (0x0124, "Refused: Not Authorized"),
    (0x0210, "Duplicate Invocation"),
    (0x0211, "Unrecognized Operation"),
    (0x0212, "Mistyped Argument"),
    (0x0213, "Resource Limitation"),
    # C.6 Cancel, C.7 Pending
    (0xFE00, "Cancel"),
    (0xFF00, "Pending"),
    (0xFF01, "Pending: Warning"),  # C.7 (FF01; meaning refined by the service)
)

# ---------------------------------------------------------------------------
# PS3.4 service-specific codes for the services the CLI speaks.  Names of the
# services as plugins use them; (code, last-or-None, "Further Meaning").
# ---------------------------------------------------------------------------
STORAGE = "storage"
QR_FIND = "find"
QR_MOVE = "move"
QR_GET = "get"

_SERVICE: dict[str, tuple[tuple[int, int | None, str], ...]] = {
    # PS3.4 B.2.3, Table B.2-1: C-STORE Status
    STORAGE: (
        (0xA700, 0xA7FF, "Refused: Out of Resources"),
        (0xA900, 0xA9FF, "Error: Data Set does not match SOP Class"),
        (0xC000, 0xCFFF, "Error: Cannot understand"),
        (0xB000, None, "Warning: Coercion of Data Elements"),
        (0xB007, None, "Warning: Data Set does not match SOP Class"),
        (0xB006, None, "Warning: Elements Discarded"),
    ),
    # PS3.4 C.4.1.1.4, Table C.4-1: C-FIND Response Status Values
    QR_FIND: (
        (0xA700, None, "Refused: Out of Resources"),
        (0xA900, None, "Identifier does not match SOP Class"),
        (0xC000, 0xCFFF, "Unable to process"),
        (0xFE00, None, "Matching terminated due to Cancel request"),
        (0x0000, None, "Matching is complete - No final Identifier is supplied"),
        (0xFF00, None, "Matches are continuing - Current Match is supplied"),
        (
            0xFF01,
            None,
            "Matches are continuing - Warning that one or more Optional Keys were "
            "not supported for existence and/or matching for this Identifier",
        ),
    ),
    # PS3.4 C.4.2.1.5, Table C.4-2: C-MOVE Response Status Values
    QR_MOVE: (
        (0xA701, None, "Refused: Out of Resources - Unable to calculate number of matches"),
        (0xA702, None, "Refused: Out of Resources - Unable to perform sub-operations"),
        (0xA801, None, "Refused: Move Destination unknown"),
        (0xA900, None, "Identifier does not match SOP Class"),
        (0xC000, 0xCFFF, "Unable to process"),
        (0xFE00, None, "Sub-operations terminated due to Cancel Indication"),
        (0xB000, None, "Sub-operations Complete - One or more Failures"),
        (0x0000, None, "Sub-operations Complete - No Failures"),
        (0xFF00, None, "Sub-operations are continuing"),
    ),
    # PS3.4 C.4.3.1.4, Table C.4-3: C-GET Response Status Values
    QR_GET: (
        (0xA701, None, "Refused: Out of Resources - Unable to calculate number of matches"),
        (0xA702, None, "Refused: Out of Resources - Unable to perform sub-operations"),
        (0xA900, None, "Identifier does not match SOP Class"),
        (0xC000, 0xCFFF, "Unable to process"),
        (0xFE00, None, "Sub-operations terminated due to Cancel Indication"),
        (0xB000, None, "Sub-operations Complete - One or more Failures or Warnings"),
        (0x0000, None, "Sub-operations Complete - No Failures or Warnings"),
        (0xFF00, None, "Sub-operations are continuing"),
    ),
}


def _builtin_registry() -> StatusRegistry:
    registry = StatusRegistry()
    for code, name in _GENERAL:
        registry.register(None, code, name)
    for service, entries in _SERVICE.items():
        for code, last, name in entries:
            registry.register(service, code, name, last=last)
    return registry


#: The process-wide registry: Annex C and the PS3.4 codes above, plus whatever
#: plugins declare at start-up through :func:`register`.
DEFAULT_REGISTRY = _builtin_registry()


def register(
    service: str | None,
    code: int,
    name: str,
    category: Category | None = None,
    *,
    last: int | None = None,
) -> Status:
    """Declare a service's status code in :data:`DEFAULT_REGISTRY` (see
    :meth:`StatusRegistry.register`)."""
    return DEFAULT_REGISTRY.register(service, code, name, category, last=last)


def lookup(code: int, service: str | None = None) -> Status | None:
    """The declared :class:`Status` for ``code`` in :data:`DEFAULT_REGISTRY`, or None."""
    return DEFAULT_REGISTRY.lookup(code, service)


def describe(code: int, service: str | None = None) -> str:
    """``code`` in words for a log line, e.g. ``describe(0xA801, "move")`` gives
    ``"0xA801 Refused: Move Destination unknown"`` (PS3.7 Annex C, PS3.4)."""
    return DEFAULT_REGISTRY.describe(code, service)
