"""The SCU API of an association: one method per DIMSE primitive.

Every method returns a Deferred (so ``await`` works inside
``Deferred.fromCoroutine``) and never raises: misuse comes back as a failed
Deferred carrying :class:`~dimsekit.errors.LocalProtocolError`.
C-FIND, C-GET and C-MOVE return a :class:`~dimsekit.operations.DimseOperation`
instead: awaitable for the final response, async-iterable over the pending
ones, cancellable with C-CANCEL.

.. code-block:: python

    status = await assoc.echo()
    response = await assoc.store("image.dcm")
    async for pending in assoc.find(query, model=STUDY_ROOT_FIND):
        print(pending.dataset.PatientName)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from pydicom.uid import UID
from twisted.internet import defer, threads
from twisted.internet.defer import Deferred

from dimsekit.datasets import (
    DEFLATED,
    DatasetError,
    Part10Info,
    dataset_file_info,
    decompressed,
    decompressible,
    encode_dataset,
    iter_file,
)
from dimsekit.dimse.commands import NO_DATASET, CommandField, Priority
from dimsekit.errors import LocalProtocolError
from dimsekit.operations import DimseOperation, Response
from dimsekit.uids import VERIFICATION, by_keyword

if TYPE_CHECKING:  # pragma: no cover
    from dimsekit.ul.negotiation import NegotiatedContext

__all__ = [
    "ServiceUser",
    "dataset_bytes",
    "PATIENT_ROOT_FIND",
    "PATIENT_ROOT_GET",
    "PATIENT_ROOT_MOVE",
    "STUDY_ROOT_FIND",
    "STUDY_ROOT_GET",
    "STUDY_ROOT_MOVE",
    "MODALITY_WORKLIST_FIND",
]

PATIENT_ROOT_FIND = by_keyword("PatientRootQueryRetrieveInformationModelFind")
PATIENT_ROOT_MOVE = by_keyword("PatientRootQueryRetrieveInformationModelMove")
PATIENT_ROOT_GET = by_keyword("PatientRootQueryRetrieveInformationModelGet")
STUDY_ROOT_FIND = by_keyword("StudyRootQueryRetrieveInformationModelFind")
STUDY_ROOT_MOVE = by_keyword("StudyRootQueryRetrieveInformationModelMove")
STUDY_ROOT_GET = by_keyword("StudyRootQueryRetrieveInformationModelGet")
MODALITY_WORKLIST_FIND = by_keyword("ModalityWorklistInformationModelFind")

#: transfer syntaxes pydicom can re-encode a data set between
_REENCODABLE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", DEFLATED}


class _Reencode:
    """A file whose data set must be read and re-encoded for the peer;
    ``given``: its UIDs are the caller's (a :class:`Part10Info` was passed),
    not to be taken from the data set read."""

    def __init__(self, info: Part10Info, given: bool = False, decompress: bool = False) -> None:
        self.info = info
        self.given = given
        #: its pixel data is compressed and must be decoded first
        self.decompress = decompress


class _FileData:
    """A data set to send from a Part 10 file, as raw bytes from its offset."""

    def __init__(self, info: Part10Info) -> None:
        self.info = info


def dataset_bytes(dataset: Any, transfer_syntax: str) -> Any:
    """What :func:`~dimsekit.dimse.fragments.fragment_message` takes, from what a caller gave.

    None stays None; bytes are taken as already encoded; a pydicom Dataset is
    encoded by pydicom; a file reference becomes its lazily-read blocks.
    """
    if dataset is None or isinstance(dataset, bytes | bytearray | memoryview):
        return dataset
    if isinstance(dataset, _FileData):
        info = dataset.info
        return iter_file(info.path, info.dataset_offset, pad_to_even=info.transfer_syntax == DEFLATED)
    if isinstance(dataset, Dataset):
        return encode_dataset(dataset, transfer_syntax)
    if isinstance(dataset, Iterable):
        return dataset
    raise LocalProtocolError(f"cannot send a data set given as {type(dataset).__name__}")


def _failed_operation(association: Any, error: Exception) -> DimseOperation:
    operation = DimseOperation(association, 0, 0)
    operation.fail(error)
    return operation


class ServiceUser:
    """Mixin of :class:`~dimsekit.association.Association`: the DIMSE SCU calls."""

    negotiated: Any
    handlers: dict
    reactor: Any
    #: what store() does with a compressed file the peer accepts only uncompressed:
    #: "never", "lossless", "lossy" (see ``[node] decompress``); None: the AE's setting
    decompress: str | None = None

    # provided by Association
    def start_operation(self, context: NegotiatedContext, command: dict[str, Any], dataset: Any = None, **kw: Any) -> DimseOperation:  # pragma: no cover
        raise NotImplementedError

    # -- contexts ------------------------------------------------------------------

    def context_for(
        self, sop_class: str, transfer_syntax: str | None = None, *, as_scu: bool = True
    ) -> NegotiatedContext:
        """The accepted presentation context for ``sop_class`` on which we are
        SCU (``as_scu``), or SCP (to send the requests an SCP invokes: N-EVENT-REPORT).

        :raises LocalProtocolError: none was accepted.
        """
        if self.negotiated is None:
            raise LocalProtocolError("association is not established")
        context = self.negotiated.context_for(sop_class, transfer_syntax, as_scu=as_scu)
        if context is None:
            wanted = f"{UID(sop_class).name}" + (f" in {UID(transfer_syntax).name}" if transfer_syntax else "")
            role = "SCU" if as_scu else "SCP"
            raise LocalProtocolError(f"no accepted presentation context for {wanted} with us as {role}")
        return context

    def _request(self, sop_class: str, command: dict[str, Any], dataset: Any = None, *, as_scu: bool = True) -> Deferred:
        """Send a request on the context of ``sop_class``; fire with the final Response."""
        try:
            context = self.context_for(sop_class, as_scu=as_scu)
            command.setdefault("CommandDataSetType", NO_DATASET if dataset is None else 0x0001)
            operation = self.start_operation(context, command, dataset)
        except Exception as exc:
            return defer.fail(exc)
        return operation.result

    # -- C-ECHO ----------------------------------------------------------------------

    def echo(self) -> Deferred:
        """C-ECHO (PS3.7 9.1.5): fires with the status, 0x0000 when the peer is there."""
        command = {"CommandField": CommandField.C_ECHO_RQ, "AffectedSOPClassUID": VERIFICATION}
        return self._request(VERIFICATION, command).addCallback(lambda response: response.status)

    # -- C-STORE ------------------------------------------------------------------------

    def store(
        self,
        dataset: Dataset | str | Path | Part10Info,
        *,
        priority: int = Priority.MEDIUM,
        move_originator: tuple[str, int] | None = None,
    ) -> Deferred:
        """C-STORE (PS3.7 9.1.1) one instance; fires with the :class:`Response`.

        :param dataset: a pydicom Dataset, or the path of a Part 10 file (or
            of a bare data set in an uncompressed syntax, no File Meta).  A
            file whose transfer syntax the peer accepted is sent as raw bytes,
            unparsed, read from disk as the peer takes it; otherwise pydicom
            re-encodes it among the uncompressed syntaxes.  A compressed file
            whose syntax the peer did not accept is decompressed (pydicom, in a
            thread) and sent in an uncompressed syntax the peer took, as
            :attr:`decompress` (else ``[node] decompress``) allows; otherwise it
            fails with a clear error.  (A compressed Dataset given here is never
            decompressed: ``dataset.decompress()`` is the caller's to call.)
            For a path the C-STORE-RQ names the SOP Class and Instance UIDs
            of the file's File Meta Information (of its data set when it is
            re-encoded); given a :class:`Part10Info` instead (a file as
            :func:`~dimsekit.datasets.dataset_file_info` read it, its UIDs
            possibly replaced), that one's, either way: ``dimsekit store``
            passes the data set's own UIDs so.
        :param move_originator: (AE title, Message ID) of the C-MOVE this
            store is a sub-operation of.
        """
        try:
            plan = self._store_plan(dataset)
        except Exception as exc:
            return defer.fail(exc)
        if not isinstance(plan, _Reencode):
            return self._send_store(plan, priority, move_originator)
        # pydicom reads, maybe decompresses, and re-encodes the file: in a thread, not the
        # reactor's (a C-MOVE to a peer that takes only Implicit VR does it per instance)
        pool = getattr(self.reactor, "getThreadPool", None)
        if pool is None:  # a test's fake reactor: here and now
            d = defer.maybeDeferred(self._reencoded, plan.info, plan.given, plan.decompress)
        else:
            d = threads.deferToThreadPool(
                self.reactor, pool(), self._reencoded, plan.info, plan.given, plan.decompress)
        return d.addCallback(self._send_store, priority, move_originator)

    def _node_config(self) -> Any:
        """``[node]`` of the AE's configuration, or None (a bare ServiceUser: the defaults)."""
        config = getattr(getattr(self, "ae", None), "config", None)
        return config.node if config is not None else None

    def _max_decoded_bytes(self) -> int | None:
        """``[node] max_decoded_mb`` in bytes, or None (the default)."""
        node = self._node_config()
        return node.max_decoded_mb << 20 if node is not None else None

    def _decompress_policy(self) -> str:
        if self.decompress is not None:
            return self.decompress
        node = self._node_config()
        return node.decompress if node is not None else "lossless"

    def _send_store(
        self, plan: tuple[NegotiatedContext, Any, str, str], priority: int, move_originator: tuple[str, int] | None,
    ) -> Deferred:
        try:
            context, payload, sop_class, sop_instance = plan
            command: dict[str, Any] = {
                "CommandField": CommandField.C_STORE_RQ,
                "AffectedSOPClassUID": sop_class,
                "AffectedSOPInstanceUID": sop_instance,
                "Priority": int(priority),
                "CommandDataSetType": 0x0001,
            }
            if move_originator is not None:
                command["MoveOriginatorApplicationEntityTitle"] = move_originator[0]
                command["MoveOriginatorMessageID"] = int(move_originator[1])
            operation = self.start_operation(context, command, payload)
        except Exception as exc:
            return defer.fail(exc)
        return operation.result

    def _reencoded(
        self, info: Part10Info, given: bool = False, decompress: bool = False,
    ) -> tuple[NegotiatedContext, bytes, str, str]:
        """A file's data set read (its pixel data decoded when ``decompress``) and encoded
        for a context the peer accepted (run in a thread)."""
        from pydicom import dcmread

        try:
            dataset = dcmread(info.path, force=not info.has_meta)
        except Exception as exc:  # pydicom raises many kinds on a broken data set
            raise DatasetError(f"{info.path}: cannot read its data set to re-encode it ({exc})") from exc
        if decompress:  # then it is uncompressed, as any other re-encoded below
            try:
                decompressed(dataset, self._max_decoded_bytes())
            except DatasetError as exc:
                raise DatasetError(f"{info.path}: {exc}") from exc
        if given:
            context = self._uncompressed_context(info.sop_class_uid)
            return context, encode_dataset(dataset, context.transfer_syntax), info.sop_class_uid, info.sop_instance_uid
        context, dataset, sop_class, sop_instance = self._store_plan(dataset)  # type: ignore[misc]
        return context, encode_dataset(dataset, context.transfer_syntax), sop_class, sop_instance

    def _accepted_uncompressed(self, sop_class: str) -> NegotiatedContext | None:
        """The accepted context of ``sop_class`` in an uncompressed syntax (the preferred one), or None."""
        for ts in ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2", DEFLATED, "1.2.840.10008.1.2.2"):
            context = self.negotiated.context_for(sop_class, ts, as_scu=True)
            if context is not None:
                return context
        return None

    def _uncompressed_context(self, sop_class: str) -> NegotiatedContext:
        """The accepted context to send an uncompressed data set of ``sop_class`` on."""
        return self._accepted_uncompressed(sop_class) or self.context_for(sop_class)

    def _store_plan(self, dataset: Any) -> tuple[NegotiatedContext, Any, str, str] | _Reencode:
        if isinstance(dataset, str | Path | Part10Info):
            given = isinstance(dataset, Part10Info)
            info = dataset if isinstance(dataset, Part10Info) else dataset_file_info(dataset)
            sop_class, sop_instance = info.sop_class_uid, info.sop_instance_uid
            exact = self.negotiated.context_for(sop_class, info.transfer_syntax, as_scu=True)
            if exact is not None:
                return exact, _FileData(info), sop_class, sop_instance
            if info.transfer_syntax not in _REENCODABLE:
                why = "the peer accepted no uncompressed syntax for it either"
                if self._accepted_uncompressed(sop_class) is not None:
                    why = decompressible(info.transfer_syntax, self._decompress_policy())
                    if why is None:
                        return _Reencode(info, given, decompress=True)
                raise DatasetError(
                    f"{info.path}: stored in {UID(info.transfer_syntax).name}, which the peer did not "
                    f"accept for {UID(sop_class).name}; not decompressed: {why}"
                )
            return _Reencode(info, given)
        if not isinstance(dataset, Dataset):
            raise LocalProtocolError(f"store() takes a pydicom Dataset or a file path, not {type(dataset).__name__}")
        sop_class = str(dataset.SOPClassUID)
        sop_instance = str(dataset.SOPInstanceUID)
        source_ts = str(getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", "") or "")
        if source_ts and source_ts not in _REENCODABLE:
            context = self.negotiated.context_for(sop_class, source_ts, as_scu=True)
            if context is None:
                raise DatasetError(
                    f"{sop_instance}: encoded in {UID(source_ts).name}, which the peer did not accept"
                )
            return context, dataset, sop_class, sop_instance
        return self._uncompressed_context(sop_class), dataset, sop_class, sop_instance

    # -- C-FIND / C-GET / C-MOVE -------------------------------------------------------------

    def _retrieve_like(
        self,
        field: CommandField,
        identifier: Dataset,
        model: str,
        extra: dict[str, Any],
        on_pending: Callable[[Response], object] | None,
        total_timeout: float | None,
        priority: int,
    ) -> DimseOperation:
        try:
            context = self.context_for(model)
            command = {
                "CommandField": field,
                "AffectedSOPClassUID": model,
                "Priority": int(priority),
                "CommandDataSetType": 0x0001,
                **extra,
            }
            return self.start_operation(
                context, command, identifier, on_pending=on_pending, total_timeout=total_timeout
            )
        except Exception as exc:
            return _failed_operation(self, exc)

    def find(
        self,
        identifier: Dataset,
        model: str = STUDY_ROOT_FIND,
        *,
        priority: int = Priority.MEDIUM,
        on_pending: Callable[[Response], object] | None = None,
        total_timeout: float | None = None,
    ) -> DimseOperation:
        """C-FIND (PS3.7 9.1.2): each match arrives as a pending response.

        :param total_timeout: seconds after which the whole operation fails
            with :class:`~dimsekit.errors.DIMSETimeout` (and the association is
            aborted) however many pending responses keep arriving."""
        return self._retrieve_like(CommandField.C_FIND_RQ, identifier, model, {}, on_pending, total_timeout, priority)

    def get(
        self,
        identifier: Dataset,
        model: str = STUDY_ROOT_GET,
        *,
        on_store: Callable[..., Any] | None = None,
        priority: int = Priority.MEDIUM,
        on_pending: Callable[[Response], object] | None = None,
        total_timeout: float | None = None,
    ) -> DimseOperation:
        """C-GET (PS3.7 9.1.3): the instances come back as C-STORE sub-operations
        on this association, each handed to ``on_store(request)`` (a
        :class:`~dimsekit.scp.Request`; return a status), which needs the SCP
        role for their storage SOP classes (propose it with ``roles=`` when
        associating)."""
        if on_store is not None:
            self.handlers[("C-STORE", None)] = on_store
        operation = self._retrieve_like(
            CommandField.C_GET_RQ, identifier, model, {}, on_pending, total_timeout, priority
        )
        if on_store is not None:
            # Once the C-GET is over (its final response, or its failure): not when
            # its Deferred is cancelled, as instances may come until the peer answers.
            operation.when_ended(lambda: self._forget_store_handler(on_store))
        return operation

    def _forget_store_handler(self, handler: Any) -> None:
        if self.handlers.get(("C-STORE", None)) is handler:
            del self.handlers[("C-STORE", None)]

    def move(
        self,
        identifier: Dataset,
        destination: str,
        model: str = STUDY_ROOT_MOVE,
        *,
        priority: int = Priority.MEDIUM,
        on_pending: Callable[[Response], object] | None = None,
        total_timeout: float | None = None,
    ) -> DimseOperation:
        """C-MOVE (PS3.7 9.1.4) to the AE titled ``destination``."""
        return self._retrieve_like(
            CommandField.C_MOVE_RQ, identifier, model, {"MoveDestination": destination},
            on_pending, total_timeout, priority,
        )

    def cancel(self, operation: DimseOperation) -> None:
        """C-CANCEL (PS3.7 9.3.2.3) a find, get or move in progress."""
        operation.cancel()

    # -- DIMSE-N ----------------------------------------------------------------------------

    def n_event_report(self, sop_class: str, sop_instance: str, event_type_id: int, dataset: Any = None) -> Deferred:
        """N-EVENT-REPORT (PS3.7 10.1.1); fires with the :class:`Response`.

        The SCP of ``sop_class`` invokes it (PS3.7 10.1.1): it goes out on a
        context where we have the SCP role -- as acceptor by default, as
        requestor when we proposed the SCP role (role selection)."""
        command = {
            "CommandField": CommandField.N_EVENT_REPORT_RQ,
            "AffectedSOPClassUID": sop_class,
            "AffectedSOPInstanceUID": sop_instance,
            "EventTypeID": int(event_type_id),
        }
        return self._request(sop_class, command, dataset, as_scu=False)

    def n_get(self, sop_class: str, sop_instance: str, attribute_identifiers: Sequence[int] = ()) -> Deferred:
        """N-GET (PS3.7 10.1.2); empty ``attribute_identifiers`` asks for every attribute."""
        command: dict[str, Any] = {
            "CommandField": CommandField.N_GET_RQ,
            "RequestedSOPClassUID": sop_class,
            "RequestedSOPInstanceUID": sop_instance,
        }
        if attribute_identifiers:
            command["AttributeIdentifierList"] = tuple(int(t) for t in attribute_identifiers)
        return self._request(sop_class, command)

    def n_set(self, sop_class: str, sop_instance: str, modifications: Dataset) -> Deferred:
        """N-SET (PS3.7 10.1.3) with the modification list as a data set."""
        command = {
            "CommandField": CommandField.N_SET_RQ,
            "RequestedSOPClassUID": sop_class,
            "RequestedSOPInstanceUID": sop_instance,
        }
        return self._request(sop_class, command, modifications)

    def n_action(self, sop_class: str, sop_instance: str, action_type_id: int, dataset: Any = None) -> Deferred:
        """N-ACTION (PS3.7 10.1.4)."""
        command = {
            "CommandField": CommandField.N_ACTION_RQ,
            "RequestedSOPClassUID": sop_class,
            "RequestedSOPInstanceUID": sop_instance,
            "ActionTypeID": int(action_type_id),
        }
        return self._request(sop_class, command, dataset)

    def n_create(self, sop_class: str, sop_instance: str | None = None, dataset: Any = None) -> Deferred:
        """N-CREATE (PS3.7 10.1.5); without ``sop_instance`` the SCP assigns one
        (it comes back as the response's AffectedSOPInstanceUID)."""
        command: dict[str, Any] = {"CommandField": CommandField.N_CREATE_RQ, "AffectedSOPClassUID": sop_class}
        if sop_instance:
            command["AffectedSOPInstanceUID"] = sop_instance
        return self._request(sop_class, command, dataset)

    def n_delete(self, sop_class: str, sop_instance: str) -> Deferred:
        """N-DELETE (PS3.7 10.1.6)."""
        command = {
            "CommandField": CommandField.N_DELETE_RQ,
            "RequestedSOPClassUID": sop_class,
            "RequestedSOPInstanceUID": sop_instance,
        }
        return self._request(sop_class, command)
