"""C-MOVE and C-GET SCP for the Patient Root and Study Root models (PS3.4 C.4.2, C.4.3).

The identifier names what to retrieve by unique keys (:func:`parse_retrieve`):
the Query/Retrieve Level and its unique key (one value, or a list of UIDs at
STUDY, SERIES and IMAGE level), plus the unique keys of the levels above when
the requestor gives them.  The instances are looked up in the index (their
SOP class, transfer syntax and file), then sent one C-STORE sub-operation at
a time:

* C-MOVE: on a new association to the Move Destination, looked up in the
  known-AE table (``[[remote]]``); it proposes a context per SOP class with
  the uncompressed transfer syntaxes plus one per compressed syntax the
  files are in.  Each sub-C-STORE carries Move Originator AE Title and
  Message ID.  An unknown destination: A801H, nothing sent.
* C-GET: on the requestor's own association, on the storage contexts it
  proposed with the SCP role for itself (role selection); an instance whose
  SOP class/transfer syntax it did not offer is a failed sub-operation.

Pending responses (FF00) give the Remaining, Completed, Failed and Warning
counts: after the first sub-operation, then after a sub-operation at most
every :data:`PENDING_INTERVAL` (0.1 s).  PS3.4 C.4.2.3.1 and C.4.3.3.1 make
them optional; one after every sub-operation cost up to a fifth of the rate of a
study of small instances (benchmarks/README.md, session 25), and ten a second
are progress enough for any display.  A C-CANCEL is honoured between
sub-operations (the one in flight is allowed to finish and is counted):
final FE00 with the counts, Remaining = those never started.

Final status (PS3.4 C.4.2.3.1, C.4.3.3.1): 0000H all completed; B000H some
failed or had warnings (Failed SOP Instance UID List in the identifier);
A702H all failed (same list; also when the destination cannot be reached);
A900H a bad identifier; C000H the index cannot be read.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.python.failure import Failure

from dimsekit.datasets import decompressible
from dimsekit.dimse import status as dimse_status
from dimsekit.errors import for_log
from dimsekit.readahead import ReadAhead
from dimsekit.registry import UNCOMPRESSED_TRANSFER_SYNTAXES
from dimsekit_plugins.qr.common import QRUnavailable, Shield, identifier_of, index_for, model_for
from dimsekit_plugins.qr.matching import Condition, condition_for, where
from dimsekit_plugins.qr.model import (
    FROM_CLAUSES,
    IMAGE,
    KEYS,
    PATIENT,
    UNIQUE_KEYS,
    IdentifierError,
    InformationModel,
    parse_identifier,
)

__all__ = ["handle_get", "handle_move", "parse_retrieve", "retrieve_sql", "contexts_for", "final_status", "Tally"]

_log = Logger(namespace="dimsekit.qr")

#: PS3.8: at most 128 presentation contexts in an A-ASSOCIATE-RQ.
MAX_CONTEXTS = 128
STATUS_ALL_FAILED = 0xA702
STATUS_SOME_FAILED = 0xB000
STATUS_UNKNOWN_DESTINATION = 0xA801
KEYS_TAGS = {"PatientID": 0x00100020, "StudyInstanceUID": 0x0020000D,
             "SeriesInstanceUID": 0x0020000E, "SOPInstanceUID": 0x00080018}


def parse_retrieve(identifier: Dataset | None, model: InformationModel) -> tuple[str, list[Condition]]:
    """(level, SQL conditions) of a C-MOVE/C-GET identifier; only unique keys select.

    :raises IdentifierError: no level, a key below it, no value for the
        level's unique key, or a wild card in a unique key.
    """
    query = parse_identifier(identifier, model, match=False)  # level and hierarchy checks
    level = query.level
    depth = model.depth(level)
    conditions: list[Condition] = []
    for upper in model.levels[: depth + 1]:
        keyword = UNIQUE_KEYS[upper]
        key = query.key(keyword)
        if key is None or key.empty:
            if upper == level:
                raise IdentifierError(f"no {keyword} to retrieve at the {level} level", (KEYS_TAGS[keyword],))
            continue
        value = key.value
        text = _text(value)
        if "*" in text or "?" in text:
            raise IdentifierError(f"{keyword}: wild cards are not allowed in a retrieve", (key.tag,))
        if upper == PATIENT:
            if "\\" in text:
                raise IdentifierError(f"{keyword}: one value only", (key.tag,))
            conditions.append(Condition("p.patient_id = ?", (text.strip(),)))
            conditions.extend(_issuer_condition(query))
            continue
        spec = KEYS[keyword]
        assert spec.column is not None
        if upper != level and "\\" in text:
            raise IdentifierError(f"{keyword}: one value only above the {level} level", (key.tag,))
        conditions.append(condition_for(spec.column, "UI", value))
    return level, conditions


def _issuer_condition(query: Any) -> list[Condition]:
    """Issuer of Patient ID beside a Patient ID: the patient of that issuer only.

    A Patient ID is unique only within its issuer (PS3.3 C.7.1.1): two
    hospitals' patients may share one, and a retrieve naming the issuer must
    not send the other patient's images.  Without it (or empty), the
    Patient ID alone selects, as the baseline behaviour has it.
    """
    key = query.key("IssuerOfPatientID")
    if key is None or key.empty:
        return []
    text = _text(key.value).strip(" ")
    if "\\" in text or "*" in text or "?" in text:
        raise IdentifierError("IssuerOfPatientID: one value, no wild cards, in a retrieve", (key.tag,))
    return [Condition("p.issuer_of_patient_id = ?", (text,))]


def _text(value: Any) -> str:
    """A key's value as it came: its values joined by backslashes."""
    return "\\".join(value) if isinstance(value, list) else str(value)


def retrieve_sql(conditions: list[Condition]) -> tuple[str, tuple[Any, ...]]:
    """The instances selected: (SOP Instance UID, SOP Class UID, transfer syntax, relative path)."""
    clause, params = where(conditions)
    sql = (
        "SELECT i.sop_instance_uid, i.sop_class_uid, i.transfer_syntax_uid, i.path"
        f" FROM {FROM_CLAUSES[IMAGE]} {clause}"
        " ORDER BY st.study_instance_uid, se.series_number, se.series_instance_uid,"
        " i.instance_number, i.sop_instance_uid"
    )
    return sql, params


def contexts_for(
    instances: list[tuple[str, str, str, str]], decompress: str = "never",
) -> list[tuple[str, list[str]]]:
    """Presentation contexts to propose to a move destination for ``instances``.

    Per SOP class: one with the uncompressed transfer syntaxes (files in any
    of them can be sent, re-encoded when needed), and one per other syntax a
    file is in (sent as stored).  A compressed file that ``decompress`` (``[node]
    decompress``) lets the node decode has its SOP class's uncompressed context
    proposed too: sent decompressed if the destination refuses its own syntax.
    At most 128; instances left without a context fail.
    """
    contexts: list[tuple[str, list[str]]] = []
    seen: set[tuple[str, str]] = set()

    def add(sop_class: str, syntax: str) -> None:
        if (sop_class, syntax) not in seen:
            seen.add((sop_class, syntax))
            contexts.append((sop_class, [syntax] if syntax else list(UNCOMPRESSED_TRANSFER_SYNTAXES)))

    for _uid, sop_class, syntax, _path in instances:
        if syntax in UNCOMPRESSED_TRANSFER_SYNTAXES:
            add(sop_class, "")
            continue
        add(sop_class, syntax)
        if decompressible(syntax, decompress) is None:
            add(sop_class, "")
    return contexts[:MAX_CONTEXTS]


@dataclass(slots=True)
class Tally:
    """Sub-operation counts and the failed instances."""

    total: int
    completed: int = 0
    failed: int = 0
    warning: int = 0
    started: int = 0
    failed_uids: list[str] = field(default_factory=list)

    def fields(self, *, remaining: bool) -> dict[str, int]:
        counts = {
            "NumberOfCompletedSuboperations": self.completed,
            "NumberOfFailedSuboperations": self.failed,
            "NumberOfWarningSuboperations": self.warning,
        }
        if remaining:
            counts = {"NumberOfRemainingSuboperations": self.total - self.started, **counts}
        return counts

    def count(self, uid: str, outcome: Any) -> None:
        """Count one sub-operation by its C-STORE response (or the failure that stopped it)."""
        status = getattr(outcome, "status", None)
        category = dimse_status.category(status) if isinstance(status, int) else None
        if category is dimse_status.Category.SUCCESS:
            self.completed += 1
        elif category is dimse_status.Category.WARNING:
            self.warning += 1
        else:
            self.failed += 1
            self.failed_uids.append(uid)


def failed_identifier(tally: Tally) -> Dataset | None:
    """The identifier of a final response: Failed SOP Instance UID List, when any failed."""
    if not tally.failed_uids:
        return None
    ds = Dataset()
    ds.FailedSOPInstanceUIDList = list(tally.failed_uids)
    return ds


def final_status(tally: Tally) -> int:
    """0000H all completed, A702H all failed, B000H anything else (PS3.4 C.4.2.3.1, C.4.3.3.1)."""
    if tally.failed == 0 and tally.warning == 0:
        return 0x0000
    if tally.completed == 0 and tally.warning == 0:
        return STATUS_ALL_FAILED
    return STATUS_SOME_FAILED


#: how many times in a row a C-MOVE associates again with a destination that aborted (or
#: dropped) the association, for the sub-operations left (as ``dimsekit store --max-aborts``)
MAX_REASSOCIATIONS = 3
#: seconds between two pending responses at least (the first sub-operation's goes out at once);
#: ``[plugins.queryretrieve] pending_interval`` (plugin.py) sets it
PENDING_INTERVAL = 0.1


def handle_move(request: Any) -> AsyncIterator[tuple[Any, ...]]:
    """C-MOVE handler (an async generator of responses)."""
    return _retrieve(request, move=True)


def handle_get(request: Any) -> AsyncIterator[tuple[Any, ...]]:
    """C-GET handler (an async generator of responses)."""
    return _retrieve(request, move=False)


async def _associate(shield: Shield, ae: Any, remote: Any, instances: list[Any]) -> Any:
    """An association with a C-MOVE destination proposing what ``instances`` need.

    :raises CancelledError: a C-CANCEL came first (an association made too late is aborted).
    """
    try:
        return await shield.wait(ae.associate(
            remote.host, remote.port, called=remote.ae_title, tls=remote.tls,
            contexts=contexts_for(instances, ae.config.node.decompress)))
    except CancelledError:
        await shield.settle()
        late = shield.outcome
        if not isinstance(late, Failure) and late is not None:
            late.abort("C-MOVE cancelled")
        raise


async def _retrieve(request: Any, *, move: bool) -> AsyncIterator[tuple[Any, ...]]:
    name = "C-MOVE" if move else "C-GET"
    model, refusal = model_for(request, name)
    if model is None:
        yield refusal
        return
    association = request.association
    ae = association.ae
    remote = None
    if move:
        destination = str(request.command.get("MoveDestination") or "").strip()
        remote = ae.config.remote(destination) if destination else None
        if remote is None:
            _log.warn("{op} from {peer} to unknown destination {dest!r} refused (A801)",
                      op=name, peer=association.remote_ae_title, dest=destination)
            yield STATUS_UNKNOWN_DESTINATION, None, {
                "ErrorComment": f"Move Destination {destination!r} is not a known AE ([[remote]])"}
            return
    try:
        _level, conditions = parse_retrieve(identifier_of(request), model)
        index = index_for(ae)
    except IdentifierError as exc:
        _log.info("{op} from {peer} refused (A900): {why}", op=name, peer=association.remote_ae_title, why=for_log(exc))
        fields: dict[str, Any] = {"ErrorComment": str(exc)}
        if exc.offending:
            fields["OffendingElement"] = list(exc.offending)
        yield 0xA900, None, fields
        return
    except QRUnavailable as exc:
        _log.warn("{op} from {peer}: unable to process (C000): {why}", op=name, peer=association.remote_ae_title,
                  why=for_log(exc))
        yield 0xC000, None, {"ErrorComment": str(exc)}
        return
    shield = Shield()
    sql, params = retrieve_sql(conditions)
    try:
        instances = await shield.wait(index.all(sql, params))
    except CancelledError:
        await shield.settle()
        yield 0xFE00, None, Tally(total=0).fields(remaining=False)  # nothing started: zero counts
        return
    root = index.path.parent
    tally = Tally(total=len(instances))
    if not instances:
        yield 0x0000, None, tally.fields(remaining=False)
        return
    target = association
    originator = None
    sub = None
    if move:
        assert remote is not None
        originator = (association.remote_ae_title, request.message_id)
        try:
            sub = await _associate(shield, ae, remote, instances)
        except CancelledError:
            yield 0xFE00, None, tally.fields(remaining=True)
            return
        except Exception as exc:
            _log.warn("C-MOVE to {dest}: cannot associate ({error}); {n} sub-operation(s) failed",
                      dest=remote.ae_title, error=exc, n=len(instances))
            for uid, *_rest in instances:
                tally.failed += 1
                tally.failed_uids.append(uid)
            yield STATUS_ALL_FAILED, failed_identifier(tally), {
                **tally.fields(remaining=False),
                "ErrorComment": f"cannot associate with {remote.ae_title}: {exc}"}
            return
        target = sub
    priority = int(request.command.get("Priority", 0) or 0)
    clock = association.reactor
    last_pending: float | None = None
    interrupted = False
    reassociations = 0  # in a row, without a response from the destination between them
    top = str(root)  # (os.path: a Path per instance cost 6 us)
    paths = [os.path.join(top, *relative.split("/")) for _uid, _sop_class, _syntax, relative in instances]
    ahead = ReadAhead(clock, paths)  # the next files from the disk while this one goes out
    try:
        for n, (uid, _sop_class, _syntax, _relative) in enumerate(instances):
            if request.cancelled:
                break
            if sub is not None and sub.ended is not None and reassociations < MAX_REASSOCIATIONS:
                # The destination aborted (or dropped) the association: the sub-operation in
                # flight failed; the ones left go on a new association -- a glitch must not
                # fail a thousand instances -- at most MAX_REASSOCIATIONS times in a row.
                reassociations += 1
                assert remote is not None
                left = instances[n:]
                _log.info("C-MOVE to {dest}: the association ended ({why}); associating again for the {n} "
                          "sub-operation(s) left", dest=remote.ae_title, why=sub.ended, n=len(left))
                try:
                    sub = target = await _associate(shield, ae, remote, left)
                except CancelledError:
                    interrupted = True
                    break
                except Exception as exc:  # the sub-operations left fail on the ended association
                    _log.warn("C-MOVE to {dest}: cannot associate again ({error})", dest=remote.ae_title, error=exc)
            tally.started += 1
            ahead.at(n)
            try:
                response = await shield.wait(target.store(paths[n], priority=priority, move_originator=originator))
            except CancelledError:
                await shield.settle()  # the sub-operation in flight ends first
                tally.count(uid, shield.outcome)
                interrupted = True
                break
            except Exception as exc:
                _log.warn("{op} sub-operation for {uid} failed: {error}", op=name, uid=uid, error=exc)
                tally.count(uid, None)
            else:
                tally.count(uid, response)
                reassociations = 0
            now = clock.seconds()
            if last_pending is not None and now - last_pending < PENDING_INTERVAL:
                continue  # (a C-CANCEL is seen at the top of the loop)
            last_pending = now
            try:
                yield 0xFF00, None, tally.fields(remaining=True)
            except CancelledError:  # a C-CANCEL-RQ read while this response went out
                interrupted = True
                break
        if request.cancelled or interrupted:
            yield 0xFE00, failed_identifier(tally), tally.fields(remaining=True)
            return
        status = final_status(tally)
        _log.info("{op} of {n} instance(s) for {peer}: {done} completed, {failed} failed, {warn} warning(s)",
                  op=name, n=tally.total, peer=association.remote_ae_title, done=tally.completed,
                  failed=tally.failed, warn=tally.warning)
        yield status, failed_identifier(tally), tally.fields(remaining=False)
    finally:
        ahead.stop()
        await shield.settle()
        if sub is not None and sub.established and not sub.ended:
            try:
                await sub.release()
            except Exception as exc:  # the destination went away: nothing more to do
                _log.info("C-MOVE: releasing the association to {dest} failed: {error}",
                          dest=remote.ae_title if remote else "?", error=exc)
