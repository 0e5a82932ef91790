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

Information model: -S / --model study (default), -P / --model patient.
Keys: -k and -f as for ``dimsekit find``; QueryRetrieveLevel, when not
given, is the level of the deepest unique key given a value
(SOPInstanceUID: IMAGE, SeriesInstanceUID: SERIES, StudyInstanceUID: STUDY,
PatientID with -P: PATIENT).

Progress (completed/remaining/failed/warning, files and megabytes) on stderr
when it is a terminal; then a summary on stdout (-q: none) with the Failed
SOP Instance UID List if any.  Exit status 0 when every sub-operation
succeeded (warnings included); 1 when any failed, on a failure or Cancel
status (named), rejection, abort, timeout or a refused connection; 2 on bad
arguments.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from typing import IO, Any

from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID, UID_dictionary
from twisted.internet import defer, threads
from twisted.python.failure import Failure

import dimsekit
from dimsekit.cli import add_common_arguments
from dimsekit.cli._keys import BadKey
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
from dimsekit.dimse.status import QR_GET, Category, category, describe
from dimsekit.registry import UNCOMPRESSED_TRANSFER_SYNTAXES
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
]

#: what a storage context for received instances proposes/accepts: uncompressed
#: first, then the usual compressed syntaxes (files are written as received)
RETRIEVE_TRANSFER_SYNTAXES: tuple[str, ...] = UNCOMPRESSED_TRANSFER_SYNTAXES + (
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


class Receiver:
    """A C-STORE handler writing each instance unparsed to ``directory/<SOP Instance UID>.dcm``.

    Writing happens in the reactor's thread pool; the status is 0x0000, or
    0xA700 (Out of Resources) when the file cannot be written, 0xC000 when
    the request carried no data set.
    """

    def __init__(self, reactor: Any, directory: str | Path, on_change: Any = None) -> None:
        self.reactor = reactor
        self.directory = Path(directory)
        self.on_change = on_change
        self.files = 0
        self.bytes = 0
        self.failures: list[str] = []
        self._unnamed = 0

    def _path(self, sop_instance_uid: str) -> Path:
        if _is_uid(sop_instance_uid):
            return self.directory / f"{sop_instance_uid}.dcm"
        self._unnamed += 1
        return self.directory / f"instance-{self._unnamed:05d}.dcm"

    def __call__(self, request: Any) -> Any:
        if self.on_change is not None:
            self.on_change()  # an instance is here (written below): progress
        if request.sink is None:
            self.failures.append(f"{request.sop_instance_uid or '?'}: no data set in the C-STORE request")
            return 0xC000
        path = self._path(request.sop_instance_uid)
        header = part10_header(request.sop_class_uid, request.sop_instance_uid, request.transfer_syntax,
                               request.association.remote_ae_title)
        d = threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), _write, path, header, request.sink)
        d.addCallbacks(self._written, self._failed, errbackArgs=(request,))
        return d

    def _written(self, size: int) -> int:
        self.files += 1
        self.bytes += size
        if self.on_change is not None:
            self.on_change()
        return 0x0000

    def _failed(self, failure: Failure, request: Any) -> int:
        self.failures.append(f"{request.sop_instance_uid or '?'}: cannot write it ({failure.getErrorMessage()})")
        return 0xA700


def _write(path: Path, header: bytes, sink: Any) -> int:
    """Header then the data set bytes, to a temporary name renamed into place (worker thread)."""
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
        self.started = time.monotonic()
        self._last = 0.0
        self._width = 0

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
        c = self.counts
        line = (f"completed {c.get('NumberOfCompletedSuboperations', 0)}"
                f"  remaining {c.get('NumberOfRemainingSuboperations', '?')}"
                f"  failed {c.get('NumberOfFailedSuboperations', 0)}"
                f"  warning {c.get('NumberOfWarningSuboperations', 0)}")
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


def retrieve_outcome(tool: str, service: str, final: Any, progress: Progress, receiver: Receiver | None,
                     elapsed: float, args: argparse.Namespace, out: IO[str], err: IO[str],
                     cancelled: bool = False) -> int:
    """Print the summary of a C-GET or C-MOVE; the exit status."""
    completed = _count(final, progress, "NumberOfCompletedSuboperations")
    failed = _count(final, progress, "NumberOfFailedSuboperations")
    warning = _count(final, progress, "NumberOfWarningSuboperations")
    remaining = final.command.get("NumberOfRemainingSuboperations")
    failed_uids: list[str] = []
    if final.dataset is not None and "FailedSOPInstanceUIDList" in final.dataset:
        value = final.dataset.FailedSOPInstanceUIDList
        failed_uids = [str(v) for v in (value if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue"
                                        else [value]) if str(v)]
    if not args.quiet:
        line = (f"C-{tool.upper()}: {describe(final.status, service)}; "
                f"{completed} completed, {failed} failed, {warning} warning")
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
    print(f"dimsekit {tool}: C-{tool.upper()} failed: {response_problem(final, service)}", file=err)
    return 1


# -- the command ---------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    add_model_options(parser, worklist=False)
    add_key_options(parser)
    parser.add_argument("--out-dir", "-od", metavar="DIR", default=".",
                        help="where to write the instances received (default: the current directory)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress and no summary; only errors")


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
        operation = association.get(identifier, get_sop, on_store=receiver)
        try:
            async for response in operation:
                progress.response(response)
            final = await operation
        except Exception:
            operation.result.addErrback(lambda failure: None)  # told below; not "Unhandled error" when collected
            progress.clear()
            print(f"dimsekit get: {describe_failure(Failure())} "
                  f"({receiver.files} file{'s' if receiver.files != 1 else ''} written)", file=err)
            return 1
        progress.clear()
        await _release(association)
        return retrieve_outcome("get", QR_GET, final, progress, receiver, time.monotonic() - started, args, out, err)
    finally:
        await end_cleanly(reactor, association)


async def _release(association: Any) -> None:
    if association.ended:
        return
    try:
        await association.release()
    except Exception:
        pass
