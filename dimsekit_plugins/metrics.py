"""Metrics for Prometheus: associations, requests answered and sent, bytes stored, free space.

Off unless configured; it needs the ``prometheus_client`` package
(``pip install 'dimsekit[metrics]'``):

.. code-block:: toml

    [plugins.metrics]
    port = 9464                  # serve http://<interface>:9464/metrics; 0 (the default): no metrics
    interface = "127.0.0.1"      # "" = every interface (the page has no access control)

What the page holds (Prometheus' text format, or OpenMetrics when the scraper
asks for it, made by ``prometheus_client``):

* ``dimsekit_associations_active{role}`` -- established associations, now
  (``role``: ``acceptor`` for those peers asked for, ``requestor`` for the
  node's own: C-MOVE sub-operations, storage commitment reports);
  ``dimsekit_associations_limit``: ``[limits] max_associations``.
* ``dimsekit_associations_active_by_peer{role, peer_ae}`` -- the same, by
  peer AE title (only titles with an association now);
  ``dimsekit_associations_per_ae_limit``: ``[limits] max_associations_per_ae``
  (0: none) -- a device near it is about to be refused.
* ``dimsekit_associations_total{role, peer_ae, outcome}`` -- associations
  that ended, by how: ``released``, ``aborted`` (A-ABORT, a timeout, the
  connection lost while established), ``rejected`` (A-ASSOCIATE-RJ either
  way), ``failed`` (the connection ended before any association: a TLS
  handshake that failed, the ARTIM timer, a port scan).  ``peer_ae`` is the
  peer's AE title (the calling AE of an acceptor, the called AE of a
  requestor), empty when the peer never said.
* ``dimsekit_requests_answered_total{peer_ae, command, status}`` -- the
  requests the node answered (C-STORE, C-FIND, N-ACTION...), by the status
  class of the final response: ``success``, ``warning``, ``failure``,
  ``cancel``; the associations still going included, as they stand at the
  scrape.  ``dimsekit_requests_sent_total`` counts the node's own requests
  the same way, by the final response it got: the C-STOREs of a C-GET or a
  C-MOVE (a destination refusing them shows here), storage commitment
  reports.
* ``dimsekit_stored_bytes_total{peer_ae}`` -- the size of the instances
  stored (their Part 10 files), by the AE that sent them.
* ``dimsekit_data_dir_free_bytes``, ``dimsekit_data_dir_min_free_bytes`` --
  the free space of ``[node] data_dir`` and the floor below which C-STOREs
  are refused (``[plugins.storage] min_free_mb``): alert before they meet.
* ``dimsekit_build_info{version}``, and the process's own (``process_*``:
  CPU, resident memory, open files) from ``prometheus_client``.

Counting costs next to nothing per request: the page is made when it is
asked for, from the tallies every association keeps for its log line (a
stored instance adds its size to a counter).  A peer AE title is a label
value; past :data:`MAX_PEERS` distinct titles (a scanner trying titles at
random) the others are counted under ``peer_ae="_other"``.  The page is made
in the reactor thread (a ``statvfs`` and a read of ``/proc/self``, no more);
nothing but ``/metrics`` is served, and scrapes are not logged.
"""

from __future__ import annotations

import shutil
import weakref
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.logger import Logger

import dimsekit
from dimsekit.config import Config, ConfigError
from dimsekit.hookspecs import hookimpl
from dimsekit.scp import COMMAND_NAMES

__all__ = ["MetricsSettings", "MAX_PEERS", "Tallies", "metrics_site", "stop"]

_log = Logger(namespace="dimsekit.metrics")

#: distinct peer AE titles kept as label values; the rest are "_other"
MAX_PEERS = 100
_OTHER = "_other"
_KEYS = ("port", "interface")
#: ScpRunner.handled's slots after the total: warnings, failures, cancels
_STATUS_SLOTS = ((1, "warning"), (2, "failure"), (3, "cancel"))


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """``[plugins.metrics]``."""

    port: int = 0
    interface: str = "127.0.0.1"

    @classmethod
    def from_config(cls, config: Config) -> MetricsSettings:
        section = config.plugins.get("metrics", {})
        if not isinstance(section, Mapping):
            raise ConfigError("plugins.metrics: write it as a [plugins.metrics] table")
        unknown = sorted(set(section) - set(_KEYS))
        if unknown:
            raise ConfigError(f"plugins.metrics.{unknown[0]}: unknown key; the keys are: {', '.join(_KEYS)}")
        port = section.get("port", 0)
        if type(port) is not int or not 0 <= port <= 65535:
            raise ConfigError(f"plugins.metrics.port: {port!r} is not a TCP port (1-65535; 0 = no metrics)")
        interface = section.get("interface", "127.0.0.1")
        if not isinstance(interface, str):
            raise ConfigError(f"plugins.metrics.interface: expected an address as a string, got {interface!r}")
        settings = cls(port=port, interface=interface)
        if settings.port:
            _prometheus()  # installed? said at start-up, not at the first scrape
        return settings


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise ConfigError(
            "plugins.metrics.port: the metrics need the prometheus_client package: "
            "pip install 'dimsekit[metrics]' (or set port = 0)"
        ) from None
    return prometheus_client


def _role(association: Any) -> str:
    return "requestor" if association.is_requestor else "acceptor"


def _outcome(association: Any) -> str:
    ended = association.ended or ""
    if association.established:
        return "released" if ended.startswith("released") else "aborted"
    return "rejected" if ended.startswith("rejected") else "failed"


class Tallies:
    """What the page reports, kept between scrapes (reactor thread)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything counted."""
        #: established associations not yet ended (weakly: one that never ends is not kept)
        self.live: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()
        #: (role, peer_ae, outcome) -> associations ended
        self.associations: Counter[tuple[str, str, str]] = Counter()
        #: (peer_ae, command, status) -> requests answered / sent, by associations that ended
        self.answered: Counter[tuple[str, str, str]] = Counter()
        self.sent: Counter[tuple[str, str, str]] = Counter()
        #: peer_ae -> bytes of the instances it stored
        self.stored_bytes: Counter[str] = Counter()
        self._peers: set[str] = set()
        #: (data directory, its floor in bytes or None) of the nodes started
        self.data_dirs: dict[Path, float | None] = {}
        self.limit = 0
        self.per_ae_limit = 0

    def peer(self, association: Any) -> str:
        """The ``peer_ae`` label of an association (bounded: see :data:`MAX_PEERS`)."""
        rq = association.rq
        if rq is None:
            return ""
        return self.label(rq.called_ae_title if association.is_requestor else rq.calling_ae_title)

    def label(self, title: str) -> str:
        """The ``peer_ae`` label of an AE title (bounded: see :data:`MAX_PEERS`)."""
        title = title.strip()
        if title in self._peers:
            return title
        if len(self._peers) >= MAX_PEERS:
            return _OTHER
        self._peers.add(title)
        return title

    def established(self, association: Any) -> None:
        self.live[id(association)] = association

    def ended(self, association: Any) -> None:
        self.live.pop(id(association), None)
        peer = self.peer(association)
        self.associations[_role(association), peer, _outcome(association)] += 1
        self._add_requests(self.answered, peer, association.scp.handled)
        self._add_requests(self.sent, peer, association.requested)

    def stored(self, instance: Any) -> None:
        self.stored_bytes[self.label(instance.source_ae or "")] += instance.size or 0

    @staticmethod
    def _add_requests(into: Counter[tuple[str, str, str]], peer: str, handled: dict[int, list[int]]) -> None:
        for field_, tally in handled.items():
            command = COMMAND_NAMES.get(int(field_), f"0x{int(field_):04X}")
            others = 0
            for slot, status in _STATUS_SLOTS:
                if tally[slot]:
                    into[peer, command, status] += tally[slot]
                    others += tally[slot]
            if tally[0] > others:
                into[peer, command, "success"] += tally[0] - others

    def requests_now(self) -> tuple[Counter[tuple[str, str, str]], Counter[tuple[str, str, str]]]:
        """Requests answered and sent so far, the live associations' included."""
        answered, sent = Counter(self.answered), Counter(self.sent)
        for association in self.live.values():
            peer = self.peer(association)
            self._add_requests(answered, peer, association.scp.handled)
            self._add_requests(sent, peer, association.requested)
        return answered, sent


class _Collector:
    """A ``prometheus_client`` collector reading :class:`Tallies` at each scrape."""

    def __init__(self, tallies: Tallies) -> None:
        self.tallies = tallies

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

        tallies = self.tallies
        yield InfoMetricFamily("dimsekit_build", "dimsekit's version", value={"version": dimsekit.__version__})
        active = GaugeMetricFamily("dimsekit_associations_active", "Established associations", labels=["role"])
        roles = Counter(_role(a) for a in tallies.live.values())
        for role in ("acceptor", "requestor"):
            active.add_metric([role], roles[role])
        yield active
        yield GaugeMetricFamily("dimsekit_associations_limit", "[limits] max_associations (acceptor side)",
                                value=tallies.limit)
        by_peer = GaugeMetricFamily("dimsekit_associations_active_by_peer",
                                    "Established associations, by peer AE title", labels=["role", "peer_ae"])
        for (role, peer), n in sorted(Counter((_role(a), tallies.peer(a)) for a in tallies.live.values()).items()):
            by_peer.add_metric([role, peer], n)
        yield by_peer
        yield GaugeMetricFamily("dimsekit_associations_per_ae_limit",
                                "[limits] max_associations_per_ae (acceptor side; 0: none)",
                                value=tallies.per_ae_limit)
        ended = CounterMetricFamily("dimsekit_associations", "Associations ended, by outcome",
                                    labels=["role", "peer_ae", "outcome"])
        for (role, peer, outcome), n in sorted(tallies.associations.items()):
            ended.add_metric([role, peer, outcome], n)
        yield ended
        answered, sent = tallies.requests_now()
        for name, counts in (("answered", answered), ("sent", sent)):
            family = CounterMetricFamily(f"dimsekit_requests_{name}",
                                         f"Requests {name}, by the final response's status class",
                                         labels=["peer_ae", "command", "status"])
            for (peer, command, status), n in sorted(counts.items()):
                family.add_metric([peer, command, status], n)
            yield family
        stored = CounterMetricFamily("dimsekit_stored_bytes", "Bytes of the instances stored, by sender",
                                     labels=["peer_ae"])
        for peer, n in sorted(tallies.stored_bytes.items()):
            stored.add_metric([peer], n)
        yield stored
        free = GaugeMetricFamily("dimsekit_data_dir_free_bytes", "Free space of the data directory",
                                 labels=["data_dir"])
        floor = GaugeMetricFamily("dimsekit_data_dir_min_free_bytes",
                                  "Below this much free space C-STOREs are refused", labels=["data_dir"])
        for root, minimum in tallies.data_dirs.items():
            existing = next((p for p in (root, *root.parents) if p.is_dir()), None)
            if existing is None:
                continue
            try:
                free.add_metric([str(root)], shutil.disk_usage(existing).free)
            except OSError:
                continue
            if minimum is not None:
                floor.add_metric([str(root)], minimum)
        yield free
        yield floor


#: what the page reports, for the whole process (the hooks count while a page is served)
_tallies = Tallies()
#: (interface, port) -> the listening port serving the page, one per process
_serving: dict[tuple[str, int], Any] = {}
_registry: Any = None


def _page_registry() -> Any:
    """The registry the page is made from: ours, and the process collector (made once)."""
    global _registry
    if _registry is None:
        prometheus_client = _prometheus()
        registry = prometheus_client.CollectorRegistry()
        registry.register(_Collector(_tallies))
        prometheus_client.ProcessCollector(registry=registry)
        _registry = registry
    return _registry


def metrics_site(registry: Any) -> Any:
    """A twisted.web Site serving ``registry`` at ``/metrics`` (made in the reactor thread)."""
    from prometheus_client.exposition import choose_encoder
    from twisted.web import pages, resource, server

    class Page(resource.Resource):
        isLeaf = True

        def render_GET(self, request: Any) -> bytes:
            # The format the scraper asks for: Prometheus' text, or OpenMetrics.
            accept = request.getHeader(b"accept")
            encode, content_type = choose_encoder(accept.decode("latin-1") if accept else "")
            request.setHeader(b"Content-Type", content_type.encode("latin-1"))
            return encode(registry)

    class QuietSite(server.Site):
        noisy = False  # no "Starting factory" lines
        displayTracebacks = False

        def log(self, request: Any) -> None:
            """No access log: a scrape every 15 s would bury the associations' lines."""

    class Root(resource.Resource):
        def getChild(self, path: bytes, request: Any) -> resource.IResource:
            return pages.notFound()

    root = Root()
    root.putChild(b"metrics", Page())
    return QuietSite(root)


def _serve(ae: Any, settings: MetricsSettings) -> None:
    key = (settings.interface, settings.port)
    if key in _serving:
        return
    reactor = ae.reactor
    try:
        port = reactor.listenTCP(settings.port, metrics_site(_page_registry()), interface=settings.interface)
    except Exception as exc:
        _log.error("metrics: cannot serve them on {interface}:{port}: {error}",
                   interface=settings.interface or "*", port=settings.port, error=exc)
        return
    _serving[key] = port
    reactor.addSystemEventTrigger("before", "shutdown", _stop, key)
    _log.info("metrics: http://{host}:{port}/metrics", host=settings.interface or "*", port=port.getHost().port)


def _stop(key: tuple[str, int]) -> Any:
    port = _serving.pop(key, None)
    return None if port is None else port.stopListening()


def stop() -> Any:
    """Stop serving the page and forget what was counted (an embedding application, tests);
    a Deferred firing once the ports are closed."""
    from twisted.internet import defer

    closing = [_stop(key) for key in list(_serving)]
    _tallies.reset()
    return defer.gatherResults([d for d in closing if d is not None])


@hookimpl
def dimsekit_configure(config: Config) -> None:
    """Check ``[plugins.metrics]`` (and that prometheus_client is there when a port is set)."""
    MetricsSettings.from_config(config)


@hookimpl
def dimsekit_on_node_started(ae: Any) -> None:
    """Serve the page, when a port is configured; note the node's data directory and limit."""
    settings = MetricsSettings.from_config(ae.config)
    if not settings.port:
        return
    from dimsekit_plugins.archive.settings import ArchiveSettings

    archive = ArchiveSettings.from_config(ae.config)
    _tallies.data_dirs[archive.root] = archive.min_free_mb * (1 << 20) if archive.min_free_mb > 0 else None
    _tallies.limit = max(_tallies.limit, ae.max_associations)
    _tallies.per_ae_limit = max(_tallies.per_ae_limit, ae.max_associations_per_ae)
    _serve(ae, settings)


@hookimpl
def dimsekit_on_association_established(association: Any) -> None:
    """Count it as active (while the page is served)."""
    if _serving:
        _tallies.established(association)


@hookimpl
def dimsekit_on_instance_stored(instance: Any) -> None:
    """Count its bytes (while the page is served)."""
    if _serving:
        _tallies.stored(instance)


@hookimpl
def dimsekit_on_association_ended(association: Any) -> None:
    """Count how it ended and the requests it answered (while the page is served)."""
    if _serving:
        _tallies.ended(association)
