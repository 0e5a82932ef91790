"""SOP class and transfer syntax UIDs by keyword, from pydicom's UID dictionary.

We never hand-type a UID table: :func:`by_keyword` looks the keyword up in
``pydicom.uid.UID_dictionary`` (the PS3.6 Annex A registry pydicom ships).
"""

from __future__ import annotations

from functools import cache

from pydicom.uid import UID, UID_dictionary

__all__ = ["by_keyword", "storage_sop_classes", "VERIFICATION"]


@cache
def _keyword_index() -> dict[str, str]:
    return {entry[4]: uid for uid, entry in UID_dictionary.items() if entry[4]}


def by_keyword(keyword: str) -> UID:
    """The UID registered under ``keyword`` (e.g. ``"Verification"``, ``"CTImageStorage"``).

    :raises KeyError: no such keyword in pydicom's dictionary.
    """
    return UID(_keyword_index()[keyword])


def storage_sop_classes() -> tuple[UID, ...]:
    """Every storage SOP class in pydicom's dictionary that is not retired, sorted.

    A storage SOP class is one whose keyword ends in "Storage", or in
    "StorageForPresentation"/"StorageForProcessing" (DX, MG, IO, ...);
    Storage Commitment is a service, not a storage SOP class.
    """
    suffixes = ("Storage", "StorageForPresentation", "StorageForProcessing")
    return tuple(
        sorted(
            UID(uid)
            for uid, entry in UID_dictionary.items()
            if entry[1] == "SOP Class" and entry[4].endswith(suffixes) and not entry[3]
        )
    )


#: Verification SOP Class (PS3.4 Annex A).
VERIFICATION = by_keyword("Verification")
