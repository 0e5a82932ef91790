"""dimsekit <-> pynetdicom, both ways, for C-STORE, C-FIND, C-GET, C-MOVE and
every DIMSE-N primitive.

pynetdicom runs in this process: as SCP through ``AE.start_server(block=False)``
(its own threads), as SCU in a thread of the reactor's pool
(``deferToThread``), while the reactor serves the dimsekit side.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from twisted.internet import threads

from dimsekit.dimse.commands import Priority
from dimsekit.scu import STUDY_ROOT_FIND, STUDY_ROOT_GET, STUDY_ROOT_MOVE
from dimsekit.uids import VERIFICATION
from tests.dimse_e2e.support import (
    CT,
    CT_FILE,
    EXPLICIT,
    IMPLICIT,
    MR,
    MR_FILE,
    STORAGE_COMMITMENT,
    Commitment,
    LoopbackTestCase,
    Services,
    file_dataset_bytes,
    match,
    wait_until,
    within,
)

pytestmark = pytest.mark.interop

#: Basic Film Session: pynetdicom's Print Management service class takes every DIMSE-N on it.
FILM_SESSION = "1.2.840.10008.5.1.1.1"
TS = [EXPLICIT, IMPLICIT]


def query() -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientName = "*"
    return ds


def film(copies: str = "1") -> Dataset:
    ds = Dataset()
    ds.NumberOfCopies = copies
    ds.PrintPriority = "HIGH"
    return ds


def pynetdicom_ae(title: str) -> AE:
    ae = AE(ae_title=title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
    return ae


class PynetdicomServer:
    """A pynetdicom SCP on a free port of 127.0.0.1 recording what its handlers saw."""

    def __init__(self, title: str, supported: list[tuple[str, dict[str, Any]]], handlers: list, requested: tuple[str, ...] = ()) -> None:
        self.ae = pynetdicom_ae(title)
        for sop, kwargs in supported:
            self.ae.add_supported_context(sop, TS, **kwargs)
        for sop in requested:
            self.ae.add_requested_context(sop, TS)
        self.server = self.ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
        self.port = self.server.server_address[1]

    def shutdown(self) -> Any:
        return threads.deferToThread(self.server.shutdown)


class DimsekitScuToPynetdicomTests(LoopbackTestCase):
    """dimsekit requests, pynetdicom answers."""

    def pynetdicom(self, title: str, supported, handlers, requested=()) -> PynetdicomServer:
        server = PynetdicomServer(title, supported, handlers, requested)
        self.addCleanup(server.shutdown)
        return server

    async def test_c_store_unparsed_with_priority(self):
        seen = []

        def on_store(event):
            seen.append((event.request.Priority, event.request.DataSet.getvalue(), event.context.transfer_syntax))
            return 0x0000

        server = self.pynetdicom("PYNSCP", [(CT, {})], [(evt.EVT_C_STORE, on_store)])
        assoc = await self.connect(server.port, [(CT, [EXPLICIT])], called="PYNSCP")
        response = await within(assoc.store(CT_FILE, priority=Priority.HIGH))
        self.assertEqual(response.status, 0x0000)
        await within(assoc.release())
        ((priority, data, ts),) = seen
        self.assertEqual(priority, Priority.HIGH)
        self.assertEqual(ts, EXPLICIT)
        self.assertEqual(data, file_dataset_bytes(CT_FILE))

    async def test_c_find(self):
        queries = []

        def on_find(event):
            queries.append((event.identifier.QueryRetrieveLevel, event.request.Priority))
            for i in range(3):
                yield 0xFF00, match(i)

        server = self.pynetdicom("PYNSCP", [(STUDY_ROOT_FIND, {})], [(evt.EVT_C_FIND, on_find)])
        assoc = await self.connect(server.port, [STUDY_ROOT_FIND], called="PYNSCP")
        operation = assoc.find(query(), priority=Priority.LOW)
        names = [str(r.dataset.PatientName) async for r in operation]
        self.assertEqual((await within(operation.result)).status, 0x0000)
        self.assertEqual(names, ["PATIENT^0", "PATIENT^1", "PATIENT^2"])
        self.assertEqual(queries, [("STUDY", Priority.LOW)])
        await within(assoc.release())

    async def test_c_get_with_store_suboperations(self):
        def on_get(event):
            yield 2
            for path in (CT_FILE, MR_FILE):
                yield 0xFF00, dcmread(path)

        server = self.pynetdicom(
            "PYNSCP",
            [(STUDY_ROOT_GET, {}), (CT, {"scu_role": True, "scp_role": True}), (MR, {"scu_role": True, "scp_role": True})],
            [(evt.EVT_C_GET, on_get)],
        )
        assoc = await self.connect(
            server.port, [STUDY_ROOT_GET, CT, MR], called="PYNSCP", roles={CT: (True, True), MR: (True, True)}
        )
        received = []

        def on_store(request):
            received.append(request.dataset().SOPInstanceUID)
            return 0x0000

        operation = assoc.get(query(), on_store=on_store)
        final = await within(operation.result)
        self.assertEqual(final.status, 0x0000)
        self.assertEqual(final.NumberOfCompletedSuboperations, 2)
        self.assertEqual(received, [dcmread(CT_FILE).SOPInstanceUID, dcmread(MR_FILE).SOPInstanceUID])
        self.assertEqual([p.NumberOfRemainingSuboperations for p in operation.responses], [1, 0])
        await within(assoc.release())

    async def test_c_move_to_a_dimsekit_destination(self):
        destination = Services()
        _, dest_port = await self.serve(destination, ae_title="DEST")

        def on_move(event):
            assert event.move_destination.strip() == b"DEST" or event.move_destination == "DEST"
            yield "127.0.0.1", dest_port
            yield 2
            for path in (CT_FILE, MR_FILE):
                yield 0xFF00, dcmread(path)

        server = self.pynetdicom("PYNSCP", [(STUDY_ROOT_MOVE, {})], [(evt.EVT_C_MOVE, on_move)], requested=(CT, MR))
        assoc = await self.connect(server.port, [STUDY_ROOT_MOVE], called="PYNSCP")
        operation = assoc.move(query(), "DEST")
        final = await within(operation.result)
        self.assertEqual(final.status, 0x0000, final.command)
        self.assertEqual(final.NumberOfCompletedSuboperations, 2)
        self.assertEqual([s.command["AffectedSOPClassUID"] for s in destination.stored], [CT, MR])
        # (pynetdicom 3.0.4 names itself, not the C-MOVE SCU, as Move Originator AE Title)
        self.assertEqual(destination.stored[0].command["MoveOriginatorApplicationEntityTitle"].strip(), "PYNSCP")
        self.assertEqual(destination.stored[0].command["MoveOriginatorMessageID"], operation.message_id)
        await within(assoc.release())

    async def test_every_n_primitive(self):
        seen = []
        instances = {}

        def on_create(event):
            seen.append(("N-CREATE", event.request.AffectedSOPInstanceUID))
            ds = event.attribute_list
            uid = event.request.AffectedSOPInstanceUID or "1.2.826.0.1.3680043.9.7433.5.1"
            instances[uid] = ds
            if event.request.AffectedSOPInstanceUID is None:
                reply = Dataset()
                reply.update(ds)
                reply.AffectedSOPInstanceUID = uid
                return 0x0000, reply
            return 0x0000, ds

        def on_get(event):
            wanted = event.request.AttributeIdentifierList or []
            wanted = list(wanted) if isinstance(wanted, list | tuple) else [wanted]  # VM 1: one tag
            seen.append(("N-GET", [int(t) for t in wanted]))
            ds = instances[event.request.RequestedSOPInstanceUID]
            reply = Dataset()
            for elem in ds:
                if not wanted or elem.tag in wanted:
                    reply.add(elem)
            return 0x0000, reply

        def on_set(event):
            seen.append(("N-SET", event.request.RequestedSOPInstanceUID))
            ds = instances[event.request.RequestedSOPInstanceUID]
            ds.update(event.modification_list)
            return 0x0000, ds

        def on_action(event):
            seen.append(("N-ACTION", event.action_type))
            reply = Dataset()
            reply.PatientID = f"ACTION{event.action_type}"
            return 0x0000, reply

        def on_delete(event):
            seen.append(("N-DELETE", event.request.RequestedSOPInstanceUID))
            if instances.pop(event.request.RequestedSOPInstanceUID, None) is None:
                return 0x0112
            return 0x0000

        def on_report(event):
            seen.append(("N-EVENT-REPORT", event.event_type))
            reply = Dataset()
            reply.PatientID = f"EVENT{event.event_type}"
            return 0x0000, reply

        server = self.pynetdicom(
            "PYNSCP", [(FILM_SESSION, {"scu_role": True, "scp_role": True})],
            [(evt.EVT_N_CREATE, on_create), (evt.EVT_N_GET, on_get), (evt.EVT_N_SET, on_set),
             (evt.EVT_N_ACTION, on_action), (evt.EVT_N_DELETE, on_delete), (evt.EVT_N_EVENT_REPORT, on_report)],
        )
        assoc = await self.connect(server.port, [FILM_SESSION], called="PYNSCP")
        created = await within(assoc.n_create(FILM_SESSION, None, film()))
        self.assertEqual(created.status, 0x0000)
        uid = created.AffectedSOPInstanceUID
        self.assertEqual(uid, "1.2.826.0.1.3680043.9.7433.5.1")
        with_uid = await within(assoc.n_create(FILM_SESSION, "1.2.3.4.5", film("2")))
        self.assertEqual((with_uid.status, with_uid.AffectedSOPInstanceUID), (0x0000, "1.2.3.4.5"))
        got = await within(assoc.n_get(FILM_SESSION, uid, [0x20000010]))
        self.assertEqual(got.status, 0x0000)
        self.assertEqual([e.keyword for e in got.dataset], ["NumberOfCopies"])
        change = Dataset()
        change.NumberOfCopies = "3"
        set_ = await within(assoc.n_set(FILM_SESSION, uid, change))
        self.assertEqual((set_.status, set_.AffectedSOPInstanceUID), (0x0000, uid))
        self.assertEqual(set_.dataset.NumberOfCopies, 3)
        action = await within(assoc.n_action(FILM_SESSION, uid, 1))
        self.assertEqual((action.status, action.ActionTypeID, action.dataset.PatientID), (0x0000, 1, "ACTION1"))
        deleted = await within(assoc.n_delete(FILM_SESSION, uid))
        self.assertEqual(deleted.status, 0x0000)
        again = await within(assoc.n_delete(FILM_SESSION, uid))
        self.assertEqual(again.status, 0x0112)
        await within(assoc.release())
        # N-EVENT-REPORT from the requestor: it takes the SCP role of the SOP class
        assoc = await self.connect(server.port, [FILM_SESSION], called="PYNSCP", roles={FILM_SESSION: (False, True)})
        report = await within(assoc.n_event_report(FILM_SESSION, uid, 4, film()))
        self.assertEqual((report.status, report.EventTypeID, report.dataset.PatientID), (0x0000, 4, "EVENT4"))
        await within(assoc.release())
        self.assertEqual(seen, [
            ("N-CREATE", None), ("N-CREATE", "1.2.3.4.5"), ("N-GET", [0x20000010]), ("N-SET", uid),
            ("N-ACTION", 1), ("N-DELETE", uid), ("N-DELETE", uid), ("N-EVENT-REPORT", 4),
        ])

    async def test_n_event_report_received_by_the_dimsekit_requestor(self):
        def on_action(event):
            assoc = event.assoc
            ds = Dataset()
            ds.TransactionUID = event.action_information.TransactionUID

            def report():
                time.sleep(0.05)  # after the N-ACTION-RSP went out
                assoc.send_n_event_report(ds, 1, STORAGE_COMMITMENT, "1.2.840.10008.1.20.1.1")

            threading.Thread(target=report, daemon=True).start()
            return 0x0000, None

        server = self.pynetdicom("PYNSCP", [(STORAGE_COMMITMENT, {})], [(evt.EVT_N_ACTION, on_action)])
        assoc = await self.connect(server.port, [STORAGE_COMMITMENT], called="PYNSCP")
        reports = []

        def on_report(request):
            reports.append((request.command["EventTypeID"], request.dataset().TransactionUID))
            return 0x0000

        assoc.handlers[("N-EVENT-REPORT", STORAGE_COMMITMENT)] = on_report
        info = Dataset()
        info.TransactionUID = "1.2.3.88"
        self.assertEqual((await within(assoc.n_action(STORAGE_COMMITMENT, "1.2.840.10008.1.20.1.1", 1, info))).status, 0)
        await wait_until(lambda: reports, 5, "the N-EVENT-REPORT from pynetdicom")
        self.assertEqual(reports, [(1, "1.2.3.88")])
        await within(assoc.release())


class PynetdicomScuToDimsekitTests(LoopbackTestCase):
    """pynetdicom requests (in a thread), dimsekit answers."""

    timeout = 30

    def run_scu(self, function, *args) -> Any:
        return within(threads.deferToThread(function, *args), 20)

    def associate(self, port: int, contexts, *, roles=(), handlers=(), title="PYNSCU"):
        ae = pynetdicom_ae(title)
        for sop in contexts:
            ae.add_requested_context(sop, TS)
        assoc = ae.associate("127.0.0.1", port, ae_title="SCP", ext_neg=list(roles), evt_handlers=list(handlers))
        assert assoc.is_established, "pynetdicom could not associate"
        return ae, assoc

    async def test_c_store_and_c_echo(self):
        services = Services()
        _, port = await self.serve(services)

        def scu():
            ae, assoc = self.associate(port, [VERIFICATION, CT])
            try:
                echo = assoc.send_c_echo().Status
                store = assoc.send_c_store(dcmread(CT_FILE), priority=1).Status
            finally:
                assoc.release()
            return echo, store

        self.assertEqual(await self.run_scu(scu), (0x0000, 0x0000))
        (stored,) = services.stored
        self.assertEqual(stored.command["Priority"], 1)
        self.assertEqual(stored.command["AffectedSOPInstanceUID"], dcmread(CT_FILE).SOPInstanceUID)
        from dimsekit.datasets import decode_dataset

        received = decode_dataset(stored.data, stored.transfer_syntax)
        self.assertEqual(received.PatientName, dcmread(CT_FILE).PatientName)

    async def test_c_find(self):
        services = Services()
        _, port = await self.serve(services)

        def scu():
            ae, assoc = self.associate(port, [STUDY_ROOT_FIND])
            try:
                results = [(status.Status, identifier and str(identifier.PatientName))
                           for status, identifier in assoc.send_c_find(query(), STUDY_ROOT_FIND)]
            finally:
                assoc.release()
            return results

        self.assertEqual(await self.run_scu(scu), [
            (0xFF00, "PATIENT^0"), (0xFF00, "PATIENT^1"), (0xFF00, "PATIENT^2"), (0x0000, None),
        ])

    async def test_c_get(self):
        services = Services()
        _, port = await self.serve(services)
        received = []

        def on_store(event):
            received.append(event.dataset.SOPInstanceUID)
            return 0x0000

        def scu():
            ae, assoc = self.associate(
                port, [STUDY_ROOT_GET, CT, MR],
                roles=[build_role(CT, scp_role=True), build_role(MR, scp_role=True)],
                handlers=[(evt.EVT_C_STORE, on_store)],
            )
            try:
                results = [(status.Status, int(status.get("NumberOfCompletedSuboperations", -1)))
                           for status, _ in assoc.send_c_get(query(), STUDY_ROOT_GET)]
            finally:
                assoc.release()
            return results

        results = await self.run_scu(scu)
        self.assertEqual(results, [(0xFF00, 1), (0xFF00, 2), (0x0000, 2)])
        self.assertEqual(received, [dcmread(CT_FILE).SOPInstanceUID, dcmread(MR_FILE).SOPInstanceUID])

    async def test_c_move_to_a_pynetdicom_destination(self):
        received = []

        def on_store(event):
            received.append((event.request.MoveOriginatorApplicationEntityTitle, event.dataset.SOPInstanceUID))
            return 0x0000

        store_scp = PynetdicomServer("PYNSTORE", [(CT, {}), (MR, {})], [(evt.EVT_C_STORE, on_store)])
        self.addCleanup(store_scp.shutdown)
        services = Services()
        services.destinations = {"PYNSTORE": ("127.0.0.1", store_scp.port)}
        _, port = await self.serve(services)

        def scu():
            ae, assoc = self.associate(port, [STUDY_ROOT_MOVE])
            try:
                results = [status.Status for status, _ in assoc.send_c_move(query(), "PYNSTORE", STUDY_ROOT_MOVE)]
            finally:
                assoc.release()
            return results

        self.assertEqual(await self.run_scu(scu), [0xFF00, 0xFF00, 0x0000])
        self.assertEqual([uid for _, uid in received], [dcmread(CT_FILE).SOPInstanceUID, dcmread(MR_FILE).SOPInstanceUID])
        self.assertEqual({str(title).strip() for title, _ in received}, {"PYNSCU"})

    async def test_every_n_primitive(self):
        services = Services(n_classes=(FILM_SESSION,))
        _, port = await self.serve(services)

        responses = []

        def on_receive(event):  # pynetdicom keeps the response's command set to itself
            responses.append(event.message.command_set)

        def scu():
            out = {}
            ae, assoc = self.associate(port, [FILM_SESSION], handlers=[(evt.EVT_DIMSE_RECV, on_receive)])
            try:
                status, ds = assoc.send_n_create(film(), FILM_SESSION, None)
                uid = str(responses[-1].AffectedSOPInstanceUID)
                out["create"] = (status.Status, uid)
                status, ds = assoc.send_n_create(film("2"), FILM_SESSION, "1.2.3.4.5")
                out["create_uid"] = (status.Status, ds.NumberOfCopies)
                status, ds = assoc.send_n_get([0x20000010], FILM_SESSION, uid)
                out["get"] = (status.Status, [e.keyword for e in ds])
                change = Dataset()
                change.NumberOfCopies = "3"
                status, ds = assoc.send_n_set(change, FILM_SESSION, uid)
                out["set"] = (status.Status, ds.NumberOfCopies)
                status, ds = assoc.send_n_action(None, 2, FILM_SESSION, uid)
                out["action"] = (status.Status, ds.PatientID)
                out["delete"] = assoc.send_n_delete(FILM_SESSION, uid).Status
                out["delete_again"] = assoc.send_n_delete(FILM_SESSION, uid).Status
            finally:
                assoc.release()
            # N-EVENT-REPORT from the requestor, which takes the SCP role
            ae, assoc = self.associate(port, [FILM_SESSION], roles=[build_role(FILM_SESSION, scu_role=False, scp_role=True)])
            try:
                status, ds = assoc.send_n_event_report(film(), 6, FILM_SESSION, "1.2.3.4.5")
                out["report"] = (status.Status, ds.PatientID)
            finally:
                assoc.release()
            return out

        out = await self.run_scu(scu)
        self.assertEqual(out["create"][0], 0x0000)
        self.assertTrue(out["create"][1].startswith("1.2.826.0.1.3680043.9.7433.4."))
        self.assertEqual(services.requests[0].command.get("AffectedSOPInstanceUID"), None)
        self.assertEqual(out["create_uid"], (0x0000, 2))
        self.assertEqual(out["get"], (0x0000, ["NumberOfCopies"]))
        self.assertEqual(out["set"], (0x0000, 3))
        self.assertEqual(out["action"], (0x0000, "ACTION2"))
        self.assertEqual((out["delete"], out["delete_again"]), (0x0000, 0x0112))
        self.assertEqual(out["report"], (0x0000, "EVENT6"))
        self.assertEqual([name for name, _ in services.seen], [
            "N-CREATE", "N-CREATE", "N-GET", "N-SET", "N-ACTION", "N-DELETE", "N-DELETE", "N-EVENT-REPORT",
        ])
        self.assertEqual(list(services.seen[2][1]["AttributeIdentifierList"]), [0x20000010])

    async def test_n_event_report_from_dimsekit_to_the_pynetdicom_requestor(self):
        commitment = Commitment()
        _, port = await self.serve(commitment)
        reports = []
        got_report = threading.Event()

        def on_report(event):
            reports.append((event.event_type, event.event_information.TransactionUID))
            got_report.set()
            return 0x0000, None

        def scu():
            ae, assoc = self.associate(port, [STORAGE_COMMITMENT], handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
            try:
                info = Dataset()
                info.TransactionUID = "1.2.3.99"
                status, _ = assoc.send_n_action(info, 1, STORAGE_COMMITMENT, "1.2.840.10008.1.20.1.1")
                got_report.wait(5)
                # pynetdicom answers the report after on_report returns, on its
                # own thread: releasing before the answer is out makes it send
                # P-DATA after A-RELEASE-RQ, which its state machine refuses.
                deadline = time.monotonic() + 5
                while not commitment.report_responses and time.monotonic() < deadline:
                    time.sleep(0.01)
            finally:
                assoc.release()
            return status.Status

        self.assertEqual(await self.run_scu(scu), 0x0000)
        self.assertEqual(reports, [(1, "1.2.3.99")])
        await wait_until(lambda: commitment.report_responses, 2, "the report answered")
        self.assertEqual(commitment.report_responses[0].status, 0x0000)
