"""The Storage Commitment Push Model SCP (PS3.4 Annex J) over in-memory associations:
the N-ACTION checks and statuses, the report on the same association, on a
new association with role selection, or when the requestor comes back; the
failure reasons; the settings."""

from __future__ import annotations

import sqlite3
import warnings
from types import SimpleNamespace
from typing import Any

import pytest
from pydicom.dataset import Dataset
from twisted.internet import defer

import dimsekit_plugins.commitment as commitment
import dimsekit_plugins.verification as verification
from dimsekit import hookimpl, make_plugin_manager
from dimsekit.config import ConfigError, from_mapping
from dimsekit.interfaces import StoredInstance
from dimsekit.nservice import _SCHEMA
from dimsekit.registry import ServiceClass
from dimsekit.testing import AssociationPair
from dimsekit_plugins.commitment import (
    DUPLICATE_TRANSACTION_UID,
    EVENT_ALL_COMMITTED,
    EVENT_SOME_FAILED,
    STORAGE_COMMITMENT_INSTANCE,
    STORAGE_COMMITMENT_PUSH,
    read_report,
    request_dataset,
)

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning")

SC = STORAGE_COMMITMENT_PUSH
CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
ROOT = "1.2.826.0.1.3680043.8.498.5150."
STORED = {ROOT + "1": CT, ROOT + "2": CT, ROOT + "3": MR}


class FakeArchive:
    """An IArchive whose lookup answers from a dict (synchronously)."""

    def __init__(self, instances: dict[str, str], broken: set[str] = frozenset()) -> None:
        self.instances = instances
        self.broken = broken
        self.looked_up: list[str] = []

    def lookup(self, uid: str) -> defer.Deferred:
        self.looked_up.append(uid)
        if uid in self.broken:
            return defer.fail(OSError("disk on fire"))
        if uid not in self.instances:
            return defer.succeed(None)
        return defer.succeed(StoredInstance(sop_class_uid=self.instances[uid], sop_instance_uid=uid))


class ArchivePlugin:
    def __init__(self, archive: FakeArchive | None) -> None:
        self.archive = archive

    @hookimpl
    def dimsekit_archive(self, config):
        return self.archive


class Listener:
    """The SCU's side of a separate association: the Storage Commitment
    context with the SCU role, and an N-EVENT-REPORT handler."""

    def __init__(self, status: int = 0x0000) -> None:
        self.reports: list[tuple[int, Dataset, Any]] = []
        self.status = status

    def handle(self, request: Any) -> int:
        self.reports.append((int(request.command["EventTypeID"]), request.dataset(), request.association))
        return self.status

    @hookimpl
    def dimsekit_service_classes(self):
        return [ServiceClass(name="commitment-scu", sop_classes=(SC,), scp_role=False, scu_role=True,
                             handlers={"N-EVENT-REPORT": self.handle})]


@pytest.fixture(autouse=True)
def fresh_service(monkeypatch):
    """The plugin's service is process-wide: undo what a test changes."""
    monkeypatch.setattr(commitment.service, "connect", commitment.service.connect)
    yield
    commitment.service._waiting.clear()
    commitment.service._busy.clear()


def make_scp(*, archive: FakeArchive | None = None, remotes: list[dict] | None = None, settings: dict | None = None,
             no_archive: bool = False) -> SimpleNamespace:
    archive = None if no_archive else (archive or FakeArchive(dict(STORED)))
    config = from_mapping({
        "plugins": {"commitment": {"backend": "memory", **(settings or {})}},
        "remote": remotes or [],
    })
    pm = make_plugin_manager(load_entrypoints=False, plugins=[commitment, verification, ArchivePlugin(archive)])
    pair = AssociationPair(pm, acceptor_config=config, requestor_ae_title="MODALITY")
    return SimpleNamespace(pair=pair, archive=archive, call=pair.result)


def open_scu(s: SimpleNamespace, **kwargs: Any) -> tuple[Any, list]:
    """An SCU association with an N-EVENT-REPORT handler; (association, reports)."""
    assoc = s.pair.associate(contexts=[SC, "1.2.840.10008.1.1"], **kwargs)
    reports: list = []

    def on_report(request):
        reports.append((int(request.command["EventTypeID"]), request.dataset(), request.command))
        return 0x0000

    assoc.handlers[("N-EVENT-REPORT", SC)] = on_report
    return assoc, reports


def action(s, assoc, txn: str, refs: list[tuple[str, str]], *, instance: str = STORAGE_COMMITMENT_INSTANCE,
           action_type: int = 1, dataset: Any = "default"):
    ds = request_dataset(txn, refs) if dataset == "default" else dataset
    return s.call(assoc.n_action(SC, instance, action_type, ds))


def pending(s) -> list[str]:
    return s.call(commitment.service.registry_for(s.pair.acceptor).uids())


def refs(*uids: str, sop_class: str = CT) -> list[tuple[str, str]]:
    return [(sop_class, ROOT + u) for u in uids]


# -- the report on the same association ------------------------------------------------------------


def test_all_committed_on_the_same_association():
    s = make_scp()
    assoc, reports = open_scu(s)
    rsp = action(s, assoc, ROOT + "100", refs("1", "2"))
    assert rsp.status == 0x0000
    assert rsp.ActionTypeID == 1
    assert reports == []  # the response first: the checks start after it went out
    assert pending(s) == [ROOT + "100"]
    s.pair.advance(0)
    assert len(reports) == 1
    event_type, ds, command = reports[0]
    assert event_type == EVENT_ALL_COMMITTED
    assert command["AffectedSOPClassUID"] == SC
    assert command["AffectedSOPInstanceUID"] == STORAGE_COMMITMENT_INSTANCE
    txn, committed, failed = read_report(ds)
    assert txn == ROOT + "100"
    assert committed == refs("1", "2") and failed == []
    assert ds.RetrieveAETitle == "ACCEPTOR"
    assert "FailedSOPSequence" not in ds
    assert pending(s) == []  # delivered: forgotten
    assert s.archive.looked_up == [ROOT + "1", ROOT + "2"]
    assert s.call(assoc.echo()) == 0x0000


def test_failure_reasons():
    s = make_scp(archive=FakeArchive(dict(STORED), broken={ROOT + "2"}))
    assoc, reports = open_scu(s)
    wanted = [(CT, ROOT + "1"), (CT, ROOT + "2"), (CT, ROOT + "3"), (CT, ROOT + "404"), (CT, "not.a.uid..")]
    assert action(s, assoc, ROOT + "101", wanted).status == 0x0000
    s.pair.advance(0)
    event_type, ds, _ = reports[0]
    assert event_type == EVENT_SOME_FAILED
    txn, committed, failed = read_report(ds)
    assert committed == [(CT, ROOT + "1")]
    assert failed == [
        (CT, ROOT + "2", 0x0110),    # the archive failed: processing failure
        (CT, ROOT + "3", 0x0119),    # stored as MR: class / instance conflict
        (CT, ROOT + "404", 0x0112),  # no such object instance
        (CT, "not.a.uid..", 0x0112),
    ]
    assert pending(s) == []


def test_without_an_archive_every_instance_fails_0110():
    s = make_scp(no_archive=True)
    assoc, reports = open_scu(s)
    assert action(s, assoc, ROOT + "102", refs("1")).status == 0x0000
    s.pair.advance(0)
    assert reports[0][0] == EVENT_SOME_FAILED
    assert read_report(reports[0][1])[2] == [(CT, ROOT + "1", 0x0110)]
    assert "ReferencedSOPSequence" not in reports[0][1]


def test_a_duplicate_transaction_uid_fails_every_instance_with_0131():
    s = make_scp(settings={"report_delay": 5})
    assoc, reports = open_scu(s)
    assert action(s, assoc, ROOT + "103", refs("1")).status == 0x0000
    assert action(s, assoc, ROOT + "103", refs("2")).status == 0x0000
    s.pair.advance(5)
    assert sorted(r[0] for r in reports) == [EVENT_ALL_COMMITTED, EVENT_SOME_FAILED]
    duplicate = next(r[1] for r in reports if r[0] == EVENT_SOME_FAILED)
    assert read_report(duplicate)[2] == [(CT, ROOT + "2", DUPLICATE_TRANSACTION_UID)]
    assert pending(s) == []


# -- N-ACTION refusals: each answered, the association survives --------------------------------------


def _bad(**values: Any) -> Dataset:
    ds = request_dataset(ROOT + "7", refs("1"))
    with warnings.catch_warnings():  # pydicom warns about the invalid UID on purpose here
        warnings.simplefilter("ignore")
        for keyword, value in values.items():
            if value is None:
                delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize(
    ("kwargs", "status", "tags"),
    [
        ({"dataset": _bad(TransactionUID=None)}, 0x0120, [0x00081195]),
        ({"dataset": _bad(ReferencedSOPSequence=None)}, 0x0120, [0x00081199]),
        ({"dataset": _bad(TransactionUID="")}, 0x0121, [0x00081195]),
        ({"dataset": _bad(ReferencedSOPSequence=[])}, 0x0121, [0x00081199]),
        ({"dataset": _bad(TransactionUID="1.2.x")}, 0x0106, [0x00081195]),
        ({"dataset": None}, 0x0120, [0x00081195, 0x00081199]),
        ({"instance": "1.2.3.4"}, 0x0112, None),
        ({"action_type": 2}, 0x0123, None),
    ],
)
def test_refused_requests(kwargs, status, tags, logged_failures):
    s = make_scp()
    assoc, reports = open_scu(s)
    rsp = action(s, assoc, ROOT + "104", refs("1"), **kwargs)
    assert rsp.status == status
    if tags is not None:
        assert list(rsp.AttributeIdentifierList) == tags
    if status == 0x0123:
        assert rsp.ActionTypeID == 2
    s.pair.advance(1)
    assert reports == [] and pending(s) == []
    assert s.call(assoc.echo()) == 0x0000 and not assoc.ended
    assert logged_failures == []


def test_an_item_without_its_instance_uid_is_0120():
    s = make_scp()
    assoc, _ = open_scu(s)
    ds = request_dataset(ROOT + "105", refs("1"))
    del ds.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
    rsp = action(s, assoc, "", [], dataset=ds)
    assert rsp.status == 0x0120
    assert "ReferencedSOPInstanceUID" in rsp.ErrorComment


@pytest.mark.parametrize("keyword", ["ReferencedSOPClassUID", "ReferencedSOPInstanceUID"])
def test_an_item_with_several_uids_is_0106(keyword):
    s = make_scp()
    assoc, _ = open_scu(s)
    ds = request_dataset(ROOT + "106", refs("1"))
    item = ds.ReferencedSOPSequence[0]
    setattr(item, keyword, [str(getattr(item, keyword)), ROOT + "7"])
    rsp = action(s, assoc, "", [], dataset=ds)
    assert rsp.status == 0x0106
    assert keyword in rsp.ErrorComment
    s.pair.advance(1)
    assert pending(s) == []


@pytest.mark.parametrize("call", ["n_get", "n_set", "n_create", "n_delete"])
def test_other_operations_are_0211(call):
    s = make_scp()
    assoc, _ = open_scu(s)
    if call == "n_get":
        rsp = s.call(assoc.n_get(SC, STORAGE_COMMITMENT_INSTANCE))
    elif call == "n_set":
        rsp = s.call(assoc.n_set(SC, STORAGE_COMMITMENT_INSTANCE, Dataset()))
    elif call == "n_create":
        rsp = s.call(assoc.n_create(SC, None, Dataset()))
    else:
        rsp = s.call(assoc.n_delete(SC, STORAGE_COMMITMENT_INSTANCE))
    assert rsp.status == 0x0211


# -- the report on another association ------------------------------------------------------------


def listening_requestor(s: SimpleNamespace, listener: Listener) -> AssociationPair:
    """The requestor (MODALITY) listening as SCU of Storage Commitment; the SCP
    reaches it through ``service.connect``."""
    other = AssociationPair(
        make_plugin_manager(load_entrypoints=False, plugins=[listener]),
        reactor=s.pair.reactor, acceptor_ae_title="MODALITY", requestor_ae_title="UNUSED",
    )
    calls: list[dict] = []

    def connect(ae, remote, **kwargs):
        calls.append({"remote": remote, **kwargs})
        return ae.associate(endpoint=other.endpoint, called=remote.ae_title, **kwargs)

    commitment.service.connect = connect
    other.calls = calls
    return other


def settle(*pairs: AssociationPair, seconds: float = 0.0) -> None:
    for _ in range(20):
        for pair in pairs:
            pair.pump()
        pairs[0].advance(seconds / 20)
    for pair in pairs:
        pair.pump()


MODALITY = {"ae_title": "MODALITY", "host": "127.0.0.1", "port": 11113}


def test_requestor_gone_report_on_a_new_association_with_role_selection():
    s = make_scp(remotes=[MODALITY])
    listener = Listener()
    other = listening_requestor(s, listener)
    assoc, reports = open_scu(s)
    assert action(s, assoc, ROOT + "110", refs("1", "404")).status == 0x0000
    s.call(assoc.release())  # the SCU leaves at once, as PS3.4 J.3.3 allows
    settle(s.pair, other)
    assert reports == []
    assert len(listener.reports) == 1
    event_type, ds, incoming = listener.reports[0]
    assert event_type == EVENT_SOME_FAILED
    assert read_report(ds) == (ROOT + "110", refs("1"), [(CT, ROOT + "404", 0x0112)])
    # the SCP asked to be SCP only, and that is what the requestor side got
    (call,) = other.calls
    assert call["roles"] == {SC: (False, True)}
    assert call["remote"].ae_title == "MODALITY"
    assert incoming.calling_ae_title == "ACCEPTOR" and not incoming.is_requestor
    context = incoming.negotiated.context_for(SC, as_scu=True)
    assert context is not None and context.local_scu and not context.local_scp
    assert incoming.ended == "released by the peer"  # released after the report
    assert pending(s) == []


def test_unreachable_requestor_is_retried_then_waits_for_it_to_come_back():
    s = make_scp(remotes=[MODALITY], settings={"retry_interval": 10, "max_attempts": 2})
    attempts: list[str] = []

    def refuse(ae, remote, **kwargs):
        attempts.append(remote.ae_title)
        return defer.fail(ConnectionRefusedError("nobody home"))

    commitment.service.connect = refuse
    assoc, reports = open_scu(s)
    assert action(s, assoc, ROOT + "111", refs("1")).status == 0x0000
    s.call(assoc.release())
    s.pair.advance(0)
    assert attempts == ["MODALITY"]
    s.pair.advance(10)
    assert attempts == ["MODALITY"] * 2
    s.pair.advance(100)
    assert attempts == ["MODALITY"] * 2  # max_attempts reached: no more tries
    assert pending(s) == [ROOT + "111"]
    # the requestor associates again (for anything, with the commitment context): the report goes there
    again, reports = open_scu(s)
    s.pair.advance(0)
    assert [r[0] for r in reports] == [EVENT_ALL_COMMITTED]
    assert read_report(reports[0][1])[0] == ROOT + "111"
    assert pending(s) == []


def test_unknown_requestor_gets_the_report_when_it_associates_again():
    s = make_scp(settings={"report_delay": 1})
    assoc, _ = open_scu(s)
    assert action(s, assoc, ROOT + "112", refs("2")).status == 0x0000
    s.call(assoc.release())
    s.pair.advance(1)
    assert pending(s) == [ROOT + "112"]
    # an association without the commitment context does not get it
    plain = s.pair.associate(contexts=["1.2.840.10008.1.1"])
    s.pair.advance(0)
    assert pending(s) == [ROOT + "112"]
    s.call(plain.release())
    again, reports = open_scu(s)
    s.pair.advance(1)  # report_delay applies here too
    assert [r[0] for r in reports] == [EVENT_ALL_COMMITTED]
    assert pending(s) == []


def test_a_report_its_requestor_refuses_on_every_association_is_given_up_after_max_attempts():
    """Found by fuzzing the node: an SCU that asks for commitment but answers every report
    0211H had each of its reports sent again on each association it opened, two log lines
    each, and kept for ever -- the pile grew with each request."""
    from twisted.logger import formatEvent, globalLogPublisher

    said: list[str] = []

    def observe(event):
        if event.get("log_namespace") == "dimsekit.commitment":
            said.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        s = make_scp(settings={"max_attempts": 3})  # an unknown requestor: it is reported to when it comes
        offered = []
        for n in range(5):
            assoc, _ = open_scu(s)
            assoc.handlers[("N-EVENT-REPORT", SC)] = lambda request, n=n: offered.append(n) or 0x0211
            if n == 0:
                assert action(s, assoc, ROOT + "115", refs("1")).status == 0x0000
            s.pair.advance(0)
            s.call(assoc.release())
            s.pair.advance(0)
    finally:
        globalLogPublisher.removeObserver(observe)
    assert offered == [0, 1, 2]  # refused three times, then not offered again
    assert pending(s) == []
    assert commitment.service._waiting == {} or all(not w for w in commitment.service._waiting.values())
    given_up = [line for line in said if "given up" in line]
    assert given_up == [f"storage commitment {ROOT}115: MODALITY refused the report 3 times; it is given up "
                        "(max_attempts; the requestor may ask again)"]


def test_a_waiting_duplicates_report_does_not_take_the_place_of_the_original():
    """The SCU re-sends a Transaction UID whose report waits for it, and leaves before
    either report goes: both reports wait, and both reach it when it comes back."""
    s = make_scp(settings={"report_delay": 1})
    assoc, _ = open_scu(s)
    assert action(s, assoc, ROOT + "114", refs("1")).status == 0x0000
    s.call(assoc.release())
    s.pair.advance(1)
    assert pending(s) == [ROOT + "114"]
    again, _ = open_scu(s)
    assert action(s, again, ROOT + "114", refs("2")).status == 0x0000
    s.call(again.release())
    s.pair.advance(1)
    third, reports = open_scu(s)
    s.pair.advance(1)
    assert sorted((r[0], read_report(r[1])) for r in reports) == [
        (EVENT_ALL_COMMITTED, (ROOT + "114", refs("1"), [])),
        (EVENT_SOME_FAILED, (ROOT + "114", [], [(CT, ROOT + "2", DUPLICATE_TRANSACTION_UID)])),
    ]
    assert pending(s) == []


def test_a_failure_status_from_the_scu_on_the_same_association_tries_a_new_one():
    s = make_scp(remotes=[MODALITY])
    listener = Listener()
    other = listening_requestor(s, listener)
    assoc, _ = open_scu(s)
    assoc.handlers[("N-EVENT-REPORT", SC)] = lambda request: 0x0110
    assert action(s, assoc, ROOT + "113", refs("1")).status == 0x0000
    settle(s.pair, other)
    assert [r[0] for r in listener.reports] == [EVENT_ALL_COMMITTED]
    assert pending(s) == []


# -- settings -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"retry_interval": 0}, "retry_interval"),
        ({"retry_interval": "soon"}, "retry_interval"),
        ({"max_attempts": -1}, "max_attempts"),
        ({"max_attempts": 1.5}, "max_attempts"),
        ({"report_delay": -1}, "report_delay"),
        ({"backend": "paper"}, "backend"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_bad_settings_name_the_key(section, key):
    config = from_mapping({"plugins": {"commitment": section}})
    with pytest.raises(ConfigError, match=f"plugins.commitment.{key}"):
        commitment.dimsekit_configure(config)


def test_settings_defaults(tmp_path):
    config = from_mapping({"node": {"data_dir": str(tmp_path)}})
    settings = commitment.Settings.from_config(config)
    assert (settings.backend, settings.retry_interval, settings.max_attempts) == ("sqlite", 60.0, 10)
    assert settings.database_path(config) == tmp_path.resolve() / "dimsekit.sqlite"


@pytest.mark.filterwarnings("ignore:Expected explicit VR:UserWarning")
@pytest.mark.parametrize(
    "payload",
    [
        b"\x08\x00\x95\x11\xff\xff\x00\x00",  # Transaction UID claiming 65535 bytes: cannot be decoded
        b"\x08\x00\x99\x11\x04\x00\x00\x00\x01\x02\x03\x04",  # Referenced SOP Sequence that is no sequence
    ],
)
def test_undecodable_action_information_is_answered_without_a_traceback(payload, logged_failures):
    s = make_scp()
    assoc, reports = open_scu(s)
    rsp = s.call(assoc.n_action(SC, STORAGE_COMMITMENT_INSTANCE, 1, payload))
    assert rsp.status in (0x0106, 0x0110, 0x0120)
    s.pair.advance(1)
    assert reports == [] and pending(s) == []
    assert s.call(assoc.echo()) == 0x0000 and not assoc.ended
    assert logged_failures == []


@pytest.mark.parametrize("name", ["plain", "what?mode=rw", "a#b", "100%25"])
def test_pending_requests_are_counted_wherever_the_database_is(tmp_path, name):
    folder = tmp_path / name
    folder.mkdir()
    path = folder / "nservice.sqlite"
    with sqlite3.connect(path) as db:
        db.execute(_SCHEMA)
        for uid in ("1.2.3", "1.2.4"):
            db.execute("INSERT INTO nservice_instance VALUES ('commitment', ?, '1.2', '{}', '', '')", (uid,))
        db.execute("INSERT INTO nservice_instance VALUES ('mpps', '1.2.5', '1.2', '{}', '', '')")
    db.close()
    assert commitment._count_pending(path) == 2


def test_the_cli_reports_failure_reasons_a_peer_sent_in_any_form(capsys):
    # a report's Failure Reason with two values (test_fuzz_cli seed 29) ended `commit --wait`
    # in a traceback (int() of a list)
    from pathlib import Path

    from dimsekit.cli.commit import _print_report

    report = Dataset()
    items = []
    for uid, reason in (("1.1", [0x0112, 0x0110]), ("1.2", None), ("1.3", 0x0122), ("1.4", 0)):
        item = Dataset()
        item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        item.ReferencedSOPInstanceUID = uid
        if reason is not None:
            item.FailureReason = reason
        items.append(item)
    report.FailedSOPSequence = items
    references = [("1.2.840.10008.5.1.4.1.1.2", f"1.{i}", Path(f"f{i}.dcm")) for i in range(1, 5)]
    assert _print_report(2, report, references) == 1
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[2] for line in lines[:4]] == ["0x0112", "0x0110", "0x0122", "0x0110"]
    assert lines[-1] == "Event Type 2: 0 committed, 4 failed"
    assert [reason for _c, _i, reason in read_report(report)[2]] == [0x0112, 0x0110, 0x0122, 0x0110]
