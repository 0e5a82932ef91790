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

__all__ = ["make_ae", "describe_failure", "fail", "end_cleanly"]


def make_ae(reactor: Any, args: Any, *, plugins: Iterable[object] = (), idle_timeout: float = 0) -> ApplicationEntity:
    """An SCU application entity from the common options (-aet, --max-pdu, --timeout).

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
    config = Config(node=NodeConfig(ae_title=args.aet), limits=limits)
    pm = make_plugin_manager(load_entrypoints=False, plugins=plugins)
    return ApplicationEntity(config=config, plugin_manager=pm, reactor=reactor)


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
