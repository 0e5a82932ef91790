"""The Patient Root and Study Root Query/Retrieve information models (PS3.4 C.6.1, C.6.2).

What an identifier may say, level by level, and where the archive's index
holds each attribute: :data:`KEYS` maps a keyword to a :class:`KeySpec` (the
entity it describes, the SQL expression of its value over the index tables
``patient p``, ``study st``, ``series se``, ``instance i``).  Attributes the
index does not hold are still listed (``column=None``) where the standard
places them, so that a key below the Query/Retrieve Level is recognised as
such; keys nobody lists are taken as optional keys of the level queried.

:func:`parse_identifier` turns a request identifier into a :class:`Query`
(level, keys, SQL conditions) or raises :class:`IdentifierError` (status
A900H, with the reason as Error Comment).

Hierarchy rules (baseline, no relational queries):

* Query/Retrieve Level missing, empty, or not a level of the model: A900H.
* A key of a level below the one queried: A900H (the comment names it).
* An attribute that is no sequence sent as one (explicit VR lets a peer do
  that): A900H -- in a C-MOVE/C-GET only for the unique keys, the others
  being ignored there anyway.
* Unique keys of the levels above: matched when present (single value or a
  list of UIDs); when absent the query is wider, not refused (UIDs are
  globally unique, so nothing is mismatched).
* Required and optional keys of the levels above are matched and returned
  too (the index joins the levels anyway).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from dimsekit.datasets import is_several, values_of
from dimsekit_plugins.archive.index import ItemTable
from dimsekit_plugins.qr.matching import Condition, MatchingError, combined_condition, condition_for
from dimsekit_plugins.qr.sequences import ITEM_TABLE_BY_KEYWORD, OWNERS, SequencePlan, plan

__all__ = [
    "PATIENT",
    "STUDY",
    "SERIES",
    "IMAGE",
    "InformationModel",
    "PATIENT_ROOT",
    "STUDY_ROOT",
    "KeySpec",
    "KEYS",
    "UNIQUE_KEYS",
    "Key",
    "Query",
    "IdentifierError",
    "parse_identifier",
    "FROM_CLAUSES",
    "DATETIME_PAIRS",
]

PATIENT, STUDY, SERIES, IMAGE = "PATIENT", "STUDY", "SERIES", "IMAGE"

#: The unique key of each level (PS3.4 C.6.1.1, C.6.2.1).
UNIQUE_KEYS = {
    PATIENT: "PatientID",
    STUDY: "StudyInstanceUID",
    SERIES: "SeriesInstanceUID",
    IMAGE: "SOPInstanceUID",
}

#: The tables of each level, joined to the levels above.
FROM_CLAUSES = {
    PATIENT: "patient p",
    STUDY: "study st JOIN patient p ON p.pk = st.patient_pk",
    SERIES: (
        "series se JOIN study st ON st.study_instance_uid = se.study_instance_uid"
        " JOIN patient p ON p.pk = st.patient_pk"
    ),
    IMAGE: (
        "instance i JOIN series se ON se.series_instance_uid = i.series_instance_uid"
        " JOIN study st ON st.study_instance_uid = se.study_instance_uid"
        " JOIN patient p ON p.pk = st.patient_pk"
    ),
}


@dataclass(frozen=True, slots=True)
class InformationModel:
    """A Query/Retrieve information model: its levels, top first."""

    name: str
    levels: tuple[str, ...]

    def level_of(self, entity: str) -> str:
        """The level an entity's attributes are queried at (Study Root: patient's at STUDY)."""
        if entity == PATIENT and PATIENT not in self.levels:
            return STUDY
        return entity

    def depth(self, level: str) -> int:
        return self.levels.index(level)


PATIENT_ROOT = InformationModel("patient", (PATIENT, STUDY, SERIES, IMAGE))
STUDY_ROOT = InformationModel("study", (STUDY, SERIES, IMAGE))


@dataclass(frozen=True, slots=True)
class KeySpec:
    """Where one attribute lives.

    :param entity: the entity it describes (PATIENT, STUDY, SERIES, IMAGE).
    :param column: SQL expression of its value; None when the index does not keep it.
    :param match: SQL expression matched on, when not ``column`` (times
        normalised); or a special matcher name (``"modalities"``, ``"sop_classes"``).
    :param multi: the value may have several values (backslash-separated in the column).
    :param items: a sequence whose items the index keeps (sequence matching,
        :mod:`dimsekit_plugins.qr.sequences`); ``column`` is then ``"items"``,
        the SQL being made per query.
    """

    entity: str
    column: str | None = None
    match: str | None = None
    multi: bool = False
    items: ItemTable | None = None

    @property
    def supported(self) -> bool:
        return self.column is not None


def _count(sql: str) -> str:
    return f"(SELECT COUNT(*) {sql})"


_MODALITIES = (
    "(SELECT group_concat(m, '\\') FROM (SELECT DISTINCT x.modality AS m FROM series x"
    " WHERE x.study_instance_uid = st.study_instance_uid AND x.modality IS NOT NULL"
    " AND x.modality != '' ORDER BY 1))"
)
_SOP_CLASSES = (
    "(SELECT group_concat(c, '\\') FROM (SELECT DISTINCT x.sop_class_uid AS c FROM instance x"
    " JOIN series y ON y.series_instance_uid = x.series_instance_uid"
    " WHERE y.study_instance_uid = st.study_instance_uid ORDER BY 1))"
)

#: Every attribute we know the place of.  Supported ones have a column.
KEYS: dict[str, KeySpec] = {
    # -- patient (C.6.1.1.2; at STUDY level in the Study Root model, C.6.2.1.2)
    "PatientName": KeySpec(PATIENT, "p.patient_name"),
    "PatientID": KeySpec(PATIENT, "p.patient_id"),
    "IssuerOfPatientID": KeySpec(PATIENT, "p.issuer_of_patient_id"),
    "PatientBirthDate": KeySpec(PATIENT, "p.patient_birth_date"),
    "PatientSex": KeySpec(PATIENT, "p.patient_sex"),
    "NumberOfPatientRelatedStudies": KeySpec(
        PATIENT, _count("FROM study x WHERE x.patient_pk = p.pk")),
    "NumberOfPatientRelatedSeries": KeySpec(
        PATIENT, _count("FROM series x JOIN study y ON y.study_instance_uid = x.study_instance_uid"
                        " WHERE y.patient_pk = p.pk")),
    "NumberOfPatientRelatedInstances": KeySpec(
        PATIENT, _count("FROM instance x JOIN series y ON y.series_instance_uid = x.series_instance_uid"
                        " JOIN study z ON z.study_instance_uid = y.study_instance_uid"
                        " WHERE z.patient_pk = p.pk")),
    "PatientBirthTime": KeySpec(PATIENT),
    "OtherPatientIDsSequence": KeySpec(
        PATIENT, "items", items=ITEM_TABLE_BY_KEYWORD["OtherPatientIDsSequence"]),
    "OtherPatientNames": KeySpec(PATIENT),
    "EthnicGroup": KeySpec(PATIENT),
    "PatientComments": KeySpec(PATIENT),
    "ReferencedPatientSequence": KeySpec(PATIENT),
    "IssuerOfPatientIDQualifiersSequence": KeySpec(PATIENT),
    "PatientSpeciesDescription": KeySpec(PATIENT),
    "PatientBreedDescription": KeySpec(PATIENT),
    "ResponsiblePerson": KeySpec(PATIENT),
    # -- study (C.6.1.1.3, C.6.2.1.2)
    "StudyDate": KeySpec(STUDY, "st.study_date"),
    "StudyTime": KeySpec(STUDY, "st.study_time", match="dk_tm(st.study_time)"),
    "AccessionNumber": KeySpec(STUDY, "st.accession_number"),
    "StudyID": KeySpec(STUDY, "st.study_id"),
    "StudyInstanceUID": KeySpec(STUDY, "st.study_instance_uid"),
    "ReferringPhysicianName": KeySpec(STUDY, "st.referring_physician_name"),
    "StudyDescription": KeySpec(STUDY, "st.study_description"),
    "ModalitiesInStudy": KeySpec(STUDY, _MODALITIES, match="modalities", multi=True),
    "SOPClassesInStudy": KeySpec(STUDY, _SOP_CLASSES, match="sop_classes", multi=True),
    "NumberOfStudyRelatedSeries": KeySpec(
        STUDY, _count("FROM series x WHERE x.study_instance_uid = st.study_instance_uid")),
    "NumberOfStudyRelatedInstances": KeySpec(
        STUDY, _count("FROM instance x JOIN series y ON y.series_instance_uid = x.series_instance_uid"
                      " WHERE y.study_instance_uid = st.study_instance_uid")),
    "ProcedureCodeSequence": KeySpec(
        STUDY, "items", items=ITEM_TABLE_BY_KEYWORD["ProcedureCodeSequence"]),
    "NameOfPhysiciansReadingStudy": KeySpec(STUDY),
    "AdmittingDiagnosesDescription": KeySpec(STUDY),
    "ReferencedStudySequence": KeySpec(STUDY),
    "PatientAge": KeySpec(STUDY),
    "PatientSize": KeySpec(STUDY),
    "PatientWeight": KeySpec(STUDY),
    "Occupation": KeySpec(STUDY),
    "AdditionalPatientHistory": KeySpec(STUDY),
    "OtherStudyNumbers": KeySpec(STUDY),
    "IssuerOfAccessionNumberSequence": KeySpec(STUDY),
    "PhysiciansOfRecord": KeySpec(STUDY),
    "RequestingPhysician": KeySpec(STUDY),
    "StudyStatusID": KeySpec(STUDY),
    # -- series (C.6.1.1.4, C.6.2.1.3)
    "Modality": KeySpec(SERIES, "se.modality"),
    "SeriesNumber": KeySpec(SERIES, "se.series_number"),
    "SeriesInstanceUID": KeySpec(SERIES, "se.series_instance_uid"),
    "SeriesDescription": KeySpec(SERIES, "se.series_description"),
    "NumberOfSeriesRelatedInstances": KeySpec(
        SERIES, _count("FROM instance x WHERE x.series_instance_uid = se.series_instance_uid")),
    "SeriesDate": KeySpec(SERIES),
    "SeriesTime": KeySpec(SERIES),
    "BodyPartExamined": KeySpec(SERIES),
    "Laterality": KeySpec(SERIES),
    "ProtocolName": KeySpec(SERIES),
    "OperatorsName": KeySpec(SERIES),
    "PerformingPhysicianName": KeySpec(SERIES),
    "PerformedProcedureStepStartDate": KeySpec(SERIES),
    "PerformedProcedureStepStartTime": KeySpec(SERIES),
    "PerformedProcedureStepID": KeySpec(SERIES),
    "RequestAttributesSequence": KeySpec(
        SERIES, "items", items=ITEM_TABLE_BY_KEYWORD["RequestAttributesSequence"]),
    "Manufacturer": KeySpec(SERIES),
    "ManufacturerModelName": KeySpec(SERIES),
    "InstitutionName": KeySpec(SERIES),
    "InstitutionalDepartmentName": KeySpec(SERIES),
    "StationName": KeySpec(SERIES),
    "FrameOfReferenceUID": KeySpec(SERIES),
    # -- composite object instance (C.6.1.1.5, C.6.2.1.4)
    "InstanceNumber": KeySpec(IMAGE, "i.instance_number"),
    "SOPInstanceUID": KeySpec(IMAGE, "i.sop_instance_uid"),
    "SOPClassUID": KeySpec(IMAGE, "i.sop_class_uid"),
    "AvailableTransferSyntaxUID": KeySpec(IMAGE, "i.transfer_syntax_uid"),
    "ContentDate": KeySpec(IMAGE),
    "ContentTime": KeySpec(IMAGE),
    "AcquisitionDate": KeySpec(IMAGE),
    "AcquisitionTime": KeySpec(IMAGE),
    "AcquisitionNumber": KeySpec(IMAGE),
    "ImageType": KeySpec(IMAGE),
    "ImageComments": KeySpec(IMAGE),
    "Rows": KeySpec(IMAGE),
    "Columns": KeySpec(IMAGE),
    "BitsAllocated": KeySpec(IMAGE),
    "NumberOfFrames": KeySpec(IMAGE),
    "ContentLabel": KeySpec(IMAGE),
    "ContentDescription": KeySpec(IMAGE),
    "ConceptNameCodeSequence": KeySpec(IMAGE),
    "ContentTemplateSequence": KeySpec(IMAGE),
    "CompletionFlag": KeySpec(IMAGE),
    "VerificationFlag": KeySpec(IMAGE),
    "ReferencedSeriesSequence": KeySpec(IMAGE),
}

#: Attributes of the response that belong to no level (PS3.4 C.4.1.1.3.2, C.3.4).
_RESPONSE_ONLY = frozenset({
    "QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle", "InstanceAvailability",
    "StorageMediaFileSetID", "StorageMediaFileSetUID", "RetrieveURL", "RetrieveURI",
    "QueryRetrieveView", "TimezoneOffsetFromUTC",
})


class IdentifierError(Exception):
    """The identifier does not fit the information model (status A900H with this comment)."""

    status = 0xA900

    def __init__(self, comment: str, offending: Iterable[int] = ()) -> None:
        super().__init__(comment)
        self.offending = tuple(offending)


@dataclass(slots=True)
class Key:
    """One key of a request identifier."""

    tag: int
    keyword: str
    vr: str
    value: Any
    spec: KeySpec | None  #: None: an attribute we know nothing of (optional at the level queried)

    @property
    def supported(self) -> bool:
        return self.spec is not None and self.spec.supported

    @property
    def empty(self) -> bool:
        return _is_empty(self.value)


@dataclass(slots=True)
class Query:
    """A parsed identifier: what to match at which level, what to return."""

    model: InformationModel
    level: str
    keys: list[Key]
    conditions: list[Condition] = field(default_factory=list)
    #: a requested key we cannot return or match on (pending status FF01)
    unsupported: list[str] = field(default_factory=list)
    #: the request's Specific Character Set values ([] when absent)
    charset: list[str] = field(default_factory=list)
    #: sequence keys matched and returned item by item, by keyword
    sequences: dict[str, SequencePlan] = field(default_factory=dict)

    def key(self, keyword: str) -> Key | None:
        for key in self.keys:
            if key.keyword == keyword:
                return key
        return None


def _is_empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, Sequence):
        return all(len(item) == 0 or all(_is_empty(e.value) for e in item) for item in value)
    if is_several(value):
        return all(_is_empty(v) for v in value)
    return str(value).strip(" \x00") == ""


def _plain(value: Any, vr: str) -> Any:
    """A pydicom value as str / list of str (PersonName decoded), sequences as they are."""
    if value is None or isinstance(value, Sequence):
        return value
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    if is_several(value):
        return [str(v) for v in value]
    return str(value)


def _level(identifier: Dataset, model: InformationModel) -> str:
    element = identifier.get((0x0008, 0x0052))
    raw = element.value if element is not None else None
    level = str(raw or "").strip().upper()
    if not level:
        raise IdentifierError("no Query/Retrieve Level (0008,0052) in the identifier", (0x00080052,))
    if level not in model.levels:
        allowed = ", ".join(model.levels)
        raise IdentifierError(
            f"Query/Retrieve Level {level} is not one of {allowed} ({model.name} root)", (0x00080052,)
        )
    return level


def _elements(identifier: Dataset) -> Iterable[DataElement]:
    """The identifier's top-level elements; one pydicom cannot convert (an ambiguous VR it
    cannot resolve, ...) comes as an element of its first possible VR, valued with its raw bytes."""
    for tag in sorted(identifier.keys()):
        try:
            yield identifier[tag]
        except Exception:
            raw = identifier.get_item(tag)
            vr = str(getattr(raw, "VR", None) or "UN")
            if vr == "UN" or " or " in vr:
                try:
                    vr = dictionary_VR(tag)
                except KeyError:
                    vr = "UN"
            element = DataElement(tag, vr.split(" or ")[0], None)
            raw_value = getattr(raw, "value", None)
            if raw_value:
                element._value = raw_value.decode("latin-1") if isinstance(raw_value, bytes) else raw_value
            yield element


def _dictionary_vr(tag: int) -> str | None:
    """The VR the data dictionary gives ``tag`` (None for a tag it does not know)."""
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return None


#: (DA key, TM key) pairs matched as one date-time range under combined date-time matching
DATETIME_PAIRS = (("StudyDate", "StudyTime"),)


def parse_identifier(identifier: Dataset | None, model: InformationModel, *, match: bool = True,
                     combined_datetime: bool = False) -> Query:
    """Check an identifier against ``model`` and make the :class:`Query`.

    :param match: make the SQL conditions of the keys (False: only check the
        level and the hierarchy, as a retrieve does, whose other keys are ignored).
    :param combined_datetime: the requestor negotiated combined date-time
        matching (PS3.4 C.5.1.1): each pair of :data:`DATETIME_PAIRS` whose two
        keys are both not universal is matched as one date-time range
        (:func:`~dimsekit_plugins.qr.matching.combined_condition`).
    :raises IdentifierError: see the module docstring.
    """
    if identifier is None:
        raise IdentifierError("the request has no identifier")
    level = _level(identifier, model)
    depth = model.depth(level)
    unique = {UNIQUE_KEYS[upper] for upper in model.levels[: depth + 1]}
    keys: list[Key] = []
    below: list[str] = []
    below_tags: list[int] = []
    charset: list[str] = []
    for element in _elements(identifier):
        tag = int(element.tag)
        keyword = element.keyword or keyword_for_tag(tag) or ""
        if Tag(tag).element == 0 or tag == 0x00080052:
            continue
        if keyword == "SpecificCharacterSet":
            value = element.value
            charset = [str(v).strip() for v in values_of(value)]
            continue
        spec = KEYS.get(keyword)
        if spec is not None and model.depth(model.level_of(spec.entity)) > depth:
            below.append(keyword)
            below_tags.append(tag)
            continue
        vr = element.VR
        if vr in ("UN", None) and keyword:
            try:
                vr = dictionary_VR(tag)
            except KeyError:
                vr = "UN"
        vr = str(vr)
        if " or " in vr:  # an ambiguous dictionary VR ("US or SS"): any one encodes an empty value
            vr = vr.split(" or ")[0]
        if vr == "SQ" and (match or keyword in unique):
            standard = _dictionary_vr(tag)
            if standard not in (None, "SQ"):  # Patient ID sent as a sequence: nothing to match or return
                raise IdentifierError(f"{keyword}: a sequence, but its VR is {standard}", (tag,))
        try:
            value = _plain(element.value, vr)
        except Exception as exc:  # a value pydicom cannot convert (IS "two", ...)
            raise IdentifierError(f"{keyword or Tag(tag)}: unreadable value ({exc})", (tag,)) from None
        keys.append(Key(tag, keyword, vr, value, spec))
    if below:
        raise IdentifierError(
            f"key(s) below the {level} level: {', '.join(below)} (no relational queries)", below_tags
        )
    query = Query(model=model, level=level, keys=keys, charset=charset)
    if not match:
        return query
    combined = _combined_conditions(query) if combined_datetime else set()
    for key in keys:
        if key.keyword in _RESPONSE_ONLY or key.keyword in combined:
            continue
        if not key.supported:
            query.unsupported.append(key.keyword or f"({key.tag >> 16:04X},{key.tag & 0xFFFF:04X})")
            continue
        try:
            if key.spec is not None and key.spec.items is not None:
                sequence = plan(key.keyword, key.value, key.spec.items, OWNERS[key.spec.items.level])
                query.sequences[key.keyword] = sequence
                query.unsupported.extend(sequence.unsupported)
                condition = sequence.condition
            else:
                condition = _condition(key)
        except MatchingError as exc:
            raise IdentifierError(f"{key.keyword}: {exc}", (key.tag,)) from None
        if condition.sql:
            query.conditions.append(condition)
    return query


def _joined(value: Any) -> str:
    return "\\".join(str(v) for v in value) if is_several(value) else str(value)


def _combined_conditions(query: Query) -> set[str]:
    """Add the combined date-time conditions of ``query``; the keywords they cover."""
    covered: set[str] = set()
    for date_keyword, time_keyword in DATETIME_PAIRS:
        date, time = query.key(date_keyword), query.key(time_keyword)
        if date is None or time is None or not (date.supported and time.supported):
            continue
        assert date.spec is not None and time.spec is not None
        assert date.spec.column is not None and time.spec.column is not None
        if _universal(date) or _universal(time):
            continue  # one of them universal: each is matched on its own
        try:
            condition = combined_condition(date.spec.column, time.spec.column, _joined(date.value), _joined(time.value))
        except MatchingError as exc:
            raise IdentifierError(f"{date_keyword}/{time_keyword}: {exc}", (date.tag, time.tag)) from None
        query.conditions.append(condition)
        covered.update((date_keyword, time_keyword))
    return covered


def _universal(key: Key) -> bool:
    """Whether a key matches everything.  A value that is no range on its own (a time range
    crossing midnight) may still be one half of a combined date-time range: not universal."""
    try:
        return not _condition(key).sql
    except MatchingError:
        return False


def _condition(key: Key) -> Condition:
    spec = key.spec
    assert spec is not None and spec.column is not None
    value = key.value
    if isinstance(value, Sequence):
        return Condition("")
    if spec.match == "modalities":
        return _exists_condition(
            "SELECT 1 FROM series x WHERE x.study_instance_uid = st.study_instance_uid AND ",
            "x.modality", "CS", value,
        )
    if spec.match == "sop_classes":
        return _exists_condition(
            "SELECT 1 FROM instance x JOIN series y ON y.series_instance_uid = x.series_instance_uid"
            " WHERE y.study_instance_uid = st.study_instance_uid AND ",
            "x.sop_class_uid", "UI", value,
        )
    return condition_for(spec.match or spec.column, key.vr, value)


def _exists_condition(prefix: str, column: str, vr: str, value: Any) -> Condition:
    """A multi-valued derived attribute (Modalities in Study): any of the listed values matches."""
    values = value if is_several(value) else str(value or "").split("\\")
    values = [v.strip() for v in values if v.strip()]
    parts, params = [], []
    for one in values:
        condition = condition_for(column, vr, one)
        if not condition.sql:
            return Condition("")  # one "*" among them: anything matches
        parts.append(condition.sql)
        params.extend(condition.params)
    if not parts:
        return Condition("")
    return Condition(f"EXISTS ({prefix}({' OR '.join(parts)}))", tuple(params))


def empty_element(key: Key) -> DataElement:
    """The zero-length element returned for a key whose value is unknown."""
    if key.vr == "SQ":
        return DataElement(key.tag, "SQ", Sequence())
    return DataElement(key.tag, key.vr, None)


__all__ += ["empty_element"]
