"""dimsekit.nservice: attribute helpers, Annex C errors, backends, registry, and a
normalized service end to end over an in-memory association pair."""

from __future__ import annotations

import sqlite3
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom import examples
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from dimsekit import hookimpl, make_plugin_manager
from dimsekit.config import ConfigError, from_mapping
from dimsekit.nservice import (
    DATABASE_NAME,
    DuplicateInstance,
    Instance,
    InstanceRegistry,
    InvalidAttributeValue,
    InvalidObjectInstance,
    MemoryBackend,
    MissingAttribute,
    MissingAttributeValue,
    NormalizedService,
    NoSuchInstance,
    ProcessingFailure,
    SQLiteBackend,
    apply_modifications,
    attribute_identifiers,
    backend_from_config,
    check_backend_config,
    check_required,
    creation_uid,
    dataset_json,
    is_valid_uid,
    merge_character_sets,
    select_attributes,
    tag_name,
    to_tag,
)
from dimsekit.testing import AssociationPair

PATIENT_NAME, PATIENT_ID, STUDY_ID = 0x00100010, 0x00100020, 0x00200010


def result(d: Any) -> Any:
    """What an already-fired Deferred holds (raising its failure)."""
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


def sample() -> Dataset:
    ds = Dataset()
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "123"
    ds.StudyID = "S1"
    item = Dataset()
    item.CodeValue = "A"
    ds.ProcedureCodeSequence = [item]
    return ds


# -- tags and UIDs ----------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["PatientName", "(0010,0010)", "0010,0010", "00100010", " (0010, 0010) ", 0x00100010])
def test_to_tag_accepts_keywords_and_tag_forms(text):
    assert to_tag(text) == PATIENT_NAME


@pytest.mark.parametrize("text", ["NoSuchKeyword", "(0010,001)", "", "0x1g", -1, 1 << 32])
def test_to_tag_refuses_the_rest(text):
    with pytest.raises(ValueError):
        to_tag(text)


def test_tag_name():
    assert tag_name(PATIENT_NAME) == "PatientName (0010,0010)"
    assert tag_name(0x00111010) == "(0011,1010)"


@pytest.mark.parametrize(("uid", "ok"), [("1.2.3", True), ("1.2.03", False), ("1..2", False), ("", False),
                                         ("1." + "2" * 63, False), ("1.2.a", False), ("0.0", True)])
def test_is_valid_uid(uid, ok):
    assert is_valid_uid(uid) is ok


def _request(**command: Any) -> Any:
    return SimpleNamespace(command=command)


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
@pytest.mark.parametrize("name", ["ct", "mr", "rt_plan", "rt_dose", "waveform"])
def test_dataset_json_is_what_pydicom_writes(name):
    dataset = getattr(examples, name)
    assert dataset_json(dataset) == dataset.to_json()


_groups = st.text(alphabet="AZaz ^", max_size=6)
_names = st.lists(_groups, min_size=1, max_size=3).map("=".join)


@given(st.lists(_names, min_size=2, max_size=4))
def test_dataset_json_writes_every_name_of_a_multi_valued_pn(names):
    # pydicom's own writer fails on any value among several whose groups are all empty ("", "=", "==")
    dataset = Dataset()
    dataset.PatientID = "P"
    dataset.PatientName = names
    item = Dataset()
    item.PerformingPhysicianName = names
    dataset.PerformedSeriesSequence = [item]
    back = Dataset.from_json(dataset_json(dataset))

    def written(values):  # as DICOM has it: trailing empty groups and spaces carry nothing
        return [str(v).rstrip(" ").rstrip("=") if str(v).replace("=", "").strip() else "" for v in values]

    assert written(back.PatientName) == written(dataset.PatientName)
    assert written(back.PerformedSeriesSequence[0].PerformingPhysicianName) == written(item.PerformingPhysicianName)
    assert back.PatientID == "P"


@pytest.mark.filterwarnings("ignore:A value of type 'str' cannot be assigned")
def test_dataset_json_names_an_element_pydicom_cannot_write():
    dataset = Dataset()
    dataset.PatientID = "P"
    dataset.add(DataElement(0x00420011, "OB", "text"))  # Encapsulated Document, not bytes: pydicom's TypeError
    with pytest.raises(InvalidAttributeValue) as caught:
        dataset_json(dataset)
    assert caught.value.attributes == (0x00420011,)
    assert caught.value.comment.startswith("EncapsulatedDocument (0042,0011) cannot be stored: ")


def test_creation_uid_takes_the_scus_uid():
    assert creation_uid(_request(AffectedSOPInstanceUID="1.2.3.4")) == ("1.2.3.4", False)


def test_creation_uid_assigns_one_when_absent():
    uid, assigned = creation_uid(_request())
    assert assigned and is_valid_uid(uid)
    assert creation_uid(_request(AffectedSOPInstanceUID=""))[1] is True
    assert creation_uid(_request())[0] != uid


def test_creation_uid_refuses_a_malformed_uid():
    with pytest.raises(InvalidObjectInstance) as caught:
        creation_uid(_request(AffectedSOPInstanceUID="1.02.3"))
    assert caught.value.response()[0] == 0x0117


def test_attribute_identifiers():
    assert attribute_identifiers({}) == ()
    assert attribute_identifiers({"AttributeIdentifierList": PATIENT_NAME}) == (PATIENT_NAME,)
    assert attribute_identifiers({"AttributeIdentifierList": (PATIENT_NAME, PATIENT_ID)}) == (PATIENT_NAME, PATIENT_ID)


# -- N-GET selection -------------------------------------------------------------------------


def test_select_all_when_the_list_is_empty_and_it_is_a_copy():
    ds = sample()
    selected, unsupported = select_attributes(ds)
    assert selected == ds and unsupported == ()
    selected.PatientName = "Changed"
    selected.ProcedureCodeSequence[0].CodeValue = "B"
    assert ds.PatientName == "Doe^Jane" and ds.ProcedureCodeSequence[0].CodeValue == "A"


def test_select_only_what_was_asked_and_absent_is_absent():
    selected, unsupported = select_attributes(sample(), [PATIENT_ID, 0x00081030])
    assert list(selected.keys()) == [PATIENT_ID]
    assert unsupported == ()


def test_select_reports_unmaintained_attributes():
    selected, unsupported = select_attributes(
        sample(), [PATIENT_ID, 0x00081030, 0x00100030], maintained={PATIENT_ID, 0x00100030}
    )
    assert list(selected.keys()) == [PATIENT_ID]
    assert unsupported == (0x00081030,)  # maintained but absent (0010,0030) is not unsupported


def test_select_carries_the_character_set_for_text():
    ds = sample()
    ds.SpecificCharacterSet = "ISO_IR 100"
    selected, _ = select_attributes(ds, [PATIENT_NAME])
    assert selected.SpecificCharacterSet == "ISO_IR 100"


# -- N-SET modification ----------------------------------------------------------------------


def test_modifications_replace_and_add_and_leave_the_original():
    ds = sample()
    mods = Dataset()
    mods.PatientID = "456"
    mods.AccessionNumber = "A1"
    item = Dataset()
    item.CodeValue = "Z"
    mods.ProcedureCodeSequence = [item, Dataset()]
    out = apply_modifications(ds, mods)
    assert (out.PatientID, out.AccessionNumber) == ("456", "A1")
    assert len(out.ProcedureCodeSequence) == 2 and out.ProcedureCodeSequence[0].CodeValue == "Z"
    assert ds.PatientID == "123" and "AccessionNumber" not in ds and len(ds.ProcedureCodeSequence) == 1


def test_empty_modification_keeps_a_zero_length_attribute_by_default():
    mods = Dataset()
    mods.PatientID = ""
    mods.ProcedureCodeSequence = []
    out = apply_modifications(sample(), mods)
    assert "PatientID" in out and out["PatientID"].is_empty
    assert "ProcedureCodeSequence" in out and len(out.ProcedureCodeSequence) == 0


def test_empty_modification_removes_when_asked():
    mods = Dataset()
    mods.PatientID = ""
    mods.ProcedureCodeSequence = []
    mods.AccessionNumber = ""  # absent before: stays absent
    out = apply_modifications(sample(), mods, empty="remove")
    assert "PatientID" not in out and "ProcedureCodeSequence" not in out and "AccessionNumber" not in out
    assert out.PatientName == "Doe^Jane"
    with pytest.raises(ValueError):
        apply_modifications(sample(), mods, empty="drop")


@pytest.mark.parametrize(
    ("before", "after", "merged"),
    [(None, None, None), ("ISO_IR 100", None, "ISO_IR 100"), (None, "ISO_IR 100", "ISO_IR 100"),
     ("ISO_IR 100", "ISO_IR 100", "ISO_IR 100"), ("ISO_IR 100", "ISO_IR 144", "ISO_IR 192")],
)
def test_character_sets_merge(before, after, merged):
    old, new = Dataset(), Dataset()
    if before:
        old.SpecificCharacterSet = before
    if after:
        new.SpecificCharacterSet = after
    assert merge_character_sets(old, new) == merged
    assert apply_modifications(old, new).get("SpecificCharacterSet") == merged


def test_text_in_two_character_sets_survives_a_merge():
    old = Dataset()
    old.SpecificCharacterSet = "ISO_IR 100"
    old.PatientName = "Müller"
    new = Dataset()
    new.SpecificCharacterSet = "ISO_IR 144"
    new.PerformedProcedureStepDescription = "Исследование"
    out = apply_modifications(old, new)
    back = Dataset.from_json(out.to_json())
    assert (str(back.PatientName), back.PerformedProcedureStepDescription) == ("Müller", "Исследование")


# -- requirements ------------------------------------------------------------------------------

REQUIREMENTS = {
    "PatientID": "1",
    "PatientName": "2",
    "ScheduledStepAttributesSequence": ("1", {"StudyInstanceUID": "1", "AccessionNumber": "2"}),
}


def complete() -> Dataset:
    ds = Dataset()
    ds.PatientID = "1"
    ds.PatientName = ""
    item = Dataset()
    item.StudyInstanceUID = "1.2.3"
    item.AccessionNumber = ""
    ds.ScheduledStepAttributesSequence = [item]
    return ds


def test_requirements_met():
    check_required(complete(), REQUIREMENTS)


def test_missing_attributes_are_0120_and_listed():
    ds = complete()
    del ds.PatientID
    del ds.PatientName
    with pytest.raises(MissingAttribute) as caught:
        check_required(ds, REQUIREMENTS)
    status, _, fields = caught.value.response()
    assert status == 0x0120
    assert fields["AttributeIdentifierList"] == (PATIENT_ID, PATIENT_NAME)


def test_empty_type1_is_0121():
    ds = complete()
    ds.PatientID = ""
    with pytest.raises(MissingAttributeValue) as caught:
        check_required(ds, REQUIREMENTS)
    assert caught.value.response()[0] == 0x0121
    assert caught.value.attributes == (PATIENT_ID,)


def test_missing_beats_missing_value():
    ds = complete()
    ds.PatientID = ""
    del ds.PatientName
    with pytest.raises(MissingAttribute):
        check_required(ds, REQUIREMENTS)


def test_type1_sequence_needs_an_item_and_items_are_checked():
    ds = complete()
    ds.ScheduledStepAttributesSequence = []
    with pytest.raises(MissingAttributeValue) as caught:
        check_required(ds, REQUIREMENTS)
    assert caught.value.attributes == (0x00400270,)
    ds = complete()
    del ds.ScheduledStepAttributesSequence[0].StudyInstanceUID
    with pytest.raises(MissingAttribute) as caught:
        check_required(ds, REQUIREMENTS)
    assert caught.value.attributes == (0x00400270,)
    assert "ScheduledStepAttributesSequence[0].StudyInstanceUID" in caught.value.comment


def test_type1_only():
    ds = complete()
    del ds.PatientName
    check_required(ds, REQUIREMENTS, types="1")
    with pytest.raises(MissingAttribute):
        check_required(ds, REQUIREMENTS)


def test_error_response_fields():
    error = ProcessingFailure("no longer", error_id=0xA710, attributes=[PATIENT_ID])
    assert error.response() == (0x0110, None, {"ErrorComment": "no longer", "ErrorID": 0xA710,
                                               "AttributeIdentifierList": (PATIENT_ID,)})
    assert NoSuchInstance("1.2").response() == (0x0112, None, {"ErrorComment": "no SOP Instance 1.2",
                                                               "AffectedSOPInstanceUID": "1.2"})
    assert DuplicateInstance("1.2").response()[0] == 0x0111


# -- backends -------------------------------------------------------------------------------------


def _sync(function, *args):
    return defer.maybeDeferred(function, *args)


@pytest.fixture(params=["memory", "sqlite"])
def backend(request, tmp_path):
    if request.param == "memory":
        yield MemoryBackend()
    else:
        b = SQLiteBackend(tmp_path / "sub" / DATABASE_NAME, MemoryReactorClock(), runner=_sync)
        yield b
        result(b.close())


def test_backend_create_get_update_delete(backend):
    instance = Instance("widget", "1.2.840.1", "1.2.3", sample())
    assert result(backend.get("widget", "1.2.3")) is None
    result(backend.create(instance))
    got = result(backend.get("widget", "1.2.3"))
    assert (got.kind, got.sop_class_uid, got.sop_instance_uid) == ("widget", "1.2.840.1", "1.2.3")
    assert got.dataset == instance.dataset and got.dataset is not instance.dataset
    with pytest.raises(DuplicateInstance):
        result(backend.create(instance))
    assert result(backend.get("other", "1.2.3")) is None  # kinds are separate namespaces
    changed = Instance("widget", "1.2.840.1", "1.2.3", apply_modifications(got.dataset, _mods(PatientID="9")))
    result(backend.update(changed))
    assert result(backend.get("widget", "1.2.3")).dataset.PatientID == "9"
    with pytest.raises(NoSuchInstance):
        result(backend.update(Instance("widget", "1.2.840.1", "1.2.4", Dataset())))
    result(backend.create(Instance("widget", "1.2.840.1", "1.2.10", Dataset())))
    assert result(backend.uids("widget")) == ["1.2.10", "1.2.3"]
    assert result(backend.delete("widget", "1.2.3")) is True
    assert result(backend.delete("widget", "1.2.3")) is False
    assert result(backend.get("widget", "1.2.3")) is None


def _mods(**values: str) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def test_sqlite_keeps_dicom_json_in_wal_mode_and_survives_reopening(tmp_path):
    path = tmp_path / DATABASE_NAME
    first = SQLiteBackend(path, MemoryReactorClock(), runner=_sync)
    result(first.create(Instance("mpps", "1.2.840.10008.3.1.2.3.3", "1.2.3", sample())))
    result(first.close())
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        kind, uid, cls, text = db.execute(
            "SELECT kind, sop_instance_uid, sop_class_uid, dataset_json FROM nservice_instance"
        ).fetchone()
    assert (kind, uid, cls) == ("mpps", "1.2.3", "1.2.840.10008.3.1.2.3.3")
    assert Dataset.from_json(text) == sample()
    second = SQLiteBackend(path, MemoryReactorClock(), runner=_sync)
    assert result(second.get("mpps", "1.2.3")).dataset == sample()
    result(second.close())
    with pytest.raises(RuntimeError):
        result(second.get("mpps", "1.2.3"))


def test_sqlite_pool_starts_and_stops_with_the_reactor_events(tmp_path):
    reactor = MemoryReactorClock()
    b = SQLiteBackend(tmp_path / DATABASE_NAME, reactor)
    pool = b._pool
    assert pool is not None and not pool.started
    [(start, _, _)] = reactor.triggers["after"]["startup"]
    [(stop, _, _)] = reactor.triggers["during"]["shutdown"]
    start()
    assert pool.started
    start()  # a second startup (a reactor crashed and run again) is harmless
    stop()
    assert not pool.started and b._pool is None
    result(b.close())


# -- the registry ------------------------------------------------------------------------------------


def test_registry_modify_is_one_at_a_time_per_instance():
    registry = InstanceRegistry("widget", MemoryBackend())
    result(registry.create("1.2.840.1", "1.2.3", _mods(PatientID="0")))
    gate: defer.Deferred = defer.Deferred()
    seen: list[str] = []

    def slow(instance: Instance) -> defer.Deferred:
        seen.append(instance.dataset.PatientID)
        return gate.addCallback(lambda _: apply_modifications(instance.dataset, _mods(PatientID="1")))

    def fast(instance: Instance) -> Dataset:
        seen.append(instance.dataset.PatientID)
        return apply_modifications(instance.dataset, _mods(PatientID="2"))

    first = defer.Deferred.fromCoroutine(registry.modify("1.2.3", slow))
    second = defer.Deferred.fromCoroutine(registry.modify("1.2.3", fast))
    assert seen == ["0"] and not second.called
    gate.callback(None)
    before, after = result(first)
    assert (before.dataset.PatientID, after.dataset.PatientID) == ("0", "1")
    assert result(second)[1].dataset.PatientID == "2"
    assert seen == ["0", "1"]
    assert registry._locks == {}


def test_registry_modify_of_an_unknown_instance():
    registry = InstanceRegistry("widget", MemoryBackend())
    with pytest.raises(NoSuchInstance):
        result(defer.Deferred.fromCoroutine(registry.modify("9.9", lambda i: i.dataset)))
    with pytest.raises(NoSuchInstance):
        result(registry.delete("9.9"))
    assert registry._locks == {}


def test_registry_modify_that_fails_stores_nothing():
    registry = InstanceRegistry("widget", MemoryBackend())
    result(registry.create("1.2.840.1", "1.2.3", _mods(PatientID="0")))

    def refuse(instance: Instance) -> Dataset:
        instance.dataset.PatientID = "changed in place"
        raise ProcessingFailure("no")

    with pytest.raises(ProcessingFailure):
        result(defer.Deferred.fromCoroutine(registry.modify("1.2.3", refuse)))
    assert result(registry.get("1.2.3")).dataset.PatientID == "0"


# -- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "key"),
    [({"backend": "postgres"}, "plugins.widget.backend"), ({"database": ""}, "plugins.widget.database"),
     ({"database": 3}, "plugins.widget.database"), ({"colour": "red"}, "plugins.widget.colour")],
)
def test_backend_config_errors_name_the_key(section, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        check_backend_config(section, "widget")


def test_backend_from_config(tmp_path):
    def ae(section: dict) -> Any:
        config = from_mapping({"node": {"data_dir": str(tmp_path)}, "plugins": {"widget": section}})
        return SimpleNamespace(config=config, reactor=MemoryReactorClock())

    assert isinstance(backend_from_config(ae({"backend": "memory"}), "widget"), MemoryBackend)
    default = backend_from_config(ae({}), "widget")
    assert isinstance(default, SQLiteBackend) and default.path == tmp_path / DATABASE_NAME
    result(default.close())
    chosen = backend_from_config(ae({"database": str(tmp_path / "x.db")}), "widget")
    assert chosen.path == tmp_path / "x.db"
    result(chosen.close())


# -- a normalized service over an association ----------------------------------------------------

WIDGET = "1.2.826.0.1.3680043.8.498.7001"
WIDGET_VIEW = "1.2.826.0.1.3680043.8.498.7002"


class WidgetService(NormalizedService):
    """A made-up SOP class: every DIMSE-N operation, one action (Type ID 1: "polish")."""

    maintained = frozenset({PATIENT_NAME, PATIENT_ID, STUDY_ID, 0x00080016, 0x00080018})

    def __init__(self) -> None:
        super().__init__("widget", {WIDGET: ("N-CREATE", "N-SET", "N-GET", "N-DELETE", "N-ACTION"),
                                    WIDGET_VIEW: ("N-GET",)})
        self.actions[1] = self.polish
        self.log: list[tuple[str, str]] = []
        self.use_registry(InstanceRegistry("widget", MemoryBackend()))

    def create(self, request, uid, dataset):
        check_required(dataset, {"PatientID": "1"})
        return dataset

    def created(self, request, instance):
        self.log.append(("created", instance.sop_instance_uid))

    def modified(self, request, before, after):
        self.log.append(("modified", after.sop_instance_uid))

    def deleted(self, request, uid):
        self.log.append(("deleted", uid))

    async def polish(self, service, request):
        instance = await self.registry(request).require(request.sop_instance_uid)
        reply = Dataset()
        reply.PatientID = instance.dataset.PatientID
        return 0x0000, reply


class WidgetPlugin:
    def __init__(self, service: WidgetService) -> None:
        self.service = service

    @hookimpl
    def dimsekit_service_classes(self):
        return self.service.service_classes()


@pytest.fixture
def widget():
    service = WidgetService()
    pair = AssociationPair(make_plugin_manager(load_entrypoints=False, plugins=[WidgetPlugin(service)]))
    assoc = pair.associate(contexts=[WIDGET, WIDGET_VIEW])
    return SimpleNamespace(service=service, pair=pair, assoc=assoc, call=pair.result)


def _alive(w) -> None:
    """The association survived: another request on it is answered."""
    rsp = w.call(w.assoc.n_get(WIDGET, "9.9.9"))
    assert rsp.status == 0x0112
    assert not w.assoc.ended


def test_n_create_with_the_scus_uid_then_duplicate(widget):
    w = widget
    rsp = w.call(w.assoc.n_create(WIDGET, "1.2.3", _mods(PatientID="7")))
    assert rsp.status == 0x0000 and rsp.AffectedSOPInstanceUID == "1.2.3"
    assert rsp.dataset.PatientID == "7"  # the created Attribute List
    rsp = w.call(w.assoc.n_create(WIDGET, "1.2.3", _mods(PatientID="8")))
    assert rsp.status == 0x0111 and rsp.AffectedSOPInstanceUID == "1.2.3"
    assert w.service.log == [("created", "1.2.3")]
    _alive(w)


def test_n_create_without_a_uid_gets_one_assigned(widget):
    w = widget
    rsp = w.call(w.assoc.n_create(WIDGET, None, _mods(PatientID="7")))
    assert rsp.status == 0x0000
    uid = rsp.AffectedSOPInstanceUID
    assert is_valid_uid(uid)
    assert w.call(w.assoc.n_get(WIDGET, uid)).dataset.PatientID == "7"


def test_n_create_that_the_service_refuses(widget):
    w = widget
    rsp = w.call(w.assoc.n_create(WIDGET, "1.2.3", _mods(PatientName="x")))
    assert rsp.status == 0x0120 and rsp.AttributeIdentifierList == (PATIENT_ID,)
    assert w.call(w.assoc.n_get(WIDGET, "1.2.3")).status == 0x0112  # nothing stored
    _alive(w)


def test_n_set_and_n_get(widget):
    w = widget
    w.call(w.assoc.n_create(WIDGET, "1.2.3", _mods(PatientID="7", PatientName="A^B")))
    rsp = w.call(w.assoc.n_set(WIDGET, "1.2.3", _mods(PatientName="C^D", StudyID="S9")))
    assert rsp.status == 0x0000 and rsp.AffectedSOPInstanceUID == "1.2.3"
    rsp = w.call(w.assoc.n_get(WIDGET_VIEW, "1.2.3", [PATIENT_NAME, STUDY_ID]))
    assert rsp.status == 0x0000
    assert list(rsp.dataset.keys()) == [PATIENT_NAME, STUDY_ID]
    assert (str(rsp.dataset.PatientName), rsp.dataset.StudyID) == ("C^D", "S9")
    everything = w.call(w.assoc.n_get(WIDGET, "1.2.3")).dataset
    assert set(everything.keys()) == {PATIENT_NAME, PATIENT_ID, STUDY_ID}
    ids = w.call(w.assoc.n_get(WIDGET, "1.2.3", [0x00080016, 0x00080018])).dataset
    assert (ids.SOPClassUID, ids.SOPInstanceUID) == (WIDGET, "1.2.3")
    assert ("modified", "1.2.3") in w.service.log


def test_n_get_of_unmaintained_attributes_is_a_warning(widget):
    w = widget
    w.call(w.assoc.n_create(WIDGET, "1.2.3", _mods(PatientID="7")))
    rsp = w.call(w.assoc.n_get(WIDGET, "1.2.3", [PATIENT_ID, 0x00081030]))
    assert rsp.status == 0x0107 and rsp.AttributeIdentifierList == (0x00081030,)
    assert list(rsp.dataset.keys()) == [PATIENT_ID]


def test_n_set_of_an_unknown_instance_is_0112(widget):
    w = widget
    rsp = w.call(w.assoc.n_set(WIDGET, "1.2.3.4", _mods(PatientName="x")))
    assert rsp.status == 0x0112 and rsp.AffectedSOPInstanceUID == "1.2.3.4"
    _alive(w)


def test_n_delete(widget):
    w = widget
    assert w.call(w.assoc.n_delete(WIDGET, "1.2.3")).status == 0x0112
    _alive(w)
    w.call(w.assoc.n_create(WIDGET, "1.2.3", _mods(PatientID="7")))
    assert w.call(w.assoc.n_delete(WIDGET, "1.2.3")).status == 0x0000
    assert w.call(w.assoc.n_get(WIDGET, "1.2.3")).status == 0x0112
    assert w.call(w.assoc.n_delete(WIDGET, "1.2.3")).status == 0x0112
    assert ("deleted", "1.2.3") in w.service.log


def test_n_action(widget):
    w = widget
    w.call(w.assoc.n_create(WIDGET, "1.2.3", _mods(PatientID="7")))
    rsp = w.call(w.assoc.n_action(WIDGET, "1.2.3", 1))
    assert rsp.status == 0x0000 and rsp.ActionTypeID == 1 and rsp.dataset.PatientID == "7"
    rsp = w.call(w.assoc.n_action(WIDGET, "1.2.3", 99))
    assert rsp.status == 0x0123 and rsp.ActionTypeID == 99
    _alive(w)
    assert w.call(w.assoc.n_action(WIDGET, "5.5", 1)).status == 0x0112


def test_operations_a_sop_class_lacks_are_unrecognized(widget):
    w = widget
    rsp = w.call(w.assoc.n_set(WIDGET_VIEW, "1.2.3", _mods(PatientName="x")))
    assert rsp.status == 0x0211
    assert w.call(w.assoc.n_create(WIDGET_VIEW, "1.2.3", _mods(PatientID="x"))).status == 0x0211
    _alive(w)


def test_service_class_declarations():
    service = WidgetService()
    declared = {s.sop_classes[0]: s for s in service.service_classes()}
    assert set(declared) == {WIDGET, WIDGET_VIEW}
    assert {"N-CREATE", "N-SET", "N-GET", "N-ACTION", "N-DELETE"} <= set(declared[WIDGET].handlers)
    assert "N-EVENT-REPORT" not in declared[WIDGET].handlers and not declared[WIDGET].scu_role
    with pytest.raises(ValueError):
        NormalizedService("bad", {WIDGET: ("C-STORE",)})


def test_registries_are_per_ae(tmp_path):
    class Plain(NormalizedService):
        pass

    service = Plain("plain", {WIDGET: ("N-CREATE",)})
    config = from_mapping({"plugins": {"plain": {"backend": "memory"}}})

    class AE:
        def __init__(self) -> None:
            self.config = config
            self.reactor = MemoryReactorClock()

    a, b = AE(), AE()
    assert service.registry_for(a) is service.registry_for(a)
    assert service.registry_for(a) is not service.registry_for(b)
    assert isinstance(service.registry_for(a).backend, MemoryBackend)
    uid = str(generate_uid())
    result(service.registry_for(a).create(WIDGET, uid, Dataset()))
    assert result(service.registry_for(b).get(uid)) is None
