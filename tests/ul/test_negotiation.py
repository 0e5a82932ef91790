"""Association negotiation (dimsekit.ul.negotiation): PS3.8 7.1.1 / Annex D, PS3.7 D.3.

Expected values in the tables are written out by hand from the standard, not
computed with the code under test.
"""

from __future__ import annotations

import ast
import inspect
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dimsekit.errors import LocalProtocolError, RemoteProtocolError
from dimsekit.ul import negotiation
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
    UserIdentityAC,
    UserIdentityRQ,
    UserInformation,
)
from dimsekit.ul.negotiation import (
    ASSUMED_PEER_MAXIMUM_LENGTH,
    DEFAULT_MAXIMUM_LENGTH,
    AcceptorPolicy,
    ContextSupport,
    Negotiated,
    NegotiatedContext,
    build_associate_rq,
    check_association_rq,
    negotiate_as_acceptor,
    negotiate_as_requestor,
    reject_congestion,
)
from dimsekit.ul.pdu import AssociateAC, AssociateRJ, AssociateRQ

VERIFICATION = "1.2.840.10008.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
UNKNOWN = "1.2.3.4.5"

IVLE = "1.2.840.10008.1.2"
EVLE = "1.2.840.10008.1.2.1"
DEFLATE = "1.2.840.10008.1.2.1.99"
JPEG = "1.2.840.10008.1.2.4.50"

PEER_CLASS_UID = "1.2.826.0.1.3680043.9.9999"
PEER_VERSION = "PEER_1"


# -- builders ----------------------------------------------------------------------


def make_rq(
    contexts=((1, VERIFICATION, (IVLE,)),),
    *,
    items=None,
    extra_items=(),
    called="ACCEPTOR",
    calling="REQUESTOR",
    **fields,
) -> AssociateRQ:
    """An A-ASSOCIATE-RQ built by hand (so it may be malformed on purpose)."""
    if items is None:
        items = (
            MaximumLength(maximum_length=32768),
            ImplementationClassUID(uid=PEER_CLASS_UID),
            ImplementationVersionName(name=PEER_VERSION),
        )
    return AssociateRQ(
        called_ae_title=called,
        calling_ae_title=calling,
        presentation_contexts=tuple(
            PresentationContextRQ(context_id=i, abstract_syntax=a, transfer_syntaxes=tuple(t))
            for i, a, t in contexts
        ),
        user_information=UserInformation(items=tuple(items) + tuple(extra_items)),
        **fields,
    )


def make_ac(contexts, *, items=None, extra_items=(), **fields) -> AssociateAC:
    """An A-ASSOCIATE-AC built by hand."""
    if items is None:
        items = (
            MaximumLength(maximum_length=65536),
            ImplementationClassUID(uid=PEER_CLASS_UID),
            ImplementationVersionName(name=PEER_VERSION),
        )
    return AssociateAC(
        called_ae_title="ACCEPTOR",
        calling_ae_title="REQUESTOR",
        presentation_contexts=tuple(
            PresentationContextAC(context_id=i, result=r, transfer_syntax=t) for i, r, t in contexts
        ),
        user_information=UserInformation(items=tuple(items) + tuple(extra_items)),
        **fields,
    )


def make_policy(**kwargs) -> AcceptorPolicy:
    supported = kwargs.pop(
        "supported",
        [
            ContextSupport(abstract_syntax=VERIFICATION, transfer_syntaxes=(IVLE,)),
            ContextSupport(abstract_syntax=CT, transfer_syntaxes=(EVLE, IVLE)),
            ContextSupport(abstract_syntax=MR, transfer_syntaxes=(JPEG,)),
        ],
    )
    kwargs.setdefault("ae_title", "ACCEPTOR")
    return AcceptorPolicy(supported={s.abstract_syntax: s for s in supported}, **kwargs)


def ac_item(ac: AssociateAC, context_id: int) -> PresentationContextAC:
    (item,) = [c for c in ac.presentation_contexts if c.context_id == context_id]
    return item


# -- A-ASSOCIATE-RJ ----------------------------------------------------------------

RJ_CASES = [
    # (id, rq changes, policy kwargs, expected (result, source, reason) or None)
    ("acceptable", {}, {}, None),
    ("protocol version 2 (bit 0 clear)", {"protocol_version": 2}, {}, (1, 2, 2)),
    ("protocol version 0", {"protocol_version": 0}, {}, (1, 2, 2)),
    ("protocol version 3 (bit 0 set)", {"protocol_version": 3}, {}, None),
    ("application context", {"application_context_name": "1.2.3"}, {}, (1, 1, 2)),
    (
        "called AE checked, wrong",
        {"called": "OTHER"},
        {"check_called_ae": True},
        (1, 1, 7),
    ),
    ("called AE checked, right", {"called": "ACCEPTOR"}, {"check_called_ae": True}, None),
    ("called AE checked, padded", {"called": " ACCEPTOR  "}, {"check_called_ae": True}, None),
    (
        "called AE checked, case differs",
        {"called": "acceptor"},
        {"check_called_ae": True},
        (1, 1, 7),
    ),
    ("called AE not checked", {"called": "OTHER"}, {}, None),
    (
        "calling AE not allowed",
        {"calling": "STRANGER"},
        {"allowed_callers": frozenset({"REQUESTOR"})},
        (1, 1, 3),
    ),
    ("calling AE allowed", {}, {"allowed_callers": frozenset({"REQUESTOR "})}, None),
    ("any caller", {"calling": "STRANGER"}, {"allowed_callers": None}, None),
    ("no presentation context", {"contexts": ()}, {}, (1, 2, 1)),
    (
        "duplicated context id",
        {"contexts": ((1, VERIFICATION, (IVLE,)), (1, CT, (IVLE,)))},
        {},
        (1, 2, 1),
    ),
    (
        "maximum length too small",
        {"items": (MaximumLength(maximum_length=7),)},
        {},
        (1, 2, 1),
    ),
    ("maximum length 0 (unlimited)", {"items": (MaximumLength(maximum_length=0),)}, {}, None),
    ("maximum length 8", {"items": (MaximumLength(maximum_length=8),)}, {}, None),
    (
        "protocol version checked first",
        {"protocol_version": 2, "application_context_name": "1.2.3", "called": "X"},
        {"check_called_ae": True},
        (1, 2, 2),
    ),
    (
        "called before calling",
        {"called": "X", "calling": "Y"},
        {"check_called_ae": True, "allowed_callers": frozenset()},
        (1, 1, 7),
    ),
]


@pytest.mark.parametrize(
    ("changes", "policy_kwargs", "expected"),
    [c[1:] for c in RJ_CASES],
    ids=[c[0] for c in RJ_CASES],
)
def test_check_association_rq(changes, policy_kwargs, expected):
    rj = check_association_rq(make_rq(**changes), make_policy(**policy_kwargs))
    if expected is None:
        assert rj is None
    else:
        assert rj == AssociateRJ(result=expected[0], source=expected[1], reason=expected[2])


@pytest.mark.parametrize(("local_limit", "reason"), [(True, 2), (False, 1)])
def test_reject_congestion(local_limit, reason):
    assert reject_congestion(local_limit=local_limit) == AssociateRJ(
        result=2, source=3, reason=reason
    )
    assert reject_congestion() == AssociateRJ(result=2, source=3, reason=2)


# -- presentation contexts ----------------------------------------------------------

CONTEXT_CASES = [
    # (id, (context id, abstract syntax, proposed ts), expected result, expected ts in AC)
    ("accepted, only common ts", (1, VERIFICATION, (IVLE,)), 0, IVLE),
    ("our preference wins over theirs", (1, CT, (IVLE, EVLE)), 0, EVLE),
    ("preference, their order reversed", (1, CT, (EVLE, IVLE)), 0, EVLE),
    ("second preference", (1, CT, (JPEG, IVLE)), 0, IVLE),
    ("no common transfer syntax", (1, MR, (IVLE, EVLE)), 4, IVLE),
    ("unknown abstract syntax", (1, UNKNOWN, (EVLE,)), 3, EVLE),
    ("even context id", (2, VERIFICATION, (IVLE,)), 2, IVLE),
    ("id 255 fine", (255, VERIFICATION, (IVLE,)), 0, IVLE),
    ("even id 0", (0, VERIFICATION, (DEFLATE,)), 2, DEFLATE),
    ("no transfer syntax proposed", (1, VERIFICATION, ()), 4, IVLE),
]


@pytest.mark.parametrize(
    ("context", "result", "ts"), [c[1:] for c in CONTEXT_CASES], ids=[c[0] for c in CONTEXT_CASES]
)
def test_presentation_context_result(context, result, ts):
    ac, neg = negotiate_as_acceptor(make_rq([context]), make_policy())
    assert ac.presentation_contexts == (
        PresentationContextAC(context_id=context[0], result=result, transfer_syntax=ts),
    )
    if result == 0:
        assert neg.contexts == {
            context[0]: NegotiatedContext(
                context_id=context[0],
                abstract_syntax=context[1],
                transfer_syntax=ts,
                local_scu=False,
                local_scp=True,
            )
        }
        assert neg.rejected == {}
    else:
        assert neg.contexts == {}
        assert neg.rejected == {context[0]: result}


def test_every_context_answered_once_in_order():
    rq = make_rq(
        [
            (7, MR, (IVLE,)),
            (1, VERIFICATION, (IVLE,)),
            (3, CT, (IVLE, EVLE)),
            (4, CT, (IVLE,)),
            (5, UNKNOWN, (IVLE,)),
            (9, CT, (IVLE,)),
        ]
    )
    ac, neg = negotiate_as_acceptor(rq, make_policy())
    assert [(c.context_id, c.result) for c in ac.presentation_contexts] == [
        (7, 4),
        (1, 0),
        (3, 0),
        (4, 2),
        (5, 3),
        (9, 0),
    ]
    assert sorted(neg.contexts) == [1, 3, 9]
    assert neg.rejected == {7: 4, 4: 2, 5: 3}
    # two contexts of one abstract syntax with different transfer syntaxes
    assert neg.contexts[3].transfer_syntax == EVLE
    assert neg.contexts[9].transfer_syntax == IVLE


def test_duplicate_ids_abort_if_not_checked_first():
    rq = make_rq([(1, VERIFICATION, (IVLE,)), (1, CT, (IVLE,))])
    with pytest.raises(RemoteProtocolError) as info:
        negotiate_as_acceptor(rq, make_policy())
    assert (info.value.abort_source, info.value.abort_reason) == (2, 6)


def test_ac_fixed_fields_echo_rq():
    rq = make_rq(called="SOMEONE", calling="ME")
    ac, _ = negotiate_as_acceptor(rq, make_policy())
    assert (ac.called_ae_title, ac.calling_ae_title) == ("SOMEONE", "ME")
    assert ac.application_context_name == "1.2.840.10008.3.1.1.1"
    assert ac.protocol_version == 1


# -- SCP/SCU role selection, acceptor side (PS3.7 D.3.3.4) ---------------------------------

# proposal: None = no Role Selection item; else (scu, scp) the requestor proposes.
# support: (our scu_role, our scp_role).
# expected: AC role item (None = not sent), result, our (local_scu, local_scp) if accepted.
ACCEPTOR_ROLE_CASES = [
    (None, (False, False), None, 1, None),
    (None, (False, True), None, 0, (False, True)),
    (None, (True, False), None, 1, None),
    (None, (True, True), None, 0, (False, True)),
    ((0, 0), (False, False), (0, 0), 1, None),
    ((0, 0), (False, True), (0, 0), 1, None),
    ((0, 0), (True, False), (0, 0), 1, None),
    ((0, 0), (True, True), (0, 0), 1, None),
    ((1, 0), (False, False), (0, 0), 1, None),
    ((1, 0), (False, True), (1, 0), 0, (False, True)),
    ((1, 0), (True, False), (0, 0), 1, None),
    ((1, 0), (True, True), (1, 0), 0, (False, True)),
    ((0, 1), (False, False), (0, 0), 1, None),
    ((0, 1), (False, True), (0, 0), 1, None),
    ((0, 1), (True, False), (0, 1), 0, (True, False)),
    ((0, 1), (True, True), (0, 1), 0, (True, False)),
    ((1, 1), (False, False), (0, 0), 1, None),
    ((1, 1), (False, True), (1, 0), 0, (False, True)),
    ((1, 1), (True, False), (0, 1), 0, (True, False)),
    ((1, 1), (True, True), (1, 1), 0, (True, True)),
    # out-of-range proposal values count as "not proposed"
    ((2, 1), (True, True), (0, 1), 0, (True, False)),
    ((1, 255), (True, True), (1, 0), 0, (False, True)),
]


@pytest.mark.parametrize(("proposal", "support", "answer", "result", "local"), ACCEPTOR_ROLE_CASES)
def test_acceptor_roles(proposal, support, answer, result, local):
    extra = ()
    if proposal is not None:
        extra = (RoleSelection(sop_class_uid=CT, scu_role=proposal[0], scp_role=proposal[1]),)
    rq = make_rq([(1, CT, (IVLE,))], extra_items=extra)
    policy = make_policy(
        supported=[
            ContextSupport(
                abstract_syntax=CT,
                transfer_syntaxes=(IVLE,),
                scu_role=support[0],
                scp_role=support[1],
            )
        ]
    )
    ac, neg = negotiate_as_acceptor(rq, policy)
    roles = ac.user_information.role_selections
    if answer is None:
        assert roles == ()
    else:
        assert roles == (RoleSelection(sop_class_uid=CT, scu_role=answer[0], scp_role=answer[1]),)
    assert ac_item(ac, 1).result == result
    if local is None:
        assert neg.contexts == {} and neg.rejected == {1: 1}
    else:
        assert (neg.contexts[1].local_scu, neg.contexts[1].local_scp) == local


def test_acceptor_answers_role_items_only_for_those_received():
    rq = make_rq(
        [(1, CT, (IVLE,)), (3, MR, (JPEG,)), (5, VERIFICATION, (IVLE,))],
        extra_items=(
            RoleSelection(sop_class_uid=CT, scu_role=1, scp_role=1),
            RoleSelection(sop_class_uid=UNKNOWN, scu_role=1, scp_role=0),
            RoleSelection(sop_class_uid=CT, scu_role=0, scp_role=0),  # repeat: ignored
        ),
    )
    ac, neg = negotiate_as_acceptor(rq, make_policy())
    assert ac.user_information.role_selections == (
        RoleSelection(sop_class_uid=CT, scu_role=1, scp_role=0),
        RoleSelection(sop_class_uid=UNKNOWN, scu_role=0, scp_role=0),
    )
    assert neg.contexts[1].local_scp and not neg.contexts[1].local_scu


# -- SCP/SCU role selection, requestor side -----------------------------------------

# proposal: what we sent for CT (None = no item); answer: AC item (None = absent).
# expected: our (local_scu, local_scp), or None = recorded as rejected (1).
REQUESTOR_ROLE_CASES = [
    (None, None, (True, False)),
    (None, (0, 0), (True, False)),
    (None, (1, 1), (True, False)),  # response to an unproposed item is ignored
    (None, (0, 1), (True, False)),
    ((1, 0), None, (True, False)),
    ((1, 0), (1, 0), (True, False)),
    ((1, 0), (0, 0), None),
    ((1, 0), (1, 1), (True, False)),  # 1 for a role not proposed: ignored
    ((1, 0), (0, 1), None),
    ((0, 1), None, (True, False)),  # not answered: default roles (D.3.3.4 note 2)
    ((0, 1), (0, 1), (False, True)),
    ((0, 1), (0, 0), None),
    ((0, 1), (1, 1), (False, True)),
    ((0, 1), (1, 0), None),
    ((1, 1), None, (True, False)),
    ((1, 1), (1, 1), (True, True)),
    ((1, 1), (1, 0), (True, False)),
    ((1, 1), (0, 1), (False, True)),
    ((1, 1), (0, 0), None),
    ((1, 1), (2, 1), (False, True)),  # only 1 means accepted
    ((0, 0), (0, 0), None),
    ((0, 0), None, (True, False)),
    ((0, 0), (1, 1), None),
]


@pytest.mark.parametrize(("proposal", "answer", "local"), REQUESTOR_ROLE_CASES)
def test_requestor_roles(proposal, answer, local):
    roles = {} if proposal is None else {CT: (bool(proposal[0]), bool(proposal[1]))}
    rq = build_associate_rq(
        called_ae_title="ACCEPTOR",
        calling_ae_title="REQUESTOR",
        contexts=[(CT, [IVLE])],
        roles=roles,
    )
    extra = ()
    if answer is not None:
        extra = (RoleSelection(sop_class_uid=CT, scu_role=answer[0], scp_role=answer[1]),)
    neg = negotiate_as_requestor(rq, make_ac([(1, 0, IVLE)], extra_items=extra))
    if local is None:
        assert neg.contexts == {} and neg.rejected == {1: 1}
    else:
        assert (neg.contexts[1].local_scu, neg.contexts[1].local_scp) == local


# -- asynchronous operations window (PS3.7 D.3.3.3) -------------------------------------

# rq window (invoked, performed) or None; policy (max_operations_invoked,
# max_operations_performed); expected AC item or None; our (local, remote).
ACCEPTOR_WINDOW_CASES = [
    (None, (5, 5), None, (1, 1)),
    (None, (0, 0), None, (1, 1)),
    ((3, 2), (1, 1), (1, 1), (1, 1)),
    ((3, 2), (10, 10), (3, 2), (2, 3)),
    ((3, 2), (10, 1), (1, 2), (2, 1)),
    ((3, 2), (1, 10), (3, 1), (1, 3)),
    ((0, 0), (0, 0), (0, 0), (0, 0)),
    ((0, 0), (4, 7), (7, 4), (4, 7)),
    ((5, 0), (0, 0), (5, 0), (0, 5)),
    ((0, 5), (2, 0), (0, 2), (2, 0)),
    ((1, 1), (0, 0), (1, 1), (1, 1)),
    ((0, 1), (1, 0), (0, 1), (1, 0)),
]


@pytest.mark.parametrize(("window", "policy_ops", "answer", "expected"), ACCEPTOR_WINDOW_CASES)
def test_acceptor_async_window(window, policy_ops, answer, expected):
    extra = ()
    if window is not None:
        extra = (
            AsynchronousOperationsWindow(
                max_operations_invoked=window[0], max_operations_performed=window[1]
            ),
        )
    policy = make_policy(
        max_operations_invoked=policy_ops[0], max_operations_performed=policy_ops[1]
    )
    ac, neg = negotiate_as_acceptor(make_rq(extra_items=extra), policy)
    got = ac.user_information.asynchronous_operations_window
    if answer is None:
        assert got is None
    else:
        assert got == AsynchronousOperationsWindow(
            max_operations_invoked=answer[0], max_operations_performed=answer[1]
        )
    assert (neg.max_outstanding_local, neg.max_outstanding_remote) == expected


# our window (invoked, performed) or None; AC window or None; our (local, remote).
REQUESTOR_WINDOW_CASES = [
    (None, None, (1, 1)),
    (None, (5, 5), (1, 1)),  # unsolicited answer ignored
    ((4, 3), None, (1, 1)),  # not answered: synchronous
    ((4, 3), (2, 1), (2, 1)),
    ((4, 3), (4, 3), (4, 3)),
    ((0, 0), (0, 0), (0, 0)),
    ((0, 0), (7, 0), (7, 0)),
    ((0, 3), (0, 2), (0, 2)),
    ((4, 3), (0, 0), (4, 3)),  # peer may not raise our proposal: clamped
    ((4, 3), (9, 9), (4, 3)),
    ((1, 1), (1, 1), (1, 1)),
]


@pytest.mark.parametrize(("ours", "theirs", "expected"), REQUESTOR_WINDOW_CASES)
def test_requestor_async_window(ours, theirs, expected):
    rq = build_associate_rq(
        called_ae_title="ACCEPTOR",
        calling_ae_title="REQUESTOR",
        contexts=[(VERIFICATION, [IVLE])],
        async_window=ours,
    )
    extra = ()
    if theirs is not None:
        extra = (
            AsynchronousOperationsWindow(
                max_operations_invoked=theirs[0], max_operations_performed=theirs[1]
            ),
        )
    neg = negotiate_as_requestor(rq, make_ac([(1, 0, IVLE)], extra_items=extra))
    assert (neg.max_outstanding_local, neg.max_outstanding_remote) == expected


# -- maximum length (PS3.8 D.1), implementation identification (PS3.7 D.3.3.2) -----------


@pytest.mark.parametrize(
    ("rq_length", "policy_length", "peer_expected"),
    [
        (32768, 65536, 32768),
        (0, 16384, 0),
        (None, 16384, ASSUMED_PEER_MAXIMUM_LENGTH),
        (8, 0, 8),
        (0xFFFFFFFF, 1 << 20, 0xFFFFFFFF),
    ],
)
def test_acceptor_maximum_length(rq_length, policy_length, peer_expected):
    items = [ImplementationClassUID(uid=PEER_CLASS_UID)]
    if rq_length is not None:
        items.append(MaximumLength(maximum_length=rq_length))
    ac, neg = negotiate_as_acceptor(make_rq(items=items), make_policy(maximum_length=policy_length))
    assert ac.user_information.maximum_length == policy_length
    assert neg.local_maximum_length == policy_length
    assert neg.peer_maximum_length == peer_expected


@pytest.mark.parametrize(
    ("ac_length", "peer_expected"),
    [(1000, 1000), (0, 0), (None, ASSUMED_PEER_MAXIMUM_LENGTH), (8, 8)],
)
def test_requestor_maximum_length(ac_length, peer_expected):
    rq = build_associate_rq(
        called_ae_title="A",
        calling_ae_title="B",
        contexts=[(VERIFICATION, [IVLE])],
        maximum_length=4096,
    )
    items = [] if ac_length is None else [MaximumLength(maximum_length=ac_length)]
    neg = negotiate_as_requestor(rq, make_ac([(1, 0, IVLE)], items=items))
    assert neg.peer_maximum_length == peer_expected
    assert neg.local_maximum_length == 4096


def test_requestor_refuses_unusable_maximum_length():
    rq = build_associate_rq(called_ae_title="A", calling_ae_title="B", contexts=[(CT, [IVLE])])
    with pytest.raises(RemoteProtocolError) as info:
        negotiate_as_requestor(rq, make_ac([(1, 0, IVLE)], items=[MaximumLength(maximum_length=6)]))
    assert info.value.abort_reason == 6


def test_default_maximum_length_constant():
    assert DEFAULT_MAXIMUM_LENGTH == 16384
    rq = build_associate_rq(called_ae_title="A", calling_ae_title="B", contexts=[(CT, [IVLE])])
    assert rq.user_information.maximum_length == DEFAULT_MAXIMUM_LENGTH
    assert make_policy().maximum_length == DEFAULT_MAXIMUM_LENGTH


def test_implementation_identification_both_ways():
    policy = make_policy(implementation_class_uid="1.2.3.4", implementation_version_name="OURS_2")
    ac, neg = negotiate_as_acceptor(make_rq(), policy)
    assert ac.user_information.implementation_class_uid == "1.2.3.4"
    assert ac.user_information.implementation_version_name == "OURS_2"
    assert neg.peer_implementation_class_uid == PEER_CLASS_UID
    assert neg.peer_implementation_version_name == PEER_VERSION

    _, bare = negotiate_as_acceptor(make_rq(items=[MaximumLength(maximum_length=0)]), make_policy())
    assert bare.peer_implementation_class_uid is None
    assert bare.peer_implementation_version_name is None


def test_ac_user_information_order():
    rq = make_rq(
        [(1, CT, (IVLE,))],
        extra_items=(
            AsynchronousOperationsWindow(max_operations_invoked=2, max_operations_performed=2),
            RoleSelection(sop_class_uid=CT, scu_role=1, scp_role=0),
        ),
    )
    ac, _ = negotiate_as_acceptor(rq, make_policy())
    kinds = [type(i).__name__ for i in ac.user_information.items]
    assert kinds == [
        "MaximumLength",
        "ImplementationClassUID",
        "AsynchronousOperationsWindow",
        "RoleSelection",
        "ImplementationVersionName",
    ]


# -- user identity (PS3.7 D.3.3.7) ----------------------------------------------------

USERNAME = UserIdentityRQ(
    identity_type=2,
    positive_response_requested=True,
    primary_field=b"alice",
    secondary_field=b"secret",
)
USERNAME_SILENT = replace(USERNAME, positive_response_requested=False)

IDENTITY_CASES = [
    # (id, rq identity, caller's response, expected AC server response or None)
    ("no identity, response offered", None, b"x", None),
    ("no identity", None, None, None),
    ("requested and granted", USERNAME, b"ticket", b"ticket"),
    ("requested, granted with empty response", USERNAME, b"", b""),
    ("requested, refused by caller", USERNAME, None, None),
    ("not requested, granted", USERNAME_SILENT, b"ticket", None),
    ("not requested, refused", USERNAME_SILENT, None, None),
]


@pytest.mark.parametrize(
    ("identity", "response", "expected"),
    [c[1:] for c in IDENTITY_CASES],
    ids=[c[0] for c in IDENTITY_CASES],
)
def test_user_identity(identity, response, expected):
    extra = () if identity is None else (identity,)
    ac, neg = negotiate_as_acceptor(
        make_rq(extra_items=extra), make_policy(), user_identity_response=response
    )
    if expected is None:
        assert ac.user_information.user_identity_ac is None
    else:
        assert ac.user_information.user_identity_ac == UserIdentityAC(server_response=expected)
    assert neg.user_identity == identity
    assert neg.user_identity_response == expected


def test_requestor_records_identity_and_response():
    rq = build_associate_rq(
        called_ae_title="A",
        calling_ae_title="B",
        contexts=[(CT, [IVLE])],
        user_identity=USERNAME,
    )
    assert rq.user_information.user_identity_rq == USERNAME
    neg = negotiate_as_requestor(
        rq, make_ac([(1, 0, IVLE)], extra_items=[UserIdentityAC(server_response=b"srv")])
    )
    assert neg.user_identity == USERNAME
    assert neg.user_identity_response == b"srv"
    neg = negotiate_as_requestor(rq, make_ac([(1, 0, IVLE)]))
    assert neg.user_identity_response is None


# -- SOP class (common) extended negotiation (PS3.7 D.3.3.5, D.3.3.6) ---------------------


class Recorder:
    """An extended_negotiation callable that records what it was given."""

    def __init__(self, answer):
        self.answer = answer
        self.calls = []

    def __call__(self, info: bytes):
        self.calls.append(info)
        return self.answer


EXTENDED_CASES = [
    # (id, proposed for, supported classes' handler answer, context accepted?, expected AC bytes)
    ("answered", STUDY_FIND, b"\x01\x00\x01", True, b"\x01\x00\x01"),
    ("handler says none", STUDY_FIND, None, True, None),
    ("no handler", STUDY_FIND, "no handler", True, None),
    ("context rejected", STUDY_FIND, b"\x01", False, None),
    ("class not supported", UNKNOWN, b"\x01", False, None),
]


@pytest.mark.parametrize(
    ("sop_class", "answer", "accepted", "expected"),
    [c[1:] for c in EXTENDED_CASES],
    ids=[c[0] for c in EXTENDED_CASES],
)
def test_acceptor_extended_negotiation(sop_class, answer, accepted, expected):
    handler = None if answer == "no handler" else Recorder(answer)
    support = ContextSupport(
        abstract_syntax=STUDY_FIND,
        transfer_syntaxes=(IVLE,),
        extended_negotiation=handler,
    )
    proposed_ts = (IVLE,) if accepted else (JPEG,)
    rq = make_rq(
        [(1, sop_class, proposed_ts)],
        extra_items=(
            SOPClassExtendedNegotiation(
                sop_class_uid=sop_class, service_class_application_information=b"\x01\x01\x01"
            ),
        ),
    )
    ac, neg = negotiate_as_acceptor(rq, make_policy(supported=[support]))
    if expected is None:
        assert ac.user_information.sop_class_extended == ()
        assert neg.extended == {}
    else:
        assert ac.user_information.sop_class_extended == (
            SOPClassExtendedNegotiation(
                sop_class_uid=sop_class, service_class_application_information=expected
            ),
        )
        assert neg.extended == {sop_class: expected}
    if handler is not None:
        consulted = accepted and sop_class == STUDY_FIND
        assert handler.calls == ([b"\x01\x01\x01"] if consulted else [])


def test_extended_negotiation_bad_handler_result():
    support = ContextSupport(
        abstract_syntax=STUDY_FIND,
        transfer_syntaxes=(IVLE,),
        extended_negotiation=lambda info: "yes",
    )
    rq = make_rq(
        [(1, STUDY_FIND, (IVLE,))],
        extra_items=(
            SOPClassExtendedNegotiation(
                sop_class_uid=STUDY_FIND, service_class_application_information=b"\x01"
            ),
        ),
    )
    with pytest.raises(LocalProtocolError):
        negotiate_as_acceptor(rq, make_policy(supported=[support]))


def test_common_extended_recorded_never_answered():
    common = SOPClassCommonExtendedNegotiation(
        sop_class_uid="1.2.840.10008.5.1.4.1.1.88.40",
        service_class_uid="1.2.840.10008.4.2",
        related_general_sop_classes=("1.2.840.10008.5.1.4.1.1.88.22",),
    )
    ac, neg = negotiate_as_acceptor(make_rq(extra_items=(common,)), make_policy())
    assert ac.user_information.sop_class_common_extended == ()
    assert neg.common_extended == {common.sop_class_uid: common}


def test_requestor_extended_only_for_offered_classes():
    rq = build_associate_rq(
        called_ae_title="A",
        calling_ae_title="B",
        contexts=[(STUDY_FIND, [IVLE])],
        extended={STUDY_FIND: b"\x01\x01"},
    )
    ac = make_ac(
        [(1, 0, IVLE)],
        extra_items=(
            SOPClassExtendedNegotiation(
                sop_class_uid=STUDY_FIND, service_class_application_information=b"\x01\x00"
            ),
            SOPClassExtendedNegotiation(
                sop_class_uid=CT, service_class_application_information=b"\x09"
            ),
        ),
    )
    assert negotiate_as_requestor(rq, ac).extended == {STUDY_FIND: b"\x01\x00"}


# -- requestor-side validation ---------------------------------------------------------


def _two_context_rq():
    return build_associate_rq(
        called_ae_title="ACCEPTOR",
        calling_ae_title="REQUESTOR",
        contexts=[(VERIFICATION, [IVLE]), (CT, [EVLE, IVLE])],
    )


BAD_AC_CASES = [
    ("unproposed id", [(1, 0, IVLE), (3, 0, EVLE), (5, 0, IVLE)], {}),
    ("even id", [(2, 0, IVLE)], {}),
    ("answered twice", [(1, 0, IVLE), (1, 3, IVLE)], {}),
    ("ts not proposed for that context", [(1, 0, EVLE), (3, 0, EVLE)], {}),
    ("ts never proposed", [(3, 0, JPEG)], {}),
    ("accepted without ts", [(3, 0, None)], {}),
    ("protocol version bit 0 clear", [(1, 0, IVLE)], {"protocol_version": 2}),
]


@pytest.mark.parametrize(
    ("contexts", "fields"), [c[1:] for c in BAD_AC_CASES], ids=[c[0] for c in BAD_AC_CASES]
)
def test_requestor_rejects_invalid_ac(contexts, fields):
    with pytest.raises(RemoteProtocolError) as info:
        negotiate_as_requestor(_two_context_rq(), make_ac(contexts, **fields))
    assert (info.value.abort_source, info.value.abort_reason) == (2, 6)


def test_requestor_results():
    neg = negotiate_as_requestor(
        _two_context_rq(),
        make_ac([(3, 0, IVLE)], extra_items=()),
    )
    assert neg.is_requestor
    assert neg.contexts == {
        3: NegotiatedContext(
            context_id=3, abstract_syntax=CT, transfer_syntax=IVLE, local_scu=True, local_scp=False
        )
    }
    assert neg.rejected == {1: 2}  # not answered: counted as rejected

    # a rejected context's transfer syntax is not significant, even absent or odd
    neg = negotiate_as_requestor(_two_context_rq(), make_ac([(1, 3, None), (3, 4, JPEG)]))
    assert neg.contexts == {} and neg.rejected == {1: 3, 3: 4}

    # an unknown result value is never taken as acceptance
    neg = negotiate_as_requestor(_two_context_rq(), make_ac([(1, 7, IVLE), (3, 0, EVLE)]))
    assert neg.rejected == {1: 7} and list(neg.contexts) == [3]


# -- build_associate_rq -----------------------------------------------------------------


def test_build_rq_context_ids():
    rq = build_associate_rq(
        called_ae_title="ACCEPTOR",
        calling_ae_title="REQUESTOR",
        contexts=[(VERIFICATION, [IVLE]), (CT, (EVLE, IVLE)), (CT, [JPEG])],
    )
    assert rq.presentation_contexts == (
        PresentationContextRQ(
            context_id=1, abstract_syntax=VERIFICATION, transfer_syntaxes=(IVLE,)
        ),
        PresentationContextRQ(context_id=3, abstract_syntax=CT, transfer_syntaxes=(EVLE, IVLE)),
        PresentationContextRQ(context_id=5, abstract_syntax=CT, transfer_syntaxes=(JPEG,)),
    )
    assert rq.application_context_name == "1.2.840.10008.3.1.1.1"
    assert rq.protocol_version == 1


def test_build_rq_128_contexts_fit_129_do_not():
    many = [(f"1.2.3.{i}", [IVLE]) for i in range(129)]
    rq = build_associate_rq(called_ae_title="A", calling_ae_title="B", contexts=many[:128])
    ids = [pc.context_id for pc in rq.presentation_contexts]
    assert ids == list(range(1, 256, 2))
    with pytest.raises(LocalProtocolError):
        build_associate_rq(called_ae_title="A", calling_ae_title="B", contexts=many)


BAD_BUILD_CASES = [
    ("no contexts", {"contexts": []}),
    ("context without ts", {"contexts": [(CT, [])]}),
    ("ts as a str", {"contexts": [(CT, IVLE)]}),
    ("bad abstract syntax", {"contexts": [("1.2.03", [IVLE])]}),
    ("bad transfer syntax", {"contexts": [(CT, ["not-a-uid"])]}),
    ("called AE too long", {"called_ae_title": "X" * 17}),
    ("called AE blank", {"called_ae_title": "    "}),
    ("calling AE backslash", {"calling_ae_title": "A\\B"}),
    ("maximum length negative", {"maximum_length": -1}),
    ("maximum length too big", {"maximum_length": 1 << 32}),
    ("window out of range", {"async_window": (1, 65536)}),
    ("version name too long", {"implementation_version_name": "X" * 17}),
    ("version name empty", {"implementation_version_name": ""}),
    ("class uid invalid", {"implementation_class_uid": "1..2"}),
    (
        "two common extended for one class",
        {
            "common_extended": [
                SOPClassCommonExtendedNegotiation(
                    sop_class_uid=CT, service_class_uid="1.2.840.10008.4.2"
                ),
                SOPClassCommonExtendedNegotiation(
                    sop_class_uid=CT, service_class_uid="1.2.840.10008.4.2"
                ),
            ]
        },
    ),
]


@pytest.mark.parametrize(
    "changes", [c[1] for c in BAD_BUILD_CASES], ids=[c[0] for c in BAD_BUILD_CASES]
)
def test_build_rq_refuses(changes):
    kwargs = {"called_ae_title": "A", "calling_ae_title": "B", "contexts": [(CT, [IVLE])]}
    kwargs.update(changes)
    with pytest.raises(LocalProtocolError):
        build_associate_rq(**kwargs)


def test_build_rq_user_information():
    common = SOPClassCommonExtendedNegotiation(
        sop_class_uid=CT, service_class_uid="1.2.840.10008.4.2"
    )
    rq = build_associate_rq(
        called_ae_title=" ACCEPTOR ",
        calling_ae_title="REQUESTOR",
        contexts=[(CT, [IVLE])],
        maximum_length=0,
        roles={CT: (True, True), MR: (False, True)},
        async_window=(0, 3),
        extended={CT: b"\x01"},
        common_extended=[common],
        user_identity=USERNAME,
        implementation_class_uid="1.2.3",
        implementation_version_name="V",
    )
    assert rq.called_ae_title == "ACCEPTOR"
    assert rq.user_information.items == (
        MaximumLength(maximum_length=0),
        ImplementationClassUID(uid="1.2.3"),
        AsynchronousOperationsWindow(max_operations_invoked=0, max_operations_performed=3),
        RoleSelection(sop_class_uid=CT, scu_role=1, scp_role=1),
        RoleSelection(sop_class_uid=MR, scu_role=0, scp_role=1),
        ImplementationVersionName(name="V"),
        SOPClassExtendedNegotiation(
            sop_class_uid=CT, service_class_application_information=b"\x01"
        ),
        common,
        USERNAME,
    )


def test_build_rq_minimal_sends_no_optional_items():
    rq = build_associate_rq(called_ae_title="A", calling_ae_title="B", contexts=[(CT, [IVLE])])
    assert [type(i) for i in rq.user_information.items] == [
        MaximumLength,
        ImplementationClassUID,
        ImplementationVersionName,
    ]
    assert rq.user_information.implementation_class_uid == negotiation.IMPLEMENTATION_CLASS_UID


# -- policy validation, context_for -------------------------------------------------------


def test_policy_refuses_mismatched_key():
    with pytest.raises(LocalProtocolError):
        AcceptorPolicy(
            ae_title="A",
            supported={CT: ContextSupport(abstract_syntax=MR, transfer_syntaxes=(IVLE,))},
        )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_operations_invoked": -1},
        {"max_operations_performed": 65536},
        {"maximum_length": -5},
        {"ae_title": ""},
        {"implementation_version_name": "X" * 17},
    ],
)
def test_policy_refuses_bad_values(kwargs):
    with pytest.raises(LocalProtocolError):
        make_policy(**kwargs)


def test_context_support_needs_a_transfer_syntax():
    with pytest.raises(LocalProtocolError):
        ContextSupport(abstract_syntax=CT, transfer_syntaxes=())


def test_context_for():
    neg = Negotiated(
        is_requestor=True,
        contexts={
            5: NegotiatedContext(
                context_id=5,
                abstract_syntax=CT,
                transfer_syntax=IVLE,
                local_scu=True,
                local_scp=True,
            ),
            3: NegotiatedContext(
                context_id=3,
                abstract_syntax=CT,
                transfer_syntax=EVLE,
                local_scu=True,
                local_scp=False,
            ),
            7: NegotiatedContext(
                context_id=7,
                abstract_syntax=MR,
                transfer_syntax=JPEG,
                local_scu=False,
                local_scp=True,
            ),
        },
        rejected={},
        local_maximum_length=0,
        peer_maximum_length=0,
        max_outstanding_local=1,
        max_outstanding_remote=1,
        peer_implementation_class_uid=None,
        peer_implementation_version_name=None,
    )
    assert neg.context_for(CT).context_id == 3
    assert neg.context_for(CT, IVLE).context_id == 5
    assert neg.context_for(CT, as_scu=False).context_id == 5
    assert neg.context_for(CT, EVLE, as_scu=False) is None
    assert neg.context_for(MR) is None
    assert neg.context_for(MR, as_scu=False).context_id == 7
    assert neg.context_for(VERIFICATION) is None
    with pytest.raises(TypeError):
        neg.contexts[9] = neg.contexts[3]  # read-only mapping


def test_module_does_no_io():
    tree = ast.parse(inspect.getsource(negotiation))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"twisted", "socket", "time", "asyncio", "select"}


# -- round trip: requestor and acceptor see mirror images ----------------------------------

ABSTRACT_POOL = [VERIFICATION, CT, MR, STUDY_FIND, UNKNOWN]
TS_POOL = [IVLE, EVLE, DEFLATE, JPEG]


def _answer_echo(info: bytes) -> bytes:
    return info


def _answer_none(info: bytes) -> None:
    return None


def _answer_zero(info: bytes) -> bytes:
    return bytes(len(info))


handlers = st.sampled_from([None, _answer_echo, _answer_none, _answer_zero])
ts_lists = st.lists(st.sampled_from(TS_POOL), min_size=1, max_size=4, unique=True)
op_limits = st.integers(min_value=0, max_value=4)
max_lengths = st.one_of(st.just(0), st.integers(min_value=8, max_value=0xFFFFFFFF))


@st.composite
def supports(draw):
    classes = draw(
        st.lists(st.sampled_from(ABSTRACT_POOL[:4]), unique=True, min_size=2, max_size=4)
    )
    return [
        ContextSupport(
            abstract_syntax=uid,
            transfer_syntaxes=tuple(draw(ts_lists)),
            scu_role=draw(st.booleans()),
            scp_role=draw(st.booleans()),
            extended_negotiation=draw(handlers),
        )
        for uid in classes
    ]


@st.composite
def proposals(draw):
    contexts = draw(
        st.lists(st.tuples(st.sampled_from(ABSTRACT_POOL), ts_lists), min_size=1, max_size=8)
    )
    classes = sorted({a for a, _ in contexts})
    roles = draw(st.dictionaries(st.sampled_from(classes), st.tuples(st.booleans(), st.booleans())))
    extended = draw(st.dictionaries(st.sampled_from(classes), st.binary(min_size=1, max_size=4)))
    common = [
        SOPClassCommonExtendedNegotiation(sop_class_uid=uid, service_class_uid="1.2.840.10008.4.2")
        for uid in draw(st.lists(st.sampled_from(classes), unique=True))
    ]
    identity = draw(
        st.one_of(
            st.none(),
            st.builds(
                UserIdentityRQ,
                identity_type=st.integers(1, 5),
                positive_response_requested=st.booleans(),
                primary_field=st.binary(min_size=1, max_size=8),
            ),
        )
    )
    return dict(
        called_ae_title="ACCEPTOR",
        calling_ae_title="REQUESTOR",
        contexts=contexts,
        maximum_length=draw(max_lengths),
        roles=roles,
        async_window=draw(st.one_of(st.none(), st.tuples(op_limits, op_limits))),
        extended=extended,
        common_extended=common,
        user_identity=identity,
    )


@settings(max_examples=300, deadline=None)
@given(
    proposal=proposals(),
    supported=supports(),
    policy_ops=st.tuples(op_limits, op_limits),
    policy_length=max_lengths,
    identity_response=st.one_of(st.none(), st.binary(max_size=8)),
)
def test_round_trip_mirror(proposal, supported, policy_ops, policy_length, identity_response):
    policy = AcceptorPolicy(
        ae_title="ACCEPTOR",
        supported={s.abstract_syntax: s for s in supported},
        maximum_length=policy_length,
        max_operations_invoked=policy_ops[0],
        max_operations_performed=policy_ops[1],
    )
    rq = build_associate_rq(**proposal)
    assert check_association_rq(rq, policy) is None
    ac, acc = negotiate_as_acceptor(rq, policy, user_identity_response=identity_response)
    req = negotiate_as_requestor(rq, ac)

    # every proposed context answered exactly once
    assert sorted(c.context_id for c in ac.presentation_contexts) == [
        pc.context_id for pc in rq.presentation_contexts
    ]
    # mirror images
    assert (req.is_requestor, acc.is_requestor) == (True, False)
    assert req.contexts.keys() == acc.contexts.keys()
    for context_id, mine in req.contexts.items():
        theirs = acc.contexts[context_id]
        assert (mine.abstract_syntax, mine.transfer_syntax) == (
            theirs.abstract_syntax,
            theirs.transfer_syntax,
        )
        assert (mine.local_scu, mine.local_scp) == (theirs.local_scp, theirs.local_scu)
        assert mine.local_scu or mine.local_scp
    assert req.rejected == acc.rejected
    assert req.contexts.keys() | req.rejected.keys() == {
        pc.context_id for pc in rq.presentation_contexts
    }
    assert (req.local_maximum_length, req.peer_maximum_length) == (
        acc.peer_maximum_length,
        acc.local_maximum_length,
    )
    assert (req.max_outstanding_local, req.max_outstanding_remote) == (
        acc.max_outstanding_remote,
        acc.max_outstanding_local,
    )
    assert req.extended == acc.extended
    assert req.common_extended == acc.common_extended
    assert req.user_identity == acc.user_identity
    assert req.user_identity_response == acc.user_identity_response
    assert req.peer_implementation_class_uid == policy.implementation_class_uid
    assert acc.peer_implementation_class_uid == rq.user_information.implementation_class_uid

    # independent checks of the choices made
    by_class = {s.abstract_syntax: s for s in supported}
    for pc in rq.presentation_contexts:
        support = by_class.get(pc.abstract_syntax)
        if pc.context_id in acc.contexts:
            chosen = acc.contexts[pc.context_id].transfer_syntax
            assert chosen == next(t for t in support.transfer_syntaxes if t in pc.transfer_syntaxes)
        elif support is None:
            assert acc.rejected[pc.context_id] == 3
        elif not set(support.transfer_syntaxes) & set(pc.transfer_syntaxes):
            assert acc.rejected[pc.context_id] == 4
        else:
            assert acc.rejected[pc.context_id] == 1
    window = proposal["async_window"]
    if window is None:
        assert (req.max_outstanding_local, req.max_outstanding_remote) == (1, 1)
    else:
        for got, asked, allowed in (
            (req.max_outstanding_local, window[0], policy_ops[1]),
            (req.max_outstanding_remote, window[1], policy_ops[0]),
        ):
            limits = [x for x in (asked, allowed) if x]
            assert got == (min(limits) if limits else 0)
