"""The Q/R plugin in a node on 127.0.0.1, driven by dimsekit's SCU (association.find/get/move).

The node runs the storage, archive and queryretrieve plugins; its archive is
filled over C-STORE with the synthetic corpus of :mod:`tests.plugins.test_qr_support`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from twisted.internet import defer, reactor, task

from dimsekit.hookspecs import hookimpl
from dimsekit.registry import ServiceClass
from dimsekit.scu import (
    PATIENT_ROOT_FIND,
    PATIENT_ROOT_GET,
    STUDY_ROOT_FIND,
    STUDY_ROOT_GET,
    STUDY_ROOT_MOVE,
)
from dimsekit_plugins.qr import common, find, retrieve
from dimsekit_plugins.qr.index import Cursor
from tests.dimse_e2e.support import wait_until, within
from tests.plugins.test_qr_support import (
    CT,
    MR,
    SC,
    QrTestCase,
    corpus_datasets,
    instance_uid,
    query,
    series_uid,
    study_uid,
)

PENDING = 0xFF00


def uid_list(value: Any) -> list[str]:
    """A UI value as a list (pydicom gives a str for one value)."""
    return [value] if isinstance(value, str) else list(value)


async def collect(operation: Any) -> tuple[list[Any], Any]:
    pending = [response async for response in operation]
    return pending, await within(operation.result)


def sequence_for(level: str, tag: int) -> Dataset:
    """An identifier with the (non-sequence) attribute ``tag`` encoded as a sequence of one item."""
    from pydicom.dataelem import DataElement
    from pydicom.sequence import Sequence

    item = Dataset()
    item.CodeValue = "X"
    ds = query(level, StudyInstanceUID=None)
    ds.add(DataElement(tag, "SQ", Sequence([item])))
    return ds


class Destination:
    """A C-STORE SCP recording every sub-operation (command and data set); statuses scripted."""

    def __init__(self) -> None:
        self.commands: list[dict[str, Any]] = []
        self.datasets: list[Dataset] = []
        self.statuses: dict[str, int] = {}
        self.hold: list[defer.Deferred] | None = None

    def store(self, request: Any) -> Any:
        self.commands.append(dict(request.command))
        self.datasets.append(request.dataset())
        status = self.statuses.get(request.sop_instance_uid, 0x0000)
        if self.hold is not None:
            d: defer.Deferred = defer.Deferred()
            self.hold.append(d)
            return d.addCallback(lambda _: status)
        return status

    @hookimpl
    def dimsekit_service_classes(self) -> list[ServiceClass]:
        return [ServiceClass(name="destination", sop_classes=(CT, MR, SC), handlers={"C-STORE": self.store})]


class FindTests(QrTestCase):
    async def test_study_level_wildcard_returns_every_study_with_the_requested_keys_only(self):
        await self.start_node()
        assoc = await self.qr_association()
        identifier = query("STUDY", PatientName="*", StudyDate=None, StudyInstanceUID=None,
                           ModalitiesInStudy=None, NumberOfStudyRelatedSeries=None,
                           NumberOfStudyRelatedInstances=None)
        pending, final = await collect(assoc.find(identifier, STUDY_ROOT_FIND))
        self.assertEqual(final.status, 0x0000)
        self.assertEqual({r.status for r in pending}, {PENDING})
        self.assertEqual(len(pending), 5)
        asked = {"PatientName", "StudyDate", "StudyInstanceUID", "ModalitiesInStudy",
                 "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"}
        for response in pending:
            keywords = {e.keyword for e in response.dataset}
            self.assertEqual(keywords - {"SpecificCharacterSet"}, asked | {"QueryRetrieveLevel", "RetrieveAETitle"})
            self.assertEqual(response.dataset.RetrieveAETitle, "QRSCP")
        by_uid = {r.dataset.StudyInstanceUID: r.dataset for r in pending}
        first = by_uid[study_uid("1")]
        self.assertEqual(list(first.ModalitiesInStudy), ["CT", "MR"])
        self.assertEqual((first.NumberOfStudyRelatedSeries, first.NumberOfStudyRelatedInstances), (2, 4))
        self.assertNotIn("SpecificCharacterSet", first)  # plain ASCII, none asked for
        self.assertEqual(by_uid[study_uid("3")].SpecificCharacterSet, "ISO_IR 192")
        self.assertEqual(str(by_uid[study_uid("3")].PatientName), "Yamada^Tarou=山田^太郎=やまだ^たろう")
        self.assertEqual(str(by_uid[study_uid("2")].PatientName), "Müller^Jürgen")
        await within(assoc.release())

    async def test_each_level_of_both_models(self):
        await self.start_node()
        assoc = await self.qr_association()
        cases = [
            (PATIENT_ROOT_FIND, query("PATIENT", PatientID=None, PatientName=None,
                                      NumberOfPatientRelatedStudies=None), "PatientID",
             {"PID1": 1, "PID2": 1, "PID3": 1, "PID4": 2}, "NumberOfPatientRelatedStudies"),
            (PATIENT_ROOT_FIND, query("STUDY", PatientID="PID4", StudyID=None, StudyDate=None), "StudyID",
             {"S4": "20240301", "S5": "20220615"}, "StudyDate"),
            (PATIENT_ROOT_FIND, query("SERIES", PatientID="PID1", StudyInstanceUID=study_uid("1"),
                                      SeriesInstanceUID=None, Modality=None, NumberOfSeriesRelatedInstances=None),
             "Modality", {"CT": 3, "MR": 1}, "NumberOfSeriesRelatedInstances"),
            (PATIENT_ROOT_FIND, query("IMAGE", PatientID="PID1", StudyInstanceUID=study_uid("1"),
                                      SeriesInstanceUID=series_uid("1.1"), SOPInstanceUID=None, InstanceNumber=None),
             "SOPInstanceUID", {instance_uid("1.1", n): n for n in (1, 2, 3)}, "InstanceNumber"),
            (STUDY_ROOT_FIND, query("STUDY", PatientID=None, StudyID=None, StudyDate="20240101-"), "StudyID",
             {"S1": "PID1", "S2": "PID2", "S4": "PID4"}, "PatientID"),
            (STUDY_ROOT_FIND, query("SERIES", StudyInstanceUID=study_uid("4"), Modality=None, SeriesNumber=None),
             "Modality", {"CT": 1, "US": 2}, "SeriesNumber"),
            (STUDY_ROOT_FIND, query("IMAGE", StudyInstanceUID=study_uid("3"), SeriesInstanceUID=series_uid("3.1"),
                                    SOPInstanceUID=None, SOPClassUID=None), "SOPInstanceUID",
             {instance_uid("3.1", 1): MR, instance_uid("3.1", 2): MR}, "SOPClassUID"),
        ]
        for model, identifier, key, expected, other in cases:
            pending, final = await collect(assoc.find(identifier, model))
            self.assertEqual(final.status, 0x0000, identifier)
            got = {str(r.dataset[key].value): r.dataset[other].value for r in pending}
            self.assertEqual(got, {k: v for k, v in expected.items()}, identifier)
            for response in pending:
                self.assertEqual(response.dataset.QueryRetrieveLevel, identifier.QueryRetrieveLevel)
        await within(assoc.release())

    async def test_matching_rules_over_the_network(self):
        await self.start_node()
        assoc = await self.qr_association()
        cases = [
            (dict(PatientName="doe*"), {"S1"}),
            (dict(PatientName="SMITH^JANE", StudyDate="20220101-20221231"), {"S5"}),
            (dict(StudyDate="-20231231"), {"S3", "S5"}),
            (dict(ModalitiesInStudy="MR"), {"S1", "S3", "S5"}),
            (dict(AccessionNumber="ACC?", StudyDescription="*E*"), {"S1", "S4", "S5"}),
            (dict(StudyInstanceUID=f"{study_uid('2')}\\{study_uid('4')}"), {"S2", "S4"}),
            (dict(PatientID="NOBODY"), set()),
        ]
        for keys, expected in cases:
            pending, final = await collect(assoc.find(query("STUDY", StudyID=None, **keys), STUDY_ROOT_FIND))
            self.assertEqual(final.status, 0x0000)
            self.assertEqual({r.dataset.StudyID for r in pending}, expected, keys)
        await within(assoc.release())

    async def test_character_sets_on_input_and_output(self):
        await self.start_node()
        assoc = await self.qr_association()
        # UTF-8 query for an ideographic component group
        pending, _ = await collect(assoc.find(
            query("STUDY", SpecificCharacterSet="ISO_IR 192", PatientName="山田*", StudyDescription=None),
            STUDY_ROOT_FIND))
        (match,) = pending
        self.assertEqual(match.dataset.SpecificCharacterSet, "ISO_IR 192")
        self.assertEqual(str(match.dataset.PatientName), "Yamada^Tarou=山田^太郎=やまだ^たろう")
        self.assertEqual(match.dataset.StudyDescription, "頭部 MRI")
        # Latin-1 query, answered in Latin-1
        pending, _ = await collect(assoc.find(
            query("STUDY", SpecificCharacterSet="ISO_IR 100", PatientName="müller^j?rgen", StudyDescription=None),
            STUDY_ROOT_FIND))
        (match,) = pending
        self.assertEqual(match.dataset.SpecificCharacterSet, "ISO_IR 100")
        self.assertEqual(str(match.dataset.PatientName), "Müller^Jürgen")
        self.assertEqual(match.dataset.StudyDescription, "Knöchel")
        # a Latin-1 requestor gets a name Latin-1 cannot hold in UTF-8, never mangled
        pending, _ = await collect(assoc.find(
            query("STUDY", SpecificCharacterSet="ISO_IR 100", PatientName="YAMADA*"), STUDY_ROOT_FIND))
        (match,) = pending
        self.assertEqual(match.dataset.SpecificCharacterSet, "ISO_IR 192")
        self.assertEqual(str(match.dataset.PatientName), "Yamada^Tarou=山田^太郎=やまだ^たろう")
        await within(assoc.release())

    async def test_identifiers_that_do_not_match_the_sop_class(self):
        await self.start_node(store=False)
        assoc = await self.qr_association()
        no_level = Dataset()
        no_level.PatientName = "*"
        cases = [
            (no_level, STUDY_ROOT_FIND, "no Query/Retrieve Level"),
            (query("WARD", PatientName="*"), STUDY_ROOT_FIND, "WARD is not one of"),
            (query("PATIENT", PatientID=None), STUDY_ROOT_FIND, "PATIENT is not one of"),
            (query("STUDY", SeriesInstanceUID=None), STUDY_ROOT_FIND, "below the STUDY level"),
            (query("PATIENT", StudyDate=None), PATIENT_ROOT_FIND, "below the PATIENT level"),
            (query("STUDY", StudyDate="20240230-20240101"), STUDY_ROOT_FIND, "StudyDate"),
            (sequence_for("STUDY", 0x00100020), STUDY_ROOT_FIND, "PatientID: a sequence, but its VR is LO"),
            # past SQLite's GLOB pattern limit: it failed the query (0xC000, a traceback in the log)
            (query("STUDY", PatientID="A*" + "x" * 60_000), STUDY_ROOT_FIND, "PatientID: a wild card value of 60,002"),
        ]
        for identifier, model, comment in cases:
            pending, final = await collect(assoc.find(identifier, model))
            self.assertEqual(pending, [])
            self.assertEqual(final.status, 0xA900, comment)
            self.assertIn(comment, final.ErrorComment)
        # the association goes on
        self.assertEqual(await within(assoc.echo()), 0x0000)
        await within(assoc.release())

    async def test_unsupported_optional_keys_come_back_empty_with_ff01(self):
        await self.start_node()
        assoc = await self.qr_association()
        identifier = query("STUDY", StudyID="S1", PatientAge="040Y")
        identifier.ProcedureCodeSequence = [Dataset()]
        pending, final = await collect(assoc.find(identifier, STUDY_ROOT_FIND))
        self.assertEqual(final.status, 0x0000)
        (match,) = pending  # PatientAge was not matched on: S1 still matches
        self.assertEqual(match.status, 0xFF01)
        self.assertTrue(match.dataset["PatientAge"].is_empty)
        self.assertEqual(len(match.dataset.ProcedureCodeSequence), 0)
        await within(assoc.release())

    async def test_a_find_right_after_a_store_finds_the_instance(self):
        # The archive answers a C-STORE once the instance is durable and writes its index row
        # just after: a C-FIND that follows waits for that write rather than miss the instance.
        import threading

        from dimsekit_plugins.archive import store as store_module

        await self.start_node(store=False)
        release = threading.Event()
        real_put = store_module.index.put

        def put(conn, record, **kwargs):
            assert release.wait(10), "never released"
            return real_put(conn, record, **kwargs)

        self.patch(store_module.index, "put", put)
        self.addCleanup(release.set)
        ds = corpus_datasets()[0]
        assoc = await self.connect(self.node_port, [CT, MR, SC], called="QRSCP")
        response = await within(assoc.store(ds))
        self.assertEqual(response.status, 0x0000)  # answered while its row is held back
        qr = await self.qr_association()
        reactor.callLater(0.3, release.set)
        pending, final = await collect(qr.find(query("IMAGE", StudyInstanceUID=ds.StudyInstanceUID,
                                                     SeriesInstanceUID=ds.SeriesInstanceUID, SOPInstanceUID=None),
                                               STUDY_ROOT_FIND))
        self.assertTrue(release.is_set())
        self.assertEqual(([r.dataset.SOPInstanceUID for r in pending], final.status), ([ds.SOPInstanceUID], 0x0000))
        await within(qr.release())
        await within(assoc.release())

    async def test_an_empty_archive_matches_nothing(self):
        await self.start_node(store=False)
        assoc = await self.qr_association()
        for level in ("STUDY", "SERIES", "IMAGE"):
            pending, final = await collect(assoc.find(query(level, StudyInstanceUID=None), STUDY_ROOT_FIND))
            self.assertEqual((pending, final.status), ([], 0x0000))
        await within(assoc.release())

    async def test_c_cancel_between_responses_stops_the_stream(self):
        await self.start_node()
        self.patch(find, "FIRST_BATCH", 1)
        self.patch(find, "batch_size", 1)
        real_fetch = Cursor.fetch
        fetches: list[int] = []

        def slow_fetch(cursor: Cursor, size: int) -> defer.Deferred:
            fetches.append(size)
            return task.deferLater(reactor, 0.05, lambda: None).addCallback(lambda _: real_fetch(cursor, size))

        self.patch(Cursor, "fetch", slow_fetch)
        assoc = await self.qr_association()
        operation = assoc.find(query("IMAGE", SOPInstanceUID=None), STUDY_ROOT_FIND)
        seen = []
        async for response in operation:
            seen.append(response)
            if len(seen) == 1:
                operation.cancel()
        final = await within(operation.result)
        self.assertEqual(final.status, 0xFE00)
        self.assertLess(len(seen), 4)  # 11 instances match
        index = common.index_for(self.node_ae)
        await wait_until(lambda: len(index._free) == 1, 2, "the cursor closed, its connection back")
        self.assertLess(len(fetches), 5)
        # the association goes on, and the next query runs to its end
        pending, final = await collect(assoc.find(query("STUDY", StudyID=None), STUDY_ROOT_FIND))
        self.assertEqual((len(pending), final.status), (5, 0x0000))
        await within(assoc.release())

    async def test_matches_stream_in_batches(self):
        await self.start_node()
        self.patch(find, "FIRST_BATCH", 2)
        self.patch(find, "batch_size", 4)
        sizes: list[int] = []
        real_fetch = Cursor.fetch
        self.patch(Cursor, "fetch", lambda cursor, size: (sizes.append(size), real_fetch(cursor, size))[1])
        assoc = await self.qr_association()
        pending, final = await collect(assoc.find(query("IMAGE", SOPInstanceUID=None), STUDY_ROOT_FIND))
        self.assertEqual((len(pending), final.status), (11, 0x0000))
        self.assertEqual(sizes, [2, 4, 4, 4])  # 2 + 4 + 4 + 1: the short batch is the last fetch
        await within(assoc.release())


class GetTests(QrTestCase):
    async def test_get_a_study_the_files_arrive_on_the_same_association(self):
        await self.start_node()
        self.patch(retrieve, "PENDING_INTERVAL", 0)  # after the node's configuration: every sub-operation's
        assoc = await self.qr_association(roles=True)
        received: list[Dataset] = []

        def on_store(request: Any) -> int:
            received.append(request.dataset())
            return 0x0000

        pending, final = await collect(assoc.get(query("STUDY", StudyInstanceUID=study_uid("1")),
                                                 STUDY_ROOT_GET, on_store=on_store))
        self.assertEqual(final.status, 0x0000)
        self.assertEqual((final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations,
                          final.NumberOfWarningSuboperations), (4, 0, 0))
        self.assertNotIn("NumberOfRemainingSuboperations", final.command)
        self.assertEqual([r.NumberOfRemainingSuboperations for r in pending], [3, 2, 1, 0])
        self.assertEqual(sorted(ds.SOPInstanceUID for ds in received),
                         sorted([*(instance_uid("1.1", n) for n in (1, 2, 3)), instance_uid("1.2", 1)]))
        self.assertEqual({str(ds.PatientName) for ds in received}, {"DOE^JOHN"})
        self.assertIsNone(final.dataset)
        await within(assoc.release())

    async def test_the_files_after_the_first_are_read_ahead_in_their_order(self):
        from pydicom import dcmread

        from dimsekit import readahead

        await self.start_node()
        asked: list[str] = []
        real = readahead.prefetch_file
        self.patch(readahead, "prefetch_file", lambda path, limit: (asked.append(path), real(path, limit))[1])
        assoc = await self.qr_association(roles=True)
        received: list[str] = []
        on_store = lambda request: received.append(request.sop_instance_uid) or 0x0000  # noqa: E731
        _, final = await collect(assoc.get(query("STUDY", StudyInstanceUID=study_uid("1")), STUDY_ROOT_GET,
                                           on_store=on_store))
        self.assertEqual((final.status, len(received)), (0x0000, 4))
        await wait_until(lambda: len(asked) >= 3, what="the read-ahead's thread")  # (it ran long before)
        for path in asked:  # files of the archive, in it
            self.assertTrue(Path(path).resolve().is_relative_to(self.data_dir.resolve()), path)
        self.assertEqual([dcmread(path, stop_before_pixels=True).SOPInstanceUID for path in asked], received[1:])
        await within(assoc.release())

    async def test_get_by_patient_and_by_image_list(self):
        await self.start_node()
        assoc = await self.qr_association(roles=True)
        got: list[str] = []
        on_store = lambda request: got.append(request.sop_instance_uid) or 0x0000  # noqa: E731
        _, final = await collect(assoc.get(query("PATIENT", PatientID="PID4"), PATIENT_ROOT_GET, on_store=on_store))
        self.assertEqual((final.status, final.NumberOfCompletedSuboperations, len(got)), (0x0000, 4, 4))
        got.clear()
        uids = [instance_uid("3.1", 2), instance_uid("1.1", 3)]
        _, final = await collect(assoc.get(
            query("IMAGE", StudyInstanceUID=study_uid("1"), SeriesInstanceUID=series_uid("1.1"),
                  SOPInstanceUID="\\".join(uids)), STUDY_ROOT_GET, on_store=on_store))
        # the SERIES and STUDY unique keys narrow it: only the instance of series 1.1 qualifies
        self.assertEqual((final.status, got), (0x0000, [instance_uid("1.1", 3)]))
        await within(assoc.release())

    async def test_failures_and_warnings_are_counted_and_listed(self):
        await self.start_node()
        assoc = await self.qr_association(roles=True)
        statuses = {instance_uid("1.1", 2): 0xA700, instance_uid("1.1", 3): 0xB000}
        on_store = lambda request: statuses.get(request.sop_instance_uid, 0x0000)  # noqa: E731
        _, final = await collect(assoc.get(query("STUDY", StudyInstanceUID=study_uid("1")), STUDY_ROOT_GET,
                                           on_store=on_store))
        self.assertEqual(final.status, 0xB000)
        self.assertEqual((final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations,
                          final.NumberOfWarningSuboperations), (2, 1, 1))
        self.assertEqual(uid_list(final.dataset.FailedSOPInstanceUIDList), [instance_uid("1.1", 2)])
        await within(assoc.release())

    async def test_no_storage_context_for_the_sub_operations_fails_them_all(self):
        await self.start_node()
        assoc = await self.qr_association(roles=False)  # no storage contexts, no role selection
        _, final = await collect(assoc.get(query("SERIES", StudyInstanceUID=study_uid("4"),
                                                 SeriesInstanceUID=series_uid("4.1")), STUDY_ROOT_GET))
        self.assertEqual(final.status, 0xA702)
        self.assertEqual((final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations), (0, 2))
        self.assertEqual(sorted(uid_list(final.dataset.FailedSOPInstanceUIDList)),
                         [instance_uid("4.1", 1), instance_uid("4.1", 2)])
        await within(assoc.release())

    async def test_nothing_matches_success_with_zero_counts(self):
        await self.start_node()
        assoc = await self.qr_association(roles=True)
        _, final = await collect(assoc.get(query("STUDY", StudyInstanceUID="1.2.3.4"), STUDY_ROOT_GET))
        self.assertEqual((final.status, final.NumberOfCompletedSuboperations), (0x0000, 0))
        _, final = await collect(assoc.get(query("STUDY", PatientName="*"), STUDY_ROOT_GET))
        self.assertEqual(final.status, 0xA900)
        self.assertIn("no StudyInstanceUID", final.ErrorComment)
        await within(assoc.release())

    async def test_cancel_between_sub_operations(self):
        await self.start_node()
        assoc = await self.qr_association(roles=True)
        held: list[defer.Deferred] = []

        def on_store(request: Any) -> defer.Deferred:
            d: defer.Deferred = defer.Deferred()
            held.append(d)
            return d

        operation = assoc.get(query("STUDY", StudyInstanceUID=study_uid("1")), STUDY_ROOT_GET, on_store=on_store)
        await wait_until(lambda: held, 2, "the first sub-operation")
        held[0].callback(0x0000)
        await wait_until(lambda: len(held) == 2, 2, "the second sub-operation")
        operation.cancel()  # the SCP waits for the second C-STORE-RSP
        await task.deferLater(reactor, 0.05, lambda: None)
        held[1].callback(0x0000)
        final = await within(operation.result)
        self.assertEqual(final.status, 0xFE00)
        # the sub-operation in flight finished and counts; two never started
        self.assertEqual((final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations,
                          final.NumberOfRemainingSuboperations), (2, 0, 2))
        self.assertEqual(len(held), 2)
        self.assertEqual(await within(assoc.echo()), 0x0000)
        await within(assoc.release())

    async def test_cancel_read_with_a_sub_operation_response_still_lists_the_failures(self):
        """The C-CANCEL-RQ comes right behind the C-STORE-RSP of a failed sub-operation,
        so the SCP reads it while it sends the pending response, not while a
        sub-operation is in flight: the final FE00 still carries the Failed SOP
        Instance UID List (PS3.4 C.4.3.1.3.1: a Cancel response's identifier holds it)."""
        await self.start_node()
        assoc = await self.qr_association(roles=True)
        held: list[defer.Deferred] = []

        def on_store(request: Any) -> Any:
            if held:
                return 0x0000
            d: defer.Deferred = defer.Deferred()
            held.append(d)
            return d

        operation = assoc.get(query("STUDY", StudyInstanceUID=study_uid("1")), STUDY_ROOT_GET, on_store=on_store)
        await wait_until(lambda: held, 2, "the first sub-operation")
        held[0].callback(0xA700)  # the C-STORE-RSP (a failure) goes out ...
        operation.cancel()  # ... and the C-CANCEL-RQ right behind it, in the same write
        final = await within(operation.result)
        self.assertEqual(final.status, 0xFE00)
        self.assertEqual((final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations,
                          final.NumberOfRemainingSuboperations), (0, 1, 3))
        self.assertEqual(uid_list(final.dataset.FailedSOPInstanceUIDList), [instance_uid("1.1", 1)])
        self.assertEqual(await within(assoc.echo()), 0x0000)
        await within(assoc.release())

    async def test_cancel_before_any_sub_operation_still_gives_the_counts(self):
        """The C-CANCEL-RQ comes with the C-GET-RQ, while the instances are being looked up: the
        Cancel response carries the (zero) counts all the same (PS3.4 C.4.3.3.1: a response with a
        status of Canceled contains the number of Completed, Failed and Warning sub-operations)."""
        await self.start_node()
        assoc = await self.qr_association(roles=True)
        stored: list[str] = []
        on_store = lambda request: stored.append(request.sop_instance_uid) or 0x0000  # noqa: E731
        operation = assoc.get(query("STUDY", StudyInstanceUID=study_uid("1")), STUDY_ROOT_GET, on_store=on_store)
        operation.cancel()  # in the same write as the C-GET-RQ
        final = await within(operation.result)
        self.assertEqual(final.status, 0xFE00)
        for keyword in ("NumberOfCompletedSuboperations", "NumberOfFailedSuboperations",
                        "NumberOfWarningSuboperations"):
            self.assertIn(keyword, final.command)
        self.assertEqual((final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations,
                          final.NumberOfWarningSuboperations), (len(stored), 0, 0))
        self.assertEqual(await within(assoc.echo()), 0x0000)
        await within(assoc.release())


class PendingResponseTests(QrTestCase):
    async def test_pending_responses_go_out_after_the_first_sub_operation_then_at_most_every_interval(self):
        # PS3.4 C.4.3.3.1: optional; one after every sub-operation cost a fifth of a study's rate
        await self.start_node()
        self.patch(retrieve, "PENDING_INTERVAL", 3600)  # after the node's configuration
        assoc = await self.qr_association(roles=True)
        pending, final = await collect(assoc.get(query("STUDY", StudyInstanceUID=study_uid("1")), STUDY_ROOT_GET,
                                                 on_store=lambda request: 0x0000))
        self.assertEqual([r.NumberOfRemainingSuboperations for r in pending], [3])
        self.assertEqual([r.NumberOfCompletedSuboperations for r in pending], [1])
        self.assertEqual((final.status, final.NumberOfCompletedSuboperations), (0x0000, 4))
        await within(assoc.release())


class MoveTests(QrTestCase):
    async def start(self, destination: Destination | None = None, port: int | None = None) -> Any:
        if destination is not None:
            _, port = await self.serve(destination, ae_title="DEST")
        await self.start_node(remotes={"DEST": ("127.0.0.1", port or 1)})
        return await self.qr_association()

    async def test_move_sends_on_a_new_association_with_the_move_originator(self):
        destination = Destination()
        assoc = await self.start(destination)
        self.patch(retrieve, "PENDING_INTERVAL", 0)  # after the node's configuration: every sub-operation's
        identifier = query("SERIES", StudyInstanceUID=study_uid("4"),
                           SeriesInstanceUID=f"{series_uid('4.1')}\\{series_uid('4.2')}")
        operation = assoc.move(identifier, "DEST", STUDY_ROOT_MOVE)
        pending, final = await collect(operation)
        self.assertEqual(final.status, 0x0000)
        self.assertEqual((final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations), (3, 0))
        self.assertEqual([r.NumberOfRemainingSuboperations for r in pending], [2, 1, 0])
        self.assertEqual(len(destination.commands), 3)
        for command in destination.commands:
            self.assertEqual(command["MoveOriginatorApplicationEntityTitle"], "SCU")
            self.assertEqual(command["MoveOriginatorMessageID"], operation.message_id)
        self.assertEqual({ds.SOPInstanceUID for ds in destination.datasets},
                         {instance_uid("4.1", 1), instance_uid("4.1", 2), instance_uid("4.2", 1)})
        await within(assoc.release())

    async def test_unknown_destination_is_refused_a801(self):
        destination = Destination()
        assoc = await self.start(destination)
        pending, final = await collect(assoc.move(query("STUDY", StudyInstanceUID=study_uid("1")), "NOSUCHAE",
                                                  STUDY_ROOT_MOVE))
        self.assertEqual((pending, final.status), ([], 0xA801))
        self.assertIn("NOSUCHAE", final.ErrorComment)
        self.assertEqual(destination.commands, [])
        await within(assoc.release())

    async def test_a_destination_that_cannot_be_reached_fails_every_sub_operation(self):
        from tests.interop.conftest import free_port as free

        assoc = await self.start(port=free())
        _, final = await collect(assoc.move(query("STUDY", StudyInstanceUID=study_uid("2")), "DEST",
                                            STUDY_ROOT_MOVE))
        self.assertEqual(final.status, 0xA702)
        self.assertEqual(final.NumberOfFailedSuboperations, 1)
        self.assertEqual(uid_list(final.dataset.FailedSOPInstanceUIDList), [instance_uid("2.1", 1)])
        self.assertIn("cannot associate with DEST", final.ErrorComment)
        await within(assoc.release())

    async def test_a_lost_file_and_a_refused_instance_are_failures(self):
        destination = Destination()
        destination.statuses[instance_uid("1.1", 1)] = 0xA700
        assoc = await self.start(destination)
        lost = next(Path(self.data_dir).rglob(f"{instance_uid('1.2', 1)}.dcm"))
        lost.unlink()
        _, final = await collect(assoc.move(query("STUDY", StudyInstanceUID=study_uid("1")), "DEST",
                                            STUDY_ROOT_MOVE))
        self.assertEqual(final.status, 0xB000)
        self.assertEqual((final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations), (2, 2))
        self.assertEqual(sorted(uid_list(final.dataset.FailedSOPInstanceUIDList)),
                         sorted([instance_uid("1.1", 1), instance_uid("1.2", 1)]))
        await within(assoc.release())

    async def test_cancel_between_sub_operations(self):
        destination = Destination()
        destination.hold = []
        assoc = await self.start(destination)
        operation = assoc.move(query("STUDY", StudyInstanceUID=study_uid("1")), "DEST", STUDY_ROOT_MOVE)
        await wait_until(lambda: destination.hold, 2, "the first sub-operation")
        destination.hold[0].callback(None)
        await wait_until(lambda: operation.responses, 2, "a pending response")
        await wait_until(lambda: len(destination.hold) == 2, 2, "the second sub-operation")
        operation.cancel()
        await task.deferLater(reactor, 0.05, lambda: None)
        destination.hold[1].callback(None)
        final = await within(operation.result)
        self.assertEqual(final.status, 0xFE00)
        self.assertEqual((final.NumberOfCompletedSuboperations, final.NumberOfRemainingSuboperations), (2, 2))
        self.assertEqual(len(destination.commands), 2)
        # the association to the destination was released
        await wait_until(lambda: all(a.ended for a in self.node_ae.tracker.associations if a.is_requestor),
                         2, "the sub-association ended")
        await within(assoc.release())


class UnknownModelTests(QrTestCase):
    """A command naming a SOP class that is no Q/R information model, on a Q/R context (a fuzz
    run of the node found the C-GET handler failing on it with a traceback and C000)."""

    async def _refused(self, operation: Any, model: str) -> None:
        from dimsekit.dimse.commands import CommandField

        assoc = await self.qr_association(roles=True)
        context = assoc.context_for(model)
        command = {"CommandField": operation, "AffectedSOPClassUID": "1.2.840.10088.5.1.4.1.0.2.3",
                   "Priority": 0, "CommandDataSetType": 0x0001}
        if operation == CommandField.C_MOVE_RQ:
            command["MoveDestination"] = "ANYWHERE"
        from twisted.logger import LogLevel, globalLogPublisher

        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        try:
            final = await within(assoc.send_request(context, command, query("STUDY", StudyInstanceUID=study_uid("1"))))
            await within(assoc.release())
        finally:
            globalLogPublisher.removeObserver(events.append)
        self.assertEqual(final.status, 0x0122)
        self.assertEqual(final.command["ErrorComment"], "Affected SOP Class UID is no Q/R information model")
        self.assertEqual([e for e in events if "log_failure" in e or e.get("log_level") is LogLevel.critical], [])
        self.assertTrue(any("0122" in e.get("log_format", "") for e in events))

    async def test_c_find_is_refused_0122(self):
        from dimsekit.dimse.commands import CommandField

        await self.start_node()
        await self._refused(CommandField.C_FIND_RQ, STUDY_ROOT_FIND)

    async def test_c_get_is_refused_0122(self):
        from dimsekit.dimse.commands import CommandField

        await self.start_node()
        await self._refused(CommandField.C_GET_RQ, STUDY_ROOT_GET)

    async def test_c_move_is_refused_0122(self):
        from dimsekit.dimse.commands import CommandField

        await self.start_node()
        await self._refused(CommandField.C_MOVE_RQ, STUDY_ROOT_MOVE)


class NoIndexTests(QrTestCase):
    async def test_no_archive_is_unable_to_process_c000(self):
        import dimsekit_plugins.verification as verification
        from dimsekit_plugins.qr import plugin as qr_plugin

        _, port = await self.serve(verification, qr_plugin, ae_title="QRSCP")
        self.node_port = port
        assoc = await self.qr_association()
        _, final = await collect(assoc.find(query("STUDY", PatientName="*"), STUDY_ROOT_FIND))
        self.assertEqual(final.status, 0xC000)
        self.assertIn("no archive", final.ErrorComment)
        _, final = await collect(assoc.get(query("STUDY", StudyInstanceUID="1.2"), STUDY_ROOT_GET))
        self.assertEqual(final.status, 0xC000)
        await within(assoc.release())

    async def test_an_archive_that_cannot_be_opened_is_c000_not_a_crash(self):
        import dimsekit_plugins.verification as verification
        from dimsekit_plugins.qr import plugin as qr_plugin

        class Broken:
            @hookimpl
            def dimsekit_archive(self, config: Any) -> Any:
                raise OSError("data directory locked by another process")

        _, port = await self.serve(verification, qr_plugin, Broken(), ae_title="QRSCP")
        self.node_port = port
        assoc = await self.qr_association()
        _, final = await collect(assoc.find(query("STUDY", PatientName="*"), STUDY_ROOT_FIND))
        self.assertEqual(final.status, 0xC000)
        self.assertIn("locked", final.ErrorComment)
        await within(assoc.release())
