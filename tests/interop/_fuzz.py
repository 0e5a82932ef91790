"""A fuzzing requestor: every service of a node, fed data sets with random faults.

    python _fuzz.py PORT SEED COUNT

Associates with a node (a twistd one, its zero-configuration plugins) as
DIMSEKIT-FUZZ, proposing every SOP class it serves, stores a few valid CT
instances (so that queries and retrieves have something to match), then sends
COUNT requests -- C-FIND (Study and Patient Root, Modality Worklist), C-GET,
C-MOVE, C-STORE, MPPS N-CREATE / N-SET, storage commitment N-ACTION, print
N-CREATE / N-SET / N-ACTION / N-GET / N-DELETE -- each with a data set built
from that request's usual attributes, then damaged at random (seeded by SEED):
values replaced by junk bytes, odd lengths, huge values, wrong character
sets, elements dropped, duplicated, out of order or unknown, sequences with
undefined lengths, missing delimiters or junk items, the whole truncated.

Some requests (``command``) have their command set damaged instead (fields
dropped, doubled, junk, undefined Command Fields and Data Set Types, a lying
group length, truncation) and are followed by a C-ECHO, whose answer shows the
node went on.  A request the node aborts the association for is counted
``aborted`` (for a damaged command set, an A-ABORT is one right answer) and the
next one goes on a new association.  Prints one JSON object: the requests by
operation and outcome (``0xA900``..., ``aborted``, ``timeout``), and ``error``
for anything else that went wrong here.  A request that gets no answer within
10 s is a ``timeout``: the node hung on it.
"""

from __future__ import annotations

import json
import random
import struct
import sys
from collections import Counter
from typing import Any

from twisted.internet import defer, task

ROOT = "1.2.826.0.1.3680043.8.498.77"
VERIFICATION = "1.2.840.10008.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
STUDY_FIND, STUDY_MOVE, STUDY_GET = (f"1.2.840.10008.5.1.4.1.2.2.{n}" for n in (1, 2, 3))
PATIENT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
WORKLIST = "1.2.840.10008.5.1.4.31"
MPPS = "1.2.840.10008.3.1.2.3.3"
COMMITMENT, COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1", "1.2.840.10008.1.20.1.1"
PRINT_META = "1.2.840.10008.5.1.1.9"
FILM_SESSION, FILM_BOX, IMAGE_BOX = "1.2.840.10008.5.1.1.1", "1.2.840.10008.5.1.1.2", "1.2.840.10008.5.1.1.4"
PRINTER, PRINTER_INSTANCE = "1.2.840.10008.5.1.1.16", "1.2.840.10008.5.1.1.17"
IMPLICIT = "1.2.840.10008.1.2"


class Fuzzer:
    """Seeded data sets for each request, built as (tag, value) lists and encoded
    Implicit VR Little Endian by hand (pydicom would refuse to write the faults)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.uids: list[str] = []  # UIDs the node knows: stored instances, created objects
        self.counter = 0
        self.rate = 0.1  # how damaged the data set being made is: a clean one reaches deeper

    # -- values ---------------------------------------------------------------------------

    def uid(self) -> str:
        self.counter += 1
        return f"{ROOT}.{self.rng.randrange(10**6)}.{self.counter}"

    def junk(self) -> bytes:
        r = self.rng
        kind = r.randrange(6)
        if kind == 0:
            return b""
        if kind == 1:
            return bytes(r.randrange(256) for _ in range(r.randrange(1, 80)))
        if kind == 2:
            return r.choice([b"*", b"?", b"\\", b"\\\\\\", b"-", b"--", b"^^^^^", b"=", b"\x00", b" " * 9, b"\x1b$B"])
        if kind == 3:
            return b"x" * r.choice([65, 1025, 10_000, 70_000])  # past every VR's maximum
        if kind == 4:
            return r.choice(["Müller^Jürgen", "山田^太郎=やまだ^たろう", "Ωμέγα", "\u202e\u0000"]).encode(
                r.choice(["utf-8", "utf-16-le", "latin-1" if r.random() < 0.5 else "utf-8"]), "replace")
        return r.choice([b"1.2.3.", b"..", b"../../etc/passwd", b"1.2/3", b"01.2", b"1." * 40, b"nan", b"1e999",
                         b"-0", b"99999999999999999999", b"20201332", b"2020-01-01", b"250000", b"24:00"])

    def sample(self, vr: str, tag: int) -> bytes:
        r = self.rng
        choices: dict[str, list[Any]] = {
            "CS": {0x00080052: ["PATIENT", "STUDY", "SERIES", "IMAGE", "FRAME", "study"],
                   0x00080005: ["", "ISO_IR 100", "ISO_IR 192", "ISO 2022 IR 87", "ISO 2022 IR 6\\ISO 2022 IR 87",
                                "GB18030", "GARBAGE", "ISO_IR 192\\ISO_IR 100", "\\"],
                   0x00400252: ["IN PROGRESS", "COMPLETED", "DISCONTINUED", "in progress", ""],
                   0x00100040: ["M", "F", "O", "X"],
                   0x20000020: ["HIGH", "MED", "LOW", "URGENT"]}.get(tag, ["CT", "MR", "CT\\MR", "*", "", "ORIGINAL"]),
            "UI": [*(self.uids[-20:] or [ROOT]), self.uid(), "\\".join(self.uids[-3:]), "", "*"],
            "DA": ["20200101", "20200101-20201231", "-20200101", "20200101-", "2020", "20200101\\20200202", ""],
            "TM": ["1200", "120000.123456", "0800-1700", "12", "120000-", "-0900", ""],
            "DT": ["20200101120000", "20200101-20210101", "20200101120000.000000+0100", ""],
            "PN": ["Doe^John", "D*", "*", "?oe*", "Doe^John^^^", "=Doe", "", "DOE^JOHN\\ROE^JANE", "DOE^JOHN\\",
                   "\\=", "Roe^Jane=\\"],
            "LO": ["ABC*", "12?", "A description", "", "*", "x\\y"],
            "SH": ["ABC*", "S1", "", "*", "?"],
            "IS": ["1", "-5", "0", "2147483648", " 7 ", "1\\2"],
            "DS": ["1.5", "-0.0", "1e3", "1\\2"],
            "AE": ["ANY", "NOWHERE", "DIMSEKIT", "", "A" * 16],
            "AS": ["045Y", "003M", "045"],
            "ST": ["STANDARD\\1,1", "STANDARD\\2,3", "ROW\\1,2", "COL\\2", "STANDARD\\0,0", "SLIDE", "STANDARD\\100,100"],
        }
        if vr == "US":
            return struct.pack("<H", r.choice([0, 1, 2, 8, 16, 512, 65535]))
        if vr == "UL":
            return struct.pack("<I", r.choice([0, 1, 2**31, 2**32 - 1]))
        if vr == "OW":
            return bytes(r.choice([0, 2, 8, 32]))
        text = str(r.choice(choices.get(vr, ["x"]))).encode("utf-8")
        return text + (b" " if len(text) % 2 and vr != "UI" else b"\x00" if len(text) % 2 else b"")

    # -- elements ---------------------------------------------------------------------------

    def value(self, vr: str, tag: int, spec: Any) -> Any:
        r = self.rng
        if vr == "SQ":
            if r.random() < self.rate:
                return self.junk()  # not items at all
            return [self.elements(spec) for _ in range(r.choice([0, 1, 1, 1, 2, 3]))]
        if r.random() < self.rate:
            return self.junk()
        return self.sample(vr, tag)

    def elements(self, template: list[tuple[int, str, Any]]) -> list[tuple[int, Any]]:
        r = self.rng
        out = []
        for tag, vr, spec in template:
            if r.random() < self.rate:
                continue  # dropped
            out.append((tag, self.value(vr, tag, spec)))
            if r.random() < self.rate / 4:
                out.append((tag, self.value(vr, tag, spec)))  # twice
        if r.random() < self.rate:
            out.append((r.choice([0x00090010, 0x00091001, 0x00080000, 0x7FE00010, 0xFFFEE000, 0x00280010,
                                  r.randrange(2**32)]), self.junk()))
        if r.random() < self.rate:
            r.shuffle(out)
        else:
            out.sort(key=lambda e: e[0])
        return out

    def encode(self, elements: list[tuple[int, Any]]) -> bytes:
        r = self.rng
        parts = []
        for tag, value in elements:
            head = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
            if isinstance(value, list):
                undefined = r.random() < 0.3
                items = []
                for item in value:
                    body = self.encode(item)
                    if undefined and r.random() >= self.rate:
                        items.append(b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + body + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00")
                    else:
                        items.append(b"\xfe\xff\x00\xe0" + struct.pack("<I", len(body)) + body)
                content = b"".join(items)
                if undefined:
                    end = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00" if r.random() >= self.rate else b""
                    parts.append(head + b"\xff\xff\xff\xff" + content + end)
                else:
                    parts.append(head + struct.pack("<I", len(content)) + content)
            else:
                length = len(value)
                if r.random() < self.rate / 5:
                    length = r.choice([length + 2, max(0, length - 2), 0xFFFFFFFF, 2**31])  # lies
                parts.append(head + struct.pack("<I", length) + value)
        return b"".join(parts)

    def command(self, command_set: bytes) -> bytes:
        """A command set's bytes damaged: fields dropped, doubled, swapped, junk, a Command
        Field or Command Data Set Type no one defines, a group length that lies, a well-formed
        SOP Class UID other than its presentation context's, truncation."""
        r = self.rng
        elements = []
        offset = 0
        while offset + 8 <= len(command_set):
            tag, length = struct.unpack_from("<II", command_set, offset)
            tag = (tag & 0xFFFF) << 16 | tag >> 16
            elements.append((tag, command_set[offset + 8:offset + 8 + length]))
            offset += 8 + length
        for _ in range(r.choice([1, 1, 2, 3])):
            i = r.randrange(len(elements))
            tag, value = elements[i]
            how = r.randrange(9)
            if how == 0:
                del elements[i]
            elif how == 1:
                elements[i] = (tag, r.choice([b"", b"\x01", b"\x01\x02\x03", bytes(8), self.junk()]))
            elif how == 2:
                field = r.choice([0x0001, 0x0010, 0x0020, 0x0021, 0x0030, 0x0FFF, 0x8001, 0x8020, 0x0000, 0xFFFF])
                elements = [(t, struct.pack("<H", field) if t == 0x00000100 else v) for t, v in elements]
            elif how == 3:
                kind = r.choice([0x0101, 0x0001, 0x0000, 0xFEFE, 0x0102])
                elements = [(t, struct.pack("<H", kind) if t == 0x00000800 else v) for t, v in elements]
            elif how == 4:
                elements.insert(i, (tag, value))
            elif how == 5:
                j = r.randrange(len(elements))
                elements[i], elements[j] = elements[j], elements[i]
            elif how == 6:
                elements.append((r.choice([0x00000600, 0x00000700, 0x00001030, 0x00005010, 0x00080018,
                                           r.randrange(0x10000)]), self.junk()))
            elif how == 7:
                elements = [(t, struct.pack("<I", r.choice([0, 1, 2**31, 2**32 - 1])) if t == 0 else v)
                            for t, v in elements]
            else:  # the Affected / Requested SOP Class UID: well-formed, not the context's
                other = _even(r.choice([self.uid(), CT, VERIFICATION, "1.2.840.10008.5.1.4.1.2.2.3",
                                        "1.2.840.10008.5.1.4.31", "1.2.840.10008.3.1.2.3.3"]))
                elements = [(t, other if t in (0x00000002, 0x00000003) else v) for t, v in elements]
        data = b"".join(struct.pack("<HHI", t >> 16, t & 0xFFFF, len(v)) + v for t, v in elements)
        if r.random() < 0.1 and data:
            data = data[: r.randrange(len(data))]
        return data

    def dataset(self, template: list[tuple[int, str, Any]], fixed: dict[int, bytes] | None = None) -> bytes:
        """A data set of ``template``'s attributes, damaged at a rate chosen for it; ``fixed``
        values (the UIDs a C-STORE must carry to get past its checks) kept in most."""
        r = self.rng
        self.rate = r.choice([0.0, 0.01, 0.03, 0.1, 0.3])
        elements = self.elements(template)
        if fixed and r.random() < 0.8:
            elements = [(tag, fixed.get(tag, value)) for tag, value in elements]
        data = self.encode(elements)
        if r.random() < self.rate / 2 and data:
            data = data[: self.rng.randrange(len(data))]  # truncated
        return data


# (tag, VR, item template for SQ)
_CODE = [(0x00080100, "SH", None), (0x00080102, "SH", None), (0x00080104, "LO", None)]
QUERY = [
    (0x00080005, "CS", None), (0x00080016, "UI", None), (0x00080018, "UI", None), (0x00080020, "DA", None),
    (0x00080021, "DA", None), (0x00080030, "TM", None), (0x00080050, "SH", None), (0x00080052, "CS", None),
    (0x00080054, "AE", None), (0x00080056, "CS", None), (0x00080060, "CS", None), (0x00080061, "CS", None),
    (0x00080062, "UI", None), (0x00080090, "PN", None), (0x00080201, "SH", None), (0x00081030, "LO", None),
    (0x00081032, "SQ", _CODE), (0x00100010, "PN", None), (0x00100020, "LO", None), (0x00100030, "DA", None),
    (0x00100040, "CS", None), (0x00101010, "AS", None), (0x0020000D, "UI", None), (0x0020000E, "UI", None),
    (0x00200010, "SH", None), (0x00200011, "IS", None), (0x00200013, "IS", None), (0x00201206, "IS", None),
    (0x00201208, "IS", None), (0x00400275, "SQ", [(0x00401001, "SH", None), (0x00321060, "LO", None)]),
]
#: the keys of each Query/Retrieve level (PS3.4 C.6), those of the levels above included
_LEVEL_KEYS = {
    "PATIENT": {0x00100010, 0x00100020, 0x00100030, 0x00100040},
    "STUDY": {0x00080020, 0x00080030, 0x00080050, 0x00080061, 0x00080062, 0x00080090, 0x00081030, 0x00081032,
              0x00101010, 0x0020000D, 0x00200010, 0x00201206, 0x00201208, 0x00080201},
    "SERIES": {0x00080021, 0x00080060, 0x0020000E, 0x00200011, 0x00400275},
    "IMAGE": {0x00080016, 0x00080018, 0x00200013},
}
_ANY_LEVEL = {0x00080005, 0x00080052, 0x00080054, 0x00080056}


def query_at(level: str) -> list[tuple[int, str, Any]]:
    """The keys of QUERY a query at ``level`` may carry."""
    allowed = set(_ANY_LEVEL)
    for name in ("PATIENT", "STUDY", "SERIES", "IMAGE"):
        allowed |= _LEVEL_KEYS[name]
        if name == level:
            break
    return [key for key in QUERY if key[0] in allowed]


STEP = [
    (0x00080060, "CS", None), (0x00400001, "AE", None), (0x00400002, "DA", None), (0x00400003, "TM", None),
    (0x00400006, "PN", None), (0x00400007, "LO", None), (0x00400008, "SQ", _CODE), (0x00400009, "SH", None),
    (0x00400020, "CS", None),
]
WORKLIST_QUERY = [
    (0x00080005, "CS", None), (0x00080050, "SH", None), (0x00081110, "SQ", [(0x00081150, "UI", None),
                                                                           (0x00081155, "UI", None)]),
    (0x00100010, "PN", None), (0x00100020, "LO", None), (0x00100030, "DA", None), (0x0020000D, "UI", None),
    (0x00321060, "LO", None), (0x00380010, "LO", None), (0x00400100, "SQ", STEP), (0x00401001, "SH", None),
]
_REFERENCED = [(0x00081150, "UI", None), (0x00081155, "UI", None)]
MPPS_ATTRIBUTES = [
    (0x00080005, "CS", None), (0x00080060, "CS", None), (0x00081032, "SQ", _CODE), (0x00081120, "SQ", _REFERENCED),
    (0x00100010, "PN", None), (0x00100020, "LO", None), (0x00100030, "DA", None), (0x00100040, "CS", None),
    (0x00200010, "SH", None),
    (0x00400241, "AE", None), (0x00400242, "SH", None), (0x00400243, "SH", None), (0x00400244, "DA", None),
    (0x00400245, "TM", None), (0x00400250, "DA", None), (0x00400251, "TM", None), (0x00400252, "CS", None),
    (0x00400253, "SH", None), (0x00400254, "LO", None), (0x00400255, "LO", None), (0x00400260, "SQ", _CODE),
    (0x00400270, "SQ", [(0x0020000D, "UI", None), (0x00080050, "SH", None), (0x00401001, "SH", None),
                        (0x00321060, "LO", None), (0x00400009, "SH", None), (0x00400007, "LO", None),
                        (0x00400008, "SQ", _CODE), (0x00081110, "SQ", _REFERENCED)]),
    (0x00400340, "SQ", [(0x0020000E, "UI", None), (0x00081050, "PN", None), (0x00181030, "LO", None),
                        (0x00080054, "AE", None), (0x0008103E, "LO", None), (0x00081070, "PN", None),
                        (0x00081140, "SQ", _REFERENCED), (0x00400220, "SQ", _REFERENCED)]),
]
COMMITMENT_REQUEST = [(0x00081195, "UI", None), (0x00081199, "SQ", _REFERENCED)]
FILM_SESSION_ATTRIBUTES = [(0x20000010, "IS", None), (0x20000020, "CS", None), (0x20000030, "CS", None),
                           (0x20000040, "CS", None), (0x20000050, "LO", None)]
FILM_BOX_ATTRIBUTES = [(0x20100010, "ST", None), (0x20100040, "CS", None), (0x20100050, "CS", None),
                       (0x20100060, "CS", None), (0x20100100, "CS", None), (0x20100150, "ST", None),
                       (0x20100500, "SQ", _REFERENCED)]
IMAGE_BOX_ATTRIBUTES = [
    (0x20200010, "US", None),
    (0x20200110, "SQ", [(0x00280002, "US", None), (0x00280004, "CS", None), (0x00280010, "US", None),
                        (0x00280011, "US", None), (0x00280100, "US", None), (0x00280101, "US", None),
                        (0x00280102, "US", None), (0x00280103, "US", None), (0x7FE00010, "OW", None)]),
]
CT_INSTANCE = [
    (0x00080005, "CS", None), (0x00080016, "UI", None), (0x00080018, "UI", None), (0x00080020, "DA", None),
    (0x00080030, "TM", None), (0x00080050, "SH", None), (0x00080060, "CS", None), (0x00080090, "PN", None),
    (0x00081030, "LO", None), (0x00081032, "SQ", _CODE), (0x00100010, "PN", None), (0x00100020, "LO", None),
    (0x00100030, "DA", None), (0x00100040, "CS", None),
    (0x00101002, "SQ", [(0x00100020, "LO", None), (0x00100021, "LO", None), (0x00100022, "CS", None)]),
    (0x0020000D, "UI", None), (0x0020000E, "UI", None), (0x00200011, "IS", None),
    (0x00200013, "IS", None), (0x00280002, "US", None), (0x00280004, "CS", None), (0x00280010, "US", None),
    (0x00280011, "US", None), (0x00280100, "US", None), (0x00280101, "US", None), (0x00280102, "US", None),
    (0x00280103, "US", None),
    # the sequences the archive's index keeps, item by item (its header scan reads them)
    (0x00400275, "SQ", [(0x0020000D, "UI", None), (0x00080050, "SH", None), (0x00321060, "LO", None),
                        (0x00400009, "SH", None), (0x00400007, "LO", None), (0x00401001, "SH", None)]),
    (0x7FE00010, "OW", None),
]


def _even(uid: str) -> bytes:
    data = uid.encode()
    return data + b"\0" if len(data) % 2 else data


def clean_query(level: str) -> bytes:
    """A query at ``level`` with nothing damaged: the level and universal keys of it."""
    from pydicom.dataset import Dataset

    from dimsekit.datasets import encode_dataset

    ds = Dataset()
    ds.QueryRetrieveLevel = level
    ds.PatientID = ""
    if level != "PATIENT":
        ds.StudyInstanceUID = ""
    return encode_dataset(ds, IMPLICIT)


def valid_ct(fuzzer: Fuzzer, study: str, series: str, sop: str) -> bytes:
    from pydicom.dataset import Dataset

    from dimsekit.datasets import encode_dataset

    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CT, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientName, ds.PatientID, ds.StudyDate, ds.Modality = "Doe^John", "FUZZ-1", "20200101", "CT"
    ds.AccessionNumber, ds.SeriesNumber, ds.InstanceNumber = "A1", 1, 1
    return encode_dataset(ds, IMPLICIT)


async def main(reactor: Any, port: int, seed: int, count: int) -> dict[str, Any]:
    from dimsekit import ApplicationEntity
    from dimsekit.config import Config, Limits, NodeConfig
    from dimsekit.errors import DimsekitError

    config = Config(node=NodeConfig(ae_title="DIMSEKIT-FUZZ"), limits=Limits(acse_timeout=10, dimse_timeout=10))
    ae = ApplicationEntity(config=config, reactor=reactor)
    contexts = [(uid, [IMPLICIT]) for uid in (VERIFICATION, CT, STUDY_FIND, STUDY_MOVE, STUDY_GET, PATIENT_FIND,
                                              WORKLIST, MPPS, COMMITMENT, PRINT_META)]
    fuzzer = Fuzzer(seed)
    outcomes: Counter[str] = Counter()
    assoc: Any = None

    async def associate() -> Any:
        made = await ae.associate("127.0.0.1", port, called="DIMSEKIT", contexts=contexts,
                                  roles={CT: (True, True)}, connect_timeout=10)
        made.handlers[("C-STORE", None)] = lambda request: 0x0000  # a C-GET's instances: taken
        return made

    async def send(sop_class: str, command: dict[str, Any], payload: bytes | None, context_class: str) -> str:
        nonlocal assoc
        if assoc is None or assoc.ended is not None:
            assoc = await associate()
        context = assoc.context_for(context_class)
        command.setdefault("CommandDataSetType", 0x0101 if payload is None else 0x0001)
        operation = assoc.start_operation(context, command, payload)
        try:
            response = await operation.result
        except DimsekitError as exc:
            name = type(exc).__name__
            if "Timeout" in name:
                return "timeout"
            if assoc.ended is not None:
                return "aborted"
            return f"error {name}: {exc}"
        if sop_class in (MPPS, FILM_SESSION, FILM_BOX) and response.status == 0:
            created = response.command.get("AffectedSOPInstanceUID")
            if created:
                fuzzer.uids.append(str(created))
        return f"0x{response.status:04X}"

    async def send_damaged(context_class: str, command: dict[str, Any], payload: bytes | None) -> str:
        """A request whose command set is damaged, then a C-ECHO: the echo's answer shows the
        node went on (or the association is gone: an A-ABORT is an answer to some damage)."""
        nonlocal assoc
        from dimsekit.dimse.codec import encode_command

        if assoc is None or assoc.ended is not None:
            assoc = await associate()
        context = assoc.context_for(context_class)
        command = {**command, "MessageID": 30000 + fuzzer.rng.randrange(30000),
                   "CommandDataSetType": 0x0101 if payload is None else 0x0001}
        if fuzzer.rng.random() < 0.1:
            payload = None if payload is not None else fuzzer.dataset(QUERY)  # not what the command says
        try:
            assoc.send_encoded(context, fuzzer.command(encode_command(command)), payload)
            await assoc.echo()
        except DimsekitError as exc:
            name = type(exc).__name__
            if "Timeout" in name:
                return "timeout"
            if assoc.ended is not None:
                return "aborted"
            return f"error {name}: {exc}"
        return "0x0000"

    # a few valid instances first, for the queries to match
    studies = [fuzzer.uid() for _ in range(2)]
    for i in range(6):
        study = studies[i % 2]
        series, sop = f"{study}.1", fuzzer.uid()
        fuzzer.uids += [study, series, sop]
        status = await send(CT, {"CommandField": 0x0001, "AffectedSOPClassUID": CT, "AffectedSOPInstanceUID": sop,
                                 "Priority": 0}, valid_ct(fuzzer, study, series, sop), CT)
        outcomes[f"seed-store {status}"] += 1

    r = fuzzer.rng
    for _ in range(count):
        kind = r.choice(["find", "patient-find", "worklist", "get", "move", "store", "mpps-create", "mpps-set",
                         "commit", "film-session", "film-box", "image-box", "print", "printer", "delete",
                         "command", "command"])
        target = r.choice(fuzzer.uids) if fuzzer.uids and r.random() < 0.8 else fuzzer.uid()
        if kind == "command":
            uid = r.choice([STUDY_FIND, CT, MPPS, VERIFICATION, STUDY_GET])
            field, key = {STUDY_FIND: (0x0020, "AffectedSOPClassUID"), CT: (0x0001, "AffectedSOPClassUID"),
                          MPPS: (0x0140, "AffectedSOPClassUID"), VERIFICATION: (0x0030, "AffectedSOPClassUID"),
                          STUDY_GET: (0x0010, "AffectedSOPClassUID")}[uid]
            command = {"CommandField": field, key: uid}
            if field in (0x0001, 0x0020, 0x0010):
                command["Priority"] = 0
            if field in (0x0001, 0x0140):
                command["AffectedSOPInstanceUID"] = fuzzer.uid()
            payload = {VERIFICATION: None, CT: valid_ct(fuzzer, target, target + ".1", fuzzer.uid()),
                       MPPS: fuzzer.dataset(MPPS_ATTRIBUTES)}.get(uid, fuzzer.dataset(query_at("STUDY")))
            status = await send_damaged(uid, command, payload)
        elif kind in ("find", "patient-find", "worklist", "get", "move"):
            model = {"find": STUDY_FIND, "patient-find": PATIENT_FIND, "worklist": WORKLIST, "get": STUDY_GET,
                     "move": STUDY_MOVE}[kind]
            field = {"get": 0x0010, "move": 0x0021}.get(kind, 0x0020)
            command = {"CommandField": field, "AffectedSOPClassUID": model, "Priority": 0}
            if kind == "move":
                command["MoveDestination"] = r.choice(["NOWHERE", "ELSEWHERE", "ELSEWHERE", "DIMSEKIT"])
            if kind == "worklist":
                payload = fuzzer.dataset(WORKLIST_QUERY)
            else:
                level = r.choice(["PATIENT", "STUDY", "STUDY", "SERIES", "IMAGE"])
                payload = fuzzer.dataset(query_at(level), {0x00080052: level.encode() + b" " * (len(level) % 2)})
                if r.random() < 0.1:  # an undamaged query too, so that every seed has some that succeed
                    payload = clean_query(level)
            status = await send(model, command, payload, model)
        elif kind == "store":
            sop = fuzzer.uid() if r.random() < 0.9 else target
            study = r.choice(studies) if r.random() < 0.7 else fuzzer.uid()
            fixed = {0x00080016: CT.encode() + b"\0", 0x00080018: _even(sop), 0x0020000D: _even(study),
                     0x0020000E: _even(f"{study}.{r.randrange(3)}")}
            status = await send(CT, {"CommandField": 0x0001, "AffectedSOPClassUID": CT, "AffectedSOPInstanceUID": sop,
                                     "Priority": 0}, fuzzer.dataset(CT_INSTANCE, fixed), CT)
        elif kind == "mpps-create":
            # the Type 1 values an N-CREATE must carry to be taken (PS3.4 F.7.2.1), in most of them
            fixed = {0x00400252: b"IN PROGRESS ", 0x00400244: b"20200101", 0x00400245: b"1200",
                     0x00400241: b"CT1 ", 0x00400253: b"PPS1", 0x00080060: b"CT"}
            status = await send(MPPS, {"CommandField": 0x0140, "AffectedSOPClassUID": MPPS,
                                       "AffectedSOPInstanceUID": fuzzer.uid()}, fuzzer.dataset(MPPS_ATTRIBUTES, fixed),
                                MPPS)
        elif kind == "mpps-set":
            status = await send(MPPS, {"CommandField": 0x0120, "RequestedSOPClassUID": MPPS,
                                       "RequestedSOPInstanceUID": target}, fuzzer.dataset(MPPS_ATTRIBUTES), MPPS)
        elif kind == "commit":
            status = await send(COMMITMENT, {"CommandField": 0x0130, "RequestedSOPClassUID": COMMITMENT,
                                             "RequestedSOPInstanceUID": COMMITMENT_INSTANCE,
                                             "ActionTypeID": r.choice([1, 1, 1, 2])},
                                fuzzer.dataset(COMMITMENT_REQUEST), COMMITMENT)
        elif kind in ("film-session", "film-box"):
            sop_class, template = ((FILM_SESSION, FILM_SESSION_ATTRIBUTES) if kind == "film-session"
                                   else (FILM_BOX, FILM_BOX_ATTRIBUTES))
            status = await send(sop_class, {"CommandField": 0x0140, "AffectedSOPClassUID": sop_class},
                                fuzzer.dataset(template), PRINT_META)
        elif kind == "image-box":
            status = await send(IMAGE_BOX, {"CommandField": 0x0120, "RequestedSOPClassUID": IMAGE_BOX,
                                            "RequestedSOPInstanceUID": target},
                                fuzzer.dataset(IMAGE_BOX_ATTRIBUTES), PRINT_META)
        elif kind == "print":
            sop_class = r.choice([FILM_BOX, FILM_SESSION])
            status = await send(sop_class, {"CommandField": 0x0130, "RequestedSOPClassUID": sop_class,
                                            "RequestedSOPInstanceUID": target, "ActionTypeID": r.choice([1, 2])},
                                None, PRINT_META)
        elif kind == "printer":
            status = await send(PRINTER, {"CommandField": 0x0110, "RequestedSOPClassUID": PRINTER,
                                          "RequestedSOPInstanceUID": r.choice([PRINTER_INSTANCE, target])},
                                None, PRINT_META)
        else:
            sop_class = r.choice([FILM_BOX, FILM_SESSION])
            status = await send(sop_class, {"CommandField": 0x0150, "RequestedSOPClassUID": sop_class,
                                            "RequestedSOPInstanceUID": target}, None, PRINT_META)
        outcomes[f"{kind} {status}"] += 1
    if assoc is not None and assoc.ended is None:
        await assoc.release()
    return {"outcomes": dict(sorted(outcomes.items()))}


def run(reactor: Any) -> defer.Deferred:
    port, seed, count = (int(a) for a in sys.argv[1:4])
    d = defer.Deferred.fromCoroutine(main(reactor, port, seed, count))

    def done(result: dict[str, Any]) -> None:
        print(json.dumps(result), flush=True)

    def failed(failure: Any) -> None:
        print(json.dumps({"error": f"{type(failure.value).__name__}: {failure.value}",
                          "traceback": failure.getTraceback()}), flush=True)

    return d.addCallbacks(done, failed)


if __name__ == "__main__":
    task.react(run)
