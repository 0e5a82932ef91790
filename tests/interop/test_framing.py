"""Framing: real peers talk to the node through a proxy that splits the byte
stream at random (seeded) boundaries, down to 1-byte sends, and coalesces
PDUs that travel close together into one send -- both directions."""

from __future__ import annotations

import pytest

from tests.interop.conftest import (
    DIMSEKIT_CLI,
    RELEASE_RP,
    RELEASE_RQ,
    RawPeer,
    SplittingProxy,
    echo_rq_command,
    echo_rsp_status,
    echoscu,
    pdata_pdu,
    run,
)
from tests.interop.test_pynetdicom import pynetdicom_scu

pytestmark = pytest.mark.interop

SEEDS = [1, 2, 3]


def check_split(proxy: SplittingProxy) -> None:
    assert proxy.connections >= 1
    assert 1 in proxy.chunk_sizes, "the proxy never sent a 1-byte chunk"
    assert sum(proxy.chunk_sizes) > 0


@pytest.mark.parametrize("seed", SEEDS)
def test_echoscu_through_splitting_proxy(shared_node, seed):
    with SplittingProxy(shared_node.port, seed) as proxy:
        result = echoscu(proxy.port, "--repeat", "3", "-v")
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        assert output.count("Received Echo Response (Success)") == 3, output
        check_split(proxy)
    shared_node.assert_healthy()


@pytest.mark.parametrize("seed", SEEDS)
def test_pynetdicom_through_splitting_proxy(shared_node, seed):
    with SplittingProxy(shared_node.port, seed) as proxy:
        assert pynetdicom_scu(proxy.port, calling=f"PYNSEED{seed}", echoes=3) == [0, 0, 0]
        check_split(proxy)
    assert "released" in shared_node.wait_log(rf"calling=PYNSEED{seed} ")
    shared_node.assert_healthy()


@pytest.mark.parametrize("seed", SEEDS)
def test_dimsekit_echo_through_splitting_proxy(shared_node, seed):
    with SplittingProxy(shared_node.port, seed) as proxy:
        result = run([*DIMSEKIT_CLI, "echo", "127.0.0.1", str(proxy.port), "-aec", "DIMSEKIT",
                      "--repeat", "3", "--timeout", "10"], timeout=30)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "3/3 Success" in result.stdout
        check_split(proxy)
    shared_node.assert_healthy()


@pytest.mark.parametrize("seed", SEEDS)
def test_coalesced_pdus_and_multi_pdv_pdus(shared_node, seed):
    """A C-ECHO-RQ command set in three PDV fragments over two P-DATA-TF PDUs
    (two PDVs in the first), sent back to back: the proxy coalesces the PDUs
    into one send (and, other times, splits them anywhere)."""
    command = echo_rq_command(message_id=1)
    with SplittingProxy(shared_node.port, seed) as proxy:
        with RawPeer.connect(proxy.port) as peer:
            peer.associate(calling=f"COALESCE{seed}")
            for message_id in range(1, 5):
                command = echo_rq_command(message_id)
                a, b = len(command) // 3, 2 * len(command) // 3
                peer.send(pdata_pdu((1, 0x01, command[:a]), (1, 0x01, command[a:b])))
                peer.send(pdata_pdu((1, 0x03, command[b:])))
                assert echo_rsp_status(peer.recv_pdu(), message_id) == 0x0000
            peer.send(RELEASE_RQ)
            assert peer.recv_pdu() == RELEASE_RP
        check_split(proxy)
        assert max(proxy.pdus_per_send) >= 2, "the proxy never coalesced two PDUs into one send"
    assert "released" in shared_node.wait_log(rf"calling=COALESCE{seed} ")
    shared_node.assert_healthy()
