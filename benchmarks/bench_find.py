"""C-FIND speed: the queries a viewer's study list makes, against dimsekit's node, DCMTK's
dcmqrscp and pynetdicom's qrscp app (and Orthanc, when asked), in the same run.

    python benchmarks/bench_find.py                      # 500 studies of 4 instances, 3 runs
    python benchmarks/bench_find.py --quick              # 100 studies, 1 run
    python benchmarks/bench_find.py --servers dimsekit,dcmtk,pynetdicom,orthanc

The archive: ``--studies`` studies (500) of one series of 4 small instances (16x16), 500
patients, a study date each in 2025-2026, loaded into each server by DCMTK's ``storescu``
(not timed).  The servers are ``bench_retrieve.py``'s, started the same way.

The queries, Study Root, STUDY level, by DCMTK's ``findscu`` (``TCP_NODELAY=1``), each
repeated on one association (``--repeat``), with the return keys of a study list: Patient's
Name and ID, Study Date and Time, Accession Number, Study Description, Study Instance UID,
Modalities in Study, Number of Study Related Instances:

* ``all``     -- every study (Patient's Name ``*``): the list a viewer opens with; 5 times;
* ``patient`` -- one patient's studies, by Patient ID: 50 times;
* ``month``   -- a month of studies, by a Study Date range (about 1/24 of them): 20 times.

Figures: milliseconds a query and responses/s over the client process's wall time (its
association included, once for the repeats), medians over the runs; the ratio is of queries
a second.  Each answer's count is compared with the data: pynetdicom's qrscp answers a
STUDY-level query with a response per matching instance, which is counted and said.
Results: ``benchmarks/results/<name>.{json,md}``.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Servers, dcmtk, environment, fmt, free_port, median, save, table, temp_dir  # noqa: E402
from bench_retrieve import NODELAY, SERVERS, _title, load, start_server  # noqa: E402
from bench_store import ct_instance  # noqa: E402

RETURN_KEYS = ("PatientName", "PatientID", "StudyDate", "StudyTime", "AccessionNumber", "StudyDescription",
               "StudyInstanceUID", "ModalitiesInStudy", "NumberOfStudyRelatedInstances")
REPEATS = {"all": 5, "patient": 50, "month": 20}


def make_studies(directory: Path, studies: int, per_study: int, seed: int = 26) -> dict[str, Any]:
    """``studies`` studies of ``per_study`` small CT instances in ``directory``; what the
    queries should find: the patient of the ``patient`` query and the studies of each month."""
    from pydicom.uid import generate_uid

    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    pixels = bytes(16 * 16 * 2)
    months: dict[str, int] = {}
    for s in range(studies):
        study, series = generate_uid(), generate_uid()
        date = f"{rng.choice((2025, 2026))}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
        months[date[:6]] = months.get(date[:6], 0) + 1
        for i in range(per_study):
            ds = ct_instance(study, series, i + 1, 16, pixels, name=f"PATIENT{s:05d}^FIND", patient_id=f"FIND-{s:05d}")
            ds.PatientBirthDate = "19700101"
            ds.PatientSex = "O"
            ds.AccessionNumber = f"ACC{s:06d}"
            ds.StudyDate = date
            ds.StudyTime = f"{rng.randint(7, 19):02d}{rng.randint(0, 59):02d}00"
            ds.StudyDescription = "CT CHEST"
            ds.ReferringPhysicianName = "REF^ERRING"
            ds.save_as(directory / f"s{s:05d}-{i}.dcm", enforce_file_format=True)
    month = max(sorted(months), key=lambda m: months[m])  # the busiest month
    patient = f"FIND-{studies // 2:05d}"
    return {"month": month, "month_studies": months[month], "patient": patient}


def find(port: int, called: str, keys: dict[str, str], repeat: int) -> tuple[float, int]:
    """``findscu --repeat`` of one STUDY-level query: (wall seconds, responses counted)."""
    argv = [dcmtk("findscu"), "-S", "-aet", "FINDSCU", "-aec", called, "--repeat", str(repeat),
            "-k", "QueryRetrieveLevel=STUDY"]
    for key in RETURN_KEYS:
        argv += ["-k", f"{key}={keys.get(key, '')}" if key in keys else key]
    argv += ["127.0.0.1", str(port)]
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, env={**os.environ, **NODELAY})
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"findscu {keys} at {called} failed ({done.returncode}): {done.stderr[-2000:]}")
    # findscu prints a "Find Response: N (Pending)" line per pending response
    responses = sum(1 for line in (done.stdout + done.stderr).splitlines() if "(Pending)" in line)
    return seconds, responses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 run, 100 studies")
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--studies", type=int, default=None, help="studies in the archive (default 500)")
    parser.add_argument("--per-study", type=int, default=4, help="instances a study (default 4)")
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--name", default="find")
    args = parser.parse_args()
    runs = args.runs or (1 if args.quick else 3)
    n_studies = args.studies or (100 if args.quick else 500)
    kinds = [k.strip() for k in args.servers.split(",") if k.strip()]

    results: dict[str, Any] = {}
    with temp_dir("dimsekit-find-") as work:
        data = work / "studies"
        facts = make_studies(data, n_studies, args.per_study)
        queries = {
            "all": ({"PatientName": "*"}, n_studies),
            "patient": ({"PatientID": facts["patient"]}, 1),
            "month": ({"StudyDate": f"{facts['month']}01-{facts['month']}31"}, facts["month_studies"]),
        }
        with Servers() as servers:
            started = {}
            for kind in kinds:
                started[kind] = start_server(servers, kind, free_port(), work / "servers" / kind, free_port())
                load(started[kind].port, _title(kind), data)
                print(f"{kind}: loaded", flush=True)
            for query, (keys, expected) in queries.items():
                repeat = REPEATS[query]
                results[query] = {"expected": expected, "repeat": repeat, "servers": {k: {"seconds": []} for k in kinds}}
                for i in range(runs):
                    shift = i % len(kinds)
                    for kind in kinds[shift:] + kinds[:shift]:
                        seconds, responses = find(started[kind].port, _title(kind), keys, repeat)
                        if responses != expected * repeat:
                            # pynetdicom's qrscp answers a STUDY-level query with a response per
                            # matching instance: counted, and said, not refused
                            print(f"{query} at {kind}: {responses / repeat:g} responses a query, "
                                  f"{expected} studies match", flush=True)
                        results[query]["servers"][kind]["seconds"].append(seconds)
                        results[query]["servers"][kind]["responses"] = responses // repeat
                        print(f"run {i + 1}/{runs} {query} <- {kind}: {seconds / repeat * 1e3:,.1f} ms a query "
                              f"({expected} match(es))", flush=True)
                for r in results[query]["servers"].values():
                    r["median_seconds"] = median(r["seconds"])
                    r["queries_per_s"] = repeat / r["median_seconds"]
                    r["responses_per_s"] = r["responses"] * repeat / r["median_seconds"]

    titles = {"all": f"every study ({n_studies})", "patient": "one patient's study",
              "month": f"a month's studies ({facts['month_studies']})"}
    rows = []
    for query, r in results.items():
        ours = r["servers"].get("dimsekit")
        for kind, s in r["servers"].items():
            ratio = "" if ours is None or kind == "dimsekit" else f"{ours['queries_per_s'] / s['queries_per_s']:.2f}x"
            rows.append([titles[query], kind, fmt(s["median_seconds"] / r["repeat"] * 1e3, 2), s["responses"],
                         fmt(s["responses_per_s"], 0), ratio])
    markdown = (f"# C-FIND, Study Root, STUDY level, by DCMTK's findscu; median of {runs} run(s)\n\n"
                + table(["query", "server", "ms a query", "responses", "responses/s", "dimsekit / this"], rows))
    out = {"environment": environment(), "settings": vars(args), "facts": facts, "results": results}
    json_path, md_path = save(args.name, out, markdown)
    print()
    print(markdown)
    print(f"results: {json_path} {md_path}")


if __name__ == "__main__":
    main()
