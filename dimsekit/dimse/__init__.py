"""DIMSE: DICOM message exchange (PS3.7), sans-I/O.

* :mod:`.status` -- status codes, their Annex C classes, names per service;
* :mod:`.commands` -- one declarative entry per DIMSE command (PS3.7 9, 10);
* :mod:`.codec` -- command set <-> Implicit VR Little Endian bytes (PS3.7 6.3.1);
* :mod:`.fragments` -- messages <-> P-DATA-TF fragments (PS3.8 Annex E).

Nothing here imports twisted, socket or time.
"""

from dimsekit.dimse.codec import CommandError, decode_command, encode_command
from dimsekit.dimse.commands import (
    COMMANDS,
    DATASET_PRESENT,
    NO_DATASET,
    CommandField,
    CommandSpec,
    Priority,
    Usage,
    has_dataset,
    make_command,
    make_request,
    make_response,
    validate,
)
from dimsekit.dimse.fragments import (
    CommandReceived,
    CommandRejected,
    DataSink,
    ElementsIgnored,
    MessageAssembler,
    MessageReceived,
    SpooledSink,
    fragment_message,
)
from dimsekit.dimse.status import Category, Status, StatusRegistry, category, describe, register

__all__ = [
    "COMMANDS",
    "DATASET_PRESENT",
    "NO_DATASET",
    "Category",
    "CommandError",
    "CommandField",
    "CommandReceived",
    "CommandRejected",
    "CommandSpec",
    "DataSink",
    "ElementsIgnored",
    "MessageAssembler",
    "MessageReceived",
    "Priority",
    "SpooledSink",
    "Status",
    "StatusRegistry",
    "Usage",
    "category",
    "decode_command",
    "describe",
    "encode_command",
    "fragment_message",
    "has_dataset",
    "make_command",
    "make_request",
    "make_response",
    "register",
    "validate",
]
