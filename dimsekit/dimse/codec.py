"""Command set <-> bytes: group 0000 in Implicit VR Little Endian (PS3.7 6.3.1).

A DIMSE message is a Command Set, optionally followed by a Data Set.  "The
Command Set shall be encoded using the DICOM Implicit VR Little Endian Transfer
Syntax" (PS3.7 6.3.1), holds only elements of group 0000, and starts with the
Command Group Length (0000,0000) UL: "the even number of bytes from the end of
the value field to the beginning of the next group" -- i.e. the length of every
element after it.

A command set is handled here as a plain ``dict`` keyed by DICOM keyword
(``{"CommandField": 0x0030, "MessageID": 1, ...}``); :mod:`.commands` says which
keys each command needs.  This is a hot path (every C-ECHO, every C-STORE), so
the codec is a small loop over a table built once at import, not a general
data-set parser:

* the table maps keyword -> (tag, VR) and is taken from pydicom's data
  dictionary (``tag_for_keyword`` / ``dictionary_VR``), never typed by hand;
* values are Python ints (US, UL), strs (UI, AE, LO, SH) or tuples of int tags
  (AT, VM 1-n);
* ``encode_command`` writes the elements in ascending tag order (PS3.5 7.1)
  behind a freshly computed Command Group Length; any Command Group Length in
  the dict is ignored, and ``decode_command`` does not return one;
* a group-0000 element not in the table (a retired one, or one newer than
  us) is kept as raw value bytes under its tag as 8 hex digits (``"00000850"``)
  and written back unchanged.

Errors
------
:class:`CommandError` is the only exception ``decode_command`` raises, for any
input.  It carries the status to answer with, chosen per PS3.7:

* The status must be one the service may return.  The status lists of every
  DIMSE service (PS3.7 9.1.x and 10.1.x, "Status") include *Mistyped argument*
  (0212H) and *Unrecognized operation* (0211H); *Missing Attribute* (0120H)
  is listed only for DIMSE-N services and speaks of data-set Attributes, not
  command elements: it may not be returned in, say, a C-STORE-RSP.
* *Unrecognized operation* (0211H, Annex C.5): "the operation is not one of
  those agreed between the DIMSE Service Users" -- used when the Command
  Field (0000,0100) is missing or names no DIMSE command (see
  :func:`.commands.validate`).
* *Mistyped argument* (0212H, Annex C.5): "one of the parameters supplied has
  not been agreed for use on the Association between the DIMSE Service
  Users" -- used for everything else: an element whose
  value does not fit its VR (a US that is not 2 bytes), an element outside
  group 0000, a length that overruns the command set, a duplicated element, a
  required command element missing.  ``OffendingElement`` names the element.

``CommandError.command`` holds whatever could be decoded, so the receiver can
still find the Message ID to respond to; without one no response can be
addressed and the association must be aborted instead (see
:mod:`.fragments`).

Leniency (PS3.7 leaves the receiver free here; peers in the field differ):
elements out of ascending order are accepted, an odd-length text value is
accepted, and the received Command Group Length is not checked against the
bytes (the command set's end is the end of the last command PDV, PS3.8 E.2).
:func:`decode_command` refuses an element outside group 0000; the receiver may
then ask :func:`split_trailing` whether such elements only *follow* the
command group -- Orthanc 1.10 puts a failed C-GET-RSP's Failed SOP Instance UID
List (0008,0058), which belongs in an Identifier, after the command elements
of a response with no data set -- and take the group alone (DCMTK and
pynetdicom read such a command set).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

from pydicom.datadict import dictionary_VM, dictionary_VR, tag_for_keyword

from dimsekit.errors import DimsekitError

__all__ = [
    "CommandError",
    "ELEMENTS",
    "KEYWORD_BY_TAG",
    "encode_command",
    "decode_command",
    "split_trailing",
    "tag_of",
    "format_tag",
]

# Status codes used here (PS3.7 Annex C.5); the registry in .status names them.
_UNRECOGNIZED_OPERATION = 0x0211
_MISTYPED_ARGUMENT = 0x0212


class CommandError(DimsekitError):
    """A command set that cannot be accepted, with the DIMSE status to answer.

    Raised by :func:`decode_command` for bytes that are not a well-formed
    command set and by :func:`.commands.validate` for a command that lacks or
    mistypes a field.  The receiving association answers with a response whose
    Status is ``status`` (PS3.7 Annex C.5) rather than aborting, when
    ``message_id`` is known.

    :param status: the failure status to send (0211H, 0212H, ...).
    :param comment: what was wrong, for the log and for Error Comment (0000,0902).
    :param offending_element: tag or tags for Offending Element (0000,0901).
    :param command: the part of the command set that could be decoded.
    """

    def __init__(
        self,
        status: int,
        comment: str,
        offending_element: int | Sequence[int] | None = None,
        command: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment
        if offending_element is None:
            self.offending_element: tuple[int, ...] = ()
        elif isinstance(offending_element, int):
            self.offending_element = (offending_element,)
        else:
            self.offending_element = tuple(offending_element)
        self.command = command

    def _us(self, key: str) -> int | None:
        value = (self.command or {}).get(key)
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0xFFFF:
            return value
        return None

    @property
    def message_id(self) -> int | None:
        """The Message ID (0000,0110) of the rejected request, if it was decoded."""
        return self._us("MessageID")

    @property
    def message_id_being_responded_to(self) -> int | None:
        """The Message ID Being Responded To (0000,0120), if it was decoded."""
        return self._us("MessageIDBeingRespondedTo")

    @property
    def command_field(self) -> int | None:
        """The Command Field (0000,0100) of the rejected command, if it was decoded."""
        return self._us("CommandField")

    def response_fields(self) -> dict[str, Any]:
        """The fields to merge into the failure response (PS3.7 Annex C.5):
        Status, Error Comment (LO: at most 64 characters of the default
        repertoire) and, when known, Offending Element."""
        comment = self.comment.encode("ascii", "replace").decode("ascii")[:64].strip()
        fields: dict[str, Any] = {"Status": self.status, "ErrorComment": comment}
        if self.offending_element:
            fields["OffendingElement"] = self.offending_element
        return fields

    def __repr__(self) -> str:
        return f"CommandError(0x{self.status:04X}, {self.comment!r})"


def format_tag(tag: int) -> str:
    """``(gggg,eeee)`` as PS3.5 writes tags."""
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


# ---------------------------------------------------------------------------
# The command elements (PS3.7 Annex E, "Command Dictionary", and the message
# tables of 9.3 and 10.3).  Only the keywords are written here; tag, VR and VM
# come from pydicom's copy of the data dictionary at import.  Retired command
# elements (Annex E.2: Initiator, Receiver, Number of Matches, ...) are left
# out on purpose: received, they are kept as raw bytes under their hex tag.
# ---------------------------------------------------------------------------
_COMMAND_KEYWORDS = (
    "CommandGroupLength",  # (0000,0000) UL
    "AffectedSOPClassUID",  # (0000,0002) UI
    "RequestedSOPClassUID",  # (0000,0003) UI
    "CommandField",  # (0000,0100) US
    "MessageID",  # (0000,0110) US
    "MessageIDBeingRespondedTo",  # (0000,0120) US
    "MoveDestination",  # (0000,0600) AE
    "Priority",  # (0000,0700) US
    "CommandDataSetType",  # (0000,0800) US
    "Status",  # (0000,0900) US
    "OffendingElement",  # (0000,0901) AT 1-n
    "ErrorComment",  # (0000,0902) LO
    "ErrorID",  # (0000,0903) US
    "AffectedSOPInstanceUID",  # (0000,1000) UI
    "RequestedSOPInstanceUID",  # (0000,1001) UI
    "EventTypeID",  # (0000,1002) US
    "AttributeIdentifierList",  # (0000,1005) AT 1-n
    "ActionTypeID",  # (0000,1008) US
    "NumberOfRemainingSuboperations",  # (0000,1020) US
    "NumberOfCompletedSuboperations",  # (0000,1021) US
    "NumberOfFailedSuboperations",  # (0000,1022) US
    "NumberOfWarningSuboperations",  # (0000,1023) US
    "MoveOriginatorApplicationEntityTitle",  # (0000,1030) AE
    "MoveOriginatorMessageID",  # (0000,1031) US
)


def _build_table() -> dict[str, tuple[int, str, str]]:
    table: dict[str, tuple[int, str, str]] = {}
    for keyword in _COMMAND_KEYWORDS:
        tag = tag_for_keyword(keyword)
        if tag is None or tag >> 16 != 0x0000:
            raise ImportError(f"pydicom's dictionary has no command element {keyword}")
        table[keyword] = (tag, dictionary_VR(tag), dictionary_VM(tag))
    return table


#: keyword -> (tag, VR, VM) for every command element this codec knows.
ELEMENTS: dict[str, tuple[int, str, str]] = _build_table()
#: tag -> keyword, the reverse of :data:`ELEMENTS`.
KEYWORD_BY_TAG: dict[int, str] = {tag: kw for kw, (tag, _vr, _vm) in ELEMENTS.items()}


def tag_of(key: str) -> int | None:
    """The tag a command-set key stands for: a keyword of :data:`ELEMENTS` or
    8 hex digits of a group-0000 tag.  None if it is neither."""
    spec = ELEMENTS.get(key)
    if spec is not None:
        return spec[0]
    if len(key) == 8:
        try:
            tag = int(key, 16)
        except ValueError:
            return None
        if tag >> 16 == 0:
            return tag
    return None


# ---------------------------------------------------------------------------
# Encoding.  An Implicit VR LE element is tag group (2), tag element (2),
# value length (4), value -- PS3.5 7.1.3.  Each VR gets one small encoder that
# returns the whole element (PS3.5 6.2: UI padded with NUL, text with SPACE);
# US and UL elements, most of a command set, are one ``struct`` call each.
# ---------------------------------------------------------------------------
_PACK_LEN = struct.Struct("<I").pack
_PACK_US = struct.Struct("<H").pack
_PACK_UL = struct.Struct("<I").pack
_PACK_AT = struct.Struct("<HH").pack
_HEADER = struct.Struct("<HHI")
_PACK_HEADER = _HEADER.pack
#: a whole US / UL element of group 0000: group, element, length, value
_PACK_US_ELEMENT = struct.Struct("<HHIH").pack
_PACK_UL_ELEMENT = struct.Struct("<HHII").pack


def _is_uint(value: Any) -> bool:
    return type(value) is int or (isinstance(value, int) and not isinstance(value, bool))


def _enc_us(element: int, value: Any) -> bytes:
    if not _is_uint(value):
        raise TypeError("US needs an int")
    return _PACK_US_ELEMENT(0, element, 2, value)  # struct.error for values outside 0..65535


def _enc_ul(element: int, value: Any) -> bytes:
    if not _is_uint(value):
        raise TypeError("UL needs an int")
    return _PACK_UL_ELEMENT(0, element, 4, value)


def _enc_text(pad: bytes):
    def encode(element: int, value: Any) -> bytes:
        if not isinstance(value, str):
            raise TypeError("needs a str")
        raw = value.encode("latin-1")
        if len(raw) & 1:
            raw += pad
        return _PACK_HEADER(0, element, len(raw)) + raw

    return encode


def _enc_at(element: int, value: Any) -> bytes:
    tags = (value,) if isinstance(value, int) else value
    out = []
    for tag in tags:
        if not isinstance(tag, int) or isinstance(tag, bool):
            raise TypeError("AT needs int tags")
        out.append(_PACK_AT(tag >> 16, tag & 0xFFFF))  # struct.error if > 32 bits
    raw = b"".join(out)
    return _PACK_HEADER(0, element, len(raw)) + raw


def _enc_raw(element: int, value: Any) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError("an element unknown to the codec needs raw bytes")
    raw = bytes(value)
    if len(raw) & 1:
        raw += b"\x00"
    return _PACK_HEADER(0, element, len(raw)) + raw


_ENCODER_BY_VR = {
    "US": _enc_us,
    "UL": _enc_ul,
    "UI": _enc_text(b"\x00"),
    "AE": _enc_text(b" "),
    "LO": _enc_text(b" "),
    "SH": _enc_text(b" "),
    "AT": _enc_at,
}

# keyword -> (element number, encoder); the group is always 0000
_ENCODE_TABLE = {
    kw: (tag & 0xFFFF, _ENCODER_BY_VR[vr])
    for kw, (tag, vr, _vm) in ELEMENTS.items()
    if kw != "CommandGroupLength"
}
_GROUP_LENGTH_HEAD = _PACK_AT(0, 0) + _PACK_LEN(4)


def encode_command(command: Mapping[str, Any]) -> bytes:
    """The bytes of a command set (PS3.7 6.3.1): Implicit VR Little Endian,
    ascending tags, Command Group Length (0000,0000) first and computed.

    :param command: keyword -> value; see the module docstring for types.
    :raises CommandError: (Mistyped argument, 0212H) a value that does not fit
        its element's VR, or a key that is neither a command keyword nor a
        group-0000 tag in hex.  Nothing is checked beyond types: use
        :func:`.commands.validate` for required fields.
    """
    elements: list[tuple[int, bytes]] = []
    append = elements.append
    table = _ENCODE_TABLE
    us, pack_us = _enc_us, _PACK_US_ELEMENT
    for key, value in command.items():
        spec = table.get(key)
        if spec is not None:
            element, encoder = spec
        elif key == "CommandGroupLength":
            continue  # always recomputed
        else:
            tag = tag_of(key)
            if tag is None or tag == 0:
                raise CommandError(
                    _MISTYPED_ARGUMENT,
                    f"{key!r} is not a command element",
                    command=dict(command),
                )
            element, encoder = tag, _enc_raw
        try:
            if encoder is us and type(value) is int:  # most of a command set: inlined
                append((element, pack_us(0, element, 2, value)))
            else:
                append((element, encoder(element, value)))
        except (TypeError, ValueError, struct.error, UnicodeError) as exc:
            raise CommandError(
                _MISTYPED_ARGUMENT,
                f"{key} {format_tag(element)}: bad value {value!r} ({exc})",
                offending_element=element,
                command=dict(command),
            ) from None
    elements.sort()
    body = b"".join([encoded for _element, encoded in elements])
    return _GROUP_LENGTH_HEAD + _PACK_UL(len(body)) + body


# ---------------------------------------------------------------------------
# Decoding.  One pass over the elements; each length is checked against what
# is left before the value is sliced (no allocation driven by a peer's length
# field).  Value decoders raise ValueError for a value that does not fit the
# VR; that element is reported, decoding goes on so that the Message ID and
# Command Data Set Type can still be recovered.
# ---------------------------------------------------------------------------
def _dec_us(raw: bytes) -> int:
    if len(raw) != 2:
        raise ValueError(f"US value of {len(raw)} bytes")
    return raw[0] | raw[1] << 8


def _dec_ul(raw: bytes) -> int:
    if len(raw) != 4:
        raise ValueError(f"UL value of {len(raw)} bytes")
    return int.from_bytes(raw, "little")


def _dec_uid(raw: bytes) -> str:
    return raw.decode("latin-1").strip("\x00 ")


def _dec_text(raw: bytes) -> str:
    return raw.decode("latin-1").strip(" \x00")


def _dec_at(raw: bytes) -> tuple[int, ...]:
    if len(raw) & 3:
        raise ValueError(f"AT value of {len(raw)} bytes")
    return tuple(g << 16 | e for g, e in struct.iter_unpack("<HH", raw))


_DECODER_BY_VR = {
    "US": _dec_us,
    "UL": _dec_ul,
    "UI": _dec_uid,
    "AE": _dec_text,
    "LO": _dec_text,
    "SH": _dec_text,
    "AT": _dec_at,
}

# element number (group is 0000) -> (keyword, decoder)
_DECODE_TABLE = {tag & 0xFFFF: (kw, _DECODER_BY_VR[vr]) for kw, (tag, vr, _vm) in ELEMENTS.items()}
_unpack_header = _HEADER.unpack_from


def decode_command(data: bytes | bytearray | memoryview) -> dict[str, Any]:
    """Decode a command set (PS3.7 6.3.1) into a dict keyed by keyword.

    Group-0000 elements the codec does not know are kept as raw bytes under
    their tag in 8 hex digits.  The Command Group Length is consumed, not
    returned.  An empty buffer decodes to ``{}`` (which
    :func:`.commands.validate` then rejects).

    :raises CommandError: and nothing else, whatever the bytes: Mistyped
        argument (0212H) for a truncated header, a length that overruns the
        buffer, an element outside group 0000, a value that does not fit its
        VR, or a duplicated element.  ``exc.command`` holds what was decoded.
    """
    buf = data if type(data) is bytes else bytes(data)
    end = len(buf)
    offset = 0
    command: dict[str, Any] = {}
    problem: tuple[str, int] | None = None
    table = _DECODE_TABLE
    us = _dec_us
    while offset < end:
        if end - offset < 8:
            raise CommandError(
                _MISTYPED_ARGUMENT,
                f"command set ends inside an element header at byte {offset}",
                command=command,
            )
        group, tag, length = _unpack_header(buf, offset)  # tag: group 0000, so the element number
        offset += 8
        if group:
            tag |= group << 16
            raise CommandError(
                _MISTYPED_ARGUMENT,
                f"element {format_tag(tag)} outside group 0000 in a command set",
                offending_element=tag,
                command=command,
            )
        if length > end - offset:
            raise CommandError(
                _MISTYPED_ARGUMENT,
                f"element {format_tag(tag)} length {length} overruns the command set",
                offending_element=tag,
                command=command,
            )
        spec = table.get(tag)
        if spec is None:
            key, value = f"{tag:08X}", buf[offset : offset + length]
        else:
            key, decoder = spec
            if decoder is us and length == 2:  # most of a command set: no slice, no call
                value = buf[offset] | buf[offset + 1] << 8
            else:
                try:
                    value = decoder(buf[offset : offset + length])
                except ValueError as exc:
                    problem = problem or (f"{key} {format_tag(tag)}: {exc}", tag)
                    offset += length
                    continue
        offset += length
        if key in command:
            problem = problem or (f"{key} {format_tag(tag)} appears twice", tag)
            continue
        command[key] = value
    command.pop("CommandGroupLength", None)
    if problem is not None:
        raise CommandError(
            _MISTYPED_ARGUMENT, problem[0], offending_element=problem[1], command=command
        )
    return command


def split_trailing(data: bytes) -> tuple[bytes, tuple[int, ...]] | None:
    """A command set whose group-0000 elements are followed by elements of other groups, split:
    the group-0000 part, and the tags of the elements after it.  None when that is not what
    ``data`` is: no element outside group 0000, one of group 0000 after one of another group,
    or elements that do not frame exactly to the end (the strict :func:`decode_command` then
    says what is wrong).  Only called for command sets :func:`decode_command` refused.
    """
    end = len(data)
    offset = 0
    split: int | None = None
    tags: list[int] = []
    while offset < end:
        if end - offset < 8:
            return None
        group, element, length = _unpack_header(data, offset)
        if length > end - offset - 8:
            return None
        if group:
            if split is None:
                split = offset
            tags.append(group << 16 | element)
        elif split is not None:
            return None  # group 0000 again: not a command group with something after it
        offset += 8 + length
    if split is None or split == 0:
        return None
    return data[:split], tuple(tags)
