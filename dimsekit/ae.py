"""The local Application Entity: identity, policy, plugins, listen and associate.

An :class:`ApplicationEntity` is what an application holds: its AE title,
the service classes its plugins declared (and so the presentation contexts it
accepts), its limits and timeouts.  It makes connections in both directions:

* :meth:`ApplicationEntity.server_factory` / :meth:`ApplicationEntity.listen`
  accept associations and dispatch their requests to the plugins;
* :meth:`ApplicationEntity.associate` opens one and fires with an
  :class:`~dimsekit.association.Association` once the peer accepted.

Both take any Twisted endpoint (TCP, TLS, UNIX).  With a ``[tls]``
configuration (:mod:`dimsekit.tls`) the AE also makes TLS endpoints itself:
``listen(port, tls=True)``, ``associate(host, port, tls=True)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pluggy
from twisted.internet import defer, endpoints, protocol
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IStreamClientEndpoint, IStreamServerEndpoint
from twisted.logger import Logger

from dimsekit.association import Association
from dimsekit.config import Config, check_ae_title
from dimsekit.errors import LocalProtocolError
from dimsekit.plugin import make_plugin_manager
from dimsekit.protocol import DicomProtocol
from dimsekit.registry import UNCOMPRESSED_TRANSFER_SYNTAXES, Registry
from dimsekit.tls import TLSContext
from dimsekit.ul.connection import Timeouts, UpperLayer
from dimsekit.ul.items import SOPClassCommonExtendedNegotiation
from dimsekit.ul.negotiation import AcceptorPolicy, Negotiated, NegotiationCache, build_associate_rq
from dimsekit.ul.pdu import AssociateRQ

__all__ = ["ApplicationEntity", "DicomServerFactory", "ContextRequest"]

_log = Logger(namespace="dimsekit.ae")

#: A presentation context to propose: an abstract syntax, or (abstract syntax, transfer syntaxes).
ContextRequest = str | tuple[str, Sequence[str]]


def _default_reactor() -> Any:
    from twisted.internet import reactor

    return reactor


class DicomServerFactory(protocol.ServerFactory):
    """Accepts DICOM connections for an :class:`ApplicationEntity`."""

    noisy = False

    def __init__(self, ae: ApplicationEntity) -> None:
        self.ae = ae

    def buildProtocol(self, addr: Any) -> DicomProtocol:
        ae = self.ae
        association = Association(ae, ae.reactor, is_requestor=False)
        ul = UpperLayer(maximum_length=ae.maximum_length, timeouts=ae.timeouts)
        return DicomProtocol(association, ul, ae.reactor)


class _ClientFactory(protocol.Factory):
    noisy = False

    def __init__(self, protocol_: DicomProtocol) -> None:
        self._protocol = protocol_

    def buildProtocol(self, addr: Any) -> DicomProtocol:
        return self._protocol


class ApplicationEntity:
    """A local DICOM Application Entity.

    :param ae_title: our AE title (1-16 characters).
    :param config: the node configuration (limits, access list, plugin sections);
        defaults when None.
    :param plugin_manager: plugins to use; by default every plugin of the
        ``dimsekit`` entry-point group.
    :param reactor: the reactor; the global one when None.
    """

    def __init__(
        self,
        ae_title: str | None = None,
        *,
        config: Config | None = None,
        plugin_manager: pluggy.PluginManager | None = None,
        reactor: Any = None,
    ) -> None:
        self.config = config or Config()
        self.ae_title = check_ae_title(ae_title or self.config.node.ae_title, "ae_title")
        self.reactor = reactor if reactor is not None else _default_reactor()
        self.pm = plugin_manager if plugin_manager is not None else make_plugin_manager()
        self.pm.hook.dimsekit_configure(config=self.config)
        self.registry = Registry.from_plugins(self.pm)
        limits = self.config.limits
        self.maximum_length = limits.max_pdu
        self.timeouts = Timeouts(
            artim=limits.artim_timeout,
            acse=limits.acse_timeout or None,
            idle=limits.idle_timeout or None,
        )
        self.dimse_timeout: float | None = limits.dimse_timeout or None
        self.max_associations = limits.max_associations
        self.max_associations_per_ae = limits.max_associations_per_ae
        node = self.config.node
        allowed = None if node.allow_unknown_callers else frozenset(r.ae_title for r in self.config.remotes)
        self.policy = AcceptorPolicy(
            ae_title=self.ae_title,
            supported=self.registry.supported,
            check_called_ae=node.check_called_ae,
            allowed_callers=allowed,
            maximum_length=self.maximum_length,
            max_operations_invoked=limits.max_operations_invoked,
            max_operations_performed=limits.max_operations_performed,
        )
        #: the asynchronous operations window we propose by default (None: 1/1, not proposed)
        window = (limits.max_operations_invoked, limits.max_operations_performed)
        self.async_window: tuple[int, int] | None = None if window == (1, 1) else window
        self.active: set[Association] = set()
        #: the associations this AE opened (``associate``) that have not ended:
        #: a node's C-MOVE sub-operations and commitment reports among them
        self.requested: set[Association] = set()
        #: where a received data set that no plugin streams elsewhere goes once it passes
        #: 1 MiB (an anonymous file, gone when the message is): None, the system's temporary
        #: directory -- often memory (tmpfs).  A node uses ``<data_dir>/.spool``, ``dimsekit
        #: get`` its output directory (its instances go straight into their files, but any other
        #: data set stays on the disk it was given)
        self.spool_dir: str | None = None
        self._negotiation_cache = NegotiationCache(self.policy)
        #: the ``[tls]`` settings with their files read (None: no [tls]); a file that
        #: cannot be used raises :class:`~dimsekit.tls.TLSError` here, before anything runs
        self.tls: TLSContext | None = TLSContext(self.config.tls) if self.config.tls is not None else None
        if self.tls is not None and any(remote.tls for remote in self.config.remotes):
            self.tls.acts_as_client = True  # a renewed certificate is checked too
            problem = self.tls.client_auth_problem()
            if problem is not None:
                _log.warn("{problem}", problem=problem)

    # -- negotiation (acceptor side) -------------------------------------------------

    def negotiate(self, rq: AssociateRQ) -> tuple[bytes, Negotiated]:
        """The encoded A-ASSOCIATE-AC and the :class:`~dimsekit.ul.negotiation.Negotiated`
        for an acceptable request without a user identity response to send.

        :func:`~dimsekit.ul.negotiation.negotiate_as_acceptor` under
        ``self.policy``, through a :class:`~dimsekit.ul.negotiation.NegotiationCache`:
        a peer that sends the request it sent before gets the same answer
        without negotiating again.  Assigning a new ``policy`` (a configuration
        change) starts a new cache.
        """
        cache = self._negotiation_cache
        if cache.policy is not self.policy:
            cache = self._negotiation_cache = cache.for_policy(self.policy)
        return cache.negotiate(rq)

    # -- association slots (acceptor side) ---------------------------------------

    def claim_slot(self, association: Association) -> str | None:
        """Count an incoming association against ``max_associations`` and
        ``max_associations_per_ae``: None when it got its slot, else why not."""
        active = self.active
        if len(active) >= self.max_associations:
            return f"{len(active)} associations at once ([limits] max_associations)"
        per_ae = self.max_associations_per_ae
        if per_ae:
            calling = association.calling_ae_title
            held = sum(1 for other in active if other.calling_ae_title == calling)
            if held >= per_ae:
                return f"{held} associations at once from {calling} ([limits] max_associations_per_ae)"
        active.add(association)
        return None

    def release_slot(self, association: Association) -> None:
        """Free the slot of an association that ended, however it ended."""
        self.active.discard(association)

    # -- accepting -----------------------------------------------------------------

    def server_factory(self) -> DicomServerFactory:
        """A ServerFactory to listen with on any endpoint."""
        return DicomServerFactory(self)

    def listen(
        self, port: int = 0, interface: str = "127.0.0.1", *, endpoint: IStreamServerEndpoint | None = None,
        tls: bool = False,
    ) -> Deferred:
        """Listen for associations; fires with the ``IListeningPort``.

        :param tls: listen for TLS connections with the AE's ``[tls]`` settings.
        """
        if tls:
            if endpoint is not None:
                return defer.fail(LocalProtocolError("give tls or an endpoint, not both (the endpoint decides)"))
            if self.tls is None:
                return defer.fail(LocalProtocolError("TLS asked for, but there are no [tls] settings"))
            try:
                endpoint = self.tls.server_endpoint(self.reactor, port, interface)
            except Exception as exc:
                return defer.fail(exc)
        elif endpoint is None:
            endpoint = endpoints.TCP4ServerEndpoint(self.reactor, port, interface=interface)
        return endpoint.listen(self.server_factory())

    # -- requesting ----------------------------------------------------------------

    def associate(
        self,
        host: str | None = None,
        port: int | None = None,
        *,
        called: str = "ANY-SCP",
        contexts: Iterable[ContextRequest] = (),
        endpoint: IStreamClientEndpoint | None = None,
        maximum_length: int | None = None,
        roles: dict[str, tuple[bool, bool]] | None = None,
        async_window: tuple[int, int] | None = None,
        user_identity: Any = None,
        extended: Mapping[str, bytes] | None = None,
        common_extended: Sequence[SOPClassCommonExtendedNegotiation] = (),
        connect_timeout: float = 30.0,
        tls: bool | TLSContext = False,
    ) -> Deferred:
        """Open an association; fires with the :class:`~dimsekit.association.Association`.

        :param contexts: abstract syntaxes to propose, each a UID (proposed with
            the uncompressed transfer syntaxes) or ``(uid, [transfer syntaxes])``.
        :param async_window: (max operations we invoke, max we perform) to
            propose (PS3.7 D.3.3.3; 0 = unlimited); by default the
            ``[limits]`` window, not proposed when that is 1/1.
        :param extended: SOP class -> Service-class-application-information to
            propose (SOP Class Extended Negotiation, PS3.7 D.3.3.5), e.g. C-FIND's
            options of PS3.4 C.5.1.1; what the peer agreed to is in
            ``association.negotiated.extended`` (nothing for a SOP class it did not answer).
        :param common_extended: SOP Class Common Extended Negotiation sub-items
            (PS3.7 D.3.3.6) to send.
        :param tls: connect to ``host`` with TLS: True for the AE's ``[tls]``
            settings, or a :class:`~dimsekit.tls.TLSContext` of its own.
        :raises (in the Deferred): :class:`~dimsekit.errors.AssociationRejected`,
            :class:`~dimsekit.errors.AssociationAborted`, or the connection error.
        """
        try:
            called_title = check_ae_title(called, "called")
            proposals = [
                (c, UNCOMPRESSED_TRANSFER_SYNTAXES) if isinstance(c, str) else (c[0], tuple(c[1]))
                for c in contexts
            ]
            if not proposals:
                raise LocalProtocolError("propose at least one presentation context")
            rq = build_associate_rq(
                called_ae_title=called_title,
                calling_ae_title=self.ae_title,
                contexts=proposals,
                maximum_length=self.maximum_length if maximum_length is None else maximum_length,
                roles=roles or {},
                async_window=self.async_window if async_window is None else async_window,
                user_identity=user_identity,
                extended=extended or {},
                common_extended=common_extended,
            )
        except Exception as exc:
            return defer.fail(exc)
        if endpoint is None:
            if host is None or port is None:
                return defer.fail(LocalProtocolError("give host and port, or an endpoint"))
            if tls is False:
                endpoint = endpoints.HostnameEndpoint(self.reactor, host, port, timeout=connect_timeout)
            else:
                context = self.tls if tls is True else tls
                if context is None:
                    return defer.fail(LocalProtocolError("TLS asked for, but there are no [tls] settings"))
                endpoint = context.client_endpoint(self.reactor, host, port, timeout=connect_timeout)
        elif tls is not False:
            return defer.fail(LocalProtocolError("give tls or an endpoint, not both (the endpoint decides)"))
        association = Association(self, self.reactor, is_requestor=True)
        association.rq = rq
        ul = UpperLayer(maximum_length=rq.user_information.maximum_length or 0, timeouts=self.timeouts)
        ul.request_association(rq, self.reactor.seconds())  # Evt1 -> Sta4 (OpenTransport)
        proto = DicomProtocol(association, ul, self.reactor)
        waiter = association._established_waiter
        assert waiter is not None

        self.requested.add(association)

        def connect_failed(failure: Any) -> None:
            self.requested.discard(association)
            pending, association._established_waiter = association._established_waiter, None
            if pending is not None:
                pending.errback(failure)

        endpoint.connect(_ClientFactory(proto)).addErrback(connect_failed)
        return waiter
