"""Query a peer with C-FIND (Query/Retrieve or Modality Worklist), like DCMTK findscu.

    dimsekit find HOST PORT -aec PACS -k PatientName=DOE* -k StudyDate=20240101-
    dimsekit find HOST PORT -P -k QueryRetrieveLevel=PATIENT -k PatientID -k PatientName
    dimsekit find HOST PORT -W -k "ScheduledProcedureStepSequence[0].Modality=CT" --json

Information model: -S / --model study (Study Root, the default), -P /
--model patient (Patient Root), -W / --model worklist (Modality Worklist).

Keys (-k, also after -f FILE, a DICOM JSON or DICOM file) are written as
findscu takes them: Keyword=value, gggg,eeee=value, (gggg,eeee), Keyword
with no value for a zero-length return key, Seq[0].Keyword=value inside a
sequence item; see ``dimsekit.cli._keys``.  For the Q/R models
QueryRetrieveLevel is STUDY (Study Root) or PATIENT (Patient Root) unless
given.  When no key is a zero-length return key -- only matching values, or
nothing at all -- the usual return keys of the level (of a worklist item)
are added, so that something useful comes back; give any return key to send
exactly the keys you wrote.

Output on stdout: a table of the matches (default), or --json: a JSON array
of DICOM JSON objects (PS3.18 F.2) and nothing else; --out-dir DIR also
writes each match as a DICOM file DIR/rsp0001.dcm ... (like findscu -X -od).
The count and final status go to stderr (-q: only errors).  --cancel N sends
a C-CANCEL after N matches (like findscu --cancel).

Exit status 0 on Success (or Cancel after --cancel); 1 on a failure status
(named, with its Error Comment), rejection, abort, timeout or a refused
connection; 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import IO, Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)
from twisted.internet import defer
from twisted.python.failure import Failure

from dimsekit.cli import add_common_arguments, add_total_timeout_argument
from dimsekit.cli._keys import (
    BadKey,
    add_defaults,
    apply_keys,
    flatten,
    has_return_keys,
    key_paths,
    load_dataset,
    render_table,
    set_character_set,
    tag_text,
)
from dimsekit.cli._scu import describe_failure, end_cleanly
from dimsekit.datasets import UnwritableElement, json_dict, pydicom_error, readable_part, values_of
from dimsekit.dimse.status import QR_FIND, Category, category, describe
from dimsekit.errors import printable
from dimsekit.scu import (
    MODALITY_WORKLIST_FIND,
    PATIENT_ROOT_FIND,
    PATIENT_ROOT_GET,
    PATIENT_ROOT_MOVE,
    STUDY_ROOT_FIND,
    STUDY_ROOT_GET,
    STUDY_ROOT_MOVE,
)

__all__ = [
    "add_arguments",
    "run",
    "MODELS",
    "add_model_options",
    "add_key_options",
    "model_of",
    "find_identifier",
    "retrieve_identifier",
    "TableWriter",
    "display_order",
    "JsonWriter",
    "DirectoryWriter",
    "response_problem",
    "make_scu_ae",
]

#: model name -> (FIND, GET, MOVE) SOP classes
MODELS: dict[str, tuple[str, str | None, str | None]] = {
    "study": (STUDY_ROOT_FIND, STUDY_ROOT_GET, STUDY_ROOT_MOVE),
    "patient": (PATIENT_ROOT_FIND, PATIENT_ROOT_GET, PATIENT_ROOT_MOVE),
    "worklist": (MODALITY_WORKLIST_FIND, None, None),
}

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")

#: return keys added per level when the user gave none (see the module doc)
DEFAULT_KEYS: dict[str, tuple[str, ...]] = {
    "PATIENT": ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "NumberOfPatientRelatedStudies"),
    "STUDY": ("PatientName", "PatientID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID",
              "StudyDescription", "ModalitiesInStudy", "NumberOfStudyRelatedInstances", "StudyInstanceUID"),
    "SERIES": ("Modality", "SeriesNumber", "SeriesDescription", "NumberOfSeriesRelatedInstances",
               "SeriesInstanceUID"),
    "IMAGE": ("InstanceNumber", "SOPClassUID", "SOPInstanceUID"),
}
_SPS = "ScheduledProcedureStepSequence[0]."
WORKLIST_DEFAULT_KEYS: tuple[str, ...] = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
    "RequestedProcedureID", "RequestedProcedureDescription", "StudyInstanceUID",
    _SPS + "Modality", _SPS + "ScheduledStationAETitle", _SPS + "ScheduledProcedureStepStartDate",
    _SPS + "ScheduledProcedureStepStartTime", _SPS + "ScheduledPerformingPhysicianName",
    _SPS + "ScheduledProcedureStepID", _SPS + "ScheduledProcedureStepDescription",
)


# -- options shared with get and move ------------------------------------------------------


def add_model_options(parser: argparse.ArgumentParser, *, worklist: bool) -> None:
    group = parser.add_argument_group("information model")
    choices = ["study", "patient"] + (["worklist"] if worklist else [])
    group.add_argument("-S", "--study", dest="model_flag", action="store_const", const="study",
                       help="Study Root (the default)")
    group.add_argument("-P", "--patient", dest="model_flag", action="store_const", const="patient",
                       help="Patient Root")
    if worklist:
        group.add_argument("-W", "--worklist", dest="model_flag", action="store_const", const="worklist",
                           help="Modality Worklist")
    group.add_argument("--model", choices=choices, default=None, help="the information model, by name")


def add_key_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-k", "--key", dest="keys", action="append", default=[], metavar="KEY[=VALUE]",
                        help="a key: Keyword=value, gggg,eeee=value, (gggg,eeee), Seq[0].Keyword=value")
    parser.add_argument("-f", "--file", help="start from the keys of a DICOM JSON or DICOM file (-k keys override)")


def model_of(args: argparse.Namespace) -> str:
    """The model name from -P/-S/-W and --model (which must agree)."""
    flag, named = getattr(args, "model_flag", None), getattr(args, "model", None)
    if flag and named and flag != named:
        raise BadKey(f"--model {named} contradicts the -{flag[0].upper()} option")
    return named or flag or "study"


def _base(args: argparse.Namespace) -> Dataset:
    dataset = load_dataset(args.file) if getattr(args, "file", None) else Dataset()
    return apply_keys(dataset, args.keys)


def find_identifier(args: argparse.Namespace, model: str) -> Dataset:
    """The C-FIND identifier from -f and -k (see the module doc for the defaults)."""
    identifier = _base(args)
    if model == "worklist":
        if not has_return_keys(identifier):
            add_defaults(identifier, WORKLIST_DEFAULT_KEYS)
        return set_character_set(identifier)
    level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    if not level:
        level = "PATIENT" if model == "patient" else "STUDY"
    if level not in LEVELS:
        raise BadKey(f"QueryRetrieveLevel {level!r} is not one of {', '.join(LEVELS)}")
    if model == "study" and level == "PATIENT":
        raise BadKey("the Study Root model has no PATIENT level; use -P (Patient Root)")
    identifier.QueryRetrieveLevel = level
    if not has_return_keys(identifier):
        add_defaults(identifier, DEFAULT_KEYS[level])
    return set_character_set(identifier)


#: unique keys, deepest first, and the level each one names
_UNIQUE = (("SOPInstanceUID", "IMAGE"), ("SeriesInstanceUID", "SERIES"), ("StudyInstanceUID", "STUDY"),
           ("PatientID", "PATIENT"))


def retrieve_identifier(args: argparse.Namespace, model: str) -> Dataset:
    """The C-GET / C-MOVE identifier: -f and -k, with QueryRetrieveLevel taken
    from the deepest unique key given a value when it is not given."""
    identifier = _base(args)
    level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    if not level:
        for keyword, named in _UNIQUE:
            if named == "PATIENT" and model != "patient":
                continue
            if str(identifier.get(keyword, "") or "").strip():
                level = named
                break
    if not level:
        raise BadKey("say what to retrieve: e.g. -k StudyInstanceUID=1.2.3 "
                     "(or -k QueryRetrieveLevel=... with the unique keys of that level)")
    if level not in LEVELS:
        raise BadKey(f"QueryRetrieveLevel {level!r} is not one of {', '.join(LEVELS)}")
    if model == "study" and level == "PATIENT":
        raise BadKey("the Study Root model has no PATIENT level; use -P (Patient Root)")
    identifier.QueryRetrieveLevel = level
    return set_character_set(identifier)


# -- output --------------------------------------------------------------------------------


def _order(request_paths: list[str]) -> Any:
    """Sort key: a response path goes where the request's path (or its sequence) was."""

    def rank(path: str) -> int:
        for n, wanted in enumerate(request_paths):
            if path == wanted or path.startswith(wanted.split("[")[0] + "["):
                return n
        return len(request_paths)

    return rank


def display_order(args: argparse.Namespace, model: str, identifier: Dataset) -> list[str]:
    """Columns in the order the keys were typed, then the defaults', then the rest of the identifier."""
    level = str(identifier.get("QueryRetrieveLevel", "") or "")
    defaults = WORKLIST_DEFAULT_KEYS if model == "worklist" else DEFAULT_KEYS.get(level, ())
    order: dict[str, None] = dict.fromkeys(key_paths(args.keys))
    for path in key_paths(defaults):
        order.setdefault(path)
    for path, _ in flatten(identifier):
        order.setdefault(path)
    return list(order)


class TableWriter:
    """Collects the matches; writes them as a table at the end.

    :param order: the request's key paths (``Seq[0].Keyword``) in the order to show them.
    """

    def __init__(self, out: IO[str], order: list[str], err: IO[str] | None = None) -> None:
        self.out = out
        self.err = err
        self.request_paths = order
        self.rows: list[dict[str, str]] = []

    def add(self, dataset: Dataset | None) -> None:
        self.rows.append(dict(flatten(dataset, on_unreadable=self._unreadable)) if dataset is not None else {})

    def _unreadable(self, path: str, reason: str) -> None:
        if self.err is not None:
            print(f"dimsekit find: match {len(self.rows) + 1}: {path} cannot be read ({reason})", file=self.err)

    def finish(self) -> None:
        if not self.rows:
            return
        seen: dict[str, None] = {}
        for row in self.rows:
            for key in row:
                seen.setdefault(key)
        rank = _order(self.request_paths)
        columns = sorted(seen, key=rank)  # stable: first appearance within a rank
        self.out.write(render_table(self.rows, columns))
        self.out.flush()


class JsonWriter:
    """Streams the matches as one JSON array of DICOM JSON objects."""

    def __init__(self, out: IO[str], err: IO[str]) -> None:
        self.out = out
        self.err = err
        self.count = 0
        self.dropped = False

    def add(self, dataset: Dataset | None) -> None:
        text = json.dumps(self._json(dataset), ensure_ascii=False)  # before the separator: it may fail
        self.out.write("[\n" if self.count == 0 else ",\n")
        self.count += 1
        self.out.write(text)
        self.out.flush()

    def _json(self, dataset: Dataset | None) -> dict[str, Any]:
        if dataset is None:
            return {}
        return json_dict(dataset, on_unwritable=self._left_out)

    def _left_out(self, error: UnwritableElement) -> None:
        if not self.dropped:
            print(f"dimsekit: some attributes cannot be written as DICOM JSON and were left out ({error})",
                  file=self.err)
            self.dropped = True

    def finish(self) -> None:
        self.out.write("[]\n" if self.count == 0 else "\n]\n")
        self.out.flush()


class DirectoryWriter:
    """Writes each match as a DICOM file ``rsp0001.dcm``, ... (like findscu -X -od).

    A match is written in the transfer syntax it came in. pydicom reads every value as it
    writes, so a match with a value it cannot read (a damaged sequence) is written without
    that value, and ``err`` is told which; one that cannot be written at all is said on
    ``err`` and leaves no file.
    """

    def __init__(self, directory: str | Path, sop_class: str, err: IO[str] | None = None) -> None:
        self.directory = Path(directory)
        self.sop_class = sop_class
        self.err = err
        self.count = 0
        self.directory.mkdir(parents=True, exist_ok=True)

    def add(self, dataset: Dataset | None) -> None:
        self.count += 1
        if dataset is None:
            return
        copy = Dataset(dataset)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = UID(self.sop_class)
        meta.MediaStorageSOPInstanceUID = generate_uid()
        implicit, little = dataset.original_encoding
        meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit and little is not False
                                  else ExplicitVRBigEndian if little is False else ExplicitVRLittleEndian)
        copy.file_meta = meta
        path = self.directory / f"rsp{self.count:04d}.dcm"
        try:
            copy.save_as(path, enforce_file_format=True)
            return
        except Exception:  # pydicom reads every value as it writes: a damaged one stops it
            path.unlink(missing_ok=True)
        left_out: list[str] = []
        part = readable_part(copy, lambda tag, reason: left_out.append(f"{tag_text(tag)}: {reason}"))
        part.file_meta = meta
        try:
            part.save_as(path, enforce_file_format=True)
        except Exception as exc:
            path.unlink(missing_ok=True)
            self._say(f"match {self.count} cannot be written to {path.name} ({type(exc).__name__}: "
                      f"{pydicom_error(exc)})")
            return
        self._say(f"match {self.count}: {path.name} written without what cannot be read ({'; '.join(left_out)})")

    def _say(self, text: str) -> None:
        if self.err is not None:
            print(f"dimsekit find: {printable(text)}", file=self.err)

    def finish(self) -> None:
        pass


def response_problem(response: Any, service: str) -> str:
    """A failure response as one line: status name, Error Comment, Offending Element."""
    text = describe(response.status, service)
    comment = response.command.get("ErrorComment")
    if comment:
        text += f": {printable(str(comment).strip())}"
    offending = response.command.get("OffendingElement")
    if offending:
        text += " (offending: " + ", ".join(tag_text(int(t)) for t in values_of(offending)) + ")"
    return text


# -- the command ---------------------------------------------------------------------------


def make_scu_ae(reactor: Any, args: argparse.Namespace) -> Any:
    """An application entity from the common options, with no plugin at all
    (see :func:`dimsekit.cli._scu.make_ae`)."""
    from dimsekit.cli._scu import make_ae

    return make_ae(reactor, args)


def quiet_pydicom() -> None:
    """No pydicom warning per odd value of a peer's response: the tool shows the values as they are."""
    warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom\.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    add_total_timeout_argument(parser)
    add_model_options(parser, worklist=True)
    add_key_options(parser)
    output = parser.add_argument_group("output")
    output.add_argument("--json", action="store_true", help="a JSON array of DICOM JSON objects on stdout")
    output.add_argument("--out-dir", "-od", metavar="DIR", help="also write each match as DIR/rspNNNN.dcm")
    output.add_argument("-q", "--quiet", action="store_true", help="no count or status on stderr, only errors")
    parser.add_argument("--cancel", type=int, metavar="N", default=None,
                        help="send C-CANCEL after N matches (like findscu --cancel)")
    extended = parser.add_argument_group(
        "extended negotiation", "matching options to propose (PS3.4 C.5.1.1); a note on stderr when the peer "
        "does not agree, and the query goes ahead without them")
    for flag, _byte, name in FIND_OPTIONS:
        extended.add_argument(f"--{flag}", action="store_true", dest=f"ext_{flag}", help=f"propose {name}")


#: C-FIND extended negotiation options: (flag, byte of the Service-class-application-information,
#: name), PS3.4 Table C.5-1
FIND_OPTIONS = (
    ("relational", 0, "relational queries"),
    ("datetime", 1, "combined date and time matching"),
    ("fuzzy", 2, "fuzzy semantic matching of person names"),
    ("timezone", 3, "timezone query adjustment"),
)


def find_extended(args: argparse.Namespace) -> bytes | None:
    """The C-FIND SOP Class Extended Negotiation information the options ask for, None for none.

    As long as the last option asked for (item bytes 2 onwards are optional), each byte 1 or 0.
    """
    wanted = [byte for flag, byte, _ in FIND_OPTIONS if getattr(args, f"ext_{flag}", False)]
    if not wanted:
        return None
    info = bytearray(max(wanted) + 1)
    for byte in wanted:
        info[byte] = 1
    return bytes(info)


def not_agreed(asked: bytes, agreed: bytes | None) -> list[str]:
    """The names of the options asked for that the peer's answer does not grant."""
    agreed = agreed or b""
    return [name for _, byte, name in FIND_OPTIONS
            if byte < len(asked) and asked[byte] == 1 and not (byte < len(agreed) and agreed[byte] == 1)]


def run(reactor: Any, args: argparse.Namespace) -> defer.Deferred:
    quiet_pydicom()
    return defer.Deferred.fromCoroutine(_run(reactor, args, sys.stdout, sys.stderr))


async def _run(reactor: Any, args: argparse.Namespace, out: IO[str], err: IO[str], make: Any = None) -> int:
    try:
        model = model_of(args)
        identifier = find_identifier(args, model)
        if args.cancel is not None and args.cancel < 1:
            raise BadKey("--cancel needs a number of matches, 1 or more")
    except BadKey as exc:
        print(f"dimsekit find: {exc}", file=err)
        return 2
    sop_class = MODELS[model][0]
    writers: list[Any] = [JsonWriter(out, err) if args.json else TableWriter(out, display_order(args, model, identifier), err)]
    if args.out_dir:
        try:
            writers.append(DirectoryWriter(args.out_dir, sop_class, err))
        except OSError as exc:
            print(f"dimsekit find: cannot use {args.out_dir}: {exc.strerror or exc}", file=err)
            return 2
    ae = (make or make_scu_ae)(reactor, args)
    association = None
    asked = find_extended(args)
    try:
        association = await ae.associate(
            args.host, args.port, called=args.called, contexts=[sop_class], connect_timeout=args.timeout,
            extended={sop_class: asked} if asked else None,
        )
    except Exception:
        print(f"dimsekit find: {describe_failure(Failure())}", file=err)
        return 1
    if asked and not args.quiet:
        refused = not_agreed(asked, association.negotiated.extended.get(sop_class))
        if refused:
            print(f"dimsekit find: the peer did not agree to {', '.join(refused)}; querying without", file=err)
    try:
        return await _find(association, args, identifier, sop_class, writers, err)
    finally:
        await end_cleanly(reactor, association)


async def _find(association: Any, args: argparse.Namespace, identifier: Dataset, sop_class: str,
                writers: list[Any], err: IO[str]) -> int:
    if association.negotiated.context_for(sop_class, as_scu=True) is None:
        print(f"dimsekit find: the peer did not accept {UID(sop_class).name}", file=err)
        await _release(association)
        return 1
    count = 0
    warned = False
    operation = association.find(identifier, sop_class, total_timeout=args.total_timeout)
    try:
        async for response in operation:
            count += 1
            if response.status == 0xFF01 and not warned and not args.quiet:
                print(f"dimsekit find: {describe(response.status, QR_FIND)}", file=err)
                warned = True
            for writer in writers:
                writer.add(response.dataset)
            if args.cancel is not None and count >= args.cancel:
                operation.cancel()
        final = await operation
    except BrokenPipeError:  # stdout closed (| head): stop quietly, like other tools
        _forget_stdout(writers)
        operation.cancel()
        return 1
    except Exception:
        reason = describe_failure(Failure())
        for writer in writers:
            writer.finish()
        print(f"dimsekit find: {reason} (after {count} match{'es' if count != 1 else ''})", file=err)
        return 1
    except BaseException:
        for writer in writers:
            writer.finish()
        raise
    try:
        for writer in writers:
            writer.finish()
    except BrokenPipeError:
        _forget_stdout(writers)
        return 1
    await _release(association)
    kind = category(final.status)
    plural = "es" if count != 1 else ""
    if kind is Category.SUCCESS or (kind is Category.CANCEL and operation.cancel_sent):
        if not args.quiet:
            print(f"{count} match{plural} ({describe(final.status, QR_FIND)})", file=err)
        return 0
    print(f"dimsekit find: C-FIND failed after {count} match{plural}: {response_problem(final, QR_FIND)}",
          file=err)
    return 1


def _forget_stdout(writers: list[Any]) -> None:
    """Point the closed stdout at /dev/null, so that nothing fails again at exit."""
    for writer in writers:
        out = getattr(writer, "out", None)
        try:
            fd = out.fileno()  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            continue
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)


async def _release(association: Any) -> None:
    if association.ended:
        return
    try:
        await association.release()
    except Exception:
        pass
