"""``twistd dimsekit``: options and service maker.

Zero configuration gives a working node on port 11112 with AE title DIMSEKIT;
``--config`` reads a TOML file (see :mod:`dimsekit.config`) and ``--port``,
``--aet``, ``--data-dir``, ``--interface`` override its ``[node]`` keys.
"""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.python import usage

from dimsekit.config import ConfigError, load

__all__ = ["Options", "makeService"]


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
    from dimsekit.service import DicomNodeService

    config = options["config_obj"]
    node = config.node
    ae = ApplicationEntity(config=config)
    endpoint: Any = options["endpoint"]
    if endpoint is None:
        endpoint = f"tcp:{node.port}"
        if node.interface:
            endpoint += f":interface={node.interface}"
    return DicomNodeService(ae, endpoint)
