"""``twistd dimsekit``: options and service maker.

Zero configuration gives a working node on port 11112 with AE title DIMSEKIT;
``--config`` reads a TOML file (see :mod:`dimsekit.config`) and ``--port``,
``--aet``, ``--data-dir``, ``--interface`` override its ``[node]`` keys.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from twisted.application import service
from twisted.internet.error import ReactorNotRunning
from twisted.logger import Logger
from twisted.python import usage

from dimsekit.config import ConfigError, load

__all__ = ["Options", "makeService", "StopOnSIGTERM"]

_log = Logger(namespace="dimsekit.tap")


class Options(usage.Options):
    """Command-line options of ``twistd dimsekit``."""

    synopsis = "[options]"
    longdesc = "Run a dimsekit DICOM node (verification, storage, query/retrieve, ...)."
    optParameters = [
        ["config", "c", None, "TOML configuration file."],
        ["port", "p", None, "TCP port to listen on (default 11112).", int],
        ["aet", "a", None, "Our AE title (default DIMSEKIT)."],
        ["interface", "i", None, "Address to listen on (default: all)."],
        ["data-dir", "d", None, "Where the archive keeps its files (default ./dimsekit-data)."],
        ["endpoint", "e", None, "A Twisted server endpoint string, overriding port/interface (e.g. ssl:2762:privateKey=key.pem)."],
    ]

    def postOptions(self) -> None:
        try:
            config = load(self["config"])
            self["config_obj"] = config.override(
                port=self["port"], ae_title=self["aet"], interface=self["interface"], data_dir=self["data-dir"]
            )
        except ConfigError as exc:
            raise usage.UsageError(str(exc)) from None


def makeService(options: Options) -> service.IService:
    """Build the node service from the options."""
    from dimsekit.ae import ApplicationEntity
    from dimsekit.config import ConfigError
    from dimsekit.registry import RegistryError
    from dimsekit.service import DicomNodeService

    config = options["config_obj"]
    node = config.node
    try:
        ae = ApplicationEntity(config=config)
    except (ConfigError, RegistryError) as exc:
        # A plugin refused its section, or two plugins claim one SOP class:
        # one line naming the problem, not a traceback.
        raise usage.UsageError(str(exc)) from None
    endpoint: Any = options["endpoint"]
    if endpoint is None:
        endpoint = f"tcp:{node.port}"
        if node.interface:
            endpoint += f":interface={node.interface}"
    node_service = service.MultiService()
    DicomNodeService(ae, endpoint).setServiceParent(node_service)
    StopOnSIGTERM().setServiceParent(node_service)
    return node_service


class StopOnSIGTERM(service.Service):
    """Make SIGTERM the ordinary way to stop a node: a graceful stop, exit status 0.

    twistd's own SIGTERM handler stops the reactor cleanly too, but then
    re-kills the process with the signal, so it exits "killed by SIGTERM"
    (status -15 / 143) and service managers and scripts see a failure.  Once
    the reactor runs (its handlers are installed by then) this service puts a
    handler in their place that stops the reactor -- the services stop as
    usual, associations are released or aborted -- and lets twistd exit 0.
    """

    name = "dimsekit-sigterm"

    def startService(self) -> None:
        super().startService()
        from twisted.internet import reactor

        reactor.callWhenRunning(self._install, reactor)

    def _install(self, reactor: Any) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread

        def stop() -> None:
            try:
                reactor.stop()
            except ReactorNotRunning:
                pass  # a second SIGTERM while stopping

        def on_sigterm(signum: int, frame: object) -> None:
            _log.info("received SIGTERM, stopping the node")
            reactor.callFromThread(stop)

        signal.signal(signal.SIGTERM, on_sigterm)
