"""Print DICOM images on a Basic Grayscale Print Management SCP (PS3.4 H), like a modality.

    dimsekit print HOST PORT FILE... [--format "STANDARD\\2,2"] [--orientation LANDSCAPE]
                                     [--film-size 14INX17IN] [--copies N] [--bits 12]

On one association with the Basic Grayscale Print Management Meta SOP Class:
N-GET of the Printer's status; N-CREATE of a Film Session; then for each film
N-CREATE of a Film Box (its Image Boxes come back in the response), N-SET of
each Image Box with an image, N-ACTION Print of the Film Box, N-DELETE of the
Film Box; finally N-DELETE of the Film Session and release.

Images: the first frame of each file, decoded by pydicom (the codecs it has),
through its Modality LUT and VOI LUT (window) when it has them, color turned
to luminance, scaled to 8 bits (default) or 12 bits (``--bits 12``) over the
range of its values, and sent as a Preformatted Grayscale Image (MONOCHROME2,
or MONOCHROME1 when the file is).  ``--format`` sets Image Display Format
(default: the smallest STANDARD\\C,R grid holding every file, at most 5x5 per
film); more files than a film holds make more films.

Output: the printer status, then a line per operation with its status.
Exit status 0 when every operation got Success or a Warning; 1 on a failure
status, a file that is not an image pydicom can decode, rejection, abort,
timeout or a refused connection (a one-line reason on stderr).
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from dimsekit.cli import add_common_arguments
from dimsekit.cli._scu import end_cleanly, fail, make_ae
from dimsekit.dimse.commands import NO_DATASET, CommandField
from dimsekit.dimse.status import Category, category, describe
from dimsekit.errors import LocalProtocolError
from dimsekit.uids import by_keyword

__all__ = ["add_arguments", "run", "PrintSCU", "grayscale_image", "auto_format", "boxes_in_format"]

META_GRAYSCALE = by_keyword("BasicGrayscalePrintManagementMeta")
FILM_SESSION = by_keyword("BasicFilmSession")
FILM_BOX = by_keyword("BasicFilmBox")
GRAYSCALE_IMAGE_BOX = by_keyword("BasicGrayscaleImageBox")
PRINTER = by_keyword("Printer")
PRINTER_INSTANCE = by_keyword("PrinterInstance")
ACTION_PRINT = 1
PRINT_SERVICE = "print"

_FORMAT = re.compile(r"(STANDARD|ROW|COL)\\(\d{1,3}(?:,\d{1,3})*)\Z")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("files", nargs="+", metavar="FILE", help="DICOM images to print")
    parser.add_argument("--format", metavar="FORMAT",
                        help='Image Display Format, e.g. "STANDARD\\2,2" or "ROW\\2,1" (default: a grid for the files)')
    parser.add_argument("--orientation", type=str.upper, choices=("PORTRAIT", "LANDSCAPE"), default="PORTRAIT",
                        help="Film Orientation (default PORTRAIT)")
    parser.add_argument("--film-size", metavar="ID", help="Film Size ID, e.g. 8INX10IN, 14INX17IN (default: the printer's)")
    parser.add_argument("--magnification", type=str.upper, choices=("REPLICATE", "BILINEAR", "CUBIC", "NONE"),
                        help="Magnification Type (default: the printer's)")
    parser.add_argument("--copies", type=int, default=1, help="Number of Copies (default 1)")
    parser.add_argument("--medium", metavar="TYPE", help="Medium Type, e.g. PAPER, BLUE FILM (default: the printer's)")
    parser.add_argument("--destination", metavar="DEST", help="Film Destination, e.g. MAGAZINE, PROCESSOR")
    parser.add_argument("--label", help="Film Session Label")
    parser.add_argument("--bits", type=int, choices=(8, 12), default=8, help="8 (default) or 12 bits per pixel")


# -- images -----------------------------------------------------------------------------------------


def grayscale_image(path: str | Path, bits: int = 8) -> Dataset:
    """The first frame of a DICOM image as a Basic Grayscale Image Sequence item
    (PS3.3 C.13.5 Preformatted Grayscale Image): 8 bits (8/8/7) or 12 (16/12/11).

    :raises ValueError: the file has no image pydicom can decode.
    """
    try:
        import numpy
    except ImportError:  # pydicom decodes pixel data into numpy arrays
        raise ValueError("dimsekit print needs numpy to read images (pip install numpy)") from None
    from pydicom import dcmread
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = dcmread(path)
        pixels = ds.pixel_array
    except Exception as exc:
        raise ValueError(f"{path}: no image pydicom can decode ({exc})") from exc
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if frames > 1:
        pixels = pixels[0]
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    if samples == 3:
        pixels = pixels[..., 0] * 0.299 + pixels[..., 1] * 0.587 + pixels[..., 2] * 0.114
        photometric = "MONOCHROME2"
    else:
        pixels = apply_modality_lut(pixels, ds)
        if "WindowCenter" in ds or "VOILUTSequence" in ds:
            pixels = apply_voi_lut(pixels, ds)
        if photometric not in ("MONOCHROME1", "MONOCHROME2"):
            photometric = "MONOCHROME2"
    values = numpy.asarray(pixels, dtype="float64")
    if values.ndim != 2:
        raise ValueError(f"{path}: not a single-plane image (shape {values.shape})")
    low, high = float(values.min()), float(values.max())
    top = 255 if bits == 8 else 4095
    scaled = numpy.zeros(values.shape) if high <= low else (values - low) * (top / (high - low))
    item = Dataset()
    item.SamplesPerPixel = 1
    item.PhotometricInterpretation = photometric
    item.Rows, item.Columns = values.shape
    aspect = ds.get("PixelAspectRatio")
    item.PixelAspectRatio = [int(aspect[0]), int(aspect[1])] if aspect and len(aspect) == 2 else [1, 1]
    if bits == 8:
        item.BitsAllocated, item.BitsStored, item.HighBit = 8, 8, 7
        data = numpy.rint(scaled).astype("u1").tobytes()
        vr = "OB"
    else:
        item.BitsAllocated, item.BitsStored, item.HighBit = 16, 12, 11
        data = numpy.rint(scaled).astype("<u2").tobytes()
        vr = "OW"
    item.PixelRepresentation = 0
    item.add_new(0x7FE00010, vr, data)
    return item


def boxes_in_format(text: str) -> int:
    """How many Image Boxes an Image Display Format has.

    :raises ValueError: not STANDARD\\C,R, ROW\\a,b,... or COL\\a,b,...
    """
    match = _FORMAT.match(text.strip())
    if not match:
        raise ValueError(f"--format {text!r}: use STANDARD\\C,R, ROW\\a,b,... or COL\\a,b,...")
    numbers = [int(n) for n in match.group(2).split(",")]
    if match.group(1) == "STANDARD":
        if len(numbers) != 2:
            raise ValueError(f"--format {text!r}: STANDARD takes columns,rows")
        count = numbers[0] * numbers[1]
    else:
        count = sum(numbers)
    if count < 1 or 0 in numbers:
        raise ValueError(f"--format {text!r}: counts must be positive")
    return count


def auto_format(count: int) -> str:
    """The smallest STANDARD\\C,R grid (C >= R, at most 5x5) for ``count`` images."""
    count = max(1, min(count, 25))
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    return f"STANDARD\\{columns},{rows}"


# -- the SCU ------------------------------------------------------------------------------------------


class PrintSCU:
    """Basic Grayscale Print Management as an SCU on one association: every
    request goes on the meta SOP class's context and names the SOP class it is for.

    :raises LocalProtocolError: the peer accepted no context for the meta SOP class.
    """

    def __init__(self, association: Any) -> None:
        self.association = association
        context = association.negotiated.context_for(META_GRAYSCALE, as_scu=True)
        if context is None:
            raise LocalProtocolError("the peer accepted no context for Basic Grayscale Print Management")
        self.context = context

    def send(self, command: dict[str, Any], dataset: Dataset | None = None) -> Deferred:
        """Send a request; fires with its :class:`~dimsekit.operations.Response`."""
        command = {**command, "CommandDataSetType": NO_DATASET if dataset is None else 0x0001}
        return self.association.send_request(self.context, command, dataset)

    def _requested(self, field: CommandField, sop_class: str, uid: str, **extra: Any) -> dict[str, Any]:
        return {"CommandField": field, "RequestedSOPClassUID": sop_class, "RequestedSOPInstanceUID": uid, **extra}

    def n_create(self, sop_class: str, dataset: Dataset | None, uid: str | None = None) -> Deferred:
        command: dict[str, Any] = {"CommandField": CommandField.N_CREATE_RQ, "AffectedSOPClassUID": sop_class}
        if uid:
            command["AffectedSOPInstanceUID"] = uid
        return self.send(command, dataset)

    def n_set(self, sop_class: str, uid: str, dataset: Dataset) -> Deferred:
        return self.send(self._requested(CommandField.N_SET_RQ, sop_class, uid), dataset)

    def n_action(self, sop_class: str, uid: str, action_type: int = ACTION_PRINT) -> Deferred:
        return self.send(self._requested(CommandField.N_ACTION_RQ, sop_class, uid, ActionTypeID=int(action_type)))

    def n_delete(self, sop_class: str, uid: str) -> Deferred:
        return self.send(self._requested(CommandField.N_DELETE_RQ, sop_class, uid))

    def n_get(self, sop_class: str, uid: str, tags: tuple[int, ...] = ()) -> Deferred:
        extra = {"AttributeIdentifierList": tuple(tags)} if tags else {}
        return self.send(self._requested(CommandField.N_GET_RQ, sop_class, uid, **extra))

    def printer_status(self) -> Deferred:
        """N-GET of the Printer's Printer Status and Printer Status Info (the two
        every printer has: PS3.4 Annex H, Printer N-GET; asking for more, e.g. Printer Name,
        makes some printers answer 0x0105)."""
        return self.n_get(PRINTER, PRINTER_INSTANCE, (0x21100010, 0x21100020))


def session_dataset(args: argparse.Namespace) -> Dataset:
    ds = Dataset()
    ds.NumberOfCopies = str(args.copies)
    if args.medium:
        ds.MediumType = args.medium
    if args.destination:
        ds.FilmDestination = args.destination
    if args.label:
        ds.FilmSessionLabel = args.label
    return ds


def film_box_dataset(args: argparse.Namespace, display_format: str, session_uid: str) -> Dataset:
    ds = Dataset()
    ds.ImageDisplayFormat = display_format
    ds.FilmOrientation = args.orientation
    if args.film_size:
        ds.FilmSizeID = args.film_size
    if args.magnification:
        ds.MagnificationType = args.magnification
    reference = Dataset()
    reference.ReferencedSOPClassUID = FILM_SESSION
    reference.ReferencedSOPInstanceUID = session_uid
    ds.ReferencedFilmSessionSequence = [reference]
    return ds


# -- the tool ----------------------------------------------------------------------------------------


class _Refused(Exception):
    """An operation got a failure status (already printed)."""


def _check(what: str, response: Any) -> Any:
    comment = response.command.get("ErrorComment")
    text = f"{what}: {describe(response.status, PRINT_SERVICE)}" + (f" ({comment})" if comment else "")
    if category(response.status) in (Category.SUCCESS, Category.WARNING):
        print(text)
        return response
    print(f"dimsekit print: {text}", file=sys.stderr)
    raise _Refused(text)


@defer.inlineCallbacks
def run(reactor: Any, args: argparse.Namespace):
    if not 1 <= args.copies <= 99:
        print("dimsekit print: --copies must be 1 to 99", file=sys.stderr)
        return 2
    try:
        per_film = boxes_in_format(args.format) if args.format else None
    except ValueError as exc:
        print(f"dimsekit print: {exc}", file=sys.stderr)
        return 2
    images = []
    for name in args.files:
        try:
            images.append((name, grayscale_image(name, args.bits)))
        except (ValueError, OSError) as exc:
            print(f"dimsekit print: {exc}", file=sys.stderr)
            return 1
    films: list[tuple[str, list[tuple[str, Dataset]]]] = []
    capacity = per_film or 25
    for start in range(0, len(images), capacity):
        chunk = images[start : start + capacity]
        films.append((args.format or auto_format(len(chunk)), chunk))
    ae = make_ae(reactor, args)
    state: dict[str, Any] = {}
    try:
        code = yield _print(args, ae, films, state)
    finally:
        yield end_cleanly(reactor, state.get("association"))
    return code


@defer.inlineCallbacks
def _print(args: argparse.Namespace, ae: Any, films: list[tuple[str, list[tuple[str, Dataset]]]], state: dict[str, Any]):
    try:
        association = yield ae.associate(
            args.host, args.port, called=args.called, contexts=[META_GRAYSCALE], connect_timeout=args.timeout
        )
    except Exception:
        return fail("print", Failure())
    state["association"] = association
    try:
        scu = PrintSCU(association)
        response = yield scu.printer_status()
        if category(response.status) in (Category.SUCCESS, Category.WARNING) and response.dataset is not None:
            printer = response.dataset
            print(f"Printer {args.called}: {printer.get('PrinterStatus', '?')} ({printer.get('PrinterStatusInfo', '?')})")
        else:
            print(f"Printer status: {describe(response.status, PRINT_SERVICE)}")
        response = _check("N-CREATE Film Session", (yield scu.n_create(FILM_SESSION, session_dataset(args))))
        session_uid = str(response.command.get("AffectedSOPInstanceUID", ""))
        for number, (display_format, chunk) in enumerate(films, 1):
            response = _check(
                f"N-CREATE Film Box {number} ({display_format})",
                (yield scu.n_create(FILM_BOX, film_box_dataset(args, display_format, session_uid))),
            )
            film_box_uid = str(response.command.get("AffectedSOPInstanceUID", ""))
            boxes = list(response.dataset.get("ReferencedImageBoxSequence", [])) if response.dataset is not None else []
            if len(boxes) < len(chunk):
                print(f"dimsekit print: the Film Box has {len(boxes)} Image Boxes for {len(chunk)} images", file=sys.stderr)
                raise _Refused("too few image boxes")
            for position, ((name, image), box) in enumerate(zip(chunk, boxes, strict=False), 1):
                modifications = Dataset()
                modifications.ImageBoxPosition = position
                modifications.BasicGrayscaleImageSequence = [image]
                _check(f"N-SET Image Box {position} ({name})",
                       (yield scu.n_set(GRAYSCALE_IMAGE_BOX, str(box.ReferencedSOPInstanceUID), modifications)))
            _check(f"N-ACTION Print Film Box {number}", (yield scu.n_action(FILM_BOX, film_box_uid)))
            _check(f"N-DELETE Film Box {number}", (yield scu.n_delete(FILM_BOX, film_box_uid)))
        _check("N-DELETE Film Session", (yield scu.n_delete(FILM_SESSION, session_uid)))
        yield association.release()
    except _Refused:
        return 1
    except Exception:
        return fail("print", Failure())
    return 0
