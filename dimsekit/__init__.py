"""dimsekit: DICOM message exchange (PS3.7) and the DICOM Upper Layer (PS3.8) on Twisted.

The public API is re-exported here, lazily (importing :mod:`dimsekit.ul` or
:mod:`dimsekit.dimse` alone does not import Twisted).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0.dev0"

#: Our Implementation Class UID (PS3.7 D.3.3.2), under the UUID-derived root 2.25.
IMPLEMENTATION_CLASS_UID = "2.25.229730216473619428473591043416245851392"
#: Our Implementation Version Name (at most 16 characters).
IMPLEMENTATION_VERSION_NAME = "DIMSEKIT_010"

_EXPORTS = {
    "ApplicationEntity": "dimsekit.ae",
    "DicomServerFactory": "dimsekit.ae",
    "Association": "dimsekit.association",
    "Request": "dimsekit.association",
    "Response": "dimsekit.association",
    "DicomNodeService": "dimsekit.service",
    "Config": "dimsekit.config",
    "ConfigError": "dimsekit.config",
    "ServiceClass": "dimsekit.registry",
    "hookimpl": "dimsekit.hookspecs",
    "make_plugin_manager": "dimsekit.plugin",
    "DimsekitError": "dimsekit.errors",
    "LocalProtocolError": "dimsekit.errors",
    "RemoteProtocolError": "dimsekit.errors",
    "AssociationRejected": "dimsekit.errors",
    "AssociationAborted": "dimsekit.errors",
    "ConnectionLost": "dimsekit.errors",
    "DIMSETimeout": "dimsekit.errors",
}

__all__ = ["__version__", "IMPLEMENTATION_CLASS_UID", "IMPLEMENTATION_VERSION_NAME", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dimsekit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
