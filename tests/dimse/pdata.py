"""Test helpers: an independent reader of P-DATA-TF bytes and command factories.

The reader is written from PS3.8 Table 9-22/9-23 for the tests alone, so that
the fragmenter is not checked against its own encoder.
"""

from __future__ import annotations

import struct
from typing import Any

from dimsekit.dimse.commands import COMMANDS, NO_DATASET, CommandField, Usage
from dimsekit.ul.pdu import PresentationDataValue

# Values typed by hand from PS3.7 Annex E (not taken from the code under test).
SOP_CLASS = "1.2.840.10008.5.1.4.1.1.2"
SOP_INSTANCE = "1.2.826.0.1.3680043.2.1125.1.12345678901234567890"

SAMPLE_VALUES: dict[str, Any] = {
    "AffectedSOPClassUID": SOP_CLASS,
    "RequestedSOPClassUID": SOP_CLASS,
    "AffectedSOPInstanceUID": SOP_INSTANCE,
    "RequestedSOPInstanceUID": SOP_INSTANCE,
    "MessageID": 7,
    "MessageIDBeingRespondedTo": 7,
    "Priority": 2,
    "Status": 0xFF00,
    "MoveDestination": "STORESCP",
    "MoveOriginatorApplicationEntityTitle": "MOVESCU",
    "MoveOriginatorMessageID": 99,
    "EventTypeID": 1,
    "ActionTypeID": 2,
    "AttributeIdentifierList": (0x00100010, 0x00100020, 0x7FE00010),
    "OffendingElement": (0x00100010,),
    "ErrorComment": "something went wrong",
    "ErrorID": 3,
    "NumberOfRemainingSuboperations": 10,
    "NumberOfCompletedSuboperations": 65535,
    "NumberOfFailedSuboperations": 0,
    "NumberOfWarningSuboperations": 1,
}


def sample_command(field: CommandField, *, optional: bool = False) -> dict[str, Any]:
    """A valid command set of ``field``: its M fields (and all others if
    ``optional``), with a data set when the spec requires or allows one."""
    spec = COMMANDS[field]
    command: dict[str, Any] = {"CommandField": int(field)}
    for key, usage in spec.fields.items():
        if key in ("CommandField", "CommandDataSetType"):
            continue
        if usage is Usage.M or optional:
            command[key] = SAMPLE_VALUES[key]
    command["CommandDataSetType"] = NO_DATASET if spec.dataset is None else 0x0102
    if spec.dataset is Usage.M or (optional and spec.dataset is not None):
        command["CommandDataSetType"] = 0x0102
    return command


def parse_pdata(pdu: bytes) -> list[PresentationDataValue]:
    """Split one P-DATA-TF PDU into its PDVs, checking every length."""
    assert len(pdu) >= 6
    pdu_type, reserved, length = struct.unpack_from(">BBI", pdu)
    assert (pdu_type, reserved) == (0x04, 0x00)
    assert length == len(pdu) - 6, "PDU-length disagrees with the bytes"
    pdvs = []
    offset = 6
    while offset < len(pdu):
        (item_length,) = struct.unpack_from(">I", pdu, offset)
        assert item_length >= 2
        end = offset + 4 + item_length
        assert end <= len(pdu), "PDV item overruns the PDU"
        pdvs.append(
            PresentationDataValue(
                context_id=pdu[offset + 4], control=pdu[offset + 5], data=pdu[offset + 6 : end]
            )
        )
        offset = end
    assert pdvs, "a P-DATA-TF carries at least one PDV"
    return pdvs


def pdv(context_id: int, control: int, data: bytes) -> PresentationDataValue:
    """Shorthand for a PDV."""
    return PresentationDataValue(context_id=context_id, control=control, data=data)


def split_into_pdvs(
    context_id: int, command_bytes: bytes, dataset: bytes | None, cuts: list[int]
) -> list[PresentationDataValue]:
    """Re-fragment a message at arbitrary points: ``cuts`` (any ints) choose
    where the command and the data set are split."""

    def pieces(data: bytes, control: int) -> list[PresentationDataValue]:
        points = sorted({c % (len(data) + 1) for c in cuts} - {0, len(data)})
        bounds = [0, *points, len(data)]
        out = [
            pdv(context_id, control, data[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)
        ]
        last = out[-1]
        out[-1] = pdv(context_id, control | 0x02, last.data)
        return out

    result = pieces(command_bytes, 0x01)
    if dataset is not None:
        result += pieces(dataset, 0x00)
    return result
