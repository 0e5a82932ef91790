"""Golden PDUs: bytes written field by field from PS3.8 / PS3.7, and their values.

Every length below was counted by hand from the fields that follow it; the
codec is checked against these bytes, never the other way round.  Byte
numbers in the comments are the standard's (1-based, from the start of the
PDU or item).

``GOLDEN`` lists ``(name, wire bytes, decoded value)`` for the tests.
"""

from __future__ import annotations

from dimsekit.ul.items import (
    AsynchronousOperationsWindow,
    ImplementationClassUID,
    ImplementationVersionName,
    MaximumLength,
    PresentationContextAC,
    PresentationContextRQ,
    RoleSelection,
    SOPClassCommonExtendedNegotiation,
    SOPClassExtendedNegotiation,
    UnknownItem,
    UserIdentityAC,
    UserIdentityRQ,
    UserInformation,
)
from dimsekit.ul.pdu import (
    Abort,
    AssociateAC,
    AssociateRJ,
    AssociateRQ,
    PDataTF,
    PresentationDataValue,
    ReleaseRP,
    ReleaseRQ,
)

_ZERO32 = b"\x00" * 32  # bytes 43-74 of A-ASSOCIATE-RQ/AC: reserved

VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
PROCEDURE_LOG = "1.2.840.10008.5.1.4.1.1.88.40"
ENHANCED_SR = "1.2.840.10008.5.1.4.1.1.88.22"
STORAGE_SERVICE_CLASS = "1.2.840.10008.4.2"
DCMTK_UID = "1.2.276.0.7230010.3.0.3.6.8"
DIMSEKIT_UID = "2.25.229730216473619428473591043416245851392"

# -----------------------------------------------------------------------------
# A-ASSOCIATE-RQ from an echoscu-like peer (PS3.8 Table 9-11):
# Verification over Implicit VR Little Endian, max PDU 16384, impl UID/version.
# -----------------------------------------------------------------------------
ASSOCIATE_RQ_ECHO = (
    b"\x01"  # 1      PDU-type 01H
    b"\x00"  # 2      reserved
    b"\x00\x00\x00\xcd"  # 3-6    PDU-length 205 = 68 fixed + 25 + 50 + 62
    b"\x00\x01"  # 7-8    protocol-version: bit 0 (version 1)
    b"\x00\x00"  # 9-10   reserved
    b"ANY-SCP         "  # 11-26  called-AE-title, 7 chars + 9 spaces
    b"ECHOSCU         "  # 27-42  calling-AE-title
    + _ZERO32  # 43-74  reserved
    # Application Context item (Table 9-12), 25 bytes
    + b"\x10"  # item-type 10H
    b"\x00"  # reserved
    b"\x00\x15"  # item-length 21
    b"1.2.840.10008.3.1.1.1"  # application-context-name (21)
    # Presentation Context item (Table 9-13), 50 bytes
    b"\x20"  # item-type 20H
    b"\x00"  # reserved
    b"\x00\x2e"  # item-length 46 = 4 + 21 + 21
    b"\x01"  # presentation-context-ID 1
    b"\x00\x00\x00"  # reserved x3
    b"\x30\x00\x00\x11"  # Abstract Syntax sub-item (Table 9-14): 30H, rsv, length 17
    b"1.2.840.10008.1.1"  # Verification SOP Class (17)
    b"\x40\x00\x00\x11"  # Transfer Syntax sub-item (Table 9-15): 40H, rsv, length 17
    b"1.2.840.10008.1.2"  # Implicit VR Little Endian (17)
    # User Information item (Table 9-16), 62 bytes
    b"\x50"  # item-type 50H
    b"\x00"  # reserved
    b"\x00\x3a"  # item-length 58 = 8 + 31 + 19
    b"\x51\x00\x00\x04"  # Maximum Length sub-item (PS3.8 D.1-1): 51H, rsv, length 4
    b"\x00\x00\x40\x00"  # maximum-length-received 16384
    b"\x52\x00\x00\x1b"  # Implementation Class UID (PS3.7 D.3-1): 52H, rsv, length 27
    b"1.2.276.0.7230010.3.0.3.6.8"  # (27)
    b"\x55\x00\x00\x0f"  # Implementation Version Name (D.3-3): 55H, rsv, length 15
    b"OFFIS_DCMTK_368"  # (15)
)
ASSOCIATE_RQ_ECHO_VALUE = AssociateRQ(
    called_ae_title="ANY-SCP",
    calling_ae_title="ECHOSCU",
    presentation_contexts=(
        PresentationContextRQ(
            context_id=1, abstract_syntax=VERIFICATION, transfer_syntaxes=(IMPLICIT_VR_LE,)
        ),
    ),
    user_information=UserInformation(
        items=(
            MaximumLength(maximum_length=16384),
            ImplementationClassUID(uid=DCMTK_UID),
            ImplementationVersionName(name="OFFIS_DCMTK_368"),
        )
    ),
)

# -----------------------------------------------------------------------------
# A-ASSOCIATE-AC answering it (PS3.8 Table 9-17), max PDU 32768.
# -----------------------------------------------------------------------------
ASSOCIATE_AC_ECHO = (
    b"\x02"  # 1      PDU-type 02H
    b"\x00"  # 2      reserved
    b"\x00\x00\x00\xb8"  # 3-6    PDU-length 184 = 68 + 25 + 29 + 62
    b"\x00\x01"  # 7-8    protocol-version
    b"\x00\x00"  # 9-10   reserved
    b"ANY-SCP         "  # 11-26  reserved, the RQ's called-AE-title
    b"ECHOSCU         "  # 27-42  reserved, the RQ's calling-AE-title
    + _ZERO32  # 43-74  reserved
    # Application Context item, 25 bytes
    + b"\x10\x00\x00\x15"  # 10H, rsv, length 21
    b"1.2.840.10008.3.1.1.1"
    # Presentation Context item, AC (Table 9-18), 29 bytes
    b"\x21"  # item-type 21H
    b"\x00"  # reserved
    b"\x00\x19"  # item-length 25 = 4 + 21
    b"\x01"  # presentation-context-ID 1
    b"\x00"  # reserved
    b"\x00"  # result/reason 0: acceptance
    b"\x00"  # reserved
    b"\x40\x00\x00\x11"  # Transfer Syntax sub-item (Table 9-19): 40H, rsv, length 17
    b"1.2.840.10008.1.2"
    # User Information item, 62 bytes
    b"\x50\x00\x00\x3a"  # 50H, rsv, length 58
    b"\x51\x00\x00\x04"  # Maximum Length: length 4
    b"\x00\x00\x80\x00"  # 32768
    b"\x52\x00\x00\x1b"  # Implementation Class UID (PS3.7 D.3-2): length 27
    b"1.2.276.0.7230010.3.0.3.6.8"
    b"\x55\x00\x00\x0f"  # Implementation Version Name (D.3-4): length 15
    b"OFFIS_DCMTK_368"
)
ASSOCIATE_AC_ECHO_VALUE = AssociateAC(
    called_ae_title="ANY-SCP",
    calling_ae_title="ECHOSCU",
    presentation_contexts=(
        PresentationContextAC(context_id=1, result=0, transfer_syntax=IMPLICIT_VR_LE),
    ),
    user_information=UserInformation(
        items=(
            MaximumLength(maximum_length=32768),
            ImplementationClassUID(uid=DCMTK_UID),
            ImplementationVersionName(name="OFFIS_DCMTK_368"),
        )
    ),
)

# -----------------------------------------------------------------------------
# A-ASSOCIATE-RQ using every user-information sub-item (PS3.7 D.3.3), two
# presentation contexts, an unknown sub-item and an unknown variable item.
# -----------------------------------------------------------------------------
ASSOCIATE_RQ_EXTENDED = (
    b"\x01\x00"  # 1-2    PDU-type 01H, reserved
    b"\x00\x00\x01\xfb"  # 3-6    PDU-length 507 = 68 + 25 + 81 + 60 + 267 + 6
    b"\x00\x01\x00\x00"  # 7-10   protocol-version 1, reserved
    b"ARCHIVE         "  # 11-26  called-AE-title (7 + 9 spaces)
    b"CT_SCANNER_01   "  # 27-42  calling-AE-title (13 + 3 spaces)
    + _ZERO32  # 43-74  reserved
    + b"\x10\x00\x00\x15"  # Application Context item, length 21 (25 in all)
    b"1.2.840.10008.3.1.1.1"
    # Presentation Context 1 (Table 9-13), 81 bytes
    b"\x20\x00\x00\x4d"  # 20H, rsv, length 77 = 4 + 29 + 23 + 21
    b"\x01\x00\x00\x00"  # context-ID 1, reserved x3
    b"\x30\x00\x00\x19"  # abstract syntax, length 25
    b"1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    b"\x40\x00\x00\x13"  # transfer syntax, length 19
    b"1.2.840.10008.1.2.1"  # Explicit VR Little Endian
    b"\x40\x00\x00\x11"  # transfer syntax, length 17
    b"1.2.840.10008.1.2"  # Implicit VR Little Endian
    # Presentation Context 3, 60 bytes
    b"\x20\x00\x00\x38"  # 20H, rsv, length 56 = 4 + 31 + 21
    b"\x03\x00\x00\x00"  # context-ID 3, reserved x3
    b"\x30\x00\x00\x1b"  # abstract syntax, length 27
    b"1.2.840.10008.5.1.4.1.2.2.2"  # Study Root Q/R - MOVE
    b"\x40\x00\x00\x11"  # transfer syntax, length 17
    b"1.2.840.10008.1.2"
    # User Information item, 267 bytes
    b"\x50\x00\x01\x07"  # 50H, rsv, length 263 = 8+48+8+33+16+34+87+21+8
    b"\x51\x00\x00\x04"  # Maximum Length (PS3.8 D.1-1), length 4
    b"\x00\x00\x00\x00"  #   0 = no limit
    b"\x52\x00\x00\x2c"  # Implementation Class UID (PS3.7 D.3-1), length 44
    b"2.25.229730216473619428473591043416245851392"
    b"\x53\x00\x00\x04"  # Asynchronous Operations Window (D.3-7), length 4
    b"\x00\x05"  #   5-6 maximum-number-operations-invoked 5
    b"\x00\x03"  #   7-8 maximum-number-operations-performed 3
    b"\x54\x00\x00\x1d"  # SCP/SCU Role Selection (D.3-9), length 29 = 2 + 25 + 2
    b"\x00\x19"  #   5-6 UID-length 25
    b"1.2.840.10008.5.1.4.1.1.2"  #   SOP-class-uid
    b"\x00"  #   SCU-role 0
    b"\x01"  #   SCP-role 1
    b"\x55\x00\x00\x0c"  # Implementation Version Name (D.3-3), length 12
    b"DIMSEKIT_010"
    b"\x56\x00\x00\x1e"  # SOP Class Extended Negotiation (D.3-11), length 30 = 2 + 27 + 1
    b"\x00\x1b"  #   SOP-class-uid-length 27
    b"1.2.840.10008.5.1.4.1.2.2.2"
    b"\x01"  #   service-class-application-information (relational retrieval)
    b"\x57"  # SOP Class Common Extended Negotiation (D.3-12)
    b"\x00"  #   2   sub-item-version 0
    b"\x00\x53"  #   3-4 item-length 83 = 2+29 + 2+17 + 2+31
    b"\x00\x1d"  #   SOP-class-uid-length 29
    b"1.2.840.10008.5.1.4.1.1.88.40"  #   Procedure Log Storage
    b"\x00\x11"  #   service-class-uid-length 17
    b"1.2.840.10008.4.2"  #   Storage Service Class
    b"\x00\x1f"  #   related-general-sop-class-identification-length 31
    b"\x00\x1d"  #     (D.3-13) related-general-sop-class-uid-length 29
    b"1.2.840.10008.5.1.4.1.1.88.22"  #     Enhanced SR Storage
    b"\x58\x00\x00\x11"  # User Identity RQ (D.3-14), length 17 = 1+1+2+5+2+6
    b"\x02"  #   5 user-identity-type 2: username and passcode
    b"\x01"  #   6 positive-response-requested 1
    b"\x00\x05"  #   7-8 primary-field-length 5
    b"alice"  #   primary-field
    b"\x00\x06"  #   secondary-field-length 6
    b"s3cret"  #   secondary-field
    b"\x7f\x00\x00\x04"  # a sub-item type no edition defines (yet), length 4
    b"\xde\xad\xbe\xef"
    # an unknown variable item after the user information, 6 bytes
    b"\x60\x00\x00\x02"  # item-type 60H, rsv, length 2
    b"\x01\x02"
)
ASSOCIATE_RQ_EXTENDED_VALUE = AssociateRQ(
    called_ae_title="ARCHIVE",
    calling_ae_title="CT_SCANNER_01",
    presentation_contexts=(
        PresentationContextRQ(
            context_id=1,
            abstract_syntax=CT_IMAGE_STORAGE,
            transfer_syntaxes=(EXPLICIT_VR_LE, IMPLICIT_VR_LE),
        ),
        PresentationContextRQ(
            context_id=3, abstract_syntax=STUDY_ROOT_MOVE, transfer_syntaxes=(IMPLICIT_VR_LE,)
        ),
    ),
    user_information=UserInformation(
        items=(
            MaximumLength(maximum_length=0),
            ImplementationClassUID(uid=DIMSEKIT_UID),
            AsynchronousOperationsWindow(max_operations_invoked=5, max_operations_performed=3),
            RoleSelection(sop_class_uid=CT_IMAGE_STORAGE, scu_role=0, scp_role=1),
            ImplementationVersionName(name="DIMSEKIT_010"),
            SOPClassExtendedNegotiation(
                sop_class_uid=STUDY_ROOT_MOVE, service_class_application_information=b"\x01"
            ),
            SOPClassCommonExtendedNegotiation(
                sop_class_uid=PROCEDURE_LOG,
                service_class_uid=STORAGE_SERVICE_CLASS,
                related_general_sop_classes=(ENHANCED_SR,),
            ),
            UserIdentityRQ(
                identity_type=2,
                positive_response_requested=True,
                primary_field=b"alice",
                secondary_field=b"s3cret",
            ),
            UnknownItem(item_type=0x7F, data=b"\xde\xad\xbe\xef"),
        )
    ),
    unknown_items=(UnknownItem(item_type=0x60, data=b"\x01\x02"),),
)

# -----------------------------------------------------------------------------
# A-ASSOCIATE-AC answering it: context 1 accepted, context 3 refused without a
# transfer syntax sub-item, role / async / extended / identity answered.
# -----------------------------------------------------------------------------
ASSOCIATE_AC_EXTENDED = (
    b"\x02\x00"  # 1-2    PDU-type 02H, reserved
    b"\x00\x00\x01\x11"  # 3-6    PDU-length 273 = 68 + 25 + 31 + 8 + 141
    b"\x00\x01\x00\x00"  # 7-10   protocol-version 1, reserved
    b"ARCHIVE         "  # 11-26
    b"CT_SCANNER_01   "  # 27-42
    + _ZERO32  # 43-74
    + b"\x10\x00\x00\x15"  # Application Context item, length 21
    b"1.2.840.10008.3.1.1.1"
    # Presentation Context 1 (Table 9-18), 31 bytes
    b"\x21\x00\x00\x1b"  # 21H, rsv, length 27 = 4 + 23
    b"\x01\x00\x00\x00"  # context-ID 1, rsv, result 0 acceptance, rsv
    b"\x40\x00\x00\x13"  # transfer syntax, length 19
    b"1.2.840.10008.1.2.1"
    # Presentation Context 3, 8 bytes, no transfer syntax sub-item
    b"\x21\x00\x00\x04"  # 21H, rsv, length 4
    b"\x03\x00\x03\x00"  # context-ID 3, rsv, result 3 abstract-syntax-not-supported, rsv
    # User Information item, 141 bytes
    b"\x50\x00\x00\x89"  # 50H, rsv, length 137 = 8 + 48 + 8 + 33 + 34 + 6
    b"\x51\x00\x00\x04"  # Maximum Length, length 4
    b"\x00\x01\x00\x00"  #   65536
    b"\x52\x00\x00\x2c"  # Implementation Class UID, length 44
    b"2.25.229730216473619428473591043416245851392"
    b"\x53\x00\x00\x04"  # Asynchronous Operations Window (D.3-8)
    b"\x00\x01\x00\x01"  #   invoked 1, performed 1
    b"\x54\x00\x00\x1d"  # SCP/SCU Role Selection (D.3-10), length 29
    b"\x00\x19"  #   UID-length 25
    b"1.2.840.10008.5.1.4.1.1.2"
    b"\x00\x01"  #   SCU-role 0, SCP-role 1
    b"\x56\x00\x00\x1e"  # SOP Class Extended Negotiation (D.3-11), length 30
    b"\x00\x1b"
    b"1.2.840.10008.5.1.4.1.2.2.2"
    b"\x00"  #   relational retrieval refused
    b"\x59\x00\x00\x02"  # User Identity AC (D.3-15), length 2
    b"\x00\x00"  #   server-response-length 0 (type 2 needs none)
)
ASSOCIATE_AC_EXTENDED_VALUE = AssociateAC(
    called_ae_title="ARCHIVE",
    calling_ae_title="CT_SCANNER_01",
    presentation_contexts=(
        PresentationContextAC(context_id=1, result=0, transfer_syntax=EXPLICIT_VR_LE),
        PresentationContextAC(context_id=3, result=3, transfer_syntax=None),
    ),
    user_information=UserInformation(
        items=(
            MaximumLength(maximum_length=65536),
            ImplementationClassUID(uid=DIMSEKIT_UID),
            AsynchronousOperationsWindow(max_operations_invoked=1, max_operations_performed=1),
            RoleSelection(sop_class_uid=CT_IMAGE_STORAGE, scu_role=0, scp_role=1),
            SOPClassExtendedNegotiation(
                sop_class_uid=STUDY_ROOT_MOVE, service_class_application_information=b"\x00"
            ),
            UserIdentityAC(server_response=b""),
        )
    ),
)

# -----------------------------------------------------------------------------
# A-ASSOCIATE-RJ (PS3.8 Table 9-21): rejected-permanent, by the service-user,
# called-AE-title-not-recognized.
# -----------------------------------------------------------------------------
ASSOCIATE_RJ = (
    b"\x03"  # 1      PDU-type 03H
    b"\x00"  # 2      reserved
    b"\x00\x00\x00\x04"  # 3-6    PDU-length 4
    b"\x00"  # 7      reserved
    b"\x01"  # 8      result 1: rejected-permanent
    b"\x01"  # 9      source 1: DICOM UL service-user
    b"\x07"  # 10     reason/diag. 7: called-AE-title-not-recognized
)
ASSOCIATE_RJ_VALUE = AssociateRJ(result=1, source=1, reason=7)

# -----------------------------------------------------------------------------
# P-DATA-TF (PS3.8 Tables 9-22, 9-23) with two PDVs: a C-ECHO-RQ command set
# (Implicit VR LE, 68 bytes) split into a first fragment of 38 bytes and a last
# one of 30.
# -----------------------------------------------------------------------------
_ECHO_RQ_PART1 = (
    b"\x00\x00\x00\x00\x04\x00\x00\x00"  # (0000,0000) CommandGroupLength, length 4
    b"\x38\x00\x00\x00"  #   56
    b"\x00\x00\x02\x00\x12\x00\x00\x00"  # (0000,0002) AffectedSOPClassUID, length 18
    b"1.2.840.10008.1.1\x00"  #   Verification, NUL padded to even length
)
_ECHO_RQ_PART2 = (
    b"\x00\x00\x00\x01\x02\x00\x00\x00"  # (0000,0100) CommandField, length 2
    b"\x30\x00"  #   0030H C-ECHO-RQ
    b"\x00\x00\x10\x01\x02\x00\x00\x00"  # (0000,0110) MessageID, length 2
    b"\x01\x00"  #   1
    b"\x00\x00\x00\x08\x02\x00\x00\x00"  # (0000,0800) CommandDataSetType, length 2
    b"\x01\x01"  #   0101H: no data set
)
_PDV_1_HEAD = (  # PDV item 1 (Table 9-23), 44 bytes in all
    b"\x00\x00\x00\x28"  # 1-4    item-length 40 = 1 + 1 + 38
    b"\x01"  # 5      presentation-context-ID 1
    b"\x01"  # 6      message control header (Annex E.2): command, not last
)
_PDV_2_HEAD = (  # PDV item 2, 36 bytes in all
    b"\x00\x00\x00\x20"  # 1-4    item-length 32 = 1 + 1 + 30
    b"\x01"  # 5      presentation-context-ID 1
    b"\x03"  # 6      message control header: command, last fragment
)
P_DATA_TF = (
    (
        b"\x04"  # 1      PDU-type 04H
        b"\x00"  # 2      reserved
        b"\x00\x00\x00\x50"  # 3-6    PDU-length 80 = 44 + 36
    )
    + (_PDV_1_HEAD + _ECHO_RQ_PART1)
    + (_PDV_2_HEAD + _ECHO_RQ_PART2)
)
P_DATA_TF_VALUE = PDataTF(
    pdvs=(
        PresentationDataValue(context_id=1, control=0x01, data=_ECHO_RQ_PART1),
        PresentationDataValue(context_id=1, control=0x03, data=_ECHO_RQ_PART2),
    )
)

# -----------------------------------------------------------------------------
# A-RELEASE-RQ (Table 9-24), A-RELEASE-RP (Table 9-25), A-ABORT (Table 9-26).
# -----------------------------------------------------------------------------
RELEASE_RQ = (
    b"\x05"  # 1      PDU-type 05H
    b"\x00"  # 2      reserved
    b"\x00\x00\x00\x04"  # 3-6    PDU-length 4
    b"\x00\x00\x00\x00"  # 7-10   reserved
)
RELEASE_RP = (
    b"\x06"  # 1      PDU-type 06H
    b"\x00"  # 2      reserved
    b"\x00\x00\x00\x04"  # 3-6    PDU-length 4
    b"\x00\x00\x00\x00"  # 7-10   reserved
)
ABORT = (
    b"\x07"  # 1      PDU-type 07H
    b"\x00"  # 2      reserved
    b"\x00\x00\x00\x04"  # 3-6    PDU-length 4
    b"\x00"  # 7      reserved
    b"\x00"  # 8      reserved
    b"\x02"  # 9      source 2: DICOM UL service-provider
    b"\x06"  # 10     reason/diag. 6: invalid-PDU-parameter value
)
ABORT_VALUE = Abort(source=2, reason=6)

GOLDEN: list[tuple[str, bytes, object]] = [
    ("associate_rq_echo", ASSOCIATE_RQ_ECHO, ASSOCIATE_RQ_ECHO_VALUE),
    ("associate_ac_echo", ASSOCIATE_AC_ECHO, ASSOCIATE_AC_ECHO_VALUE),
    ("associate_rq_extended", ASSOCIATE_RQ_EXTENDED, ASSOCIATE_RQ_EXTENDED_VALUE),
    ("associate_ac_extended", ASSOCIATE_AC_EXTENDED, ASSOCIATE_AC_EXTENDED_VALUE),
    ("associate_rj", ASSOCIATE_RJ, ASSOCIATE_RJ_VALUE),
    ("p_data_tf", P_DATA_TF, P_DATA_TF_VALUE),
    ("release_rq", RELEASE_RQ, ReleaseRQ()),
    ("release_rp", RELEASE_RP, ReleaseRP()),
    ("abort", ABORT, ABORT_VALUE),
]
