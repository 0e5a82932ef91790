"""What the query/retrieve tools share: ``-k`` keys, data set files, tables.

``-k`` keys are written as DCMTK's findscu and dcmodify take them::

    -k PatientName=DOE*                 a keyword and a value
    -k 0010,0020  /  -k "(0010,0020)"   a tag, no value: a zero-length return key
    -k "(0010,0020)=X"  -k 00100020=X   tags with or without parentheses
    -k QueryRetrieveLevel=STUDY
    -k "ScheduledProcedureStepSequence[0].Modality=CT"   an item of a sequence
    -k "(0040,0100)[0].(0008,0060)=CT"                   the same with tags
    -k ScheduledProcedureStepSequence   a sequence alone: empty (universal matching)

A backslash separates the values of a multi-valued attribute; numbers are
converted for the binary number VRs (US, UL, FL, FD, ...).  A later key
replaces what an earlier one (or a ``-f`` file) set.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from dimsekit.datasets import pydicom_error
from dimsekit.errors import printable

__all__ = [
    "BadKey",
    "parse_key",
    "apply_keys",
    "add_defaults",
    "has_return_keys",
    "load_dataset",
    "set_character_set",
    "flatten",
    "text_of",
    "render_table",
    "tag_text",
    "path_text",
    "key_paths",
]


class BadKey(ValueError):
    """A ``-k`` key, or a data set file, that cannot be used (the message says why)."""


_TAG = re.compile(r"\(?\s*([0-9A-Fa-f]{4})\s*,\s*([0-9A-Fa-f]{4})\s*\)?\Z|([0-9A-Fa-f]{8})\Z")
#: items of one sequence a key may reach (Seq[n], n below it): each is made, empty
#: or not, so Seq[99999999] would build a hundred million data sets
MAX_ITEMS = 1000
_SEGMENT = re.compile(r"(?P<name>[^\[\]]+?)\s*(?:\[(?P<index>\d+)\])?\Z")
_INTEGER_VRS = frozenset({"US", "UL", "SS", "SL", "UV", "SV"})
#: the values each binary integer VR holds (PS3.5 Table 6.2-1)
_INTEGER_RANGES = {
    "US": (0, 0xFFFF), "SS": (-0x8000, 0x7FFF), "UL": (0, 0xFFFFFFFF), "SL": (-0x80000000, 0x7FFFFFFF),
    "UV": (0, 0xFFFFFFFFFFFFFFFF), "SV": (-0x8000000000000000, 0x7FFFFFFFFFFFFFFF),
}
_FLOAT_VRS = frozenset({"FL", "FD"})

Path_ = list[tuple[int, int | None]]


def tag_text(tag: int) -> str:
    """``PatientName (0010,0010)``, or ``(0011,0010)`` for a tag without a keyword."""
    t = Tag(tag)
    text = f"({t.group:04X},{t.element:04X})"
    keyword = keyword_for_tag(t)
    return f"{keyword} {text}" if keyword else text


def _to_tag(name: str) -> int:
    name = name.strip()
    match = _TAG.match(name)
    if match:
        if match.group(3):
            return int(match.group(3), 16)
        return (int(match.group(1), 16) << 16) | int(match.group(2), 16)
    found = tag_for_keyword(name)
    if found is None:
        raise BadKey(f"{name!r} is neither a DICOM keyword nor a tag like 0010,0020 or (0010,0020)")
    return int(found)


def _split_path(text: str) -> list[str]:
    """Split at the dots that are outside parentheses."""
    parts, depth, current = [], 0, []
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "." and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def vr_of(tag: int) -> str:
    """The dictionary VR of ``tag`` (the first of ``US or SS``); UN when unknown."""
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return "UN"
    return vr.split(" or ")[0].strip()


def parse_key(text: str) -> tuple[Path_, str | None]:
    """``"Seq[0].Keyword=value"`` -> ``([(Seq, 0), (Keyword, None)], "value")``.

    A key without ``=`` has no value (None): a zero-length return key.

    :raises BadKey: an unknown keyword, a malformed tag or index, or a
        non-sequence used as one.
    """
    path_text, sep, value = text.partition("=")
    if not path_text.strip():
        raise BadKey(f"{text!r}: no attribute named (write Keyword=value or gggg,eeee=value)")
    path: Path_ = []
    for part in _split_path(path_text):
        match = _SEGMENT.match(part.strip())
        if match is None or not part.strip():
            raise BadKey(f"{text!r}: cannot read {part!r} (write Keyword, gggg,eeee, (gggg,eeee) or Sequence[n])")
        try:
            tag = _to_tag(match.group("name"))
        except BadKey as exc:
            raise BadKey(f"{text!r}: {exc}") from None
        index = match.group("index")
        if index is not None and int(index) >= MAX_ITEMS:
            raise BadKey(f"{text!r}: item [{int(index)}]: a query holds at most {MAX_ITEMS} items of a sequence")
        path.append((tag, int(index) if index is not None else None))
    for tag, index in path[:-1]:
        if vr_of(tag) != "SQ":
            raise BadKey(f"{text!r}: {tag_text(tag)} is not a sequence, so nothing can be nested in it")
        if index is None:
            raise BadKey(f"{text!r}: say which item of {tag_text(tag)}, like {keyword_for_tag(tag) or 'Seq'}[0].")
    last_tag, last_index = path[-1]
    if last_index is not None and vr_of(last_tag) != "SQ":
        raise BadKey(f"{text!r}: {tag_text(last_tag)} is not a sequence; drop the [{last_index}]")
    return path, (value if sep else None)


def _convert(tag: int, value: str | None) -> Any:
    vr = vr_of(tag)
    if vr == "SQ":
        if value:
            raise BadKey(f"{tag_text(tag)} is a sequence: give its items' attributes as Seq[0].Keyword=value")
        return []
    if value is None or value == "":
        return None if vr in _INTEGER_VRS | _FLOAT_VRS else ""
    parts = value.split("\\")
    try:
        if vr in _INTEGER_VRS:
            numbers: list[Any] = [int(p) for p in parts]
        elif vr in _FLOAT_VRS:
            numbers = [float(p) for p in parts]
        elif vr in ("UN", "OB", "OW", "OD", "OF", "OL", "OV"):
            return value.encode("utf-8")
        else:
            return value
    except ValueError:
        raise BadKey(f"{tag_text(tag)} ({vr}) needs numbers, not {value!r}") from None
    if vr in _INTEGER_RANGES:
        low, high = _INTEGER_RANGES[vr]
        if any(not low <= n <= high for n in numbers):
            raise BadKey(f"{tag_text(tag)} ({vr}) takes whole numbers from {low} to {high}, not {value!r}")
    return numbers[0] if len(numbers) == 1 else numbers


def _item(dataset: Dataset, tag: int, index: int) -> Dataset:
    """Item ``index`` of the sequence ``tag`` (made, with any items before it, as needed)."""
    if tag not in dataset or dataset[tag].VR != "SQ":
        dataset.add_new(tag, "SQ", [])
    items = dataset[tag].value
    while len(items) <= index:
        items.append(Dataset())
    return items[index]


def path_text(path: Path_) -> str:
    """A parsed key path written as :func:`flatten` names its leaves: ``Seq[0].Keyword``."""
    parts = []
    for tag, index in path:
        t = Tag(tag)
        name = keyword_for_tag(t) or f"({t.group:04X},{t.element:04X})"
        parts.append(name if index is None else f"{name}[{index}]")
    return ".".join(parts)


def key_paths(keys: Iterable[str]) -> list[str]:
    """The :func:`path_text` of each ``-k`` key, in order (unreadable keys skipped)."""
    out = []
    for text in keys:
        try:
            out.append(path_text(parse_key(text)[0]))
        except BadKey:
            continue
    return out


def set_path(dataset: Dataset, path: Path_, value: str | None, *, replace: bool = True) -> None:
    """Set the attribute at ``path``; with ``replace=False`` leave one already there alone."""
    target = dataset
    for tag, index in path[:-1]:
        target = _item(target, tag, index)  # type: ignore[arg-type]
    tag, index = path[-1]
    if index is not None:
        _item(target, tag, index)
        return
    if not replace and tag in target:
        return
    vr = vr_of(tag)
    converted = _convert(tag, value)
    try:
        target.add_new(tag, vr, converted)
    except (ValueError, TypeError, OverflowError) as exc:  # pydicom refuses it (IS, DS)
        raise BadKey(f"{tag_text(tag)} ({vr}): {value!r} is not a valid value ({exc})") from None


def apply_keys(dataset: Dataset, keys: Iterable[str]) -> Dataset:
    """Set each ``-k`` key in ``dataset``; returns it."""
    for text in keys:
        path, value = parse_key(text)
        set_path(dataset, path, value)
    return dataset


def add_defaults(dataset: Dataset, keys: Iterable[str]) -> Dataset:
    """Add the keys (``-k`` syntax) whose attribute is not in ``dataset`` yet."""
    for text in keys:
        path, value = parse_key(text)
        set_path(dataset, path, value, replace=False)
    return dataset


def has_return_keys(dataset: Dataset, ignore: Sequence[str] = ("QueryRetrieveLevel", "SpecificCharacterSet")) -> bool:
    """True when some attribute (at any depth) is zero-length: the user asked for return keys."""
    for element in dataset:
        if element.keyword in ignore:
            continue
        if element.VR == "SQ":
            if not element.value or any(not len(item) or has_return_keys(item, ()) for item in element.value):
                return True
        elif element.is_empty:
            return True
    return False


def load_dataset(path: str | Path) -> Dataset:
    """A data set from a DICOM JSON file (an object, or an array of one) or a
    DICOM file (its File Meta Information dropped).

    :raises BadKey: unreadable, or neither.
    """
    file = Path(path)
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise BadKey(f"{path}: {exc.strerror or exc}") from None
    if raw.lstrip()[:1] in (b"{", b"["):
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise BadKey(f"{path}: not valid JSON ({exc})") from None
        if isinstance(data, list):
            if len(data) != 1:
                raise BadKey(f"{path}: holds {len(data)} data sets; give one per file")
            data = data[0]
        if not isinstance(data, dict):
            raise BadKey(f"{path}: not a DICOM JSON object")
        try:
            return Dataset.from_json(data)
        except Exception as exc:
            raise BadKey(f"{path}: not DICOM JSON ({exc})") from None
    try:
        dataset = dcmread(file, force=True)
        dataset.decode()  # apply its Specific Character Set now: a bad file fails here, not later
    except Exception as exc:
        raise BadKey(f"{path}: neither DICOM JSON nor a DICOM file ({exc})") from None
    if not any(element.keyword for element in dataset):  # forced reading of junk gives only odd tags
        raise BadKey(f"{path}: neither DICOM JSON nor a DICOM file (no standard data element read)")
    dataset.file_meta = None  # type: ignore[assignment]
    return Dataset(dataset)


def _non_ascii(dataset: Dataset) -> bool:
    for element in dataset:
        if element.VR == "SQ":
            if any(_non_ascii(item) for item in element.value):
                return True
            continue
        if element.VR in ("PN", "LO", "SH", "ST", "LT", "UT", "UC") and not element.is_empty:
            values = element.value if element.VM > 1 else [element.value]
            if any(not str(v).isascii() for v in values):
                return True
    return False


def set_character_set(dataset: Dataset) -> Dataset:
    """Say UTF-8 (ISO_IR 192) in Specific Character Set when a text value is
    not ASCII and the data set names no character set."""
    if "SpecificCharacterSet" not in dataset and _non_ascii(dataset):
        dataset.SpecificCharacterSet = "ISO_IR 192"
    return dataset


# -- showing data sets ---------------------------------------------------------------------


def text_of(element: Any) -> str:
    """A data element's value as one line of text."""
    if element.VR == "SQ":
        return f"<{len(element.value)} item{'s' if len(element.value) != 1 else ''}>"
    value = element.value
    if value is None or value == "":
        return ""
    if isinstance(value, bytes | bytearray):
        return f"<{len(value)} bytes>"
    text = "\\".join(str(v) for v in value) if element.VM > 1 else str(value)
    # one line per match, and nothing a terminal would act on (a peer's escape sequences): \xNN
    return printable(text.replace("\r", " ").replace("\n", " ").replace("\t", " "))


#: a table cell for a value the peer sent that pydicom cannot read
UNREADABLE = "<cannot be read>"


def flatten(dataset: Dataset, prefix: str = "",
            skip: Sequence[str] = ("SpecificCharacterSet", "QueryRetrieveLevel"),
            on_unreadable: Callable[[str, str], None] | None = None) -> list[tuple[str, str]]:
    """(path, text) of every leaf attribute, depth first; items as ``Seq[n].``,
    an empty sequence as one leaf.

    A value pydicom cannot read (a peer's damaged sequence, a bad VR in an item) is the
    leaf :data:`UNREADABLE`, and ``on_unreadable(path, reason)`` is told; the other
    attributes are still there.
    """
    out: list[tuple[str, str]] = []
    for tag in [Tag(t) for t in dataset.keys()]:
        if tag.element == 0:  # group length
            continue
        name = keyword_for_tag(tag) or f"({tag.group:04X},{tag.element:04X})"
        if not prefix and name in skip:
            continue
        try:
            element = dataset[tag]  # pydicom reads a value (a sequence's items) here
            if element.VR == "SQ" and element.value:
                for n, item in enumerate(element.value):
                    inner = flatten(item, f"{prefix}{name}[{n}].", (), on_unreadable)
                    out.extend(inner if inner else [(f"{prefix}{name}[{n}]", "")])
                continue
            out.append((prefix + name, "" if element.VR == "SQ" else text_of(element)))
        except Exception as exc:  # whatever pydicom raises on a peer's bytes
            out.append((prefix + name, UNREADABLE))
            if on_unreadable is not None:
                on_unreadable(prefix + name, printable(f"{type(exc).__name__}: {pydicom_error(exc)}"))
    return out


def _width(text: str) -> int:
    """Columns ``text`` takes on a terminal (East Asian wide characters count 2)."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _clip(text: str, limit: int) -> str:
    if _width(text) <= limit:
        return text
    out, used = [], 0
    for char in text:
        w = _width(char)
        if used + w > limit - 1:
            break
        out.append(char)
        used += w
    return "".join(out) + "…"


def _pad(text: str, width: int) -> str:
    return text + " " * (width - _width(text))


def column_names(paths: Sequence[str]) -> list[str]:
    """Short headers: the last keyword of each path, the whole path where that is ambiguous."""
    lasts = [re.sub(r"\[\d+\]$", "", p.rsplit(".", 1)[-1]) for p in paths]
    return [last if lasts.count(last) == 1 else path for path, last in zip(paths, lasts, strict=True)]


def render_table(rows: Sequence[dict[str, str]], columns: Sequence[str] | None = None,
                 headers: Sequence[str] | None = None, max_width: int = 40) -> str:
    """A plain text table: a header line, a rule, one line per row (cells clipped at ``max_width``)."""
    if columns is None:
        seen: dict[str, None] = {}
        for row in rows:
            for key in row:
                seen.setdefault(key)
        columns = list(seen)
    if not columns:
        return ""
    headers = list(headers) if headers is not None else column_names(columns)
    cells = [[_clip(row.get(c, ""), max_width) for c in columns] for row in rows]
    widths = [max([_width(h)] + [_width(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(_pad(h, w) for h, w in zip(headers, widths, strict=True)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(_pad(c, w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines) + "\n"
