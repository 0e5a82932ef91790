"""Service classes declared by plugins, turned into dispatch tables once.

A plugin's ``dimsekit_service_classes`` hook returns :class:`ServiceClass`
values: which SOP classes, in which roles, with which transfer syntaxes, and
a handler per DIMSE command.  :class:`Registry` merges them at start-up into

* ``supported``: abstract syntax -> :class:`~dimsekit.ul.negotiation.ContextSupport`
  (what association negotiation accepts), and
* ``handlers``: (command name, SOP class UID) -> handler (what SCP dispatch
  looks up per request: one dictionary lookup).

Two plugins claiming the same SOP class in the SCP role is an error that
names both (service class and plugin).  The registry also renders the conformance statement's tables.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import pluggy
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
    #: DIMSE command name -> factory(request) -> DataSink: where a request's
    #: data set is written as it arrives (e.g. C-STORE straight into the
    #: archive).  Called when the command set is complete, before its data
    #: set; ``request.sink`` is then that sink.  May raise to refuse early:
    #: the data set is then discarded and the handler sees ``request.sink_error``.
    sink_factories: Mapping[str, Callable[..., object]] = field(default_factory=dict)


class Registry:
    """The merged service classes of all plugins.

    :param service_classes: :class:`ServiceClass` values, or ``(plugin name,
        ServiceClass)`` pairs so that a conflict can name the plugins
        (:meth:`from_plugins` gives pairs).
    :raises RegistryError: two service classes claim one SOP class in the SCP role.

    A SOP class declared more than once with at most one SCP among the
    declarations (e.g. a storage SCP and a C-GET SCU that takes storage
    sub-operations as SCU) is served with the roles combined: the SCP
    declaration keeps its handlers, transfer syntaxes and extended negotiation.
    """

    def __init__(self, service_classes: Iterable[ServiceClass | tuple[str, ServiceClass]]) -> None:
        self.service_classes: list[ServiceClass] = []
        self.supported: dict[str, ContextSupport] = {}
        self.handlers: dict[tuple[str, str], Handler] = {}
        self.sink_factories: dict[tuple[str, str], Callable[..., object]] = {}
        #: plugin name by service class (``id``), where known.
        self._plugin_of: dict[int, str] = {}
        scp_owner: dict[str, ServiceClass] = {}
        #: handlers of SCU-role-only declarations (the C-STORE sub-operations of
        #: a C-GET, N-EVENT-REPORTs of storage commitment): an SCP declaration's win
        scu_handlers: dict[tuple[str, str], tuple[Handler, ServiceClass]] = {}
        for entry in service_classes:
            plugin, service = entry if isinstance(entry, tuple) else (None, entry)
            if plugin is not None:
                self._plugin_of[id(service)] = plugin
            self.service_classes.append(service)
            for sop_class in service.sop_classes:
                previous = scp_owner.get(sop_class)
                if service.scp_role:
                    if previous is not None:
                        raise RegistryError(
                            f"SOP class {sop_class} ({UID(sop_class).name}) is claimed by two "
                            f"service classes: {self._describe(previous)} and {self._describe(service)}; "
                            "disable one with DIMSEKIT_DISABLE_PLUGINS"
                        )
                    scp_owner[sop_class] = service
                    for command, handler in service.handlers.items():
                        self.handlers[(command, sop_class)] = handler
                    for command, factory in service.sink_factories.items():
                        self.sink_factories[(command, sop_class)] = factory
                else:
                    for command, handler in service.handlers.items():
                        other = scu_handlers.get((command, sop_class))
                        if other is not None:
                            raise RegistryError(
                                f"{command} for SOP class {sop_class} ({UID(sop_class).name}) is handled by two "
                                f"service classes: {self._describe(other[1])} and {self._describe(service)}; "
                                "disable one with DIMSEKIT_DISABLE_PLUGINS"
                            )
                        scu_handlers[(command, sop_class)] = (handler, service)
                self.supported[sop_class] = self._merge(self.supported.get(sop_class), sop_class, service)
        #: the SOP classes some plugin handles at least one command of as SCP
        self.handlers_by_sop_class: frozenset[str] = frozenset(sop for (_command, sop) in self.handlers)
        for key, (handler, _service) in scu_handlers.items():
            self.handlers.setdefault(key, handler)

    def _describe(self, service: ServiceClass) -> str:
        plugin = self._plugin_of.get(id(service))
        return f"{service.name!r}" if plugin is None else f"{service.name!r} (plugin {plugin!r})"

    @staticmethod
    def _merge(known: ContextSupport | None, sop_class: str, service: ServiceClass) -> ContextSupport:
        """Combine the roles of two declarations of one SOP class; the SCP's settings win."""
        if known is None:
            return ContextSupport(
                abstract_syntax=sop_class,
                transfer_syntaxes=tuple(service.transfer_syntaxes),
                scu_role=service.scu_role,
                scp_role=service.scp_role,
                extended_negotiation=service.extended_negotiation,
            )
        first, second = (service, known) if service.scp_role else (known, service)
        first_ts = first.transfer_syntaxes
        syntaxes = tuple(first_ts) + tuple(ts for ts in second.transfer_syntaxes if ts not in first_ts)
        return ContextSupport(
            abstract_syntax=sop_class,
            transfer_syntaxes=syntaxes,
            scu_role=known.scu_role or service.scu_role,
            scp_role=known.scp_role or service.scp_role,
            extended_negotiation=first.extended_negotiation or second.extended_negotiation,
        )

    @classmethod
    def from_plugins(cls, pm: pluggy.PluginManager) -> Registry:
        """Collect ``dimsekit_service_classes`` from every registered plugin.

        Each plugin's implementation is called on its own (in pluggy's call
        order), so that every service class is known with its plugin's name.
        """
        caller = pm.hook.dimsekit_service_classes
        declared: list[tuple[str, ServiceClass]] = []
        for impl in reversed(caller.get_hookimpls()):
            if impl.wrapper or impl.hookwrapper:
                continue
            for service in impl.function() or ():
                declared.append((impl.plugin_name, service))
        return cls(declared)

    def handler(self, command: str, sop_class: str) -> Handler | None:
        """The handler for a request, or None (the caller answers "SOP class not supported")."""
        return self.handlers.get((command, sop_class))

    def sink_factory(self, command: str, sop_class: str) -> Callable[..., object] | None:
        """Where a request's data set should be written as it arrives, or None (memory/temp file)."""
        return self.sink_factories.get((command, sop_class))

    def conformance_rows(self) -> list[tuple[str, str, str, str]]:
        """(service, SOP class name, UID, roles) rows for the conformance statement."""
        rows = []
        for service in self.service_classes:
            roles = "/".join(r for r, on in (("SCP", service.scp_role), ("SCU", service.scu_role)) if on)
            for sop_class in service.sop_classes:
                rows.append((service.name, UID(sop_class).name, sop_class, roles))
        return rows
