"""Status classes and names (PS3.7 Annex C; PS3.4 B.2.3, C.4.1.1.4, C.4.2.1.5, C.4.3.1.4)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dimsekit.dimse import status
from dimsekit.dimse.status import Category, StatusRegistry, category, describe


# The Annex C table, restated independently: value -> class.
@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (0x0000, Category.SUCCESS),
        (0x0001, Category.WARNING),
        (0x0107, Category.WARNING),
        (0x0116, Category.WARNING),
        (0xB000, Category.WARNING),
        (0xB007, Category.WARNING),
        (0xBFFF, Category.WARNING),
        (0xFE00, Category.CANCEL),
        (0xFF00, Category.PENDING),
        (0xFF01, Category.PENDING),
        (0x0105, Category.FAILURE),
        (0x0106, Category.FAILURE),
        (0x0110, Category.FAILURE),
        (0x0122, Category.FAILURE),
        (0x0124, Category.FAILURE),
        (0x0210, Category.FAILURE),
        (0x0213, Category.FAILURE),
        (0xA700, Category.FAILURE),
        (0xA801, Category.FAILURE),
        (0xAFFF, Category.FAILURE),
        (0xC000, Category.FAILURE),
        (0xCFFF, Category.FAILURE),
        # not in the table at all: never success
        (0x0002, Category.FAILURE),
        (0xFF02, Category.FAILURE),
        (0xFE01, Category.FAILURE),
        (0xAFFF + 1, Category.WARNING),  # B000
        (0x0300, Category.FAILURE),
    ],
)
def test_category_follows_annex_c(code: int, expected: Category) -> None:
    assert category(code) is expected


@given(st.integers(0, 0xFFFF))
def test_only_0000_is_success_and_only_ffxx_pending(code: int) -> None:
    cat = category(code)
    assert (cat is Category.SUCCESS) == (code == 0)
    assert (cat is Category.PENDING) == (code in (0xFF00, 0xFF01))
    assert cat.is_final == (cat is not Category.PENDING)


@pytest.mark.parametrize(
    ("code", "service", "text"),
    [
        (0x0000, None, "0x0000 Success"),
        (0x0105, None, "0x0105 No Such Attribute"),
        (0x0106, None, "0x0106 Invalid Attribute Value"),
        (0x0110, None, "0x0110 Processing Failure"),
        (0x0111, None, "0x0111 Duplicate SOP Instance"),
        (0x0112, None, "0x0112 No Such SOP Instance"),
        (0x0113, None, "0x0113 No Such Event Type"),
        (0x0114, None, "0x0114 No Such Argument"),
        (0x0115, None, "0x0115 Invalid Argument Value"),
        (0x0117, None, "0x0117 Invalid Object Instance"),
        (0x0118, None, "0x0118 No Such SOP Class"),
        (0x0119, None, "0x0119 Class-Instance Conflict"),
        (0x0120, None, "0x0120 Missing Attribute"),
        (0x0121, None, "0x0121 Missing Attribute Value"),
        (0x0122, None, "0x0122 Refused: SOP Class Not Supported"),
        (0x0123, None, "0x0123 No Such Action"),
        (0x0124, None, "0x0124 Refused: Not Authorized"),
        (0x0210, None, "0x0210 Duplicate Invocation"),
        (0x0211, None, "0x0211 Unrecognized Operation"),
        (0x0212, None, "0x0212 Mistyped Argument"),
        (0x0213, None, "0x0213 Resource Limitation"),
        (0x0107, None, "0x0107 Attribute List Error"),
        (0x0116, None, "0x0116 Attribute Value Out of Range"),
        (0xFE00, None, "0xFE00 Cancel"),
        (0xFF00, None, "0xFF00 Pending"),
        # service-specific (PS3.4)
        (0xA801, "move", "0xA801 Refused: Move Destination unknown"),
        (0xA801, None, "0xA801 Refused: Move Destination unknown"),  # only one service has it
        (0xA7A5, "storage", "0xA7A5 Refused: Out of Resources"),
        (0xA9FF, "storage", "0xA9FF Error: Data Set does not match SOP Class"),
        (0xC123, "storage", "0xC123 Error: Cannot understand"),
        (0xB000, "storage", "0xB000 Warning: Coercion of Data Elements"),
        (0xB006, "storage", "0xB006 Warning: Elements Discarded"),
        (0xB007, "storage", "0xB007 Warning: Data Set does not match SOP Class"),
        (0xC001, "find", "0xC001 Unable to process"),
        (0xA702, "get", "0xA702 Refused: Out of Resources - Unable to perform sub-operations"),
        (0xB000, "get", "0xB000 Sub-operations Complete - One or more Failures or Warnings"),
        (0xB000, "move", "0xB000 Sub-operations Complete - One or more Failures"),
        (0xFE00, "find", "0xFE00 Matching terminated due to Cancel request"),
        # a service without its own meaning falls back on Annex C
        (0x0122, "storage", "0x0122 Refused: SOP Class Not Supported"),
        # nobody declared these
        (0xC123, None, "0xC123 Failure (meaning depends on the service)"),
        (0xD123, None, "0xD123 Failure (unknown status code)"),
        (0xB123, "find", "0xB123 Warning (unknown status code)"),
    ],
)
def test_describe(code: int, service: str | None, text: str) -> None:
    assert describe(code, service) == text


def test_registry_declares_service_codes() -> None:
    registry = StatusRegistry()
    s = registry.register("printing", 0xC600, "Film session printing not supported")
    assert s.category is Category.FAILURE and s.service == "printing"
    assert registry.describe(0xC600, "printing") == "0xC600 Film session printing not supported"
    assert registry.lookup(0xC600, "storage") is None
    # same declaration twice is harmless, a different name is an error
    assert registry.register("printing", 0xC600, "Film session printing not supported") == s
    with pytest.raises(ValueError, match="already declared"):
        registry.register("printing", 0xC600, "something else")


def test_registry_ranges_narrowest_first() -> None:
    registry = StatusRegistry()
    registry.register("x", 0xC000, "broad", last=0xCFFF)
    registry.register("x", 0xC100, "narrow", last=0xC1FF)
    assert registry.lookup(0xC150, "x").name == "narrow"
    assert registry.lookup(0xC250, "x").name == "broad"
    assert registry.lookup(0xD000, "x") is None
    with pytest.raises(ValueError):
        registry.register("x", 0xC000, "other", last=0xCFFF)
    with pytest.raises(ValueError):
        registry.register("x", 0xC000, "backwards", last=0xB000)
    with pytest.raises(ValueError):
        registry.register("x", 0x10000, "too big")


def test_explicit_category_and_str() -> None:
    registry = StatusRegistry()
    s = registry.register("x", 0xC777, "odd", Category.WARNING)
    assert s.category is Category.WARNING
    assert str(s) == "0xC777 odd"


def test_module_register_reaches_default_registry() -> None:
    status.register("test-only-service", 0xA7F3, "Test: disk full")
    assert describe(0xA7F3, "test-only-service") == "0xA7F3 Test: disk full"
    assert status.lookup(0xA7F3, "test-only-service").category is Category.FAILURE


def test_ambiguous_service_code_without_service() -> None:
    # A701 is "Refused: Out of Resources" in storage (A7xx) and more precise in
    # move/get; C000 differs between storage and query/retrieve.
    assert describe(0xA701) == "0xA701 Failure (meaning depends on the service)"
    assert describe(0xC000) == "0xC000 Failure (meaning depends on the service)"
    assert describe(0xA701, "get") == (
        "0xA701 Refused: Out of Resources - Unable to calculate number of matches"
    )
