"""Basic Grayscale Print Management SCP (PS3.4 Annex H) as a plugin: a printer that prints to PNG.

The Basic Grayscale Print Management Meta SOP Class (1.2.840.10008.5.1.1.9)
is what gets negotiated; the commands on its presentation context name the
SOP classes it groups (PS3.4 Annex H), and this plugin dispatches on them:

=============================  =======================  ====================================
SOP class                      UID                      operations
=============================  =======================  ====================================
Basic Film Session             1.2.840.10008.5.1.1.1    N-CREATE, N-SET, N-ACTION, N-DELETE
Basic Film Box                 1.2.840.10008.5.1.1.2    N-CREATE, N-SET, N-ACTION, N-DELETE
Basic Grayscale Image Box      1.2.840.10008.5.1.1.4    N-SET
Printer                        1.2.840.10008.5.1.1.16   N-GET (well-known instance ...1.1.17)
=============================  =======================  ====================================

The Printer SOP Class may also be negotiated on its own (N-GET).  Another
operation of these SOP classes is answered 0x0211 Unrecognized Operation; a
SOP class outside the meta SOP class on its context, 0x0122.

The objects live with their association (PS3.4 Annex H: a Film Session and
what hangs under it are the association's): one Film Session per
association; a Film Box belongs to the session, its Image Boxes -- made by
the Film Box N-CREATE, one per position of Image Display Format, returned in
Referenced Image Box Sequence -- to the Film Box.  N-CREATE takes the SCU's
SOP Instance UID or assigns one (returned as Affected SOP Instance UID).
N-DELETE frees an object and its children; release or abort frees them all.

Printing (N-ACTION, Action Type 1, on a Film Box or on the Film Session for
all of its Film Boxes) renders each Film Box to ``<data_dir>/prints/<Film Box
UID>.png`` (``-2``, ``-3``, ... when printed again): a grayscale image the
size of the film (Film Size ID and Film Orientation at ``dpi``), laid out by
Image Display Format (``STANDARD\\C,R``: R rows of C boxes; ``ROW\\a,b,...``:
rows of a, b, ... boxes; ``COL\\a,b,...``: columns), each image scaled to fit
its box (Magnification Type: REPLICATE nearest, BILINEAR, CUBIC; NONE: not
scaled, cropped when larger), Polarity REVERSE and MONOCHROME1 inverted,
empty boxes and borders in Empty Image / Border Density (BLACK, WHITE, or
hundredths of optical density).  Rendering and writing run in the reactor's
thread pool.

Statuses (PS3.7 Annex C and PS3.4 Annex H):

======  ==========================================================================
0x0000  success
0xB600  Film Session N-CREATE with Memory Allocation: not supported (the session is made)
0xB602  Film Session print: no Image Box holds an image (empty pages printed)
0xB603  Film Box print: no Image Box holds an image (an empty page printed)
0xC600  Film Session print: the session has no Film Box
0x0105  No Such Attribute: N-SET of an attribute the SOP class does not have
0x0106  Invalid Attribute Value: bad Image Display Format, Film Orientation, Film
        Size ID, Magnification Type, Polarity, Number of Copies, Print Priority,
        Image Box Position, pixel description, a value that cannot be read at all;
        a Film Box N-CREATE whose reference is not to a Basic Film Session; an
        N-SET of an attribute N-SET may not change (the Attribute Identifier
        List names them)
0x0110  Processing Failure: a second Film Session on one association; the PNG
        could not be written; the request's data set cannot be decoded
0x0111  Duplicate SOP Instance: N-CREATE with a UID already used on the association
0x0112  No Such SOP Instance: an unknown or deleted Film Session, Film Box, Image
        Box or Printer instance (also a Film Box N-CREATE whose Referenced Film
        Session Sequence names no live Film Session)
0x0117  Invalid Object Instance: N-CREATE with a malformed UID
0x0120  Missing Attribute / 0x0121 Missing Attribute Value: Type 1 attributes
0x0123  No Such Action: an Action Type ID other than 1
0x0213  Resource Limitation: a Film Session with ``MAX_FILM_BOXES`` (50) Film Boxes already
0xC605  Insufficient memory: an image larger than ``max_image_pixels``
0x0211  Unrecognized Operation; 0x0122 SOP Class not supported
======  ==========================================================================

Settings::

    [plugins.printing]
    directory = "..."          # default <data_dir>/prints
    dpi = 100                  # rendering resolution (25..600)
    printer_name = "DIMSEKIT"  # Printer Name returned by N-GET
    max_image_pixels = 16777216
"""

from __future__ import annotations

import math
import os
import re
import struct
import tempfile
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException
from pydicom.uid import generate_uid
from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from dimsekit.config import Config, ConfigError
from dimsekit.datasets import DatasetError, swap_words
from dimsekit.dimse import status as dimse_status
from dimsekit.errors import for_log
from dimsekit.hookspecs import hookimpl
from dimsekit.nservice import (
    INVALID_ATTRIBUTE_VALUE,
    PROCESSING_FAILURE,
    SUCCESS,
    UNRECOGNIZED_OPERATION,
    DuplicateInstance,
    InvalidAttributeValue,
    NoSuchAction,
    NoSuchAttribute,
    NoSuchInstance,
    NServiceError,
    ProcessingFailure,
    apply_modifications,
    attribute_identifiers,
    check_required,
    creation_uid,
    is_empty,
    select_attributes,
)
from dimsekit.registry import ServiceClass
from dimsekit.uids import by_keyword

__all__ = [
    "META_GRAYSCALE",
    "FILM_SESSION",
    "FILM_BOX",
    "GRAYSCALE_IMAGE_BOX",
    "PRINTER",
    "PRINTER_INSTANCE",
    "ACTION_PRINT",
    "Settings",
    "PrintService",
    "parse_display_format",
    "layout_boxes",
    "film_pixels",
    "render_film",
    "service",
]

#: what reading a malformed received data set raises (pydicom parses values lazily,
#: on first access): answered with a status, never a traceback
_UNREADABLE = (ValueError, TypeError, OverflowError, EOFError, OSError, struct.error, BytesLengthException)

_log = Logger(namespace="dimsekit.printing")

META_GRAYSCALE = by_keyword("BasicGrayscalePrintManagementMeta")  # 1.2.840.10008.5.1.1.9
FILM_SESSION = by_keyword("BasicFilmSession")  # 1.2.840.10008.5.1.1.1
FILM_BOX = by_keyword("BasicFilmBox")  # 1.2.840.10008.5.1.1.2
GRAYSCALE_IMAGE_BOX = by_keyword("BasicGrayscaleImageBox")  # 1.2.840.10008.5.1.1.4
PRINTER = by_keyword("Printer")  # 1.2.840.10008.5.1.1.16
PRINTER_INSTANCE = by_keyword("PrinterInstance")  # 1.2.840.10008.5.1.1.17
#: the SOP classes the meta SOP class groups (PS3.4 Annex H)
MEMBERS = frozenset({FILM_SESSION, FILM_BOX, GRAYSCALE_IMAGE_BOX, PRINTER})

#: Action Type ID "Print" of Film Session and Film Box N-ACTION (PS3.4 H.4.1, H.4.2).
ACTION_PRINT = 1

_SERVICE = "print"
MEMORY_ALLOCATION_NOT_SUPPORTED = 0xB600
SESSION_EMPTY_PAGES = 0xB602
FILM_BOX_EMPTY_PAGE = 0xB603
SESSION_WITHOUT_FILM_BOX = 0xC600
INSUFFICIENT_MEMORY = 0xC605
for _code, _name in (
    (MEMORY_ALLOCATION_NOT_SUPPORTED, "Memory allocation not supported"),
    (0xB601, "Film session printing (collation) is not supported"),
    (SESSION_EMPTY_PAGES, "Film Session SOP Instance hierarchy does not contain Image Box SOP Instances (empty page)"),
    (FILM_BOX_EMPTY_PAGE, "Film Box SOP Instance hierarchy does not contain Image Box SOP Instances (empty page)"),
    (0xB604, "Image size is larger than image box size, the image has been demagnified"),
    (0xB605, "Requested Min Density or Max Density outside of printer's operating range"),
    (SESSION_WITHOUT_FILM_BOX, "Film Session SOP Instance hierarchy does not contain Film Box SOP Instances"),
    (0xC601, "Unable to create Print Job SOP Instance; print queue is full"),
    (0xC603, "Image size is larger than image box size"),
    (INSUFFICIENT_MEMORY, "Insufficient memory in printer to store the image"),
    (0xC616, "There is an existing Film Box that has not been printed"),
):
    dimse_status.register(_SERVICE, _code, _name)

# -- the attributes -------------------------------------------------------------------------------

#: Film Session attributes (PS3.4 H.4.1) -> default when the SCU gives none.
SESSION_ATTRIBUTES: dict[str, Any] = {
    "NumberOfCopies": "1",
    "PrintPriority": "MED",
    "MediumType": "PAPER",
    "FilmDestination": "MAGAZINE",
    "FilmSessionLabel": None,
    "MemoryAllocation": None,
    "OwnerID": None,
}
#: Film Box attributes that N-CREATE takes (PS3.4 H.4.2) -> default.
FILM_BOX_ATTRIBUTES: dict[str, Any] = {
    "ImageDisplayFormat": None,
    "ReferencedFilmSessionSequence": None,
    "FilmOrientation": "PORTRAIT",
    "FilmSizeID": "8INX10IN",
    "MagnificationType": "BILINEAR",
    "SmoothingType": None,
    "BorderDensity": "BLACK",
    "EmptyImageDensity": "BLACK",
    "MinDensity": None,
    "MaxDensity": None,
    "Trim": "NO",
    "ConfigurationInformation": None,
    "AnnotationDisplayFormatID": None,
    "RequestedResolutionID": None,
    "Illumination": None,
    "ReflectedAmbientLight": None,
    "ReferencedPresentationLUTSequence": None,
}
#: What N-SET may change on a Film Box (PS3.4 H.4.2); the layout is fixed at N-CREATE.
FILM_BOX_SETTABLE = frozenset({
    "MagnificationType", "SmoothingType", "BorderDensity", "EmptyImageDensity", "MinDensity",
    "MaxDensity", "Trim", "ConfigurationInformation", "Illumination", "ReflectedAmbientLight",
    "ReferencedPresentationLUTSequence", "RequestedResolutionID",
})
#: Grayscale Image Box N-SET attributes (PS3.4 H.4.3).
IMAGE_BOX_ATTRIBUTES = frozenset({
    "ImageBoxPosition", "BasicGrayscaleImageSequence", "Polarity", "MagnificationType",
    "SmoothingType", "ConfigurationInformation", "RequestedImageSize", "RequestedDecimateCropBehavior",
    "MinDensity", "MaxDensity",
})
_IMAGE_REQUIREMENTS: dict[str, Any] = {
    "SamplesPerPixel": "1", "PhotometricInterpretation": "1", "Rows": "1", "Columns": "1",
    "BitsAllocated": "1", "BitsStored": "1", "HighBit": "1", "PixelRepresentation": "1", "PixelData": "1",
}
#: Printer attributes (PS3.3 C.13.9) this printer keeps, for N-GET.
PRINTER_MAINTAINED: frozenset[int] = frozenset({
    0x21100010, 0x21100020, 0x21100030,  # Printer Status, Printer Status Info, Printer Name
    0x00080070, 0x00081090, 0x00181000, 0x00181020,  # Manufacturer, Model, Serial Number, Software Versions
    0x00181200, 0x00181201,  # Date / Time of Last Calibration
})

ORIENTATIONS = ("PORTRAIT", "LANDSCAPE")
MAGNIFICATIONS = ("REPLICATE", "BILINEAR", "CUBIC", "NONE")
PRIORITIES = ("HIGH", "MED", "LOW")
POLARITIES = ("NORMAL", "REVERSE")
#: Film Size ID (PS3.3 C.13.8 defined terms) -> (width, height) in inches, portrait.
FILM_SIZES: dict[str, tuple[float, float]] = {
    "8INX10IN": (8, 10), "8_5INX11IN": (8.5, 11), "10INX12IN": (10, 12), "10INX14IN": (10, 14),
    "11INX14IN": (11, 14), "11INX17IN": (11, 17), "14INX14IN": (14, 14), "14INX17IN": (14, 17),
    "24CMX24CM": (24 / 2.54, 24 / 2.54), "24CMX30CM": (24 / 2.54, 30 / 2.54),
    "A4": (210 / 25.4, 297 / 25.4), "A3": (297 / 25.4, 420 / 25.4),
}
MAX_IMAGE_BOXES = 100
#: Film Boxes one Film Session may hold at once (more: 0x0213 Resource limitation)
MAX_FILM_BOXES = 50
RESOURCE_LIMITATION = 0x0213

_DISPLAY_FORMAT = re.compile(r"(STANDARD|ROW|COL)\\(\d{1,3}(?:,\d{1,3})*)\Z")


def parse_display_format(value: str) -> tuple[str, tuple[int, ...]]:
    """``"STANDARD\\\\2,3"`` -> ``("STANDARD", (2, 3))`` (PS3.3 C.13.8 Image Display Format).

    :raises ValueError: a form this printer does not lay out (SLIDE, SUPERSLIDE,
        CUSTOM, zero or too many boxes).
    """
    text = str(value).strip()
    match = _DISPLAY_FORMAT.match(text)
    if not match:
        raise ValueError(f"Image Display Format {text[:40]!r} is not STANDARD\\C,R, ROW\\... or COL\\...")
    kind = match.group(1)
    numbers = tuple(int(n) for n in match.group(2).split(","))
    if any(n == 0 for n in numbers) or (kind == "STANDARD" and len(numbers) != 2):
        raise ValueError(f"Image Display Format {text!r}: give positive counts (STANDARD takes two)")
    if box_count(kind, numbers) > MAX_IMAGE_BOXES:
        raise ValueError(f"Image Display Format {text!r}: more than {MAX_IMAGE_BOXES} image boxes")
    return kind, numbers


def box_count(kind: str, numbers: tuple[int, ...]) -> int:
    """How many Image Boxes a display format has."""
    if kind == "STANDARD":
        return numbers[0] * numbers[1]
    return sum(numbers)


def layout_boxes(kind: str, numbers: tuple[int, ...], width: int, height: int, gap: int = 0) -> list[tuple[int, int, int, int]]:
    """The (left, top, right, bottom) pixel rectangle of each Image Box, in
    Image Box Position order (PS3.3 C.13.8: left to right, top to bottom; for
    COL, top to bottom, left to right)."""

    def split(total: int, parts: int) -> list[tuple[int, int]]:
        edges = [round(i * total / parts) for i in range(parts + 1)]
        return [(edges[i] + gap, edges[i + 1] - gap) for i in range(parts)]

    boxes: list[tuple[int, int, int, int]] = []
    if kind == "STANDARD":
        columns, rows = numbers
        for top, bottom in split(height, rows):
            for left, right in split(width, columns):
                boxes.append((left, top, right, bottom))
    elif kind == "ROW":
        for (top, bottom), count in zip(split(height, len(numbers)), numbers, strict=True):
            for left, right in split(width, count):
                boxes.append((left, top, right, bottom))
    else:  # COL
        for (left, right), count in zip(split(width, len(numbers)), numbers, strict=True):
            for top, bottom in split(height, count):
                boxes.append((left, top, right, bottom))
    return boxes


def film_pixels(film_size: str, orientation: str, dpi: int) -> tuple[int, int]:
    """(width, height) in pixels of a film at ``dpi``."""
    width, height = FILM_SIZES.get(film_size, FILM_SIZES["8INX10IN"])
    if orientation == "LANDSCAPE":
        width, height = height, width
    return max(1, round(width * dpi)), max(1, round(height * dpi))


def density_gray(value: Any, default: int = 0) -> int:
    """Border / Empty Image Density as an 8-bit gray: BLACK 0, WHITE 255, or
    hundredths of optical density (0 = clear = white, 300 and more = black)."""
    text = str(value or "").strip().upper()
    if text == "BLACK":
        return 0
    if text == "WHITE":
        return 255
    if text.isdigit():
        return max(0, min(255, round(255 * (1 - int(text) / 300))))
    return default


# -- settings -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Settings:
    """``[plugins.printing]``, checked."""

    directory: Path
    dpi: int = 100
    printer_name: str = "DIMSEKIT"
    max_image_pixels: int = 4096 * 4096

    @classmethod
    def from_config(cls, config: Config) -> Settings:
        section = config.plugins.get("printing", {})
        allowed = {"directory", "dpi", "printer_name", "max_image_pixels"}
        for key in section:
            if key not in allowed:
                raise ConfigError(
                    f"plugins.printing.{key}: unknown key; the keys of [plugins.printing] are: {', '.join(sorted(allowed))}"
                )
        directory = section.get("directory")
        if directory is not None and (not isinstance(directory, str) or not directory.strip()):
            raise ConfigError("plugins.printing.directory: give the directory for the PNG files as a string")
        dpi = section.get("dpi", 100)
        if isinstance(dpi, bool) or not isinstance(dpi, int) or not 25 <= dpi <= 600:
            raise ConfigError(f"plugins.printing.dpi: give a whole number from 25 to 600 (got {dpi!r})")
        name = section.get("printer_name", "DIMSEKIT")
        if not isinstance(name, str) or not name.strip() or len(name) > 64:
            raise ConfigError("plugins.printing.printer_name: give a name of 1 to 64 characters")
        limit = section.get("max_image_pixels", 4096 * 4096)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigError(f"plugins.printing.max_image_pixels: give a positive whole number (got {limit!r})")
        root = Path(directory) if directory else Path(config.node.data_dir) / "prints"
        return cls(directory=root.expanduser().resolve(), dpi=dpi, printer_name=name.strip(), max_image_pixels=limit)


# -- the objects of one association --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Picture:
    """The pixels of a Preformatted Grayscale Image as received."""

    rows: int
    columns: int
    bits_stored: int  #: 8 (one byte a pixel) or 12 (two bytes, little endian)
    inverted: bool  #: MONOCHROME1: 0 is white
    data: bytes

    def gray(self) -> Any:
        """A Pillow "L" image, white the brightest (worker thread)."""
        from PIL import Image

        size = (self.columns, self.rows)
        if self.bits_stored == 8:
            image = Image.frombytes("L", size, self.data)
        else:
            wide = Image.frombytes("I", size, self.data, "raw", "I;16")
            image = wide.point(lambda value: value * (1 / 16)).convert("L")  # 12 bits -> 8
        return image.point(_INVERT) if self.inverted else image


_INVERT = [255 - value for value in range(256)]


@dataclass(eq=False)
class ImageBox:
    uid: str
    position: int
    film_box: str
    dataset: Dataset = field(default_factory=Dataset)
    #: the image, once an N-SET gave one
    image: Picture | None = None


@dataclass(eq=False)
class FilmBox:
    uid: str
    session: str
    dataset: Dataset
    layout: tuple[str, tuple[int, ...]]
    image_boxes: list[str] = field(default_factory=list)
    printed: int = 0


@dataclass(eq=False)
class FilmSession:
    uid: str
    dataset: Dataset
    film_boxes: list[str] = field(default_factory=list)


@dataclass(eq=False)
class PrintState:
    """What one association created."""

    session: FilmSession | None = None
    film_boxes: dict[str, FilmBox] = field(default_factory=dict)
    image_boxes: dict[str, ImageBox] = field(default_factory=dict)

    def used(self, uid: str) -> bool:
        return (self.session is not None and self.session.uid == uid) or uid in self.film_boxes or uid in self.image_boxes


# -- the service -----------------------------------------------------------------------------------


def _value_error(keyword: str, tag: int, value: Any, why: str) -> InvalidAttributeValue:
    bad = Dataset()
    try:
        setattr(bad, keyword, value)
    except Exception:  # noqa: BLE001 - a value pydicom will not take back: list the tag only
        bad = None
    return InvalidAttributeValue(f"{keyword}: {why}"[:64], attributes=(tag,), dataset=bad)


def _tag(keyword: str) -> int:
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return int(tag)


def _check_choice(ds: Dataset, keyword: str, choices: tuple[str, ...]) -> None:
    if keyword in ds and not is_empty(ds[keyword]):
        value = str(ds[keyword].value).strip().upper()
        if value not in choices:
            raise _value_error(keyword, _tag(keyword), ds[keyword].value, f"not one of {'/'.join(choices)}")


class PrintService:
    """The print SCP: a handler per DIMSE-N operation on the meta SOP class,
    dispatching on the command's SOP class.  See the module docstring."""

    name = "print"

    def __init__(self) -> None:
        self._states: weakref.WeakKeyDictionary[Any, PrintState] = weakref.WeakKeyDictionary()
        self.table: dict[tuple[str, str], Callable[[Any, PrintState], Any]] = {
            (FILM_SESSION, "N-CREATE"): self.create_session,
            (FILM_SESSION, "N-SET"): self.set_session,
            (FILM_SESSION, "N-ACTION"): self.print_session,
            (FILM_SESSION, "N-DELETE"): self.delete_session,
            (FILM_BOX, "N-CREATE"): self.create_film_box,
            (FILM_BOX, "N-SET"): self.set_film_box,
            (FILM_BOX, "N-ACTION"): self.print_film_box,
            (FILM_BOX, "N-DELETE"): self.delete_film_box,
            (GRAYSCALE_IMAGE_BOX, "N-SET"): self.set_image_box,
            (PRINTER, "N-GET"): self.get_printer,
        }
        #: ``run(function, *args) -> Deferred``: where rendering runs (tests may replace it)
        self.run_blocking: Callable[..., defer.Deferred] | None = None

    # -- declaration and dispatch ---------------------------------------------------------------

    def service_classes(self) -> list[ServiceClass]:
        commands = ("N-CREATE", "N-SET", "N-GET", "N-ACTION", "N-DELETE")
        return [
            ServiceClass(
                name="print",
                sop_classes=(META_GRAYSCALE, PRINTER),
                handlers={command: self._handler(command) for command in commands},
            )
        ]

    def _handler(self, command: str) -> Callable[[Any], Any]:
        def handle(request: Any) -> Any:
            return defer.Deferred.fromCoroutine(self._dispatch(command, request))

        handle.__name__ = f"print_{command.replace('-', '_').lower()}"
        return handle

    async def _dispatch(self, command: str, request: Any) -> Any:
        sop_class = request.sop_class_uid
        negotiated = request.context.abstract_syntax
        if sop_class not in MEMBERS or (negotiated == PRINTER and sop_class != PRINTER):
            return 0x0122, None, {"ErrorComment": f"{sop_class[:40]} is not served on this context"}
        function = self.table.get((sop_class, command))
        if function is None:
            return UNRECOGNIZED_OPERATION, None, {"ErrorComment": f"{command} is not an operation of this SOP class"}
        try:
            result = function(request, self.state(request.association))
            if isinstance(result, defer.Deferred) or hasattr(result, "__await__"):
                result = await result
            return result
        except NServiceError as error:
            status, dataset, fields = error.response()
            _log.info("print: {command} answered 0x{status:04X} ({comment})", command=command, status=status,
                      comment=for_log(error.comment or ""))
            return status, dataset, fields
        except DatasetError as exc:  # the request's data set cannot be parsed
            _log.warn("print: {command} from {caller}: {error}", command=command, caller=_caller(request), error=for_log(exc))
            return PROCESSING_FAILURE, None, {"ErrorComment": "cannot decode the data set"}
        except _UNREADABLE as exc:  # a value pydicom cannot read or convert
            _log.warn("print: {command} from {caller}: unusable value ({error})", command=command,
                      caller=_caller(request), error=for_log(exc))
            return INVALID_ATTRIBUTE_VALUE, None, {"ErrorComment": f"unusable attribute value: {exc}"[:64]}

    def state(self, association: Any) -> PrintState:
        state = self._states.get(association)
        if state is None:
            state = self._states[association] = PrintState()
        return state

    def forget(self, association: Any) -> None:
        """The association ended: its print objects go with it."""
        state = self._states.pop(association, None)
        if state is not None and state.session is not None:
            _log.info("print: Film Session {uid} ended with its association", uid=state.session.uid)

    @staticmethod
    def settings(request: Any) -> Settings:
        return Settings.from_config(request.association.ae.config)

    # -- Film Session ------------------------------------------------------------------------------

    def create_session(self, request: Any, state: PrintState) -> Any:
        uid, assigned = creation_uid(request)
        if state.session is not None:
            raise ProcessingFailure("this association has a Film Session already (one per association)")
        if state.used(uid):
            raise DuplicateInstance(uid)
        received = request.dataset() or Dataset()
        dataset = Dataset()
        for keyword, default in SESSION_ATTRIBUTES.items():
            if keyword in received and not is_empty(received[keyword]):
                dataset[keyword] = received[keyword]
            elif default is not None:
                setattr(dataset, keyword, default)
        self._check_session(dataset)
        status = SUCCESS
        if "MemoryAllocation" in dataset:
            status = MEMORY_ALLOCATION_NOT_SUPPORTED
            del dataset.MemoryAllocation
        state.session = FilmSession(uid, dataset)
        _log.info("print: Film Session {uid} created by {caller}", uid=uid, caller=_caller(request))
        return status, dataset, ({"AffectedSOPInstanceUID": uid} if assigned else {})

    @staticmethod
    def _check_session(dataset: Dataset) -> None:
        copies = str(dataset.get("NumberOfCopies", "1")).strip()
        if not copies.isdigit() or not 1 <= int(copies) <= 99:
            raise _value_error("NumberOfCopies", 0x20000010, dataset.NumberOfCopies, "give 1 to 99")
        _check_choice(dataset, "PrintPriority", PRIORITIES)

    def _session(self, state: PrintState, uid: str) -> FilmSession:
        if state.session is None or state.session.uid != uid:
            raise NoSuchInstance(uid)
        return state.session

    def set_session(self, request: Any, state: PrintState) -> Any:
        session = self._session(state, request.sop_instance_uid)
        modifications = request.dataset() or Dataset()
        self._only(modifications, set(SESSION_ATTRIBUTES) - {"MemoryAllocation"})
        changed = apply_modifications(session.dataset, modifications)
        self._check_session(changed)
        session.dataset = changed
        return SUCCESS, None, {"AffectedSOPInstanceUID": session.uid}

    async def print_session(self, request: Any, state: PrintState) -> Any:
        session = self._session(state, request.sop_instance_uid)
        self._print_action(request)
        if not session.film_boxes:
            return SESSION_WITHOUT_FILM_BOX, None, {"ErrorComment": "the Film Session has no Film Box"}
        anything = False
        for uid in list(session.film_boxes):
            film_box = state.film_boxes[uid]
            anything = await self._print(request, state, film_box) or anything
        return (SUCCESS if anything else SESSION_EMPTY_PAGES), None, {}

    def delete_session(self, request: Any, state: PrintState) -> Any:
        session = self._session(state, request.sop_instance_uid)
        for uid in list(session.film_boxes):
            self._drop_film_box(state, uid)
        state.session = None
        _log.info("print: Film Session {uid} deleted", uid=session.uid)
        return SUCCESS, None, {"AffectedSOPInstanceUID": session.uid}

    # -- Film Box -------------------------------------------------------------------------------

    def create_film_box(self, request: Any, state: PrintState) -> Any:
        uid, assigned = creation_uid(request)
        if state.used(uid):
            raise DuplicateInstance(uid)
        received = request.dataset() or Dataset()
        check_required(received, {
            "ImageDisplayFormat": "1",
            "ReferencedFilmSessionSequence": ("1", {"ReferencedSOPClassUID": "1", "ReferencedSOPInstanceUID": "1"}),
        })
        reference = received.ReferencedFilmSessionSequence[0]
        if str(reference.ReferencedSOPClassUID) != FILM_SESSION:
            raise _value_error("ReferencedFilmSessionSequence", 0x20100500, None, "not a Basic Film Session")
        session_uid = str(reference.ReferencedSOPInstanceUID)
        if state.session is None or state.session.uid != session_uid:
            raise NoSuchInstance(session_uid)
        try:
            layout = parse_display_format(received.ImageDisplayFormat)
        except ValueError as exc:
            raise _value_error("ImageDisplayFormat", 0x20100010, received.ImageDisplayFormat, str(exc)) from None
        dataset = Dataset()
        for keyword, default in FILM_BOX_ATTRIBUTES.items():
            if keyword in received and not is_empty(received[keyword]):
                dataset[keyword] = received[keyword]
            elif default is not None:
                setattr(dataset, keyword, default)
        self._check_film_box(dataset)
        if len(state.session.film_boxes) >= MAX_FILM_BOXES:
            raise NServiceError(f"a Film Session holds at most {MAX_FILM_BOXES} Film Boxes", status=RESOURCE_LIMITATION)
        film_box = FilmBox(uid, session_uid, dataset, layout)
        items = []
        for position in range(1, box_count(*layout) + 1):
            box = ImageBox(str(generate_uid()), position, uid)
            state.image_boxes[box.uid] = box
            film_box.image_boxes.append(box.uid)
            item = Dataset()
            item.ReferencedSOPClassUID = GRAYSCALE_IMAGE_BOX
            item.ReferencedSOPInstanceUID = box.uid
            items.append(item)
        dataset.ReferencedImageBoxSequence = items
        state.film_boxes[uid] = film_box
        state.session.film_boxes.append(uid)
        _log.info("print: Film Box {uid} ({layout}, {n} image boxes) created", uid=uid,
                  layout=str(dataset.ImageDisplayFormat), n=len(items))
        return SUCCESS, dataset, ({"AffectedSOPInstanceUID": uid} if assigned else {})

    @staticmethod
    def _check_film_box(dataset: Dataset) -> None:
        _check_choice(dataset, "FilmOrientation", ORIENTATIONS)
        _check_choice(dataset, "MagnificationType", MAGNIFICATIONS)
        _check_choice(dataset, "FilmSizeID", tuple(FILM_SIZES))
        _check_choice(dataset, "Trim", ("YES", "NO"))

    def _film_box(self, state: PrintState, uid: str) -> FilmBox:
        film_box = state.film_boxes.get(uid)
        if film_box is None:
            raise NoSuchInstance(uid)
        return film_box

    def set_film_box(self, request: Any, state: PrintState) -> Any:
        film_box = self._film_box(state, request.sop_instance_uid)
        modifications = request.dataset() or Dataset()
        self._only(modifications, FILM_BOX_SETTABLE, fixed=set(FILM_BOX_ATTRIBUTES) - FILM_BOX_SETTABLE)
        changed = apply_modifications(film_box.dataset, modifications)
        self._check_film_box(changed)
        film_box.dataset = changed
        return SUCCESS, None, {"AffectedSOPInstanceUID": film_box.uid}

    async def print_film_box(self, request: Any, state: PrintState) -> Any:
        film_box = self._film_box(state, request.sop_instance_uid)
        self._print_action(request)
        anything = await self._print(request, state, film_box)
        return (SUCCESS if anything else FILM_BOX_EMPTY_PAGE), None, {}

    def delete_film_box(self, request: Any, state: PrintState) -> Any:
        uid = request.sop_instance_uid
        self._film_box(state, uid)
        self._drop_film_box(state, uid)
        return SUCCESS, None, {"AffectedSOPInstanceUID": uid}

    def _drop_film_box(self, state: PrintState, uid: str) -> None:
        film_box = state.film_boxes.pop(uid)
        for box in film_box.image_boxes:
            state.image_boxes.pop(box, None)
        if state.session is not None and uid in state.session.film_boxes:
            state.session.film_boxes.remove(uid)

    # -- Image Box ------------------------------------------------------------------------------

    def set_image_box(self, request: Any, state: PrintState) -> Any:
        box = state.image_boxes.get(request.sop_instance_uid)
        if box is None:
            raise NoSuchInstance(request.sop_instance_uid)
        modifications = request.dataset() or Dataset()
        self._only(modifications, IMAGE_BOX_ATTRIBUTES)
        check_required(modifications, {"ImageBoxPosition": "1"})
        if int(modifications.ImageBoxPosition) != box.position:
            raise _value_error("ImageBoxPosition", 0x20200010, modifications.ImageBoxPosition,
                               f"this Image Box is at position {box.position}")
        _check_choice(modifications, "Polarity", POLARITIES)
        _check_choice(modifications, "MagnificationType", MAGNIFICATIONS)
        image = None
        if "BasicGrayscaleImageSequence" in modifications and not is_empty(modifications["BasicGrayscaleImageSequence"]):
            image = self._image(modifications.BasicGrayscaleImageSequence[0], self.settings(request))
        stored = Dataset()
        for element in modifications:
            if element.keyword != "BasicGrayscaleImageSequence":
                stored[element.tag] = element
        box.dataset = apply_modifications(box.dataset, stored)
        if image is not None:
            box.image = image
        return SUCCESS, None, {"AffectedSOPInstanceUID": box.uid}

    @staticmethod
    def _image(item: Dataset, settings: Settings) -> Picture:
        """The Preformatted Grayscale Image (PS3.3 C.13.5), checked."""
        sequence_tag = (0x20200110,)
        try:
            check_required(item, _IMAGE_REQUIREMENTS)
        except NServiceError as error:
            error.attributes = sequence_tag
            raise
        photometric = str(item.PhotometricInterpretation).strip()
        rows, columns = int(item.Rows), int(item.Columns)
        allocated, stored, high = int(item.BitsAllocated), int(item.BitsStored), int(item.HighBit)
        problems = []
        if int(item.SamplesPerPixel) != 1:
            problems.append("Samples per Pixel must be 1")
        if photometric not in ("MONOCHROME1", "MONOCHROME2"):
            problems.append("Photometric Interpretation must be MONOCHROME1 or MONOCHROME2")
        if (allocated, stored) not in ((8, 8), (16, 12)) or high != stored - 1:
            problems.append("Bits Allocated/Stored/High Bit must be 8/8/7 or 16/12/11")
        if int(item.PixelRepresentation) != 0:
            problems.append("Pixel Representation must be 0")
        if rows < 1 or columns < 1:
            problems.append("Rows and Columns must be positive")
        if problems:
            raise InvalidAttributeValue("; ".join(problems)[:64], attributes=sequence_tag)
        if rows * columns > settings.max_image_pixels:
            raise NServiceError(f"{rows}x{columns} is more than this printer takes", status=INSUFFICIENT_MEMORY)
        data = bytes(item.PixelData)
        need = rows * columns * (allocated // 8)
        if len(data) < need:
            raise InvalidAttributeValue(f"Pixel Data has {len(data)} bytes, {need} needed"[:64], attributes=sequence_tag)
        data = data[:need]
        if allocated == 16 and item.original_encoding[1] is False:
            # Explicit VR Big Endian: each OW word arrived most significant byte first (PS3.5 7.3);
            # pydicom keeps Pixel Data as received, Picture reads little endian words
            data = swap_words(data, 2)
        # converted to 8 bits when rendered, in the worker thread
        return Picture(rows, columns, stored, photometric == "MONOCHROME1", data)

    @staticmethod
    def _only(modifications: Dataset, allowed: set[str] | frozenset[str], fixed: set[str] = frozenset()) -> None:
        """N-SET: attributes the SOP class does not have -> 0x0105; ones fixed at N-CREATE -> 0x0106."""
        unknown = [e for e in modifications if e.keyword not in allowed and e.keyword not in fixed and e.tag != 0x00080005]
        if unknown:
            raise NoSuchAttribute(f"not attributes of this SOP class: {', '.join(e.keyword or str(e.tag) for e in unknown)}"[:64],
                                  attributes=tuple(int(e.tag) for e in unknown))
        frozen = [e for e in modifications if e.keyword in fixed]
        if frozen:
            raise InvalidAttributeValue(f"fixed at N-CREATE: {', '.join(e.keyword for e in frozen)}"[:64],
                                        attributes=tuple(int(e.tag) for e in frozen))

    # -- printing -----------------------------------------------------------------------------------

    @staticmethod
    def _print_action(request: Any) -> None:
        action = int(request.command.get("ActionTypeID", -1))
        if action != ACTION_PRINT:
            raise NoSuchAction(action)

    async def _print(self, request: Any, state: PrintState, film_box: FilmBox) -> bool:
        """Render one Film Box to a PNG (in a thread); True when it held any image."""
        settings = self.settings(request)
        session = state.session
        ds = film_box.dataset
        boxes = [state.image_boxes[uid] for uid in film_box.image_boxes if uid in state.image_boxes]
        job = {
            "layout": film_box.layout,
            "size": film_pixels(str(ds.get("FilmSizeID", "8INX10IN")), str(ds.get("FilmOrientation", "PORTRAIT")), settings.dpi),
            "border": density_gray(ds.get("BorderDensity"), 0),
            "empty": density_gray(ds.get("EmptyImageDensity"), 0),
            "magnification": str(ds.get("MagnificationType", "BILINEAR")),
            "images": [
                (box.image, str(box.dataset.get("Polarity", "NORMAL")), str(box.dataset.get("MagnificationType", "") or ""))
                for box in boxes
            ],
            "text": {
                "FilmBoxUID": film_box.uid,
                "FilmSessionUID": film_box.session,
                "ImageDisplayFormat": str(ds.ImageDisplayFormat),
                "FilmOrientation": str(ds.get("FilmOrientation", "")),
                "FilmSizeID": str(ds.get("FilmSizeID", "")),
                "NumberOfCopies": str(session.dataset.get("NumberOfCopies", "1")) if session else "1",
                "FilmSessionLabel": str(session.dataset.get("FilmSessionLabel", "")) if session else "",
                "Requestor": _caller(request),
            },
        }
        film_box.printed += 1
        name = film_box.uid if film_box.printed == 1 else f"{film_box.uid}-{film_box.printed}"
        target = settings.directory / f"{name}.png"
        try:
            await self._run(request, _render_and_write, job, target)
        except Exception as exc:
            _log.error("print: Film Box {uid}: writing {path} failed: {error}", uid=film_box.uid, path=str(target), error=exc)
            raise ProcessingFailure(f"cannot write the print: {exc}"[:64]) from None
        _log.info("print: Film Box {uid} printed to {path} for {caller}", uid=film_box.uid, path=str(target),
                  caller=_caller(request))
        return any(image is not None for image, _p, _m in job["images"])

    def _run(self, request: Any, function: Callable[..., Any], *args: Any) -> defer.Deferred:
        if self.run_blocking is not None:
            return self.run_blocking(function, *args)
        reactor = request.association.ae.reactor
        get_pool = getattr(reactor, "getThreadPool", None)
        if get_pool is None:  # a test reactor without threads
            return defer.maybeDeferred(function, *args)
        return deferToThreadPool(reactor, get_pool(), function, *args)

    # -- Printer --------------------------------------------------------------------------------

    def get_printer(self, request: Any, state: PrintState) -> Any:
        if request.sop_instance_uid != PRINTER_INSTANCE:
            raise NoSuchInstance(request.sop_instance_uid)
        settings = self.settings(request)
        printer = Dataset()
        printer.PrinterStatus = "NORMAL"
        printer.PrinterStatusInfo = "NORMAL"
        printer.PrinterName = settings.printer_name
        printer.Manufacturer = "dimsekit"
        printer.ManufacturerModelName = "PNG film printer"
        printer.DeviceSerialNumber = "1"
        printer.SoftwareVersions = "dimsekit"
        tags = attribute_identifiers(request.command)
        selected, unsupported = select_attributes(printer, tags, maintained=PRINTER_MAINTAINED)
        if unsupported:
            return 0x0107, selected, {"AttributeIdentifierList": unsupported}
        return SUCCESS, selected


def _caller(request: Any) -> str:
    return str(getattr(request.association, "remote_ae_title", "") or "?")


# -- rendering (in a worker thread) ------------------------------------------------------------------


_RESAMPLING = {"REPLICATE": "NEAREST", "BILINEAR": "BILINEAR", "CUBIC": "BICUBIC"}


def render_film(job: Mapping[str, Any]) -> Any:
    """The film of a print job as a Pillow "L" image (see :meth:`PrintService._print`)."""
    from PIL import Image

    width, height = job["size"]
    film = Image.new("L", (width, height), job["border"])
    gap = max(1, min(width, height) // 200)
    boxes = layout_boxes(*job["layout"], width, height, gap)
    for (left, top, right, bottom), (image, polarity, magnification) in zip(boxes, job["images"], strict=False):
        box_w, box_h = max(1, right - left), max(1, bottom - top)
        if image is None:
            film.paste(job["empty"], (left, top, left + box_w, top + box_h))
            continue
        picture = image.gray()
        if polarity.strip().upper() == "REVERSE":
            picture = picture.point(_INVERT)
        columns, rows = picture.size
        film.paste(job["empty"], (left, top, left + box_w, top + box_h))
        kind = (magnification or job["magnification"]).strip().upper()
        if kind == "NONE":
            # not scaled: centred, cropped to the box when larger
            crop_w, crop_h = min(columns, box_w), min(rows, box_h)
            x0, y0 = (columns - crop_w) // 2, (rows - crop_h) // 2
            picture = picture.crop((x0, y0, x0 + crop_w, y0 + crop_h))
        else:
            scale = min(box_w / columns, box_h / rows)
            size = (max(1, math.floor(columns * scale)), max(1, math.floor(rows * scale)))
            resample = getattr(Image.Resampling, _RESAMPLING.get(kind, "BILINEAR"))
            picture = picture.resize(size, resample)
        film.paste(picture, (left + (box_w - picture.width) // 2, top + (box_h - picture.height) // 2))
    return film


def _render_and_write(job: Mapping[str, Any], target: Path) -> Path:
    """Render and write the PNG atomically (temporary file, then rename)."""
    from PIL import PngImagePlugin

    film = render_film(job)
    info = PngImagePlugin.PngInfo()
    for key, value in job["text"].items():
        info.add_text(key, value)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".print-", suffix=".png", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as f:
            film.save(f, format="PNG", pnginfo=info)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, target)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
    return target


#: The plugin's service (one per process; its state is per association).
service = PrintService()


@hookimpl
def dimsekit_configure(config: Config) -> None:
    """Check ``[plugins.printing]``."""
    Settings.from_config(config)


@hookimpl
def dimsekit_service_classes() -> list[ServiceClass]:
    """Declare the Basic Grayscale Print Management Meta SOP Class and the Printer SOP Class, SCP role."""
    return service.service_classes()


@hookimpl
def dimsekit_on_association_released(association: Any) -> None:
    service.forget(association)


@hookimpl
def dimsekit_on_association_aborted(association: Any, reason: str) -> None:
    service.forget(association)
