"""Retrieve speed: C-MOVE and C-GET of one study from dimsekit's node, DCMTK's dcmqrscp and
pynetdicom's qrscp app (and Orthanc, when asked), in the same run.

    python benchmarks/bench_retrieve.py                      # 200 CT + 1000 small, 3 runs
    python benchmarks/bench_retrieve.py --quick              # 40 CT + 200 small, 1 run
    python benchmarks/bench_retrieve.py --servers dimsekit,dcmtk,pynetdicom,orthanc

The studies: ``bench_store.make_set``'s instances, 200 CT (512x512x16, ~525 KB each) in one
study and 1000 small ones (16x16, ~1.4 KB) in another.

Servers, each started once, on free 127.0.0.1 ports, loaded with both studies by DCMTK's
``storescu`` (not timed), stopped by PID at the end:

* ``dimsekit``   -- the node as shipped (``twistd -n dimsekit``), the move destination in
  ``[[remote]]``;
* ``dcmtk``      -- ``/usr/bin/dcmqrscp`` (a process per association, as it ships),
  ``TCP_NODELAY=1``;
* ``pynetdicom`` -- pynetdicom's ``qrscp`` app, ``TCP_NODELAY`` patched on every socket it
  makes, accepted or connected (``pynetdicom_scp.nodelay_everywhere``);
* ``orthanc``    -- (only when asked for) the Debian package's Orthanc, ``TCP_NODELAY=1``;
* ``dimsekit@DIR`` -- (only when asked for) the node from another source tree
  (``PYTHONPATH=DIR``): before/after of a change in one run.

Clients, DCMTK's, ``TCP_NODELAY=1``, one process a retrieve:

* ``move`` -- ``movescu -aem MOVESCU``; the destination, MOVESCU, is a DCMTK ``storescp -od
  DIR`` started for the retrieve: the server opens an association to it and sends the study
  there (``movescu --port`` as its own destination adds ~1 s to every C-MOVE, whoever serves
  it: it polls for the sub-association once a second);
* ``get``  -- ``getscu -od DIR``: the study comes back on the same association.

Each run retrieves each study from each server in turn (the order rotating run to run), into a
new directory (kept until the end: deleting thousands of files slows the next creations, see
``bench_store.py``).  Figures: instances/s over the client process's wall time, medians over
the runs; ratios dimsekit / the others.  Results: ``benchmarks/results/<name>.{json,md}``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (  # noqa: E402
    HERE,
    Servers,
    dcmtk,
    environment,
    fmt,
    free_port,
    median,
    orthanc,
    save,
    settle,
    table,
    temp_dir,
    twistd,
    wait_for_fast_creates,
)
from bench_store import make_set  # noqa: E402

SERVERS = ("dimsekit", "dcmtk", "pynetdicom")
TITLES = {"dimsekit": "DIMSEKIT", "dcmtk": "DCMQRSCP", "pynetdicom": "QRSCP", "orthanc": "ORTHANC"}
DESTINATION = "MOVESCU"
NODELAY = {"TCP_NODELAY": "1"}

PYNETDICOM_QRSCP = (
    "import sys; sys.path.insert(0, {here!r}); import pynetdicom_scp; pynetdicom_scp.nodelay_everywhere(); "
    "from pynetdicom.apps.qrscp.qrscp import main; main(sys.argv[1:])"
)


def start_server(servers: Servers, kind: str, port: int, base: Path, move_port: int):
    base.mkdir(parents=True, exist_ok=True)
    if kind == "dimsekit" or kind.startswith("dimsekit@"):
        config = base / "node.toml"
        config.write_text(f'[[remote]]\nae_title = "{DESTINATION}"\nhost = "127.0.0.1"\nport = {move_port}\n')
        argv = [twistd(), "-n", "--pidfile=", "--logfile", str(base / "node.log"), "dimsekit", "--config",
                str(config), "--port", str(port), "--interface", "127.0.0.1", "--data-dir", str(base / "data")]
        tree = kind.partition("@")[2]  # "dimsekit@DIR": the node from another source tree (an A/B)
        return servers.start(f"retrieve-{kind}".replace("/", "_"), argv, port, env={"PYTHONPATH": tree} if tree else None)
    if kind == "dcmtk":
        storage = base / "db"
        storage.mkdir()
        config = base / "dcmqrscp.cfg"
        config.write_text(
            f"NetworkTCPPort = {port}\nMaxPDUSize = 16384\nMaxAssociations = 16\n"
            f"HostTable BEGIN\nmovescu = ({DESTINATION}, 127.0.0.1, {move_port})\nHostTable END\n"
            "VendorTable BEGIN\nVendorTable END\n"
            f"AETable BEGIN\n{TITLES['dcmtk']} {storage} RW (10000, 4096mb) ANY\nAETable END\n"
        )
        return servers.start("retrieve-dcmtk", [dcmtk("dcmqrscp"), "-c", str(config), str(port)], port,
                             env=NODELAY, cwd=base)
    if kind == "pynetdicom":
        config = base / "qrscp.ini"
        config.write_text(
            f"[DEFAULT]\nae_title: {TITLES['pynetdicom']}\nport: {port}\nmax_pdu: 16382\nacse_timeout: 30\n"
            "dimse_timeout: 30\nnetwork_timeout: 30\nbind_address: 127.0.0.1\n"
            f"instance_location: {base / 'instances'}\ndatabase_location: {base / 'instances.sqlite'}\n"
            "log_identifier: False\n"
            f"[{DESTINATION}]\naddress: 127.0.0.1\nport: {move_port}\n"
        )
        argv = [sys.executable, "-c", PYNETDICOM_QRSCP.format(here=str(HERE)), "-c", str(config)]
        return servers.start("retrieve-pynetdicom", argv, port, cwd=base)
    if kind == "orthanc":
        argv = orthanc(base / "storage", port, DicomAet=TITLES["orthanc"], DicomAlwaysAllowMove=True,
                       DicomAlwaysAllowGet=True, DicomAlwaysAllowFind=True,
                       DicomModalities={"movescu": [DESTINATION, "127.0.0.1", move_port]})
        return servers.start("retrieve-orthanc", argv, port, env=NODELAY)
    raise SystemExit(f"unknown server {kind!r}")


def _title(kind: str) -> str:
    return TITLES[kind.partition("@")[0]]


def load(port: int, called: str, directory: Path) -> None:
    done = subprocess.run([dcmtk("storescu"), "-aec", called, "+sd", "127.0.0.1", str(port), str(directory)],
                          capture_output=True, text=True, timeout=900, env={**os.environ, **NODELAY})
    if done.returncode != 0:
        raise RuntimeError(f"loading {directory} into {called} failed: {done.stdout}{done.stderr}")


def retrieve(servers: Servers, how: str, port: int, called: str, study: str, out: Path, move_port: int) -> float:
    """One retrieve of ``study`` into ``out``: the client's wall seconds.  A C-MOVE's destination
    is a DCMTK ``storescp`` started for it (``movescu --port`` as its own destination waits for
    the sub-association in steps of a second: ~1 s on every C-MOVE, whoever the server)."""
    out.mkdir(parents=True)
    keys = ["-S", "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}"]
    destination = None
    if how == "move":
        destination = servers.start("retrieve-destination", [dcmtk("storescp"), "-aet", DESTINATION, "-od", str(out),
                                                             str(move_port)], move_port, env=NODELAY)
        argv = [dcmtk("movescu"), "-aet", "MOVER", "-aec", called, "-aem", DESTINATION, *keys, "127.0.0.1", str(port)]
    else:
        argv = [dcmtk("getscu"), "-aet", "GETSCU", "-aec", called, *keys, "-od", str(out), "127.0.0.1", str(port)]
    try:
        start = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True, timeout=1800, env={**os.environ, **NODELAY})
        seconds = time.perf_counter() - start
    finally:
        if destination is not None:
            time.sleep(0.2)  # its last file written after its last response
            servers.stop(destination)
    if done.returncode != 0:
        raise RuntimeError(f"{how} from {called} failed ({done.returncode}): {done.stdout[-2000:]}{done.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 run, 40 CT, 200 small")
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--ct", type=int, default=None, help="CT instances in their study (default 200)")
    parser.add_argument("--small", type=int, default=None, help="small instances in their study (default 1000)")
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--name", default="retrieve")
    args = parser.parse_args()
    runs = args.runs or (1 if args.quick else 3)
    n_ct = args.ct or (40 if args.quick else 200)
    n_small = args.small or (200 if args.quick else 1000)
    kinds = [k.strip() for k in args.servers.split(",") if k.strip()]

    results: dict[str, Any] = {}
    with temp_dir("dimsekit-retrieve-") as work:
        from pydicom import dcmread

        studies = {}
        for name, count, rows in (("ct", n_ct, 512), ("small", n_small, 16)):
            directory = work / "sets" / name
            nbytes = make_set(directory, count, rows, name.upper())
            uid = str(dcmread(next(directory.iterdir()), stop_before_pixels=True).StudyInstanceUID)
            studies[name] = (directory, count, nbytes, uid)
        move_port = free_port()
        with Servers() as servers:
            started = {}
            for kind in kinds:
                started[kind] = start_server(servers, kind, free_port(), work / "servers" / kind, move_port)
                for directory, _count, _bytes, _uid in studies.values():
                    load(started[kind].port, _title(kind), directory)
                print(f"{kind}: loaded", flush=True)
            wait_for_fast_creates(work)
            for study, (_directory, count, nbytes, uid) in studies.items():
                for how in ("move", "get"):
                    scenario = f"{how}-{study}"
                    results[scenario] = {"instances": count, "bytes": nbytes,
                                         "servers": {k: {"seconds": []} for k in kinds}}
                    for i in range(runs):
                        shift = i % len(kinds)
                        for kind in kinds[shift:] + kinds[:shift]:
                            settle([])
                            out = work / "out" / f"{scenario}-{kind}-{i}"
                            seconds = retrieve(servers, how, started[kind].port, _title(kind), uid, out, move_port)
                            got = sum(1 for p in out.iterdir() if p.is_file())
                            if got != count:
                                raise RuntimeError(f"{scenario} from {kind}: {got} files, {count} in the study")
                            results[scenario]["servers"][kind]["seconds"].append(seconds)
                            print(f"run {i + 1}/{runs} {scenario} <- {kind}: {count / seconds:,.1f} inst/s "
                                  f"({seconds:.2f} s)", flush=True)
                    for r in results[scenario]["servers"].values():
                        r["median_seconds"] = median(r["seconds"])
                        r["instances_per_s"] = count / r["median_seconds"]
                        r["mb_per_s"] = nbytes / 1e6 / r["median_seconds"]

    titles = {"move-ct": f"C-MOVE of {n_ct} CT", "get-ct": f"C-GET of {n_ct} CT",
              "move-small": f"C-MOVE of {n_small} small", "get-small": f"C-GET of {n_small} small"}
    rows = []
    for scenario, r in results.items():
        ours = r["servers"].get("dimsekit")
        for kind, s in r["servers"].items():
            ratio = "" if ours is None or kind == "dimsekit" else f"{ours['instances_per_s'] / s['instances_per_s']:.2f}x"
            rows.append([titles[scenario], kind, fmt(s["instances_per_s"], 1), fmt(s["mb_per_s"], 1), ratio])
    markdown = (f"# Retrieve of one study to DCMTK's movescu / getscu, median of {runs} run(s)\n\n"
                + table(["retrieve", "server", "instances/s", "MB/s", "dimsekit / this"], rows))
    data = {"environment": environment(), "settings": vars(args), "results": results}
    json_path, md_path = save(args.name, data, markdown)
    print()
    print(markdown)
    print(f"results: {json_path} {md_path}")


if __name__ == "__main__":
    main()
