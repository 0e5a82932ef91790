"""C-STORE throughput from DCMTK storescu: dimsekit vs pynetdicom vs DCMTK storescp.

    python benchmarks/bench_store.py            # 3 runs: 200 CT, 1000 small, 8x50 CT, Nagle-on
    python benchmarks/bench_store.py --quick    # 1 run, fewer instances
    python benchmarks/bench_store.py --runs 5 --skip concurrent,nagle

The sender is always DCMTK ``/usr/bin/storescu`` (by that path: pynetdicom
installs look-alike scripts earlier on PATH), every instance on one
association (``+sd DIR``), ``TCP_NODELAY=1`` in its environment (DCMTK then
turns Nagle off).  The data sets are generated once by pydicom into a
temporary directory (Explicit VR Little Endian, CT Image Storage):

* CT: 512x512 16-bit pixels (~525 KB a file), 8 groups of ``--ct-per-group``
  (50); the single-association scenario sends the first 4 groups (200);
* small: ``--small`` (1000) CT instances of 16x16 pixels (~1.4 KB a file).

Receivers, each one started fresh for every run (empty output directory, so
no run meets the previous run's SOP Instance UIDs) on a free 127.0.0.1 port,
and stopped by its PID afterwards, whatever happens:

* ``dimsekit``   -- the node as shipped: ``twistd -n --pidfile= --logfile LOG
  dimsekit --port N --interface 127.0.0.1 --data-dir DIR``, which stores
  durably (fsync before the success status) into its archive;
* ``pynetdicom`` -- pynetdicom's own ``storescp`` app (``-od DIR``: it decodes
  each data set and writes it with pydicom), with ``TCP_NODELAY`` patched on
  its accepted sockets as ``pynetdicom_scp.py`` does;
* ``dcmtk``      -- ``/usr/bin/storescp -od DIR``, ``TCP_NODELAY=1``;
* ``dimsekit@DIR`` -- (only when asked for) the node from another source
  tree, ``PYTHONPATH=DIR``: before/after of a change in one run;
* ``dcmtk-fsync`` -- (only when asked for) DCMTK's storescp as ``dcmtk``, with
  ``fsync_preload.c`` (built here with ``cc``) preloaded: each file it
  writes is fsynced as it is closed, then its directory, before storescp
  answers -- a C receiver at the durability dimsekit's archive gives (not
  its atomicity: storescp writes under the final name).
* ``orthanc`` -- (only when asked for) ``/usr/sbin/Orthanc`` as a Debian
  package ships it (``apt-get install orthanc``), storing into ``DIR``
  (files and its SQLite index, no compression), ``TCP_NODELAY=1`` (its
  network layer is DCMTK's): an archive like the node's, with a database,
  as a hospital runs it.  It does not fsync what it stores.

Scenarios (each run visits every receiver in turn, so that a noisy
neighbour slows them alike; figures are medians over runs, ratios are
ratios of the medians of the same run set):

* ``ct``         -- 200 CT instances on one association;
* ``small``      -- 1000 small instances on one association;
* ``small-seq``  -- the same with the Request Attributes and Procedure Code
  Sequences a modality copies from its worklist (one item each; the index
  keeps their items);
* ``concurrent`` -- 8 storescu processes at once, one group of 50 CT each
  (aggregate: all bytes / time until the last one finishes);
* ``nagle``      -- Nagle on: storescu *without* ``TCP_NODELAY``, to dimsekit
  and to DCMTK storescp as shipped (no ``TCP_NODELAY``); a subset
  (``--nagle-ct``, ``--nagle-small``) since DCMTK then crawls on delayed ACKs.

What the receivers stored is kept until the benchmark ends (a few GB in
the system's temporary directory): ext4 without a journal does not hand out
again, for a minute, an inode freed by a deletion, and while such inodes are around each
file created near them cost ~0.2-0.5 ms instead of ~20 us here.  Deleting a
receiver's files before the next one ran made every receiver pay that on
each instance (DCMTK, with the cheapest instances, relatively the most).
For the same reason the benchmark waits, before it starts, until creating a
file is cheap again (``_harness.wait_for_fast_creates``: up to 7 minutes
after many deletions -- an earlier run of it, a test run).  Between receivers, as
root, the page cache is dropped and the input files read back in
(``_harness.settle``): on a virtual machine whose host takes back freed
memory, later receivers otherwise ran up to ~2x slower than the first;
and twice the scenario's bytes of memory are touched and freed just before
each receiver starts (``_harness.prefault``), so that the pages it writes
into are ones the host still backs.

Timing, two figures per run:

* *wall*: the storescu process's wall time, start to exit.  It includes
  what storescu does before it connects -- it reads every file it was given
  to find their SOP classes (~30-50 ms for the 200 CT instances here) --
  the same for every receiver, so it pulls the ratios toward 1;
* *association*: from storescu's ``connect()`` to the receiver (the first
  one, with several senders) until the last storescu exits: the part the
  receiver has a hand in.  Taken with ``strace -f --seccomp-bpf -e
  trace=connect`` around storescu (no other system call is stopped: the
  timings with and without it are within the noise); without strace this
  figure is not reported.

MB = 10^6 bytes of the Part 10 files sent.
Every run checks storescu's exit status and that the receiver holds as many
files as were sent.  Results: ``benchmarks/results/store.{json,md}``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
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
    prefault,
    save,
    settle,
    table,
    temp_dir,
    twistd,
    wait_for_fast_creates,
)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MB = 1e6
RECEIVERS = ("dimsekit", "pynetdicom", "dcmtk")

# pynetdicom's storescp app with TCP_NODELAY patched on (see pynetdicom_scp.py).
PYNETDICOM_STORESCP = (
    "import sys; sys.path.insert(0, {here!r}); "
    "import pynetdicom_scp; from pynetdicom.transport import AssociationServer; "
    "AssociationServer.get_request = pynetdicom_scp._get_request_nodelay; "
    "from pynetdicom.apps.storescp.storescp import main; main(sys.argv[1:])"
)


# ---------------------------------------------------------------- data sets

def ct_instance(study: str, series: str, number: int, rows: int, pixels: bytes, *, name: str, patient_id: str) -> Any:
    """One CT instance (File Meta included, a new SOP Instance UID) of rows x rows 16-bit pixels."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.PatientName = name
    ds.PatientID = patient_id
    ds.StudyID = "1"
    ds.AccessionNumber = "A1"
    ds.StudyDate = "20260101"
    ds.Modality = "CT"
    ds.SeriesNumber = 1
    ds.InstanceNumber = number
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = rows
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.PixelData = pixels
    return ds


def make_set(directory: Path, count: int, rows: int, tag: str, sequences: bool = False) -> int:
    """``count`` CT instances of rows x rows 16-bit pixels in ``directory``; return total bytes.
    ``sequences``: each also carries the Request Attributes and Procedure Code Sequences a
    modality copies from its worklist (one item each), as most images from a hospital do."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.uid import generate_uid

    directory.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    pixels = os.urandom(rows * rows * 2)
    total = 0
    for i in range(count):
        ds = ct_instance(study, series, i + 1, rows, pixels, name=f"BENCH^{tag}", patient_id=f"BENCH-{tag}")
        if sequences:
            request = Dataset()
            request.RequestedProcedureID = "RP1"
            request.ScheduledProcedureStepID = "SPS1"
            request.AccessionNumber = "A1"
            request.RequestedProcedureDescription = "CT Thorax"
            request.StudyInstanceUID = study
            ds.RequestAttributesSequence = Sequence([request])
            code = Dataset()
            code.CodeValue = "CTCHEST"
            code.CodingSchemeDesignator = "LOCAL"
            code.CodeMeaning = "CT Chest"
            ds.ProcedureCodeSequence = Sequence([code])
        path = directory / f"{tag}{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        total += path.stat().st_size
    return total


# ---------------------------------------------------------------- receivers

def start_receiver(servers: Servers, kind: str, port: int, out: Path, *, nagle: bool = False, tls: Any = None):
    out.mkdir(parents=True, exist_ok=True)
    name = f"store-{kind}{'-nagle' if nagle else ''}{'-tls' if tls else ''}"
    if kind in ("dimsekit", "dimsekit-nofsync") or kind.startswith("dimsekit@"):
        log = out.parent / f"{out.name}.twistd.log"
        argv = [twistd(), "-n", "--pidfile=", "--logfile", str(log), "dimsekit"]
        config = ""
        if kind == "dimsekit-nofsync":  # not a shipping setting: what durability costs
            config += "[plugins.archive]\nfsync = false\n"
        tcp_port = port
        if tls is not None:  # the TLS listener on the port the sender uses, the plain one elsewhere
            config += (f'[tls]\ncertificate = "{tls.server_cert}"\nprivate_key = "{tls.server_key}"\n'
                       f'ca_certificates = ["{tls.ca}"]\nport = {port}\n')
            tcp_port = free_port()
        if config:
            path = out.parent / f"{out.name}.toml"
            path.write_text(config)
            argv += ["--config", str(path)]
        argv += ["--port", str(tcp_port), "--interface", "127.0.0.1", "--data-dir", str(out)]
        # "dimsekit@DIR": the node from another source tree (before/after in one run)
        env = {"PYTHONPATH": kind.partition("@")[2]} if "@" in kind else None
        return servers.start(name.replace("/", "_"), argv, port, env=env)
    if kind == "pynetdicom":
        if tls is not None:
            raise SystemExit("pynetdicom's storescp app has no TLS options: leave it out of --tls runs")
        argv = [sys.executable, "-c", PYNETDICOM_STORESCP.format(here=str(HERE)),
                "-ba", "127.0.0.1", "-od", str(out), str(port)]
        return servers.start(name, argv, port)
    if kind in ("dcmtk", "dcmtk-fsync"):
        env = {} if nagle else {"TCP_NODELAY": "1"}
        if kind == "dcmtk-fsync":
            env["LD_PRELOAD"] = str(fsync_preload(out.parent))
        tls_args = [] if tls is None else ["+tls", str(tls.server_key), str(tls.server_cert), "+cf", str(tls.ca)]
        return servers.start(name, [dcmtk("storescp"), *tls_args, "-od", str(out), str(port)], port, env=env)
    if kind == "orthanc":
        if tls is not None:
            raise SystemExit("the orthanc receiver has no TLS set-up here: leave it out of --tls runs")
        env = {} if nagle else {"TCP_NODELAY": "1"}
        return servers.start(name, orthanc(out, port), port, env=env)
    raise SystemExit(f"unknown receiver {kind!r}")


def fsync_preload(directory: Path) -> Path:
    """``fsync_preload.c`` built into ``directory`` (once), for the ``dcmtk-fsync`` receiver."""
    library = directory / "fsync_preload.so"
    if not library.exists():
        compiler = shutil.which("cc") or shutil.which("gcc")
        if compiler is None:
            raise SystemExit("receiver dcmtk-fsync needs a C compiler (cc) to build fsync_preload.c")
        subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(library), str(HERE / "fsync_preload.c"),
                        "-ldl"], check=True)
    return library


def stored_files(kind: str, out: Path) -> int:
    """How many instance files the receiver holds."""
    if kind.startswith("dimsekit") or kind == "orthanc":  # archives: instance files anywhere under the dir
        return sum(1 for p in out.rglob("*") if p.is_file() and _is_part10(p))
    return sum(1 for p in out.iterdir() if p.is_file())


def _is_part10(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


# ---------------------------------------------------------------- senders

def storescu_argv(port: int, dirs: list[Path], tls: Any = None) -> list[str]:
    argv = [dcmtk("storescu"), "-aet", "STORESCU", "-aec", "ANY-SCP", "+sd"]
    if tls is not None:
        argv += ["+tls", str(tls.client_key), str(tls.client_cert), "+cf", str(tls.ca)]
    return argv + ["127.0.0.1", str(port)] + [str(d) for d in dirs]


def sender_env(nagle: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
    if not nagle:
        env["TCP_NODELAY"] = "1"
    return env


STRACE = shutil.which("strace")


def traced_argv(argv: list[str], trace: Path) -> list[str]:
    """``argv`` under strace, recording only its connect() calls (CLOCK_REALTIME stamps)."""
    if STRACE is None:
        return argv
    return [STRACE, "-f", "--seccomp-bpf", "-qq", "-ttt", "-e", "trace=connect", "-o", str(trace)] + argv


def first_connect(trace: Path, port: int) -> float | None:
    """The time.time() of the first connect() to ``port`` in a trace of ``traced_argv``."""
    needle = f"sin_port=htons({port})"
    try:
        lines = trace.read_text(errors="replace").splitlines()
    except OSError:
        return None
    stamps = [float(line.split()[1]) for line in lines if "connect(" in line and needle in line]
    return min(stamps) if stamps else None


def send(port: int, groups: list[list[Path]], nagle: bool, logdir: Path, tls: Any = None) -> tuple[float, float | None]:
    """One storescu per group, all at once.

    Returns the wall seconds until the last one exits, and the seconds from
    the first one's connect() to that exit (None without strace).
    """
    procs = []
    traces = [logdir / f"storescu{i}.trace" for i in range(len(groups))]
    for trace in traces:
        trace.unlink(missing_ok=True)
    start = time.perf_counter()
    try:
        for i, dirs in enumerate(groups):
            log = (logdir / f"storescu{i}.log").open("wb")
            procs.append((subprocess.Popen(traced_argv(storescu_argv(port, dirs, tls), traces[i]), stdout=log,
                                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                           env=sender_env(nagle)), log))
        # A plain wait(): Popen.wait(timeout) polls with sleeps of up to 50 ms,
        # which quantised the timing of a 0.6 s run by 8 %.  A watchdog bounds it.
        watchdog = threading.Timer(1800, lambda: [p.kill() for p, _ in procs if p.poll() is None])
        watchdog.daemon = True
        watchdog.start()
        try:
            for proc, _ in procs:
                proc.wait()
            elapsed = time.perf_counter() - start
            ended = time.time()
        finally:
            watchdog.cancel()
    finally:
        for proc, log in procs:  # on failure: stop every sender we started, by PID
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    bad = [p.returncode for p, _ in procs if p.returncode != 0]
    if bad:
        tail = (logdir / "storescu0.log").read_text(errors="replace")[-1500:]
        raise RuntimeError(f"storescu failed with {bad}: {tail}")
    connects = [first_connect(trace, port) for trace in traces]
    association = None
    if STRACE is not None and all(c is not None for c in connects):
        association = ended - min(c for c in connects if c is not None)
    return elapsed, association


# ---------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 run, 80 CT (8x10), 300 small, small Nagle subset")
    parser.add_argument("--runs", type=int, default=None, help="runs per receiver and scenario (default 3, quick 1)")
    parser.add_argument("--ct-per-group", type=int, default=None, help="CT instances per group of 8 (default 50)")
    parser.add_argument("--small", type=int, default=None, help="small instances (default 1000)")
    parser.add_argument("--nagle-ct", type=int, default=None, help="CT instances in the Nagle-on run (default 50)")
    parser.add_argument("--nagle-small", type=int, default=None, help="small instances in the Nagle-on run (default 100)")
    parser.add_argument("--receivers", default=",".join(RECEIVERS))
    parser.add_argument("--skip", default="",
                        help="comma list of scenarios to skip: ct,small,small-seq,concurrent,nagle")
    parser.add_argument("--tls", action="store_true",
                        help="every association over TLS (storescu +tls, certificates made for the run); "
                             "receivers dimsekit and dcmtk only")
    parser.add_argument("--name", default=None, help="result file name (default store, store-tls with --tls)")
    args = parser.parse_args()
    q = args.quick
    runs = args.runs or (1 if q else 3)
    per_group = args.ct_per_group or (10 if q else 50)
    n_small = args.small or (300 if q else 1000)
    nagle_ct = min(args.nagle_ct or (10 if q else 50), per_group)
    nagle_small = min(args.nagle_small or (30 if q else 100), n_small)
    kinds = [k.strip() for k in args.receivers.split(",") if k.strip()]
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    name = args.name or ("store-tls" if args.tls else "store")

    results: dict[str, Any] = {}
    with temp_dir("dimsekit-bench-store-") as work:
        tls = None
        if args.tls:
            sys.path.insert(0, str(HERE.parent))
            from tests.tlscerts import make_tls_files

            tls = make_tls_files(work / "tls")
        t0 = time.perf_counter()
        ct_groups = [work / "ct" / f"g{g}" for g in range(8)]
        group_bytes = [make_set(d, per_group, 512, f"CT{g}") for g, d in enumerate(ct_groups)]
        small_dir = work / "small" / "all"
        small_bytes = make_set(small_dir, n_small, 16, "SM")
        seq_dir = work / "small" / "seq"
        seq_bytes = make_set(seq_dir, n_small, 16, "SQ", sequences=True)
        nagle_ct_dir, nagle_small_dir = work / "nagle" / "ct", work / "nagle" / "small"
        nagle_ct_bytes = make_set(nagle_ct_dir, nagle_ct, 512, "NC")
        nagle_small_bytes = make_set(nagle_small_dir, nagle_small, 16, "NS")
        print(f"made {8 * per_group} CT ({sum(group_bytes) / MB / (8 * per_group):.3f} MB each), "
              f"{n_small} small ({small_bytes / n_small / 1e3:.1f} KB each) in {time.perf_counter() - t0:.1f} s",
              flush=True)

        nagle_kinds = [k for k in kinds if k in ("dimsekit", "dcmtk") or k.startswith("dimsekit@")]
        # scenario -> (receivers, groups of directories, instances, bytes, nagle)
        scenarios: dict[str, tuple[list[str], list[list[Path]], int, int, bool]] = {
            "ct": (kinds, [ct_groups[:4]], 4 * per_group, sum(group_bytes[:4]), False),
            "small": (kinds, [[small_dir]], n_small, small_bytes, False),
            "small-seq": (kinds, [[seq_dir]], n_small, seq_bytes, False),
            "concurrent": (kinds, [[d] for d in ct_groups], 8 * per_group, sum(group_bytes), False),
            "nagle-ct": ([k for k in kinds if k in nagle_kinds], [[nagle_ct_dir]], nagle_ct, nagle_ct_bytes, True),
            "nagle-small": ([k for k in kinds if k in nagle_kinds], [[nagle_small_dir]], nagle_small,
                            nagle_small_bytes, True),
        }
        scenarios = {s: v for s, v in scenarios.items() if s not in skip and s.split("-")[0] not in skip}

        wait_for_fast_creates(work)
        dropped = settle([work / "ct", work / "small", work / "nagle"])
        print("page cache dropped between receivers" if dropped else
              "page cache not dropped between receivers (not root): figures may drift run to run", flush=True)
        with Servers() as servers:
            for scenario, (receivers, groups, count, nbytes, nagle) in scenarios.items():
                results[scenario] = {"instances": count, "bytes": nbytes, "senders": len(groups),
                                     "nagle": nagle,
                                     "receivers": {k: {"seconds": [], "association_seconds": []} for k in receivers}}
                for i in range(runs):
                    # Each run visits every receiver in turn, each run starting with the next
                    # one: on a VM whose host takes back free memory, a receiver's speed
                    # depends on what the one before it left in the page cache
                    # (benchmarks/README.md, session 16), so no receiver always follows the same.
                    shift = i % len(receivers)
                    for kind in receivers[shift:] + receivers[:shift]:
                        out = work / "out" / f"{scenario}-{kind}-{i}"
                        prefault(2 * nbytes)
                        receiver = start_receiver(servers, kind, free_port(), out, nagle=nagle, tls=tls)
                        try:
                            seconds, assoc = send(receiver.port, groups, nagle, work, tls)
                            time.sleep(0.2)  # the receiver's last write after the last response
                            got = stored_files(kind, out)
                        finally:
                            servers.stop(receiver)
                            # Kept until the end (see the module docstring: deleting
                            # here slowed every file the next receiver created).
                            # Written back, and the page cache emptied, before the
                            # next one is timed, so that it does not pay for this one.
                            settle([work / "ct", work / "small", work / "nagle"])
                        if got != count:
                            raise RuntimeError(f"{scenario}/{kind}: {got} files stored, {count} sent")
                        results[scenario]["receivers"][kind]["seconds"].append(seconds)
                        if assoc is not None:
                            results[scenario]["receivers"][kind]["association_seconds"].append(assoc)
                        print(f"run {i + 1}/{runs} {scenario} -> {kind}: {count / seconds:,.1f} inst/s, "
                              f"{nbytes / MB / seconds:,.1f} MB/s ({seconds:.2f} s"
                              + (f"; association {assoc:.2f} s: {count / assoc:,.1f} inst/s)" if assoc else ")"),
                              flush=True)
                for r in results[scenario]["receivers"].values():
                    r["median_seconds"] = median(r["seconds"])
                    r["instances_per_s"] = count / r["median_seconds"]
                    r["mb_per_s"] = nbytes / MB / r["median_seconds"]
                    if len(r["association_seconds"]) == len(r["seconds"]):
                        r["median_association_seconds"] = median(r["association_seconds"])
                        r["association_instances_per_s"] = count / r["median_association_seconds"]
                        r["association_mb_per_s"] = nbytes / MB / r["median_association_seconds"]

    titles = {
        "ct": "CT 512x512x16, one association",
        "small": "small instances, one association",
        "small-seq": "small instances with a worklist's sequences, one association",
        "concurrent": "8 concurrent senders x CT (aggregate)",
        "nagle-ct": "Nagle on (storescu as shipped): CT",
        "nagle-small": "Nagle on (storescu as shipped): small",
    }
    rows = []
    for scenario, res in results.items():
        recs = res["receivers"]
        base = recs.get("dimsekit")
        for kind, r in recs.items():
            ratio = assoc_ratio = ""
            if base and (not kind.startswith("dimsekit") or "@" in kind):
                ratio = f"{base['instances_per_s'] / r['instances_per_s']:.2f}x"
                if "association_instances_per_s" in base and "association_instances_per_s" in r:
                    assoc_ratio = f"{base['association_instances_per_s'] / r['association_instances_per_s']:.2f}x"
            rows.append([titles[scenario], f"{res['instances']}", kind, fmt(r["instances_per_s"], 1),
                         fmt(r["mb_per_s"], 1), ratio,
                         fmt(r["association_instances_per_s"], 1) if "association_instances_per_s" in r else "",
                         assoc_ratio])
    markdown = (
        f"# C-STORE from DCMTK storescu{' over TLS' if tls else ''}, median of {runs} run(s)\n\n"
        "Sender /usr/bin/storescu, TCP_NODELAY=1 except the Nagle-on rows; dimsekit stores durably (fsync).\n"
        + ("TLS: storescu +tls with a client certificate, both ends verify (certificates of the run's own CA).\n"
           if tls else "")
        + "Wall: storescu start to exit (it reads all its files before it connects).  "
        "Association: its connect() to its exit (needs strace).\n\n"
        + table(["scenario", "instances", "receiver", "instances/s (wall)", "MB/s (wall)", "dimsekit / this",
                 "instances/s (association)", "dimsekit / this (association)"], rows)
    )
    data = {"environment": environment(), "settings": {**vars(args), "runs": runs, "ct_per_group": per_group,
                                                       "small": n_small, "nagle_ct": nagle_ct,
                                                       "nagle_small": nagle_small},
            "results": results}
    json_path, md_path = save(name, data, markdown)
    print()
    print(markdown)
    print(f"results: {json_path} {md_path}")


if __name__ == "__main__":
    main()
