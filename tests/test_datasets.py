"""dimsekit.datasets: pydicom's errors, said in one line."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from dimsekit.datasets import DatasetError, encode_dataset, pydicom_error

IMPLICIT = "1.2.840.10008.1.2"


def test_an_encoding_error_says_what_pydicom_said_without_the_traceback_in_its_text():
    ds = Dataset()
    ds.add_new(0x00280010, "US", "not a number")  # pydicom's writer: "With tag ... got exception", then a stack
    with pytest.raises(DatasetError) as caught:
        encode_dataset(ds, IMPLICIT)
    said = str(caught.value)
    assert "Traceback" in str(caught.value.__cause__)  # what pydicom's text holds
    assert said.startswith("cannot encode the data set in Implicit VR Little Endian: With tag (0028,0010) got exception")
    assert "\n" not in said and "Traceback" not in said


def test_pydicom_error_is_one_line_without_the_stack():
    assert pydicom_error(ValueError("no such value")) == "no such value"
    assert pydicom_error(ValueError("a\nfor data_element:\n(0028,0010) Rows     US: 'x'")) == \
        "a for data_element: (0028,0010) Rows US: 'x'"
    assert pydicom_error(ValueError("x\nTraceback (most recent call last):\n  File ...")) == "x"
