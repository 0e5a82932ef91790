"""The Basic Grayscale Print Management SCP (PS3.4 Annex H) over in-memory
associations, driven by the ``dimsekit print`` SCU class: dispatch under the
meta SOP class, the object hierarchy and its N-DELETEs, the PNG films and
their layout, the statuses, the settings."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from PIL import Image
from pydicom.dataset import Dataset

import dimsekit_plugins.printing as printing
import dimsekit_plugins.verification as verification
from dimsekit import make_plugin_manager
from dimsekit.cli.print import PrintSCU, auto_format, boxes_in_format
from dimsekit.config import ConfigError, from_mapping
from dimsekit.dimse.commands import CommandField
from dimsekit.testing import AssociationPair
from dimsekit_plugins.printing import (
    FILM_BOX,
    FILM_SESSION,
    GRAYSCALE_IMAGE_BOX,
    META_GRAYSCALE,
    PRINTER,
    PRINTER_INSTANCE,
    film_pixels,
    layout_boxes,
    parse_display_format,
)

VERIFICATION = "1.2.840.10008.1.1"
UID = "1.2.826.0.1.3680043.8.498.6060."


def make_scp(tmp_path: Path, **settings: Any) -> SimpleNamespace:
    config = from_mapping({"plugins": {"printing": {"directory": str(tmp_path / "prints"), "dpi": 25, **settings}}})
    pm = make_plugin_manager(load_entrypoints=False, plugins=[printing, verification])
    pair = AssociationPair(pm, acceptor_config=config)
    assoc = pair.associate(contexts=[META_GRAYSCALE, PRINTER, VERIFICATION])
    return SimpleNamespace(pair=pair, assoc=assoc, scu=PrintSCU(assoc), call=pair.result, dir=tmp_path / "prints")


@pytest.fixture
def scp(tmp_path: Path) -> SimpleNamespace:
    return make_scp(tmp_path)


def image(value: int, *, rows: int = 8, columns: int = 8, bits: int = 8, photometric: str = "MONOCHROME2") -> Dataset:
    """A Basic Grayscale Image Sequence item, every pixel ``value``."""
    item = Dataset()
    item.SamplesPerPixel = 1
    item.PhotometricInterpretation = photometric
    item.Rows, item.Columns = rows, columns
    item.PixelAspectRatio = [1, 1]
    item.PixelRepresentation = 0
    if bits == 8:
        item.BitsAllocated, item.BitsStored, item.HighBit = 8, 8, 7
        item.add_new(0x7FE00010, "OB", bytes([value]) * rows * columns)
    else:
        item.BitsAllocated, item.BitsStored, item.HighBit = 16, 12, 11
        item.add_new(0x7FE00010, "OW", value.to_bytes(2, "little") * rows * columns)
    return item


def image_box_set(position: int, item: Dataset | None = None, **values: Any) -> Dataset:
    ds = Dataset()
    ds.ImageBoxPosition = position
    if item is not None:
        ds.BasicGrayscaleImageSequence = [item]
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def film_box(session_uid: str, display_format: str = "STANDARD\\2,2", **values: Any) -> Dataset:
    ds = Dataset()
    ds.ImageDisplayFormat = display_format
    ref = Dataset()
    ref.ReferencedSOPClassUID = FILM_SESSION
    ref.ReferencedSOPInstanceUID = session_uid
    ds.ReferencedFilmSessionSequence = [ref]
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def session(s, uid: str | None = None, **values: Any) -> str:
    ds = Dataset()
    ds.NumberOfCopies = "1"
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    rsp = s.call(s.scu.n_create(FILM_SESSION, ds, uid))
    assert rsp.status == 0x0000, rsp.command
    return str(rsp.AffectedSOPInstanceUID)


def create_box(s, session_uid: str, display_format: str = "STANDARD\\2,2", uid: str | None = None, **values: Any):
    rsp = s.call(s.scu.n_create(FILM_BOX, film_box(session_uid, display_format, **values), uid))
    assert rsp.status == 0x0000, rsp.command
    boxes = [str(i.ReferencedSOPInstanceUID) for i in rsp.dataset.ReferencedImageBoxSequence]
    return str(rsp.AffectedSOPInstanceUID), boxes, rsp


def still_there(s) -> None:
    assert s.call(s.assoc.echo()) == 0x0000 and not s.assoc.ended


def gray_at(png: Path, x: float, y: float) -> int:
    with Image.open(png) as im:
        return im.getpixel((int(x * im.width), int(y * im.height)))


# -- the whole flow ---------------------------------------------------------------------------------


def test_print_a_film_with_layout_and_pixels(scp):
    session_uid = session(scp, FilmSessionLabel="ward 4", NumberOfCopies="2")
    box_uid, boxes, rsp = create_box(scp, session_uid, "STANDARD\\2,2", FilmOrientation="LANDSCAPE", FilmSizeID="8INX10IN")
    assert len(boxes) == 4 and len(set(boxes)) == 4
    assert all(str(i.ReferencedSOPClassUID) == GRAYSCALE_IMAGE_BOX for i in rsp.dataset.ReferencedImageBoxSequence)
    assert rsp.dataset.FilmOrientation == "LANDSCAPE" and rsp.dataset.ImageDisplayFormat == "STANDARD\\2,2"
    assert rsp.dataset.ReferencedFilmSessionSequence[0].ReferencedSOPInstanceUID == session_uid
    sets = [
        image_box_set(1, image(200)),                                   # 8 bits
        image_box_set(2, image(4000, bits=12)),                         # 12 bits -> 250
        image_box_set(3, image(0, photometric="MONOCHROME1")),          # 0 is white in MONOCHROME1
        # position 4 stays empty
    ]
    for uid, modifications in zip(boxes, sets, strict=False):
        assert scp.call(scp.scu.n_set(GRAYSCALE_IMAGE_BOX, uid, modifications)).status == 0x0000
    rsp = scp.call(scp.scu.n_action(FILM_BOX, box_uid))
    assert rsp.status == 0x0000
    png = scp.dir / f"{box_uid}.png"
    with Image.open(png) as im:
        assert im.size == (250, 200)  # 10 x 8 inches at 25 dpi, landscape
        assert im.mode == "L"
        assert im.text["ImageDisplayFormat"] == "STANDARD\\2,2"
        assert im.text["FilmSessionLabel"] == "ward 4" and im.text["NumberOfCopies"] == "2"
        assert im.text["Requestor"] == "REQUESTOR"
    # position 1 top left, 2 top right, 3 bottom left, 4 bottom right (empty: black)
    assert gray_at(png, 0.25, 0.25) == 200
    assert gray_at(png, 0.75, 0.25) == 250
    assert gray_at(png, 0.25, 0.75) == 255
    assert gray_at(png, 0.75, 0.75) == 0
    # printed again: a second file
    assert scp.call(scp.scu.n_action(FILM_BOX, box_uid)).status == 0x0000
    assert (scp.dir / f"{box_uid}-2.png").exists()
    # N-DELETE frees the film box and its image boxes
    assert scp.call(scp.scu.n_delete(FILM_BOX, box_uid)).status == 0x0000
    assert scp.call(scp.scu.n_set(GRAYSCALE_IMAGE_BOX, boxes[0], image_box_set(1, image(9)))).status == 0x0112
    assert scp.call(scp.scu.n_action(FILM_BOX, box_uid)).status == 0x0112
    assert scp.call(scp.scu.n_delete(FILM_BOX, box_uid)).status == 0x0112
    assert scp.call(scp.scu.n_delete(FILM_SESSION, session_uid)).status == 0x0000
    assert scp.call(scp.scu.n_delete(FILM_SESSION, session_uid)).status == 0x0112
    still_there(scp)


def test_12_bit_pixels_in_explicit_vr_big_endian(tmp_path):
    """Explicit VR Big Endian is accepted on the print context; its OW Pixel Data
    holds each 16-bit word most significant byte first (PS3.5 7.3).  The words
    were read as little endian: 2048 (0x0800, mid gray) printed as 8 (black)."""
    config = from_mapping({"plugins": {"printing": {"directory": str(tmp_path / "prints"), "dpi": 25}}})
    pm = make_plugin_manager(load_entrypoints=False, plugins=[printing, verification])
    pair = AssociationPair(pm, acceptor_config=config)
    assoc = pair.associate(contexts=[(META_GRAYSCALE, ["1.2.840.10008.1.2.2"]), VERIFICATION])
    assert {c.abstract_syntax: c.transfer_syntax for c in assoc.negotiated.contexts.values()}[META_GRAYSCALE] == \
        "1.2.840.10008.1.2.2"
    s = SimpleNamespace(pair=pair, assoc=assoc, scu=PrintSCU(assoc), call=pair.result, dir=tmp_path / "prints")
    session_uid = session(s)
    box_uid, boxes, _ = create_box(s, session_uid, "STANDARD\\2,1")
    big = image(0, bits=12)
    big.PixelData = (2048).to_bytes(2, "big") * 64  # as a big endian SCU encodes it
    assert s.call(s.scu.n_set(GRAYSCALE_IMAGE_BOX, boxes[0], image_box_set(1, big))).status == 0x0000
    eight = image(99)
    assert s.call(s.scu.n_set(GRAYSCALE_IMAGE_BOX, boxes[1], image_box_set(2, eight))).status == 0x0000
    assert s.call(s.scu.n_action(FILM_BOX, box_uid)).status == 0x0000
    png = s.dir / f"{box_uid}.png"
    assert gray_at(png, 0.25, 0.5) == 128  # 2048 of 4096
    assert gray_at(png, 0.75, 0.5) == 99   # 8-bit pixels have no byte order


def test_row_and_col_layouts_polarity_and_white_densities(scp):
    session_uid = session(scp)
    box_uid, boxes, _ = create_box(scp, session_uid, "ROW\\1,2", BorderDensity="WHITE", EmptyImageDensity="WHITE")
    assert len(boxes) == 3
    reverse = image_box_set(1, image(10), Polarity="REVERSE")
    assert scp.call(scp.scu.n_set(GRAYSCALE_IMAGE_BOX, boxes[0], reverse)).status == 0x0000
    assert scp.call(scp.scu.n_set(GRAYSCALE_IMAGE_BOX, boxes[2], image_box_set(3, image(77)))).status == 0x0000
    assert scp.call(scp.scu.n_action(FILM_BOX, box_uid)).status == 0x0000
    png = scp.dir / f"{box_uid}.png"
    assert gray_at(png, 0.5, 0.25) == 245     # one box on the top row, reversed
    assert gray_at(png, 0.25, 0.75) == 255    # bottom left: empty, WHITE
    assert gray_at(png, 0.75, 0.75) == 77     # bottom right
    assert gray_at(png, 0.0, 0.0) == 255      # border WHITE


def test_scu_given_uids_and_duplicates(scp):
    session_uid = session(scp, UID + "1")
    assert session_uid == UID + "1"
    box_uid, boxes, _ = create_box(scp, session_uid, "STANDARD\\1,1", uid=UID + "2")
    assert box_uid == UID + "2"
    rsp = scp.call(scp.scu.n_create(FILM_BOX, film_box(session_uid), UID + "2"))
    assert rsp.status == 0x0111
    rsp = scp.call(scp.scu.n_create(FILM_BOX, film_box(session_uid), "1.02.3"))
    assert rsp.status == 0x0117
    still_there(scp)


def test_session_print_prints_every_film_box(scp):
    session_uid = session(scp)
    assert scp.call(scp.scu.n_action(FILM_SESSION, session_uid)).status == 0xC600  # no film box yet
    first, boxes1, _ = create_box(scp, session_uid, "STANDARD\\1,1")
    second, boxes2, _ = create_box(scp, session_uid, "STANDARD\\1,2")
    assert scp.call(scp.scu.n_action(FILM_SESSION, session_uid)).status == 0xB602  # all empty: warning
    assert scp.call(scp.scu.n_action(FILM_BOX, first)).status == 0xB603
    assert scp.call(scp.scu.n_set(GRAYSCALE_IMAGE_BOX, boxes2[1], image_box_set(2, image(128)))).status == 0x0000
    assert scp.call(scp.scu.n_action(FILM_SESSION, session_uid)).status == 0x0000
    names = sorted(p.name for p in scp.dir.iterdir())
    assert names == sorted([f"{first}.png", f"{first}-2.png", f"{first}-3.png", f"{second}.png", f"{second}-2.png"])
    # deleting the session deletes its film boxes and their image boxes
    assert scp.call(scp.scu.n_delete(FILM_SESSION, session_uid)).status == 0x0000
    assert scp.call(scp.scu.n_action(FILM_BOX, second)).status == 0x0112
    assert scp.call(scp.scu.n_set(GRAYSCALE_IMAGE_BOX, boxes1[0], image_box_set(1, image(1)))).status == 0x0112
    # and a new session may be made on the same association
    session(scp)


# -- the printer ----------------------------------------------------------------------------------


def test_printer_n_get(scp):
    rsp = scp.call(scp.scu.printer_status())
    assert rsp.status == 0x0000
    assert (rsp.dataset.PrinterStatus, rsp.dataset.PrinterStatusInfo) == ("NORMAL", "NORMAL")
    assert "PrinterName" not in rsp.dataset
    everything = scp.call(scp.scu.n_get(PRINTER, PRINTER_INSTANCE))
    assert everything.dataset.PrinterName == "DIMSEKIT" and everything.dataset.Manufacturer == "dimsekit"
    odd = scp.call(scp.scu.n_get(PRINTER, PRINTER_INSTANCE, (0x21100010, 0x00100010)))
    assert odd.status == 0x0107 and list(odd.AttributeIdentifierList) == [0x00100010]
    assert scp.call(scp.scu.n_get(PRINTER, "1.2.3")).status == 0x0112
    # the Printer SOP Class negotiated on its own context works too
    context = scp.assoc.negotiated.context_for(PRINTER)
    command = {"CommandField": CommandField.N_GET_RQ, "RequestedSOPClassUID": PRINTER,
               "RequestedSOPInstanceUID": PRINTER_INSTANCE, "CommandDataSetType": 0x0101}
    assert scp.call(scp.assoc.send_request(context, command)).status == 0x0000
    command = {**command, "RequestedSOPClassUID": FILM_SESSION}
    assert scp.call(scp.assoc.send_request(context, command)).status == 0x0122


# -- state rules: each refusal answered, the association survives ---------------------------------


def test_refusals(scp):
    scu, call = scp.scu, scp.call
    assert call(scu.n_delete(FILM_SESSION, UID + "404")).status == 0x0112
    assert call(scu.n_delete(FILM_BOX, UID + "404")).status == 0x0112
    assert call(scu.n_set(GRAYSCALE_IMAGE_BOX, UID + "404", image_box_set(1, image(1)))).status == 0x0112
    session_uid = session(scp)
    second = call(scu.n_create(FILM_SESSION, Dataset()))
    assert second.status == 0x0110 and "one per association" in second.ErrorComment
    rsp = call(scu.n_action(FILM_SESSION, session_uid, action_type=7))
    assert (rsp.status, rsp.ActionTypeID) == (0x0123, 7)
    box_uid, boxes, _ = create_box(scp, session_uid)
    assert call(scu.n_action(FILM_BOX, box_uid, action_type=2)).status == 0x0123
    # Film Box N-CREATE
    assert call(scu.n_create(FILM_BOX, film_box(session_uid, "SLIDE"))).status == 0x0106
    assert call(scu.n_create(FILM_BOX, film_box(session_uid, "STANDARD\\0,2"))).status == 0x0106
    assert call(scu.n_create(FILM_BOX, film_box(session_uid, "STANDARD\\20,20"))).status == 0x0106
    assert call(scu.n_create(FILM_BOX, film_box(session_uid, FilmOrientation="SIDEWAYS"))).status == 0x0106
    assert call(scu.n_create(FILM_BOX, film_box(session_uid, FilmSizeID="POSTCARD"))).status == 0x0106
    missing = film_box(session_uid)
    del missing.ImageDisplayFormat
    rsp = call(scu.n_create(FILM_BOX, missing))
    assert rsp.status == 0x0120 and list(rsp.AttributeIdentifierList) == [0x20100010]
    assert call(scu.n_create(FILM_BOX, film_box(UID + "404"))).status == 0x0112  # no such Film Session
    # Film Box N-SET: the layout is fixed; an attribute it does not have
    assert call(scu.n_set(FILM_BOX, box_uid, _ds(ImageDisplayFormat="STANDARD\\1,1"))).status == 0x0106
    assert call(scu.n_set(FILM_BOX, box_uid, _ds(PatientName="X"))).status == 0x0105
    assert call(scu.n_set(FILM_BOX, box_uid, _ds(MagnificationType="CUBIC"))).status == 0x0000
    assert call(scu.n_set(FILM_BOX, box_uid, _ds(MagnificationType="BLURRY"))).status == 0x0106
    # Image Box N-SET
    assert call(scu.n_set(GRAYSCALE_IMAGE_BOX, boxes[0], image_box_set(2, image(1)))).status == 0x0106
    assert call(scu.n_set(GRAYSCALE_IMAGE_BOX, boxes[0], image_box_set(1, image(1), Polarity="UPSIDE"))).status == 0x0106
    bad = image(1)
    bad.PhotometricInterpretation = "RGB"
    assert call(scu.n_set(GRAYSCALE_IMAGE_BOX, boxes[0], image_box_set(1, bad))).status == 0x0106
    short = image(1)
    short.PixelData = b"\x00" * 10
    assert call(scu.n_set(GRAYSCALE_IMAGE_BOX, boxes[0], image_box_set(1, short))).status == 0x0106
    no_rows = image(1)
    del no_rows.Rows
    assert call(scu.n_set(GRAYSCALE_IMAGE_BOX, boxes[0], image_box_set(1, no_rows))).status == 0x0120
    assert call(scu.n_set(GRAYSCALE_IMAGE_BOX, boxes[0], _ds(Polarity="NORMAL"))).status == 0x0120  # no position
    # operations the SOP classes do not have; a SOP class outside the meta SOP class
    assert call(scu.n_get(FILM_SESSION, session_uid)).status == 0x0211
    assert call(scu.n_delete(GRAYSCALE_IMAGE_BOX, boxes[0])).status == 0x0211
    assert call(scu.n_create(PRINTER, Dataset())).status == 0x0211
    assert call(scu.n_create("1.2.840.10008.5.1.4.1.1.2", Dataset())).status == 0x0122
    # after all that the film still prints
    assert call(scu.n_set(GRAYSCALE_IMAGE_BOX, boxes[0], image_box_set(1, image(1)))).status == 0x0000
    assert call(scu.n_action(FILM_BOX, box_uid)).status == 0x0000
    still_there(scp)


def test_session_attributes(scp):
    rsp = scp.call(scp.scu.n_create(FILM_SESSION, _ds(MemoryAllocation="1000", MediumType="BLUE FILM")))
    assert rsp.status == 0xB600  # a warning: the session exists
    assert rsp.dataset.MediumType == "BLUE FILM" and rsp.dataset.NumberOfCopies == "1"
    uid = str(rsp.AffectedSOPInstanceUID)
    assert scp.call(scp.scu.n_set(FILM_SESSION, uid, _ds(NumberOfCopies="3"))).status == 0x0000
    assert scp.call(scp.scu.n_set(FILM_SESSION, uid, _ds(NumberOfCopies="0"))).status == 0x0106
    assert scp.call(scp.scu.n_set(FILM_SESSION, uid, _ds(PrintPriority="URGENT"))).status == 0x0106
    assert scp.call(scp.scu.n_set(FILM_SESSION, UID + "9", _ds(NumberOfCopies="3"))).status == 0x0112


def test_images_larger_than_allowed_are_c605(tmp_path):
    s = make_scp(tmp_path, max_image_pixels=100)
    box_uid, boxes, _ = create_box(s, session(s), "STANDARD\\1,1")
    rsp = s.call(s.scu.n_set(GRAYSCALE_IMAGE_BOX, boxes[0], image_box_set(1, image(1, rows=20, columns=20))))
    assert rsp.status == 0xC605


def test_objects_go_with_their_association(scp):
    session_uid = session(scp)
    create_box(scp, session_uid)
    association = scp.pair.acceptor_association
    assert printing.service._states[association].session is not None
    scp.call(scp.assoc.release())
    assert association not in printing.service._states
    other = scp.pair.associate(contexts=[META_GRAYSCALE])
    assert scp.call(PrintSCU(other).n_delete(FILM_SESSION, session_uid)).status == 0x0112


def _ds(**values: Any) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


# -- helpers and settings ----------------------------------------------------------------------------


def test_display_formats_and_layout():
    assert parse_display_format("STANDARD\\3,2") == ("STANDARD", (3, 2))
    assert parse_display_format("ROW\\2,1,3") == ("ROW", (2, 1, 3))
    for bad in ("STANDARD\\2", "CUSTOM\\1", "STANDARD\\2,2,2", "ROW\\0", "COL\\", "STANDARD\\11,11"):
        with pytest.raises(ValueError):
            parse_display_format(bad)
    assert layout_boxes("STANDARD", (2, 1), 100, 50) == [(0, 0, 50, 50), (50, 0, 100, 50)]
    assert layout_boxes("COL", (1, 2), 100, 100) == [(0, 0, 50, 100), (50, 0, 100, 50), (50, 50, 100, 100)]
    assert layout_boxes("ROW", (2, 1), 100, 100) == [(0, 0, 50, 50), (50, 0, 100, 50), (0, 50, 100, 100)]
    assert film_pixels("14INX17IN", "PORTRAIT", 10) == (140, 170)
    assert film_pixels("A4", "LANDSCAPE", 100) == (1169, 827)
    assert [auto_format(n) for n in (1, 2, 3, 4, 5, 10, 40)] == [
        "STANDARD\\1,1", "STANDARD\\2,1", "STANDARD\\2,2", "STANDARD\\2,2", "STANDARD\\3,2", "STANDARD\\4,3", "STANDARD\\5,5",
    ]
    assert boxes_in_format("COL\\2,3") == 5
    with pytest.raises(ValueError):
        boxes_in_format("STANDARD\\2")


@pytest.mark.parametrize(
    ("section", "key"),
    [({"dpi": 10}, "dpi"), ({"dpi": "high"}, "dpi"), ({"directory": ""}, "directory"),
     ({"printer_name": ""}, "printer_name"), ({"max_image_pixels": 0}, "max_image_pixels"), ({"ink": "blue"}, "ink")],
)
def test_bad_settings_name_the_key(section, key):
    with pytest.raises(ConfigError, match=f"plugins.printing.{key}"):
        printing.dimsekit_configure(from_mapping({"plugins": {"printing": section}}))


def test_default_directory_is_under_the_data_dir(tmp_path):
    config = from_mapping({"node": {"data_dir": str(tmp_path)}})
    assert printing.Settings.from_config(config).directory == tmp_path.resolve() / "prints"


@pytest.mark.filterwarnings("ignore:Expected explicit VR:UserWarning")
@pytest.mark.parametrize(
    "payload",
    [
        b"\x00\x20\x10\x00\xff\xff\x00\x00",  # Number of Copies claiming 65535 bytes
        b"\x20\x20\x10\x00\x01\x00\x00\x00\x07",  # Image Box Position (US) of one byte
    ],
)
def test_undecodable_data_sets_are_answered(scp, payload, logged_failures):
    session_uid = session(scp)
    _, boxes, _ = create_box(scp, session_uid)
    for sop_class, uid in ((FILM_SESSION, session_uid), (GRAYSCALE_IMAGE_BOX, boxes[0])):
        command = {"CommandField": CommandField.N_SET_RQ, "RequestedSOPClassUID": sop_class,
                   "RequestedSOPInstanceUID": uid}
        rsp = scp.call(scp.scu.send(command, payload))
        assert rsp.status in (0x0105, 0x0106, 0x0110, 0x0120), hex(rsp.status)
    still_there(scp)
    assert logged_failures == []


def test_a_session_holds_at_most_50_film_boxes(scp):
    session_uid = session(scp)
    for _ in range(printing.MAX_FILM_BOXES):
        create_box(scp, session_uid, "STANDARD\\1,1")
    assert scp.call(scp.scu.n_create(FILM_BOX, film_box(session_uid, "STANDARD\\1,1"))).status == 0x0213
    still_there(scp)
