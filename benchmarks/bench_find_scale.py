"""C-FIND at scale: an archive index of 100,000 instances, queried over the network.

    python benchmarks/bench_find_scale.py                  # 100,000 instances, 3 rounds
    python benchmarks/bench_find_scale.py --instances 20000 --rounds 1
    python benchmarks/bench_find_scale.py --image-level    # also stream every instance (slow)

1. Builds ``index.sqlite`` with the archive's own index code
   (:func:`dimsekit_plugins.archive.index.put`, one instance at a time, as the
   archive does), from generated metadata: patients with 2 studies of 5 series
   of 10 instances each (for 100,000 instances: 1,000 patients, 2,000 studies,
   10,000 series), a few names non-ASCII.  No files: the Q/R plugin reads the
   index only for C-FIND.
2. Starts a server process (this script with ``--serve``): an
   ApplicationEntity with the verification and queryretrieve plugins whose
   query index is that file (:func:`dimsekit_plugins.qr.common.set_index`),
   listening on a free 127.0.0.1 port.  (A full node would first reconcile the
   archive and drop rows that have no file.)
3. From this process, dimsekit's SCU sends a study-level wildcard C-FIND
   (Study Root; PatientName ``*`` plus the usual return keys, Modalities in
   Study and Number of Study Related Instances among them) and measures the
   time to the first pending response and to the final one, ``--rounds``
   times on one association each; optionally the same at IMAGE level (every
   instance streamed).
4. Reports the server's peak RSS (VmHWM) before and after the queries next to
   the size of the index file: the queries do not load the index.

Results: printed, and written to ``benchmarks/results/find-scale.{json,md}``.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _harness import (  # noqa: E402
    Servers,
    environment,
    fmt,
    free_port,
    median,
    save,
    table,
    temp_dir,
    vm_hwm_kib,
)

ROOT = "1.2.826.0.1.3680043.9.7433.77"
CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
MODALITIES = ("CT", "MR", "CR", "US", "OT")
NAMES = ("SMITH", "JONES", "Müller", "García", "DOE", "LEE", "山田", "NGUYEN", "BROWN", "O'BRIEN")
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"


def build_index(path: Path, instances: int, *, per_series: int = 10, series_per_study: int = 5,
                studies_per_patient: int = 2) -> dict[str, int]:
    """Fill an index with ``instances`` generated instances through the archive's index code."""
    from dimsekit_plugins.archive import index

    rng = random.Random(7433)
    conn = index.connect(str(path))
    per_patient = per_series * series_per_study * studies_per_patient
    patients = max(1, instances // per_patient)
    made = 0
    started = time.perf_counter()
    for p in range(patients):
        name = f"{rng.choice(NAMES)}^{'ABCDEFGHIJ'[p % 10]}{p:05d}"
        charset = None if name.isascii() else "ISO_IR 192"
        for s in range(studies_per_patient):
            study = f"{ROOT}.1.{p}.{s}"
            date = f"{2015 + rng.randrange(10)}{rng.randrange(1, 13):02d}{rng.randrange(1, 29):02d}"
            for e in range(series_per_study):
                series = f"{study}.{e}"
                modality = MODALITIES[(p + e) % len(MODALITIES)]
                for n in range(per_series):
                    if made >= instances:
                        break
                    uid = f"{series}.{n}"
                    index.put(conn, index.InstanceRecord(
                        sop_instance_uid=uid, sop_class_uid=CT if modality == "CT" else MR,
                        series_instance_uid=series, study_instance_uid=study,
                        transfer_syntax_uid="1.2.840.10008.1.2.1", path=f"x/{uid}.dcm", size=1,
                        received_at="2024-01-01T00:00:00.000+00:00", specific_character_set=charset,
                        instance_number=n + 1, patient_id=f"PID{p:06d}", patient_name=name,
                        patient_birth_date="19700101", patient_sex="MF"[p % 2], study_date=date,
                        study_time=f"{rng.randrange(24):02d}{rng.randrange(60):02d}00",
                        accession_number=f"ACC{p:06d}{s}", study_id=str(s + 1),
                        study_description=f"STUDY {s}", modality=modality, series_number=e + 1,
                        series_description=f"SERIES {e}",
                    ))
                    made += 1
    studies = conn.execute("SELECT COUNT(*) FROM study").fetchone()[0]
    conn.close()
    return {"instances": made, "patients": patients, "studies": studies,
            "build_seconds": round(time.perf_counter() - started, 1)}


# -- the server process ---------------------------------------------------------------------------


def serve(db: Path, port: int) -> None:
    """An AE answering C-FIND from ``db`` (run in a child process)."""
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    import dimsekit_plugins.verification as verification
    from dimsekit.ae import ApplicationEntity
    from dimsekit.config import Config, NodeConfig
    from dimsekit.plugin import make_plugin_manager
    from dimsekit_plugins.qr import common
    from dimsekit_plugins.qr import plugin as qr
    from dimsekit_plugins.qr.index import QueryIndex

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)], redirectStandardIO=False)
    pm = make_plugin_manager(load_entrypoints=False, plugins=[verification, qr])
    ae = ApplicationEntity("QRSCALE", config=Config(node=NodeConfig(ae_title="QRSCALE")), plugin_manager=pm)
    common.set_index(ae, QueryIndex(db, reactor))
    ae.listen(port)
    reactor.run()


# -- the client -------------------------------------------------------------------------------------


async def _query(port: int, level: str) -> dict[str, Any]:
    from pydicom.dataset import Dataset

    from dimsekit.ae import ApplicationEntity
    from dimsekit.plugin import make_plugin_manager

    ae = ApplicationEntity("BENCH", plugin_manager=make_plugin_manager(load_entrypoints=False))
    assoc = await ae.associate("127.0.0.1", port, called="QRSCALE", contexts=[STUDY_ROOT_FIND])
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "*"
    for keyword in ("PatientID", "PatientBirthDate", "StudyDate", "StudyTime", "AccessionNumber", "StudyID",
                    "StudyInstanceUID", "StudyDescription", "ModalitiesInStudy", "NumberOfStudyRelatedSeries",
                    "NumberOfStudyRelatedInstances"):
        setattr(ds, keyword, "")
    if level == "IMAGE":
        for keyword in ("SeriesInstanceUID", "SOPInstanceUID", "InstanceNumber"):
            setattr(ds, keyword, "")
    first: list[float] = []
    count = 0

    def on_pending(response: Any) -> None:
        nonlocal count
        count += 1
        if not first:
            first.append(time.perf_counter())

    started = time.perf_counter()
    operation = assoc.find(ds, STUDY_ROOT_FIND, on_pending=on_pending)
    operation.responses = _Discard()  # keep nothing: the client measures, it does not hold the results
    final = await operation.result
    ended = time.perf_counter()
    await assoc.release()
    return {
        "status": f"0x{final.status:04X}",
        "matches": count,
        "first_ms": (first[0] - started) * 1000 if first else None,
        "total_s": ended - started,
    }


class _Discard(list):
    def append(self, item: Any) -> None:  # noqa: D102 - drop the pending responses
        pass


def query(port: int, level: str) -> dict[str, Any]:
    from twisted.internet import defer, task

    result: dict[str, Any] = {}

    def main(reactor: Any) -> Any:
        return defer.Deferred.fromCoroutine(_query(port, level)).addCallback(result.update)

    try:
        task.react(main)
    except SystemExit as exc:
        if exc.code:
            raise
    return result


def run_query(port: int, level: str) -> dict[str, Any]:
    """One query in a fresh client process (the reactor cannot be restarted in this one)."""
    import json
    import subprocess

    out = subprocess.run([sys.executable, __file__, "--query", str(port), level],
                         capture_output=True, text=True, timeout=3600)
    if out.returncode:
        raise SystemExit(f"query failed: {out.stdout}{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--image-level", action="store_true", help="also stream every instance (IMAGE level)")
    parser.add_argument("--serve", nargs=2, metavar=("DB", "PORT"), help=argparse.SUPPRESS)
    parser.add_argument("--query", nargs=2, metavar=("PORT", "LEVEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(Path(args.serve[0]), int(args.serve[1]))
        return
    if args.query:
        import json

        print(json.dumps(query(int(args.query[0]), args.query[1])))
        return

    with temp_dir("dimsekit-find-scale-") as tmp, Servers() as servers:
        db = tmp / "index.sqlite"
        print(f"building an index of {args.instances:,} instances ...", flush=True)
        built = build_index(db, args.instances)
        size_mb = sum(p.stat().st_size for p in tmp.glob("index.sqlite*")) / 1e6
        print(f"  {built['patients']:,} patients, {built['studies']:,} studies, {built['instances']:,} instances;"
              f" {size_mb:.1f} MB on disk; built in {built['build_seconds']} s", flush=True)
        port = free_port()
        server = servers.start("find-scale-server", [sys.executable, __file__, "--serve", str(db), str(port)], port)
        rss_idle = vm_hwm_kib(server.pid)
        rounds = []
        for n in range(args.rounds):
            result = run_query(port, "STUDY")
            rounds.append(result)
            print(f"  study-level wildcard round {n + 1}: {result['matches']:,} matches, first response"
                  f" {result['first_ms']:.1f} ms, all in {result['total_s']:.2f} s ({result['status']})", flush=True)
        rss_study = vm_hwm_kib(server.pid)
        image = None
        if args.image_level:
            image = run_query(port, "IMAGE")
            print(f"  image-level wildcard: {image['matches']:,} matches, first response {image['first_ms']:.1f} ms,"
                  f" all in {image['total_s']:.1f} s ({image['status']})", flush=True)
        rss_after = vm_hwm_kib(server.pid)
        servers.stop(server)

    first = median([r["first_ms"] for r in rounds])
    total = median([r["total_s"] for r in rounds])
    rows = [
        ("instances / studies in the index", f"{built['instances']:,} / {built['studies']:,}"),
        ("index size on disk", f"{size_mb:.1f} MB"),
        ("study-level wildcard: time to first response (median)", f"{fmt(first, 1)} ms"),
        ("study-level wildcard: all matches (median)", f"{fmt(total, 2)} s for {rounds[0]['matches']:,} matches"),
        ("server peak RSS after start-up", f"{fmt((rss_idle or 0) / 1024, 1)} MB"),
        ("server peak RSS after the study-level queries", f"{fmt((rss_study or 0) / 1024, 1)} MB"),
    ]
    if image is not None:
        rows.append(("image-level wildcard: first response / all",
                     f"{fmt(image['first_ms'], 1)} ms / {fmt(image['total_s'], 1)} s for {image['matches']:,}"))
        rows.append(("server peak RSS after the image-level query", f"{fmt((rss_after or 0) / 1024, 1)} MB"))
    markdown = "# C-FIND at scale\n\n" + table(("measure", "value"), rows)
    print()
    print(markdown)
    data = {"built": built, "index_mb": size_mb, "rounds": rounds, "image": image,
            "rss_kib": {"idle": rss_idle, "after_study": rss_study, "after_all": rss_after},
            "environment": environment()}
    paths = save("find-scale", data, markdown)
    print("results:", ", ".join(str(p) for p in paths))


if __name__ == "__main__":
    main()
