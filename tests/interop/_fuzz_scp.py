"""A fuzzing SCP: answers queries and retrieves with damaged data sets, for the SCU tools.

    python _fuzz_scp.py PORT SEED

Serves Verification, Study and Patient Root FIND / GET / MOVE and Modality
Worklist FIND as ANY-SCP on 127.0.0.1:PORT (prints ``listening`` once it
does).  Every C-FIND is answered with 0-11 pending responses whose identifiers
are damaged as ``_fuzz.py`` damages requests, then a final status picked at
random (success, a failure with a junk Error Comment and one to three
Offending Elements, a status no standard defines); a C-GET sends 0-4 C-STORE
sub-operations of damaged CT data sets (the UIDs right in most) and a final response whose counts may be lies; a
C-MOVE only pending and final responses, their counts too; a storage commitment
N-ACTION is answered Success and followed by a damaged N-EVENT-REPORT on the same
association; MPPS and print requests get random statuses and damaged data sets (a film
box's image boxes among them).  Runs until killed.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet import defer

from tests.interop._fuzz import (
    CT,
    CT_INSTANCE,
    MPPS_ATTRIBUTES,
    QUERY,
    WORKLIST_QUERY,
    Fuzzer,
    _even,
)

STUDY_FIND, STUDY_MOVE, STUDY_GET = (f"1.2.840.10008.5.1.4.1.2.2.{n}" for n in (1, 2, 3))
PATIENT_FIND, PATIENT_MOVE, PATIENT_GET = (f"1.2.840.10008.5.1.4.1.2.1.{n}" for n in (1, 2, 3))
WORKLIST = "1.2.840.10008.5.1.4.31"
VERIFICATION = "1.2.840.10008.1.1"
COMMITMENT, COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1", "1.2.840.10008.1.20.1.1"
MPPS, MPPS_RETRIEVE = "1.2.840.10008.3.1.2.3.3", "1.2.840.10008.3.1.2.3.4"
PRINT_META, FILM_BOX, IMAGE_BOX = "1.2.840.10008.5.1.1.9", "1.2.840.10008.5.1.1.2", "1.2.840.10008.5.1.1.4"
#: a Printer's N-GET attributes (PS3.4 H.4.11.2.1.1)
PRINTER_ATTRIBUTES = [(0x21100010, "CS", None), (0x21100020, "CS", None), (0x21100030, "LO", None),
                      (0x00080070, "LO", None), (0x00181020, "LO", None)]
_REFERENCED = [(0x00081150, "UI", None), (0x00081155, "UI", None)]
#: an N-EVENT-REPORT of storage commitment (PS3.4 J.3.3.1): committed and failed references
COMMITMENT_REPORT = [(0x00081195, "UI", None), (0x00081199, "SQ", _REFERENCED),
                     (0x00081198, "SQ", [*_REFERENCED, (0x00081197, "US", None)])]
_COUNTS = ("NumberOfRemainingSuboperations", "NumberOfCompletedSuboperations",
           "NumberOfFailedSuboperations", "NumberOfWarningSuboperations")


def serve(port: int, seed: int) -> defer.Deferred:
    from twisted.internet import reactor

    from dimsekit import ApplicationEntity
    from dimsekit.config import Config, Limits, NodeConfig
    from dimsekit.hookspecs import hookimpl
    from dimsekit.plugin import make_plugin_manager
    from dimsekit.registry import ServiceClass

    fuzzer = Fuzzer(seed)
    r = fuzzer.rng

    def final() -> tuple[int, None, dict[str, Any]]:
        status = r.choice([0x0000, 0x0000, 0xA700, 0xA900, 0xC000, 0xFE00, 0xB000, 0x1234])
        fields: dict[str, Any] = {}
        if status not in (0x0000, 0xFE00) and r.random() < 0.5:
            fields["ErrorComment"] = fuzzer.junk().decode("latin-1")[:64]
        if status not in (0x0000, 0xFE00) and r.random() < 0.3:
            # one to three tags (AT is 1-n), some no dictionary knows
            fields["OffendingElement"] = [r.choice([0x00100010, 0x00080052, 0x00091001, 0xFFFFFFFF])
                                          for _ in range(r.randint(1, 3))]
        return status, None, fields

    def counts() -> dict[str, int]:
        return {name: r.choice([0, 1, 3, 65535]) for name in _COUNTS if r.random() < 0.7}

    def find(request: Any) -> Any:
        template = WORKLIST_QUERY if request.sop_class_uid == WORKLIST else QUERY
        for _ in range(r.randrange(12)):
            yield r.choice([0xFF00, 0xFF00, 0xFF01]), fuzzer.dataset(template)
        yield final()

    async def get(request: Any) -> Any:
        association = request.association
        for _ in range(r.randrange(5)):
            study, sop = fuzzer.uid(), fuzzer.uid()
            fixed = {0x00080016: CT.encode() + b"\0", 0x00080018: _even(sop), 0x0020000D: _even(study),
                     0x0020000E: _even(study + ".1")}
            try:
                context = association.context_for(CT)
            except Exception:
                break  # the requestor did not take the SCP role for CT
            command = {"CommandField": 0x0001, "AffectedSOPClassUID": CT, "AffectedSOPInstanceUID": sop,
                       "Priority": 0, "CommandDataSetType": 0x0001}
            try:
                await association.start_operation(context, command, fuzzer.dataset(CT_INSTANCE, fixed)).result
            except Exception:
                return
            yield 0xFF00, None, counts()
        status, dataset, fields = final()
        yield status, dataset, {**fields, **counts()}

    def commit(request: Any) -> int:
        """N-ACTION Request Storage Commitment: Success, then (next turn) a report on the same
        association -- damaged, its Transaction UID the request's in most."""
        received = request.dataset()
        txn = str(received.get("TransactionUID", "")) if received is not None else ""
        fixed = {0x00081195: _even(txn)} if txn and r.random() < 0.8 else None

        def report() -> None:
            association = request.association
            if association.ended is None:
                association.n_event_report(COMMITMENT, COMMITMENT_INSTANCE, r.choice([1, 2, 2, 3]),
                                           fuzzer.dataset(COMMITMENT_REPORT, fixed)).addErrback(lambda _: None)

        reactor.callLater(0.05, report)
        return 0x0000

    def n_status() -> int:
        return r.choice([0x0000, 0x0000, 0x0000, 0x0106, 0x0110, 0x0112, 0x0120, 0xB600, 0x1234])

    def mpps(request: Any) -> Any:
        """MPPS N-CREATE, N-SET, N-GET (its Retrieve SOP class): a status, a damaged data set."""
        status = n_status()
        fields = {"AffectedSOPInstanceUID": fuzzer.uid()} if request.name == "N-CREATE" else {}
        return status, fuzzer.dataset(MPPS_ATTRIBUTES) if r.random() < 0.8 else None, fields

    def printing(request: Any) -> Any:
        """Print management: a film box's N-CREATE answered with image boxes (damaged in some),
        the rest with a status and, for N-GET, a damaged data set."""
        if request.name == "N-CREATE":
            fields = {"AffectedSOPInstanceUID": fuzzer.uid()}
            if request.sop_class_uid == FILM_BOX:
                boxes = [[(0x00081150, "UI", None), (0x00081155, "UI", None)]] * r.randrange(5)
                template = [(0x20100510, "SQ", [(0x00081150, "UI", None), (0x00081155, "UI", None)])]
                fixed = {0x00081150: _even(IMAGE_BOX)} if boxes else None
                return n_status(), fuzzer.dataset(template, fixed), fields
            return n_status(), None, fields
        if request.name == "N-GET":
            return n_status(), fuzzer.dataset(PRINTER_ATTRIBUTES), {}
        return n_status()

    def move(request: Any) -> Any:
        for _ in range(r.randrange(4)):
            yield 0xFF00, None, counts()
        status, dataset, fields = final()
        yield status, dataset, {**fields, **counts()}

    class FuzzServices:
        @hookimpl
        def dimsekit_service_classes(self) -> list[ServiceClass]:
            return [
                ServiceClass(name="echo", sop_classes=(VERIFICATION,), handlers={"C-ECHO": lambda request: 0}),
                ServiceClass(name="find", sop_classes=(STUDY_FIND, PATIENT_FIND, WORKLIST), handlers={"C-FIND": find}),
                ServiceClass(name="get", sop_classes=(STUDY_GET, PATIENT_GET), handlers={"C-GET": get}),
                ServiceClass(name="move", sop_classes=(STUDY_MOVE, PATIENT_MOVE), handlers={"C-MOVE": move}),
                ServiceClass(name="get-storage", sop_classes=(CT,), scp_role=False, scu_role=True),
                ServiceClass(name="commitment", sop_classes=(COMMITMENT,), handlers={"N-ACTION": commit},
                             scu_role=True),
                ServiceClass(name="mpps", sop_classes=(MPPS, MPPS_RETRIEVE),
                             handlers={"N-CREATE": mpps, "N-SET": mpps, "N-GET": mpps}),
                ServiceClass(name="print", sop_classes=(PRINT_META,),
                             handlers={name: printing for name in ("N-CREATE", "N-SET", "N-ACTION", "N-DELETE",
                                                                   "N-GET")}),
            ]

    pm = make_plugin_manager(load_entrypoints=False, plugins=[FuzzServices()])
    config = Config(node=NodeConfig(ae_title="ANY-SCP"), limits=Limits(dimse_timeout=10))
    ae = ApplicationEntity(config=config, plugin_manager=pm, reactor=reactor)
    d = ae.listen(port, "127.0.0.1")
    d.addCallback(lambda _: print("listening", flush=True))
    return d


if __name__ == "__main__":
    from twisted.internet import reactor

    serve(int(sys.argv[1]), int(sys.argv[2])).addErrback(lambda f: (print(f.getTraceback(), flush=True),
                                                                      reactor.stop()))
    reactor.run()
