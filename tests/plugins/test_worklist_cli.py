"""``dimsekit worklist add|list|remove`` in process (the reactor's thread pool
runs its SQL): refusals naming the attribute, JSON and DICOM input, one ID per
step, the listing, removal, and finding the database like the node does."""

from __future__ import annotations

import io
import json
import shutil
import tempfile
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from twisted.internet import reactor
from twisted.trial import unittest

from dimsekit.cli import _parser
from dimsekit.cli import worklist as cli_worklist
from dimsekit_plugins.worklist import WorklistStore
from tests.plugins.test_worklist import item, step


class WorklistCliTest(unittest.TestCase):
    timeout = 15

    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="dimsekit-wlcli-"))
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.data = self.tmp / "data"

    async def cli(self, *argv: str) -> tuple[int, str, str]:
        args = _parser().parse_args(["worklist", *argv])
        if "--config" not in argv and "-c" not in argv and "-d" not in argv:
            args.data_dir = str(self.data)
        out, err = io.StringIO(), io.StringIO()
        code = await cli_worklist._run(reactor, args, out, err)
        return code, out.getvalue(), err.getvalue()

    def json_file(self, name: str, ds: Dataset) -> str:
        path = self.tmp / name
        path.write_text(ds.to_json())
        return str(path)

    def dicom_file(self, name: str, ds: Dataset) -> str:
        ds = Dataset(ds)
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.31"
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        path = self.tmp / name
        ds.save_as(path, enforce_file_format=True)
        return str(path)

    async def test_add_list_remove(self):
        good = self.json_file("good.json", item("Müller^Hans", "P1", "A1"))
        two = self.dicom_file("two.dcm", item("DOE^JANE", "P2", "A2", step("CT", step_id="S1"), step("MR", step_id="S2")))
        bad = item("X^Y", "P3", "A3")
        del bad.ScheduledProcedureStepSequence[0].ScheduledStationAETitle
        refused = self.json_file("bad.json", bad)

        code, out, err = await self.cli("add", good, refused)
        self.assertEqual(code, 1)
        self.assertIn("bad.json: refused: missing ScheduledStationAETitle (0040,0001)", err)
        self.assertIn("nothing added", err)
        code, out, _ = await self.cli("list")
        self.assertEqual((code, out.strip()), (0, "no worklist items"))

        code, out, err = await self.cli("add", good, two)
        self.assertEqual(code, 0, err)
        self.assertIn("added 1: ", out)
        self.assertIn("added 2, 3: ", out)  # one ID per Scheduled Procedure Step
        self.assertTrue((self.data / "index.sqlite").exists())  # the archive's index file

        code, out, _ = await self.cli("list")
        lines = out.splitlines()
        self.assertEqual(lines[0].split()[:3], ["ID", "PatientName", "PatientID"])
        self.assertEqual(len(lines), 5)
        self.assertIn("Müller^Hans", out)
        code, out, _ = await self.cli("list", "--json")
        records = json.loads(out)
        self.assertEqual([r["id"] for r in records], [1, 2, 3])
        steps = [Dataset.from_json(r["item"]).ScheduledProcedureStepSequence for r in records]
        self.assertEqual([len(s) for s in steps], [1, 1, 1])
        self.assertEqual(steps[2][0].Modality, "MR")

        code, out, err = await self.cli("remove", "2", "7")
        self.assertEqual(code, 1)
        self.assertIn("removed 2", out)
        self.assertIn("no item with ID 7", err)
        code, out, _ = await self.cli("list", "--json")
        self.assertEqual([r["id"] for r in json.loads(out)], [1, 3])

    async def test_the_database_is_found_like_the_node_finds_it(self):
        db = self.tmp / "elsewhere" / "wl.sqlite"
        config = self.tmp / "node.toml"
        config.write_text(f'[plugins.worklist]\ndatabase = "{db}"\n')
        good = self.json_file("good.json", item())
        code, _, err = await self.cli("add", good, "--config", str(config))
        self.assertEqual(code, 0, err)
        ids = await WorklistStore(db, None, reactor).items()
        self.assertEqual(len(ids), 1)
        self.assertFalse((self.data / "index.sqlite").exists())

        config.write_text('[node]\ndata_dir = "from-config"\n')
        code, _, err = await self.cli("add", good, "--config", str(config), "-d", str(self.tmp / "override"))
        self.assertEqual(code, 0, err)
        self.assertTrue((self.tmp / "override" / "index.sqlite").exists())

        config.write_text("[plugins.worklist]\nfolders = 1\n")
        code, _, err = await self.cli("list", "--config", str(config))
        self.assertEqual(code, 2)
        self.assertIn("plugins.worklist.folders: unknown key", err)

    async def test_unreadable_input(self):
        junk = self.tmp / "junk.json"
        junk.write_text("{not json")
        code, _, err = await self.cli("add", str(junk), str(self.tmp / "missing.dcm"))
        self.assertEqual(code, 1)
        self.assertIn("junk.json: not valid JSON", err)
        self.assertIn("missing.dcm", err)
