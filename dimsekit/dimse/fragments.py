"""DIMSE messages <-> Presentation Data Value fragments (PS3.7 6.3, PS3.8 Annex E).

A DIMSE message is a command set, then possibly a data set.  On the wire each
is cut into fragments, each fragment carried by one Presentation Data Value
(PDV) item of a P-DATA-TF PDU (PS3.8 9.3.5, Table 9-22/9-23).  The first byte
of a PDV's value is the Message Control Header (PS3.8 E.2):

* bit 0 -- 1: the fragment is part of a command set; 0: of a data set;
* bit 1 -- 1: it is the last fragment of that command set / data set.

Sending: :func:`fragment_message` yields encoded P-DATA-TF PDUs, lazily, no
larger than the peer's Maximum Length Received (PS3.8 D.1), streaming a data
set given as an iterable of blocks without joining it.

Receiving: :class:`MessageAssembler` takes PDVs in arrival order, however the
peer packed them into PDUs, and reports :class:`CommandReceived`, then (after
the data set has gone into a :class:`DataSink`) :class:`MessageReceived`, or
:class:`CommandRejected` for a command set that cannot be accepted but can be
answered.  A peer that breaks the fragment sequence gets a
:class:`~dimsekit.errors.RemoteProtocolError`: the association aborts.

Sans-I/O: no sockets, no reactor, no clock.  The only files are the temporary
ones a :class:`SpooledSink` rolls over to.
"""

from __future__ import annotations

import errno
import fcntl
import io
import os
import tempfile
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from enum import Enum
from typing import IO, Any, NamedTuple, NoReturn, Protocol, runtime_checkable

from dimsekit.dimse.codec import CommandError, decode_command, split_trailing
from dimsekit.dimse.commands import NO_DATASET, CommandField, validate
from dimsekit.errors import LocalProtocolError, RemoteProtocolError
from dimsekit.ul.pdu import encode_pdata, encode_single_pdata

__all__ = [
    "fragment_message",
    "MessageAssembler",
    "CommandReceived",
    "MessageReceived",
    "CommandRejected",
    "ElementsIgnored",
    "DataSink",
    "SpooledSink",
    "PDV_OVERHEAD",
    "MIN_MAX_PDU_LENGTH",
    "UNLIMITED_FRAGMENT_LENGTH",
    "DEFAULT_SPOOL_THRESHOLD",
]

# ---------------------------------------------------------------------------
# P-DATA-TF layout (PS3.8 Table 9-22, 9-23), big-endian:
#
#   PDU:  type 04H (1) | reserved (1) | PDU-length (4) | PDV item ...
#   PDV:  item-length (4) | presentation-context-ID (1) | message control
#         header (1) | fragment
#
# PDU-length counts the PDV items; item-length counts context ID, control
# header and fragment.  The peer's Maximum Length Received bounds PDU-length
# (PS3.8 D.1: "the maximum length of the variable field of P-DATA-TF PDUs").
# The bytes are written by dimsekit.ul.pdu.encode_pdata.
# ---------------------------------------------------------------------------
#: Bytes of a PDV item that are not fragment: item length, context ID, control.
PDV_OVERHEAD = 6
#: Smallest peer maximum accepted: one PDV of a 2-byte fragment.
MIN_MAX_PDU_LENGTH = 8
#: Fragment size used when the peer's maximum is 0 (unlimited, PS3.8 D.1):
#: large enough that per-PDU cost vanishes, small enough to bound memory.
UNLIMITED_FRAGMENT_LENGTH = 1 << 20

# Message Control Header bits (PS3.8 E.2).
_COMMAND = 0x01
_LAST = 0x02
_COMMAND_OR_LAST = _COMMAND | _LAST


def _fragment_length(max_pdu_length: int) -> int:
    if max_pdu_length == 0:
        return UNLIMITED_FRAGMENT_LENGTH
    if max_pdu_length < MIN_MAX_PDU_LENGTH:
        raise ValueError(f"peer maximum PDU length {max_pdu_length} is below {MIN_MAX_PDU_LENGTH}")
    # Even fragments: not required by PS3.8, but some peers expect them and
    # it costs at most one byte per PDU.
    return (max_pdu_length - PDV_OVERHEAD) & ~1


def _pdata(pdvs: list[tuple[int, int, list[memoryview]]]) -> bytes:
    """One P-DATA-TF PDU from ``(context id, control, fragment parts)``.

    A fragment is usually one slice of one data set block, handed to the PDU
    encoder as is (copied once, into the PDU); only a fragment that straddles
    two blocks is joined first.
    """
    if len(pdvs) == 1:  # the usual PDU: one PDV
        context_id, control, parts = pdvs[0]
        return encode_single_pdata(context_id, control, parts[0] if len(parts) == 1 else b"".join(parts))
    return encode_pdata(
        (context_id, control, parts[0] if len(parts) == 1 else b"".join(parts))
        for context_id, control, parts in pdvs
    )


def _chunks(dataset: bytes | bytearray | memoryview | Iterable[bytes]) -> Iterator[memoryview]:
    if isinstance(dataset, bytes | bytearray | memoryview):
        yield memoryview(dataset).cast("B")
        return
    for chunk in dataset:
        if not isinstance(chunk, bytes | bytearray | memoryview):
            raise TypeError(f"data set blocks must be bytes, not {type(chunk).__name__}")
        if len(chunk):
            yield memoryview(chunk).cast("B")


def _refragment(
    chunks: Iterator[memoryview], first: int, size: int
) -> Iterator[tuple[list[memoryview], int, bool]]:
    """Cut a stream of blocks into fragments: the first at most ``first``
    bytes, the others at most ``size``; yields ``(parts, length, is_last)``.

    A fragment is only sent as not-last once more bytes are known to follow,
    so the last fragment is never empty -- unless the whole data set is.
    Blocks are held as memoryviews and sliced, never joined or copied.
    """
    pending: deque[memoryview] = deque()
    pending_len = 0
    limit = first
    exhausted = False
    while True:
        while not exhausted and pending_len <= limit:
            chunk = next(chunks, None)
            if chunk is None:
                exhausted = True
            else:
                pending.append(chunk)
                pending_len += len(chunk)
        if exhausted and pending_len <= limit:
            yield list(pending), pending_len, True
            return
        parts: list[memoryview] = []
        need = limit
        while need:
            head = pending[0]
            if len(head) <= need:
                parts.append(pending.popleft())
                need -= len(head)
            else:
                parts.append(head[:need])
                pending[0] = head[need:]
                need = 0
        pending_len -= limit
        yield parts, limit, False
        limit = size


def fragment_message(
    context_id: int,
    command_bytes: bytes,
    dataset: bytes | bytearray | memoryview | Iterable[bytes] | None,
    max_pdu_length: int,
    *,
    pack: bool = False,
) -> Iterator[bytes]:
    """Encoded P-DATA-TF PDUs carrying one DIMSE message (PS3.7 6.3, PS3.8 E).

    :param context_id: the presentation context the message is sent on.
    :param command_bytes: the encoded command set (:func:`.codec.encode_command`).
    :param dataset: None (no data set); the data set's bytes; or an iterable
        of byte blocks (e.g. a file read in blocks), consumed lazily -- only
        as far as the PDUs taken from this iterator need.
    :param max_pdu_length: the peer's Maximum Length Received: the largest
        PDU-length field it accepts (PS3.8 D.1); 0 means no limit.  Every PDU
        yielded is at most ``max_pdu_length + 6`` bytes long.
    :param pack: command fragments come first (control 01H/03H), then data
        set fragments (00H/02H).  By default they travel in separate PDUs; with
        ``pack=True`` the last command PDV and the first data set PDV share a
        PDU when both fit -- one PDU fewer for a small message.
    :raises ValueError: ``0 < max_pdu_length < 8``: no room for a fragment.
    """
    size = _fragment_length(max_pdu_length)
    if not 1 <= context_id <= 255:
        raise ValueError(f"presentation context ID {context_id} out of range")
    if dataset is None and len(command_bytes) <= size:
        # The commonest message (C-ECHO, every response without a data set):
        # one PDU, one PDV, the whole command set.
        yield encode_single_pdata(context_id, _COMMAND | _LAST, command_bytes)
        return
    command = memoryview(command_bytes).cast("B")
    cmd_fragments = [command[i : i + size] for i in range(0, len(command), size)] or [command]
    for fragment in cmd_fragments[:-1]:
        yield _pdata([(context_id, _COMMAND, [fragment])])
    last_cmd = cmd_fragments[-1]
    last_cmd_pdv = (context_id, _COMMAND | _LAST, [last_cmd])
    if dataset is None:
        yield _pdata([last_cmd_pdv])
        return

    # Room for the first data fragment in the command's last PDU, if packing.
    first = size
    if pack:
        room = (
            size
            if max_pdu_length == 0
            else (max_pdu_length - 2 * PDV_OVERHEAD - len(last_cmd)) & ~1
        )
        packed = room >= 2
        if packed:
            first = min(room, size)
    else:
        packed = False
    if not packed:
        yield _pdata([last_cmd_pdv])

    for parts, _length, last in _refragment(_chunks(dataset), first, size):
        pdv = (context_id, _LAST if last else 0, parts)
        if packed:
            yield _pdata([last_cmd_pdv, pdv])
            packed = False
        else:
            yield _pdata([pdv])


# ---------------------------------------------------------------------------
# Receiving: sinks.
# ---------------------------------------------------------------------------
@runtime_checkable
class DataSink(Protocol):
    """Where the fragments of a received data set go, in order.

    The assembler calls ``write`` for each fragment, then exactly one of
    ``close`` (the last fragment arrived: the data set is complete) or
    ``abort`` (the message was abandoned: association aborted or lost; the
    sink should delete what it holds).  After ``close`` the sink belongs to
    whoever handles :class:`MessageReceived`.

    A sink may also have ``write_many(chunks)``: append several fragments at
    once, as ``write`` of each in order (the assembler hands it the fragments
    of a data set streaming in, ~60 of them a read from the transport).
    Optional: where it is missing the assembler calls ``write`` for each.
    """

    def write(self, data: bytes | memoryview) -> None:
        """Append one fragment.

        A memoryview handed in views immutable bytes (what was read from the
        transport) and stays valid: a sink may keep it rather than copy it.
        """

    def close(self) -> None:
        """The data set is complete; no more writes."""

    def abort(self) -> None:
        """The data set will never be complete; release everything."""


#: Default memory budget of a :class:`SpooledSink` before it moves to disk.
DEFAULT_SPOOL_THRESHOLD = 1 << 20
#: on disk, a :class:`SpooledSink` writes its fragments this many bytes at a time
SPOOL_WRITE_BLOCK = 256 * 1024
#: how many buffers one ``writev`` may take
IOV_MAX = min(os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 16, 1024)


def write_chunks(fd: int, chunks: list[bytes | memoryview]) -> int:
    """Write all of ``chunks`` to the file descriptor ``fd``, in order, with as few
    system calls as possible (``writev``, up to :data:`IOV_MAX` buffers each);
    return how many bytes.  A short write goes on where it stopped.
    """
    total = 0
    while chunks:
        batch = chunks[:IOV_MAX]
        size = sum(map(len, batch))
        written = os.writev(fd, batch)
        if written <= 0 < size:
            raise OSError(errno.EIO, "a write made no progress")
        total += written
        if written == size:
            chunks = chunks[IOV_MAX:]
            continue
        # A short write: skip what went, go on with the rest of the chunk it stopped in.
        rest = list(chunks)
        while written:
            first = memoryview(rest[0])
            if len(first) <= written:
                written -= len(first)
                rest.pop(0)
            else:
                rest[0] = first[written:]
                written = 0
        chunks = rest
    return total


class SpooledSink:
    """A :class:`DataSink` that keeps a data set in memory up to ``threshold``
    bytes, then moves it to an anonymous temporary file (in ``dir``, or the
    system's temporary directory) and keeps writing there.

    Read it back with :meth:`getvalue` (bytes) or :meth:`open` (a binary
    file object positioned at the start).  Like
    :class:`tempfile.SpooledTemporaryFile`, but it says where it is
    (:attr:`on_disk`) and never holds the data twice.

    Fragments are kept as handed in (a memoryview of what was read stays
    valid, see :meth:`DataSink.write`), not copied; on disk they are written
    :data:`SPOOL_WRITE_BLOCK` bytes at a time, one ``writev`` for many
    fragments rather than a system call each.
    """

    def __init__(self, threshold: int = DEFAULT_SPOOL_THRESHOLD, dir: str | None = None) -> None:
        self.threshold = threshold
        self.dir = dir
        self._chunks: list[bytes | memoryview] = []  # in memory; on disk: not written yet
        self._pending = 0  # bytes in _chunks once on disk
        self._file: IO[bytes] | None = None
        self._size = 0
        self.closed = False
        self.aborted = False

    @property
    def size(self) -> int:
        """Bytes written so far."""
        return self._size

    @property
    def on_disk(self) -> bool:
        """True once the data went past ``threshold`` into a temporary file."""
        return self._file is not None

    def write(self, data: bytes | memoryview) -> None:
        """Append a fragment (kept as it is, not copied)."""
        if self.closed or self.aborted:
            raise LocalProtocolError("write to a closed sink")
        self._chunks.append(data)
        self._grew(len(data))

    def write_many(self, chunks: list[bytes | memoryview]) -> None:
        """Append several fragments, in order (kept as they are)."""
        if self.closed or self.aborted:
            raise LocalProtocolError("write to a closed sink")
        self._chunks += chunks
        self._grew(sum(map(len, chunks)))

    def _grew(self, n: int) -> None:
        """``n`` more bytes were appended to ``_chunks``: on to the disk when it is time."""
        self._size += n
        if self._file is not None:
            self._pending += n
            if self._pending >= SPOOL_WRITE_BLOCK:
                self._write_pending()
        elif self._size > self.threshold:
            self._file = tempfile.TemporaryFile(dir=self.dir)
            # Written at its end whatever the position: open() hands the file out to be read.
            fd = self._file.fileno()
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)
            self._write_pending()

    def _write_pending(self) -> None:
        chunks, self._chunks, self._pending = self._chunks, [], 0
        write_chunks(self._file.fileno(), chunks)  # type: ignore[union-attr]

    def _rewind(self) -> None:
        """Write what is pending; the file at its start, with nothing read ahead before the
        last write kept (a seek to the end always goes to the file; one inside what the
        buffer holds may not)."""
        self._write_pending()
        self._file.seek(0, os.SEEK_END)  # type: ignore[union-attr]
        self._file.seek(0)  # type: ignore[union-attr]

    def close(self) -> None:
        """The data set is complete (the data stays readable)."""
        self.closed = True
        if self._file is not None:
            self._write_pending()

    def abort(self) -> None:
        """Drop the data and delete the temporary file, if any."""
        self.aborted = True
        self._chunks = []
        self._pending = 0
        if self._file is not None:
            self._file.close()
            self._file = None

    def getvalue(self) -> bytes:
        """The whole data set as bytes (read from disk if it went there)."""
        if self._file is None:
            if len(self._chunks) != 1 or type(self._chunks[0]) is not bytes:
                self._chunks = [b"".join(self._chunks)]
            return self._chunks[0]  # type: ignore[return-value]
        self._rewind()
        return self._file.read()

    def open(self) -> IO[bytes]:
        """A binary file object over the data set, positioned at the start.

        On disk, this is the temporary file itself: closing it deletes it.
        """
        if self._file is None:
            return io.BytesIO(self.getvalue())
        self._rewind()
        return self._file


# ---------------------------------------------------------------------------
# Receiving: events and the assembler.
# ---------------------------------------------------------------------------
class CommandReceived(NamedTuple):
    """A command set is complete, decoded and valid (PS3.7 6.3.1).

    When ``has_dataset`` is true its data set follows; the receiver may now
    call :meth:`MessageAssembler.set_sink` to choose where it goes.
    """

    context_id: int
    command: dict[str, Any]
    has_dataset: bool


class MessageReceived(NamedTuple):
    """A whole DIMSE message has arrived: its command set and, if it has one,
    the closed sink that holds its data set (else None)."""

    context_id: int
    command: dict[str, Any]
    dataset: DataSink | None


class CommandRejected(NamedTuple):
    """A message whose command set cannot be accepted but can be answered.

    Reported once the whole message (its data set, if any, discarded) has
    arrived.  ``message_id`` is the request's Message ID to answer with
    ``error.response_fields()`` (a failure status, PS3.7 Annex C.5); it is
    None when the rejected command is a response, which is not answered --
    ``error.command`` then holds Message ID Being Responded To for matching
    it to the operation it fails.
    """

    context_id: int
    message_id: int | None
    error: CommandError


class ElementsIgnored(NamedTuple):
    """The command set of the message that follows (its :class:`CommandReceived` or
    :class:`MessageReceived` comes next) carried elements outside group 0000 after its
    command elements; they were left out (see :func:`.codec.split_trailing`).  For the
    receiver to say so."""

    context_id: int
    command: dict[str, Any]
    tags: tuple[int, ...]


Event = CommandReceived | MessageReceived | CommandRejected | ElementsIgnored


class _State(Enum):
    """Where the assembler is in the fragment sequence of one message."""

    #: Waiting for the first command fragment of a message.
    IDLE = "idle"
    #: Collecting command set fragments.
    COMMAND = "command"
    #: Collecting data set fragments into the sink.
    DATASET = "dataset"
    #: Dropping the data set of a rejected command.
    DISCARD = "discard"


_IDLE = _State.IDLE
#: The messages whose data set is bounded by ``max_identifier_length`` (an Identifier: a
#: query, or what answers one), with the status that refuses such a request once its data
#: set has ended; None for a response, which cannot be refused: past the limit the
#: association is aborted.
_IDENTIFIER_LIMITED: dict[int, int | None] = {
    CommandField.C_FIND_RQ: 0xA700,  # Refused: Out of Resources (PS3.4 C.4.1.1.4)
    CommandField.C_GET_RQ: 0xA701,  # Refused: Out of Resources - Unable to calculate number of matches
    CommandField.C_MOVE_RQ: 0xA701,
    CommandField.C_FIND_RSP: None,
    CommandField.C_GET_RSP: None,
    CommandField.C_MOVE_RSP: None,
}
#: The same for the DIMSE-N messages' data sets, bounded by ``max_n_dataset_length``: a
#: request refused with 0213H Resource Limitation (PS3.7 C.5).
_N_LIMITED: dict[int, int | None] = {
    CommandField.N_EVENT_REPORT_RQ: 0x0213,
    CommandField.N_SET_RQ: 0x0213,
    CommandField.N_ACTION_RQ: 0x0213,
    CommandField.N_CREATE_RQ: 0x0213,
    CommandField.N_EVENT_REPORT_RSP: None,
    CommandField.N_GET_RSP: None,
    CommandField.N_SET_RSP: None,
    CommandField.N_ACTION_RSP: None,
    CommandField.N_CREATE_RSP: None,
}
_make_tuple = tuple.__new__
_DATASET = _State.DATASET

# ---------------------------------------------------------------------------
# Command sets seen before.  A peer repeats its command sets byte for byte:
# every association of an echo client (or a monitoring probe) sends the same
# C-ECHO-RQ with Message ID 1, a query tool the same C-FIND-RQ.  Decoding
# (codec.decode_command) and checking (commands.validate) a command set is a
# function of its bytes alone, so the command a valid command set decodes to
# is kept, keyed by those bytes, and handed out as a copy of its own (the
# receiver may keep or change it).  Not kept: what failed (decoded and
# rejected again each time, with its own error), command sets longer than
# _COMMAND_CACHE_KEY_MAX bytes, and those naming a SOP instance (C-STORE,
# the N-operations, their responses: such a command set hardly ever comes
# twice).  At most _COMMAND_CACHE_MAX entries, the oldest dropped first.
# ---------------------------------------------------------------------------
_COMMAND_CACHE: dict[bytes, dict[str, Any]] = {}
_COMMAND_CACHE_MAX = 256
_COMMAND_CACHE_KEY_MAX = 256
_PER_INSTANCE = ("AffectedSOPInstanceUID", "RequestedSOPInstanceUID")


def _decode_valid_command(raw: bytes | bytearray | memoryview) -> dict[str, Any]:
    """``validate(decode_command(raw), decoded=True)``'s command, from
    :data:`_COMMAND_CACHE` when these bytes were decoded before.

    :raises CommandError: as :func:`~dimsekit.dimse.codec.decode_command`
        and :func:`~dimsekit.dimse.commands.validate` do.
    """
    key = raw if type(raw) is bytes else bytes(raw)
    cache = _COMMAND_CACHE
    known = cache.get(key)
    if known is not None:
        return known.copy()
    command = decode_command(key)
    validate(command, decoded=True)
    if len(key) <= _COMMAND_CACHE_KEY_MAX and _PER_INSTANCE[0] not in command and _PER_INSTANCE[1] not in command:
        if len(cache) >= _COMMAND_CACHE_MAX:
            del cache[next(iter(cache))]
        cache[key] = command.copy()
    return command


class MessageAssembler:
    """Reassembles DIMSE messages from PDVs (PS3.7 6.3, PS3.8 Annex E).

    Feed it each PDV in order with :meth:`receive_pdv` (or a whole PDU's PDVs
    through :meth:`receive_pdvs`, which yields events lazily, so a receiver
    may call :meth:`set_sink` between them); it returns the events.

    Sequence rules enforced (a violation raises RemoteProtocolError, which
    means A-ABORT): a message is a command set then, if its Command Data Set
    Type says so, a data set; all its fragments use one presentation context;
    fragments of two messages do not interleave (PS3.8 E.2: the last fragment
    bit ends each part).

    :param spool_threshold: memory budget of the default :class:`SpooledSink`.
    :param spool_dir: directory for the default sink's temporary files.
    :param max_command_length: largest command set accepted (a real one is a
        few hundred bytes).
    :param max_dataset_length: largest data set accepted, or None.  A longer
        one raises RemoteProtocolError with abort source 0: it is our choice
        (the service-user's) to abort, the peer broke no rule.
    :param max_identifier_length: largest Identifier of a C-FIND, C-GET or
        C-MOVE request accepted, or None.  A real query is a few hundred
        bytes to a few hundred KiB (a list of UIDs); a longer one is
        discarded as it arrives and reported as :class:`CommandRejected`
        with "Refused: Out of Resources" (A700H for C-FIND, A701H for C-GET
        and C-MOVE: PS3.4 C.4.1.1.4, C.4.2.1.5, C.4.3.1.4) once it has
        ended: the association goes on.  It bounds the Identifiers of the
        responses too (C-FIND-RSP, C-GET-RSP, C-MOVE-RSP): past it, an abort.
    :param max_n_dataset_length: largest data set of a DIMSE-N message
        accepted (N-EVENT-REPORT, N-SET, N-ACTION, N-CREATE; the responses
        with N-GET's), or None.  A request's is discarded and refused with
        0213H Resource Limitation (PS3.7 C.5) once it has ended; a
        response's aborts the association.

    A sink that fails to write (disk full) raises its own error (OSError):
    that is a local failure, for the association to turn into an A-ABORT.
    """

    def __init__(
        self,
        *,
        spool_threshold: int = DEFAULT_SPOOL_THRESHOLD,
        spool_dir: str | None = None,
        max_command_length: int = 1 << 20,
        max_dataset_length: int | None = None,
        max_identifier_length: int | None = None,
        max_n_dataset_length: int | None = None,
    ) -> None:
        self.spool_threshold = spool_threshold
        self.spool_dir = spool_dir
        self.max_command_length = max_command_length
        self.max_dataset_length = max_dataset_length
        self.max_identifier_length = max_identifier_length
        self.max_n_dataset_length = max_n_dataset_length
        self._reset()

    def _reset(self) -> None:
        self._state = _State.IDLE
        self._context_id = 0
        self._command_parts: list[bytes] = []
        self._command_length = 0
        self._command: dict[str, Any] = {}
        self._sink: DataSink | None = None
        self._dataset_length = 0
        #: the limit on the data set coming (the smaller of those that apply), or None
        self._dataset_limit: int | None = None
        #: the status refusing the request once past that limit; None: past it, abort
        self._refusal: int | None = None
        self._rejection: CommandRejected | None = None

    @property
    def idle(self) -> bool:
        """True between messages (no fragment of an unfinished message held)."""
        return self._state is _State.IDLE

    def set_sink(self, sink: DataSink) -> None:
        """Send the data set announced by the last :class:`CommandReceived` to
        ``sink`` instead of a :class:`SpooledSink`.

        :raises LocalProtocolError: no data set is expected, or its first
            fragment already went to another sink.
        """
        if self._state is not _State.DATASET or self._dataset_length:
            raise LocalProtocolError("set_sink() is only possible right after CommandReceived")
        if self._sink is not None:
            self._sink.abort()
        self._sink = sink

    def abort(self) -> None:
        """Abandon any message in progress (association aborted or lost): its
        sink is aborted.  The assembler is then idle."""
        if self._sink is not None:
            self._sink.abort()
        self._reset()

    def receive_pdvs(self, pdvs: Iterable[Any]) -> Iterator[Event]:
        """Events of several PDVs (e.g. one P-DATA-TF's ``pdvs``), lazily."""
        for pdv in pdvs:
            yield from self.receive_pdv(pdv)

    def receive_from(self, pdvs: Sequence[Any], start: int) -> tuple[list[Event], int]:
        """Take the PDVs of ``pdvs`` from ``start`` on: a run of data set
        fragments that completes nothing (neither the last fragment nor past
        the data set's limit) goes to the sink in one ``write_many``, else one
        PDV as :meth:`receive_pdv`.  Returns the events and where to go on.

        The receiving hot path: a data set streaming in is ~60 PDVs a read,
        and handing them on one by one cost more than their framing.

        :raises RemoteProtocolError: as :meth:`receive_pdv`.
        """
        if self._state is _DATASET:
            context_id = self._context_id
            stop = start
            end = len(pdvs)
            while stop < end:
                pdv = pdvs[stop]
                if pdv[0] != context_id or pdv[1] & _COMMAND_OR_LAST:
                    break
                stop += 1
            if stop - start > 1:
                chunks = [pdv[2] for pdv in pdvs[start:stop]]
                length = self._dataset_length + sum(map(len, chunks))
                limit = self._dataset_limit
                if limit is None or length <= limit:
                    self._dataset_length = length
                    sink = self._sink
                    if sink is None:
                        sink = self._sink = SpooledSink(self.spool_threshold, self.spool_dir)
                    write_many = getattr(sink, "write_many", None)
                    if write_many is not None:
                        write_many(chunks)
                    else:
                        for chunk in chunks:
                            sink.write(chunk)
                    return [], stop
        return self.receive_pdv(pdvs[start]), start + 1

    def receive_pdv(self, pdv: Any) -> list[Event]:
        """Take one PDV (``(context_id, control, data)``: a
        :class:`~dimsekit.ul.pdu.PresentationDataValue` or any 3-tuple);
        return the events it completes (zero, one, or CommandReceived +
        MessageReceived).

        ``data`` (bytes or a memoryview) goes to the data set's sink as it
        is, never copied here.

        :raises RemoteProtocolError: the PDV breaks the message sequence.
        """
        context_id, control, data = pdv
        state = self._state
        if state is _DATASET:
            # The hot path of a data set streaming in: one PDV per PDU.
            if context_id != self._context_id:
                self._fail(
                    f"PDV on presentation context {context_id} in the middle of a message "
                    f"on context {self._context_id}"
                )
            if control & _COMMAND:
                self._fail("command fragment while a data set was expected")
            self._dataset_length += len(data)
            limit = self._dataset_limit
            if limit is not None and self._dataset_length > limit:
                return self._too_long(limit, control)
            sink = self._sink
            if sink is None:
                sink = self._sink = SpooledSink(self.spool_threshold, self.spool_dir)
            sink.write(data)
            if control & _LAST:
                sink.close()
                event = _make_tuple(MessageReceived, (context_id, self._command, sink))
                self._sink = None  # now the receiver's
                self._reset()
                return [event]
            return []
        if state is _IDLE:
            if control == _COMMAND | _LAST and len(data) <= self.max_command_length:
                # The whole command set in one PDV (the usual case): no
                # gathering, and nothing to reset when no data set follows.
                self._context_id = context_id
                return self._command_complete(data)
            if not control & _COMMAND:
                self._fail("data set fragment without a command set")
            self._state = _State.COMMAND
            self._context_id = context_id
        elif context_id != self._context_id:
            self._fail(
                f"PDV on presentation context {context_id} in the middle of a message "
                f"on context {self._context_id}"
            )
        elif not control & _COMMAND:
            if state is _State.DISCARD:
                if control & _LAST:
                    rejection = self._rejection
                    self._reset()
                    return [rejection]  # type: ignore[list-item]
                return []
            self._fail("data set fragment before the command set was complete")
        elif state is not _State.COMMAND:
            self._fail("command fragment while a data set was expected")
        # A command fragment (the first of several, or a later one).
        self._command_length += len(data)
        if self._command_length > self.max_command_length:
            self._fail(f"command set longer than {self.max_command_length} bytes")
        self._command_parts.append(bytes(data))
        if control & _LAST:
            return self._command_complete()
        return []

    def _command_complete(self, raw: bytes | None = None) -> list[Event]:
        """The command set is complete: ``raw``, or the fragments gathered so far."""
        if raw is None:
            raw = b"".join(self._command_parts)
            self._command_parts = []
        context_id = self._context_id
        ignored: list[Event] = []
        try:
            command = _decode_valid_command(raw)
        except CommandError as error:
            split = split_trailing(raw) if error.offending_element and error.offending_element[0] >> 16 else None
            if split is None:
                return self._reject(error)
            try:  # the command group alone (not kept in the cache: such command sets hardly repeat)
                command = decode_command(split[0])
                validate(command, decoded=True)
            except CommandError as group_error:
                return self._reject(group_error)
            ignored.append(_make_tuple(ElementsIgnored, (context_id, command, split[1])))
        has_dataset = command["CommandDataSetType"] != NO_DATASET
        # the events as named tuples made in one C call each (tuple.__new__),
        # not through their Python-level __new__: every message makes them
        received = _make_tuple(CommandReceived, (context_id, command, has_dataset))
        if has_dataset:
            self._state = _State.DATASET
            self._command = command
            limit = self.max_dataset_length
            field = command["CommandField"]
            if field in _IDENTIFIER_LIMITED:
                own, refusal = self.max_identifier_length, _IDENTIFIER_LIMITED[field]
            elif field in _N_LIMITED:
                own, refusal = self.max_n_dataset_length, _N_LIMITED[field]
            else:
                own = None
            if own is not None and (limit is None or own <= limit):
                limit = own
                self._refusal = refusal
            self._dataset_limit = limit
            return [*ignored, received] if ignored else [received]
        if self._state is not _IDLE:  # gathered from several fragments
            self._reset()
        done = _make_tuple(MessageReceived, (context_id, command, None))
        return [*ignored, received, done] if ignored else [received, done]

    def _too_long(self, limit: int, control: int) -> list[Event]:
        """The data set coming passed ``limit``: a query's Identifier past
        ``max_identifier_length``, a DIMSE-N request's data set past
        ``max_n_dataset_length``, is discarded and the request refused once it
        has ended; any other data set (a response's, or one past
        ``max_dataset_length``) ends the association."""
        command = self._command
        status = self._refusal
        if status is None:
            self.abort()
            raise RemoteProtocolError(f"data set longer than {limit} bytes", abort_source=0)
        if self._sink is not None:
            self._sink.abort()
            self._sink = None
        what = "Identifier" if command["CommandField"] in _IDENTIFIER_LIMITED else "Data set"
        error = CommandError(status, f"{what} longer than {limit} bytes", command=command)
        rejection = CommandRejected(self._context_id, error.message_id, error)
        if control & _LAST:
            self._reset()
            return [rejection]
        self._state = _State.DISCARD
        self._rejection = rejection
        return []

    def _reject(self, error: CommandError) -> list[Event]:
        partial = error.command or {}
        message_id = error.message_id
        if message_id is None and error.message_id_being_responded_to is None:
            # No request to answer, no operation to fail: only an abort is left.
            self._fail(f"unanswerable command set: {error.comment}")
        field = error.command_field
        if field is not None and field & 0x8000:
            message_id = None  # a response is never answered
        rejection = CommandRejected(self._context_id, message_id, error)
        data_type = partial.get("CommandDataSetType", NO_DATASET)
        if isinstance(data_type, int) and data_type != NO_DATASET:
            self._state = _State.DISCARD
            self._rejection = rejection
            return []
        self._reset()
        return [rejection]

    def _fail(self, message: str) -> NoReturn:
        self.abort()
        raise RemoteProtocolError(message, abort_source=2, abort_reason=0)
