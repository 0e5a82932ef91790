"""The sans-I/O connection core: timers with explicit ``now``, framing, bad input.

``test_fsm.py`` checks each cell of Table 9-10 once; this module checks what
the core adds around the table: the three timers (ARTIM, ACSE timeout, idle
timeout) and ``next_deadline()``, the framing of PDUs out of a byte stream
split anywhere, and the answers to bytes that are not a valid PDU.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dimsekit.errors import RemoteProtocolError
from dimsekit.testing import accept_all, verification_rq
from dimsekit.ul import outputs as out
from dimsekit.ul.connection import Timeouts, UpperLayer
from dimsekit.ul.fsm import State
from dimsekit.ul.pdu import (
    Abort,
    AssociateRJ,
    PDataTF,
    PresentationDataValue,
    ReleaseRP,
    ReleaseRQ,
    decode,
)

ARTIM, ACSE, IDLE = 30.0, 25.0, 70.0
TIMEOUTS = Timeouts(artim=ARTIM, acse=ACSE, idle=IDLE)

RQ = verification_rq("SCP", "SCU")
AC = accept_all(RQ)
RJ = AssociateRJ(result=2, source=3, reason=1)  # transient, presentation, temporary congestion


def pdata(payload: bytes, control: int = 0x02) -> PDataTF:
    return PDataTF(pdvs=(PresentationDataValue(context_id=1, control=control, data=payload),))


PDATA_1 = pdata(b"\x01" * 40, control=0x03)
PDATA_2 = pdata(bytes(range(100)))


def pdus_of(outputs: list[out.Output]) -> list[object]:
    """The PDUs every Transmit output decodes to, in order."""
    pdus: list[object] = []
    for item in outputs:
        if isinstance(item, out.Transmit):
            data = item.data
            while data:
                decoded = decode(data)
                assert decoded is not None
                pdus.append(decoded[0])
                data = data[decoded[1] :]
    return pdus


def kinds(outputs: list[out.Output]) -> list[type]:
    return [type(o) for o in outputs]


def merged(outputs: list[out.Output]) -> list[out.Output]:
    """``outputs`` with each run of P-DATA indications folded into one: how
    the PDV items of consecutive P-DATA-TF PDUs are grouped into indications
    follows how the bytes were read; the items and their order do not."""
    folded: list[out.Output] = []
    for output in outputs:
        if type(output) is out.PDataIndication and folded and type(folded[-1]) is out.PDataIndication:
            before = folded[-1].pdu.pdvs  # type: ignore[union-attr]
            folded[-1] = out.PDataIndication(PDataTF(before + output.pdu.pdvs))
        else:
            folded.append(output)
    return folded


def acceptor(now: float = 0.0, **kwargs: object) -> UpperLayer:
    """An acceptor that has just accepted a transport connection (Sta2)."""
    ul = UpperLayer(timeouts=TIMEOUTS, **kwargs)  # type: ignore[arg-type]
    assert ul.transport_accepted(now) == []
    return ul


def requestor(now: float = 0.0, timeouts: Timeouts = TIMEOUTS) -> UpperLayer:
    """A requestor whose A-ASSOCIATE-RQ has just been sent (Sta5)."""
    ul = UpperLayer(timeouts=timeouts)
    assert ul.request_association(RQ, now) == [out.OpenTransport()]
    assert pdus_of(ul.transport_connected(now)) == [RQ]
    return ul


def established_requestor(now: float = 0.0, timeouts: Timeouts = TIMEOUTS) -> UpperLayer:
    ul = requestor(now, timeouts)
    assert ul.receive_data(AC.encode(), now) == [out.AssociateAccepted(AC)]
    assert ul.state == State.STA6
    return ul


def established_acceptor(now: float = 0.0) -> UpperLayer:
    ul = acceptor(now)
    ul.receive_data(RQ.encode(), now)
    ul.accept(AC, now)
    assert ul.state == State.STA6
    return ul


def provider_abort_reason(outputs: list[out.Output]) -> str:
    [indication] = [o for o in outputs if isinstance(o, out.ProviderAbortIndication)]
    return indication.reason


# -- ARTIM (PS3.8 9.1.5) ---------------------------------------------------------------


def test_artim_on_a_fresh_connection_closes_it() -> None:
    ul = acceptor(now=100.0)
    assert ul.state == State.STA2
    assert ul.next_deadline() == 100.0 + ARTIM
    assert ul.handle_timer(129.999) == []
    assert ul.state == State.STA2
    assert ul.handle_timer(130.0) == [out.CloseTransport()]
    assert ul.state == State.STA1
    assert ul.next_deadline() is None
    assert ul.handle_timer(1000.0) == []  # a late timer finds nothing to do


def test_artim_is_stopped_by_the_associate_request() -> None:
    ul = acceptor(now=0.0)
    ul.receive_data(RQ.encode(), 5.0)
    assert ul.state == State.STA3
    assert ul.next_deadline() is None
    assert ul.handle_timer(1000.0) == []
    assert ul.state == State.STA3


def test_artim_after_sending_associate_rj() -> None:
    ul = acceptor(now=0.0)
    ul.receive_data(RQ.encode(), 1.0)
    outputs = ul.reject(RJ, 2.0)
    assert pdus_of(outputs) == [RJ]
    assert ul.state == State.STA13
    assert ul.next_deadline() == 2.0 + ARTIM
    assert ul.handle_timer(31.9) == []
    assert ul.handle_timer(32.0) == [out.CloseTransport()]
    assert ul.state == State.STA1
    assert ul.next_deadline() is None


def test_peer_closing_in_sta13_stops_artim() -> None:
    ul = acceptor(now=0.0)
    ul.receive_data(RQ.encode(), 1.0)
    ul.reject(RJ, 2.0)
    assert ul.transport_closed(10.0) == []  # AR-5: no CloseTransport, it is closed
    assert ul.state == State.STA1
    assert ul.next_deadline() is None


def test_artim_restarts_on_a_second_abort_in_sta13() -> None:
    """AA-1 "start (or restart)": a garbage PDU in Sta2 starts ARTIM anew."""
    ul = acceptor(now=0.0)
    ul.receive_data(b"\x99\x00\x00\x00\x00\x00", 20.0)
    assert ul.state == State.STA13
    assert ul.next_deadline() == 20.0 + ARTIM


# -- ACSE timeout ----------------------------------------------------------------------


def test_acse_timeout_waiting_for_associate_ac() -> None:
    ul = requestor(now=1.0)
    assert ul.state == State.STA5
    assert ul.next_deadline() == 1.0 + ACSE
    assert ul.handle_timer(25.9) == []
    outputs = ul.handle_timer(26.0)
    assert pdus_of(outputs) == [Abort(source=0, reason=0)]  # our A-ABORT request (Evt15)
    assert kinds(outputs) == [out.Transmit, out.ProviderAbortIndication]
    reason = provider_abort_reason(outputs)
    assert "A-ASSOCIATE-AC" in reason and "25 s" in reason
    assert ul.state == State.STA13
    assert ul.next_deadline() == 26.0 + ARTIM
    assert ul.handle_timer(56.0) == [out.CloseTransport()]
    assert ul.state == State.STA1


def test_acse_timeout_waiting_for_release_rp() -> None:
    ul = established_requestor(now=0.0)
    assert pdus_of(ul.release(10.0)) == [ReleaseRQ()]
    assert ul.state == State.STA7
    assert ul.next_deadline() == 10.0 + ACSE
    # P-DATA still arriving (AR-6) does not move the deadline.
    assert ul.receive_data(PDATA_1.encode(), 20.0) == [out.PDataIndication(PDATA_1)]
    assert ul.next_deadline() == 10.0 + ACSE
    assert ul.handle_timer(34.9) == []
    outputs = ul.handle_timer(35.0)
    assert pdus_of(outputs) == [Abort(source=0, reason=0)]
    assert "A-RELEASE-RP" in provider_abort_reason(outputs)
    assert ul.state == State.STA13
    assert ul.next_deadline() == 35.0 + ARTIM


def test_acse_timeout_stops_when_the_answer_arrives() -> None:
    ul = requestor(now=0.0)
    ul.receive_data(AC.encode(), 24.0)
    assert ul.state == State.STA6
    assert ul.next_deadline() == 24.0 + IDLE  # the idle timer, not the ACSE one
    assert ul.handle_timer(25.0) == []


def test_acse_timeout_in_release_collision() -> None:
    """Sta9 (our release response is due) has no ACSE timer; Sta11 (waiting
    for the peer's A-RELEASE-RP after ours) starts one."""
    ul = established_requestor(now=0.0)
    ul.release(1.0)
    ul.receive_data(ReleaseRQ().encode(), 2.0)
    assert ul.state == State.STA9
    assert ul.next_deadline() is None
    ul.release_response(3.0)
    assert ul.state == State.STA11
    assert ul.next_deadline() == 3.0 + ACSE
    outputs = ul.handle_timer(3.0 + ACSE)
    assert "A-RELEASE-RP" in provider_abort_reason(outputs)
    assert ul.state == State.STA13


def test_acse_timeout_disabled() -> None:
    ul = requestor(now=0.0, timeouts=Timeouts(artim=ARTIM, acse=None, idle=IDLE))
    assert ul.next_deadline() is None
    assert ul.handle_timer(1e9) == []
    assert ul.state == State.STA5


# -- idle timeout ----------------------------------------------------------------------


def test_idle_timeout_reset_by_activity() -> None:
    ul = established_requestor(now=0.0)
    assert ul.next_deadline() == IDLE
    ul.receive_data(PDATA_1.encode(), 50.0)  # received: activity
    assert ul.next_deadline() == 50.0 + IDLE
    ul.send_pdata(PDATA_2.encode(), 100.0)  # sent: activity
    assert ul.next_deadline() == 100.0 + IDLE
    assert ul.handle_timer(169.9) == []
    assert ul.state == State.STA6
    outputs = ul.handle_timer(170.0)
    assert pdus_of(outputs) == [Abort(source=0, reason=0)]
    assert "idle" in provider_abort_reason(outputs)
    assert ul.state == State.STA13
    assert ul.next_deadline() == 170.0 + ARTIM


def test_idle_timeout_on_the_acceptor() -> None:
    ul = established_acceptor(now=5.0)
    assert ul.next_deadline() == 5.0 + IDLE
    assert "idle" in provider_abort_reason(ul.handle_timer(5.0 + IDLE))


def test_idle_timeout_waits_while_the_user_is_busy() -> None:
    # A quiet wire with work in progress (a request being performed, a
    # response awaited) is not an idle association: the deadline moves on.
    ul = established_acceptor(now=0.0)
    assert ul.handle_timer(IDLE, busy=True) == []
    assert ul.state == State.STA6
    assert ul.next_deadline() == 2 * IDLE
    assert "idle" in provider_abort_reason(ul.handle_timer(2 * IDLE))


def test_idle_timeout_disabled() -> None:
    ul = established_requestor(now=0.0, timeouts=Timeouts(artim=ARTIM, acse=ACSE, idle=None))
    assert ul.next_deadline() is None
    assert ul.handle_timer(1e9) == []
    assert ul.state == State.STA6


def test_next_deadline_through_a_whole_association() -> None:
    ul = UpperLayer(timeouts=TIMEOUTS)
    assert ul.next_deadline() is None  # Sta1
    ul.request_association(RQ, 0.0)
    assert ul.next_deadline() is None  # Sta4: the transport's connect timeout is the adapter's
    ul.transport_connected(1.0)
    assert ul.next_deadline() == 1.0 + ACSE  # Sta5
    ul.receive_data(AC.encode(), 2.0)
    assert ul.next_deadline() == 2.0 + IDLE  # Sta6
    ul.receive_data(ReleaseRQ().encode(), 3.0)
    assert ul.state == State.STA8
    assert ul.next_deadline() is None  # Sta8: our response is due
    ul.release_response(4.0)
    assert ul.state == State.STA13
    assert ul.next_deadline() == 4.0 + ARTIM  # AR-4
    ul.transport_closed(5.0)
    assert ul.next_deadline() is None


# -- framing -------------------------------------------------------------------------------

#: What the requestor receives after its A-ASSOCIATE-RQ went out: the AC, two
#: P-DATA-TF and the peer's A-RELEASE-RQ -- no local primitive needed between them.
REQUESTOR_STREAM = AC.encode() + PDATA_1.encode() + PDATA_2.encode() + ReleaseRQ().encode()
#: The same with an invalid PDU before the release: everything after it is discarded.
INVALID_STREAM = (
    AC.encode() + PDATA_1.encode() + b"\x99\x00\x00\x00\x00\x02\xab\xcd" + ReleaseRQ().encode()
)


def feed(chunks: list[bytes], stream_start: float = 1.0) -> tuple[list[out.Output], UpperLayer]:
    ul = requestor(now=0.0)
    outputs: list[out.Output] = []
    for chunk in chunks:
        outputs += ul.receive_data(chunk, stream_start)
    return outputs, ul


def reference(stream: bytes) -> tuple[list[out.Output], State]:
    """The outputs when each PDU arrives whole, in its own call."""
    pieces = []
    pos = 0
    while pos < len(stream):
        try:
            decoded = decode(stream[pos:])
        except Exception:
            pieces.append(stream[pos:])
            break
        assert decoded is not None
        pieces.append(stream[pos : pos + decoded[1]])
        pos += decoded[1]
    outputs, ul = feed(pieces)
    return outputs, ul.state


def split_at(data: bytes, points: list[int]) -> list[bytes]:
    edges = [0, *sorted(set(points)), len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:], strict=False) if a < b]


@pytest.mark.parametrize("stream", [REQUESTOR_STREAM, INVALID_STREAM], ids=["valid", "invalid"])
def test_reference_outputs(stream: bytes) -> None:
    outputs, state = reference(stream)
    assert kinds(outputs)[:2] == [out.AssociateAccepted, out.PDataIndication]
    if stream is REQUESTOR_STREAM:
        assert outputs[2:] == [out.PDataIndication(PDATA_2), out.ReleaseIndication(collision=False)]
        assert state == State.STA8
    else:
        assert pdus_of(outputs) == [Abort(source=2, reason=1)]
        assert state == State.STA13


@pytest.mark.parametrize("stream", [REQUESTOR_STREAM, INVALID_STREAM], ids=["valid", "invalid"])
def test_all_in_one_chunk(stream: bytes) -> None:
    expected, state = reference(stream)
    outputs, ul = feed([stream])
    assert merged(outputs) == merged(expected)
    assert ul.state == state


@pytest.mark.parametrize("stream", [REQUESTOR_STREAM, INVALID_STREAM], ids=["valid", "invalid"])
def test_one_byte_at_a_time(stream: bytes) -> None:
    expected, state = reference(stream)
    outputs, ul = feed([stream[i : i + 1] for i in range(len(stream))])
    assert merged(outputs) == merged(expected)
    assert ul.state == state
    assert not ul._buffer


@pytest.mark.parametrize("stream", [REQUESTOR_STREAM, INVALID_STREAM], ids=["valid", "invalid"])
def test_split_at_every_boundary(stream: bytes) -> None:
    expected, state = reference(stream)
    for i in range(1, len(stream)):
        outputs, ul = feed([stream[:i], stream[i:]])
        assert merged(outputs) == merged(expected), f"split at {i}"
        assert ul.state == state


@settings(max_examples=150, deadline=None)
@given(
    stream=st.sampled_from([REQUESTOR_STREAM, INVALID_STREAM]),
    points=st.lists(st.integers(min_value=1, max_value=len(INVALID_STREAM)), max_size=12),
)
def test_split_anywhere(stream: bytes, points: list[int]) -> None:
    expected, state = reference(stream)
    outputs, ul = feed(split_at(stream, [p for p in points if p < len(stream)]))
    assert merged(outputs) == merged(expected)
    assert ul.state == state


@settings(max_examples=50, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=3000), min_size=1, max_size=4),
    points=st.lists(st.integers(min_value=1, max_value=20000), max_size=10),
)
def test_large_pdata_split_anywhere(sizes: list[int], points: list[int]) -> None:
    """Several P-DATA-TF of random sizes, cut at random points: their PDV
    items indicated in order, the payloads intact."""
    ul = established_requestor(now=0.0)
    pdus = [pdata(bytes([n % 251]) * size) for n, size in enumerate(sizes)]
    stream = b"".join(p.encode() for p in pdus)
    outputs: list[out.Output] = []
    for chunk in split_at(stream, [p for p in points if p < len(stream)]):
        outputs += ul.receive_data(chunk, 1.0)
    assert merged(outputs) == merged([out.PDataIndication(p) for p in pdus])
    assert ul.state == State.STA6
    assert not ul._buffer


def test_pdata_of_one_read_in_one_indication() -> None:
    """The P-DATA-TF PDUs of one read go up as one indication carrying all
    their PDV items in order (a data set streaming in: ~60 PDUs a read); a
    PDU of another kind ends the run and is indicated after it."""
    ul = established_requestor(now=0.0)
    pdus = [pdata(bytes([n]) * (10 + n), control=0x00 if n < 4 else 0x02) for n in range(5)]
    outputs = ul.receive_data(b"".join(p.encode() for p in pdus), 1.0)
    assert outputs == [out.PDataIndication(PDataTF(tuple(v for p in pdus for v in p.pdvs)))]
    outputs = ul.receive_data(pdus[0].encode() + pdus[1].encode() + ReleaseRQ().encode(), 2.0)
    assert outputs == [
        out.PDataIndication(PDataTF(pdus[0].pdvs + pdus[1].pdvs)),
        out.ReleaseIndication(collision=False),
    ]
    assert ul.state == State.STA8


def test_invalid_pdata_after_valid_ones_in_one_read() -> None:
    """A P-DATA-TF whose second PDV item overruns the PDU, after two valid
    ones in the same read: the valid ones' items are indicated, none of the
    invalid one's, then the abort (invalid PDU parameter)."""
    ul = established_requestor(now=0.0)
    good = [pdata(b"a" * 20, control=0x00), pdata(b"b" * 20, control=0x00)]
    first_item = (12).to_bytes(4, "big") + b"\x01\x00" + b"c" * 10
    lying_item = (400).to_bytes(4, "big") + b"\x01\x02" + b"d" * 10
    body = first_item + lying_item
    bad = b"\x04\x00" + len(body).to_bytes(4, "big") + body
    outputs = ul.receive_data(b"".join(p.encode() for p in good) + bad + ReleaseRQ().encode(), 1.0)
    assert outputs[0] == out.PDataIndication(PDataTF(good[0].pdvs + good[1].pdvs))
    assert pdus_of(outputs[1:]) == [Abort(source=2, reason=6)]
    assert ul.state == State.STA13


def test_pdata_above_our_maximum_length_after_valid_ones() -> None:
    ul = UpperLayer(maximum_length=64, timeouts=TIMEOUTS)
    ul.request_association(RQ, 0.0)
    ul.transport_connected(0.0)
    ul.receive_data(AC.encode(), 0.0)
    outputs = ul.receive_data(pdata(b"x" * 58).encode() + pdata(b"y" * 59).encode(), 1.0)
    assert outputs[0] == out.PDataIndication(pdata(b"x" * 58))
    assert pdus_of(outputs[1:]) == [Abort(source=2, reason=6)]


def test_several_pdus_in_one_chunk_on_the_acceptor() -> None:
    """A requestor that pipelines P-DATA behind its A-ASSOCIATE-RQ, before our
    answer: the RQ is indicated, then the P-DATA is unexpected in Sta3 (AA-8)."""
    ul = acceptor(now=0.0)
    outputs = ul.receive_data(RQ.encode() + PDATA_1.encode(), 1.0)
    assert kinds(outputs) == [out.AssociateIndication, out.Transmit, out.ProviderAbortIndication]
    assert pdus_of(outputs) == [Abort(source=2, reason=2)]
    assert ul.state == State.STA13


def test_bytes_after_the_peer_aborted_are_ignored() -> None:
    ul = established_requestor(now=0.0)
    outputs = ul.receive_data(Abort(source=0, reason=0).encode() + PDATA_1.encode(), 1.0)
    assert outputs == [out.AbortIndication(source=0, reason=0), out.CloseTransport()]
    assert ul.state == State.STA1
    assert ul.receive_data(PDATA_2.encode(), 2.0) == []


# -- bad input --------------------------------------------------------------------------------


def test_garbage_on_a_fresh_connection() -> None:
    """Something that is not DICOM (an HTTP request) on the DICOM port: an
    A-ABORT (service-provider, unrecognized PDU) and ARTIM, then the close."""
    ul = acceptor(now=0.0)
    outputs = ul.receive_data(b"GET / HTTP/1.1\r\nHost: pacs\r\n\r\n", 3.0)
    assert pdus_of(outputs) == [Abort(source=2, reason=1)]
    assert kinds(outputs) == [out.Transmit, out.ProviderAbortIndication]
    assert ul.state == State.STA13
    assert ul.next_deadline() == 3.0 + ARTIM
    assert ul.handle_timer(3.0 + ARTIM) == [out.CloseTransport()]
    assert ul.state == State.STA1


@pytest.mark.parametrize("pdu_type", [0x01, 0x04, 0x05, 0x07])
def test_huge_length_aborts_after_six_bytes_on_a_fresh_connection(pdu_type: int) -> None:
    ul = acceptor(now=0.0)
    header = bytes([pdu_type, 0]) + (0xFFFFFFF0).to_bytes(4, "big")
    for i in range(5):
        assert ul.receive_data(header[i : i + 1], 1.0) == []
    outputs = ul.receive_data(header[5:], 1.0)
    assert pdus_of(outputs) == [Abort(source=2, reason=6)]
    assert ul.state == State.STA13


def test_huge_pdata_length_aborts_after_six_bytes_when_established() -> None:
    ul = established_acceptor(now=0.0)
    header = b"\x04\x00\xff\xff\xff\xf0"
    assert ul.receive_data(header[:5], 1.0) == []
    outputs = ul.receive_data(header[5:] + b"\x00" * 100, 1.0)
    assert pdus_of(outputs) == [Abort(source=2, reason=6)]
    assert kinds(outputs) == [out.Transmit, out.ProviderAbortIndication]
    assert ul.state == State.STA13
    assert ul.next_deadline() == 1.0 + ARTIM


def test_pdata_before_the_association() -> None:
    ul = acceptor(now=0.0)
    outputs = ul.receive_data(PDATA_1.encode(), 4.0)
    assert pdus_of(outputs) == [Abort(source=2, reason=2)]  # unexpected PDU
    assert kinds(outputs) == [out.Transmit, out.ProviderAbortIndication]
    assert ul.state == State.STA13
    assert ul.next_deadline() == 4.0 + ARTIM


def test_second_associate_request_on_an_association() -> None:
    ul = established_acceptor(now=0.0)
    outputs = ul.receive_data(RQ.encode(), 1.0)
    assert pdus_of(outputs) == [Abort(source=2, reason=2)]
    assert kinds(outputs) == [out.Transmit, out.ProviderAbortIndication]
    assert "A-ASSOCIATE-RQ" in provider_abort_reason(outputs)
    assert ul.state == State.STA13
    assert ul.next_deadline() == 1.0 + ARTIM


def test_data_after_an_invalid_pdu_is_discarded() -> None:
    ul = established_requestor(now=0.0)
    outputs = ul.receive_data(b"\x99\x00\x00\x00\x00\x00" + Abort().encode(), 1.0)
    assert pdus_of(outputs) == [Abort(source=2, reason=1)]
    assert kinds(outputs) == [out.Transmit, out.ProviderAbortIndication]
    # A valid A-ABORT would be AA-2 in Sta13; framing is lost, so it is not seen.
    assert ul.receive_data(Abort().encode(), 2.0) == []
    assert ul.receive_data(ReleaseRP().encode(), 2.0) == []
    assert ul.state == State.STA13
    assert ul.transport_closed(3.0) == []
    assert ul.state == State.STA1


def test_malformed_pdv_is_an_invalid_pdu() -> None:
    ul = established_requestor(now=0.0)
    # P-DATA-TF of length 6 holding a PDV item claiming 200 bytes.
    bad = b"\x04\x00\x00\x00\x00\x06" + (200).to_bytes(4, "big") + b"\x01\x03"
    outputs = ul.receive_data(bad, 1.0)
    assert pdus_of(outputs) == [Abort(source=2, reason=6)]
    assert ul.state == State.STA13


def test_pdu_the_user_finds_invalid_is_aborted_by_the_provider() -> None:
    # An A-ASSOCIATE-AC that does not answer our request, found out by the
    # user above the core: Evt19 (AA-8), an A-ABORT with the service-provider
    # source and the error's reason -- not the user's A-ABORT (source 0).
    ul = established_requestor(now=0.0)
    error = RemoteProtocolError("context 3 never proposed", abort_source=2, abort_reason=6)
    outputs = ul.invalid_pdu(error, 1.0)
    assert pdus_of(outputs) == [Abort(source=2, reason=6)]
    assert kinds(outputs) == [out.Transmit, out.ProviderAbortIndication]
    assert "context 3 never proposed" in provider_abort_reason(outputs)
    assert ul.state == State.STA13
    assert ul.next_deadline() == 1.0 + ARTIM


def test_pdata_above_our_maximum_length() -> None:
    ul = UpperLayer(maximum_length=64, timeouts=TIMEOUTS)
    ul.request_association(RQ, 0.0)
    ul.transport_connected(0.0)
    ul.receive_data(AC.encode(), 0.0)
    assert ul.receive_data(pdata(b"x" * 58).encode(), 1.0) == [
        out.PDataIndication(pdata(b"x" * 58))
    ]
    outputs = ul.receive_data(pdata(b"x" * 59).encode(), 1.0)
    assert pdus_of(outputs) == [Abort(source=2, reason=6)]


def test_bytes_before_any_connection_are_ignored() -> None:
    ul = UpperLayer(timeouts=TIMEOUTS)
    assert ul.receive_data(b"\x99" * 20, 0.0) == []
    assert ul.state == State.STA1


def test_pdata_fragments_arrive_as_views_of_the_read_and_cut_ones_as_copies() -> None:
    """A P-DATA-TF wholly inside a read: its PDV data is a view of that read
    (no copy); one cut by the end of a read is gathered, and handed on as
    bytes that do not change when the buffer is reused."""
    from dimsekit.ul.pdu import encode_pdata

    ul = established_acceptor()
    first = encode_pdata([(1, 0x00, b"a" * 1000)])
    second = encode_pdata([(1, 0x02, b"b" * 1000)])
    chunk = first + second[:500]
    outputs = ul.receive_data(chunk, 1.0)
    (indication,) = outputs
    data = indication.pdu.pdvs[0].data
    assert type(data) is memoryview and data.obj is chunk and data == b"a" * 1000
    (indication,) = ul.receive_data(second[500:] + encode_pdata([(1, 0x03, b"c" * 10)])[:3], 2.0)
    data = indication.pdu.pdvs[0].data
    assert type(data) is bytes and data == b"b" * 1000
    ul.receive_data(encode_pdata([(1, 0x03, b"c" * 10)])[3:], 3.0)
    assert data == b"b" * 1000
