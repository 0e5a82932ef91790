"""Why the archive refused or failed to store an instance, each with its C-STORE status.

Every error carries ``status``: the C-STORE response status the storage
plugin answers with (PS3.4 B.2.3 Table B.2-1, PS3.7 Annex C), and may carry
``offending``: the data element tags to name in Offending Element (0000,0901).
Another archive backend can raise its own exceptions with the same two
attributes; the storage plugin reads only them.
"""

from __future__ import annotations

from dimsekit.errors import DimsekitError

__all__ = [
    "ArchiveError",
    "InvalidUID",
    "OutOfResources",
    "DatasetMismatch",
    "CannotUnderstand",
    "DuplicateRejected",
    "STATUS_OUT_OF_RESOURCES",
    "STATUS_DATASET_MISMATCH",
    "STATUS_CANNOT_UNDERSTAND",
    "STATUS_INVALID_SOP_INSTANCE",
    "STATUS_DUPLICATE_SOP_INSTANCE",
]

#: PS3.4 B.2.3: Refused: Out of Resources (A7xx).
STATUS_OUT_OF_RESOURCES = 0xA700
#: PS3.4 B.2.3: Error: Data Set does not match SOP Class (A9xx).
STATUS_DATASET_MISMATCH = 0xA900
#: PS3.4 B.2.3: Error: Cannot understand (Cxxx).
STATUS_CANNOT_UNDERSTAND = 0xC000
#: PS3.7 Annex C: Invalid SOP Instance (0117H), one of the general C-STORE failures.
STATUS_INVALID_SOP_INSTANCE = 0x0117
#: PS3.7 Annex C: Duplicate SOP Instance (0111H).
STATUS_DUPLICATE_SOP_INSTANCE = 0x0111


class ArchiveError(DimsekitError):
    """The archive could not store an instance.

    :param message: what went wrong, in words (goes into Error Comment, cut to 64 characters).
    :param status: the C-STORE status to answer with.
    :param offending: tags for Offending Element, if any.
    """

    status = STATUS_OUT_OF_RESOURCES

    def __init__(self, message: str, *, status: int | None = None, offending: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
        self.offending = tuple(offending)


class InvalidUID(ArchiveError):
    """A UID that is not digits and dots (at most 64 characters, no empty component).

    Refused before it becomes part of any path.
    """

    status = STATUS_INVALID_SOP_INSTANCE


class OutOfResources(ArchiveError):
    """Below the free-space floor, disk full, or the archive cannot write."""

    status = STATUS_OUT_OF_RESOURCES


class DatasetMismatch(ArchiveError):
    """The data set contradicts its C-STORE-RQ (SOP Class/Instance UID) or lacks what
    every composite instance has (Study/Series Instance UID)."""

    status = STATUS_DATASET_MISMATCH


class CannotUnderstand(ArchiveError):
    """The data set cannot be parsed in the transfer syntax of its presentation context."""

    status = STATUS_CANNOT_UNDERSTAND


class DuplicateRejected(ArchiveError):
    """The SOP Instance is already stored and the duplicates policy is ``reject``."""

    status = STATUS_DUPLICATE_SOP_INSTANCE
