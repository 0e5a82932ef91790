"""Retrieve instances with C-GET into a folder, like DCMTK getscu.

    dimsekit get HOST PORT -aec PACS -k StudyInstanceUID=1.2.3 --out-dir study/
    dimsekit get HOST PORT -P -k PatientID=12345 -k QueryRetrieveLevel=PATIENT

The peer sends the instances back on the same association as C-STORE
sub-operations; each is written, unparsed, as a DICOM Part 10 file
DIR/<SOP Instance UID>.dcm (--out-dir, default the current directory).
Storage presentation contexts are proposed with the SCP role (role
selection) for the common storage SOP classes, up to the 127 that fit beside
the C-GET context, in the uncompressed and the usual compressed transfer
syntaxes.

The peer takes one transfer syntax per context (PS3.8), usually an
uncompressed one, so a peer that does not transcode (DCMTK dcmqrscp,
pynetdicom qrscp; a dimsekit node for lossy syntaxes, unless its ``[node]
decompress`` is "lossy") fails the sub-operation of an instance it holds
compressed.  When sub-operations failed, the tool asks again for those
instances (not with --no-retry-compressed): a C-FIND at IMAGE level, on a
new association, for the SOP Instance UIDs the final response listed (none
listed: the instances of the request not received) learns their SOP Class
UID and Available Transfer Syntax UID (0008,3002); then a new association
proposes per SOP class the uncompressed syntaxes plus one context per syntax
the instances are available in -- per usual compressed syntax when the peer
does not say; when it does not say the SOP class either, the classes
received and the common image classes in each compressed syntax -- at most
127 per association (more associations when needed), and a C-GET at IMAGE
level per series asks for them by SOP Instance UID (a list of up to 200; a
peer refusing a list is asked one UID per request).  What comes counts as
completed; the rest stays failed.  A peer that accepts no context in those
syntaxes (DCMTK dcmqrscp unless configured to) fails them again.

Information model: -S / --model study (default), -P / --model patient.
Keys: -k and -f as for ``dimsekit find``; QueryRetrieveLevel, when not
given, is the level of the deepest unique key given a value
(SOPInstanceUID: IMAGE, SeriesInstanceUID: SERIES, StudyInstanceUID: STUDY,
PatientID with -P: PATIENT).

Progress (completed/remaining/failed/warning, files and megabytes) on stderr
when it is a terminal; then a summary on stdout (-q: none) with the Failed
SOP Instance UID List if any (after a retry: the counts and list of both,
and the status a C-GET of them all would have ended with).  Exit status 0
when every sub-operation succeeded, on the retry if not at first (warnings
included); 1 when any failed, on a failure or Cancel status (named),
rejection, abort, timeout or a refused connection; 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID, UID_dictionary
from twisted.internet import defer, threads
from twisted.python.failure import Failure

import dimsekit
from dimsekit.cli import add_common_arguments, add_total_timeout_argument
from dimsekit.cli._keys import BadKey, set_character_set
from dimsekit.cli._scu import describe_failure, end_cleanly
from dimsekit.cli.find import (
    MODELS,
    add_key_options,
    add_model_options,
    make_scu_ae,
    model_of,
    quiet_pydicom,
    response_problem,
    retrieve_identifier,
)
from dimsekit.datasets import defect_in_file, values_of
from dimsekit.dimse.fragments import SPOOL_WRITE_BLOCK, write_chunks
from dimsekit.dimse.status import QR_FIND, QR_GET, Category, category, describe
from dimsekit.operations import Response
from dimsekit.registry import UNCOMPRESSED_TRANSFER_SYNTAXES
from dimsekit.scu import PATIENT_ROOT_FIND, STUDY_ROOT_FIND
from dimsekit.uids import by_keyword, storage_sop_classes

__all__ = [
    "add_arguments",
    "run",
    "RETRIEVE_TRANSFER_SYNTAXES",
    "all_storage_sop_classes",
    "storage_contexts",
    "Receiver",
    "Progress",
    "part10_header",
    "retrieve_outcome",
    "failed_uid_list",
    "COMPRESSED_TRANSFER_SYNTAXES",
    "FailedInstance",
    "RetryBatch",
    "guess_classes",
    "contexts_needed",
    "plan_retry",
    "describe_identifiers",
    "failed_instance",
    "retry_identifiers",
    "should_retry",
    "merged_final",
]

#: the usual compressed syntaxes; on the retry, each a context of its own for an
#: instance whose syntax the peer did not say
COMPRESSED_TRANSFER_SYNTAXES: tuple[str, ...] = (
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51",  # JPEG Extended
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE Lossless
)

#: what a storage context for received instances proposes/accepts: uncompressed
#: first, then the usual compressed syntaxes and HTJ2K (files are written as received)
RETRIEVE_TRANSFER_SYNTAXES: tuple[str, ...] = UNCOMPRESSED_TRANSFER_SYNTAXES + COMPRESSED_TRANSFER_SYNTAXES + (
    "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203",  # HTJ2K
)

#: proposed first, in this order, when not every storage SOP class fits
_COMMON = (
    "CTImageStorage", "MRImageStorage", "ComputedRadiographyImageStorage",
    "DigitalXRayImageStorageForPresentation", "DigitalXRayImageStorageForProcessing",
    "DigitalMammographyXRayImageStorageForPresentation", "DigitalMammographyXRayImageStorageForProcessing",
    "UltrasoundImageStorage", "UltrasoundMultiFrameImageStorage", "SecondaryCaptureImageStorage",
    "MultiFrameGrayscaleByteSecondaryCaptureImageStorage", "MultiFrameGrayscaleWordSecondaryCaptureImageStorage",
    "MultiFrameTrueColorSecondaryCaptureImageStorage", "MultiFrameSingleBitSecondaryCaptureImageStorage",
    "NuclearMedicineImageStorage", "PositronEmissionTomographyImageStorage", "EnhancedPETImageStorage",
    "EnhancedCTImageStorage", "EnhancedMRImageStorage", "XRayAngiographicImageStorage",
    "EnhancedXAImageStorage", "XRayRadiofluoroscopicImageStorage", "BreastTomosynthesisImageStorage",
    "RTImageStorage", "RTDoseStorage", "RTStructureSetStorage", "RTPlanStorage", "RTIonPlanStorage",
    "RTBeamsTreatmentRecordStorage", "BasicTextSRStorage", "EnhancedSRStorage", "ComprehensiveSRStorage",
    "KeyObjectSelectionDocumentStorage", "XRayRadiationDoseSRStorage", "GrayscaleSoftcopyPresentationStateStorage",
    "EncapsulatedPDFStorage", "VLPhotographicImageStorage", "SegmentationStorage", "RawDataStorage",
    "DigitalIntraOralXRayImageStorageForPresentation", "SpatialRegistrationStorage",
)

#: contexts IDs are 1..255, odd: 128 contexts, one of them for the C-GET itself
MAX_STORAGE_CONTEXTS = 127


def all_storage_sop_classes() -> tuple[str, ...]:
    """Every storage SOP class pydicom knows (``...Storage`` and ``...StorageFor...``), no DICOMDIR."""
    found = set(storage_sop_classes())
    for uid, entry in UID_dictionary.items():
        if entry[1] == "SOP Class" and "ImageStorageFor" in entry[4] and not entry[3]:
            found.add(uid)
    found.discard("1.2.840.10008.1.3.10")  # Media Storage Directory Storage
    return tuple(sorted(found))


def storage_contexts(limit: int = MAX_STORAGE_CONTEXTS) -> list[str]:
    """Storage SOP classes to propose: the common ones first, then the rest, ``limit`` in all."""
    ordered: dict[str, None] = {}
    for keyword in _COMMON:
        try:
            ordered[str(by_keyword(keyword))] = None
        except KeyError:
            continue
    for uid in all_storage_sop_classes():
        ordered.setdefault(str(uid))
    return list(ordered)[:limit]


def part10_header(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, source_ae: str = "") -> bytes:
    """Preamble, ``DICM`` and File Meta Information (PS3.10 7.1) for a received data set."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = UID(dimsekit.IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = dimsekit.IMPLEMENTATION_VERSION_NAME
    if source_ae:
        meta.SourceApplicationEntityTitle = source_ae
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = False
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return b"\x00" * 128 + b"DICM" + buffer.getvalue()


def _is_uid(text: str) -> bool:
    parts = text.split(".")
    return 0 < len(text) <= 64 and all(p.isdigit() for p in parts)


class PartFileSink:
    """Where a C-GET's instance goes as it arrives: its Part 10 file, File Meta Information
    first, under a temporary name in the same directory (``.<name>.part``) until
    :meth:`finish` renames it.  Fragments are written 256 KiB at a time (one ``writev``),
    in the page cache: no copy of the data set in memory, none in a spool file.
    :meth:`open` reads the data set back (after the header), as a spool's would be.
    """

    def __init__(self, path: Path, header: bytes, transfer_syntax: str | None = None) -> None:
        self.path = path
        self.temp = path.with_name(f".{path.name}.part")
        self.header_length = len(header)
        self.transfer_syntax = transfer_syntax
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(self.temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._chunks: list[bytes | memoryview] = [header]
        self._pending = len(header)
        self.size = len(header)

    def write(self, data: bytes | memoryview) -> None:
        self._chunks.append(data)
        self._pending += len(data)
        self.size += len(data)
        if self._pending >= SPOOL_WRITE_BLOCK:
            self._flush()

    def _flush(self) -> None:
        chunks, self._chunks, self._pending = self._chunks, [], 0
        write_chunks(self._fd, chunks)  # type: ignore[arg-type]

    def close(self) -> None:
        try:
            self._flush()
        finally:
            os.close(self._fd)  # type: ignore[arg-type]
            self._fd = None

    def abort(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.temp.unlink(missing_ok=True)

    def open(self) -> IO[bytes]:
        source = self.temp.open("rb")
        source.seek(self.header_length)
        return source

    def finish(self) -> int:
        """The complete file under its name (worker thread); its size.

        :raises CutShort: the data set ends inside one of its values (the file is removed).
        """
        if self.transfer_syntax is not None:
            defect = defect_in_file(self.temp, self.header_length, self.size - self.header_length,
                                    self.transfer_syntax)
            if defect is not None:  # no image: kept, it would pass for one
                self.temp.unlink(missing_ok=True)
                raise CutShort(defect)
        os.replace(self.temp, self.path)
        return self.size


class CutShort(Exception):
    """A C-STORE's data set is no image (:func:`~dimsekit.datasets.dataset_defect`: it ends
    inside one of its values, compressed fragments labelled uncompressed, another codec's):
    refused 0xC000, no file kept."""


class Receiver:
    """A C-STORE handler writing each instance unparsed to ``directory/<SOP Instance UID>.dcm``.

    Each data set goes into its file as it arrives (:meth:`sink_for`: a
    :class:`PartFileSink`), renamed into place once complete, in the reactor's
    thread pool; the status is 0x0000, or 0xA700 (Out of Resources) when the
    file cannot be written, 0xC000 when the request carried no data set or one
    cut short (a value running past its end: no file is kept).
    """

    def __init__(self, reactor: Any, directory: str | Path, on_change: Any = None) -> None:
        self.reactor = reactor
        self.directory = Path(directory)
        self.on_change = on_change
        self.files = 0
        self.bytes = 0
        self.failures: list[str] = []
        #: SOP Instance UIDs written, in order; their SOP classes (an ordered set)
        self.written: list[str] = []
        self.classes: dict[str, None] = {}
        #: SOP Instance UIDs we answered with a failure (not the peer's doing)
        self.refused: set[str] = set()
        self._unnamed = 0

    def _path(self, sop_instance_uid: str) -> Path:
        if _is_uid(sop_instance_uid):
            return self.directory / f"{sop_instance_uid}.dcm"
        self._unnamed += 1
        return self.directory / f"instance-{self._unnamed:05d}.dcm"

    def _header(self, request: Any) -> bytes:
        return part10_header(request.sop_class_uid, request.sop_instance_uid, request.transfer_syntax,
                             request.association.remote_ae_title)

    def sink_for(self, request: Any) -> PartFileSink:
        """Where this C-STORE's data set goes as it arrives (the association asks, with the
        command set in): its file.  A file that cannot be made is refused (0xA700, below)."""
        return PartFileSink(self._path(request.sop_instance_uid), self._header(request), request.transfer_syntax)

    def __call__(self, request: Any) -> Any:
        if self.on_change is not None:
            self.on_change()  # an instance is here (written below): progress
        sink = request.sink
        error = getattr(request, "sink_error", None)  # sink_for failed: the data set was discarded
        if sink is None or error is not None:
            why = f"cannot write it ({error})" if error is not None else "no data set in the C-STORE request"
            self.failures.append(f"{request.sop_instance_uid or '?'}: {why}")
            self.refused.add(request.sop_instance_uid)
            return 0xA700 if error is not None else 0xC000
        pool = self.reactor.getThreadPool()
        if isinstance(sink, PartFileSink):
            d = threads.deferToThreadPool(self.reactor, pool, sink.finish)
        else:  # a data set spooled elsewhere: copied into its file
            path = self._path(request.sop_instance_uid)
            d = threads.deferToThreadPool(self.reactor, pool, _write, path, self._header(request), sink)
        d.addCallbacks(self._written, self._failed, callbackArgs=(request,), errbackArgs=(request,))
        return d

    def _written(self, size: int, request: Any) -> int:
        self.files += 1
        self.bytes += size
        self.written.append(request.sop_instance_uid)
        self.classes[request.sop_class_uid] = None
        if self.on_change is not None:
            self.on_change()
        return 0x0000

    def _failed(self, failure: Failure, request: Any) -> int:
        if isinstance(request.sink, PartFileSink):
            request.sink.abort()  # no .part left behind
        self.refused.add(request.sop_instance_uid)
        if failure.check(CutShort):
            self.failures.append(f"{request.sop_instance_uid or '?'}: {failure.getErrorMessage()}")
            return 0xC000  # Cannot understand (PS3.4 B.2.3)
        self.failures.append(f"{request.sop_instance_uid or '?'}: cannot write it ({failure.getErrorMessage()})")
        return 0xA700


def _write(path: Path, header: bytes, sink: Any) -> int:
    """Header then the data set bytes, to a temporary name renamed into place (worker thread):
    for a sink other than :class:`PartFileSink` (the tools' own associations never hand one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.part")
    source = sink.open()
    try:
        with temp.open("wb") as target:
            target.write(header)
            shutil.copyfileobj(source, target, 1 << 20)
            size = target.tell()
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    finally:
        source.close()
    return size


class Progress:
    """One line on a terminal, rewritten: sub-operation counts, files, megabytes."""

    COUNTS = ("NumberOfCompletedSuboperations", "NumberOfRemainingSuboperations",
              "NumberOfFailedSuboperations", "NumberOfWarningSuboperations")

    def __init__(self, stream: IO[str], enabled: bool, receiver: Receiver | None) -> None:
        self.stream = stream
        self.enabled = enabled
        self.receiver = receiver
        self.counts: dict[str, int] = {}
        #: added to the counts shown (a retry's operations continue the first one's line)
        self.base: dict[str, int] = {}
        self.started = time.monotonic()
        self._last = 0.0
        self._width = 0

    def restart(self, base: dict[str, int]) -> None:
        """A new operation: its counts are shown added to ``base``."""
        self.base = base
        self.counts = {}

    def response(self, response: Any) -> None:
        for name in self.COUNTS:
            value = response.command.get(name)
            if isinstance(value, int):  # a malformed count (several values, text) is not shown
                self.counts[name] = value
        self.show()

    def show(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.1:
            return
        self._last = now
        c, b = self.counts, self.base
        shown = {name: max(0, b.get(name, 0) + c.get(name, 0)) for name in self.COUNTS}
        remaining = shown["NumberOfRemainingSuboperations"] if "NumberOfRemainingSuboperations" in c else "?"
        line = (f"completed {shown['NumberOfCompletedSuboperations']}"
                f"  remaining {remaining}"
                f"  failed {shown['NumberOfFailedSuboperations']}"
                f"  warning {shown['NumberOfWarningSuboperations']}")
        if self.receiver is not None:
            line += f"  | {self.receiver.files} files  {self.receiver.bytes / 1e6:.1f} MB"
        self.stream.write("\r" + line + " " * max(0, self._width - len(line)))
        self.stream.flush()
        self._width = len(line)

    def clear(self) -> None:
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _count(final: Any, progress: Progress, name: str) -> int:
    value = final.command.get(name)
    if value is not None and value != "":
        return int(value)
    return progress.counts.get(name, 0)


def _values(value: Any) -> list[str]:
    """A value of one or more strings as a list of the non-empty ones, stripped."""
    return [text for text in (str(v).strip() for v in values_of(value) if v is not None) if text]


def failed_uid_list(final: Any) -> list[str]:
    """The Failed SOP Instance UID List (0008,0058) of a final response (none: empty)."""
    if final.dataset is None or "FailedSOPInstanceUIDList" not in final.dataset:
        return []
    return _values(final.dataset.FailedSOPInstanceUIDList)


async def _get(association: Any, identifier: Any, get_sop: str, receiver: Receiver, progress: Progress,
               total_timeout: float | None = None) -> Any:
    """One C-GET, its pending responses shown as they come; its final response (its failure raised)."""
    operation = association.get(identifier, get_sop, on_store=receiver, total_timeout=total_timeout)
    async for response in operation:
        progress.response(response)
    return await operation


def retrieve_outcome(tool: str, service: str, final: Any, progress: Progress, receiver: Receiver | None,
                     elapsed: float, args: argparse.Namespace, out: IO[str], err: IO[str],
                     cancelled: bool = False, retried: int = 0) -> int:
    """Print the summary of a C-GET or C-MOVE; the exit status.

    :param retried: how many of the completed sub-operations came on the
        retry of ``dimsekit get`` (``final`` then sums up both).
    """
    completed = _count(final, progress, "NumberOfCompletedSuboperations")
    failed = _count(final, progress, "NumberOfFailedSuboperations")
    warning = _count(final, progress, "NumberOfWarningSuboperations")
    remaining = final.command.get("NumberOfRemainingSuboperations")
    failed_uids = failed_uid_list(final)
    if not args.quiet:
        done = f"{completed} completed"
        if retried:
            done += f" ({retried} of them on a retry in their own transfer syntaxes)"
        line = (f"C-{tool.upper()}: {describe(final.status, service)}; "
                f"{done}, {failed} failed, {warning} warning")
        if remaining not in (None, ""):
            line += f", {int(remaining)} not attempted"
        if receiver is not None:
            line += (f"; {receiver.files} file{'s' if receiver.files != 1 else ''} "
                     f"({receiver.bytes / 1e6:.1f} MB) written to {receiver.directory}")
        line += f" in {elapsed:.2f} s"
        print(line, file=out)
        for uid in failed_uids:
            print(f"failed   {uid}", file=out)
    if receiver is not None:
        for problem in receiver.failures:
            print(f"dimsekit {tool}: {problem}", file=err)
    kind = category(final.status)
    if kind is Category.SUCCESS or (kind is Category.WARNING and failed == 0 and not failed_uids):
        return 0
    if kind is Category.WARNING:
        print(f"dimsekit {tool}: {failed or len(failed_uids)} sub-operation(s) failed "
              f"({describe(final.status, service)})", file=err)
        return 1
    if kind is Category.CANCEL and not cancelled:
        print(f"dimsekit {tool}: the peer ended the retrieve with {describe(final.status, service)}", file=err)
        return 1
    if kind is Category.CANCEL:
        return 1
    hint = ""
    if (tool == "move" and completed == failed == warning == 0 and not final.command.get("ErrorComment")
            and final.status != 0xA801):
        # Orthanc answers an unknown destination so (C000), where PS3.4 has A801
        destination = getattr(args, "dest", None) or getattr(args, "aet", "")
        hint = (f" (no sub-operation was attempted: does the peer know the move destination {destination}, "
                "its AE title, host and port?)")
    print(f"dimsekit {tool}: C-{tool.upper()} failed: {response_problem(final, service)}{hint}", file=err)
    return 1


# -- the retry: failed instances in their own transfer syntaxes -----------------------------


#: SOP Instance UIDs per C-FIND / C-GET identifier of the retry: a list of UIDs
#: stays well below the 64 KiB a UI value can have in explicit VR
UIDS_PER_REQUEST = 200

#: (SOP class, transfer syntaxes) of one presentation context
Context = tuple[str, tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class FailedInstance:
    """An instance whose C-STORE sub-operation failed, as the peer's C-FIND describes it.

    Empty ``sop_class_uid``: the peer did not say; empty ``transfer_syntaxes``:
    it did not say what the instance is available in (Available Transfer
    Syntax UID, 0008,3002).
    """

    sop_instance_uid: str
    sop_class_uid: str = ""
    transfer_syntaxes: tuple[str, ...] = ()
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    patient_id: str = ""


@dataclass(slots=True)
class RetryBatch:
    """One association of the retry: the storage contexts it proposes and the instances it asks for."""

    contexts: list[Context]
    instances: list[FailedInstance]


def guess_classes(received: Iterable[str] = (), limit: int = MAX_STORAGE_CONTEXTS) -> list[str]:
    """SOP classes to try for an instance whose class the peer does not say: those
    of the instances received, then the common image classes; as many as fit
    ``limit`` contexts, one per compressed syntax."""
    classes: dict[str, None] = dict.fromkeys(received)
    for keyword in _COMMON:
        if "Image" in keyword:
            try:
                classes.setdefault(str(by_keyword(keyword)))
            except KeyError:
                continue
    return list(classes)[: max(1, limit // len(COMPRESSED_TRANSFER_SYNTAXES))]


def contexts_needed(instance: FailedInstance, guessed: Sequence[str] = ()) -> list[Context]:
    """The presentation contexts that let the peer send ``instance`` as it has it.

    Its SOP class with the uncompressed syntaxes, and one context per other
    syntax it is available in -- per compressed syntax of
    :data:`COMPRESSED_TRANSFER_SYNTAXES` when the peer did not say.  Its class
    unknown: each of ``guessed`` with each compressed syntax.
    """
    if not instance.sop_class_uid:
        return [(sop_class, (ts,)) for sop_class in guessed for ts in COMPRESSED_TRANSFER_SYNTAXES]
    sop_class = instance.sop_class_uid
    contexts: list[Context] = [(sop_class, UNCOMPRESSED_TRANSFER_SYNTAXES)]
    for ts in instance.transfer_syntaxes or COMPRESSED_TRANSFER_SYNTAXES:
        if ts not in UNCOMPRESSED_TRANSFER_SYNTAXES and (sop_class, (ts,)) not in contexts:
            contexts.append((sop_class, (ts,)))
    return contexts


def plan_retry(instances: Sequence[FailedInstance], guessed: Sequence[str] = (),
               limit: int = MAX_STORAGE_CONTEXTS) -> list[RetryBatch]:
    """The associations of the retry, each proposing at most ``limit`` storage contexts.

    Instances needing the same contexts go together; those groups are packed
    in order of first appearance, a new association when the next one does
    not fit (a group needing more than ``limit`` on its own gets the first ``limit``).
    """
    groups: dict[tuple[Context, ...], list[FailedInstance]] = {}
    for instance in instances:
        groups.setdefault(tuple(contexts_needed(instance, guessed)[:limit]), []).append(instance)
    batches: list[RetryBatch] = []
    current: dict[Context, None] = {}
    members: list[FailedInstance] = []
    for contexts, group in groups.items():
        if not contexts:
            continue
        merged = {**current, **dict.fromkeys(contexts)}
        if members and len(merged) > limit:
            batches.append(RetryBatch(list(current), members))
            merged, members = dict.fromkeys(contexts), []
        current = merged
        members = members + group
    if members:
        batches.append(RetryBatch(list(current), members))
    return batches


def _chunks(items: Sequence[Any], size: int = UIDS_PER_REQUEST) -> list[Sequence[Any]]:
    return [items[n : n + size] for n in range(0, len(items), size)]


def _uid_value(uids: Sequence[str]) -> str | list[str]:
    return uids[0] if len(uids) == 1 else list(uids)


def describe_identifiers(original: Dataset, listed: Sequence[str],
                         per_request: int = UIDS_PER_REQUEST) -> list[tuple[Dataset, list[str]]]:
    """The IMAGE-level C-FIND identifiers asking about failed instances, each with
    the SOP Instance UIDs it lists: ``listed``, ``per_request`` at a time (the
    upper unique keys universal), or -- none listed -- one for every instance
    the original identifier's unique keys select; returning the SOP class,
    Available Transfer Syntax UID and the upper unique keys."""

    def identifier(uids: Sequence[str]) -> Dataset:
        ds = Dataset()
        ds.QueryRetrieveLevel = "IMAGE"
        for keyword in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            value = original.get(keyword, "") if not uids else ""
            setattr(ds, keyword, value if value not in (None, "") else "")
        if uids:
            ds.SOPInstanceUID = _uid_value(uids)
        ds.SOPClassUID = ""
        ds.AvailableTransferSyntaxUID = ""
        return set_character_set(ds)

    if not listed:
        return [(identifier(()), [])]
    return [(identifier(chunk), list(chunk)) for chunk in _chunks(list(listed), per_request)]


def failed_instance(match: Dataset | None) -> FailedInstance | None:
    """A C-FIND match as a :class:`FailedInstance` (None without one SOP Instance UID)."""
    if match is None:
        return None
    uids = _values(match.get("SOPInstanceUID", ""))
    if len(uids) != 1:
        return None
    classes = _values(match.get("SOPClassUID", ""))

    def one(keyword: str) -> str:
        values = _values(match.get(keyword, ""))
        return values[0] if len(values) == 1 else ""

    return FailedInstance(
        sop_instance_uid=uids[0],
        sop_class_uid=classes[0] if len(classes) == 1 else "",
        transfer_syntaxes=tuple(ts for ts in _values(match.get("AvailableTransferSyntaxUID", "")) if _is_uid(ts)),
        study_instance_uid=one("StudyInstanceUID"),
        series_instance_uid=one("SeriesInstanceUID"),
        patient_id=one("PatientID"),
    )


def retry_identifiers(instances: Sequence[FailedInstance], model: str,
                      per_request: int = UIDS_PER_REQUEST) -> list[tuple[Dataset, list[FailedInstance]]]:
    """The IMAGE-level C-GET identifiers of the retry, each with the instances it
    asks for: per series (its Study and Series Instance UIDs, Patient ID too for
    Patient Root), a list of SOP Instance UIDs, ``per_request`` at most."""
    series: dict[tuple[str, str, str], list[FailedInstance]] = {}
    for instance in instances:
        key = (instance.patient_id, instance.study_instance_uid, instance.series_instance_uid)
        series.setdefault(key, []).append(instance)
    identifiers = []
    for (patient, study, serie), members in series.items():
        for chunk in _chunks(members, per_request):
            ds = Dataset()
            ds.QueryRetrieveLevel = "IMAGE"
            if model == "patient":
                ds.PatientID = patient
            ds.StudyInstanceUID = study
            ds.SeriesInstanceUID = serie
            ds.SOPInstanceUID = _uid_value([instance.sop_instance_uid for instance in chunk])
            identifiers.append((set_character_set(ds), list(chunk)))
    return identifiers


def should_retry(final: Any, progress: Progress) -> bool:
    """Sub-operations failed (counted or listed), and the peer did not end the C-GET with a Cancel."""
    if category(final.status) not in (Category.WARNING, Category.FAILURE):
        return False
    return _count(final, progress, "NumberOfFailedSuboperations") > 0 or bool(failed_uid_list(final))


def merged_final(first: Any, counts: tuple[int, int, int], listed: Sequence[str], fetched: set[str]) -> Response:
    """The outcome of the C-GET and its retry as one final response.

    ``counts``: the first C-GET's completed, failed and warning sub-operations;
    ``fetched``: the instances received on the retry.  The status is the one a
    C-GET of them all would have ended with (PS3.4 C.4.3.3.1): 0000 all
    completed, A702 none, B000 some failed or warned.
    """
    completed, failed, warning = counts
    left = [uid for uid in listed if uid not in fetched]
    completed += len(fetched)
    failed = max(len(left), max(failed, len(listed)) - len(fetched))
    if failed == 0:
        status = 0x0000 if warning == 0 else 0xB000
    else:
        status = 0xA702 if completed + warning == 0 else 0xB000
    command: dict[str, Any] = {
        "Status": status,
        "NumberOfCompletedSuboperations": completed,
        "NumberOfFailedSuboperations": failed,
        "NumberOfWarningSuboperations": warning,
    }
    remaining = first.command.get("NumberOfRemainingSuboperations")
    if remaining not in (None, ""):
        command["NumberOfRemainingSuboperations"] = remaining
    dataset = None
    if left:
        dataset = Dataset()
        dataset.FailedSOPInstanceUIDList = _uid_value(left)
    return Response(command, dataset)


# -- the command ---------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    add_total_timeout_argument(parser)
    add_model_options(parser, worklist=False)
    add_key_options(parser)
    parser.add_argument("--out-dir", "-od", metavar="DIR", default=".",
                        help="where to write the instances received (default: the current directory)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress and no summary; only errors")
    parser.add_argument("--no-retry-compressed", dest="retry_compressed", action="store_false",
                        help="do not ask again for the instances that failed (e.g. stored compressed, which a "
                             "context taking uncompressed data cannot carry) on a new association proposing "
                             "their own transfer syntaxes")


def run(reactor: Any, args: argparse.Namespace) -> defer.Deferred:
    quiet_pydicom()
    return defer.Deferred.fromCoroutine(_run(reactor, args, sys.stdout, sys.stderr))


async def _run(reactor: Any, args: argparse.Namespace, out: IO[str], err: IO[str], make: Any = None) -> int:
    try:
        model = model_of(args)
        identifier = retrieve_identifier(args, model)
    except BadKey as exc:
        print(f"dimsekit get: {exc}", file=err)
        return 2
    get_sop = MODELS[model][1]
    assert get_sop is not None
    try:
        Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"dimsekit get: cannot use {args.out_dir}: {exc.strerror or exc}", file=err)
        return 2
    progress: Progress
    receiver = Receiver(reactor, args.out_dir, on_change=lambda: progress.show())
    progress = Progress(err, not args.quiet and _isatty(err), receiver)
    storage = storage_contexts()
    contexts: list[Any] = [get_sop] + [(uid, RETRIEVE_TRANSFER_SYNTAXES) for uid in storage]
    roles = {uid: (False, True) for uid in storage}
    ae = (make or make_scu_ae)(reactor, args)
    ae.spool_dir = str(args.out_dir)  # an instance past 1 MiB waits on the disk it is written to
    association = None
    try:
        association = await ae.associate(
            args.host, args.port, called=args.called, contexts=contexts, roles=roles, connect_timeout=args.timeout,
        )
    except Exception:
        print(f"dimsekit get: {describe_failure(Failure())}", file=err)
        return 1
    try:
        if association.negotiated.context_for(get_sop, as_scu=True) is None:
            print(f"dimsekit get: the peer did not accept {UID(get_sop).name}", file=err)
            await _release(association)
            return 1
        started = time.monotonic()
        try:
            final = await _get(association, identifier, get_sop, receiver, progress, args.total_timeout)
        except Exception:
            progress.clear()
            print(f"dimsekit get: {describe_failure(Failure())} "
                  f"({receiver.files} file{'s' if receiver.files != 1 else ''} written)", file=err)
            return 1
        progress.clear()
        await _release(association)
    finally:
        await end_cleanly(reactor, association)
    retried = 0
    if getattr(args, "retry_compressed", True) and should_retry(final, progress):
        final, retried = await _retry(reactor, ae, args, model, identifier, final, receiver, progress, err)
    return retrieve_outcome("get", QR_GET, final, progress, receiver, time.monotonic() - started, args, out, err,
                            retried=retried)


async def _retry(reactor: Any, ae: Any, args: argparse.Namespace, model: str, identifier: Dataset, final: Any,
                 receiver: Receiver, progress: Progress, err: IO[str]) -> tuple[Any, int]:
    """Ask again for the instances whose sub-operations failed, on associations
    proposing their own transfer syntaxes; (the final response of both, how many came)."""
    counts = (_count(final, progress, "NumberOfCompletedSuboperations"),
              _count(final, progress, "NumberOfFailedSuboperations"),
              _count(final, progress, "NumberOfWarningSuboperations"))
    listed = failed_uid_list(final)
    instances = await _failed_instances(reactor, ae, args, identifier, listed, receiver, err)
    if not instances:
        return final, 0
    mark = len(receiver.written)
    clean = await _fetch_again(reactor, ae, args, model, plan_retry(instances, guess_classes(receiver.classes)),
                               receiver, progress, counts, err)
    fetched = set(receiver.written[mark:])
    if not fetched and clean:
        print(f"dimsekit get: none of the {len(instances)} instance(s) asked for again came "
              "(the peer may accept no context in their transfer syntaxes)", file=err)
    if not fetched:
        return final, 0
    return merged_final(final, counts, listed, fetched), len(fetched)


def _retry_problem(err: IO[str], why: str) -> None:
    print(f"dimsekit get: cannot retry the failed instances: {why}", file=err)


async def _failed_instances(reactor: Any, ae: Any, args: argparse.Namespace, identifier: Dataset,
                            listed: list[str], receiver: Receiver, err: IO[str]) -> list[FailedInstance]:
    """What the peer's C-FIND (IMAGE level) says of the failed instances -- of
    the instances not received when it listed none -- those we refused to
    write left out."""
    association = None
    found: dict[str, FailedInstance] = {}
    try:
        try:
            association = await ae.associate(args.host, args.port, called=args.called,
                                             contexts=[STUDY_ROOT_FIND, PATIENT_ROOT_FIND],
                                             connect_timeout=args.timeout)
        except Exception:
            _retry_problem(err, f"no association for C-FIND ({describe_failure(Failure())})")
            return []
        find_sop = next((sop for sop in (STUDY_ROOT_FIND, PATIENT_ROOT_FIND)
                         if association.negotiated.context_for(sop, as_scu=True) is not None), None)
        if find_sop is None:
            _retry_problem(err, "the peer accepts no C-FIND to ask what they are")
            await _release(association)
            return []
        queue = describe_identifiers(identifier, listed)
        n = 0
        while n < len(queue):  # at most one request per UID listed, besides the first ones
            request, uids = queue[n]
            n += 1
            operation = association.find(request, find_sop)
            try:
                async for response in operation:
                    instance = failed_instance(response.dataset)
                    if instance is not None:
                        found.setdefault(instance.sop_instance_uid, instance)
                done = await operation
            except Exception:
                _retry_problem(err, f"C-FIND: {describe_failure(Failure())}")
                return []
            if category(done.status) is not Category.SUCCESS:
                if len(uids) > 1:  # a peer that cannot match a list of UIDs: one per request
                    queue[n:] = describe_identifiers(identifier, uids + [u for _, more in queue[n:] for u in more], 1)
                    continue
                _retry_problem(err, f"C-FIND: {response_problem(done, QR_FIND)}")
                await _release(association)
                return []
        await _release(association)
    finally:
        await end_cleanly(reactor, association)
    if listed:
        candidates = [found[uid] for uid in listed if uid in found]
    else:
        written = set(receiver.written)
        candidates = [instance for instance in found.values() if instance.sop_instance_uid not in written]
    if not candidates:
        _retry_problem(err, "the peer's C-FIND does not find them")
    return [instance for instance in candidates if instance.sop_instance_uid not in receiver.refused]


async def _fetch_again(reactor: Any, ae: Any, args: argparse.Namespace, model: str, batches: list[RetryBatch],
                       receiver: Receiver, progress: Progress, counts: tuple[int, int, int], err: IO[str]) -> bool:
    """The C-GETs of the retry, one association per batch; False when a problem
    (told on ``err``) ended a batch or the retry."""
    get_sop = MODELS[model][1]
    assert get_sop is not None
    completed, failed, warning = counts
    total = sum(len(batch.instances) for batch in batches)
    done = 0
    mark = len(receiver.written)
    clean = True
    for batch in batches:
        association = None
        try:
            association = await ae.associate(
                args.host, args.port, called=args.called, contexts=[get_sop, *batch.contexts],
                roles={sop_class: (False, True) for sop_class, _ in batch.contexts}, connect_timeout=args.timeout,
            )
            if association.negotiated.context_for(get_sop, as_scu=True) is None:
                _retry_problem(err, f"the peer did not accept {UID(get_sop).name} again")
                await _release(association)
                return False
            queue = retry_identifiers(batch.instances, model)
            n = 0
            while n < len(queue):  # at most one request per instance, besides the first ones
                request, members = queue[n]
                n += 1
                fetched = len(receiver.written) - mark
                progress.restart({
                    "NumberOfCompletedSuboperations": completed + fetched,
                    "NumberOfFailedSuboperations": failed - total + done - fetched,
                    "NumberOfWarningSuboperations": warning,
                    "NumberOfRemainingSuboperations": total - done - len(members),
                })
                final = await _get(association, request, get_sop, receiver, progress, args.total_timeout)
                if category(final.status) is not Category.FAILURE or final.status == 0xA702:
                    done += len(members)  # sub-operations ran (those that failed stay failed)
                    continue
                if len(members) > 1:  # a peer refusing a list of UIDs: one per request
                    written = set(receiver.written)
                    again = [i for i in members if i.sop_instance_uid not in written]
                    done += len(members) - len(again)
                    queue[n:] = retry_identifiers(again + [i for _, more in queue[n:] for i in more], model, 1)
                    continue
                progress.clear()
                _retry_problem(err, f"C-GET: {response_problem(final, QR_GET)}")
                clean = False
                break
            progress.clear()
            await _release(association)
        except Exception:
            progress.clear()
            _retry_problem(err, describe_failure(Failure()))
            return False
        finally:
            await end_cleanly(reactor, association)
    return clean


async def _release(association: Any) -> None:
    if association.ended:
        return
    try:
        await association.release()
    except Exception:
        pass
