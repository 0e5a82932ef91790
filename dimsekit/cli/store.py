"""Send DICOM Part 10 files to a storage SCP (C-STORE), like DCMTK storescu.

FILE arguments may be files or directories; a directory's files are sent
(its subdirectories' too with --recurse, like storescu +sd +r).  Only the File
Meta Information of each file and the first elements of its data set (up to
the SOP Instance UID) are read before sending; a file holding a bare data set
(no File Meta, which storescu sends too) is sent in the uncompressed transfer
syntax it is found in.  One presentation
context is proposed per (SOP class, transfer syntax) found, plus, per SOP class
with uncompressed files, a fallback context (Explicit and Implicit VR Little
Endian) so they can be re-encoded if the peer refuses their own syntax.
A file whose syntax the peer accepted goes out as its raw bytes, unparsed.

The C-STORE-RQ names (and the contexts are proposed for) the SOP Class and
Instance UIDs of each file's data set, read from its first elements, as
storescu does: an SCP checks the command against the data set it receives,
not against a File Meta it never sees.  When the File Meta Information's
Media Storage SOP Class / Instance UID differ (a file edited by hand, a bad
converter), a warning on stderr says so, once per file; a UID the data set
lacks is taken from the File Meta, with a warning too.

Everything goes over one association unless more than 128 contexts are needed
(the files are then sent in groups, one association each) or the peer refuses
contexts (files left without one are retried on a new association proposing
only what they need; a file the peer takes in no way is a failure).

An abort does not end the run: when the peer aborts the association (A-ABORT,
a dropped connection, or no response within --timeout), the files left go on
a new association, after a pause (1 s, then 2 s, ...), the file in flight
first: it is sent once more (lost with that association too, it fails, with
the reason).  The run gives up -- the files left are "not
sent" -- after --max-aborts (3) associations in a row are aborted or cannot be
made with no response from the peer in between, or at once when the peer
refuses the association for good (A-ASSOCIATE-RJ permanent) or the first
connection fails.  --max-aborts 1 stops at the first abort, as storescu does.
A response no C-STORE has (a pending status, a response to another request) is a
failure of that file, with the reason; the run goes on.

Output: a progress line on stderr when it is a terminal; then a summary on
stdout -- instances sent, warnings and failures with their status names and
files, files not sent, files skipped, associations used (and how many of them
reconnects after an abort).  Exit status 0 when every file was stored with
Success or Warning (a warning status means the SCP stored the instance,
possibly coerced: it is listed, and does not make the exit status non-zero);
1 when any file failed, was not sent, or was named but is not a DICOM file,
and when the run gave up (rejection, aborts, timeouts, a refused connection),
with a one-line reason on stderr.  Files found in a directory that are not
DICOM Part 10 files are skipped and listed but do not change the exit status.
A file whose data set is cut short (a value or a sequence running past the end
of the file: a full disk, an interrupted copy), or whose compressed pixel data is
labelled uncompressed or with another codec's transfer syntax, is not sent -- a
peer that stores what it gets would answer Success -- and is listed as skipped,
and it does make the exit status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from pydicom.uid import UID
from twisted.internet import defer, task
from twisted.python.failure import Failure

from dimsekit.cli import add_common_arguments
from dimsekit.cli._scu import describe_failure, make_ae
from dimsekit.config import DECOMPRESS_POLICIES
from dimsekit.datasets import (
    DatasetError,
    Part10Info,
    dataset_file_info,
    dataset_uids,
    decompressible,
    file_defect,
)
from dimsekit.dimse.status import STORAGE, Category, describe
from dimsekit.errors import AssociationRejected, LocalProtocolError, RemoteProtocolError
from dimsekit.nservice import is_valid_uid
from dimsekit.readahead import ReadAhead

__all__ = [
    "add_arguments",
    "run",
    "collect_files",
    "read_files",
    "command_uids",
    "contexts_for",
    "plan_groups",
    "can_send",
    "MAX_CONTEXTS",
    "MAX_ABORTS",
]

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
#: transfer syntaxes a data set can be re-encoded between (by pydicom, in Association.store)
REENCODABLE = frozenset({IMPLICIT_LE, EXPLICIT_LE, EXPLICIT_BE, DEFLATED_LE})
#: what the per-SOP-class fallback context proposes
FALLBACK_SYNTAXES = (EXPLICIT_LE, IMPLICIT_LE)
#: presentation context IDs are the odd numbers 1..255 (PS3.8 9.3.2.2)
MAX_CONTEXTS = 128
#: Media Storage Directory Storage: a DICOMDIR, not an instance to store
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
#: associations aborted (or connections failed) in a row, with no response in between, before giving up
MAX_ABORTS = 3
#: seconds to wait before a new association after one was lost, times the losses in a row
RETRY_DELAY = 1.0
#: times the file in flight when an association was lost is sent again (then it fails)
RESENDS = 1

Context = tuple[str, tuple[str, ...]]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("paths", nargs="+", metavar="FILE|DIR", help="DICOM files or directories to send")
    parser.add_argument("-r", "--recurse", action="store_true",
                        help="send the files of subdirectories too (like storescu +sd +r)")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no progress and no summary; print only warnings, failures and errors")
    parser.add_argument("--no-progress", action="store_true", help="no progress line, even on a terminal")
    parser.add_argument("--max-aborts", type=_positive, default=MAX_ABORTS, metavar="N",
                        help="when the peer aborts an association (or the connection drops), the rest go on a "
                             "new one, the file in flight first (once); give up after N associations in a row aborted "
                             f"or not made, with no response in between (default {MAX_ABORTS}; 1: stop at the "
                             "first abort, as storescu does)")
    parser.add_argument("--decompress", choices=DECOMPRESS_POLICIES, default="lossless",
                        help="a compressed file the peer accepts only uncompressed: 'lossless' (the default, as "
                             "storescu's +dl) decompresses those in a lossless syntax (RLE, JPEG Lossless, JPEG-LS, "
                             "JPEG 2000 lossless), 'lossy' any pydicom can decode (storescu's +dL), 'never' none "
                             "(storescu's -dn); an uncompressed context is proposed for them as a fallback")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return value


# -- collecting files ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Skipped:
    """A file that is not sent, and why.  ``counts`` -- it makes the exit status
    non-zero (a file named on the command line, rather than found in a directory)."""

    path: Path
    reason: str
    counts: bool


def collect_files(operands: Iterable[str | Path], recurse: bool) -> tuple[list[tuple[Path, bool]], list[Skipped]]:
    """The files to consider, in a stable order, each with whether it was named
    explicitly; plus the operands that do not exist.

    Directories give their regular files sorted by name (with ``recurse``,
    those of their subdirectories too, depth first, symbolic links to
    directories not followed).  A file reached twice is taken once.
    """
    files: list[tuple[Path, bool]] = []
    missing: list[Skipped] = []
    seen: set[str] = set()

    def take(path: Path, named: bool) -> None:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            files.append((path, named))

    for operand in operands:
        path = Path(operand)
        if path.is_dir():
            for found in _walk(path, recurse):
                take(found, False)
        elif path.is_file():
            take(path, True)
        elif path.exists():
            missing.append(Skipped(path, "not a regular file", True))
        else:
            missing.append(Skipped(path, "no such file or directory", True))
    return files, missing


def _walk(directory: Path, recurse: bool) -> Iterable[Path]:
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError:
        return
    subdirs = []
    for entry in entries:
        try:
            if entry.is_file():
                yield Path(entry.path)
            elif recurse and entry.is_dir(follow_symlinks=False):
                subdirs.append(Path(entry.path))
        except OSError:
            continue
    for sub in subdirs:
        yield from _walk(sub, recurse)


def read_files(
    files: Iterable[tuple[Path, bool]], warn: Callable[[str], object] | None = None,
) -> tuple[list[Part10Info], list[Skipped]]:
    """What to send of each file: its File Meta Information, with the SOP
    Class and Instance UIDs of its data set (see :func:`command_uids`;
    ``warn(text)`` is told, once per file, when they are not the File Meta's).
    The files that are not Part 10 files (or are DICOMDIRs, or whose SOP class
    or transfer syntax is not a UID) are skipped, counting as failures when
    named; so are files whose data set is no image (:func:`file_defect`: cut short,
    compressed fragments labelled uncompressed), always counting as failures."""
    infos: list[Part10Info] = []
    skipped: list[Skipped] = []
    for path, named in files:
        try:
            info = dataset_file_info(path)
        except DatasetError as exc:
            why = str(exc).removeprefix(f"{path}: ")
            skipped.append(Skipped(path, "not a DICOM file" if why.startswith("not a DICOM") else why, named))
            continue
        except OSError as exc:
            skipped.append(Skipped(path, f"cannot read: {exc.strerror or exc}", named))
            continue
        if info.has_meta and info.sop_class_uid != DICOMDIR_SOP_CLASS:
            info, warning = with_data_set_uids(info)
        else:
            warning = None
        if info.sop_class_uid == DICOMDIR_SOP_CLASS:
            skipped.append(Skipped(path, "a DICOMDIR (media directory), not an instance", named))
            continue
        # They go into the A-ASSOCIATE-RQ: one that is not a UID would make
        # the association (and so every other file) fail.
        unusable = [f"{what} {uid!r}" for what, uid in (("SOP class", info.sop_class_uid),
                                                       ("transfer syntax", info.transfer_syntax))
                    if not is_valid_uid(uid)]
        if unusable:
            skipped.append(Skipped(path, f"File Meta Information: {' and '.join(unusable)} not a UID", named))
            continue
        try:
            defect = file_defect(info)
        except OSError as exc:
            defect = f"cannot read: {exc.strerror or exc}"
        if defect is not None:
            # A file cut short (a full disk, a copy that stopped), compressed fragments labelled
            # uncompressed: not sent, whoever the peer is -- one that stores it as it comes
            # would answer Success for no image.
            skipped.append(Skipped(path, defect, True))
            continue
        if warning is not None and warn is not None:
            warn(f"{path}: {warning}")
        infos.append(info)
    return infos, skipped


def with_data_set_uids(info: Part10Info) -> tuple[Part10Info, str | None]:
    """:func:`command_uids` of the file, its data set read for its UIDs
    (:func:`~dimsekit.datasets.dataset_uids`) -- or why it could not be."""
    try:
        found: tuple[str | None, str | None] | str = dataset_uids(info)
    except DatasetError as exc:
        found = str(exc).removeprefix(f"{info.path}: ")
    except OSError as exc:
        found = f"cannot read the data set: {exc.strerror or exc}"
    return command_uids(info, found)


def command_uids(
    info: Part10Info, found: tuple[str | None, str | None] | str,
) -> tuple[Part10Info, str | None]:
    """The file with the SOP Class and Instance UIDs its C-STORE-RQ is to
    name, and a warning to give (None when there is nothing to say).

    ``info`` holds what the File Meta Information says (Media Storage SOP
    Class / Instance UID); ``found`` what the data set holds (SOP Class UID,
    SOP Instance UID; None for one it lacks: see
    :func:`~dimsekit.datasets.dataset_uids`), or why it could not be read.
    The data set's are taken, as DCMTK storescu does: an SCP checks the
    command against the data set it receives (a dimsekit node refuses a
    mismatch with A900), never against a File Meta it does not receive.  The
    File Meta's stand in for a UID the data set lacks, for a SOP class that
    is no UID (it goes into the A-ASSOCIATE-RQ), and when the data set
    cannot be read.
    """
    if isinstance(found, str):
        return info, f"{found}; the File Meta Information's UIDs are sent"
    sop_class, sop_instance = found
    said: list[str] = []
    if sop_class is None:
        said.append(f"the data set has no SOP Class UID: the File Meta Information's ({info.sop_class_uid}) is sent")
        sop_class = info.sop_class_uid
    elif sop_class != info.sop_class_uid and not is_valid_uid(sop_class):
        said.append(f"the data set's SOP Class UID {sop_class!r} is not a UID: the File Meta Information's "
                    f"({info.sop_class_uid}) is sent")
        sop_class = info.sop_class_uid
    elif sop_class != info.sop_class_uid:
        said.append(f"File Meta Information's Media Storage SOP Class UID {info.sop_class_uid} is not the data "
                    f"set's SOP Class UID {sop_class}: the data set's is sent")
    if sop_instance is None:
        said.append(f"the data set has no SOP Instance UID: the File Meta Information's ({info.sop_instance_uid}) "
                    "is sent")
        sop_instance = info.sop_instance_uid
    elif sop_instance != info.sop_instance_uid:
        said.append(f"File Meta Information's Media Storage SOP Instance UID {info.sop_instance_uid} is not the "
                    f"data set's SOP Instance UID {sop_instance}: the data set's is sent")
    if not said:
        return info, None
    return replace(info, sop_class_uid=sop_class, sop_instance_uid=sop_instance), "; ".join(said)


# -- presentation contexts -----------------------------------------------------------------


def can_fall_back(info: Part10Info, decompress: str = "never") -> bool:
    """Whether the file may go in an uncompressed syntax other than its own: it is
    uncompressed (re-encoded), or ``decompress`` lets it be decoded (``--decompress``)."""
    if info.transfer_syntax in REENCODABLE:
        return True
    return decompressible(info.transfer_syntax, decompress) is None


def _context_keys(infos: Iterable[Part10Info], decompress: str = "never") -> dict[tuple[str, str | None], None]:
    """(SOP class, transfer syntax) per exact context and (SOP class, None) per
    fallback, in order of first appearance (a dict as an ordered set)."""
    keys: dict[tuple[str, str | None], None] = {}
    for info in infos:
        keys[(info.sop_class_uid, info.transfer_syntax)] = None
        if can_fall_back(info, decompress):
            keys[(info.sop_class_uid, None)] = None
    return keys


def contexts_for(infos: Iterable[Part10Info], decompress: str = "never") -> list[Context]:
    """The presentation contexts to propose for these files.

    Per SOP class (in order of first appearance): one context per transfer
    syntax its files are in, then -- when any of them is uncompressed, or
    compressed and to be decompressed if need be -- one fallback context
    proposing Explicit and Implicit VR Little Endian.
    """
    by_class: dict[str, list[Context]] = {}
    for sop_class, ts in _context_keys(infos, decompress):
        contexts = by_class.setdefault(sop_class, [])
        contexts.append((sop_class, (ts,) if ts is not None else FALLBACK_SYNTAXES))
    # the fallback (added when the first uncompressed file showed up) goes last in its class
    return [c for contexts in by_class.values() for c in sorted(contexts, key=lambda c: len(c[1]) > 1)]


def plan_groups(
    infos: Sequence[Part10Info], limit: int = MAX_CONTEXTS, decompress: str = "never",
) -> list[list[Part10Info]]:
    """Split the files into groups, one association each, each needing at most
    ``limit`` presentation contexts.

    All files in one group (in their order) when they fit.  Otherwise the
    files of each SOP class stay together where they can (a class needing more
    than ``limit`` contexts on its own is split by transfer syntax), packed in
    order of first appearance; within a group the files keep their order.
    """
    if not infos:
        return []
    if len(_context_keys(infos, decompress)) <= limit:
        return [list(infos)]
    units: dict[str, list[Part10Info]] = {}
    for info in infos:
        units.setdefault(info.sop_class_uid, []).append(info)
    pieces: list[list[Part10Info]] = []
    for unit in units.values():
        if len(_context_keys(unit, decompress)) <= limit:
            pieces.append(unit)
            continue
        by_ts: dict[str, list[Part10Info]] = {}
        for info in unit:
            by_ts.setdefault(info.transfer_syntax, []).append(info)
        pieces.extend(by_ts.values())  # each needs at most 2 contexts
    groups: list[list[Part10Info]] = []
    current: list[Part10Info] = []
    current_keys: dict[tuple[str, str | None], None] = {}
    for piece in pieces:
        merged = {**current_keys, **_context_keys(piece, decompress)}
        if current and len(merged) > limit:
            groups.append(current)
            current, merged = [], dict(_context_keys(piece, decompress))
        current = current + piece
        current_keys = merged
    if current:
        groups.append(current)
    order = {id(info): n for n, info in enumerate(infos)}
    return [sorted(group, key=lambda info: order[id(info)]) for group in groups]


def can_send(negotiated: Any, info: Part10Info, decompress: str = "never") -> bool:
    """Whether an association with these negotiated contexts can carry the file:
    a context in its own transfer syntax, or -- for an uncompressed file, or a
    compressed one ``decompress`` lets be decoded -- one in any uncompressed syntax."""
    if negotiated is None:
        return False
    if negotiated.context_for(info.sop_class_uid, info.transfer_syntax, as_scu=True) is not None:
        return True
    if not can_fall_back(info, decompress):
        return False
    return any(negotiated.context_for(info.sop_class_uid, ts, as_scu=True) is not None for ts in REENCODABLE)


#: A-ASSOCIATE-AC presentation context results (PS3.8 Table 9-18) that no
#: new association will change: abstract syntax / transfer syntaxes not supported
_FINAL_REJECTIONS = {3: "abstract syntax not supported", 4: "transfer syntaxes not supported"}


def refusal(proposed: Iterable[Any], rejected: dict[int, int], info: Part10Info, decompress: str = "never") -> str | None:
    """Why the peer will never take this file, or None if it might on another try.

    ``proposed``: the presentation contexts of our A-ASSOCIATE-RQ (items with
    ``context_id``, ``abstract_syntax``, ``transfer_syntaxes``); ``rejected``:
    context ID -> result from the negotiation.  A file is refused for good when
    every context that could have carried it was answered "abstract syntax not
    supported" or "transfer syntaxes not supported"; other answers (user or
    no-reason rejection, often a limit on the number of contexts) leave room
    for a new association that proposes less.
    """
    results = []
    for pc in proposed:
        if pc.abstract_syntax != info.sop_class_uid:
            continue
        fits = info.transfer_syntax in pc.transfer_syntaxes or (
            can_fall_back(info, decompress) and any(ts in REENCODABLE for ts in pc.transfer_syntaxes)
        )
        if fits:
            results.append(rejected.get(pc.context_id))
    if not results or any(r not in _FINAL_REJECTIONS for r in results):
        return None
    name = UID(info.sop_class_uid).name
    if 3 in results:
        return f"the peer does not support {name} (presentation context rejected: abstract syntax not supported)"
    if info.transfer_syntax in REENCODABLE:
        return f"the peer accepts {name} in no uncompressed transfer syntax (transfer syntaxes not supported)"
    ts = UID(info.transfer_syntax).name
    if can_fall_back(info, decompress):
        return (f"the peer accepts {name} neither in {ts} nor in an uncompressed transfer syntax "
                "(transfer syntaxes not supported)")
    return (f"the peer does not accept {name} in {ts}; not decompressed: "
            f"{decompressible(info.transfer_syntax, decompress)} (transfer syntaxes not supported)")


def _no_context_reason(info: Part10Info, decompress: str = "never") -> str:
    name = UID(info.sop_class_uid).name
    ts = UID(info.transfer_syntax).name
    if info.transfer_syntax in REENCODABLE:
        return f"no presentation context accepted for {name} in any uncompressed transfer syntax"
    if can_fall_back(info, decompress):
        return f"no presentation context accepted for {name} in {ts} or an uncompressed transfer syntax"
    why = decompressible(info.transfer_syntax, decompress)
    return f"no presentation context accepted for {name} in {ts} (compressed; not decompressed: {why})"


# -- progress and results ------------------------------------------------------------------


class Progress:
    """A line on a terminal, rewritten in place: instances done/total, MB, MB/s."""

    def __init__(self, stream: IO[str], total: int, total_bytes: int, enabled: bool) -> None:
        self.stream = stream
        self.total = total
        self.total_bytes = total_bytes
        self.enabled = enabled
        self.started = time.monotonic()
        self._last = 0.0
        self._width = 0

    def update(self, done: int, done_bytes: int, *, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.1:
            return
        self._last = now
        elapsed = now - self.started
        rate = done_bytes / elapsed / 1e6 if elapsed > 0 else 0.0
        line = (f"{done}/{self.total} instances  {done_bytes / 1e6:.1f}/{self.total_bytes / 1e6:.1f} MB"
                f"  {rate:.1f} MB/s")
        self.stream.write("\r" + line + " " * max(0, self._width - len(line)))
        self.stream.flush()
        self._width = len(line)

    def clear(self) -> None:
        """Take the line away (before printing something else, and at the end)."""
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0
            self._last = 0.0


@dataclass(slots=True)
class Outcome:
    path: Path
    kind: str  #: "success", "warning" or "failure"
    detail: str = ""
    size: int = 0


@dataclass
class Tally:
    """What happened to every file, in the order it happened."""

    outcomes: list[Outcome] = field(default_factory=list)
    not_sent: list[Path] = field(default_factory=list)
    associations: int = 0
    #: associations opened to carry on after one was aborted or lost
    reconnects: int = 0
    sent_bytes: int = 0
    #: files sent decompressed (compressed, the peer took them only uncompressed)
    decompressed: int = 0

    def add(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        if outcome.kind != "failure":
            self.sent_bytes += outcome.size

    def count(self, kind: str) -> int:
        return sum(1 for o in self.outcomes if o.kind == kind)


class _Fatal(Exception):
    """The association (or connecting) failed: stop sending."""


# -- running -------------------------------------------------------------------------------


def run(reactor: Any, args: argparse.Namespace) -> defer.Deferred:
    return defer.Deferred.fromCoroutine(_run(reactor, args, sys.stdout, sys.stderr))


async def _run(
    reactor: Any, args: argparse.Namespace, out: IO[str], err: IO[str], make: Any = make_ae,
) -> int:
    """The command; ``make(reactor, args)`` gives the ApplicationEntity (tests pass a fake)."""
    files, missing = collect_files(args.paths, args.recurse)
    infos, skipped = read_files(files, lambda text: print(f"dimsekit store: warning: {text}", file=err))
    skipped = missing + skipped
    if not infos:
        for s in skipped:
            if s.counts or not args.quiet:
                print(f"skipped  {s.path}: {s.reason}", file=out)
        print("dimsekit store: no DICOM files to send", file=err)
        return 1
    total_bytes = sum(info.dataset_length for info in infos)
    show_progress = not (args.quiet or args.no_progress) and _isatty(err)
    progress = Progress(err, len(infos), total_bytes, show_progress)
    tally = Tally()
    started = time.monotonic()
    fatal: str | None = None
    try:
        await _send(make(reactor, args), args, infos, tally, progress, err, _sleeper(reactor))
    except _Fatal as exc:
        fatal = str(exc)
    elapsed = time.monotonic() - started
    progress.clear()
    if fatal is not None and tally.associations == 0:
        print(f"dimsekit store: {fatal}", file=err)  # nothing was sent: the reason is all there is to say
        return 1
    _summary(args, tally, skipped, len(infos), elapsed, out)
    if fatal is not None:
        print(f"dimsekit store: {fatal}", file=err)
    failed = tally.count("failure") or tally.not_sent or any(s.counts for s in skipped) or fatal
    return 1 if failed else 0


def _sleeper(reactor: Any) -> Callable[[float], defer.Deferred] | None:
    """A pause on ``reactor`` (None for a test's: no pauses)."""
    if reactor is None:
        return None
    return lambda seconds: task.deferLater(reactor, seconds, lambda: None)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


async def _send(
    ae: Any, args: argparse.Namespace, infos: list[Part10Info], tally: Tally, progress: Progress, err: IO[str],
    sleep: Callable[[float], Any] | None = None,
) -> None:
    """Send every file, recording each outcome in ``tally``.

    An association the peer aborts (or whose connection drops): the files
    left go on a new association, after ``sleep(seconds)`` (none without it):
    :data:`RETRY_DELAY` times the number of associations lost in a row --
    the file in flight first, :data:`RESENDS` times; then it fails.

    :raises _Fatal: the first connection or association failed, an
        association was refused for good (A-ASSOCIATE-RJ permanent), or
        ``args.max_aborts`` associations in a row were lost or could not be
        made with no response in between; the files not attempted are
        recorded as not sent.
    """
    # (files, splittable): files to send on one association; whether, if the
    # peer accepts none of them, they may be retried split by SOP class
    decompress = getattr(args, "decompress", "lossless")
    queue: deque[tuple[list[Part10Info], bool]] = deque(
        (group, True) for group in plan_groups(infos, decompress=decompress))
    done = 0
    lost = 0  # associations lost or not made in a row, with no response from the peer in between
    limit = max(1, getattr(args, "max_aborts", MAX_ABORTS))
    resent: dict[int, int] = {}  # id of a file -> times sent again after an association was lost with it
    lost_with: dict[int, str] = {}  # id of a file -> why the association was lost while it was in flight

    def note(text: str) -> None:
        if not args.quiet:
            progress.clear()
            print(f"dimsekit store: {text}", file=err)

    def give_up(reason: str) -> str:
        return reason if limit == 1 else f"gave up after {lost} associations in a row aborted or not made ({reason})"

    while queue:
        files, splittable = queue.popleft()
        if lost and sleep is not None:
            await sleep(RETRY_DELAY * lost)
        contexts = contexts_for(files, decompress)
        try:
            association = await ae.associate(
                args.host, args.port, called=args.called, contexts=contexts, connect_timeout=args.timeout,
            )
        except Exception:
            failure = Failure()
            reason = describe_failure(failure)
            refused = isinstance(failure.value, AssociationRejected) and failure.value.result == 1
            if tally.associations == 0 or refused:
                # the peer was never reached, or says no for good: trying again changes nothing
                raise _stop(tally, None, files, queue, reason, lost_with) from None
            lost += 1
            if lost >= limit:
                raise _stop(tally, None, files, queue, give_up(reason), lost_with) from None
            note(f"no new association ({reason}); trying again for {len(files)} file(s)")
            queue.appendleft((files, splittable))
            continue
        tally.associations += 1
        association.decompress = decompress  # what store() may do for a compressed file
        if lost:
            tally.reconnects += 1
        attempted: set[int] = set()  # ids of the files sent (or failed) on this association
        left: list[Part10Info] = []
        ended: str | None = None  # why the association was lost, if it was
        in_flight: Part10Info | None = None  # the file it was lost with, to send again
        ahead = ReadAhead(getattr(association, "reactor", None), [str(info.path) for info in files])  # from the disk meanwhile
        for n, info in enumerate(files):
            if not can_send(association.negotiated, info, decompress):
                left.append(info)
                continue
            if association.ended:  # the peer ended it after the last response
                ended = f"association {association.ended}"
                break
            attempted.add(id(info))
            ahead.at(n)
            try:
                response = await association.store(info)  # the UIDs chosen by command_uids
            except (DatasetError, LocalProtocolError, RemoteProtocolError) as exc:
                # this file only (unreadable; a response no C-STORE has, such as a pending
                # status: a failure of that instance, as storescu counts it)...
                tally.add(Outcome(info.path, "failure", str(exc)))
                if association.ended:  # ...unless the association went with it
                    ended = str(exc)
            except Exception:
                reason = describe_failure(Failure())
                if not association.ended:
                    tally.add(Outcome(info.path, "failure", reason))
                    raise _stop(tally, None, [i for i in files if id(i) not in attempted], queue, reason) from None
                ended = reason
                in_flight = info
                break
            else:
                outcome = _outcome(info, response)
                tally.add(outcome)
                if outcome.kind != "failure" and info.transfer_syntax not in REENCODABLE and \
                        association.negotiated.context_for(info.sop_class_uid, info.transfer_syntax, as_scu=True) is None:
                    tally.decompressed += 1
                lost = 0  # the peer answers: the next loss starts a new count
            done += 1
            progress.update(done, tally.sent_bytes)
            if ended is not None:
                break
        ahead.stop()
        if ended is not None:
            lost += 1
            rest = [i for i in files if id(i) not in attempted]
            if in_flight is not None:
                if lost < limit and resent.get(id(in_flight), 0) < RESENDS:
                    resent[id(in_flight)] = resent.get(id(in_flight), 0) + 1
                    lost_with[id(in_flight)] = ended  # its outcome, should the run give up before
                    rest.insert(0, in_flight)  # (the peer may have stored it: a copy of the same instance)
                else:
                    tally.add(Outcome(in_flight.path, "failure", ended))
                    done += 1
            if lost >= limit and rest:
                raise _stop(tally, None, rest, queue, give_up(ended), lost_with) from None
            if rest:
                again = f", {in_flight.path.name} again first" if in_flight is not None and rest[0] is in_flight else ""
                note(f"{ended}; a new association for the {len(rest)} file(s) left{again}")
                queue.appendleft((rest, splittable))
            progress.update(done, tally.sent_bytes, force=True)
            continue
        if not association.ended:
            try:
                await association.release()
            except Exception:
                note(f"the association did not end with a release ({describe_failure(Failure())})")
        proposed = association.rq.presentation_contexts if association.rq is not None else ()
        rejected = dict(association.negotiated.rejected) if association.negotiated else {}
        retry = []
        for info in left:
            reason = refusal(proposed, rejected, info, decompress)
            if reason is None:
                retry.append(info)
            else:
                tally.add(Outcome(info.path, "failure", reason))
                done += 1
        left = retry  # fewer than files: something was sent or refused for good
        if not left:
            progress.update(done, tally.sent_bytes, force=True)
            continue
        accepted = len(association.negotiated.contexts) if association.negotiated else 0
        if len(left) < len(files):
            note(f"the peer accepted {accepted} of {len(contexts)} presentation contexts; "
                 f"a new association for {len(left)} file(s)")
            queue.appendleft((left, True))
        elif splittable and len({i.sop_class_uid for i in left}) > 1:
            note(f"the peer accepted none of {len(contexts)} presentation contexts; "
                 "trying one association per SOP class")
            by_class: dict[str, list[Part10Info]] = {}
            for info in left:
                by_class.setdefault(info.sop_class_uid, []).append(info)
            queue.extendleft((group, False) for group in reversed(list(by_class.values())))
        else:
            for info in left:
                tally.add(Outcome(info.path, "failure", _no_context_reason(info, decompress)))
                done += 1
        progress.update(done, tally.sent_bytes, force=True)


def _stop(
    tally: Tally, current: Part10Info | None, rest: list[Part10Info],
    queue: Iterable[tuple[list[Part10Info], bool]], reason: str, lost_with: dict[int, str] | None = None,
) -> _Fatal:
    """Record the file in flight (if any) as failed and everything after it as not sent -- but
    for a file waiting to be sent again (``lost_with``): failed, with why its association was lost."""
    if current is not None:
        tally.add(Outcome(current.path, "failure", reason))
    for info in [*rest, *(i for pending, _ in queue for i in pending)]:
        if lost_with and id(info) in lost_with:
            tally.add(Outcome(info.path, "failure", lost_with[id(info)]))
        else:
            tally.not_sent.append(info.path)
    return _Fatal(reason)


def _outcome(info: Part10Info, response: Any) -> Outcome:
    status = response.status
    kind = response.category
    text = describe(status, STORAGE)
    if kind is Category.SUCCESS:
        return Outcome(info.path, "success", text, info.dataset_length)
    if kind is Category.WARNING:
        return Outcome(info.path, "warning", text, info.dataset_length)
    return Outcome(info.path, "failure", text)


def _summary(
    args: argparse.Namespace, tally: Tally, skipped: list[Skipped], total: int, elapsed: float, out: IO[str],
) -> None:
    stored = tally.count("success") + tally.count("warning")
    if not args.quiet:
        rate = tally.sent_bytes / elapsed / 1e6 if elapsed > 0 else 0.0
        plural = "s" if tally.associations != 1 else ""
        reconnects = ""
        if tally.reconnects:
            reconnects = (f" ({tally.reconnects} reconnect{'s' if tally.reconnects != 1 else ''} "
                          "after an abort or a lost connection)")
        print(
            f"Stored {stored} of {total} instances on {args.called}@{args.host}:{args.port} "
            f"({tally.count('success')} Success, {tally.count('warning')} Warning, "
            f"{tally.count('failure')} Failure, {len(tally.not_sent)} not sent) in {elapsed:.2f} s, "
            f"{tally.sent_bytes / 1e6:.1f} MB, {rate:.1f} MB/s, {tally.associations} association{plural}"
            f"{reconnects}{f', {tally.decompressed} decompressed for the peer' if tally.decompressed else ''}",
            file=out,
        )
    for outcome in tally.outcomes:
        if outcome.kind != "success":
            print(f"{outcome.kind:<8} {outcome.path}: {outcome.detail}", file=out)
    for path in tally.not_sent:
        print(f"not sent {path}", file=out)
    for s in skipped:
        if s.counts or not args.quiet:
            print(f"skipped  {s.path}: {s.reason}", file=out)
