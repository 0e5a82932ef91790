"""Storage Service Class (PS3.4 Annex B) as a plugin: a C-STORE SCP that keeps what it receives.

Every storage SOP class in pydicom's UID dictionary is accepted
(:func:`dimsekit.uids.storage_sop_classes`), with the transfer syntaxes of
``[plugins.storage] transfer_syntaxes`` (default :data:`DEFAULT_TRANSFER_SYNTAXES`:
the uncompressed ones, the common compressed ones, HTJ2K and video).  Instances are stored
as received -- never decompressed or re-encoded.

How a C-STORE flows: when its command set is complete, the sink factory asks
the archive (the ``dimsekit_archive`` hook, so any backend) for an incoming
instance, and the data set streams into it as it arrives.  When the whole
message is in, the handler commits it and answers once the archive says the
instance is durable (the built-in archive indexes it right after, before any
read of its index gets through); then ``dimsekit_on_instance_stored`` tells
the other plugins (forwarders, routers).

Statuses (PS3.4 B.2.3 Table B.2-1 and the general codes of PS3.7 Annex C):

=========  =====================================================================
0000H      Success: durable (also a duplicate kept by ``duplicates = "first"``)
A700H      Refused: Out of Resources -- free space below ``min_free_mb`` (refused
           before anything is written), disk full, an I/O error, no archive, shutting down
A900H      Error: Data Set does not match SOP Class -- the data set's SOP Class or
           SOP Instance UID is not the command's, or it lacks a usable Study or
           Series Instance UID (Offending Element names the attribute)
C000H      Error: Cannot understand -- the data set cannot be parsed, or it is cut
           short: a value runs past its end, or an undefined-length sequence has
           no delimiter (:mod:`dimsekit.framing`; Error Comment says where); or its
           Pixel Data is encapsulated in an uncompressed transfer syntax, or its first
           fragment is plainly of another codec than the transfer syntax's (PS3.5 A.4)
0117H      Invalid SOP Instance -- the Affected SOP Instance UID is not a UID
           (refused before anything is written; nothing becomes a path)
0122H      Refused: SOP Class Not Supported -- the Affected SOP Class UID is not the
           abstract syntax of the presentation context the request came on (PS3.7
           D.3.2: each SOP class is used on a context negotiated for it); refused
           before anything is written
0111H      Duplicate SOP Instance -- stored already and ``duplicates = "reject"``
0110H      Processing failure -- anything unexpected (logged with its traceback)
=========  =====================================================================

Why 0111H and not a warning for a rejected duplicate: a warning status is a
*successful* completion (PS3.4 B.2.2: success means the instance is stored),
so it must not be used for an instance that was thrown away; PS3.4 B.2.3 has
no duplicate code, and 0111H "Duplicate SOP Instance" is PS3.7 Annex C's
failure code for exactly this.  The storage warnings (B000H coercion, B007H
data set does not match SOP class, B006H elements discarded) are never sent:
this SCP stores every instance byte for byte (Storage Level 2, no coercion)
and refuses rather than stores what does not match.

Settings (``[plugins.storage]``)::

    transfer_syntaxes = ["1.2.840.10008.1.2.1", "JPEGBaseline8Bit", ...]  # UIDs or pydicom keywords
    duplicates = "newest"     # "newest" | "first" | "reject"   (read by the archive)
    min_free_mb = 100         # refuse below this much free disk (read by the archive)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from weakref import WeakKeyDictionary

from pydicom import uid as pydicom_uid
from pydicom.uid import UID
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from dimsekit.config import Config, ConfigError
from dimsekit.errors import for_log
from dimsekit.hookspecs import hookimpl
from dimsekit.plugin import notify
from dimsekit.registry import ServiceClass
from dimsekit.uids import by_keyword, storage_sop_classes
from dimsekit_plugins.archive.settings import check_storage_keys

__all__ = [
    "DEFAULT_TRANSFER_SYNTAXES",
    "StorageSettings",
    "settings_from_config",
    "archive_for",
    "status_for",
    "NoArchive",
]

_log = Logger(namespace="dimsekit.storage")

#: Accepted by default, in order of preference when a context proposes several:
#: uncompressed first, then lossless compressed, then lossy (we never make a
#: sender compress lossily to suit us), then the rarer uncompressed ones.
DEFAULT_TRANSFER_SYNTAXES: tuple[str, ...] = tuple(
    str(uid)
    for uid in (
        pydicom_uid.ExplicitVRLittleEndian,
        pydicom_uid.ImplicitVRLittleEndian,
        pydicom_uid.JPEGLSLossless,
        pydicom_uid.JPEG2000Lossless,
        pydicom_uid.HTJ2KLossless,
        pydicom_uid.HTJ2KLosslessRPCL,
        pydicom_uid.JPEGLosslessSV1,
        pydicom_uid.JPEGLossless,
        pydicom_uid.RLELossless,
        pydicom_uid.JPEGBaseline8Bit,
        pydicom_uid.JPEGExtended12Bit,
        pydicom_uid.JPEGLSNearLossless,
        pydicom_uid.JPEG2000,
        pydicom_uid.HTJ2K,
        pydicom_uid.DeflatedExplicitVRLittleEndian,
        pydicom_uid.ExplicitVRBigEndian,
        # video (endoscopy, ultrasound clips): stored as received, as every syntax here
        *pydicom_uid.MPEGTransferSyntaxes,
    )
)

_OWN_KEYS = ("transfer_syntaxes",)


class NoArchive(Exception):
    """No plugin provides an archive (status A700H)."""

    status = 0xA700


class _NotThisContext(Exception):
    """A C-STORE-RQ for a SOP class on another SOP class's presentation context (status 0122H)."""

    status = 0x0122


@dataclass(frozen=True, slots=True)
class StorageSettings:
    """``[plugins.storage]`` as the storage plugin uses it."""

    transfer_syntaxes: tuple[str, ...] = DEFAULT_TRANSFER_SYNTAXES


def settings_from_config(config: Config) -> StorageSettings:
    """Read and check ``[plugins.storage]`` (:class:`ConfigError` names the key and the fix)."""
    section = config.plugins.get("storage", {})
    if not isinstance(section, Mapping):
        raise ConfigError("plugins.storage: write it as a [plugins.storage] table")
    check_storage_keys(section, allowed_extra=_OWN_KEYS)
    if "transfer_syntaxes" not in section:
        return StorageSettings()
    value = section["transfer_syntaxes"]
    if not isinstance(value, list) or not value:
        raise ConfigError(
            "plugins.storage.transfer_syntaxes: give a non-empty list of transfer syntax UIDs "
            "or pydicom keywords, e.g. [\"1.2.840.10008.1.2.1\", \"JPEGBaseline8Bit\"]"
        )
    syntaxes: list[str] = []
    for entry in value:
        uid = _transfer_syntax(entry)
        if uid not in syntaxes:
            syntaxes.append(uid)
    return StorageSettings(transfer_syntaxes=tuple(syntaxes))


def _transfer_syntax(entry: object) -> str:
    key = "plugins.storage.transfer_syntaxes"
    if not isinstance(entry, str) or not entry.strip():
        raise ConfigError(f"{key}: {entry!r} is not a transfer syntax UID or keyword")
    text = entry.strip()
    if not text[0].isdigit():
        try:
            text = str(by_keyword(text))
        except KeyError:
            raise ConfigError(f"{key}: {entry!r} is not a pydicom transfer syntax keyword (e.g. JPEGBaseline8Bit)") from None
    if not UID(text).is_transfer_syntax:
        raise ConfigError(f"{key}: {entry!r} is not a transfer syntax pydicom knows")
    return text


# -- plugin state ---------------------------------------------------------------------------

#: settings of the node configured last (dimsekit_configure runs right before
#: dimsekit_service_classes, in the same ApplicationEntity constructor)
_settings = StorageSettings()
#: ApplicationEntity -> its archive
_archives: WeakKeyDictionary[Any, Any] = WeakKeyDictionary()
#: Association -> its per-association bookkeeping
_associations: WeakKeyDictionary[Any, _Tally] = WeakKeyDictionary()


class _Tally:
    """Per association: instances received but not yet handed to the handler, and counts."""

    __slots__ = ("waiting", "stored", "failed", "bytes")

    def __init__(self) -> None:
        self.waiting: set[Any] = set()
        self.stored = 0
        self.failed = 0
        self.bytes = 0


def _tally(association: Any) -> _Tally:
    tally = _associations.get(association)
    if tally is None:
        tally = _associations[association] = _Tally()
    return tally


def archive_for(ae: Any) -> Any:
    """The archive an application entity stores into (asked of the plugins once per AE).

    :raises NoArchive: no plugin provides one.
    """
    archive = _archives.get(ae)
    if archive is None or getattr(archive, "closed", False):
        archive = ae.pm.hook.dimsekit_archive(config=ae.config)
        if archive is None:
            raise NoArchive("no archive: no plugin provides one (dimsekit_archive)")
        _archives[ae] = archive
    return archive


# -- statuses -------------------------------------------------------------------------------------


def status_for(error: BaseException) -> tuple[int, dict[str, Any]]:
    """The C-STORE status and response fields (Error Comment, Offending Element) for an error.

    An error with an int ``status`` attribute (every archive error, or a
    third-party backend's) is answered with it; an OSError with A700H
    (out of resources); anything else with 0110H (processing failure).
    """
    status = getattr(error, "status", None)
    if not isinstance(status, int) or isinstance(status, bool) or not 0 < status <= 0xFFFF:
        status = 0xA700 if isinstance(error, OSError) else 0x0110
    fields: dict[str, Any] = {"ErrorComment": str(error) or type(error).__name__}
    offending = tuple(getattr(error, "offending", ()) or ())
    # PS3.4 B.2.3: Offending Element goes with A9xx and Cxxx (not with A7xx).
    if offending and (0xA900 <= status <= 0xA9FF or 0xC000 <= status <= 0xCFFF):
        fields["OffendingElement"] = list(offending)
    return status, fields


# -- the C-STORE path ---------------------------------------------------------------------------------


def open_sink(request: Any) -> Any:
    """Sink factory for C-STORE: the archive's incoming instance for this request.

    Raises (the data set is then discarded, the handler answers) when the
    request is refused before writing: its SOP class is not its context's,
    or the archive refuses (bad UID, below the disk floor, no archive).
    """
    association = request.association
    if request.sop_class_uid != request.context.abstract_syntax:
        raise _NotThisContext("Affected SOP Class UID is not its context's abstract syntax")
    archive = archive_for(association.ae)
    incoming = archive.receive(
        request.sop_class_uid,
        request.sop_instance_uid,
        request.context.transfer_syntax,
        association.remote_ae_title or None,
    )
    _tally(association).waiting.add(incoming)
    return incoming


def handle_store(request: Any) -> Any:
    """C-STORE: commit what arrived and answer once it is durable (or why it is not)."""
    association = request.association
    tally = _tally(association)
    if request.sink_error is not None:
        tally.failed += 1
        return _refused(request, request.sink_error)
    incoming = request.sink
    tally.waiting.discard(incoming)
    if incoming is None or not callable(getattr(incoming, "commit", None)):
        tally.failed += 1
        _log.error("C-STORE {uid}: its data set did not go to the archive", uid=request.sop_instance_uid)
        return 0x0110, None, {"ErrorComment": "the data set did not reach the archive"}

    def stored(instance: Any) -> int:
        tally.stored += 1
        tally.bytes += int(getattr(incoming, "size", 0) or 0)
        if not getattr(instance, "duplicate_discarded", False):
            # each forwarder gets it, whichever of them fails (each failure is logged)
            pm = association.ae.pm
            notify(pm, pm.hook.dimsekit_on_instance_stored, instance=instance)
        return 0x0000

    def failed(failure: Failure) -> tuple[int, None, dict[str, Any]]:
        tally.failed += 1
        return _refused(request, failure.value, failure)

    d = incoming.commit()
    d.addCallbacks(stored, failed)
    # The answer goes out when the commit is done.  If the association ends
    # first (the runner cancels what it waits for), the commit still finishes:
    # the data set arrived whole, so it is kept, and the hook still fires.
    answer: Deferred = Deferred()

    def relay(result: object) -> None:
        if not answer.called:
            if isinstance(result, Failure):
                answer.errback(result)
            else:
                answer.callback(result)

    d.addBoth(relay)
    return answer


def _refused(request: Any, error: BaseException, failure: Failure | None = None) -> tuple[int, None, dict[str, Any]]:
    status, fields = status_for(error)
    if status == 0x0110:
        _log.failure("C-STORE {uid} failed unexpectedly", failure or Failure(error), uid=request.sop_instance_uid)
    else:
        _log.warn(
            "C-STORE {uid} from {ae} refused with 0x{status:04X}: {error}",
            uid=request.sop_instance_uid, ae=request.association.remote_ae_title, status=status, error=for_log(error),
        )
    return status, None, fields


def _association_ended(association: Any) -> None:
    tally = _associations.pop(association, None)
    if tally is None:
        return
    for incoming in list(tally.waiting):  # received whole but never handled (the runner dropped them)
        incoming.abort()
    if tally.stored or tally.failed:
        _log.info(
            "storage: {ae} sent {n} instance(s), {mb:.1f} MB, {failed} refused",
            ae=association.remote_ae_title or "-", n=tally.stored, mb=tally.bytes / 1e6, failed=tally.failed,
        )


# -- hooks ----------------------------------------------------------------------------------------------


@hookimpl
def dimsekit_configure(config: Config) -> None:
    """Check ``[plugins.storage]`` and keep the transfer syntaxes for the service class."""
    global _settings
    _settings = settings_from_config(config)


@hookimpl
def dimsekit_on_node_started(ae: Any) -> None:
    """Open the archive as the node starts, so it reconciles files and index
    (after a crash) before the first association rather than on the first C-STORE."""
    try:
        archive_for(ae)
    except NoArchive:
        _log.warn("no archive: this node will refuse C-STORE (0xA700)")


@hookimpl
def dimsekit_service_classes() -> list[ServiceClass]:
    """Declare every storage SOP class, SCP role, with a C-STORE handler and sink factory."""
    return [
        ServiceClass(
            name="storage",
            sop_classes=tuple(str(uid) for uid in storage_sop_classes()),
            handlers={"C-STORE": handle_store},
            transfer_syntaxes=_settings.transfer_syntaxes,
            sink_factories={"C-STORE": open_sink},
        )
    ]


@hookimpl
def dimsekit_on_association_released(association: Any) -> None:
    """Drop instances the association delivered but that were never handled; log its tally."""
    _association_ended(association)


@hookimpl
def dimsekit_on_association_aborted(association: Any, reason: str) -> None:
    """As for a release."""
    _association_ended(association)
