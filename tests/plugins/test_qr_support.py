"""Test kit of the Q/R tests (no tests of its own): a small synthetic archive.

:data:`CORPUS` describes patients, studies, series and instances with the
values the matching tests look for (ASCII, Latin-1 and UTF-8 person names,
dates across years, several modalities); :func:`corpus_datasets` makes them
pydicom data sets (no pixel data needed); :class:`QrTestCase` runs a node
(storage + archive + queryretrieve plugins) on 127.0.0.1 in the test's
reactor, fills its archive over C-STORE, and cleans everything up.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from twisted.internet import defer

import dimsekit_plugins.archive as archive_plugin
import dimsekit_plugins.storage as storage_plugin
import dimsekit_plugins.verification as verification_plugin
from dimsekit.config import Config, Limits, NodeConfig, RemoteAE
from dimsekit.scu import (
    PATIENT_ROOT_FIND,
    PATIENT_ROOT_GET,
    PATIENT_ROOT_MOVE,
    STUDY_ROOT_FIND,
    STUDY_ROOT_GET,
    STUDY_ROOT_MOVE,
)
from dimsekit.uids import VERIFICATION, by_keyword
from dimsekit_plugins.qr import common
from dimsekit_plugins.qr import plugin as qr_plugin
from tests.dimse_e2e.support import LoopbackTestCase, within

CT = str(by_keyword("CTImageStorage"))
MR = str(by_keyword("MRImageStorage"))
SC = str(by_keyword("SecondaryCaptureImageStorage"))
EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"

ROOT = "1.2.826.0.1.3680043.9.7433.9"
QR_MODELS = [PATIENT_ROOT_FIND, PATIENT_ROOT_GET, PATIENT_ROOT_MOVE, STUDY_ROOT_FIND, STUDY_ROOT_GET, STUDY_ROOT_MOVE]

#: (patient name, id, birth date, sex, charset) -> studies (uid suffix, date, time, accession, description,
#: series (uid suffix, modality, number, SOP class, instances))
CORPUS: list[dict[str, Any]] = [
    {
        "PatientName": "DOE^JOHN", "PatientID": "PID1", "PatientBirthDate": "19700101", "PatientSex": "M",
        "charset": None,
        "studies": [
            {"uid": "1", "StudyDate": "20240105", "StudyTime": "101530", "AccessionNumber": "ACC1",
             "StudyID": "S1", "StudyDescription": "CHEST CT", "ReferringPhysicianName": "WHO^DOCTOR",
             "series": [("1.1", "CT", 1, CT, 3), ("1.2", "MR", 2, MR, 1)]},
        ],
    },
    {
        "PatientName": "Müller^Jürgen", "PatientID": "PID2", "PatientBirthDate": "19811224", "PatientSex": "M",
        "charset": "ISO_IR 100",
        "studies": [
            {"uid": "2", "StudyDate": "20240210", "StudyTime": "0830", "AccessionNumber": "ACC2",
             "StudyID": "S2", "StudyDescription": "Knöchel", "ReferringPhysicianName": "",
             "series": [("2.1", "CR", 1, SC, 1)]},
        ],
    },
    {
        "PatientName": "Yamada^Tarou=山田^太郎=やまだ^たろう", "PatientID": "PID3", "PatientBirthDate": "19650505",
        "PatientSex": "M", "charset": "ISO_IR 192",
        "studies": [
            {"uid": "3", "StudyDate": "20231231", "StudyTime": "235959.5", "AccessionNumber": "ACC3",
             "StudyID": "S3", "StudyDescription": "頭部 MRI", "ReferringPhysicianName": "",
             "series": [("3.1", "MR", 1, MR, 2)]},
        ],
    },
    {
        "PatientName": "SMITH^JANE", "PatientID": "PID4", "PatientBirthDate": "19900315", "PatientSex": "F",
        "charset": None,
        "studies": [
            {"uid": "4", "StudyDate": "20240301", "StudyTime": "120000", "AccessionNumber": "ACC4",
             "StudyID": "S4", "StudyDescription": "ABDOMEN", "ReferringPhysicianName": "",
             "series": [("4.1", "CT", 1, CT, 2), ("4.2", "US", 2, SC, 1)]},
            {"uid": "5", "StudyDate": "20220615", "StudyTime": "0915", "AccessionNumber": "ACC5",
             "StudyID": "S5", "StudyDescription": "HEAD", "ReferringPhysicianName": "",
             "series": [("5.1", "MR", 1, MR, 1)]},
        ],
    },
]


def study_uid(suffix: str) -> str:
    return f"{ROOT}.1.{suffix}"


def series_uid(suffix: str) -> str:
    return f"{ROOT}.2.{suffix}"


def instance_uid(series_suffix: str, number: int) -> str:
    return f"{ROOT}.3.{series_suffix}.{number}"


def corpus_datasets() -> list[Dataset]:
    """One data set per instance of :data:`CORPUS` (Explicit VR Little Endian, file meta set)."""
    out = []
    for patient in CORPUS:
        for study in patient["studies"]:
            for suffix, modality, number, sop_class, count in study["series"]:
                for n in range(1, count + 1):
                    ds = Dataset()
                    if patient["charset"]:
                        ds.SpecificCharacterSet = patient["charset"]
                    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex"):
                        setattr(ds, keyword, patient[keyword])
                    for keyword in ("StudyDate", "StudyTime", "AccessionNumber", "StudyID",
                                    "StudyDescription", "ReferringPhysicianName"):
                        setattr(ds, keyword, study[keyword])
                    ds.StudyInstanceUID = study_uid(study["uid"])
                    ds.SeriesInstanceUID = series_uid(suffix)
                    ds.Modality = modality
                    ds.SeriesNumber = number
                    ds.SOPClassUID = sop_class
                    ds.SOPInstanceUID = instance_uid(suffix, n)
                    ds.InstanceNumber = n
                    ds.file_meta = FileMetaDataset()
                    ds.file_meta.TransferSyntaxUID = EXPLICIT
                    ds.file_meta.MediaStorageSOPClassUID = sop_class
                    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
                    out.append(ds)
    return out


def query(level: str, **keys: Any) -> Dataset:
    """An identifier: QueryRetrieveLevel plus ``keys`` (None = zero-length return key)."""
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    charset = keys.pop("SpecificCharacterSet", None)
    if charset:
        ds.SpecificCharacterSet = charset
    for keyword, value in keys.items():
        setattr(ds, keyword, "" if value is None else value)
    return ds


def node_config(data_dir: Path, ae_title: str = "QRSCP", remotes: dict[str, tuple[str, int]] | None = None) -> Config:
    return Config(
        node=NodeConfig(ae_title=ae_title, data_dir=str(data_dir)),
        limits=Limits(dimse_timeout=5.0, acse_timeout=5.0),
        remotes=tuple(RemoteAE(ae_title=t, host=h, port=p) for t, (h, p) in (remotes or {}).items()),
        plugins={"archive": {"fsync": False}},
    )


class QrTestCase(LoopbackTestCase):
    """A Q/R node with :data:`CORPUS` stored, and an SCU association to it."""

    timeout = 30

    async def start_node(self, remotes: dict[str, tuple[str, int]] | None = None, *,
                         store: bool = True, data_dir: Path | None = None) -> tuple[Any, int]:
        if data_dir is None:
            data_dir = Path(tempfile.mkdtemp(prefix="dimsekit-qr-"))
            self.addCleanup(shutil.rmtree, data_dir, True)
        config = node_config(data_dir, remotes=remotes)
        ae, port = await self.serve(verification_plugin, storage_plugin, archive_plugin, qr_plugin, ae_title="QRSCP", config=config)
        self.addCleanup(self._close_archive, ae)
        self.node_ae, self.node_port, self.data_dir = ae, port, data_dir
        if store:
            assoc = await self.connect(port, [CT, MR, SC], called="QRSCP")
            for ds in corpus_datasets():
                response = await within(assoc.store(ds))
                assert response.status == 0x0000, response.status_text
            await within(assoc.release())
        return ae, port

    async def qr_association(self, *, roles: bool = False) -> Any:
        kwargs: dict[str, Any] = {}
        contexts: list[Any] = [*QR_MODELS, VERIFICATION]
        if roles:
            contexts += [CT, MR, SC]
            kwargs["roles"] = {c: (False, True) for c in (CT, MR, SC)}
        return await self.connect(self.node_port, contexts, called="QRSCP", **kwargs)

    def _close_archive(self, ae: Any) -> defer.Deferred:
        index = common._indexes.get(ae)
        if index is not None:
            index.close()
            common._by_path.pop(index.path, None)
        archive = ae.pm.hook.dimsekit_archive(config=ae.config)
        return archive.close()
