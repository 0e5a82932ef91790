"""Modality Performed Procedure Step SCP (PS3.4 Annex F) as a plugin.

Two SOP classes, one kind of instance (PS3.4 F.7: "The same SOP Instance
UID is shared by all three Modality Performed Procedure Step SOP Classes"):

* Modality Performed Procedure Step SOP Class (1.2.840.10008.3.1.2.3.3):
  N-CREATE and N-SET (F.7);
* Modality Performed Procedure Step Retrieve SOP Class
  (1.2.840.10008.3.1.2.3.4): N-GET (F.8).

Other DIMSE-N operations on them get 0x0211 Unrecognized Operation.

Rules (the statuses the standard names, or, where it names none, the PS3.7
Annex C status that says what went wrong):

N-CREATE (F.7.2.1)
    * Type 1 attributes of Table F.7.2-1's N-CREATE column missing: 0x0120
      Missing Attribute; present but empty: 0x0121 Missing Attribute Value
      (the Attribute Identifier List names them).  Type 2 ones missing:
      0x0120 too, unless ``[plugins.mpps] require_type2 = false``.
    * Performed Procedure Step Status other than ``IN PROGRESS``: 0x0106
      Invalid Attribute Value with an Attribute List (F.7.2.1.3).
    * An SOP Instance UID already used: 0x0111 Duplicate SOP Instance.  A
      request without one gets a UID from the SCP, returned as Affected SOP
      Instance UID (PS3.7 10.1.5).
N-SET (F.7.2.2)
    * Unknown instance: 0x0112 No Such SOP Instance.
    * The step is COMPLETED or DISCONTINUED already: 0x0110 Processing
      Failure, Error Comment "Performed Procedure Step Object may no longer
      be updated", Error ID (0000,0903) 0xA710 (F.7.2.2.3, Table F.7.2-2).
    * An attribute that Table F.7.2-1 marks "Not allowed" for N-SET with a
      value other than the stored one: 0x0106 Invalid Attribute Value, the
      offending values in the Modification List of the response (PS3.7 C:
      "Invalid Attribute Value ... Modification List ... the invalid
      values").  Re-sending the stored value is accepted (some modalities
      repeat what they sent at N-CREATE).
    * Performed Procedure Step Status other than IN PROGRESS, COMPLETED,
      DISCONTINUED, or emptied: 0x0106.
    * Going to COMPLETED without the Final State attributes: Performed
      Procedure Step End Date and End Time with values, and Performed Series
      Sequence with at least one item whose Series Instance UID has a value;
      going to DISCONTINUED without End Date and End Time: 0x0121 Missing
      Attribute Value with those tags in the Attribute Identifier List.
      (Table F.7.2-2 gives an Error ID only for "may no longer be updated";
      PS3.7 Annex C's 0x0121 is the one that names the missing attributes.)
N-GET (F.8.2)
    * Unknown instance: 0x0112.  The requested attributes (all when the
      list is empty); requested attributes that the step does not have and
      that are not among those MPPS keeps: 0x0001 "Requested optional
      Attributes are not supported" (a warning) with the data set.

When a step reaches COMPLETED or DISCONTINUED the hook
``dimsekit_on_mpps_completed(instance)`` is called (both final states; the
hook reads the status).

Steps are kept in ``<data_dir>/dimsekit.sqlite`` (table
``nservice_instance``, kind ``mpps``) and survive a restart.  Settings::

    [plugins.mpps]
    backend = "sqlite"       # or "memory" (lost at exit)
    database = "..."         # default <data_dir>/dimsekit.sqlite
    require_type2 = true     # N-CREATE without a Type 2 attribute: 0x0120
"""

from __future__ import annotations

from typing import Any

from pydicom.datadict import keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from twisted.logger import Logger

from dimsekit.config import Config, ConfigError
from dimsekit.datasets import UnwritableElement, json_dict
from dimsekit.dimse import status as dimse_status
from dimsekit.hookspecs import hookimpl
from dimsekit.nservice import (
    OPTIONAL_ATTRIBUTES_NOT_SUPPORTED,
    Instance,
    InvalidAttributeValue,
    MissingAttribute,
    MissingAttributeValue,
    NormalizedService,
    ProcessingFailure,
    apply_modifications,
    check_backend_config,
    check_required,
    is_empty,
)
from dimsekit.plugin import notify
from dimsekit.registry import ServiceClass
from dimsekit.uids import by_keyword

__all__ = [
    "MPPS",
    "MPPS_RETRIEVE",
    "IN_PROGRESS",
    "COMPLETED",
    "DISCONTINUED",
    "FINAL_STATES",
    "ERROR_ID_NO_LONGER_UPDATABLE",
    "CREATE_REQUIREMENTS",
    "NOT_ALLOWED_IN_SET",
    "MppsService",
    "service",
]

_log = Logger(namespace="dimsekit.mpps")

MPPS = by_keyword("ModalityPerformedProcedureStep")
MPPS_RETRIEVE = by_keyword("ModalityPerformedProcedureStepRetrieve")

IN_PROGRESS = "IN PROGRESS"
COMPLETED = "COMPLETED"
DISCONTINUED = "DISCONTINUED"
FINAL_STATES = frozenset({COMPLETED, DISCONTINUED})
#: PS3.4 Table F.7.2-2: Error ID (0000,0903) with status 0x0110.
ERROR_ID_NO_LONGER_UPDATABLE = 0xA710
NO_LONGER_UPDATABLE = "Performed Procedure Step Object may no longer be updated"

_SERVICE = "mpps"
for _code, _name in (
    (0x0001, "Requested optional Attributes are not supported"),
    (0x0110, "Processing failure"),
):
    dimse_status.register(_SERVICE, _code, _name)

#: PS3.4 Table F.7.2-1, "Req. Type N-CREATE (SCU/SCP)" column, Types 1 and 2.
CREATE_REQUIREMENTS: dict[str, Any] = {
    # Performed Procedure Step Relationship
    "ScheduledStepAttributesSequence": (
        "1",
        {
            "StudyInstanceUID": "1",
            "ReferencedStudySequence": "2",
            "AccessionNumber": "2",
            "RequestedProcedureID": "2",
            "RequestedProcedureDescription": "2",
            "ScheduledProcedureStepID": "2",
            "ScheduledProcedureStepDescription": "2",
            "ScheduledProtocolCodeSequence": "2",
        },
    ),
    "PatientName": "2",
    "PatientID": "2",
    "PatientBirthDate": "2",
    "PatientSex": "2",
    "ReferencedPatientSequence": "2",
    # Performed Procedure Step Information
    "PerformedProcedureStepID": "1",
    "PerformedStationAETitle": "1",
    "PerformedStationName": "2",
    "PerformedLocation": "2",
    "PerformedProcedureStepStartDate": "1",
    "PerformedProcedureStepStartTime": "1",
    "PerformedProcedureStepStatus": "1",
    "PerformedProcedureStepDescription": "2",
    "PerformedProcedureTypeDescription": "2",
    "ProcedureCodeSequence": "2",
    "PerformedProcedureStepEndDate": "2",
    "PerformedProcedureStepEndTime": "2",
    # Image Acquisition Results
    "Modality": "1",
    "StudyID": "2",
    "PerformedProtocolCodeSequence": "2",
    "PerformedSeriesSequence": "2",
}

#: PS3.4 Table F.7.2-1, attributes whose "Req. Type N-SET" is "Not allowed".
NOT_ALLOWED_IN_SET: frozenset[int] = frozenset(
    tag_for_keyword(k)  # type: ignore[misc]
    for k in (
        "ScheduledStepAttributesSequence",
        "PatientName",
        "PatientID",
        "IssuerOfPatientID",
        "IssuerOfPatientIDQualifiersSequence",
        "PatientBirthDate",
        "PatientSex",
        "ReferencedPatientSequence",
        "AdmissionID",
        "IssuerOfAdmissionIDSequence",
        "ServiceEpisodeID",
        "IssuerOfServiceEpisodeIDSequence",
        "ServiceEpisodeDescription",
        "PerformedProcedureStepID",
        "PerformedStationAETitle",
        "PerformedStationName",
        "PerformedLocation",
        "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime",
        "Modality",
        "StudyID",
    )
)

#: Top-level attributes of the MPPS IOD that this SCP keeps (Table F.7.2-1);
#: an N-GET of another one the step lacks gets the 0x0001 warning.
MAINTAINED: frozenset[int] = NOT_ALLOWED_IN_SET | frozenset(
    tag_for_keyword(k)  # type: ignore[misc]
    for k in (
        "SpecificCharacterSet",
        "SOPClassUID",
        "SOPInstanceUID",
        "PerformedProcedureStepStatus",
        "PerformedProcedureStepDescription",
        "PerformedProcedureTypeDescription",
        "ProcedureCodeSequence",
        "PerformedProcedureStepEndDate",
        "PerformedProcedureStepEndTime",
        "CommentsOnThePerformedProcedureStep",
        "PerformedProcedureStepDiscontinuationReasonCodeSequence",
        "PerformedProtocolCodeSequence",
        "PerformedSeriesSequence",
        # Radiation Dose and Billing and Material Management (Type 3)
        "AnatomicStructureSpaceOrRegionSequence",
        "TotalTimeOfFluoroscopy",
        "TotalNumberOfExposures",
        "DistanceSourceToDetector",
        "DistanceSourceToEntrance",
        "EntranceDose",
        "EntranceDoseInmGy",
        "ExposedArea",
        "ImageAndFluoroscopyAreaDoseProduct",
        "CommentsOnRadiationDose",
        "ExposureDoseSequence",
        "BillingProcedureStepSequence",
        "FilmConsumptionSequence",
        "BillingSuppliesAndDevicesSequence",
    )
)

_STATUS_TAG = 0x00400252
_COMPLETED_REQUIREMENTS = {
    "PerformedProcedureStepEndDate": "1",
    "PerformedProcedureStepEndTime": "1",
    "PerformedSeriesSequence": ("1", {"SeriesInstanceUID": "1"}),
}
_DISCONTINUED_REQUIREMENTS = {
    "PerformedProcedureStepEndDate": "1",
    "PerformedProcedureStepEndTime": "1",
}


def _status_of(dataset: Dataset) -> str:
    return str(dataset.get("PerformedProcedureStepStatus", "") or "").strip().upper()


def _same(a: Any, b: Any) -> bool:
    """Two data elements hold the same value (sequences compared item by item, as DICOM JSON:
    :func:`~dimsekit.datasets.json_dict`, which writes what pydicom's writer fails on)."""
    if a.VR == "SQ" or b.VR == "SQ":
        if a.VR != b.VR:
            return False
        try:
            return [json_dict(item) for item in a.value] == [json_dict(item) for item in b.value]
        except UnwritableElement:
            return False
    return is_empty(a) == is_empty(b) and (is_empty(a) or a.value == b.value)


class MppsService(NormalizedService):
    """The MPPS rules on top of :class:`~dimsekit.nservice.NormalizedService`."""

    maintained = MAINTAINED
    unsupported_status = OPTIONAL_ATTRIBUTES_NOT_SUPPORTED

    def __init__(self) -> None:
        super().__init__(_SERVICE, {MPPS: ("N-CREATE", "N-SET"), MPPS_RETRIEVE: ("N-GET",)})

    def _require_type2(self, request: Any) -> bool:
        return bool(request.association.ae.config.plugins.get(_SERVICE, {}).get("require_type2", True))

    def create(self, request: Any, uid: str, dataset: Dataset) -> Dataset:
        check_required(dataset, CREATE_REQUIREMENTS, types="12" if self._require_type2(request) else "1")
        status = _status_of(dataset)
        if status != IN_PROGRESS:
            offending = Dataset()
            offending.PerformedProcedureStepStatus = dataset.PerformedProcedureStepStatus
            raise InvalidAttributeValue(
                f"Performed Procedure Step Status must be IN PROGRESS, not {status[:20]!r}",
                attributes=(_STATUS_TAG,),
                dataset=offending,
            )
        dataset.PerformedProcedureStepStatus = IN_PROGRESS
        return dataset

    def create_response(self, request: Any, instance: Instance) -> Dataset | None:
        return None  # the Attribute List is the SCU's own; nothing was changed

    def modify(self, request: Any, instance: Instance, modifications: Dataset) -> Dataset:
        stored = instance.dataset
        if _status_of(stored) != IN_PROGRESS:
            raise ProcessingFailure(NO_LONGER_UPDATABLE, error_id=ERROR_ID_NO_LONGER_UPDATABLE)
        offending = Dataset()
        for element in modifications:
            if element.tag in NOT_ALLOWED_IN_SET:
                old = stored.get(element.tag)
                if old is None or not _same(old, element):
                    offending[element.tag] = element
        if len(offending):
            names = ", ".join(e.keyword or str(e.tag) for e in offending)
            raise InvalidAttributeValue(
                f"may not be set by N-SET: {names}", attributes=tuple(int(t) for t in offending.keys()), dataset=offending
            )
        if _STATUS_TAG in modifications:
            new_status = _status_of(modifications)
            if new_status not in (IN_PROGRESS, COMPLETED, DISCONTINUED):
                bad = Dataset()
                bad[_STATUS_TAG] = modifications[_STATUS_TAG]
                raise InvalidAttributeValue(
                    f"Performed Procedure Step Status {new_status[:16]!r} is not a state",
                    attributes=(_STATUS_TAG,),
                    dataset=bad,
                )
        result = apply_modifications(stored, modifications)
        status = _status_of(result)
        if status in (COMPLETED, DISCONTINUED):
            result.PerformedProcedureStepStatus = status
            requirements = _COMPLETED_REQUIREMENTS if status == COMPLETED else _DISCONTINUED_REQUIREMENTS
            try:
                check_required(result, requirements, types="1")
            except (MissingAttribute, MissingAttributeValue) as error:
                # absent or empty, a final-state attribute has no value: 0x0121 either way
                names = ", ".join(keyword_for_tag(t) for t in error.attributes)
                raise MissingAttributeValue(f"{status} needs values: {names}", attributes=error.attributes) from None
        return result

    def modified(self, request: Any, before: Instance, after: Instance) -> None:
        old, new = _status_of(before.dataset), _status_of(after.dataset)
        _log.info(
            "MPPS {uid} updated by {caller} ({old} -> {new})",
            uid=after.sop_instance_uid, caller=_caller(request), old=old, new=new,
        )
        if new in FINAL_STATES and old not in FINAL_STATES:
            pm = request.association.ae.pm
            notify(pm, pm.hook.dimsekit_on_mpps_completed, instance=after)  # each failure logged, none stops the rest

    def created(self, request: Any, instance: Instance) -> None:
        _log.info("MPPS {uid} created by {caller}", uid=instance.sop_instance_uid, caller=_caller(request))


def _caller(request: Any) -> str:
    return str(getattr(request.association, "remote_ae_title", "") or "?")


#: The plugin's service (one per process; its registries are per AE).
service = MppsService()


@hookimpl
def dimsekit_configure(config: Config) -> None:
    """Check ``[plugins.mpps]``."""
    section = config.plugins.get(_SERVICE, {})
    check_backend_config(section, _SERVICE, extra=("require_type2",))
    if "require_type2" in section and not isinstance(section["require_type2"], bool):
        raise ConfigError("plugins.mpps.require_type2: expected true or false")


@hookimpl
def dimsekit_service_classes() -> list[ServiceClass]:
    """Declare MPPS (N-CREATE, N-SET) and MPPS Retrieve (N-GET), SCP role."""
    return service.service_classes()
