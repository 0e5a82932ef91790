"""Service classes declared by plugins, turned into dispatch tables once.

A plugin's ``dimsekit_service_classes`` hook returns :class:`ServiceClass`
values: which SOP classes, in which roles, with which transfer syntaxes, and
a handler per DIMSE command.  :class:`Registry` merges them at start-up into

* ``supported``: abstract syntax -> :class:`~dimsekit.ul.negotiation.ContextSupport`
  (what association negotiation accepts), and
* ``handlers``: (command name, SOP class UID) -> handler (what SCP dispatch
  looks up per request: one dictionary lookup).

Two plugins claiming the same SOP class in the SCP role is an error that
names both.  The registry also renders the conformance statement's tables.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from pydicom.uid import UID

from dimsekit.errors import DimsekitError
from dimsekit.ul.negotiation import ContextSupport

__all__ = [
    "ServiceClass",
    "Registry",
    "RegistryError",
    "UNCOMPRESSED_TRANSFER_SYNTAXES",
]

#: Implicit VR LE, Explicit VR LE, Deflated Explicit VR LE, Explicit VR BE (retired, still seen).
UNCOMPRESSED_TRANSFER_SYNTAXES: tuple[str, ...] = (
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.2",
)

Handler = Callable[..., object]


class RegistryError(DimsekitError):
    """Plugins declared service classes that cannot be combined."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceClass:
    """A service class as a plugin declares it.

    :param name: short name for logs and the conformance statement ("verification").
    :param sop_classes: the SOP class UIDs (abstract syntaxes) it serves.
    :param handlers: DIMSE command name ("C-ECHO", "C-STORE", "N-CREATE", ...)
        -> handler, for requests we receive as SCP.
    :param transfer_syntaxes: accepted transfer syntaxes, in our preference order.
    :param scp_role: we accept requests for these SOP classes.
    :param scu_role: we may send requests for them on associations the peer
        opened (e.g. C-STORE sub-operations of a C-GET), via role selection.
    :param extended_negotiation: SOP Class Extended Negotiation answer:
        peer's application information bytes -> ours, or None.
    """

    name: str
    sop_classes: tuple[str, ...]
    handlers: Mapping[str, Handler] = field(default_factory=dict)
    transfer_syntaxes: tuple[str, ...] = UNCOMPRESSED_TRANSFER_SYNTAXES
    scp_role: bool = True
    scu_role: bool = False
    extended_negotiation: Callable[[bytes], bytes | None] | None = None


class Registry:
    """The merged service classes of all plugins."""

    def __init__(self, service_classes: Iterable[ServiceClass]) -> None:
        self.service_classes: list[ServiceClass] = []
        self.supported: dict[str, ContextSupport] = {}
        self.handlers: dict[tuple[str, str], Handler] = {}
        owner: dict[str, ServiceClass] = {}
        for service in service_classes:
            self.service_classes.append(service)
            for sop_class in service.sop_classes:
                previous = owner.get(sop_class)
                if previous is not None and previous.scp_role and service.scp_role:
                    raise RegistryError(
                        f"SOP class {sop_class} ({UID(sop_class).name}) is claimed by two "
                        f"service classes: {previous.name!r} and {service.name!r}; "
                        "disable one with DIMSEKIT_DISABLE_PLUGINS"
                    )
                owner[sop_class] = service
                self.supported[sop_class] = ContextSupport(
                    abstract_syntax=sop_class,
                    transfer_syntaxes=tuple(service.transfer_syntaxes),
                    scu_role=service.scu_role,
                    scp_role=service.scp_role,
                    extended_negotiation=service.extended_negotiation,
                )
                for command, handler in service.handlers.items():
                    self.handlers[(command, sop_class)] = handler

    @classmethod
    def from_plugins(cls, pm: object) -> Registry:
        """Collect ``dimsekit_service_classes`` from every registered plugin."""
        results = pm.hook.dimsekit_service_classes()  # type: ignore[attr-defined]
        return cls(service for result in results if result for service in result)

    def handler(self, command: str, sop_class: str) -> Handler | None:
        """The handler for a request, or None (the caller answers "SOP class not supported")."""
        return self.handlers.get((command, sop_class))

    def conformance_rows(self) -> list[tuple[str, str, str, str]]:
        """(service, SOP class name, UID, roles) rows for the conformance statement."""
        rows = []
        for service in self.service_classes:
            roles = "/".join(r for r, on in (("SCP", service.scp_role), ("SCU", service.scu_role)) if on)
            for sop_class in service.sop_classes:
                rows.append((service.name, UID(sop_class).name, sop_class, roles))
        return rows
