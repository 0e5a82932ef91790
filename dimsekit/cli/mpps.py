"""Modality Performed Procedure Step SCU: N-CREATE, N-SET and N-GET of a step.

    dimsekit mpps create HOST PORT -k Modality=CT -k PatientID=123 [-f step.json]
    dimsekit mpps set HOST PORT UID --status COMPLETED -k "PerformedSeriesSequence[0].SeriesInstanceUID=1.2.3"
    dimsekit mpps get HOST PORT UID [PerformedProcedureStepStatus ...] [--json]

Attributes come from ``-f FILE`` (DICOM JSON, or a DICOM file) and then
``-k`` keys, like findscu's: ``Keyword=value``, ``(gggg,eeee)=value``,
``Keyword=`` (zero length), nested ``Sequence[0].Keyword=value``; a
backslash separates values.

``create`` fills what a modality would unless ``--no-defaults``: status IN
PROGRESS, start date and time now, Performed Station AE Title = ``-aet``, a
Performed Procedure Step ID, a Scheduled Step Attributes Sequence item with
a new Study Instance UID, and every other Type 2 attribute of PS3.4 Table
F.7.2-1 zero-length.  The step's SOP Instance UID is new (``--uid`` to give
it, ``--scp-uid`` to let the SCP assign it).  ``set --status COMPLETED`` (or
DISCONTINUED) also sets the end date and time to now unless given.
``get`` uses the MPPS Retrieve SOP Class (PS3.4 F.8); no attribute asks for all.

Output: the data set on stdout (``--json``: DICOM JSON) -- for ``create``
the attributes sent, with the SOP Class and Instance UIDs; for ``set`` the
modifications; for ``get`` what came back -- and the status on stderr.
Exit status 0 on Success or a Warning, 1 on a failure status (its Error
Comment, Error ID and attributes on stderr), rejection, abort, timeout or a
refused connection; 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from twisted.internet import defer
from twisted.python.failure import Failure

from dimsekit.cli import add_common_arguments
from dimsekit.cli._keys import BadKey, apply_keys, load_dataset, parse_key, tag_text
from dimsekit.cli._scu import end_cleanly, fail, make_ae
from dimsekit.datasets import (
    DatasetError,
    UnwritableElement,
    json_dict,
    read_in_full,
    readable_part,
)
from dimsekit.dimse.status import Category, category, describe
from dimsekit.errors import printable
from dimsekit.nservice import is_valid_uid, tag_name, to_tag
from dimsekit.uids import by_keyword

__all__ = ["add_arguments", "run", "parse_key", "apply_keys", "load_dataset", "create_defaults", "BadInput"]

MPPS = by_keyword("ModalityPerformedProcedureStep")
MPPS_RETRIEVE = by_keyword("ModalityPerformedProcedureStepRetrieve")
STATES = ("IN PROGRESS", "COMPLETED", "DISCONTINUED")

#: Type 2 attributes of an N-CREATE (PS3.4 Table F.7.2-1) filled zero-length by default.
_TYPE2 = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "ReferencedPatientSequence",
    "PerformedStationName", "PerformedLocation", "PerformedProcedureStepDescription",
    "PerformedProcedureTypeDescription", "ProcedureCodeSequence", "PerformedProcedureStepEndDate",
    "PerformedProcedureStepEndTime", "StudyID", "PerformedProtocolCodeSequence", "PerformedSeriesSequence",
)
_SCHEDULED_TYPE2 = (
    "ReferencedStudySequence", "AccessionNumber", "RequestedProcedureID", "RequestedProcedureDescription",
    "ScheduledProcedureStepID", "ScheduledProcedureStepDescription", "ScheduledProtocolCodeSequence",
)


#: A ``-k`` key or a ``-f`` file that cannot be used: the find/get/move tools' error.
BadInput = BadKey


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="N-CREATE a step (status IN PROGRESS)", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(create)
    _data_options(create)
    uid = create.add_mutually_exclusive_group()
    uid.add_argument("--uid", help="the step's SOP Instance UID (default: a new one)")
    uid.add_argument("--scp-uid", action="store_true", help="send no SOP Instance UID: the SCP assigns one")
    create.add_argument("--no-defaults", action="store_true", help="send exactly the -f/-k attributes")

    set_ = actions.add_parser("set", help="N-SET a step (e.g. --status COMPLETED)", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(set_)
    set_.add_argument("uid", help="the step's SOP Instance UID")
    _data_options(set_)
    set_.add_argument("--status", type=str.upper, choices=STATES, help="Performed Procedure Step Status to set")
    set_.add_argument("--no-defaults", action="store_true", help="no end date/time added for a final status")

    get = actions.add_parser("get", help="N-GET a step (MPPS Retrieve)", description=__doc__,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(get)
    get.add_argument("uid", help="the step's SOP Instance UID")
    get.add_argument("attributes", nargs="*", metavar="ATTRIBUTE",
                     help="keywords or tags (gggg,eeee) to return (default: all)")
    get.add_argument("--json", action="store_true", help="print DICOM JSON instead of a listing")


def _data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-f", "--file", help="attributes from a DICOM JSON file or a DICOM file")
    parser.add_argument("-k", "--key", action="append", default=[], metavar="KEY=VALUE",
                        help="set an attribute: Keyword=value, (gggg,eeee)=value, Seq[0].Keyword=value")
    parser.add_argument("--json", action="store_true", help="print DICOM JSON instead of a listing")


# -- building data sets ---------------------------------------------------------------------









def create_defaults(dataset: Dataset, ae_title: str, now: datetime | None = None) -> Dataset:
    """Fill what an N-CREATE of a step needs and was not given (see the module doc)."""
    now = now or datetime.now()
    dataset.setdefault("PerformedProcedureStepStatus", "IN PROGRESS")
    dataset.setdefault("PerformedProcedureStepStartDate", now.strftime("%Y%m%d"))
    dataset.setdefault("PerformedProcedureStepStartTime", now.strftime("%H%M%S"))
    dataset.setdefault("PerformedStationAETitle", ae_title)
    dataset.setdefault("PerformedProcedureStepID", now.strftime("%Y%m%d%H%M%S"))
    if "ScheduledStepAttributesSequence" not in dataset or not dataset.ScheduledStepAttributesSequence:
        dataset.ScheduledStepAttributesSequence = [Dataset()]
    for item in dataset.ScheduledStepAttributesSequence:
        item.setdefault("StudyInstanceUID", generate_uid())
        for keyword in _SCHEDULED_TYPE2:
            _empty(item, keyword)
    for keyword in _TYPE2:
        _empty(dataset, keyword)
    return dataset


def _empty(dataset: Dataset, keyword: str) -> None:
    if keyword not in dataset:
        setattr(dataset, keyword, [] if keyword.endswith("Sequence") else "")


def _gather(args: argparse.Namespace) -> Dataset:
    dataset = load_dataset(args.file) if args.file else Dataset()
    return apply_keys(dataset, args.key)


# -- output ------------------------------------------------------------------------------------


def _print(dataset: Dataset | None, as_json: bool) -> None:
    if dataset is None:
        dataset = Dataset()
    if as_json:
        dropped: list[UnwritableElement] = []  # values DICOM JSON cannot hold (a peer's)
        document = json_dict(dataset, on_unwritable=dropped.append)
        if dropped:
            print(f"dimsekit mpps: some attributes cannot be written as DICOM JSON and were left out ({dropped[0]})",
                  file=sys.stderr)
        print(json.dumps(document, indent=2, sort_keys=True))
    else:
        print(str(dataset))


def _report(action: str, uid: str, response: Any) -> int:
    """Status on stderr; the exit code for it."""
    status = response.status
    cls = category(status)
    line = f"{action} {uid}: {describe(status, 'mpps')}"
    details = []
    command = response.command
    if command.get("ErrorComment"):
        details.append(f"Error Comment {command['ErrorComment']!r}")
    if command.get("ErrorID") is not None:
        details.append(f"Error ID 0x{int(command['ErrorID']):04X}")
    identifiers = command.get("AttributeIdentifierList")
    if identifiers:
        tags = (identifiers,) if isinstance(identifiers, int) else identifiers
        details.append("attributes " + ", ".join(tag_name(t) for t in tags))
    if details:
        line += " (" + "; ".join(details) + ")"
    print(line, file=sys.stderr)
    return 0 if cls in (Category.SUCCESS, Category.WARNING) else 1


# -- running -----------------------------------------------------------------------------------


@defer.inlineCallbacks
def run(reactor: Any, args: argparse.Namespace):
    tool = f"mpps {args.action}"
    try:
        plan = _plan(args)
    except BadInput as exc:
        print(f"dimsekit {tool}: {exc}", file=sys.stderr)
        return 2
    ae = make_ae(reactor, args)
    state: dict[str, Any] = {}
    try:
        code = yield _run(reactor, args, ae, plan, state, tool)
    finally:
        yield end_cleanly(reactor, state.get("association"))
    return code


def _plan(args: argparse.Namespace) -> dict[str, Any]:
    if args.action == "get":
        if not is_valid_uid(args.uid):
            raise BadInput(f"{args.uid!r} is not a UID")
        try:
            tags = [int(to_tag(a)) for a in args.attributes]
        except ValueError as exc:
            raise BadInput(str(exc)) from None
        return {"sop_class": MPPS_RETRIEVE, "tags": tags}
    dataset = _gather(args)
    if args.action == "create":
        if not args.no_defaults:
            create_defaults(dataset, args.aet)
        uid = None if args.scp_uid else (args.uid or str(generate_uid()))
        if uid is not None and not is_valid_uid(uid):
            raise BadInput(f"{uid!r} is not a UID")
        return {"sop_class": MPPS, "dataset": dataset, "uid": uid}
    if not is_valid_uid(args.uid):
        raise BadInput(f"{args.uid!r} is not a UID")
    if args.status:
        dataset.PerformedProcedureStepStatus = args.status
        if args.status != "IN PROGRESS" and not args.no_defaults:
            now = datetime.now()
            dataset.setdefault("PerformedProcedureStepEndDate", now.strftime("%Y%m%d"))
            dataset.setdefault("PerformedProcedureStepEndTime", now.strftime("%H%M%S"))
    if not len(dataset):
        raise BadInput("nothing to set: give -k, -f or --status")
    return {"sop_class": MPPS, "dataset": dataset}


@defer.inlineCallbacks
def _run(reactor: Any, args: argparse.Namespace, ae: Any, plan: dict[str, Any], state: dict[str, Any], tool: str):
    try:
        association = yield ae.associate(
            args.host, args.port, called=args.called, contexts=[plan["sop_class"]], connect_timeout=args.timeout
        )
    except Exception:
        return fail(tool, Failure())
    state["association"] = association
    partial = False  # an N-GET's attributes shown without some that cannot be read
    try:
        if args.action == "create":
            response = yield association.n_create(MPPS, plan["uid"], plan["dataset"])
            uid = str(response.command.get("AffectedSOPInstanceUID") or plan["uid"] or "")
            code = _report("N-CREATE", uid or "(no UID)", response)
            shown = plan["dataset"]
            shown.SOPClassUID = MPPS
            if uid:
                shown.SOPInstanceUID = uid
        elif args.action == "set":
            response = yield association.n_set(MPPS, args.uid, plan["dataset"])
            code = _report("N-SET", args.uid, response)
            shown = plan["dataset"]
        else:
            response = yield association.n_get(MPPS_RETRIEVE, args.uid, plan["tags"])
            code = _report("N-GET", args.uid, response)
            shown = response.dataset
            if code == 0 and shown is not None:
                try:
                    read_in_full(shown)
                except DatasetError:
                    # shown without what cannot be read; exit 1, it is not all there
                    left_out: list[str] = []
                    shown = readable_part(shown, lambda tag, reason: left_out.append(f"{tag_text(tag)}: {reason}"))
                    print(f"dimsekit {tool}: some of the step's attributes that came back cannot be read and "
                          f"are left out ({printable('; '.join(left_out))})", file=sys.stderr)
                    code, partial = 1, True
        yield association.release()
    except Exception:
        return fail(tool, Failure())
    if code == 0 or partial:
        _print(shown, args.json)
    return code
