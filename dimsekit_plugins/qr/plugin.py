"""Query/Retrieve Service Class (PS3.4 Annex C) as a plugin: C-FIND, C-GET, C-MOVE over the archive.

SOP classes, SCP role: Patient Root and Study Root Query/Retrieve
Information Model -- FIND, MOVE and GET.  The index read is the built-in
archive's SQLite index (found through the ``dimsekit_archive`` hook; the
archive must expose ``root``, where ``index.sqlite`` lives).

* C-FIND: :mod:`dimsekit_plugins.qr.find` (matching rules:
  :mod:`dimsekit_plugins.qr.matching`; keys per level:
  :mod:`dimsekit_plugins.qr.model`).
* C-MOVE and C-GET: :mod:`dimsekit_plugins.qr.retrieve`.  For C-GET the
  node must be able to act as SCU of the storage SOP classes on the
  requestor's association: this plugin declares every storage SOP class in
  the SCU role (no SCP claim, so the storage plugin keeps its own), which
  makes negotiation accept a requestor's SCP role proposal for them.

Extended negotiation: for FIND, combined date-time matching is accepted when
proposed (:func:`~dimsekit_plugins.qr.find.answer_extended_negotiation`);
relational queries, fuzzy semantic matching of person names and timezone
query adjustment are refused (0).  For MOVE and GET every option (relational
retrieval, enhanced multi-frame image conversion) is refused: the same
number of bytes back, all 0 (PS3.4 C.5.1.1, C.5.2.1, C.5.3.1).

Settings (``[plugins.queryretrieve]``)::

    batch_size = 256         # index rows fetched per thread-pool call while streaming C-FIND matches
    pending_interval = 0.1   # seconds at least between two C-MOVE/C-GET pending responses (0: one
                             # after every sub-operation, for a requestor that shows only those)
"""

from __future__ import annotations

from collections.abc import Mapping

from dimsekit.config import Config, ConfigError
from dimsekit.hookspecs import hookimpl
from dimsekit.registry import ServiceClass
from dimsekit.scu import (
    PATIENT_ROOT_FIND,
    PATIENT_ROOT_GET,
    PATIENT_ROOT_MOVE,
    STUDY_ROOT_FIND,
    STUDY_ROOT_GET,
    STUDY_ROOT_MOVE,
)
from dimsekit.uids import storage_sop_classes
from dimsekit_plugins.qr import find, retrieve
from dimsekit_plugins.qr.find import answer_extended_negotiation, handle_find
from dimsekit_plugins.qr.retrieve import handle_get, handle_move

__all__ = ["refuse_extended_negotiation", "SECTION", "DEFAULT_BATCH_SIZE", "DEFAULT_PENDING_INTERVAL"]

SECTION = "queryretrieve"
DEFAULT_BATCH_SIZE = 256
DEFAULT_PENDING_INTERVAL = 0.1
_KEYS = ("batch_size", "pending_interval")

#: transfer syntaxes offered for the storage contexts of C-GET sub-operations when no
#: storage plugin declares those SOP classes (it otherwise decides): uncompressed first,
#: then the compressed ones files are commonly stored in.
_GET_STORAGE_SYNTAXES = (
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.5",
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.2",
)


def refuse_extended_negotiation(info: bytes) -> bytes | None:
    """Answer SOP Class Extended Negotiation: every option proposed is refused (all bytes 0)."""
    if not info:
        return None
    return bytes(len(info))


def _settings(config: Config) -> tuple[int, float]:
    section = config.plugins.get(SECTION, {})
    if not isinstance(section, Mapping):
        raise ConfigError(f"plugins.{SECTION}: write it as a [plugins.{SECTION}] table")
    for key in section:
        if key not in _KEYS:
            raise ConfigError(
                f"plugins.{SECTION}.{key}: unknown key; the keys of [plugins.{SECTION}] are: {', '.join(_KEYS)}"
            )
    value = section.get("batch_size", DEFAULT_BATCH_SIZE)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100_000:
        raise ConfigError(f"plugins.{SECTION}.batch_size: give a number of rows from 1 to 100000, not {value!r}")
    interval = section.get("pending_interval", DEFAULT_PENDING_INTERVAL)
    if isinstance(interval, bool) or not isinstance(interval, int | float) or not 0 <= interval <= 60:
        raise ConfigError(f"plugins.{SECTION}.pending_interval: give seconds from 0 to 60, not {interval!r}")
    return value, float(interval)


@hookimpl
def dimsekit_configure(config: Config) -> None:
    """Check ``[plugins.queryretrieve]``."""
    find.batch_size, retrieve.PENDING_INTERVAL = _settings(config)


@hookimpl
def dimsekit_service_classes() -> list[ServiceClass]:
    """FIND, MOVE and GET of both models (SCP); the storage SOP classes in the SCU role (for C-GET)."""
    find_classes = (str(PATIENT_ROOT_FIND), str(STUDY_ROOT_FIND))
    move_classes = (str(PATIENT_ROOT_MOVE), str(STUDY_ROOT_MOVE))
    get_classes = (str(PATIENT_ROOT_GET), str(STUDY_ROOT_GET))
    return [
        ServiceClass(name="query/retrieve find", sop_classes=find_classes,
                     handlers={"C-FIND": handle_find}, extended_negotiation=answer_extended_negotiation),
        ServiceClass(name="query/retrieve move", sop_classes=move_classes,
                     handlers={"C-MOVE": handle_move}, extended_negotiation=refuse_extended_negotiation),
        ServiceClass(name="query/retrieve get", sop_classes=get_classes,
                     handlers={"C-GET": handle_get}, extended_negotiation=refuse_extended_negotiation),
        ServiceClass(name="query/retrieve get (storage sub-operations)",
                     sop_classes=tuple(str(uid) for uid in storage_sop_classes()),
                     transfer_syntaxes=_GET_STORAGE_SYNTAXES, scp_role=False, scu_role=True),
    ]
