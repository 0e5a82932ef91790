"""Basic Grayscale Print Management: pynetdicom issuing the N- calls (on the
meta SOP class's context, naming each SOP class) against a dimsekit node
under twistd -- the PNG films it writes (size, layout, pixels), and the state
rules (N-DELETE of an unknown instance 0x0112, N-ACTION with an unknown
action type 0x0123, N-SET of a deleted Image Box 0x0112), each answered on
an association that survives."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE

from tests.interop.conftest import _finish_node, start_node

pytestmark = pytest.mark.interop

META = "1.2.840.10008.5.1.1.9"
FILM_SESSION = "1.2.840.10008.5.1.1.1"
FILM_BOX = "1.2.840.10008.5.1.1.2"
IMAGE_BOX = "1.2.840.10008.5.1.1.4"
PRINTER = "1.2.840.10008.5.1.1.16"
PRINTER_INSTANCE = "1.2.840.10008.5.1.1.17"
VERIFICATION = "1.2.840.10008.1.1"


def image_item(value: int, rows: int = 16, columns: int = 16) -> Dataset:
    item = Dataset()
    item.SamplesPerPixel = 1
    item.PhotometricInterpretation = "MONOCHROME2"
    item.Rows, item.Columns = rows, columns
    item.BitsAllocated, item.BitsStored, item.HighBit = 8, 8, 7
    item.PixelRepresentation = 0
    item.add_new(0x7FE00010, "OB", bytes([value]) * rows * columns)
    return item


def test_pynetdicom_prints_on_the_node(tmp_path: Path):
    data = tmp_path / "data"
    node = start_node(tmp_path, "--data-dir", str(data), config="[plugins.printing]\ndpi = 25\n")
    try:
        ae = AE(ae_title="PYNPRINT")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
        ae.add_requested_context(META)
        ae.add_requested_context(VERIFICATION)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="DIMSEKIT")
        assert assoc.is_established
        try:
            status, printer = assoc.send_n_get([0x21100010, 0x21100020], PRINTER, PRINTER_INSTANCE, meta_uid=META)
            assert status.Status == 0x0000 and printer.PrinterStatus == "NORMAL"
            session = Dataset()
            session.NumberOfCopies = "1"
            session.FilmSessionLabel = "pynetdicom"
            session_uid = str(generate_uid())
            status, attrs = assoc.send_n_create(session, FILM_SESSION, session_uid, meta_uid=META)
            assert status.Status == 0x0000
            assert attrs.FilmSessionLabel == "pynetdicom" and attrs.NumberOfCopies == "1"

            box = Dataset()
            box.ImageDisplayFormat = "STANDARD\\3,2"
            box.FilmOrientation = "LANDSCAPE"
            box.FilmSizeID = "14INX17IN"
            box.BorderDensity = "WHITE"
            ref = Dataset()
            ref.ReferencedSOPClassUID = FILM_SESSION
            ref.ReferencedSOPInstanceUID = session_uid
            box.ReferencedFilmSessionSequence = [ref]
            box_uid = str(generate_uid())
            status, attrs = assoc.send_n_create(box, FILM_BOX, box_uid, meta_uid=META)
            assert status.Status == 0x0000
            image_boxes = [str(i.ReferencedSOPInstanceUID) for i in attrs.ReferencedImageBoxSequence]
            assert len(image_boxes) == 6
            values = [30, 60, 90, 120, 150]  # the sixth box stays empty
            for position, (uid, value) in enumerate(zip(image_boxes, values, strict=False), 1):
                modifications = Dataset()
                modifications.ImageBoxPosition = position
                modifications.BasicGrayscaleImageSequence = [image_item(value)]
                status, _ = assoc.send_n_set(modifications, IMAGE_BOX, uid, meta_uid=META)
                assert status.Status == 0x0000, position
            status, _ = assoc.send_n_action(None, 1, FILM_BOX, box_uid, meta_uid=META)
            assert status.Status == 0x0000

            # the state rules, each on the same association
            assert assoc.send_n_delete(FILM_BOX, str(generate_uid()), meta_uid=META).Status == 0x0112
            status, _ = assoc.send_n_action(None, 9, FILM_BOX, box_uid, meta_uid=META)
            assert status.Status == 0x0123
            assert assoc.send_n_delete(FILM_BOX, box_uid, meta_uid=META).Status == 0x0000
            modifications = Dataset()
            modifications.ImageBoxPosition = 1
            modifications.BasicGrayscaleImageSequence = [image_item(1)]
            status, _ = assoc.send_n_set(modifications, IMAGE_BOX, image_boxes[0], meta_uid=META)
            assert status.Status == 0x0112  # went with its Film Box
            status, _ = assoc.send_n_action(None, 1, FILM_SESSION, session_uid, meta_uid=META)
            assert status.Status == 0xC600  # the session has no film box left
            assert assoc.send_n_delete(FILM_SESSION, session_uid, meta_uid=META).Status == 0x0000
            assert assoc.send_n_delete(FILM_SESSION, session_uid, meta_uid=META).Status == 0x0112
            assert assoc.send_c_echo().Status == 0x0000
        finally:
            assoc.release()
            ae.shutdown()
        png = data / "prints" / f"{box_uid}.png"
        assert png.exists(), sorted(p.name for p in (data / "prints").iterdir())
        with Image.open(png) as film:
            assert film.size == (425, 350)  # 17 x 14 inches at 25 dpi, landscape
            assert film.text["Requestor"] == "PYNPRINT" and film.text["FilmSessionLabel"] == "pynetdicom"
            # 3 columns, 2 rows; positions left to right, top to bottom; the empty one black
            for index, expected in enumerate([*values, 0]):
                x = (index % 3 + 0.5) / 3 * film.width
                y = (index // 3 + 0.5) / 2 * film.height
                assert film.getpixel((int(x), int(y))) == expected, index
            assert film.getpixel((0, 0)) == 255  # border WHITE
        node.wait_log(rf"print: Film Box {box_uid} printed to .*{box_uid}\.png for PYNPRINT")
        node.assert_healthy()
    finally:
        _finish_node(node)
