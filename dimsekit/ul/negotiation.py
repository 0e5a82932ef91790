"""Association negotiation as pure functions (sans-I/O).

This module decides what an association *is*: which presentation contexts
are usable and in which roles, how large a P-DATA-TF PDU each side may send,
how many operations may be outstanding in each direction, and what was agreed
by extended negotiation.  It reads and builds the frozen PDU values of
:mod:`dimsekit.ul.pdu` and :mod:`dimsekit.ul.items`; it never encodes,
never touches a socket, a reactor or a clock.

Acceptor side (we were called)::

    rj = check_association_rq(rq, policy)          # PS3.8 7.1.1, Table 9-21
    if rj is None:
        ac, negotiated = negotiate_as_acceptor(rq, policy)

Requestor side (we call)::

    rq = build_associate_rq(called_ae_title=..., calling_ae_title=..., contexts=[...])
    ...                                              # send rq, receive ac
    negotiated = negotiate_as_requestor(rq, ac)

Both sides end with a :class:`Negotiated`, always from the *local* point of
view, so an acceptor's and a requestor's results for the same exchange are
mirror images of each other (``local_scu`` on one side is ``local_scp`` on the
other, and so on).

Decisions where the standard leaves room (each one is tested):

* A duplicated presentation context ID makes the one-to-one correspondence of
  results to proposals (PS3.8 7.1.1.14) impossible, and PS3.8 7.1.1.13 makes
  each ID "an arbitrary, but unused identifier": the request is not
  acceptable, so it is rejected (A-ASSOCIATE-RJ permanent, ACSE service
  provider, no-reason-given: 1/2/1), as PS3.8 9.2 action AE-6 prescribes for
  an unacceptable A-ASSOCIATE-RQ.  The same for a request without any
  presentation context (PS3.8 Table 9-11 requires one or more) and for a
  Maximum Length too small to carry a single PDV.
* An *even* presentation context ID (PS3.8 Table 9-13 wants odd values) only
  spoils that one context: it is refused with result 2, no-reason (provider
  rejection), and the rest of the association goes on.
* A refused context still carries a Transfer Syntax sub-item (PS3.8 Table
  9-18: "shall contain one", "not significant" when not accepted).  We echo
  the first proposed transfer syntax; if none was proposed, Implicit VR
  Little Endian, as DCMTK does because some peers "get confused" otherwise.
* SCP/SCU role selection (PS3.7 D.3.3.4): a role value other than 0 or 1 is
  read as "not proposed" / "not accepted".  An acceptor's 1 for a role we did
  not propose is ignored, as the standard says ("The Association-requestor
  shall ignore the response if it has not proposed the role"); it is not an
  error.  A context left with no role for either side is refused as
  user-rejection (1) by our acceptor; an accepted context that a peer leaves
  without roles is recorded as rejected (1) by our requestor.
* Asynchronous operations window (PS3.7 D.3.3.3): 0 means unlimited, so the
  minimum of two limits treats 0 as infinity.  An acceptor's value above what
  we proposed (which the standard forbids) is clamped to our proposal rather
  than trusted.
* A missing Maximum Length sub-item (mandatory, PS3.8 D.1) is not refused;
  we then send P-DATA-TF PDUs of at most :data:`ASSUMED_PEER_MAXIMUM_LENGTH`
  rather than assume "unlimited".
* An A-ASSOCIATE-AC that answers a context ID we never proposed, answers one
  twice, or accepts a transfer syntax we did not propose for that context is
  a peer error: :class:`~dimsekit.errors.RemoteProtocolError` with A-ABORT
  source 2, reason 6 (invalid-PDU-parameter value, PS3.8 Table 9-26).  An
  unknown result value is recorded as a rejection, not trusted as acceptance.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeVar

from dimsekit import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from dimsekit.errors import LocalProtocolError, RemoteProtocolError
from dimsekit.ul.items import (
    AsynchronousOperationsWindow,
    ImplementationClassUID,
    ImplementationVersionName,
    MaximumLength,
    PresentationContextAC,
    PresentationContextResult,
    PresentationContextRQ,
    RoleSelection,
    SOPClassCommonExtendedNegotiation,
    SOPClassExtendedNegotiation,
    UserIdentityAC,
    UserIdentityRQ,
    UserInformation,
    UserItem,
)
from dimsekit.ul.pdu import DICOM_APPLICATION_CONTEXT, AssociateAC, AssociateRJ, AssociateRQ

__all__ = [
    "DEFAULT_MAXIMUM_LENGTH",
    "ASSUMED_PEER_MAXIMUM_LENGTH",
    "MINIMUM_MAXIMUM_LENGTH",
    "MAX_PRESENTATION_CONTEXTS",
    "IMPLICIT_VR_LITTLE_ENDIAN",
    "ContextSupport",
    "AcceptorPolicy",
    "NegotiatedContext",
    "Negotiated",
    "check_association_rq",
    "reject_congestion",
    "negotiate_as_acceptor",
    "NegotiationCache",
    "build_associate_rq",
    "negotiate_as_requestor",
]

#: Our default Maximum Length Received (PS3.8 D.1): the largest P-DATA-TF
#: variable field we ask the peer to send.  16384 is DCMTK's default and the
#: most common value in the field (dcm4che uses 16378 so that a whole PDU fits
#: one 16 KiB TLS record); benchmarks may move it.
DEFAULT_MAXIMUM_LENGTH = 16384

#: What we assume the peer receives when its A-ASSOCIATE PDU lacks the
#: (mandatory, PS3.8 D.1) Maximum Length sub-item: a conservative size every
#: DICOM implementation in use handles, rather than "unlimited".
ASSUMED_PEER_MAXIMUM_LENGTH = 16384

#: The smallest non-zero Maximum Length we accept from a peer.  A PDV item
#: has a 6-byte header (PS3.8 Table 9-23: 4-byte length, context ID, message
#: control header), so anything less than 8 cannot carry an even-length
#: fragment of at least two bytes.
MINIMUM_MAXIMUM_LENGTH = 8

#: Presentation context IDs are odd, 1..255 (PS3.8 Table 9-13): 128 at most.
MAX_PRESENTATION_CONTEXTS = 128

#: Implicit VR Little Endian, the DICOM default transfer syntax (PS3.5 10.1).
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"

_T = TypeVar("_T")

_MAX_UINT16 = 0xFFFF
_MAX_UINT32 = 0xFFFFFFFF

# PS3.5 9.1: a UID is digits and dots, components without leading zeros, at
# most 64 characters.
_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


# -- what we support (acceptor side) ------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ContextSupport:
    """What the local AE supports for one abstract syntax, as acceptor.

    PS3.7 D.3.2 (presentation contexts), D.3.3.4 (roles), D.3.3.5 (SOP Class
    Extended Negotiation).

    :param abstract_syntax: the SOP Class (or Meta SOP Class) UID.
    :param transfer_syntaxes: the transfer syntaxes we accept, most preferred
        first; of those the requestor proposes, the first of ours wins.
    :param scu_role: we may act as SCU for it (send requests), e.g. Storage
        during a C-GET, where the requestor takes the SCP role.
    :param scp_role: we may act as SCP for it (receive requests) -- the
        default role of an acceptor.
    :param extended_negotiation: given the requestor's
        Service-class-application-information (PS3.7 Table D.3-11), returns
        ours for the A-ASSOCIATE-AC, or ``None`` to send no answer (the
        Service Class default then applies).  Exceptions propagate.
    """

    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]
    scu_role: bool = False
    scp_role: bool = True
    extended_negotiation: Callable[[bytes], bytes | None] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "transfer_syntaxes", tuple(self.transfer_syntaxes))
        _check_uid(self.abstract_syntax, "abstract_syntax")
        if not self.transfer_syntaxes:
            raise LocalProtocolError(
                f"ContextSupport for {self.abstract_syntax}: give at least one transfer syntax"
            )
        for ts in self.transfer_syntaxes:
            _check_uid(ts, "transfer syntax")


@dataclass(frozen=True, slots=True, kw_only=True)
class AcceptorPolicy:
    """How the local AE answers an A-ASSOCIATE-RQ (PS3.8 7.1.1, PS3.7 D.3).

    :param ae_title: our AE title (compared with the Called AE Title when
        ``check_called_ae``; PS3.8 Table 9-11).
    :param supported: :class:`ContextSupport` by abstract syntax UID.
    :param check_called_ae: reject (1/1/7) a request not addressed to ``ae_title``.
    :param allowed_callers: the Calling AE Titles we accept, or ``None`` for
        any (else 1/1/3).
    :param maximum_length: our Maximum Length Received (PS3.8 D.1), always
        sent; 0 = unlimited.
    :param max_operations_invoked: how many of *our* requests we would keep
        outstanding at once on an association (0 = unlimited); PS3.7 D.3.3.3,
        only answered if the requestor proposed a window.
    :param max_operations_performed: how many of the *peer's* requests we can
        perform concurrently (0 = unlimited); idem.
    :param implementation_class_uid: sent always (PS3.7 D.3.3.2).
    :param implementation_version_name: sent always (PS3.7 D.3.3.2), 1..16 chars.
    """

    ae_title: str
    supported: Mapping[str, ContextSupport]
    check_called_ae: bool = False
    allowed_callers: frozenset[str] | None = None
    maximum_length: int = DEFAULT_MAXIMUM_LENGTH
    max_operations_invoked: int = 1
    max_operations_performed: int = 1
    implementation_class_uid: str = IMPLEMENTATION_CLASS_UID
    implementation_version_name: str = IMPLEMENTATION_VERSION_NAME

    def __post_init__(self) -> None:
        _check_ae_title(self.ae_title, "ae_title")
        for key, support in self.supported.items():
            if key != support.abstract_syntax:
                raise LocalProtocolError(
                    f"supported[{key!r}] describes {support.abstract_syntax!r}: "
                    "key each ContextSupport by its own abstract syntax"
                )
        object.__setattr__(self, "supported", MappingProxyType(dict(self.supported)))
        if self.allowed_callers is not None:
            object.__setattr__(
                self, "allowed_callers", frozenset(t.strip() for t in self.allowed_callers)
            )
        _check_range(self.maximum_length, 0, _MAX_UINT32, "maximum_length")
        _check_range(self.max_operations_invoked, 0, _MAX_UINT16, "max_operations_invoked")
        _check_range(self.max_operations_performed, 0, _MAX_UINT16, "max_operations_performed")
        _check_uid(self.implementation_class_uid, "implementation_class_uid")
        _check_version_name(self.implementation_version_name)


# -- the result -----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class NegotiatedContext:
    """One accepted presentation context (PS3.8 7.1.1.13-14), with our roles.

    :param context_id: the Presentation Context ID (odd, 1..255).
    :param abstract_syntax: its SOP Class UID.
    :param transfer_syntax: the one transfer syntax agreed for data sets.
    :param local_scu: *we* may send requests (act as SCU) on this context.
    :param local_scp: *we* may receive requests (act as SCP) on this context.
    """

    context_id: int
    abstract_syntax: str
    transfer_syntax: str
    local_scu: bool
    local_scp: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Negotiated:
    """What an association establishment agreed, from the local side's view.

    :param is_requestor: we sent the A-ASSOCIATE-RQ.
    :param contexts: the accepted, usable contexts by ID.
    :param rejected: context ID -> result/reason (PS3.8 Table 9-18) for the
        others, for logs; a context the AC did not answer counts as 2.
    :param local_maximum_length: the most we receive in a P-DATA-TF (we
        advertised it; 0 = unlimited).
    :param peer_maximum_length: the most we may send in a P-DATA-TF: the
        peer's Maximum Length Received (PS3.8 D.1; 0 = unlimited).
    :param max_outstanding_local: how many of *our* requests may be
        outstanding at once (PS3.7 D.3.3.3; 0 = unlimited).
    :param max_outstanding_remote: how many of the *peer's* requests we may
        have to perform concurrently (0 = unlimited).
    :param peer_implementation_class_uid: PS3.7 D.3.3.2, ``None`` if absent.
    :param peer_implementation_version_name: PS3.7 D.3.3.2, ``None`` if absent.
    :param user_identity: the requestor's User Identity sub-item (PS3.7
        D.3.3.7.1) -- received by an acceptor, sent by a requestor.
    :param user_identity_response: the acceptor's server response (PS3.7
        D.3.3.7.2), ``None`` if no User Identity AC sub-item was sent.
    :param extended: agreed SOP Class Extended Negotiation information (the
        A-ASSOCIATE-AC value, PS3.7 D.3.3.5) by SOP Class UID.
    :param common_extended: the requestor's SOP Class Common Extended
        Negotiation sub-items (PS3.7 D.3.3.6, RQ only) by SOP Class UID.
    """

    is_requestor: bool
    contexts: Mapping[int, NegotiatedContext]
    rejected: Mapping[int, int]
    local_maximum_length: int
    peer_maximum_length: int
    max_outstanding_local: int
    max_outstanding_remote: int
    peer_implementation_class_uid: str | None
    peer_implementation_version_name: str | None
    user_identity: UserIdentityRQ | None = None
    user_identity_response: bytes | None = None
    extended: Mapping[str, bytes] = field(default_factory=dict)
    common_extended: Mapping[str, SOPClassCommonExtendedNegotiation] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("contexts", "rejected", "extended", "common_extended"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))

    def context_for(
        self, abstract_syntax: str, transfer_syntax: str | None = None, *, as_scu: bool = True
    ) -> NegotiatedContext | None:
        """The accepted context (lowest ID first) to use for ``abstract_syntax``.

        :param transfer_syntax: if given, only a context that agreed on it.
        :param as_scu: ``True`` to send a request on it (we need ``local_scu``),
            ``False`` to find the context a peer's request should arrive on
            (we need ``local_scp``).
        :returns: the context, or ``None`` if none fits.
        """
        for context_id in sorted(self.contexts):
            context = self.contexts[context_id]
            if context.abstract_syntax != abstract_syntax:
                continue
            if transfer_syntax is not None and context.transfer_syntax != transfer_syntax:
                continue
            if context.local_scu if as_scu else context.local_scp:
                return context
        return None


# -- acceptor side ---------------------------------------------------------------


def check_association_rq(rq: AssociateRQ, policy: AcceptorPolicy) -> AssociateRJ | None:
    """Decide whether an A-ASSOCIATE-RQ may be negotiated at all.

    Checked in this order (PS3.8 7.1.1 and Table 9-21 for the codes):

    1. protocol version without bit 0 (PS3.8 9.3.2: "shall only test that
       bit 0 is set") -> 1/2/2 protocol-version-not-supported;
    2. no presentation context, a duplicated context ID (PS3.8 7.1.1.13), or a
       Maximum Length between 1 and :data:`MINIMUM_MAXIMUM_LENGTH` - 1
       -> 1/2/1 (ACSE service provider, no-reason-given);
    3. application context name other than ``1.2.840.10008.3.1.1.1``
       (PS3.7 A.2.1) -> 1/1/2 application-context-name-not-supported;
    4. ``policy.check_called_ae`` and the Called AE Title is not ours
       -> 1/1/7 called-AE-title-not-recognized;
    5. the Calling AE Title is not in ``policy.allowed_callers``
       -> 1/1/3 calling-AE-title-not-recognized.

    AE titles are compared without leading and trailing spaces (not
    significant, PS3.8 Table 9-11) and case-sensitively.

    :returns: the A-ASSOCIATE-RJ to send, or ``None`` if the request may go on
        to :func:`negotiate_as_acceptor`.
    """
    if not rq.protocol_version & 0x0001:
        return AssociateRJ(result=1, source=2, reason=2)
    if _structural_problem(rq) is not None:
        return AssociateRJ(result=1, source=2, reason=1)
    if rq.application_context_name != DICOM_APPLICATION_CONTEXT:
        return AssociateRJ(result=1, source=1, reason=2)
    if policy.check_called_ae and rq.called_ae_title.strip() != policy.ae_title.strip():
        return AssociateRJ(result=1, source=1, reason=7)
    if (
        policy.allowed_callers is not None
        and rq.calling_ae_title.strip() not in policy.allowed_callers
    ):
        return AssociateRJ(result=1, source=1, reason=3)
    return None


def reject_congestion(*, local_limit: bool = True) -> AssociateRJ:
    """An A-ASSOCIATE-RJ for "too busy" (PS3.8 Table 9-21).

    Rejected-transient (2), source DICOM UL service-provider (presentation
    related function, 3), reason local-limit-exceeded (2) -- or
    temporary-congestion (1) when ``local_limit`` is false.
    """
    return AssociateRJ(result=2, source=3, reason=2 if local_limit else 1)


def negotiate_as_acceptor(
    rq: AssociateRQ,
    policy: AcceptorPolicy,
    *,
    user_identity_response: bytes | None = None,
) -> tuple[AssociateAC, Negotiated]:
    """Answer an acceptable A-ASSOCIATE-RQ: the A-ASSOCIATE-AC and what it agrees.

    Call :func:`check_association_rq` first.

    Presentation contexts (PS3.8 7.1.1.13-14, Table 9-18), each answered once,
    in the order proposed:

    * even ID -> 2 no-reason (provider rejection);
    * abstract syntax not in ``policy.supported`` -> 3;
    * none of the proposed transfer syntaxes supported -> 4;
    * no usable role left for either side (PS3.7 D.3.3.4) -> 1 user-rejection;
    * otherwise 0 acceptance, with the first transfer syntax in *our*
      preference order among those proposed.

    Roles (PS3.7 D.3.3.4): without a Role Selection sub-item for its SOP
    class, the requestor is SCU and we are SCP (so ``scp_role`` must be
    supported).  With one, we answer for that SOP class -- and only for the
    SOP classes proposed -- each role 0, or the proposed 1 if we support the
    opposite role (requestor SCU needs our ``scp_role``, requestor SCP needs
    our ``scu_role``).

    Asynchronous Operations Window (PS3.7 D.3.3.3), answered only if proposed:
    AC Maximum-number-operations-invoked -- what the requestor may invoke,
    i.e. what we perform -- is min(RQ invoked, ``max_operations_performed``);
    AC Maximum-number-operations-performed -- what the requestor may perform,
    i.e. what we invoke -- is min(RQ performed, ``max_operations_invoked``);
    0 counts as unlimited in both minima.  No item -> 1/1.

    SOP Class Extended Negotiation (PS3.7 D.3.3.5): answered only for a SOP
    class with an accepted context whose ``extended_negotiation`` returns
    bytes.  Common Extended Negotiation (D.3.3.6) is recorded, never answered.

    User Identity (PS3.7 D.3.3.7): the decision belongs to the caller (an
    authenticator).  A User Identity AC sub-item carrying
    ``user_identity_response`` is sent only if the request asked for a
    positive response *and* ``user_identity_response`` is not ``None``.

    :raises RemoteProtocolError: the request has duplicated context IDs or an
        unusable Maximum Length (what :func:`check_association_rq` rejects),
        A-ABORT reason 6.
    :raises LocalProtocolError: an ``extended_negotiation`` callable returned
        something other than bytes or ``None``.
    """
    problem = _structural_problem(rq)
    if problem is not None:
        raise RemoteProtocolError(problem, abort_source=2, abort_reason=6)
    user_info = rq.user_information
    proposed_roles = _first_by_sop_class(
        (r.sop_class_uid, (r.scu_role == 1, r.scp_role == 1)) for r in user_info.role_selections
    )

    # PS3.7 D.3.3.4: answer each proposed role; requestor SCU <=> we are SCP.
    answered_roles: dict[str, tuple[bool, bool]] = {}
    for sop_class, (rq_scu, rq_scp) in proposed_roles.items():
        support = policy.supported.get(sop_class)
        we_scp = support is not None and support.scp_role
        we_scu = support is not None and support.scu_role
        answered_roles[sop_class] = (rq_scu and we_scp, rq_scp and we_scu)

    ac_contexts: list[PresentationContextAC] = []
    contexts: dict[int, NegotiatedContext] = {}
    rejected: dict[int, int] = {}
    for pc in rq.presentation_contexts:
        result, chosen = _decide_context(pc, policy, answered_roles)
        if result != PresentationContextResult.ACCEPTANCE:
            rejected[pc.context_id] = int(result)
            placeholder = pc.transfer_syntaxes[0] if pc.transfer_syntaxes else None
            ac_contexts.append(
                PresentationContextAC(
                    context_id=pc.context_id,
                    result=result,
                    transfer_syntax=placeholder or IMPLICIT_VR_LITTLE_ENDIAN,
                )
            )
            continue
        assert chosen is not None
        if pc.abstract_syntax in answered_roles:
            req_scu, req_scp = answered_roles[pc.abstract_syntax]
            local_scu, local_scp = req_scp, req_scu
        else:
            local_scu, local_scp = False, True
        contexts[pc.context_id] = NegotiatedContext(
            context_id=pc.context_id,
            abstract_syntax=pc.abstract_syntax,
            transfer_syntax=chosen,
            local_scu=local_scu,
            local_scp=local_scp,
        )
        ac_contexts.append(
            PresentationContextAC(
                context_id=pc.context_id,
                result=PresentationContextResult.ACCEPTANCE,
                transfer_syntax=chosen,
            )
        )

    # PS3.7 D.3.3.3: the window, only if proposed.
    window_item: AsynchronousOperationsWindow | None = None
    max_local = max_remote = 1
    rq_window = user_info.asynchronous_operations_window
    if rq_window is not None:
        requestor_may_invoke = _min_limit(
            rq_window.max_operations_invoked, policy.max_operations_performed
        )
        requestor_may_perform = _min_limit(
            rq_window.max_operations_performed, policy.max_operations_invoked
        )
        window_item = AsynchronousOperationsWindow(
            max_operations_invoked=requestor_may_invoke,
            max_operations_performed=requestor_may_perform,
        )
        max_local, max_remote = requestor_may_perform, requestor_may_invoke

    # PS3.7 D.3.3.5: answer extended negotiation for usable SOP classes only.
    accepted_classes = {c.abstract_syntax for c in contexts.values()}
    extended: dict[str, bytes] = {}
    rq_extended = _first_by_sop_class(
        (e.sop_class_uid, e.service_class_application_information)
        for e in user_info.sop_class_extended
    )
    for sop_class, info in rq_extended.items():
        support = policy.supported.get(sop_class)
        if sop_class not in accepted_classes or support is None:
            continue
        if support.extended_negotiation is None:
            continue
        answer = support.extended_negotiation(info)
        if answer is None:
            continue
        if not isinstance(answer, bytes | bytearray):
            raise LocalProtocolError(
                f"extended_negotiation for {sop_class} returned {type(answer).__name__}, "
                "expected bytes or None"
            )
        extended[sop_class] = bytes(answer)

    # PS3.7 D.3.3.7: a server response only when asked for and granted.
    identity = user_info.user_identity_rq
    identity_item: UserIdentityAC | None = None
    if (
        identity is not None
        and identity.positive_response_requested
        and user_identity_response is not None
    ):
        identity_item = UserIdentityAC(server_response=bytes(user_identity_response))

    items: list[UserItem] = [
        MaximumLength(maximum_length=policy.maximum_length),
        ImplementationClassUID(uid=policy.implementation_class_uid),
    ]
    if window_item is not None:
        items.append(window_item)
    items.extend(
        RoleSelection(sop_class_uid=uid, scu_role=int(scu), scp_role=int(scp))
        for uid, (scu, scp) in answered_roles.items()
    )
    items.append(ImplementationVersionName(name=policy.implementation_version_name))
    items.extend(
        SOPClassExtendedNegotiation(sop_class_uid=uid, service_class_application_information=info)
        for uid, info in extended.items()
    )
    if identity_item is not None:
        items.append(identity_item)

    ac = AssociateAC(
        # PS3.8 Table 9-17: "sent with a value identical to the value received".
        called_ae_title=rq.called_ae_title,
        calling_ae_title=rq.calling_ae_title,
        presentation_contexts=tuple(ac_contexts),
        user_information=UserInformation(items=tuple(items)),
    )
    negotiated = Negotiated(
        is_requestor=False,
        contexts=contexts,
        rejected=rejected,
        local_maximum_length=policy.maximum_length,
        peer_maximum_length=_peer_maximum_length(user_info),
        max_outstanding_local=max_local,
        max_outstanding_remote=max_remote,
        peer_implementation_class_uid=user_info.implementation_class_uid,
        peer_implementation_version_name=user_info.implementation_version_name,
        user_identity=identity,
        user_identity_response=None if identity_item is None else identity_item.server_response,
        extended=extended,
        common_extended=_first_by_sop_class(
            (c.sop_class_uid, c) for c in user_info.sop_class_common_extended
        ),
    )
    return ac, negotiated


def _decide_context(
    pc: PresentationContextRQ,
    policy: AcceptorPolicy,
    answered_roles: Mapping[str, tuple[bool, bool]],
) -> tuple[int, str | None]:
    """Result/reason (PS3.8 Table 9-18) and chosen transfer syntax for one context."""
    if pc.context_id % 2 == 0:
        return PresentationContextResult.NO_REASON, None
    support = policy.supported.get(pc.abstract_syntax)
    if support is None:
        return PresentationContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED, None
    proposed = set(pc.transfer_syntaxes)
    chosen = next((ts for ts in support.transfer_syntaxes if ts in proposed), None)
    if chosen is None:
        return PresentationContextResult.TRANSFER_SYNTAXES_NOT_SUPPORTED, None
    if pc.abstract_syntax in answered_roles:
        usable = any(answered_roles[pc.abstract_syntax])
    else:
        usable = support.scp_role  # default roles: requestor SCU, we SCP
    if not usable:
        return PresentationContextResult.USER_REJECTION, None
    return PresentationContextResult.ACCEPTANCE, chosen


class NegotiationCache:
    """The acceptor's answers to A-ASSOCIATE-RQs it has seen, for one policy.

    :func:`negotiate_as_acceptor` is a pure function of the request and the
    policy -- except for the two things that depend on more than those:

    * a User Identity sub-item (PS3.7 D.3.3.7): the answer depends on what an
      authenticator decides, association by association;
    * SOP Class Extended Negotiation sub-items (PS3.7 D.3.3.5): answered by
      the ``extended_negotiation`` callables of plugins, which may decide
      differently each time.

    A request carrying neither is answered once: the encoded A-ASSOCIATE-AC
    and the :class:`Negotiated` (both immutable) are kept and given again for
    the same request.  "The same" is identity: :mod:`dimsekit.ul.pdu` decodes
    the same A-ASSOCIATE-RQ bytes to the same value (its memo), so a peer
    that sends what it sent before is recognised without comparing fields;
    an equal request decoded apart is negotiated afresh (correct, only slower).

    Everything else the acceptor decides per association -- the called and
    calling AE checks (:func:`check_association_rq`), the accept hooks, the
    association limit, authentication -- runs before negotiation and is not
    cached.  The cache belongs to one :class:`AcceptorPolicy`: whoever holds it
    makes a new one when the policy changes (see :meth:`for_policy`).
    It keeps at most ``size`` answers, dropping the oldest first.
    """

    __slots__ = ("policy", "size", "_answers", "hits", "misses")

    def __init__(self, policy: AcceptorPolicy, size: int = 64) -> None:
        self.policy = policy
        self.size = size
        #: id(rq) -> (rq, encoded AC, negotiated); rq is kept so that its id
        #: cannot be reused by another object while the entry lives
        self._answers: dict[int, tuple[AssociateRQ, bytes, Negotiated]] = {}
        self.hits = 0
        self.misses = 0

    def for_policy(self, policy: AcceptorPolicy) -> NegotiationCache:
        """This cache if it was made for ``policy``, else a new, empty one."""
        return self if policy is self.policy else NegotiationCache(policy, self.size)

    @staticmethod
    def cacheable(rq: AssociateRQ) -> bool:
        """Whether the answer to ``rq`` depends on the request and policy alone."""
        user_info = rq.user_information
        return user_info.user_identity_rq is None and not user_info.sop_class_extended

    def negotiate(self, rq: AssociateRQ) -> tuple[bytes, Negotiated]:
        """The encoded A-ASSOCIATE-AC and the :class:`Negotiated` for ``rq``.

        As :func:`negotiate_as_acceptor` (same exceptions, nothing cached
        then), with the AC already encoded; from the cache when ``rq`` was
        answered before and :meth:`cacheable`.
        """
        entry = self._answers.get(id(rq))
        if entry is not None and entry[0] is rq:
            self.hits += 1
            return entry[1], entry[2]
        self.misses += 1
        ac, negotiated = negotiate_as_acceptor(rq, self.policy)
        encoded = ac.encode()
        if self.cacheable(rq):
            answers = self._answers
            if len(answers) >= self.size:
                del answers[next(iter(answers))]  # the oldest (dicts keep insertion order)
            answers[id(rq)] = (rq, encoded, negotiated)
        return encoded, negotiated


# -- requestor side ----------------------------------------------------------------


def build_associate_rq(
    *,
    called_ae_title: str,
    calling_ae_title: str,
    contexts: Sequence[tuple[str, Sequence[str]]],
    maximum_length: int = DEFAULT_MAXIMUM_LENGTH,
    roles: Mapping[str, tuple[bool, bool]] = MappingProxyType({}),
    async_window: tuple[int, int] | None = None,
    extended: Mapping[str, bytes] = MappingProxyType({}),
    common_extended: Sequence[SOPClassCommonExtendedNegotiation] = (),
    user_identity: UserIdentityRQ | None = None,
    implementation_class_uid: str = IMPLEMENTATION_CLASS_UID,
    implementation_version_name: str = IMPLEMENTATION_VERSION_NAME,
) -> AssociateRQ:
    """Build the A-ASSOCIATE-RQ we send (PS3.8 Table 9-11, PS3.7 D.3).

    :param contexts: ``(abstract syntax, transfer syntaxes)`` pairs; each gets
        the next odd Presentation Context ID, 1, 3, 5, ... (PS3.8 Table 9-13).
        The same abstract syntax may appear more than once (PS3.8 7.1.1.13
        note), e.g. once per transfer syntax.
    :param maximum_length: our Maximum Length Received (PS3.8 D.1), always
        sent; 0 = unlimited.
    :param roles: SOP class -> ``(scu, scp)``, the roles we propose for
        *ourselves* (PS3.7 D.3.3.4); a Role Selection sub-item is sent only
        for the SOP classes given.  Without one we are SCU only.
    :param async_window: ``(max operations we invoke, max operations we
        perform)`` (PS3.7 D.3.3.3), 0 = unlimited; ``None`` sends no item and
        means 1/1 -- the default, as some GE systems drop the connection on
        receiving the item.
    :param extended: SOP class -> Service-class-application-information
        (PS3.7 D.3.3.5), one sub-item each.
    :param common_extended: SOP Class Common Extended Negotiation sub-items
        (PS3.7 D.3.3.6), at most one per SOP class.
    :param user_identity: User Identity sub-item (PS3.7 D.3.3.7.1).
    :param implementation_class_uid: sent always (PS3.7 D.3.3.2).
    :param implementation_version_name: sent always (PS3.7 D.3.3.2), 1..16 chars.
    :raises LocalProtocolError: no context or more than 128, a context
        without transfer syntax, an invalid AE title, UID or value range, or
        two common extended sub-items for one SOP class.
    """
    _check_ae_title(called_ae_title, "called_ae_title")
    _check_ae_title(calling_ae_title, "calling_ae_title")
    if not contexts:
        raise LocalProtocolError("an A-ASSOCIATE-RQ needs at least one presentation context")
    if len(contexts) > MAX_PRESENTATION_CONTEXTS:
        raise LocalProtocolError(
            f"{len(contexts)} presentation contexts proposed; at most "
            f"{MAX_PRESENTATION_CONTEXTS} fit the odd IDs 1..255 (PS3.8 Table 9-13)"
        )
    pcs = []
    for index, (abstract_syntax, transfer_syntaxes) in enumerate(contexts):
        if isinstance(transfer_syntaxes, str):
            raise LocalProtocolError(
                f"transfer syntaxes for {abstract_syntax} must be a sequence of UIDs, not a str"
            )
        _check_uid(abstract_syntax, "abstract syntax")
        if not transfer_syntaxes:
            raise LocalProtocolError(f"context for {abstract_syntax} has no transfer syntax")
        for ts in transfer_syntaxes:
            _check_uid(ts, "transfer syntax")
        pcs.append(
            PresentationContextRQ(
                context_id=2 * index + 1,
                abstract_syntax=abstract_syntax,
                transfer_syntaxes=tuple(transfer_syntaxes),
            )
        )
    _check_range(maximum_length, 0, _MAX_UINT32, "maximum_length")
    _check_uid(implementation_class_uid, "implementation_class_uid")
    _check_version_name(implementation_version_name)

    items: list[UserItem] = [
        MaximumLength(maximum_length=maximum_length),
        ImplementationClassUID(uid=implementation_class_uid),
    ]
    if async_window is not None:
        invoked, performed = async_window
        _check_range(invoked, 0, _MAX_UINT16, "async_window invoked")
        _check_range(performed, 0, _MAX_UINT16, "async_window performed")
        items.append(
            AsynchronousOperationsWindow(
                max_operations_invoked=invoked, max_operations_performed=performed
            )
        )
    for sop_class, (scu, scp) in roles.items():
        _check_uid(sop_class, "role selection SOP class")
        items.append(
            RoleSelection(sop_class_uid=sop_class, scu_role=int(bool(scu)), scp_role=int(bool(scp)))
        )
    items.append(ImplementationVersionName(name=implementation_version_name))
    for sop_class, info in extended.items():
        _check_uid(sop_class, "extended negotiation SOP class")
        items.append(
            SOPClassExtendedNegotiation(
                sop_class_uid=sop_class, service_class_application_information=bytes(info)
            )
        )
    seen: set[str] = set()
    for item in common_extended:
        if item.sop_class_uid in seen:
            raise LocalProtocolError(
                f"two SOP Class Common Extended Negotiation sub-items for {item.sop_class_uid} "
                "(PS3.7 D.3.3.6 allows one per SOP class)"
            )
        seen.add(item.sop_class_uid)
        items.append(item)
    if user_identity is not None:
        items.append(user_identity)

    return AssociateRQ(
        called_ae_title=called_ae_title.strip(),
        calling_ae_title=calling_ae_title.strip(),
        presentation_contexts=tuple(pcs),
        user_information=UserInformation(items=tuple(items)),
    )


def negotiate_as_requestor(rq: AssociateRQ, ac: AssociateAC) -> Negotiated:
    """What our A-ASSOCIATE-RQ and the peer's A-ASSOCIATE-AC agreed.

    Validates the AC: protocol version bit 0 set (PS3.8 Table 9-17); each
    answered context ID is one we proposed, answered once; an accepted
    context names one of the transfer syntaxes we proposed for it (PS3.8
    7.1.1.14); the Maximum Length, if not 0, can carry a PDV.  A context the
    AC does not answer counts as rejected (2).

    Roles (PS3.7 D.3.3.4): for a SOP class we sent no Role Selection for, or
    whose Role Selection the AC does not answer, we are SCU only.  Otherwise
    we hold each role we proposed and the acceptor returned as 1; a 1 for a
    role we did not propose is ignored.  An accepted context with no role
    left is recorded as rejected, user-rejection (1).

    Asynchronous Operations Window (PS3.7 D.3.3.3): if we proposed one and the
    AC answers, AC invoked is how many requests we may keep outstanding and
    AC performed how many of the peer's we may have to perform, each clamped
    to what we proposed; otherwise 1/1.

    Extended negotiation (PS3.7 D.3.3.5): the AC's answers for SOP classes we
    offered; others are ignored.

    :raises RemoteProtocolError: the AC is invalid as above (A-ABORT source 2,
        reason 6 invalid-PDU-parameter value).
    """
    if not ac.protocol_version & 0x0001:
        raise _bad_ac(f"protocol version {ac.protocol_version:#06x} without bit 0")
    proposed = {pc.context_id: pc for pc in rq.presentation_contexts}
    ours = rq.user_information
    theirs = ac.user_information

    peer_max = _peer_maximum_length(theirs)
    if 0 < peer_max < MINIMUM_MAXIMUM_LENGTH:
        raise _bad_ac(f"Maximum Length {peer_max} cannot carry a PDV")

    our_roles = _first_by_sop_class(
        (r.sop_class_uid, (r.scu_role == 1, r.scp_role == 1)) for r in ours.role_selections
    )
    their_roles = _first_by_sop_class(
        (r.sop_class_uid, (r.scu_role == 1, r.scp_role == 1)) for r in theirs.role_selections
    )

    contexts: dict[int, NegotiatedContext] = {}
    rejected: dict[int, int] = {}
    answered: set[int] = set()
    for pc_ac in ac.presentation_contexts:
        context_id = pc_ac.context_id
        pc = proposed.get(context_id)
        if pc is None:
            raise _bad_ac(f"the A-ASSOCIATE-AC answers context {context_id}, never proposed")
        if context_id in answered:
            raise _bad_ac(f"the A-ASSOCIATE-AC answers context {context_id} twice")
        answered.add(context_id)
        if pc_ac.result != PresentationContextResult.ACCEPTANCE:
            rejected[context_id] = int(pc_ac.result)
            continue
        if pc_ac.transfer_syntax not in pc.transfer_syntaxes:
            raise _bad_ac(
                f"context {context_id} accepted with transfer syntax "
                f"{pc_ac.transfer_syntax!r}, not one proposed"
            )
        local_scu, local_scp = True, False
        sop_class = pc.abstract_syntax
        if sop_class in our_roles and sop_class in their_roles:
            (we_scu, we_scp), (ok_scu, ok_scp) = our_roles[sop_class], their_roles[sop_class]
            local_scu, local_scp = we_scu and ok_scu, we_scp and ok_scp
        if not (local_scu or local_scp):
            rejected[context_id] = int(PresentationContextResult.USER_REJECTION)
            continue
        contexts[context_id] = NegotiatedContext(
            context_id=context_id,
            abstract_syntax=sop_class,
            transfer_syntax=pc_ac.transfer_syntax,
            local_scu=local_scu,
            local_scp=local_scp,
        )
    for context_id in proposed:
        if context_id not in answered:
            rejected[context_id] = int(PresentationContextResult.NO_REASON)

    max_local = max_remote = 1
    our_window = ours.asynchronous_operations_window
    their_window = theirs.asynchronous_operations_window
    if our_window is not None and their_window is not None:
        max_local = _min_limit(
            their_window.max_operations_invoked, our_window.max_operations_invoked
        )
        max_remote = _min_limit(
            their_window.max_operations_performed, our_window.max_operations_performed
        )

    offered_extended = {e.sop_class_uid for e in ours.sop_class_extended}
    extended = _first_by_sop_class(
        (e.sop_class_uid, e.service_class_application_information)
        for e in theirs.sop_class_extended
        if e.sop_class_uid in offered_extended
    )
    identity_ac = theirs.user_identity_ac

    return Negotiated(
        is_requestor=True,
        contexts=contexts,
        rejected=rejected,
        local_maximum_length=ours.maximum_length or 0,
        peer_maximum_length=peer_max,
        max_outstanding_local=max_local,
        max_outstanding_remote=max_remote,
        peer_implementation_class_uid=theirs.implementation_class_uid,
        peer_implementation_version_name=theirs.implementation_version_name,
        user_identity=ours.user_identity_rq,
        user_identity_response=None if identity_ac is None else identity_ac.server_response,
        extended=extended,
        common_extended=_first_by_sop_class(
            (c.sop_class_uid, c) for c in ours.sop_class_common_extended
        ),
    )


# -- helpers ---------------------------------------------------------------------


def _min_limit(a: int, b: int) -> int:
    """The smaller of two operation limits where 0 means unlimited (PS3.7 D.3.3.3)."""
    if a == 0:
        return b
    if b == 0:
        return a
    return min(a, b)


def _peer_maximum_length(user_info: UserInformation) -> int:
    """The peer's Maximum Length Received (PS3.8 D.1), or the assumed one if absent."""
    value = user_info.maximum_length
    return ASSUMED_PEER_MAXIMUM_LENGTH if value is None else value


def _first_by_sop_class(pairs: Iterable[tuple[str, _T]]) -> dict[str, _T]:
    """``{sop class: value}`` keeping the first of repeated SOP classes.

    PS3.7 D.3.3.4-6 allow one sub-item per SOP class; a repeat is ignored.
    """
    result: dict[str, _T] = {}
    for uid, value in pairs:
        result.setdefault(uid, value)
    return result


def _structural_problem(rq: AssociateRQ) -> str | None:
    """Why ``rq`` cannot be answered with an A-ASSOCIATE-AC at all, or ``None``."""
    if not rq.presentation_contexts:
        return "no presentation context (PS3.8 Table 9-11 requires one or more)"
    seen: set[int] = set()
    for pc in rq.presentation_contexts:
        if pc.context_id in seen:
            return f"presentation context ID {pc.context_id} proposed twice (PS3.8 7.1.1.13)"
        seen.add(pc.context_id)
    max_length = rq.user_information.maximum_length
    if max_length is not None and 0 < max_length < MINIMUM_MAXIMUM_LENGTH:
        return f"Maximum Length {max_length} cannot carry a PDV (PS3.8 D.1, Table 9-23)"
    return None


def _bad_ac(message: str) -> RemoteProtocolError:
    """A-ABORT source 2 reason 6, invalid-PDU-parameter value (PS3.8 Table 9-26)."""
    return RemoteProtocolError(message, abort_source=2, abort_reason=6)


def _check_range(value: int, low: int, high: int, what: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise LocalProtocolError(f"{what} must be an integer in {low}..{high}, got {value!r}")


def _check_uid(uid: str, what: str) -> None:
    """PS3.5 9.1: digits and dots, no leading zeros in a component, <= 64 chars."""
    if not isinstance(uid, str) or len(uid) > 64 or not _UID_RE.match(uid):
        raise LocalProtocolError(f"{what} {uid!r} is not a valid UID (PS3.5 9.1)")


def _check_ae_title(title: str, what: str) -> None:
    """PS3.5 6.2 (AE) and PS3.8 Table 9-11: 1..16 significant characters of the
    default repertoire, no backslash, no control character, not all spaces."""
    stripped = title.strip(" ") if isinstance(title, str) else ""
    if not 1 <= len(stripped) <= 16 or any(c == "\\" or not " " <= c <= "~" for c in stripped):
        raise LocalProtocolError(
            f"{what} {title!r} is not a valid AE title (1-16 printable ASCII characters, "
            "no backslash, not all spaces)"
        )


def _check_version_name(name: str) -> None:
    """PS3.7 D.3.3.2: 1 to 16 characters of ISO 646 (basic G0 set)."""
    if (
        not isinstance(name, str)
        or not 1 <= len(name) <= 16
        or any(not " " <= c <= "~" for c in name)
    ):
        raise LocalProtocolError(
            f"implementation_version_name {name!r} must be 1-16 printable ASCII characters"
        )
