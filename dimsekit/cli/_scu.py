"""Shared plumbing of the SCU tools: an AE from the options, errors as one line."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from twisted.internet import defer, task
from twisted.internet import error as net_error

from dimsekit.ae import ApplicationEntity
from dimsekit.config import Config, ConfigError, Limits, NodeConfig
from dimsekit.errors import DimsekitError
from dimsekit.plugin import make_plugin_manager
from dimsekit.tls import TLSConfig

__all__ = ["make_ae", "tls_config", "ToolAE", "describe_failure", "fail", "end_cleanly"]


def tls_config(args: Any) -> TLSConfig | None:
    """The TLS settings the options ask for (+tls, +tla, +cf, -ic, +crl, +cra, --verify-hostname,
    --tls-ciphers), None without TLS.

    :raises ConfigError: the options do not go together (one line, naming them).
    Files are not read here: :class:`~dimsekit.tls.TLSContext` reads them.
    """
    identity = getattr(args, "tls_identity", None)
    anonymous = getattr(args, "anonymous_tls", False)
    trust = tuple(getattr(args, "tls_trust", None) or ())
    ignore_peer = getattr(args, "tls_ignore_peer", False)
    verify_hostname = getattr(args, "tls_verify_hostname", False)
    ciphers = getattr(args, "tls_ciphers", None)
    crls = tuple(getattr(args, "tls_crls", None) or ())
    crl_chain = getattr(args, "tls_crl_chain", False)
    if identity is None and not anonymous:
        given = [name for name, value in (("+cf", trust), ("-ic", ignore_peer), ("+crl", crls), ("+cra", crl_chain),
                                          ("--verify-hostname", verify_hostname), ("--tls-ciphers", ciphers))
                 if value]
        if given:
            raise ConfigError(f"{' and '.join(given)} {'is' if len(given) == 1 else 'are'} for TLS: "
                              "give +tls KEY CERT or +tla too")
        return None
    if crl_chain and not crls:
        raise ConfigError("+cra checks the chain against revocation lists: give them with +crl FILE")
    if ignore_peer and crls:
        raise ConfigError("+crl checks the peer's certificate, -ic does not check it: give one of them")
    if ignore_peer and verify_hostname:
        raise ConfigError("--verify-hostname checks the peer's certificate, -ic does not check it: give one of them")
    if not ignore_peer and not trust:
        raise ConfigError("TLS checks the peer's certificate: give +cf FILE (the CA or the peer's certificate "
                          "to trust), or -ic not to check it")
    key, certificate = identity if identity is not None else ("", "")
    chosen: dict[str, Any] = {"ciphers": ciphers} if ciphers else {}
    if crls:
        chosen.update(crls=crls, crl_check="chain" if crl_chain else "leaf")
    return TLSConfig(certificate=certificate, private_key=key, ca_certificates=trust,
                     verify_peer=not ignore_peer, verify_hostname=verify_hostname, **chosen)


class ToolAE(ApplicationEntity):
    """The AE of an SCU tool: with TLS options (``self.tls``), every association
    it opens uses TLS -- one place, so that no tool can forget it.  What it
    listens on (move's --store-port, commit's --port) uses TLS too when it has a
    certificate (``+tls KEY CERT``), as DCMTK's movescu does; with ``+tla`` (no
    certificate, so no TLS server) it stays TCP."""

    def associate(self, host: str | None = None, port: int | None = None, **kwargs: Any) -> Any:
        if self.tls is not None and kwargs.get("endpoint") is None:
            kwargs.setdefault("tls", True)
        return super().associate(host, port, **kwargs)

    def listen(self, port: int = 0, interface: str = "127.0.0.1", **kwargs: Any) -> Any:
        if self.tls is not None and self.tls.config.has_identity and kwargs.get("endpoint") is None:
            kwargs.setdefault("tls", True)
        return super().listen(port, interface, **kwargs)


def make_ae(reactor: Any, args: Any, *, plugins: Iterable[object] = (), idle_timeout: float = 0) -> ApplicationEntity:
    """An SCU application entity from the common options (-aet, --max-pdu, --timeout,
    and the TLS ones: see :func:`tls_config` and :class:`ToolAE`).

    Only the ``plugins`` given are loaded, never the installed entry points:
    a tool serves nothing of its own accord (an installed storage plugin would
    otherwise take a C-GET's instances and make a ``dimsekit-data`` archive
    wherever the tool runs).
    """
    limits = Limits(
        max_pdu=args.max_pdu if args.max_pdu is not None else Limits().max_pdu,
        acse_timeout=args.timeout,
        dimse_timeout=args.timeout,
        idle_timeout=idle_timeout,
    )
    config = Config(node=NodeConfig(ae_title=args.aet), limits=limits, tls=tls_config(args))
    pm = make_plugin_manager(load_entrypoints=False, plugins=plugins)
    return ToolAE(config=config, plugin_manager=pm, reactor=reactor)


def describe_failure(failure: Any) -> str:
    """One line saying why an SCU operation failed."""
    exc = failure.value
    if isinstance(exc, net_error.ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, net_error.TimeoutError):
        return "timed out connecting"
    if isinstance(exc, net_error.DNSLookupError):
        return f"cannot resolve host: {exc}"
    if isinstance(exc, DimsekitError | ConfigError):
        return str(exc)
    if isinstance(exc, net_error.ConnectError):
        return f"cannot connect: {exc}"
    return f"{type(exc).__name__}: {exc}"


def fail(tool: str, failure: Any, code: int = 1) -> int:
    """Print ``tool: reason`` on stderr and return the exit code."""
    print(f"dimsekit {tool}: {describe_failure(failure)}", file=sys.stderr)
    return code


@defer.inlineCallbacks
def end_cleanly(reactor: Any, association: Any = None, *, timeout: float = 1.0):
    """Before a tool exits: end the association protocol-correctly and let the
    last PDUs reach the peer.

    An association still open (the tool gave up on it: no usable context, a
    failed operation) is aborted.  Then, for at most ``timeout`` seconds, wait
    until nothing is left to write: stopping the reactor drops connections
    without writing what is queued, so the peer would see a bare close where
    PS3.8 has an A-ABORT (after an invalid A-ASSOCIATE-AC, a timeout, ...).
    """
    if association is not None and association.protocol is not None and not association.ended:
        association.abort("the tool gave up on the association")
    get_writers = getattr(reactor, "getWriters", None)
    if get_writers is None:
        return
    deadline = reactor.seconds() + timeout
    for _ in range(1000):
        if not get_writers() or reactor.seconds() >= deadline:
            return
        yield task.deferLater(reactor, 0.005, lambda: None)
