"""The dimsekit plugin API: every hook a plugin may implement.

This module *is* the plugin API (version :data:`PLUGIN_API_VERSION`).  A plugin
is a module or object with functions decorated by :data:`hookimpl` and named
after the hooks below, registered under the ``dimsekit`` entry-point group::

    # setup.cfg of a third-party plugin
    [options.entry_points]
    dimsekit =
        myforwarder = myforwarder.plugin

Hooks are called at start-up and at association boundaries, never per PDU.
Service classes are declared as data (:class:`dimsekit.registry.ServiceClass`);
the core builds dispatch tables from them once.

Every hook below follows one template: summary; what the return value means
(``None`` included); for ``firstresult`` hooks, "stops at the first non-None
result"; the parameters; the version it was added in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from dimsekit.config import Config
    from dimsekit.interfaces import IArchive
    from dimsekit.registry import ServiceClass

__all__ = ["hookspec", "hookimpl", "PLUGIN_API_VERSION", "PROJECT_NAME"]

PROJECT_NAME = "dimsekit"
PLUGIN_API_VERSION = 2

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
#: Decorate a plugin's hook functions with this.
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def dimsekit_configure(config: Config) -> None:
    """Called once at start-up with the node's validated configuration.

    Return value: ignored.

    :param config: the :class:`~dimsekit.config.Config`; a plugin reads its own
        section from ``config.plugins[name]`` (a dict, ``{}`` when absent).
        Raise :class:`~dimsekit.config.ConfigError` naming the key to stop start-up.

    Added in API version 1.
    """


@hookspec
def dimsekit_service_classes() -> list[ServiceClass] | None:
    """Declare the service classes (SOP classes and their DIMSE handlers) a plugin provides.

    Return value: a list of :class:`~dimsekit.registry.ServiceClass`, or
    ``None`` for none.  Results of all plugins are merged; two plugins
    claiming the same SOP class in the same role is a start-up error that
    names both.

    Handlers receive a :class:`~dimsekit.association.Request` and return a
    status (int), a ``(status, dataset)`` pair, a Deferred or coroutine of
    either, or -- for C-FIND/C-GET/C-MOVE -- an iterable or async iterable of
    pending ``(status, identifier)`` pairs.  A handler that raises is answered
    with 0x0110 (Processing failure) and logged with its traceback; the
    association survives.  A request for a SOP class no plugin declared gets
    0x0122 (SOP class not supported).

    Added in API version 1.
    """


@hookspec(firstresult=True)
def dimsekit_archive(config: Config) -> IArchive | None:
    """Provide the archive (an :class:`~dimsekit.interfaces.IArchive`) the node stores into.

    Return value: the archive, or ``None`` to leave the choice to another
    plugin.  Stops at the first non-None result.  The built-in archive
    plugin is asked last (``trylast``), so a backend of another plugin
    replaces it.  With no archive at all the node still answers
    verification but refuses storage.

    :param config: the node's :class:`~dimsekit.config.Config` (the archive's
        own settings are in ``config.plugins[name]``, its place in
        ``config.node.data_dir``).

    Added in API version 1.
    """


@hookspec(firstresult=True)
def dimsekit_accept_association(request: Any) -> Any | None:
    """Decide whether to accept an incoming association, before contexts are negotiated.

    Return value: ``None`` to let it proceed, or an
    :class:`~dimsekit.ul.pdu.AssociateRJ` to reject it with.  Stops at the
    first non-None result.  An exception is logged and rejects the
    association (rejected-permanent, service-user, no reason given), as a
    failing ``dimsekit_authenticate`` does.

    :param request: an :class:`~dimsekit.association.AssociationRequest`
        (the A-ASSOCIATE-RQ, the peer address).

    Added in API version 1.
    """


@hookspec(firstresult=True)
def dimsekit_authenticate(identity: Any, request: Any) -> Any | None:
    """Check a User Identity (PS3.7 D.3.3.7) offered by the association requestor.

    Return value: ``None`` when this plugin has no opinion; ``False`` to reject
    the association (A-ASSOCIATE-RJ permanent, service-user, no reason given);
    ``True`` to accept without a server response; ``bytes`` to accept and send
    them as the server response when the requestor asked for one.  Stops at
    the first non-None result.  With no plugin answering, every identity is
    accepted and no response is sent.

    :param identity: the :class:`~dimsekit.ul.items.UserIdentityRQ`.
    :param request: the :class:`~dimsekit.association.AssociationRequest`.

    Added in API version 1.
    """


@hookspec
def dimsekit_on_association_established(association: Any) -> None:
    """An association was established (either side).

    Return value: ignored.  An exception is logged, naming the plugin; the
    association goes on and the other plugins are still called.

    :param association: the :class:`~dimsekit.association.Association`, with
        its negotiated contexts, peer and AE titles.

    Added in API version 1.
    """


@hookspec
def dimsekit_on_association_released(association: Any) -> None:
    """An association ended by A-RELEASE (either side asked).

    Return value: ignored.  Called once per association, only if it had been
    established.  An exception is logged, naming the plugin; the other
    plugins are still called.

    :param association: the :class:`~dimsekit.association.Association`.

    Added in API version 1.
    """


@hookspec
def dimsekit_on_association_aborted(association: Any, reason: str) -> None:
    """An association ended by A-ABORT, A-P-ABORT, a timeout or connection loss.

    Return value: ignored.  Called once per association, only if it had been
    established.  An exception is logged, naming the plugin; the other
    plugins are still called.

    :param association: the :class:`~dimsekit.association.Association`.
    :param reason: what happened, in words.

    Added in API version 1.
    """


@hookspec
def dimsekit_on_association_ended(association: Any) -> None:
    """A connection is gone, whatever became of its association: for counting and auditing.

    Also for one never established (rejected, a failed TLS handshake, the
    ARTIM timer, a connection that sent nothing).  Called once per
    connection, after the association's log line, in the reactor thread.
    ``association.established`` says whether it was;
    ``association.ended`` how it ended, in words (``released``, ``aborted:
    ...``, ``rejected (...)``, ``connection closed...``); ``association.rq``
    is the A-ASSOCIATE-RQ (None if none came); ``association.scp.handled``
    counts the requests it answered: Command Field -> [final responses,
    warnings, failures, cancels]; ``association.requested`` the same of the
    requests it sent, by the final responses received.

    Return value: ignored.  An exception is logged, naming the plugin; the
    other plugins are still called.

    :param association: the :class:`~dimsekit.association.Association`.

    Added in API version 2.
    """


@hookspec
def dimsekit_on_node_started(ae: Any) -> None:
    """The node is listening: prepare what must be ready before the first association.

    Called by ``twistd dimsekit`` and any DicomNodeService once its port is
    open.  The archive reconciles its files and index here; a plugin may
    resume pending work (storage commitment reports).

    Return value: ignored; a Deferred is not waited for.  An exception is
    logged, naming the plugin; the other plugins are still called.

    :param ae: the node's :class:`~dimsekit.ae.ApplicationEntity`.

    Added in API version 1.
    """


@hookspec
def dimsekit_on_instance_stored(instance: Any) -> None:
    """An instance was received and is durable in the archive (forwarders, routers).

    Return value: ignored (a Deferred is not waited for; do slow work yourself
    without blocking the reactor).  An exception is logged, naming the
    plugin; the other plugins are still called and the C-STORE still succeeds.

    :param instance: the archive's record of the stored instance.

    Added in API version 1.
    """


@hookspec
def dimsekit_on_mpps_completed(instance: Any) -> None:
    """A Modality Performed Procedure Step reached a final state: COMPLETED or DISCONTINUED.

    Called once per step, after the N-SET that set Performed Procedure Step
    Status (0040,0252) to ``COMPLETED`` or ``DISCONTINUED`` is stored and
    before its response is sent.  Both final states are reported, because a
    worklist or a RIS must leave "in progress" in both: read
    ``instance.dataset.PerformedProcedureStepStatus`` to tell them apart
    (COMPLETED: the acquisition is done; DISCONTINUED: it was cancelled or
    failed, PS3.4 Annex F) before marking, for example, a worklist item done.

    Return value: ignored (a Deferred is not waited for; do slow work yourself
    without blocking the reactor).  An exception is logged, naming the
    plugin; the other plugins are still called and the N-SET still succeeds.

    :param instance: the step as stored, a :class:`~dimsekit.nservice.Instance`
        (``sop_instance_uid``, ``sop_class_uid``, ``dataset`` with every
        attribute of the step, e.g. ``ScheduledStepAttributesSequence`` and
        ``PerformedSeriesSequence``).

    Added in API version 1.
    """
