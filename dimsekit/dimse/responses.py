"""Encoded status-only responses from templates (sans-I/O).

A response without a data set or extra fields (every C-ECHO-RSP and
C-STORE-RSP of a stored instance, many failures) is a function of its
request's Command Field, echoed SOP class UID and the status -- and of the
Message ID it answers and the SOP Instance UID it echoes (C-STORE,
N-operations).  The first one of a kind is built, validated and encoded as
usual (make_response, encode_command); its bytes are kept as a template in
which the two Message ID Being Responded To bytes, and the instance UID's
value, are replaced for each later one.  An instance UID changes the
lengths, so the template is per length of the UID's encoded value, and a
UID is spliced in only if it is one make_response would accept (digits and
dots, at most 64).
"""

from __future__ import annotations

import re
from typing import Any

from dimsekit.dimse.codec import encode_command
from dimsekit.dimse.commands import make_response

__all__ = ["encode_status_response"]

#: (Command Field, SOP class UID, status, length of the echoed instance UID's
#: value or None) -> (encoded response, offset of the Message ID Being
#: Responded To value, offset of the Affected SOP Instance UID value or None)
_RESPONSE_TEMPLATES: dict[tuple[int, str, int, int | None], tuple[bytes, int, int | None]] = {}
_RESPONSE_TEMPLATES_MAX = 256
#: (0000,0120) Message ID Being Responded To, as group << 16 | element
_MESSAGE_ID_BEING_RESPONDED_TO = 0x00000120
#: (0000,1000) Affected SOP Instance UID
_AFFECTED_SOP_INSTANCE_UID = 0x00001000
_INSTANCE_KEYS = ("AffectedSOPInstanceUID", "RequestedSOPInstanceUID")
#: what commands.validate / make_response accept as a UID
_UID = re.compile(r"[0-9.]{1,64}\Z")


def encode_status_response(request: dict[str, Any], status: int) -> bytes | None:
    """The encoded response with ``status`` and nothing else to ``request``,
    from a template; None when this request is not answered from templates
    (its response cannot be built, or its instance UID cannot be spliced in:
    the caller's usual path then reports that)."""
    message_id = request.get("MessageID")
    if type(message_id) is not int or not 0 <= message_id <= 0xFFFF or type(status) is not int:
        return None
    # The instance UID make_response echoes: the Affected one, else the Requested one.
    instance = request.get(_INSTANCE_KEYS[0])
    if instance is None:
        instance = request.get(_INSTANCE_KEYS[1])
    if instance is None:
        uid = None
        length = None
    elif type(instance) is str and _UID.match(instance):
        uid = instance.encode("ascii")
        if len(uid) & 1:
            uid += b"\x00"
        length = len(uid)
    else:
        return None
    key = (
        request.get("CommandField"),
        request.get("AffectedSOPClassUID") or request.get("RequestedSOPClassUID"),
        status,
        length,
    )
    template = _RESPONSE_TEMPLATES.get(key)  # type: ignore[arg-type]
    if template is None:
        try:
            encoded = encode_command(make_response(request, status))
        except Exception:
            return None
        offset = _value_offset(encoded, _MESSAGE_ID_BEING_RESPONDED_TO)
        if offset is None:  # pragma: no cover - every response has one (make_response sets it)
            return None
        uid_offset = None
        if uid is not None:
            uid_offset = _value_offset(encoded, _AFFECTED_SOP_INSTANCE_UID)
            if uid_offset is not None and encoded[uid_offset : uid_offset + len(uid)] != uid:
                return encoded  # pragma: no cover - make_response echoes it as given
        if len(_RESPONSE_TEMPLATES) >= _RESPONSE_TEMPLATES_MAX:
            del _RESPONSE_TEMPLATES[next(iter(_RESPONSE_TEMPLATES))]
        _RESPONSE_TEMPLATES[key] = (encoded, offset, uid_offset)  # type: ignore[index]
        return encoded  # made for this request: its Message ID and UID are in it
    encoded, offset, uid_offset = template
    if uid_offset is None:
        return encoded[:offset] + message_id.to_bytes(2, "little") + encoded[offset + 2 :]
    if offset < uid_offset:
        return b"".join((
            encoded[:offset], message_id.to_bytes(2, "little"), encoded[offset + 2 : uid_offset],
            uid, encoded[uid_offset + length :],  # type: ignore[operator]
        ))
    return b"".join((  # pragma: no cover - (0000,0120) comes before (0000,1000)
        encoded[:uid_offset], uid, encoded[uid_offset + length : offset],  # type: ignore[operator]
        message_id.to_bytes(2, "little"), encoded[offset + 2 :],
    ))


def _value_offset(encoded: bytes, tag: int) -> int | None:
    """Where the value of element ``tag`` starts in an Implicit VR Little
    Endian command set (PS3.5 7.1.3: tag 4 bytes, length 4 bytes, value)."""
    pos, end = 0, len(encoded)
    while pos + 8 <= end:
        group = int.from_bytes(encoded[pos : pos + 2], "little")
        element_tag = group << 16 | int.from_bytes(encoded[pos + 2 : pos + 4], "little")
        length = int.from_bytes(encoded[pos + 4 : pos + 8], "little")
        if element_tag == tag:
            return pos + 8
        pos += 8 + length
    return None
