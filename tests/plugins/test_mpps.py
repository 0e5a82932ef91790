"""The MPPS plugin (PS3.4 Annex F) over an in-memory association pair: the
N-CREATE checks, the N-SET state rules and their statuses, N-GET under MPPS
Retrieve, the completion hook, the settings."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset

import dimsekit_plugins.mpps as mpps
from dimsekit import ApplicationEntity, hookimpl, make_plugin_manager
from dimsekit.cli.mpps import create_defaults
from dimsekit.config import ConfigError, from_mapping
from dimsekit.testing import AssociationPair

MPPS, RETRIEVE = mpps.MPPS, mpps.MPPS_RETRIEVE
STATUS, END_DATE, END_TIME, SERIES = 0x00400252, 0x00400250, 0x00400251, 0x00400340
UID = "1.2.826.0.1.3680043.8.498.4242"


def _tag(keyword: str) -> int:
    return tag_for_keyword(keyword)


def new_step(**values: Any) -> Dataset:
    """A complete N-CREATE Attribute List (Types 1 and 2 of Table F.7.2-1)."""
    ds = Dataset()
    ds.Modality = "CT"
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "P1"
    create_defaults(ds, "MODALITY1")
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def mods(**values: Any) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def series(uid: str = "1.2.826.0.1.3680043.8.498.77") -> Dataset:
    item = Dataset()
    item.SeriesInstanceUID = uid
    item.ProtocolName = "Head"
    item.PerformingPhysicianName = ""
    item.OperatorsName = ""
    item.SeriesDescription = ""
    item.RetrieveAETitle = ""
    item.ReferencedImageSequence = []
    return item


def completion(**extra: Any) -> Dataset:
    values = dict(PerformedProcedureStepStatus="COMPLETED", PerformedProcedureStepEndDate="20260101",
                  PerformedProcedureStepEndTime="120000", PerformedSeriesSequence=[series()])
    return mods(**{**values, **extra})


class Completions:
    """Records dimsekit_on_mpps_completed."""

    def __init__(self, fail: bool = False) -> None:
        self.steps: list[Any] = []
        self.fail = fail

    @hookimpl
    def dimsekit_on_mpps_completed(self, instance):
        self.steps.append(instance)
        if self.fail:
            raise RuntimeError("a broken hook")


def make_pair(settings: dict | None = None, hook: Completions | None = None) -> Any:
    hook = hook or Completions()
    config = from_mapping({"plugins": {"mpps": {"backend": "memory", **(settings or {})}}})
    pm = make_plugin_manager(load_entrypoints=False, plugins=[mpps, hook])
    pair = AssociationPair(pm, acceptor_config=config)
    assoc = pair.associate(contexts=[MPPS, RETRIEVE])
    return SimpleNamespace(pair=pair, assoc=assoc, call=pair.result, hook=hook)


@pytest.fixture
def scp():
    return make_pair()


def create(s, uid: str | None = UID, ds: Dataset | None = None):
    return s.call(s.assoc.n_create(MPPS, uid, ds if ds is not None else new_step()))


def n_set(s, ds: Dataset, uid: str = UID):
    return s.call(s.assoc.n_set(MPPS, uid, ds))


def get(s, *tags: int, uid: str = UID):
    return s.call(s.assoc.n_get(RETRIEVE, uid, tags))


def still_there(s) -> None:
    """The association survived: it still answers."""
    assert get(s, STATUS, uid="9.9.9").status == 0x0112
    assert not s.assoc.ended


# -- N-CREATE ----------------------------------------------------------------------------------


def test_create_then_get_everything(scp):
    sent = new_step()
    rsp = create(scp, ds=sent)
    assert rsp.status == 0x0000 and rsp.AffectedSOPInstanceUID == UID
    got = get(scp)
    assert got.status == 0x0000
    assert got.dataset == sent


def test_create_without_a_uid_gets_one(scp):
    rsp = create(scp, uid=None)
    assert rsp.status == 0x0000
    assigned = rsp.AffectedSOPInstanceUID
    assert assigned and assigned != UID
    assert get(scp, STATUS, uid=assigned).dataset.PerformedProcedureStepStatus == "IN PROGRESS"


def test_duplicate_create_is_0111(scp):
    assert create(scp).status == 0x0000
    rsp = create(scp, ds=new_step(PatientID="OTHER"))
    assert rsp.status == 0x0111
    assert get(scp, 0x00100020).dataset.PatientID == "P1"  # the first one stands
    still_there(scp)


@pytest.mark.parametrize("keyword", ["Modality", "PerformedProcedureStepID", "PerformedStationAETitle",
                                     "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
                                     "PerformedProcedureStepStatus", "ScheduledStepAttributesSequence"])
def test_create_without_a_type1_attribute_is_0120(scp, keyword):
    ds = new_step()
    delattr(ds, keyword)
    rsp = create(scp, ds=ds)
    assert rsp.status == 0x0120
    assert rsp.AttributeIdentifierList == (_tag(keyword),)
    assert get(scp).status == 0x0112  # nothing was created
    still_there(scp)


def test_create_with_an_empty_type1_attribute_is_0121(scp):
    rsp = create(scp, ds=new_step(PerformedProcedureStepID="", Modality=""))
    assert rsp.status == 0x0121
    assert set(rsp.AttributeIdentifierList) == {_tag("PerformedProcedureStepID"), _tag("Modality")}


def test_create_checks_the_scheduled_step_items(scp):
    ds = new_step()
    del ds.ScheduledStepAttributesSequence[0].StudyInstanceUID
    rsp = create(scp, ds=ds)
    assert rsp.status == 0x0120 and rsp.AttributeIdentifierList == (_tag("ScheduledStepAttributesSequence"),)
    assert "StudyInstanceUID" in rsp.ErrorComment


def test_create_without_a_type2_attribute(scp):
    ds = new_step()
    del ds.PerformedSeriesSequence
    rsp = create(scp, ds=ds)
    assert rsp.status == 0x0120 and rsp.AttributeIdentifierList == (SERIES,)
    lenient = make_pair({"require_type2": False})
    assert create(lenient, ds=ds).status == 0x0000


@pytest.mark.parametrize("status", ["COMPLETED", "DISCONTINUED", "SCHEDULED", "PENDING"])
def test_create_in_another_state_is_0106(scp, status):
    rsp = create(scp, ds=new_step(PerformedProcedureStepStatus=status))
    assert rsp.status == 0x0106
    assert rsp.AttributeIdentifierList == (STATUS,)
    assert rsp.dataset.PerformedProcedureStepStatus == status  # the Attribute List names the value
    assert get(scp).status == 0x0112
    still_there(scp)


# -- N-SET -------------------------------------------------------------------------------------------


def test_set_an_unknown_step_is_0112(scp):
    rsp = n_set(scp, mods(PerformedProcedureStepDescription="x"), uid="1.2.3.4.5")
    assert rsp.status == 0x0112
    still_there(scp)


def test_set_while_in_progress_then_complete(scp):
    create(scp)
    assert n_set(scp, mods(PerformedProcedureStepDescription="CT head")).status == 0x0000
    assert scp.hook.steps == []
    rsp = n_set(scp, completion())
    assert rsp.status == 0x0000
    got = get(scp, STATUS, 0x00400254, SERIES).dataset
    assert got.PerformedProcedureStepStatus == "COMPLETED"
    assert got.PerformedProcedureStepDescription == "CT head"
    assert got.PerformedSeriesSequence[0].SeriesInstanceUID == series().SeriesInstanceUID
    [step] = scp.hook.steps
    assert step.sop_instance_uid == UID and step.dataset.PerformedProcedureStepStatus == "COMPLETED"
    assert step.dataset.PatientID == "P1"


def test_set_after_completed_is_0110_with_error_id_a710(scp):
    create(scp)
    assert n_set(scp, completion()).status == 0x0000
    rsp = n_set(scp, mods(PerformedProcedureStepDescription="too late"))
    assert rsp.status == 0x0110
    assert rsp.ErrorID == 0xA710
    assert rsp.ErrorComment == "Performed Procedure Step Object may no longer be updated"
    assert get(scp, 0x00400254).dataset.PerformedProcedureStepDescription == ""  # unchanged
    rsp = n_set(scp, completion())  # even the same completion again
    assert (rsp.status, rsp.ErrorID) == (0x0110, 0xA710)
    assert len(scp.hook.steps) == 1
    still_there(scp)


def test_discontinued_is_final_too(scp):
    create(scp)
    rsp = n_set(scp, mods(PerformedProcedureStepStatus="DISCONTINUED", PerformedProcedureStepEndDate="20260101",
                          PerformedProcedureStepEndTime="120000"))
    assert rsp.status == 0x0000  # no series needed for a step that was discontinued
    [step] = scp.hook.steps
    assert step.dataset.PerformedProcedureStepStatus == "DISCONTINUED"
    rsp = n_set(scp, completion())
    assert (rsp.status, rsp.ErrorID) == (0x0110, 0xA710)


def test_completing_needs_the_final_state_attributes(scp):
    create(scp)
    rsp = n_set(scp, mods(PerformedProcedureStepStatus="COMPLETED"))
    assert rsp.status == 0x0121
    assert set(rsp.AttributeIdentifierList) == {END_DATE, END_TIME, SERIES}
    rsp = n_set(scp, completion(PerformedSeriesSequence=[]))
    assert rsp.status == 0x0121 and rsp.AttributeIdentifierList == (SERIES,)
    item = series()
    item.SeriesInstanceUID = ""
    rsp = n_set(scp, completion(PerformedSeriesSequence=[item]))
    assert rsp.status == 0x0121 and rsp.AttributeIdentifierList == (SERIES,)
    assert get(scp, STATUS).dataset.PerformedProcedureStepStatus == "IN PROGRESS"  # nothing stored
    assert scp.hook.steps == []
    # end date/time sent by an earlier N-SET count
    assert n_set(scp, mods(PerformedProcedureStepEndDate="20260101", PerformedProcedureStepEndTime="1200")).status == 0
    assert n_set(scp, mods(PerformedProcedureStepStatus="COMPLETED", PerformedSeriesSequence=[series()])).status == 0


def test_discontinuing_needs_the_end_date_and_time(scp):
    create(scp)
    rsp = n_set(scp, mods(PerformedProcedureStepStatus="DISCONTINUED"))
    assert rsp.status == 0x0121 and set(rsp.AttributeIdentifierList) == {END_DATE, END_TIME}


@pytest.mark.parametrize(
    ("keyword", "value"),
    [("PatientName", "Other^Name"), ("Modality", "MR"), ("PerformedProcedureStepID", "X9"),
     ("PerformedProcedureStepStartDate", "19990101"), ("StudyID", "S-OTHER")],
)
def test_set_of_an_attribute_not_allowed_is_0106(scp, keyword, value):
    create(scp)
    rsp = n_set(scp, mods(**{keyword: value, "PerformedProcedureStepDescription": "x"}))
    assert rsp.status == 0x0106
    assert rsp.AttributeIdentifierList == (_tag(keyword),)
    assert getattr(rsp.dataset, keyword) == value and "PerformedProcedureStepDescription" not in rsp.dataset
    assert get(scp, 0x00400254).dataset.PerformedProcedureStepDescription == ""  # nothing applied
    still_there(scp)


def test_set_repeating_a_not_allowed_attribute_unchanged_is_accepted(scp):
    step = new_step()
    create(scp, ds=step)
    again = mods(PatientName="Doe^Jane", Modality="CT", PerformedProcedureStepDescription="x",
                 ScheduledStepAttributesSequence=step.ScheduledStepAttributesSequence)
    assert n_set(scp, again).status == 0x0000
    changed = step.ScheduledStepAttributesSequence[0]
    changed.AccessionNumber = "CHANGED"
    rsp = n_set(scp, mods(ScheduledStepAttributesSequence=[changed]))
    assert rsp.status == 0x0106


def test_set_repeating_a_sequence_with_an_empty_name_among_several_is_accepted(scp, logged_failures):
    # The comparison of the sequences went through pydicom's JSON writer, which fails on it.
    step = new_step()
    step.ScheduledStepAttributesSequence[0].NamesOfIntendedRecipientsOfResults = ["Roe^Rick", ""]
    create(scp, ds=step)
    assert n_set(scp, mods(ScheduledStepAttributesSequence=step.ScheduledStepAttributesSequence)).status == 0x0000
    step.ScheduledStepAttributesSequence[0].NamesOfIntendedRecipientsOfResults = ["", "Roe^Rick"]
    assert n_set(scp, mods(ScheduledStepAttributesSequence=step.ScheduledStepAttributesSequence)).status == 0x0106
    assert logged_failures == []


@pytest.mark.parametrize("value", ["DONE", "", "SCHEDULED"])
def test_set_to_a_status_that_is_not_a_state_is_0106(scp, value):
    create(scp)
    rsp = n_set(scp, mods(PerformedProcedureStepStatus=value))
    assert rsp.status == 0x0106 and rsp.AttributeIdentifierList == (STATUS,)
    assert get(scp, STATUS).dataset.PerformedProcedureStepStatus == "IN PROGRESS"


def test_a_failing_hook_does_not_fail_the_n_set():
    s = make_pair(hook=Completions(fail=True))
    create(s)
    assert n_set(s, completion()).status == 0x0000
    assert len(s.hook.steps) == 1
    assert get(s, STATUS).dataset.PerformedProcedureStepStatus == "COMPLETED"


def test_a_failing_hook_does_not_keep_the_step_from_the_others():
    s = make_pair()
    broken = Completions(fail=True)
    s.pair.acceptor.pm.register(broken)  # registered last: pluggy calls it first
    create(s)
    assert n_set(s, completion()).status == 0x0000
    assert len(broken.steps) == 1
    assert [step.sop_instance_uid for step in s.hook.steps] == [broken.steps[0].sop_instance_uid]


@pytest.mark.filterwarnings("ignore:Expected explicit VR:UserWarning")
@pytest.mark.parametrize(
    ("payload", "status"),
    [
        # Performed Series Sequence of undefined length whose item claims more than there is: cannot be decoded
        (b"\x40\x00\x40\x03\xff\xff\xff\xff\xfe\xff\x00\xe0\x10\x00\x00\x00", 0x0110),
        # Performed Series Sequence that is no sequence: read (and failing) only when used
        (b"\x40\x00\x40\x03\x04\x00\x00\x00\x01\x02\x03\x04", 0x0106),
        # an item's tag where an element should be: pydicom knows no VR for it (NotImplementedError)
        (b"\xfe\xff\x00\xe0\x04\x00\x00\x00\x01\x02\x03\x04", 0x0106),
    ],
)
def test_an_unreadable_data_set_is_answered_without_a_traceback(scp, payload, status, logged_failures):
    rsp = scp.call(scp.assoc.n_create(MPPS, "1.2.826.0.1.3680043.8.498.4243", payload))
    assert rsp.status == status
    create(scp)
    rsp = scp.call(scp.assoc.n_set(MPPS, UID, payload))
    assert rsp.status == status
    assert get(scp, STATUS).dataset.PerformedProcedureStepStatus == "IN PROGRESS"
    assert get(scp, uid="1.2.826.0.1.3680043.8.498.4243").status == 0x0112
    still_there(scp)
    assert logged_failures == []


def test_a_name_with_an_empty_value_among_several_is_stored_and_given_back(scp, logged_failures):
    # "Doe^Jane\\" (two names, the second empty): pydicom's JSON writer fails on it (IndexError);
    # the node answered 0110H with a critical traceback (found by tests/interop/_fuzz.py).
    assert create(scp, ds=new_step(PatientName=["Doe^Jane", ""])).status == 0x0000
    item = series()
    item.PerformingPhysicianName = ["", "Roe^Rick", ""]
    assert n_set(scp, completion(PerformedSeriesSequence=[item])).status == 0x0000
    got = get(scp).dataset
    assert [str(name) for name in got.PatientName] == ["Doe^Jane", ""]
    assert [str(name) for name in got.PerformedSeriesSequence[0].PerformingPhysicianName] == ["", "Roe^Rick", ""]
    assert logged_failures == []


# -- N-GET and the rest -------------------------------------------------------------------------------


def test_get_returns_what_was_asked(scp):
    create(scp)
    rsp = get(scp, STATUS, 0x00100010, 0x00400270)
    assert rsp.status == 0x0000
    assert list(rsp.dataset.keys()) == [0x00100010, STATUS, 0x00400270]
    assert rsp.AffectedSOPInstanceUID == UID


def test_get_of_attributes_mpps_does_not_keep_is_warning_0001(scp):
    create(scp)
    rsp = get(scp, STATUS, 0x00181000)  # Device Serial Number: not an MPPS attribute
    assert rsp.status == 0x0001
    assert rsp.AttributeIdentifierList == (0x00181000,)
    assert list(rsp.dataset.keys()) == [STATUS]
    # an MPPS attribute the step lacks (Type 3, not sent) is simply absent
    rsp = get(scp, STATUS, _tag("CommentsOnThePerformedProcedureStep"))
    assert rsp.status == 0x0000 and list(rsp.dataset.keys()) == [STATUS]


def test_get_of_an_unknown_step_is_0112(scp):
    assert get(scp, uid="1.2.3.4.5").status == 0x0112


def test_operations_mpps_does_not_have_are_0211(scp):
    create(scp)
    assert scp.call(scp.assoc.n_get(MPPS, UID)).status == 0x0211  # N-GET is MPPS Retrieve's (F.8)
    assert scp.call(scp.assoc.n_delete(MPPS, UID)).status == 0x0211
    assert scp.call(scp.assoc.n_action(MPPS, UID, 1)).status == 0x0211
    assert scp.call(scp.assoc.n_set(RETRIEVE, UID, mods(PerformedProcedureStepDescription="x"))).status == 0x0211
    assert get(scp, STATUS).status == 0x0000


def test_steps_are_per_node():
    one, two = make_pair(), make_pair()
    create(one)
    assert get(two).status == 0x0112


# -- settings and tables ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "key"),
    [({"backend": "files"}, "plugins.mpps.backend"), ({"require_type2": "yes"}, "plugins.mpps.require_type2"),
     ({"strict": True}, "plugins.mpps.strict")],
)
def test_bad_settings_stop_start_up(section, key):
    config = from_mapping({"plugins": {"mpps": section}})
    pm = make_plugin_manager(load_entrypoints=False, plugins=[mpps])
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        ApplicationEntity(config=config, plugin_manager=pm)


def test_tables_name_real_attributes():
    assert None not in mpps.NOT_ALLOWED_IN_SET and None not in mpps.MAINTAINED
    assert STATUS not in mpps.NOT_ALLOWED_IN_SET
    assert {END_DATE, END_TIME, SERIES} <= mpps.MAINTAINED - mpps.NOT_ALLOWED_IN_SET


def test_the_plugin_is_an_entry_point():
    pm = make_plugin_manager()
    assert pm.get_plugin("mpps") is mpps
    ae = ApplicationEntity(config=from_mapping({"plugins": {"mpps": {"backend": "memory"}}}))
    assert ae.registry.handler("N-CREATE", MPPS) is not None
    assert ae.registry.handler("N-GET", RETRIEVE) is not None
