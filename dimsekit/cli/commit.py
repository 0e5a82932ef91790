"""Ask a storage commitment SCP to commit DICOM files (PS3.4 J, Push Model).

    dimsekit commit HOST PORT FILE|DIR... [--wait] [-to SECONDS] [--port N]

Sends one N-ACTION "Request Storage Commitment" (Action Type 1) with a new
Transaction UID and the SOP Class and Instance UIDs of the files (read from
their File Meta Information; directories give their files, subdirectories'
too with --recurse).  Without --wait the tool stops there.

With --wait it waits, up to -to/--timeout seconds after the N-ACTION
response, for the SCP's N-EVENT-REPORT with that Transaction UID:

* on the same association (the tool keeps it open);
* with --port N, on an association the SCP opens to this tool, which listens
  on port N (our AE title is -aet; the SCP must know it): the tool then
  releases its own association right after the N-ACTION response, as a
  modality that does not wait does.  It accepts the SCP's SCP/SCU role
  selection for the Storage Commitment Push Model SOP Class, taking the SCU
  role (the SCP must propose it: PS3.7 D.3.3.4).

Files that carry one SOP Instance UID (copies, one instance in several
transfer syntaxes) are one reference, and stderr says so.

Output: a line per instance, ``committed`` or ``failed`` with the Failure
Reason and its files, and a count.  Exit status 0 when the N-ACTION succeeded and (with
--wait) every instance is committed; 1 when any failed, no report came in
time, the N-ACTION was refused, or on rejection, abort or a refused
connection (a one-line reason on stderr); 2 on bad arguments or when no
file is a DICOM file.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from twisted.internet import defer, task
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from dimsekit.ae import ApplicationEntity
from dimsekit.cli import add_common_arguments
from dimsekit.cli._scu import end_cleanly, fail, make_ae
from dimsekit.cli.store import collect_files, with_data_set_uids
from dimsekit.datasets import DatasetError, first_int, part10_info
from dimsekit.dimse.status import Category, category, describe
from dimsekit.hookspecs import hookimpl
from dimsekit.nservice import is_valid_uid
from dimsekit.registry import ServiceClass
from dimsekit.uids import by_keyword

__all__ = ["add_arguments", "run", "read_references", "ReportWaiter"]

STORAGE_COMMITMENT_PUSH = by_keyword("StorageCommitmentPushModel")
STORAGE_COMMITMENT_INSTANCE = by_keyword("StorageCommitmentPushModelInstance")
REQUEST_STORAGE_COMMITMENT = 1

#: Failure Reason values in words (PS3.4 Annex J).
REASONS = {
    0x0110: "Processing failure",
    0x0112: "No such object instance",
    0x0213: "Resource limitation",
    0x0122: "Referenced SOP Class not supported",
    0x0119: "Class / Instance conflict",
    0x0131: "Duplicate transaction UID",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("paths", nargs="+", metavar="FILE|DIR", help="DICOM files (or directories of them) to commit")
    parser.add_argument("-r", "--recurse", action="store_true", help="take the files of subdirectories too")
    parser.add_argument("--wait", action="store_true", help="wait for the N-EVENT-REPORT and print the result")
    parser.add_argument(
        "--port", dest="listen_port", type=int, default=None, metavar="N",
        help="listen on port N for the report on an association the SCP opens (implies --wait)",
    )
    parser.add_argument("--listen-interface", default="", metavar="ADDRESS",
                        help="address to listen on with --port (default: all)")
    parser.add_argument("--transaction", metavar="UID", help="the Transaction UID (default: a new one)")


# -- input ---------------------------------------------------------------------------------------


def read_references(paths: list[str], recurse: bool = False, warn: Callable[[str], object] | None = None,
                    ) -> tuple[list[tuple[str, str, Path]], list[str]]:
    """(SOP Class UID, SOP Instance UID, file) of each DICOM file; and the problems found.

    The UIDs are the data set's, as ``dimsekit store`` sends them and an SCP stores the
    instance under them; ``warn(text)`` is told when the File Meta Information says
    otherwise (found against Orthanc: pydicom's ``rtplan.dcm`` has a Media Storage SOP
    Instance UID of its own, and its commitment failed for an instance stored under the
    data set's)."""
    files, missing = collect_files(paths, recurse)
    problems = [f"{m.path}: {m.reason}" for m in missing]
    references: list[tuple[str, str, Path]] = []
    for path, named in files:
        try:
            info = part10_info(path)
        except DatasetError as exc:
            error = str(exc)
        else:
            info, warning = with_data_set_uids(info)
            if warning is not None and warn is not None:
                warn(f"{path}: {warning}")
            references.append((info.sop_class_uid, info.sop_instance_uid, path))
            continue
        try:  # a data set without File Meta Information
            from pydicom import dcmread

            ds = dcmread(path, force=True, stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID"])
            references.append((str(ds.SOPClassUID), str(ds.SOPInstanceUID), path))
        except Exception:
            if named:
                problems.append(error)
    return references, problems


# -- waiting for the report -------------------------------------------------------------------------


class ReportWaiter:
    """Collects the N-EVENT-REPORT of one transaction, from whichever association brings it."""

    def __init__(self, transaction_uid: str) -> None:
        self.transaction_uid = transaction_uid
        self.result: Deferred = Deferred()
        self.done = False
        self.associations: list[Any] = []

    def handle(self, request: Any) -> int:
        """N-EVENT-REPORT handler: answer Success (we received it) -- or Processing failure
        for a report whose data set cannot be read: the SCP may send it again (PS3.4 J.3.3)."""
        try:
            dataset = request.dataset()
        except DatasetError as exc:
            print(f"dimsekit commit: an N-EVENT-REPORT that cannot be read ({exc}); answered 0x0110, "
                  "waiting for another", file=sys.stderr)
            return 0x0110
        txn = str(dataset.get("TransactionUID", "")) if dataset is not None else ""
        event_type = int(request.command.get("EventTypeID", 0))
        if txn != self.transaction_uid:
            print(f"dimsekit commit: ignoring a report for another transaction ({txn or 'none'})", file=sys.stderr)
        elif event_type not in (1, 2):
            print(f"dimsekit commit: ignoring a report with Event Type ID {event_type}", file=sys.stderr)
        elif not self.done:
            self.done = True
            self.associations.append(request.association)
            # on the next turn: our N-EVENT-REPORT-RSP goes out before whatever the
            # caller does next (a release must not overtake it)
            request.association.reactor.callLater(0, self._fire, (event_type, dataset))
        return 0x0000

    def _fire(self, value: Any) -> None:
        if not self.result.called:
            self.result.callback(value)

    @hookimpl
    def dimsekit_service_classes(self) -> list[ServiceClass]:
        # the listener with --port: the SCU role only (the SCP invokes N-EVENT-REPORT)
        return [
            ServiceClass(
                name="commitment-scu",
                sop_classes=(STORAGE_COMMITMENT_PUSH,),
                handlers={"N-EVENT-REPORT": self.handle},
                scp_role=False,
                scu_role=True,
            )
        ]


def _make_ae(reactor: Any, args: argparse.Namespace, waiter: ReportWaiter) -> ApplicationEntity:
    return make_ae(reactor, args, plugins=[waiter])


# -- the tool -----------------------------------------------------------------------------------------


@defer.inlineCallbacks
def run(reactor: Any, args: argparse.Namespace):
    if args.transaction is not None and not is_valid_uid(args.transaction):
        print(f"dimsekit commit: --transaction {args.transaction!r} is not a UID", file=sys.stderr)
        return 2
    if args.listen_port is not None and not 0 < args.listen_port < 65536:
        print(f"dimsekit commit: --port {args.listen_port} is not a TCP port", file=sys.stderr)
        return 2
    references, problems = read_references(
        args.paths, args.recurse, warn=lambda text: print(f"dimsekit commit: warning: {text}", file=sys.stderr))
    for problem in problems:
        print(f"dimsekit commit: {problem}", file=sys.stderr)
    if not references:
        print("dimsekit commit: no DICOM file to commit", file=sys.stderr)
        return 2
    if problems:
        return 1
    for path, first in _duplicates(references):
        print(f"dimsekit commit: {path}: the same SOP Instance UID as {first}; one reference for both",
              file=sys.stderr)
    transaction_uid = args.transaction or str(generate_uid())
    waiter = ReportWaiter(transaction_uid)
    ae = _make_ae(reactor, args, waiter)
    state: dict[str, Any] = {}
    try:
        code = yield _commit(reactor, args, ae, waiter, references, state)
    finally:
        listening = state.get("listening")
        if listening is not None:
            yield listening.stopListening()
        for incoming in waiter.associations:
            yield _until_ended(reactor, incoming, 2.0)
        yield end_cleanly(reactor, state.get("association"))
    return code


@defer.inlineCallbacks
def _commit(reactor: Any, args: argparse.Namespace, ae: ApplicationEntity, waiter: ReportWaiter,
            references: list[tuple[str, str, Path]], state: dict[str, Any]):
    wait = args.wait or args.listen_port is not None
    if args.listen_port is not None:
        try:
            state["listening"] = yield ae.listen(args.listen_port, interface=args.listen_interface)
        except Exception:
            return fail("commit", Failure())
    try:
        association = yield ae.associate(
            args.host, args.port, called=args.called, contexts=[STORAGE_COMMITMENT_PUSH], connect_timeout=args.timeout
        )
    except Exception:
        return fail("commit", Failure())
    state["association"] = association
    association.handlers[("N-EVENT-REPORT", STORAGE_COMMITMENT_PUSH)] = waiter.handle

    action = Dataset()
    action.TransactionUID = waiter.transaction_uid
    items = []
    unique: dict[str, str] = {}  # SOP Instance UID -> its first file's SOP Class UID, in file order
    for sop_class, sop_instance, _path in references:
        unique.setdefault(sop_instance, sop_class)
    for sop_instance, sop_class in unique.items():
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        items.append(item)
    action.ReferencedSOPSequence = items
    try:
        response = yield association.n_action(
            STORAGE_COMMITMENT_PUSH, STORAGE_COMMITMENT_INSTANCE, REQUEST_STORAGE_COMMITMENT, action
        )
    except Exception:
        return fail("commit", Failure())
    counted = f"{len(items)} instance(s)" + (f" in {len(references)} files" if len(items) != len(references) else "")
    line = f"N-ACTION Request Storage Commitment ({counted}), Transaction UID {waiter.transaction_uid}"
    if category(response.status) not in (Category.SUCCESS, Category.WARNING):
        comment = response.command.get("ErrorComment")
        print(f"dimsekit commit: {line}: {describe(response.status)}" + (f" ({comment})" if comment else ""),
              file=sys.stderr)
        return 1
    print(f"{line}: {describe(response.status)}")
    if not wait:
        yield _release(association)
        return 0
    if args.listen_port is not None:
        # the report comes on an association the SCP opens (unless it is quicker than our release)
        yield _release(association)
    timer = reactor.callLater(args.timeout, _give_up, waiter)
    try:
        event_type, report = yield waiter.result
    except _NoReport:
        if args.listen_port is not None:
            where = f"on port {args.listen_port}"
            hint = f" (does the SCP know AE {args.aet} at this host, port {args.listen_port}?)"
        else:  # Orthanc, for one, always reports on an association it opens
            where = "on the association"
            hint = (" (an SCP that reports on an association of its own needs --port N, "
                    f"and to know AE {args.aet} at this host and that port)")
        print(f"dimsekit commit: no N-EVENT-REPORT {where} within {args.timeout:g} s{hint}", file=sys.stderr)
        return 1
    finally:
        if timer.active():
            timer.cancel()
    if not association.ended:
        yield _release(association)
    return _print_report(event_type, report, references)


class _NoReport(Exception):
    pass


def _give_up(waiter: ReportWaiter) -> None:
    if not waiter.result.called:
        waiter.result.errback(_NoReport())


@defer.inlineCallbacks
def _release(association: Any):
    if association.established and not association.ended:
        try:
            yield association.release()
        except Exception:
            pass


@defer.inlineCallbacks
def _until_ended(reactor: Any, association: Any, timeout: float):
    """Give the SCP's association (the one that brought the report) a moment to be released."""
    deadline = reactor.seconds() + timeout
    while association.protocol is not None and not association.ended and reactor.seconds() < deadline:
        yield task.deferLater(reactor, 0.02, lambda: None)


def _duplicates(references: list[tuple[str, str, Path]]) -> list[tuple[Path, Path]]:
    """(file, the first file with its SOP Instance UID) of each file whose UID an earlier one has."""
    first: dict[str, Path] = {}
    found = []
    for _c, sop_instance, path in references:
        if sop_instance in first:
            found.append((path, first[sop_instance]))
        else:
            first[sop_instance] = path
    return found


def _print_report(event_type: int, report: Dataset | None, references: list[tuple[str, str, Path]]) -> int:
    named: dict[str, list[str]] = {}
    for _c, sop_instance, path in references:
        named.setdefault(sop_instance, []).append(str(path))
    files = {sop_instance: ", ".join(paths) for sop_instance, paths in named.items()}
    committed = [
        str(item.get("ReferencedSOPInstanceUID", ""))
        for item in (report.get("ReferencedSOPSequence", []) if report is not None else []) or []
    ]
    failed = [
        (str(item.get("ReferencedSOPInstanceUID", "")), first_int(item.get("FailureReason"), 0x0110))
        for item in (report.get("FailedSOPSequence", []) if report is not None else []) or []
    ]
    for uid in committed:
        print(f"committed  {uid}  {files.get(uid, '(not requested)')}")
    for uid, reason in failed:
        print(f"failed     {uid}  0x{reason:04X} {REASONS.get(reason, 'unknown reason')}  {files.get(uid, '(not requested)')}")
    unanswered = [uid for uid in files if uid not in set(committed) and uid not in {u for u, _ in failed}]
    for uid in unanswered:
        print(f"unanswered {uid}  {files[uid]}")
    print(f"Event Type {event_type}: {len(committed)} committed, {len(failed)} failed"
          + (f", {len(unanswered)} not in the report" if unanswered else ""))
    return 0 if event_type == 1 and not failed and not unanswered else 1
