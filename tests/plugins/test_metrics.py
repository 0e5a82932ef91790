"""The metrics plugin: its settings, its tallies, and its page served to dimsekit associations
over 127.0.0.1 (DCMTK and twistd: tests/interop/test_metrics.py)."""

from __future__ import annotations

import socket
import sys
import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import threads
from twisted.logger import formatEvent, globalLogPublisher

from dimsekit.config import Config, ConfigError, Limits, NodeConfig
from dimsekit.errors import AssociationRejected
from dimsekit.scp import COMMAND_NAMES
from dimsekit.uids import VERIFICATION
from dimsekit_plugins import metrics
from tests.dimse_e2e.support import CT, CT_FILE, LoopbackTestCase, Services, wait_until, within
from tests.interop.conftest import free_port


def settings(**section):
    return metrics.MetricsSettings.from_config(Config(plugins={"metrics": section}))


# -- settings -------------------------------------------------------------------------------


def test_off_unless_a_port_is_given():
    assert metrics.MetricsSettings.from_config(Config()) == metrics.MetricsSettings(port=0, interface="127.0.0.1")
    assert settings(port=9464, interface="") == metrics.MetricsSettings(port=9464, interface="")


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"port": "9464"}, "plugins.metrics.port: '9464' is not a TCP port"),
        ({"port": 70000}, "plugins.metrics.port: 70000 is not a TCP port"),
        ({"port": True}, "plugins.metrics.port: True is not a TCP port"),
        ({"interface": 127}, "plugins.metrics.interface: expected an address"),
        ({"prot": 9464}, "plugins.metrics.prot: unknown key; the keys are: port, interface"),
    ],
)
def test_a_wrong_setting_names_its_key(section, message):
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        settings(**section)


def test_not_a_table():
    with pytest.raises(ConfigError, match=r"write it as a \[plugins.metrics\] table"):
        metrics.MetricsSettings.from_config(Config(plugins={"metrics": 9464}))


def test_a_port_without_prometheus_client_stops_start_up(monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import fails
    assert settings(port=0).port == 0  # off: not needed
    with pytest.raises(ConfigError, match=r"pip install 'dimsekit\[metrics\]'"):
        settings(port=9464)


# -- tallies --------------------------------------------------------------------------------


class Ended(SimpleNamespace):
    """What the tallies read of an association (weakly referable, as an Association)."""


def association(calling: str | None, *, established: bool = True, ended: str = "released",
                handled: dict[int, list[int]] | None = None, requested: dict[int, list[int]] | None = None,
                requestor: bool = False) -> Ended:
    rq = None if calling is None else SimpleNamespace(calling_ae_title=calling.ljust(16), called_ae_title="PEER")
    return Ended(rq=rq, established=established, ended=ended, is_requestor=requestor,
                 scp=SimpleNamespace(handled=handled or {}), requested=requested or {})


def test_each_ending_has_its_outcome():
    tallies = metrics.Tallies()
    for a in (
        association("A"),
        association("A", ended="released by the peer"),
        association("A", ended="aborted by the peer (A-ABORT)"),
        association("A", ended="connection closed"),  # established, dropped without a release
        association("A", established=False, ended="rejected (1/1/7)"),
        association(None, established=False, ended="connection closed: TLS handshake failed"),
        association("B", requestor=True),
    ):
        tallies.ended(a)
    assert tallies.associations == {
        ("acceptor", "A", "released"): 2,
        ("acceptor", "A", "aborted"): 2,
        ("acceptor", "A", "rejected"): 1,
        ("acceptor", "", "failed"): 1,
        ("requestor", "PEER", "released"): 1,  # a requestor's peer is the AE it called
    }


def test_requests_by_status_class_live_ones_included():
    tallies = metrics.Tallies()
    store, echo, get = 0x0001, 0x0030, 0x0010
    tallies.ended(association("A", handled={store: [10, 2, 3, 1]}, requested={echo: [1, 0, 0, 0]}))
    live = association("A", handled={store: [4, 0, 1, 0], echo: [2, 0, 0, 0], get: [1, 1, 0, 0]},
                       requested={store: [5, 0, 2, 0]})
    tallies.established(live)
    answered, sent = tallies.requests_now()
    assert answered == {
        ("A", "C-STORE", "success"): 4 + 3,
        ("A", "C-STORE", "warning"): 2,
        ("A", "C-STORE", "failure"): 3 + 1,
        ("A", "C-STORE", "cancel"): 1,
        ("A", "C-ECHO", "success"): 2,
        ("A", "C-GET", "warning"): 1,
    }
    assert sent == {("A", "C-ECHO", "success"): 1, ("A", "C-STORE", "success"): 3, ("A", "C-STORE", "failure"): 2}
    live.scp.handled[store][0] += 1  # answered since: seen at the next scrape
    assert tallies.requests_now()[0]["A", "C-STORE", "success"] == 8
    tallies.ended(live)
    assert not tallies.live
    answered, sent = tallies.requests_now()
    assert answered["A", "C-STORE", "success"] == 8  # counted once, not twice
    assert sent["A", "C-STORE", "success"] == 3
    assert [COMMAND_NAMES[c] for c in (store, echo, get)] == ["C-STORE", "C-ECHO", "C-GET"]


def test_stored_bytes_by_sender():
    tallies = metrics.Tallies()
    for source, size in (("CT1 ", 100), ("CT1", 50), (None, 7), ("MR2", 1)):
        tallies.stored(SimpleNamespace(source_ae=source, size=size))
    assert tallies.stored_bytes == {"CT1": 150, "": 7, "MR2": 1}


def test_peer_titles_are_bounded():
    tallies = metrics.Tallies()
    for i in range(metrics.MAX_PEERS + 5):
        tallies.ended(association(f"SCAN{i}"))
    tallies.ended(association("SCAN0"))  # a title seen before keeps its label
    peers = {peer for _, peer, _ in tallies.associations}
    assert len(peers) == metrics.MAX_PEERS + 1
    assert tallies.associations["acceptor", "_other", "released"] == 5
    assert tallies.associations["acceptor", "SCAN0", "released"] == 2


def test_every_metric_the_docs_name_is_served():
    """The README's alert rules and the plugin's docstring name only metrics the page has."""
    import re
    from pathlib import Path

    served = set()
    for family in metrics._Collector(metrics.Tallies()).collect():
        suffix = {"counter": "_total", "info": "_info"}.get(family.type, "")
        served.add(family.name + suffix)
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    named = set(re.findall(r"\bdimsekit_(?:associations|requests|stored|data_dir|build)[a-z_]*", readme))
    named |= set(re.findall(r"\bdimsekit_(?:associations|requests|stored|data_dir|build)[a-z_]*", metrics.__doc__))
    assert {"dimsekit_data_dir_min_free_bytes", "dimsekit_requests_sent_total"} <= named  # the rules were read
    assert named <= served, named - served


# -- the page, dimsekit at both ends -----------------------------------------------------------


def families(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """name -> {sorted labels: value} of a metrics page."""
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


class MetricsPageTests(LoopbackTestCase):
    def setUp(self):
        super().setUp()
        self.addCleanup(metrics.stop)

    async def scrape(self, port: int, path: str = "/metrics", accept: str | None = None) -> tuple[int, bytes]:
        """GET the page (urllib, in a thread: the reactor serves it meanwhile); its status and body."""

        def get() -> tuple[int, bytes]:
            request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Accept": accept} if accept else {})
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    self.content_type = response.headers["Content-Type"]
                    return response.status, response.read()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read()

        return await within(threads.deferToThread(get))

    async def test_the_page_counts_what_the_node_did(self):
        page = free_port()
        services = Services()
        config = Config(node=NodeConfig(ae_title="SCP", check_called_ae=True),
                        limits=Limits(dimse_timeout=5.0, acse_timeout=5.0, max_associations=7,
                                      max_associations_per_ae=3),
                        plugins={"metrics": {"port": page}})
        ae, port = await self.serve(services, metrics, config=config)
        metrics.dimsekit_on_node_started(ae)  # what DicomNodeService does once listening

        released = await self.connect(port, [VERIFICATION, CT])
        self.assertEqual(await within(released.echo()), 0x0000)
        self.assertEqual((await within(released.store(CT_FILE))).status, 0x0000)
        services.store_status = 0xA700
        self.assertEqual((await within(released.store(CT_FILE))).status, 0xA700)
        await within(released.release())
        aborted = await self.connect(port, [VERIFICATION])
        aborted.abort("the test aborts")
        with self.assertRaises(AssociationRejected):
            await self.connect(port, [VERIFICATION], called="NOT-SCP")
        nothing = socket.create_connection(("127.0.0.1", port))  # no A-ASSOCIATE-RQ at all
        nothing.close()
        live = await self.connect(port, [VERIFICATION])
        self.assertEqual(await within(live.echo()), 0x0000)
        await wait_until(lambda: sum(metrics._tallies.associations.values()) == 4, what="four ended")

        code, body = await self.scrape(page)
        self.assertEqual(code, 200)
        self.assertTrue(self.content_type.startswith("text/plain; version="), self.content_type)
        found = families(body.decode())
        self.assertEqual(found["dimsekit_associations_total"], {
            (("outcome", "released"), ("peer_ae", "SCU"), ("role", "acceptor")): 1.0,
            (("outcome", "aborted"), ("peer_ae", "SCU"), ("role", "acceptor")): 1.0,
            (("outcome", "rejected"), ("peer_ae", "SCU"), ("role", "acceptor")): 1.0,
            (("outcome", "failed"), ("peer_ae", ""), ("role", "acceptor")): 1.0,
        })
        self.assertEqual(found["dimsekit_requests_answered_total"], {
            (("command", "C-ECHO"), ("peer_ae", "SCU"), ("status", "success")): 2.0,  # the live one's too
            (("command", "C-STORE"), ("peer_ae", "SCU"), ("status", "success")): 1.0,
            (("command", "C-STORE"), ("peer_ae", "SCU"), ("status", "failure")): 1.0,
        })
        self.assertEqual(found["dimsekit_associations_active"],
                         {(("role", "acceptor"),): 1.0, (("role", "requestor"),): 0.0})
        self.assertEqual(found["dimsekit_associations_limit"], {(): 7.0})
        self.assertEqual(found["dimsekit_associations_active_by_peer"],
                         {(("peer_ae", "SCU"), ("role", "acceptor")): 1.0})
        self.assertEqual(found["dimsekit_associations_per_ae_limit"], {(): 3.0})
        self.assertIn("process_resident_memory_bytes", found)
        (free,) = found["dimsekit_data_dir_free_bytes"].values()
        self.assertGreater(free, 0)
        self.assertEqual(list(found["dimsekit_data_dir_min_free_bytes"].values()), [100.0 * (1 << 20)])

        await within(live.release())
        await wait_until(lambda: not metrics._tallies.live, what="the live one ended")
        found = families((await self.scrape(page))[1].decode())
        self.assertEqual(found["dimsekit_associations_active"][(("role", "acceptor"),)], 0.0)
        self.assertNotIn("dimsekit_associations_active_by_peer", found)  # nobody associated now
        self.assertEqual(found["dimsekit_associations_total"][
            (("outcome", "released"), ("peer_ae", "SCU"), ("role", "acceptor"))], 2.0)
        self.assertEqual(found["dimsekit_requests_answered_total"][
            (("command", "C-ECHO"), ("peer_ae", "SCU"), ("status", "success"))], 2.0)
        self.assertEqual((await self.scrape(page, "/"))[0], 404)  # nothing else is served
        code, body = await self.scrape(page, accept="application/openmetrics-text; version=1.0.0")
        self.assertTrue(self.content_type.startswith("application/openmetrics-text"), self.content_type)
        self.assertTrue(body.endswith(b"# EOF\n"))
        self.assertIn(b'dimsekit_associations_total{outcome="released",peer_ae="SCU",role="acceptor"} 2.0', body)

    async def test_a_port_taken_is_said_and_the_node_goes_on(self):
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        self.addCleanup(taken.close)
        config = Config(node=NodeConfig(ae_title="SCP"), limits=Limits(dimse_timeout=5.0, acse_timeout=5.0),
                        plugins={"metrics": {"port": taken.getsockname()[1]}})
        ae, port = await self.serve(Services(), metrics, config=config)
        logged = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        metrics.dimsekit_on_node_started(ae)
        self.assertFalse(metrics._serving)
        errors = [e for e in logged if e.get("log_namespace") == "dimsekit.metrics"]
        self.assertEqual(len(errors), 1)
        self.assertIn(f"metrics: cannot serve them on 127.0.0.1:{taken.getsockname()[1]}: ", formatEvent(errors[0]))
        assoc = await self.connect(port, [VERIFICATION])
        self.assertEqual(await within(assoc.echo()), 0x0000)
        await within(assoc.release())

    async def test_nothing_is_counted_without_a_page(self):
        ae, port = await self.serve(Services(), metrics)
        metrics.dimsekit_on_node_started(ae)  # no port configured
        assoc = await self.connect(port, [VERIFICATION])
        await within(assoc.echo())
        await within(assoc.release())
        (served,) = ae.tracker.associations
        await wait_until(lambda: served.protocol is None, what="the connection gone")
        self.assertEqual(sum(metrics._tallies.associations.values()), 0)
        self.assertFalse(metrics._tallies.live)
