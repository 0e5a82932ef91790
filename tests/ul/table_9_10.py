"""PS3.8 Table 9-10, "DICOM Upper Layer Protocol State Transition Table", typed
from the standard -- independently of ``dimsekit/ul/fsm.py``.

This copy exists to check ``fsm.TRANSITIONS`` against (``test_fsm.py``); it is
never derived from it.  Keys are ``(state, event)`` in the standard's own
notation, values the action of that cell.  A pair that is absent is a blank
cell of the table: 13 states x 19 events = 247 cells, 123 filled, 124 blank.

Sources read while typing it: PS3.8 section 9.2 (dicom.nema.org, part08
sect_9.2.2 for the action definitions and sect_9.2.3 for the table; the
dabsoft.ch mirror of 9.2.3 renders the table garbled), cross-checked cell by
cell against two independent transcriptions of the same table in
open-source DICOM implementations.  All of them agree on every cell.

Reading the table by rows (events), the pattern to remember:

* Every PDU or invalid input arriving where it has no business (the
  "received" rows, Sta3 and Sta5-Sta12) is AA-8; on a fresh connection
  (Sta2) it is AA-1; while waiting for the close (Sta13) it is AA-6 (ignore)
  except an A-ASSOCIATE-RQ or an invalid PDU, which get AA-7.
* Sta1 and Sta4 have no transport connection, so no "received" cell.
* An A-ABORT request (Evt15) is AA-1 everywhere an association exists or is
  being negotiated (Sta3, Sta5-Sta12), AA-2 while connecting (Sta4), blank in
  Sta1, Sta2 and Sta13.
"""

from __future__ import annotations

STATES = tuple(f"Sta{n}" for n in range(1, 14))
EVENTS = tuple(f"Evt{n}" for n in range(1, 20))

TABLE_9_10: dict[tuple[str, str], str] = {
    # Evt1  A-ASSOCIATE Request (local user)
    ("Sta1", "Evt1"): "AE-1",
    # Evt2  Transport Conn. Confirm (local transport service)
    ("Sta4", "Evt2"): "AE-2",
    # Evt3  A-ASSOCIATE-AC PDU (received on transport connection)
    ("Sta2", "Evt3"): "AA-1",
    ("Sta3", "Evt3"): "AA-8",
    ("Sta5", "Evt3"): "AE-3",
    ("Sta6", "Evt3"): "AA-8",
    ("Sta7", "Evt3"): "AA-8",
    ("Sta8", "Evt3"): "AA-8",
    ("Sta9", "Evt3"): "AA-8",
    ("Sta10", "Evt3"): "AA-8",
    ("Sta11", "Evt3"): "AA-8",
    ("Sta12", "Evt3"): "AA-8",
    ("Sta13", "Evt3"): "AA-6",
    # Evt4  A-ASSOCIATE-RJ PDU (received on transport connection)
    ("Sta2", "Evt4"): "AA-1",
    ("Sta3", "Evt4"): "AA-8",
    ("Sta5", "Evt4"): "AE-4",
    ("Sta6", "Evt4"): "AA-8",
    ("Sta7", "Evt4"): "AA-8",
    ("Sta8", "Evt4"): "AA-8",
    ("Sta9", "Evt4"): "AA-8",
    ("Sta10", "Evt4"): "AA-8",
    ("Sta11", "Evt4"): "AA-8",
    ("Sta12", "Evt4"): "AA-8",
    ("Sta13", "Evt4"): "AA-6",
    # Evt5  Transport Connection Indication (local transport service)
    ("Sta1", "Evt5"): "AE-5",
    # Evt6  A-ASSOCIATE-RQ PDU (received on transport connection)
    ("Sta2", "Evt6"): "AE-6",
    ("Sta3", "Evt6"): "AA-8",
    ("Sta5", "Evt6"): "AA-8",
    ("Sta6", "Evt6"): "AA-8",
    ("Sta7", "Evt6"): "AA-8",
    ("Sta8", "Evt6"): "AA-8",
    ("Sta9", "Evt6"): "AA-8",
    ("Sta10", "Evt6"): "AA-8",
    ("Sta11", "Evt6"): "AA-8",
    ("Sta12", "Evt6"): "AA-8",
    ("Sta13", "Evt6"): "AA-7",
    # Evt7  A-ASSOCIATE response primitive (accept)
    ("Sta3", "Evt7"): "AE-7",
    # Evt8  A-ASSOCIATE response primitive (reject)
    ("Sta3", "Evt8"): "AE-8",
    # Evt9  P-DATA request primitive
    ("Sta6", "Evt9"): "DT-1",
    ("Sta8", "Evt9"): "AR-7",
    # Evt10 P-DATA-TF PDU
    ("Sta2", "Evt10"): "AA-1",
    ("Sta3", "Evt10"): "AA-8",
    ("Sta5", "Evt10"): "AA-8",
    ("Sta6", "Evt10"): "DT-2",
    ("Sta7", "Evt10"): "AR-6",
    ("Sta8", "Evt10"): "AA-8",
    ("Sta9", "Evt10"): "AA-8",
    ("Sta10", "Evt10"): "AA-8",
    ("Sta11", "Evt10"): "AA-8",
    ("Sta12", "Evt10"): "AA-8",
    ("Sta13", "Evt10"): "AA-6",
    # Evt11 A-RELEASE Request primitive
    ("Sta6", "Evt11"): "AR-1",
    # Evt12 A-RELEASE-RQ PDU (received on open transport connection)
    ("Sta2", "Evt12"): "AA-1",
    ("Sta3", "Evt12"): "AA-8",
    ("Sta5", "Evt12"): "AA-8",
    ("Sta6", "Evt12"): "AR-2",
    ("Sta7", "Evt12"): "AR-8",
    ("Sta8", "Evt12"): "AA-8",
    ("Sta9", "Evt12"): "AA-8",
    ("Sta10", "Evt12"): "AA-8",
    ("Sta11", "Evt12"): "AA-8",
    ("Sta12", "Evt12"): "AA-8",
    ("Sta13", "Evt12"): "AA-6",
    # Evt13 A-RELEASE-RP PDU (received on transport connection)
    ("Sta2", "Evt13"): "AA-1",
    ("Sta3", "Evt13"): "AA-8",
    ("Sta5", "Evt13"): "AA-8",
    ("Sta6", "Evt13"): "AA-8",
    ("Sta7", "Evt13"): "AR-3",
    ("Sta8", "Evt13"): "AA-8",
    ("Sta9", "Evt13"): "AA-8",
    ("Sta10", "Evt13"): "AR-10",
    ("Sta11", "Evt13"): "AR-3",
    ("Sta12", "Evt13"): "AA-8",
    ("Sta13", "Evt13"): "AA-6",
    # Evt14 A-RELEASE Response primitive
    ("Sta8", "Evt14"): "AR-4",
    ("Sta9", "Evt14"): "AR-9",
    ("Sta12", "Evt14"): "AR-4",
    # Evt15 A-ABORT Request primitive
    ("Sta3", "Evt15"): "AA-1",
    ("Sta4", "Evt15"): "AA-2",
    ("Sta5", "Evt15"): "AA-1",
    ("Sta6", "Evt15"): "AA-1",
    ("Sta7", "Evt15"): "AA-1",
    ("Sta8", "Evt15"): "AA-1",
    ("Sta9", "Evt15"): "AA-1",
    ("Sta10", "Evt15"): "AA-1",
    ("Sta11", "Evt15"): "AA-1",
    ("Sta12", "Evt15"): "AA-1",
    # Evt16 A-ABORT PDU (received on open transport connection)
    ("Sta2", "Evt16"): "AA-2",
    ("Sta3", "Evt16"): "AA-3",
    ("Sta5", "Evt16"): "AA-3",
    ("Sta6", "Evt16"): "AA-3",
    ("Sta7", "Evt16"): "AA-3",
    ("Sta8", "Evt16"): "AA-3",
    ("Sta9", "Evt16"): "AA-3",
    ("Sta10", "Evt16"): "AA-3",
    ("Sta11", "Evt16"): "AA-3",
    ("Sta12", "Evt16"): "AA-3",
    ("Sta13", "Evt16"): "AA-2",
    # Evt17 Transport connection closed indication (local transport service)
    ("Sta2", "Evt17"): "AA-5",
    ("Sta3", "Evt17"): "AA-4",
    ("Sta4", "Evt17"): "AA-4",
    ("Sta5", "Evt17"): "AA-4",
    ("Sta6", "Evt17"): "AA-4",
    ("Sta7", "Evt17"): "AA-4",
    ("Sta8", "Evt17"): "AA-4",
    ("Sta9", "Evt17"): "AA-4",
    ("Sta10", "Evt17"): "AA-4",
    ("Sta11", "Evt17"): "AA-4",
    ("Sta12", "Evt17"): "AA-4",
    ("Sta13", "Evt17"): "AR-5",
    # Evt18 ARTIM timer expired (Association reject/release timer)
    ("Sta2", "Evt18"): "AA-2",
    ("Sta13", "Evt18"): "AA-2",
    # Evt19 Unrecognized or invalid PDU received
    ("Sta2", "Evt19"): "AA-1",
    ("Sta3", "Evt19"): "AA-8",
    ("Sta5", "Evt19"): "AA-8",
    ("Sta6", "Evt19"): "AA-8",
    ("Sta7", "Evt19"): "AA-8",
    ("Sta8", "Evt19"): "AA-8",
    ("Sta9", "Evt19"): "AA-8",
    ("Sta10", "Evt19"): "AA-8",
    ("Sta11", "Evt19"): "AA-8",
    ("Sta12", "Evt19"): "AA-8",
    ("Sta13", "Evt19"): "AA-7",
}

#: The next state of each action (PS3.8 Tables 9-6 to 9-9).  AE-6 and AR-8 depend
#: on circumstances ("Sta3 or Sta13", "Sta9 if association-requestor, else Sta10").
NEXT_STATE: dict[str, str] = {
    "AE-1": "Sta4",
    "AE-2": "Sta5",
    "AE-3": "Sta6",
    "AE-4": "Sta1",
    "AE-5": "Sta2",
    "AE-6": "Sta3|Sta13",
    "AE-7": "Sta6",
    "AE-8": "Sta13",
    "DT-1": "Sta6",
    "DT-2": "Sta6",
    "AR-1": "Sta7",
    "AR-2": "Sta8",
    "AR-3": "Sta1",
    "AR-4": "Sta13",
    "AR-5": "Sta1",
    "AR-6": "Sta7",
    "AR-7": "Sta8",
    "AR-8": "Sta9|Sta10",
    "AR-9": "Sta11",
    "AR-10": "Sta12",
    "AA-1": "Sta13",
    "AA-2": "Sta1",
    "AA-3": "Sta1",
    "AA-4": "Sta1",
    "AA-5": "Sta1",
    "AA-6": "Sta13",
    "AA-7": "Sta13",
    "AA-8": "Sta13",
}
