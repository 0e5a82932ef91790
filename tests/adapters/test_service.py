"""DicomNodeService: the node as a twisted.application Service, on a fake reactor."""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from dimsekit.ae import ApplicationEntity
from dimsekit.hookspecs import hookimpl
from dimsekit.plugin import make_plugin_manager
from dimsekit.service import DicomNodeService


class Started:
    """Records dimsekit_on_node_started; raises when told to (a plugin's bug)."""

    def __init__(self, name, log, *, fail=False):
        self.name = name
        self.log = log
        self.fail = fail

    @hookimpl
    def dimsekit_on_node_started(self, ae):
        self.log.append((self.name, ae))
        if self.fail:
            raise RuntimeError(f"{self.name} could not start")


class NodeStartedTests(SynchronousTestCase):
    def test_every_plugin_hears_the_node_started_despite_one_that_raises(self):
        log = []
        # the archive's reconcile, say, registered first: pluggy calls it last
        pm = make_plugin_manager(
            load_entrypoints=False, plugins=[Started("archive", log), Started("broken", log, fail=True)]
        )
        reactor = MemoryReactorClock()
        ae = ApplicationEntity("NODE", plugin_manager=pm, reactor=reactor)
        node = DicomNodeService(ae, "tcp:0:interface=127.0.0.1")
        self.successResultOf(node.startService())
        self.assertEqual(len(reactor.tcpServers), 1)
        self.assertEqual(log, [("broken", ae), ("archive", ae)])
        self.assertEqual([str(f.value) for f in self.flushLoggedErrors(RuntimeError)], ["broken could not start"])
