"""What the C-FIND, C-GET and C-MOVE handlers share: the identifier, the index, cancel-safe waits."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from weakref import WeakKeyDictionary

from pydicom.dataset import Dataset
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from dimsekit.dimse.status import SOP_CLASS_NOT_SUPPORTED
from dimsekit.scu import (
    PATIENT_ROOT_FIND,
    PATIENT_ROOT_GET,
    PATIENT_ROOT_MOVE,
    STUDY_ROOT_FIND,
    STUDY_ROOT_GET,
    STUDY_ROOT_MOVE,
)
from dimsekit_plugins.qr.index import QueryIndex
from dimsekit_plugins.qr.model import PATIENT_ROOT, STUDY_ROOT, IdentifierError, InformationModel

__all__ = [
    "MODELS",
    "QRUnavailable",
    "identifier_of",
    "index_for",
    "model_for",
    "set_index",
    "Shield",
]

#: SOP class -> its information model.
MODELS: dict[str, InformationModel] = {
    str(PATIENT_ROOT_FIND): PATIENT_ROOT,
    str(PATIENT_ROOT_MOVE): PATIENT_ROOT,
    str(PATIENT_ROOT_GET): PATIENT_ROOT,
    str(STUDY_ROOT_FIND): STUDY_ROOT,
    str(STUDY_ROOT_MOVE): STUDY_ROOT,
    str(STUDY_ROOT_GET): STUDY_ROOT,
}

INDEX_NAME = "index.sqlite"

_log = Logger(namespace="dimsekit.qr")


def model_for(request: Any, operation: str) -> tuple[InformationModel | None, tuple[int, None, dict[str, str]]]:
    """The information model the request's command names, or None and the response refusing it.

    The command's Affected SOP Class UID names the model (the presentation
    context's abstract syntax picked the handler).  A UID that is no query/retrieve
    model -- a peer's bug, a corrupted command -- is refused with 0122H
    (Refused: SOP Class not supported) and a log line.
    """
    uid = request.sop_class_uid
    model = MODELS.get(uid)
    if model is not None:
        return model, (0, None, {})
    _log.warn("{op} from {peer} refused (0122): its Affected SOP Class UID {uid!r} is no query/retrieve "
              "information model", op=operation, peer=request.association.remote_ae_title, uid=uid[:64])
    return None, (SOP_CLASS_NOT_SUPPORTED, None, {"ErrorComment": "Affected SOP Class UID is no Q/R information model"})


class QRUnavailable(Exception):
    """No index to query (no archive, or one without a SQLite index): status C000H."""

    status = 0xC000


def identifier_of(request: Any) -> Dataset:
    """The request's identifier, decoded.

    :raises IdentifierError: there is none, or it cannot be decoded.
    """
    try:
        dataset = request.dataset()
    except Exception as exc:  # DatasetError and whatever pydicom raised
        raise IdentifierError(f"cannot decode the identifier: {exc}") from None
    if dataset is None:
        raise IdentifierError("the request has no identifier")
    return dataset


#: AE -> its query index (set by :func:`set_index`, or found through the archive)
_indexes: WeakKeyDictionary[Any, QueryIndex] = WeakKeyDictionary()
#: index file -> the one QueryIndex reading it
_by_path: dict[Path, QueryIndex] = {}


def set_index(ae: Any, index: QueryIndex | None) -> None:
    """Make ``ae`` query ``index`` (tests, benchmarks, embedding); None forgets it."""
    if index is None:
        _indexes.pop(ae, None)
    else:
        _indexes[ae] = index


def index_for(ae: Any) -> QueryIndex:
    """The :class:`QueryIndex` over the archive of ``ae`` (the ``dimsekit_archive`` hook).

    :raises QRUnavailable: no archive, or one that keeps no SQLite index under a ``root``.
    """
    index = _indexes.get(ae)
    if index is not None and not index.closed:
        return index
    try:
        archive = ae.pm.hook.dimsekit_archive(config=ae.config)
    except Exception as exc:  # the archive cannot be opened (data directory locked, unwritable, ...)
        raise QRUnavailable(f"the archive cannot be opened: {exc}") from exc
    if archive is None:
        raise QRUnavailable("no archive to query: no plugin provides one (dimsekit_archive)")
    root = getattr(archive, "root", None)
    if root is None:
        raise QRUnavailable(f"the archive {archive!r} has no SQLite index this Q/R plugin can read")
    path = Path(root) / INDEX_NAME
    index = _by_path.get(path)
    if index is None or index.closed:
        index = _by_path[path] = QueryIndex(path, ae.reactor)
    # The built-in archive answers a C-STORE once durable and writes its row just after:
    # each query first waits for the writes under way.
    index.barrier = getattr(archive, "wait_for_index", None)
    _indexes[ae] = index
    return index


def archive_root(ae: Any) -> Path:
    """Where the archive's files are (relative paths in the index are under it)."""
    return index_for(ae).path.parent


class Shield:
    """Waits that a C-CANCEL may interrupt without interrupting the work waited for.

    The SCP runner answers a C-CANCEL by cancelling what the handler awaits.
    Awaiting :meth:`wait` instead gives the handler the CancelledError while the
    underlying work (a SQL call in a thread, a C-STORE sub-operation in
    flight) goes on; :meth:`settle` then waits for that work to end, so that
    nothing is left using a connection or an association behind our back.
    """

    def __init__(self) -> None:
        self.inflight: Deferred | None = None
        self.outcome: Any = None

    def wait(self, d: Deferred) -> Deferred:
        self.inflight = d
        outer: Deferred = Deferred()

        def done(result: Any) -> None:
            if self.inflight is d:
                self.inflight = None
            self.outcome = result
            if not outer.called:
                if isinstance(result, Failure):
                    outer.errback(result)
                else:
                    outer.callback(result)
            return None  # a failure seen after a cancel is not left unhandled

        d.addBoth(done)
        return outer

    def settle(self) -> Deferred:
        """Fires (with None) once the last work waited for has ended."""
        d = self.inflight
        waiter: Deferred = Deferred()
        if d is None or d.called:
            waiter.callback(None)
        else:
            d.addBoth(lambda _: waiter.callback(None))
        return waiter
