"""zope.interface contracts between the core and replaceable plugins.

An archive backend (the built-in one keeps Part 10 files and a SQLite index;
another could use PostgreSQL and an object store) provides :class:`IArchive`
through the ``dimsekit_archive`` hook.  The storage, query/retrieve and
commitment plugins use only these methods.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface

__all__ = ["IArchive", "IIncomingInstance", "IRequestObserver", "StoredInstance"]


class IIncomingInstance(Interface):
    """A C-STORE data set being received straight into the archive (a data sink).

    Made by :meth:`IArchive.receive` when the C-STORE-RQ command set arrives,
    before the data set: its bytes are written as they come, to a temporary
    file next to the instance's final place, so a large data set never sits
    in memory.  Nothing is visible in the archive until :meth:`commit`.
    """

    size = Attribute("bytes of data set written so far")

    def write(data):  # noqa: N805 - zope.interface style
        """Append received data set bytes (bytes, or a memoryview of immutable bytes).

        The archive may keep what it is handed, without copying it, until it
        is written: a caller must not hand in a view of a buffer it changes.
        """

    def close():  # noqa: N805
        """The last fragment arrived (the data set is complete, not yet committed)."""

    def abort():  # noqa: N805
        """Throw the partial data away (connection lost, rejected): leaves no file."""

    def open():  # noqa: N805
        """A binary file object over the data set bytes received (for checks/parsing)."""

    def commit():  # noqa: N805
        """Make the instance durable (fsync, rename) and indexed.

        :returns: a Deferred firing with a :class:`StoredInstance` once the
            instance is durable; a success status may be sent only after it
            fires.  The index may be written just after, as long as no read
            of it that follows can miss the instance (the built-in archive
            holds its index's lock across the answer and the write).  Fails with
            :class:`~dimsekit.errors.DimsekitError` subclasses the storage
            plugin maps to statuses (out of resources, duplicate rejected, ...).
        """


class IArchive(Interface):
    """Where received instances go and where Q/R finds them."""

    def receive(sop_class_uid, sop_instance_uid, transfer_syntax, source_ae):  # noqa: N805
        """An :class:`IIncomingInstance` for a C-STORE about to arrive.

        :raises ~dimsekit.errors.DimsekitError: refused before anything is
            written (invalid UID, below the free-space floor).
        """

    def reconcile():  # noqa: N805
        """Make files and index agree after a crash; a Deferred firing with a report (dict)."""

    def lookup(sop_instance_uid):  # noqa: N805
        """A Deferred firing with the :class:`StoredInstance` of a UID, or None."""

    def close():  # noqa: N805
        """Release resources (database connections); a Deferred."""


class IRequestObserver(Interface):
    """Told of each request an association receives or sends (tracing, auditing).

    Given to :meth:`Association.observe <dimsekit.association.Association.observe>`,
    typically from a ``dimsekit_on_association_established`` hook (the built-in
    tracing plugin does so).  Every method is optional and called in the
    reactor thread: it must not block, and one that raises is logged and the
    observer is not told again.  How the association itself ends, the
    ``dimsekit_on_association_ended`` hook says.
    """

    def request_received(request):  # noqa: N805
        """A request's command set is in (a :class:`~dimsekit.scp.Request`).

        For a C-STORE whose data set a plugin streams (the archive), before
        its data set arrives; for other requests once the data set is in.
        """

    def request_answered(request, status, fields):  # noqa: N805
        """The final response to ``request`` goes out with ``status``.

        ``fields``: the response's other command fields as given (Error
        Comment, sub-operation counts; a dict, maybe empty).  A request the
        association ends before answering is not answered: it ended with it.
        """

    def request_refused(command, context, status, fields):  # noqa: N805
        """A request was refused before any handler saw it, with a failure
        ``status``: its command set did not validate (0211H, 0212H, 0120H...),
        or its data set passed a limit (A700H, A701H, 0213H).

        ``command``: the fields of its command set that could be decoded (a
        dict; any of them may be missing or of an unexpected type),
        ``context``: its presentation context, ``fields``: the response's
        Error Comment and Offending Element.  It is not told of as received.
        """

    def operation_started(operation, command, context):  # noqa: N805
        """A request of ours goes out (a :class:`~dimsekit.operations.DimseOperation`).

        ``command``: its command fields, ``context``: its presentation context.
        ``operation.when_ended(callback)`` tells its end; then
        ``operation.final_response`` or ``operation.error`` says how it ended.
        """


class StoredInstance:
    """The archive's record of one stored instance (what hooks and Q/R see).

    ``replaced``: this copy overwrote a stored copy of the same SOP Instance
    in its place.  (A copy that comes with other Study/Series UIDs than the
    stored one replaces it too, by the ``newest`` policy; the built-in
    archive removes the old file as it indexes the new one, just after the
    answer, and reports ``replaced`` False.)
    """

    __slots__ = (
        "sop_class_uid", "sop_instance_uid", "study_instance_uid", "series_instance_uid",
        "patient_id", "transfer_syntax", "path", "size", "source_ae", "received_at", "replaced",
    )

    def __init__(self, **fields: object) -> None:
        for name in self.__slots__:
            setattr(self, name, fields.get(name))

    def __repr__(self) -> str:
        return f"<StoredInstance {self.sop_instance_uid} at {self.path}>"
