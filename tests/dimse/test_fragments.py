"""Messages <-> P-DATA-TF fragments (PS3.7 6.3, PS3.8 9.3.5 and Annex E)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dimsekit.dimse import fragments as fragments_module
from dimsekit.dimse.codec import CommandError, encode_command
from dimsekit.dimse.commands import NO_DATASET, CommandField
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
from dimsekit.errors import LocalProtocolError, RemoteProtocolError

from .pdata import parse_pdata, pdv, sample_command, split_into_pdvs

STORE = sample_command(CommandField.C_STORE_RQ)
STORE_BYTES = encode_command(STORE)
ECHO = sample_command(CommandField.C_ECHO_RQ)
ECHO_BYTES = encode_command(ECHO)


def one_by_one(assembler: MessageAssembler, pdvs: list) -> list:
    events: list = []
    for item in pdvs:
        events.extend(assembler.receive_pdv(item))
    return events


def in_runs(assembler: MessageAssembler, pdvs: list) -> list:
    """As the association feeds a P-DATA indication's PDVs: runs of data set
    fragments at once (``receive_from``)."""
    events: list = []
    at = 0
    while at < len(pdvs):
        more, at = assembler.receive_from(pdvs, at)
        events.extend(more)
    return events


@pytest.fixture(scope="module", params=[one_by_one, in_runs], ids=["one-by-one", "in-runs"])
def collect(request: pytest.FixtureRequest) -> Any:
    """Feeds PDVs to an assembler and returns the events: each test that uses
    it runs both ways, and must come out the same."""
    return request.param


def dataset_of(event: MessageReceived) -> bytes | None:
    return None if event.dataset is None else event.dataset.getvalue()


# ---------------------------------------------------------------------------
# Sending
# ---------------------------------------------------------------------------
def test_echo_in_one_pdu() -> None:
    (pdu,) = fragment_message(1, ECHO_BYTES, None, 16384)
    assert pdu[:6] == b"\x04\x00" + (len(ECHO_BYTES) + 6).to_bytes(4, "big")
    assert pdu[6:12] == (len(ECHO_BYTES) + 2).to_bytes(4, "big") + b"\x01\x03"
    assert pdu[12:] == ECHO_BYTES


def test_store_default_separate_pdus() -> None:
    pdus = list(fragment_message(3, STORE_BYTES, b"DATA", 16384))
    assert [[(p.context_id, p.control, p.data) for p in parse_pdata(x)] for x in pdus] == [
        [(3, 0x03, STORE_BYTES)],
        [(3, 0x02, b"DATA")],
    ]


def test_store_packed() -> None:
    (pdu,) = fragment_message(3, STORE_BYTES, b"DATA", 16384, pack=True)
    assert [(p.control, p.data) for p in parse_pdata(pdu)] == [(0x03, STORE_BYTES), (0x02, b"DATA")]


def test_pack_needs_room() -> None:
    # Max exactly fits the command PDV: nothing to pack.
    pdus = list(fragment_message(1, STORE_BYTES, b"xyz", len(STORE_BYTES) + 6, pack=True))
    assert [[v.control for v in parse_pdata(p)] for p in pdus] == [[0x03], [0x02]]
    # Room for 2 data bytes next to it.
    pdus = list(fragment_message(1, STORE_BYTES, b"xyz", len(STORE_BYTES) + 14, pack=True))
    assert [[p.control for p in parse_pdata(x)] for x in pdus] == [[0x03, 0x00], [0x02]]


def test_small_max_pdu() -> None:
    pdus = list(fragment_message(1, b"\x01\x02\x03\x04\x05", b"abc", 8))
    assert all(len(p) <= 14 for p in pdus)
    got = [(p.control, p.data) for x in pdus for p in parse_pdata(x)]
    assert got == [
        (1, b"\x01\x02"),
        (1, b"\x03\x04"),
        (3, b"\x05"),
        (0, b"ab"),
        (2, b"c"),
    ]
    # 9 behaves like 8: fragments stay even.
    assert list(fragment_message(1, b"\x01\x02\x03\x04\x05", b"abc", 9)) == pdus


@pytest.mark.parametrize("bad", [1, 7, -1])
def test_max_pdu_below_8_is_refused(bad: int) -> None:
    with pytest.raises(ValueError):
        list(fragment_message(1, ECHO_BYTES, None, bad))


def test_context_id_checked() -> None:
    with pytest.raises(ValueError):
        list(fragment_message(0, ECHO_BYTES, None, 0))


@pytest.mark.parametrize("empty", [b"", [], [b"", b""]], ids=["bytes", "no-blocks", "empty-blocks"])
def test_empty_dataset_is_one_empty_last_fragment(empty: Any, collect) -> None:
    pdus = list(fragment_message(1, STORE_BYTES, empty, 100))
    assert (parse_pdata(pdus[-1])[0].control, parse_pdata(pdus[-1])[0].data) == (0x02, b"")
    (event,) = [
        e
        for e in collect(MessageAssembler(), [p for x in pdus for p in parse_pdata(x)])
        if isinstance(e, MessageReceived)
    ]
    assert dataset_of(event) == b""


def test_dataset_streamed_lazily() -> None:
    pulled = []

    def blocks() -> Iterator[bytes]:
        for i in range(1000):
            pulled.append(i)
            yield bytes([i % 256]) * 4096

    pdus = fragment_message(1, STORE_BYTES, blocks(), 16384)
    next(pdus)  # the command
    next(pdus)  # first data PDU
    assert len(pulled) <= 6  # only what 16 KiB needed, plus one look-ahead
    rest = list(pdus)
    assert len(pulled) == 1000
    assert sum(len(p) - 12 for p in rest) + 16378 - (16378 % 2) == 4096 * 1000


def test_blocks_must_be_bytes() -> None:
    with pytest.raises(TypeError):
        list(fragment_message(1, STORE_BYTES, ["text"], 100))


def test_unlimited_max_caps_fragments() -> None:
    data = os.urandom(3 << 20)
    pdus = list(fragment_message(1, STORE_BYTES, data, 0))
    assert len(pdus) == 1 + 3
    assert all(len(p) <= (1 << 20) + 12 for p in pdus)


# ---------------------------------------------------------------------------
# The round trip, as a property.
# ---------------------------------------------------------------------------
COMMANDS_WITH_DATA = [
    f for f in CommandField if sample_command(f)["CommandDataSetType"] != NO_DATASET
]
COMMANDS_WITHOUT = [f for f in CommandField if f not in COMMANDS_WITH_DATA]


@st.composite
def messages(draw: st.DrawFn) -> dict[str, Any]:
    max_pdu = draw(
        st.one_of(
            st.just(0),
            st.integers(8, 64),
            st.integers(65, 20000),
            st.sampled_from([4096, 16384, 65536, 1 << 20, 2 << 20]),
        )
    )
    with_data = draw(st.booleans())
    field = draw(st.sampled_from(COMMANDS_WITH_DATA if with_data else COMMANDS_WITHOUT))
    command = sample_command(field, optional=draw(st.booleans()))
    if with_data:
        # Bound the PDU count so one example stays fast with tiny maxima.
        budget = 200_000 if max_pdu == 0 else min(200_000, (max_pdu - 6) * 1500)
        size = draw(st.integers(0, budget))
        data = draw(st.randoms(use_true_random=False)).randbytes(size)
        cuts = draw(st.lists(st.integers(0, max(size, 1)), max_size=20))
        bounds = [0, *sorted(c % (size + 1) for c in cuts), size]
        chunks = [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
        shape = draw(st.sampled_from(["bytes", "bytearray", "memoryview", "chunks", "generator"]))
        dataset: Any = {
            "bytes": data,
            "bytearray": bytearray(data),
            "memoryview": memoryview(data),
            "chunks": chunks,
            "generator": (c for c in chunks),
        }[shape]
    else:
        data, dataset = None, None
    return {
        "command": command,
        "data": data,
        "dataset": dataset,
        "max_pdu": max_pdu,
        "pack": draw(st.booleans()),
        "context_id": draw(st.sampled_from([1, 3, 127, 255])),
        "cuts": draw(st.lists(st.integers(0, 1 << 20), max_size=12)),
        "threshold": draw(st.sampled_from([0, 1000, 1 << 20])),
    }


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages())
def test_fragment_and_reassemble(collect, message: dict[str, Any]) -> None:
    command, data, max_pdu = message["command"], message["data"], message["max_pdu"]
    context_id = message["context_id"]
    command_bytes = encode_command(command)
    pdus = list(
        fragment_message(
            context_id, command_bytes, message["dataset"], max_pdu, pack=message["pack"]
        )
    )
    parsed = [parse_pdata(p) for p in pdus]

    # Every PDU within the peer's limit; every PDV's fragment too.
    if max_pdu:
        assert all(len(p) <= max_pdu + 6 for p in pdus)
        assert all(len(v.data) <= max_pdu - 6 for pvs in parsed for v in pvs)
    # Command first, then data; one last fragment of each.
    controls = [v.control for pvs in parsed for v in pvs]
    n_cmd = sum(1 for c in controls if c & 1)
    assert all(c & 1 for c in controls[:n_cmd]) and not any(c & 1 for c in controls[n_cmd:])
    assert [c & 2 for c in controls[:n_cmd]] == [0] * (n_cmd - 1) + [2]
    if data is not None:
        assert [c & 2 for c in controls[n_cmd:]] == [0] * (len(controls) - n_cmd - 1) + [2]
    assert all(v.context_id == context_id for pvs in parsed for v in pvs)
    # Separate PDUs unless packing was asked for; packing puts at most the
    # last command PDV and the first data PDV together.
    mixed = [pvs for pvs in parsed if len({v.control & 1 for v in pvs}) > 1]
    for pvs in parsed:
        if pvs in mixed:
            assert [v.control & 1 for v in pvs] == [1, 0] and pvs[0].control == 0x03
        else:
            assert len(pvs) == 1
    if message["pack"] and data is not None:
        last_command = [v for pvs in parsed for v in pvs if v.control == 0x03][0]
        room = (max_pdu - 12 - len(last_command.data)) & ~1 if max_pdu else 2
        assert len(mixed) == (1 if room >= 2 else 0)
    else:
        assert not mixed

    # Reassembled as sent, and re-fragmented at arbitrary points.
    as_sent = [v for pvs in parsed for v in pvs]
    refragmented = split_into_pdvs(context_id, command_bytes, data, message["cuts"])
    for sequence in (as_sent, refragmented):
        assembler = MessageAssembler(spool_threshold=message["threshold"])
        events = collect(assembler, sequence)
        assert [type(e) for e in events] == [CommandReceived, MessageReceived]
        received, complete = events
        assert received.command == command == complete.command
        assert received.has_dataset == (data is not None)
        assert received.context_id == complete.context_id == context_id
        assert dataset_of(complete) == data
        if data is not None and len(data) > message["threshold"]:
            assert complete.dataset.on_disk
        assert assembler.idle


def test_messages_back_to_back_on_changing_contexts() -> None:
    assembler = MessageAssembler()
    pvs = split_into_pdvs(1, STORE_BYTES, b"one", [5]) + split_into_pdvs(3, ECHO_BYTES, None, [9])
    pvs += split_into_pdvs(5, STORE_BYTES, b"two", [])
    events = list(assembler.receive_pdvs(pvs))
    done = [e for e in events if isinstance(e, MessageReceived)]
    assert [(e.context_id, dataset_of(e)) for e in done] == [(1, b"one"), (3, None), (5, b"two")]


# ---------------------------------------------------------------------------
# Sinks
# ---------------------------------------------------------------------------
class ListSink:
    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.closed = self.aborted = False

    def write(self, data: bytes | memoryview) -> None:
        self.parts.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True


def test_set_sink_after_command_received() -> None:
    assembler = MessageAssembler()
    sink = ListSink()
    assert isinstance(sink, DataSink) and isinstance(SpooledSink(), DataSink)
    pvs = split_into_pdvs(1, STORE_BYTES, b"0123456789", [3, 7])
    events = []
    for event in assembler.receive_pdvs(pvs):  # lazily: set_sink between events
        events.append(event)
        if isinstance(event, CommandReceived):
            assembler.set_sink(sink)
    assert events[-1].dataset is sink
    assert sink.parts == [b"012", b"3456", b"789"] and sink.closed and not sink.aborted


def test_set_sink_when_no_dataset_expected(collect) -> None:
    assembler = MessageAssembler()
    with pytest.raises(LocalProtocolError):
        assembler.set_sink(ListSink())
    collect(assembler, split_into_pdvs(1, STORE_BYTES, b"abcdef", [2])[:-1])
    with pytest.raises(LocalProtocolError):  # data already flowing into the default sink
        assembler.set_sink(ListSink())


def test_abort_aborts_the_sink(collect) -> None:
    assembler = MessageAssembler()
    sink = ListSink()
    pvs = split_into_pdvs(1, STORE_BYTES, b"abcdef", [2])
    n_cmd = sum(1 for v in pvs if v.control & 1)
    assert [type(e) for e in collect(assembler, pvs[:n_cmd])] == [CommandReceived]
    assembler.set_sink(sink)
    collect(assembler, pvs[n_cmd : n_cmd + 1])
    assert sink.parts == [b"ab"]
    assert not assembler.idle
    assembler.abort()
    assert sink.aborted and assembler.idle
    # and the next message starts clean
    assert [type(e) for e in collect(assembler, pvs)] == [CommandReceived, MessageReceived]


class ManySink(ListSink):
    """A sink with ``write_many``: says how each fragment came."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def write(self, data: bytes | memoryview) -> None:
        self.calls.append("write")
        super().write(data)

    def write_many(self, chunks: list) -> None:
        self.calls.append(f"write_many({len(chunks)})")
        self.parts += [bytes(c) for c in chunks]


def feed_runs_with_sink(assembler: MessageAssembler, pvs: list, sink: Any) -> list:
    """``in_runs``, the sink set when the command set is in (as a handler does)."""
    events: list = []
    at = 0
    while at < len(pvs):
        more, at = assembler.receive_from(pvs, at)
        for event in more:
            if isinstance(event, CommandReceived):
                assembler.set_sink(sink)
        events += more
    return events


def test_a_run_of_fragments_goes_to_write_many_in_one_call() -> None:
    pvs = split_into_pdvs(1, STORE_BYTES, b"0123456789", [2, 4, 6, 8])
    sink = ManySink()
    events = feed_runs_with_sink(MessageAssembler(), pvs, sink)
    assert [type(e) for e in events] == [CommandReceived, MessageReceived]
    # four fragments that end nothing in one call; the last one alone (it completes the message)
    assert sink.calls == ["write_many(4)", "write"]
    assert sink.parts == [b"01", b"23", b"45", b"67", b"89"] and sink.closed


def test_a_sink_without_write_many_gets_each_fragment() -> None:
    pvs = split_into_pdvs(1, STORE_BYTES, b"0123456789", [2, 4, 6, 8])
    sink = ListSink()
    events = feed_runs_with_sink(MessageAssembler(), pvs, sink)
    assert [type(e) for e in events] == [CommandReceived, MessageReceived]
    assert sink.parts == [b"01", b"23", b"45", b"67", b"89"] and sink.closed


def test_a_run_past_the_data_set_limit_stops_where_one_fragment_at_a_time_would() -> None:
    """A run whose fragments would pass ``max_dataset_length`` is not written at
    once: the fragments go one by one, and the one past the limit aborts."""
    pvs = split_into_pdvs(1, STORE_BYTES, b"0123456789", [2, 4, 6, 8])
    sink = ManySink()
    with pytest.raises(RemoteProtocolError) as info:
        feed_runs_with_sink(MessageAssembler(max_dataset_length=5), pvs, sink)
    assert info.value.abort_source == 0
    assert sink.parts == [b"01", b"23"] and sink.aborted


def test_a_run_stops_at_a_fragment_on_another_context() -> None:
    pvs = [pdv(1, 0x03, STORE_BYTES), pdv(1, 0x00, b"ab"), pdv(1, 0x00, b"cd"), pdv(3, 0x00, b"ef")]
    sink = ManySink()
    with pytest.raises(RemoteProtocolError, match="context 3"):
        feed_runs_with_sink(MessageAssembler(), pvs, sink)
    assert sink.parts == [b"ab", b"cd"] and sink.aborted


@given(sizes=st.lists(st.integers(min_value=0, max_value=5000), max_size=60),
       groups=st.lists(st.integers(min_value=1, max_value=8), max_size=60),
       threshold=st.sampled_from([0, 100, 20000]))
@settings(max_examples=60, deadline=None)
def test_spooled_sink_write_many_keeps_every_byte_in_order(sizes, groups, threshold) -> None:
    fragments = [bytes([n % 251]) * size for n, size in enumerate(sizes)]
    sink = SpooledSink(threshold)
    at = 0
    for group in groups or [len(fragments)]:
        if at >= len(fragments):
            break
        sink.write_many([memoryview(f) for f in fragments[at : at + group]])
        at += group
    for fragment in fragments[at:]:
        sink.write(fragment)
    sink.close()
    assert sink.size == sum(sizes)
    assert sink.getvalue() == b"".join(fragments)
    assert sink.on_disk == (sum(sizes) > threshold)


def test_spooled_sink_rolls_to_disk(tmp_path) -> None:
    sink = SpooledSink(threshold=10, dir=str(tmp_path))
    sink.write(b"0123456789")
    assert not sink.on_disk and sink.size == 10
    sink.write(memoryview(b"abc"))
    assert sink.on_disk and sink.size == 13
    sink.write(b"def")
    sink.close()
    assert sink.getvalue() == b"0123456789abcdef"
    assert sink.open().read() == b"0123456789abcdef"
    with pytest.raises(LocalProtocolError):
        sink.write(b"more")
    sink.abort()
    assert not sink.on_disk


def test_spooled_sink_in_memory() -> None:
    sink = SpooledSink(threshold=100)
    for part in (b"ab", bytearray(b"cd"), memoryview(b"ef")):
        sink.write(part)
    sink.close()
    assert not sink.on_disk and sink.getvalue() == b"abcdef" and sink.open().read() == b"abcdef"
    assert SpooledSink().getvalue() == b""


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=300), min_size=1, max_size=40),
    cuts=st.lists(st.integers(min_value=1, max_value=500), min_size=1, max_size=60),
    iov_max=st.integers(min_value=1, max_value=8),
)
def test_writing_chunks_survives_short_writes_and_the_iovec_limit(tmp_path_factory, sizes, cuts, iov_max):
    """Every byte lands once, in order, whatever writev takes each time and however many buffers one may take."""
    chunks = [bytes([i % 251]) * size for i, size in enumerate(sizes)]
    chunks = [memoryview(c) if i % 2 else c for i, c in enumerate(chunks)]
    real_writev = os.writev
    takes = iter(cuts)
    calls = []

    def short_writev(fd, buffers):
        buffers = list(buffers)
        assert len(buffers) <= iov_max
        calls.append(len(buffers))
        want = sum(map(len, buffers))
        limit = min(next(takes, want), want) if want else 0
        kept, left = [], limit
        for b in buffers:
            if left <= 0:
                break
            piece = memoryview(b)[:left]
            kept.append(piece)
            left -= len(piece)
        return real_writev(fd, kept) if kept else 0

    path = tmp_path_factory.mktemp("writev") / "f.part"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    original = (fragments_module.IOV_MAX, fragments_module.os.writev)
    try:
        fragments_module.IOV_MAX = iov_max
        fragments_module.os.writev = short_writev
        written = fragments_module.write_chunks(fd, list(chunks))
    finally:
        fragments_module.IOV_MAX, fragments_module.os.writev = original
        os.close(fd)
    expected = b"".join(bytes(c) for c in chunks)
    assert written == len(expected)
    assert path.read_bytes() == expected



@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(min_value=0, max_value=5000), max_size=60),
       threshold=st.integers(min_value=0, max_value=20000), block=st.integers(min_value=1, max_value=9000),
       read_early=st.booleans())
def test_spooled_sink_keeps_every_byte_in_order(tmp_path, monkeypatch, sizes, threshold, block, read_early) -> None:
    monkeypatch.setattr(fragments_module, "SPOOL_WRITE_BLOCK", block)
    data = os.urandom(sum(sizes))
    sink = SpooledSink(threshold=threshold, dir=str(tmp_path))
    view, at = memoryview(data), 0
    for i, size in enumerate(sizes):
        sink.write(view[at : at + size] if i % 2 else data[at : at + size])
        at += size
        if read_early and i == len(sizes) // 2:
            assert sink.open().read() == data[:at]  # what is pending is written first
            sink.open().read(at // 2)  # left half read: later writes still go to the end
    sink.close()
    assert sink.size == len(data) and sink.on_disk == (len(data) > threshold)
    assert sink.getvalue() == data
    assert sink.open().read() == data


def test_spooled_sink_on_disk_writes_many_fragments_per_system_call(tmp_path, monkeypatch) -> None:
    calls = []
    real = fragments_module.write_chunks
    monkeypatch.setattr(fragments_module, "write_chunks", lambda fd, chunks: (calls.append(len(chunks)), real(fd, chunks))[1])
    sink = SpooledSink(threshold=1 << 20, dir=str(tmp_path))
    fragment = bytes(16384)
    for _ in range(256):  # 4 MiB in 16 KiB fragments
        sink.write(memoryview(fragment))
    sink.close()
    assert sink.getvalue() == fragment * 256
    assert sum(calls) == 256 and len(calls) <= 4 * 1024 * 1024 // fragments_module.SPOOL_WRITE_BLOCK + 1


def test_max_dataset_length(collect) -> None:
    assembler = MessageAssembler(max_dataset_length=5)
    with pytest.raises(RemoteProtocolError) as info:
        collect(assembler, split_into_pdvs(1, STORE_BYTES, b"0123456789", [4]))
    assert info.value.abort_source == 0
    assert assembler.idle


@pytest.mark.parametrize(
    ("field", "status"),
    [(CommandField.C_FIND_RQ, 0xA700), (CommandField.C_GET_RQ, 0xA701), (CommandField.C_MOVE_RQ, 0xA701)],
)
@pytest.mark.parametrize("cuts", [[3, 6, 9], []], ids=["fragments", "one-pdv"])
def test_a_query_past_max_identifier_length_is_discarded_and_refused(field, status, cuts, collect) -> None:
    query = sample_command(field)
    sink_writes: list[int] = []

    class CountingSink(SpooledSink):
        def write(self, data: Any) -> None:
            sink_writes.append(len(data))
            super().write(data)

        def write_many(self, chunks: Any) -> None:
            sink_writes.extend(map(len, chunks))
            super().write_many(chunks)

    assembler = MessageAssembler(max_identifier_length=8, max_dataset_length=1000)
    pvs = split_into_pdvs(1, encode_command(query), b"0123456789" * 3, cuts)
    n = sum(1 for p in pvs if p.control & 0x01)  # the command's fragments
    events = collect(assembler, pvs[:n])
    assert [type(e) for e in events] == [CommandReceived]
    assembler.set_sink(CountingSink())
    events = collect(assembler, pvs[n:-1])
    assert events == [] and not assembler.idle  # the rest is dropped as it comes
    (event,) = collect(assembler, pvs[-1:])
    assert isinstance(event, CommandRejected)
    assert (event.context_id, event.message_id) == (1, query["MessageID"])
    fields = event.error.response_fields()
    assert fields["Status"] == status
    assert fields["ErrorComment"] == "Identifier longer than 8 bytes"
    assert sum(sink_writes) <= 8  # nothing past the limit reached the sink
    assert assembler.idle
    # the association goes on: the same query within the limit is received
    events = collect(assembler, split_into_pdvs(1, encode_command(query), b"01234567", [3]))
    assert [type(e) for e in events] == [CommandReceived, MessageReceived]
    assert dataset_of(events[-1]) == b"01234567"


def test_max_identifier_length_leaves_other_data_sets_alone(collect) -> None:
    assembler = MessageAssembler(max_identifier_length=8)
    for command in (STORE, sample_command(CommandField.N_ACTION_RQ), sample_command(CommandField.N_GET_RSP)):
        command = {**command, "CommandDataSetType": 0x0102}
        events = collect(assembler, split_into_pdvs(1, encode_command(command), b"x" * 100, [50]))
        assert [type(e) for e in events] == [CommandReceived, MessageReceived], command
        assert dataset_of(events[-1]) == b"x" * 100


@pytest.mark.parametrize(
    "field", [CommandField.N_ACTION_RQ, CommandField.N_SET_RQ, CommandField.N_CREATE_RQ, CommandField.N_EVENT_REPORT_RQ]
)
@pytest.mark.parametrize("cuts", [[3, 6, 9], []], ids=["fragments", "one-pdv"])
def test_a_dimse_n_request_past_max_n_dataset_length_is_discarded_and_refused(field, cuts, collect) -> None:
    request = {**sample_command(field), "CommandDataSetType": 0x0102}
    assembler = MessageAssembler(max_n_dataset_length=8, max_identifier_length=4)
    pvs = split_into_pdvs(1, encode_command(request), b"0123456789" * 3, cuts)
    events = collect(assembler, pvs)
    assert [type(e) for e in events] == [CommandReceived, CommandRejected]
    rejected = events[-1]
    assert (rejected.context_id, rejected.message_id) == (1, request["MessageID"])
    fields = rejected.error.response_fields()
    assert fields["Status"] == 0x0213  # Resource Limitation (PS3.7 C.5)
    assert fields["ErrorComment"] == "Data set longer than 8 bytes"
    assert assembler.idle
    # the association goes on: the same request within the limit is received
    events = collect(assembler, split_into_pdvs(1, encode_command(request), b"01234567", [3]))
    assert [type(e) for e in events] == [CommandReceived, MessageReceived]
    assert dataset_of(events[-1]) == b"01234567"


@pytest.mark.parametrize(
    ("field", "limits"),
    [
        (CommandField.C_FIND_RSP, {"max_identifier_length": 8}),
        (CommandField.C_MOVE_RSP, {"max_identifier_length": 8}),
        (CommandField.N_GET_RSP, {"max_n_dataset_length": 8}),
        (CommandField.N_ACTION_RSP, {"max_n_dataset_length": 8}),
    ],
)
def test_a_response_past_its_limit_aborts(field, limits, collect) -> None:
    """A response cannot be refused: an Identifier or DIMSE-N data set past its limit in one is an abort."""
    response = {**sample_command(field), "CommandDataSetType": 0x0102}
    assembler = MessageAssembler(**limits)
    with pytest.raises(RemoteProtocolError, match="longer than 8 bytes") as info:
        collect(assembler, split_into_pdvs(1, encode_command(response), b"0123456789", [4]))
    assert info.value.abort_source == 0
    assert assembler.idle


def test_max_n_dataset_length_leaves_other_data_sets_alone(collect) -> None:
    assembler = MessageAssembler(max_n_dataset_length=8)
    for command in (STORE, sample_command(CommandField.C_FIND_RQ), sample_command(CommandField.C_FIND_RSP)):
        command = {**command, "CommandDataSetType": 0x0102}
        events = collect(assembler, split_into_pdvs(1, encode_command(command), b"x" * 100, [50]))
        assert [type(e) for e in events] == [CommandReceived, MessageReceived], command
        assert dataset_of(events[-1]) == b"x" * 100


def test_max_dataset_length_below_max_identifier_length_still_aborts(collect) -> None:
    assembler = MessageAssembler(max_identifier_length=8, max_dataset_length=5)
    with pytest.raises(RemoteProtocolError) as info:
        collect(assembler, split_into_pdvs(1, encode_command(sample_command(CommandField.C_FIND_RQ)), b"0123456789", [4]))
    assert info.value.abort_source == 0


# ---------------------------------------------------------------------------
# Protocol violations: the peer broke the fragment sequence -> A-ABORT.
# ---------------------------------------------------------------------------
DATA = pdv(1, 0x02, b"data")


@pytest.mark.parametrize(
    "pvs",
    [
        pytest.param([DATA], id="data-before-any-command"),
        pytest.param([pdv(1, 0x01, STORE_BYTES[:10]), DATA], id="data-before-command-complete"),
        pytest.param(
            [pdv(1, 0x01, STORE_BYTES[:10]), pdv(3, 0x03, STORE_BYTES[10:])],
            id="context-changes-in-command",
        ),
        pytest.param(
            [pdv(1, 0x03, STORE_BYTES), pdv(1, 0x00, b"ab"), pdv(3, 0x02, b"cd")],
            id="context-changes-in-data",
        ),
        pytest.param(
            [pdv(1, 0x03, STORE_BYTES), pdv(1, 0x00, b"ab"), pdv(1, 0x03, ECHO_BYTES)],
            id="command-after-data-started",
        ),
        pytest.param(
            [pdv(1, 0x03, STORE_BYTES), pdv(1, 0x03, ECHO_BYTES)], id="command-instead-of-data"
        ),
        pytest.param([pdv(1, 0x03, ECHO_BYTES), DATA], id="data-when-command-said-none"),
        pytest.param([pdv(1, 0x03, b"\x00" * 3)], id="undecodable-command"),
        pytest.param(
            [
                pdv(
                    1,
                    0x03,
                    encode_command({"CommandField": 0x30, "CommandDataSetType": NO_DATASET}),
                )
            ],
            id="command-without-message-id",
        ),
    ],
)
def test_violations_raise_remote_protocol_error(pvs: list, collect) -> None:
    assembler = MessageAssembler()
    with pytest.raises(RemoteProtocolError) as info:
        collect(assembler, pvs)
    assert info.value.abort_source == 2
    assert assembler.idle  # reset: the association is being aborted anyway


def test_command_too_long(collect) -> None:
    assembler = MessageAssembler(max_command_length=100)
    with pytest.raises(RemoteProtocolError):
        collect(assembler, [pdv(1, 0x01, b"\x00" * 60), pdv(1, 0x01, b"\x00" * 60)])


# ---------------------------------------------------------------------------
# Bad command sets that can be answered: a failure status, no abort.
# ---------------------------------------------------------------------------
def test_missing_required_field_is_rejected_with_status(collect) -> None:
    command = dict(STORE)
    del command["AffectedSOPInstanceUID"]
    assembler = MessageAssembler()
    pvs = split_into_pdvs(1, encode_command(command), b"a data set to discard", [5, 11])
    events = collect(assembler, pvs[:-1])
    assert events == []  # reported once the discarded data set is over
    (event,) = collect(assembler, pvs[-1:])
    assert isinstance(event, CommandRejected)
    assert (event.context_id, event.message_id) == (1, 7)
    assert event.error.status == 0x0212
    assert event.error.offending_element == (0x00001000,)
    assert assembler.idle
    # the association goes on
    events = collect(assembler, split_into_pdvs(1, ECHO_BYTES, None, []))
    assert [type(e) for e in events] == [CommandReceived, MessageReceived]


def test_unknown_command_field_without_dataset(collect) -> None:
    command = {"CommandField": 0x0031, "MessageID": 9, "CommandDataSetType": NO_DATASET}
    (event,) = collect(MessageAssembler(), split_into_pdvs(1, encode_command(command), None, []))
    assert isinstance(event, CommandRejected)
    assert event.message_id == 9 and event.error.status == 0x0211
    assert event.error.response_fields()["Status"] == 0x0211


def test_mistyped_element_in_command_bytes(collect) -> None:
    # C-ECHO-RQ whose Affected SOP Class UID is not a UID.
    raw = encode_command({**ECHO, "AffectedSOPClassUID": "1.2.3"}).replace(b"1.2.3", b"1/2/3")
    (event,) = collect(MessageAssembler(), split_into_pdvs(1, raw, None, []))
    assert isinstance(event, CommandRejected) and event.message_id == 7
    assert event.error.status == 0x0212 and event.error.offending_element == (0x00000002,)


def test_undecodable_element_after_message_id_is_answerable(collect) -> None:
    raw = encode_command(STORE) + b"\x00\x00\x00\x09\x03\x00\x00\x00abc"  # Status of 3 bytes
    events = collect(MessageAssembler(), split_into_pdvs(1, raw, b"xx", []))
    assert [type(e) for e in events] == [CommandRejected]
    assert events[0].message_id == 7 and isinstance(events[0].error, CommandError)


def test_rejected_response_is_not_answered(collect) -> None:
    rsp = sample_command(CommandField.C_STORE_RSP)
    rsp["AffectedSOPInstanceUID"] = "not a uid"
    (event,) = collect(MessageAssembler(), split_into_pdvs(1, encode_command(rsp), None, []))
    assert isinstance(event, CommandRejected)
    assert event.message_id is None
    assert event.error.message_id_being_responded_to == 7


def test_data_set_fragments_reach_the_sink_uncopied() -> None:
    """A PDV given as a plain 3-tuple whose data is a memoryview: the sink
    gets that very object (the assembler copies nothing)."""

    class Keep:
        def __init__(self) -> None:
            self.writes: list[Any] = []

        def write(self, data: Any) -> None:
            self.writes.append(data)

        def close(self) -> None:
            pass

        def abort(self) -> None:
            pass

    assembler = MessageAssembler()
    command = encode_command(sample_command(CommandField.C_STORE_RQ))
    (received,) = assembler.receive_pdv((1, 0x03, memoryview(command)))
    assert type(received) is CommandReceived and received.has_dataset
    sink = Keep()
    assembler.set_sink(sink)
    block = memoryview(b"\x01\x02" * 100)
    assert assembler.receive_pdv((1, 0x00, block)) == []
    (done,) = assembler.receive_pdv((1, 0x02, block[:10]))
    assert type(done) is MessageReceived and done.dataset is sink
    assert sink.writes[0] is block and type(sink.writes[1]) is memoryview
    assert assembler.idle


# ---------------------------------------------------------------------------
# Command sets seen before (fragments._COMMAND_CACHE): same events, own dicts.
# ---------------------------------------------------------------------------
def test_repeated_command_set_decodes_to_an_equal_command_of_its_own(collect) -> None:
    from dimsekit.dimse import fragments

    fragments._COMMAND_CACHE.clear()
    first = collect(MessageAssembler(), split_into_pdvs(1, ECHO_BYTES, None, []))
    assert ECHO_BYTES in fragments._COMMAND_CACHE
    first[0].command["MessageID"] = 99  # a receiver may change its command
    second = collect(MessageAssembler(), split_into_pdvs(1, ECHO_BYTES, None, []))
    assert [type(e) for e in second] == [CommandReceived, MessageReceived]
    assert second[0].command == ECHO and second[0].command is not first[0].command
    assert second[1].command is second[0].command
    assert fragments._COMMAND_CACHE[ECHO_BYTES] == ECHO


def test_command_set_in_several_fragments_uses_the_cache_too(collect) -> None:
    from dimsekit.dimse import fragments

    fragments._COMMAND_CACHE.clear()
    whole = collect(MessageAssembler(), split_into_pdvs(1, ECHO_BYTES, None, []))
    pieces = collect(MessageAssembler(), split_into_pdvs(1, ECHO_BYTES, None, [5, 11]))
    assert [e.command for e in pieces] == [e.command for e in whole] == [ECHO, ECHO]
    assert list(fragments._COMMAND_CACHE) == [ECHO_BYTES]


def test_rejected_command_set_is_rejected_every_time(collect) -> None:
    from dimsekit.dimse import fragments

    fragments._COMMAND_CACHE.clear()
    raw = encode_command({**ECHO, "AffectedSOPClassUID": "1.2.3"}).replace(b"1.2.3", b"1/2/3")
    for _ in range(2):
        (event,) = collect(MessageAssembler(), split_into_pdvs(1, raw, None, []))
        assert isinstance(event, CommandRejected) and event.error.status == 0x0212
    assert fragments._COMMAND_CACHE == {}


def test_command_sets_naming_an_instance_are_not_kept(collect) -> None:
    from dimsekit.dimse import fragments

    fragments._COMMAND_CACHE.clear()
    events = collect(MessageAssembler(), split_into_pdvs(1, STORE_BYTES, b"data", []))
    assert [type(e) for e in events] == [CommandReceived, MessageReceived]
    assert events[0].command == STORE
    assert fragments._COMMAND_CACHE == {}


def test_command_cache_is_bounded(monkeypatch: pytest.MonkeyPatch, collect) -> None:
    from dimsekit.dimse import fragments

    fragments._COMMAND_CACHE.clear()
    monkeypatch.setattr(fragments, "_COMMAND_CACHE_MAX", 3)
    raws = [encode_command({**ECHO, "MessageID": n}) for n in range(1, 6)]
    for n, raw in enumerate(raws, 1):
        (_, event) = collect(MessageAssembler(), split_into_pdvs(1, raw, None, []))
        assert event.command["MessageID"] == n
    assert list(fragments._COMMAND_CACHE) == raws[2:]  # the oldest dropped first
    monkeypatch.setattr(fragments, "_COMMAND_CACHE_KEY_MAX", len(raws[0]) - 1)
    fragments._COMMAND_CACHE.clear()
    collect(MessageAssembler(), split_into_pdvs(1, raws[0], None, []))
    assert fragments._COMMAND_CACHE == {}  # too long to keep


# -- elements after the command group ---------------------------------------------------------------


def _after_group(*tags: int) -> bytes:
    import struct

    return b"".join(struct.pack("<HHI", tag >> 16, tag & 0xFFFF, 4) + b"1.2\x00" for tag in tags)


def test_a_response_with_elements_after_its_command_group_is_taken_without_them(collect) -> None:
    # Orthanc 1.10 puts a failed C-GET-RSP's Failed SOP Instance UID List there (no data set)
    rsp = sample_command(CommandField.C_GET_RSP)
    rsp["CommandDataSetType"] = NO_DATASET
    raw = encode_command(rsp) + _after_group(0x00080000, 0x00080058)
    events = collect(MessageAssembler(), split_into_pdvs(1, raw, None, [7]))
    assert [type(e) for e in events] == [ElementsIgnored, CommandReceived, MessageReceived]
    assert events[0].tags == (0x00080000, 0x00080058)
    assert events[2].command == events[0].command
    assert events[2].command["MessageIDBeingRespondedTo"] == rsp["MessageIDBeingRespondedTo"]
    assert "00080058" not in events[2].command


def test_a_request_with_elements_after_its_command_group_is_performed_with_its_data_set(collect) -> None:
    raw = encode_command(STORE) + _after_group(0x00100010)
    assembler = MessageAssembler()
    events = collect(assembler, split_into_pdvs(1, raw, b"the data set", [3]))
    assert [type(e) for e in events] == [ElementsIgnored, CommandReceived, MessageReceived]
    assert events[2].command["MessageID"] == 7
    assert events[2].dataset.getvalue() == b"the data set"
    assert assembler.idle


def test_a_command_group_broken_before_the_elements_after_it_is_still_refused(collect) -> None:
    command = dict(STORE)
    del command["AffectedSOPInstanceUID"]
    raw = encode_command(command) + _after_group(0x00100010)
    (event,) = collect(MessageAssembler(), split_into_pdvs(1, raw, b"discarded", []))
    assert isinstance(event, CommandRejected)
    assert event.error.offending_element == (0x00001000,)
    # group 0000 again after another group: refused as before, naming the stray element
    raw = encode_command(STORE) + _after_group(0x00100010) + encode_command({"MessageID": 8})[12:]
    (event,) = collect(MessageAssembler(), split_into_pdvs(1, raw, b"discarded", []))
    assert isinstance(event, CommandRejected) and event.error.offending_element == (0x00100010,)
