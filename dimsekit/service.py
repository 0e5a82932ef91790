"""twisted.application services: a DICOM node as a Service.

:class:`DicomNodeService` listens on the node's port (any Twisted server
endpoint string: ``tcp:11112``, ``unix:/run/dicom.sock``; TLS is the
``[tls]`` listener's, ``tls_port``) with an :class:`~dimsekit.ae.ApplicationEntity`, and on stop closes the listener and
then releases (or, after a grace period, aborts) the associations in progress.
"""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.logger import Logger

from dimsekit.ae import ApplicationEntity
from dimsekit.plugin import notify

__all__ = ["DicomNodeService"]

_log = Logger(namespace="dimsekit.service")


class DicomNodeService(service.Service):
    """Listen for DICOM associations while running.

    :param ae: the application entity that answers.
    :param endpoint: a server endpoint description (``"tcp:11112:interface=127.0.0.1"``).
    :param grace: seconds to let running associations end on stop before aborting them.
    """

    name = "dimsekit"

    def __init__(
        self, ae: ApplicationEntity, endpoint: str, *, grace: float = 5.0, tls_port: int | None = None,
        tls_interface: str = "",
    ) -> None:
        self.ae = ae
        self.endpoint_description = endpoint
        self.grace = grace
        #: also listen for TLS (the AE's ``[tls]`` settings) on this port; None: not
        self.tls_port = tls_port
        self.tls_interface = tls_interface
        self.port: Any = None
        #: the TLS listener's port, when there is one
        self.tls_listening_port: Any = None

    @property
    def listening_on(self) -> str:
        """The listeners, described (for messages)."""
        if self.tls_port is None:
            return self.endpoint_description
        interface = f":interface={self.tls_interface}" if self.tls_interface else ""
        return f"{self.endpoint_description} and TLS port {self.tls_port}{interface}"

    def startService(self) -> defer.Deferred:  # type: ignore[override]
        super().startService()
        endpoint = endpoints.serverFromString(self.ae.reactor, self.endpoint_description)
        factory = self.ae.server_factory()
        waits = [endpoint.listen(factory)]
        if self.tls_port is not None:
            waits.append(self.ae.listen(self.tls_port, self.tls_interface, tls=True))
        d = defer.gatherResults(waits, consumeErrors=True)

        def listening(ports: list[Any]) -> None:
            self.port = ports[0]
            if len(ports) > 1:
                self.tls_listening_port = ports[1]
            address = self.port.getHost()
            tls = ""
            if self.tls_listening_port is not None:
                tls_address = self.tls_listening_port.getHost()
                tls = f" and for TLS on {tls_address.host}:{tls_address.port}"
            _log.info(
                "dimsekit node {aet} listening on {host}:{port}{tls} ({count} SOP classes: {names})",
                aet=self.ae.ae_title,
                host=address.host,
                port=address.port,
                tls=tls,
                count=len(self.ae.registry.supported),
                names=", ".join(sorted({s.name for s in self.ae.registry.service_classes})),
            )
            # one plugin failing here (logged) must not keep the archive from reconciling
            notify(self.ae.pm, self.ae.pm.hook.dimsekit_on_node_started, ae=self.ae)

        def not_listening(failure: Any) -> Any:
            # One listener failed: close the other(s), and fail with the first error itself.
            for result in waits:
                result.addCallback(lambda port: port and port.stopListening()).addErrback(lambda _: None)
            return failure.value.subFailure if isinstance(failure.value, defer.FirstError) else failure

        return d.addCallbacks(listening, not_listening)

    @defer.inlineCallbacks
    def stopService(self):  # type: ignore[override]
        super().stopService()
        for name in ("port", "tls_listening_port"):
            port = getattr(self, name)
            if port is not None:
                yield port.stopListening()
                setattr(self, name, None)
        ae = self.ae
        # The node's own associations (C-MOVE sub-operations, commitment
        # reports) end with it too: waited for, then aborted, like the peers'.
        def live() -> set[Any]:
            return ae.active | {a for a in ae.requested if a.protocol is not None and a.protocol.transport is not None}

        running = live()
        if running:
            _log.info("waiting up to {grace:g} s for {n} association(s) to end", grace=self.grace, n=len(running))
            deadline = ae.reactor.seconds() + self.grace
            while live() and ae.reactor.seconds() < deadline:
                yield _sleep(ae.reactor, 0.1)
            aborted = list(live())
            for association in aborted:
                association.abort("node shutting down")
            # The A-ABORTs are only queued on the transports: the reactor's
            # shutdown drops connections without flushing them, so the peers
            # would see a bare close.  Close each transport ourselves (it
            # writes what is queued first) and wait, bounded, until they are gone.
            for association in aborted:
                protocol = association.protocol
                if protocol is not None:
                    protocol.close_transport()
            deadline = ae.reactor.seconds() + 2.0
            while any(a.protocol is not None for a in aborted) and ae.reactor.seconds() < deadline:
                yield _sleep(ae.reactor, 0.02)

def _sleep(reactor: Any, seconds: float) -> defer.Deferred:
    d: defer.Deferred = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d
