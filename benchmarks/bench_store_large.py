"""One large C-STORE on loopback: throughput and peak memory of sender and receiver.

    python benchmarks/bench_store_large.py                  # 1 GiB, dimsekit receiver
    python benchmarks/bench_store_large.py --size 200M      # a quick run
    python benchmarks/bench_store_large.py --receivers dimsekit,dcmtk,pynetdicom --runs 3

The instance: a Multi-frame Grayscale Byte Secondary Capture image whose
Pixel Data (OB, 1024x1024 frames) makes the file ``--size`` bytes, written
to a temporary directory -- the header by pydicom (``dcmwrite``, Explicit VR
Little Endian), then the Pixel Data element appended block by block, so that
making a 1 GiB file does not take 1 GiB of memory.

Sender, the same for every receiver (but see ``dimsekit@DIR``), in its own process: dimsekit
(``store_sender.py``: ``ApplicationEntity.associate`` + ``assoc.store(path)``,
which sends the data set unparsed, read from the file as the peer takes it).

Receivers, each in its own process on a free 127.0.0.1 port, stopped by PID:

* ``dimsekit``   -- ``store_receiver.py``: an AE with a test storage plugin;
  the data set goes to dimsekit's default SpooledSink (temporary file past
  1 MiB), the handler checks its size and answers 0x0000;
* ``dcmtk``      -- ``/usr/bin/storescp +B`` (bit-preserving: the data set
  written straight to a file), ``TCP_NODELAY=1``;
* ``dimsekit-node`` -- the node as shipped (``twistd -n dimsekit``), the
  instance stored in its archive (``--data-dir`` under ``--spool-dir`` or
  the work directory): Part 10 file, fsync, index row, as for every C-STORE
  it takes (on tmpfs the fsync costs nothing; each run replaces the
  previous run's copy, the duplicates policy being ``newest``: the old
  copy is freed after the answer, as for every replaced instance);
* ``dimsekit-node@DIR`` -- the node from another source tree
  (``PYTHONPATH=DIR``), the sender ours;
* ``dimsekit@DIR`` -- sender *and* receiver run from another source tree
  (``PYTHONPATH=DIR``), e.g. a copy of the code before a change: before/after
  in the same run;
* ``orthanc`` -- the Debian package's Orthanc (``apt-get install orthanc``),
  storing into its files and SQLite index (``OverwriteInstances``: each run
  stores the instance again), ``TCP_NODELAY=1``;
* ``pynetdicom`` -- ``pynetdicom_scp.py --store``: pynetdicom's default,
  the data set kept in memory, handler checks the size
  (``pynetdicom-chunked``: ``_config.STORE_RECV_CHUNKED_DATASET``, to a file).

All receivers run side by side; each run sends the file once to each of
them in turn (so a noisy neighbour slows them alike).  Receivers write what they receive to the system's temporary directory (a
disk, whose write-back throttles every receiver once a few hundred MB are
dirty); ``--spool-dir /dev/shm`` puts it in memory instead, to measure the
protocol stacks rather than the disk.  Measured per send:
MiB/s of the C-STORE (request sent -> response received, as the sender sees
it) and the sender's peak RSS (``getrusage``, a fresh sender process each
time); per receiver, its peak RSS (``VmHWM`` from /proc) over all its runs.  Goal: each peak RSS under 150 MB.

Before each send, what the previous one wrote is written back and, as
root, the page cache dropped (``_harness.settle``); then a short-lived
process touches twice the instance's size of memory and frees it
(``_harness.prefault``).  On this kind of virtual machine the host takes back
memory the guest frees, and a transfer needing 1 GiB of fresh pages ran
at ~1,000 MiB/s or at half that, whatever the receiver; with the pages just
freed (still backed) the runs agree.
Results: ``benchmarks/results/store_large.{json,md}``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
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
    vm_hwm_kib,
)

SOP_CLASS = "1.2.840.10008.5.1.4.1.1.7.2"  # Multi-frame Grayscale Byte SC Image Storage
FRAME = 1024 * 1024  # one 1024x1024 8-bit frame
MIB = 1 << 20


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def make_instance(path: Path, size: int) -> int:
    """Write a Part 10 file of about ``size`` bytes; return the Pixel Data length."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    frames = max(1, (size - 2048) // FRAME)
    pixel_length = frames * FRAME
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SOP_CLASS
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SOP_CLASS
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "BENCH^LARGE"
    ds.PatientID = "BENCH"
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.NumberOfFrames = frames
    ds.Rows = 1024
    ds.Columns = 1024
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.save_as(path, enforce_file_format=True)
    block = os.urandom(FRAME)
    with path.open("ab") as f:
        # (7FE0,0010) OB, Explicit VR LE: tag, "OB", 2 reserved bytes, 32-bit length (PS3.5 7.1.2)
        f.write(b"\xe0\x7f\x10\x00OB\x00\x00" + pixel_length.to_bytes(4, "little"))
        for _ in range(frames):
            f.write(block)
    return pixel_length


def source_tree(kind: str) -> str | None:
    """``dimsekit@DIR`` -> DIR: sender and receiver run from that source tree."""
    return kind.partition("@")[2] or None if kind.startswith("dimsekit@") else None


def start_receiver(
    servers: Servers, kind: str, port: int, workdir: Path, expect: int, max_pdu: int | None, spool: Path | None
):
    """Start a receiver; ``spool``: where receivers write what they receive (TMPDIR, DCMTK -od)."""
    tmp = {"TMPDIR": str(spool)} if spool else {}
    if kind == "dimsekit" or kind.startswith("dimsekit@"):
        argv = [sys.executable, str(HERE / "store_receiver.py"), str(port), "--expect-size", str(expect)]
        if max_pdu:
            argv += ["--max-pdu", str(max_pdu)]
        tree = source_tree(kind)
        env = {"PYTHONPATH": tree} if tree else {}
        return servers.start(f"store-{kind}".replace("/", "_"), argv, port, env={**env, **tmp})
    if kind == "dimsekit-node" or kind.startswith("dimsekit-node@"):
        data = node_data(workdir, spool) / kind.replace("/", "_")  # a node of another tree: its own archive
        argv = [twistd(), "-n", "--pidfile=", "--logfile", str(workdir / "node.log"), "dimsekit",
                "--port", str(port), "--interface", "127.0.0.1", "--data-dir", str(data)]
        tree = kind.partition("@")[2]  # "dimsekit-node@DIR": the node from another tree (the sender is ours)
        return servers.start(f"store-{kind}".replace("/", "_"), argv, port, env={"PYTHONPATH": tree} if tree else None)
    if kind == "dcmtk":
        out = dcmtk_out(workdir, spool)
        out.mkdir(exist_ok=True)
        argv = [dcmtk("storescp"), "+B", "-od", str(out), str(port)]
        if max_pdu:
            argv[1:1] = ["--max-pdu", str(max_pdu)]
        return servers.start(f"store-{kind}", argv, port, env={"TCP_NODELAY": "1"})
    if kind == "orthanc":
        out = (spool or workdir) / "dimsekit-bench-orthanc"
        return servers.start(f"store-{kind}", orthanc(out, port, overwrite=True), port, env={"TCP_NODELAY": "1"})
    if kind in ("pynetdicom", "pynetdicom-chunked"):
        argv = [sys.executable, str(HERE / "pynetdicom_scp.py"), str(port), "--store"]
        if kind.endswith("chunked"):
            argv.append("--chunked")
        return servers.start(f"store-{kind}", argv, port, env=tmp)
    raise SystemExit(f"unknown receiver {kind!r}")


def send(port: int, path: Path, max_pdu: int | None, tree: str | None = None) -> dict[str, Any]:
    argv = [sys.executable, str(HERE / "store_sender.py"), "127.0.0.1", str(port), str(path)]
    if max_pdu:
        argv += ["--max-pdu", str(max_pdu)]
    env = {**os.environ, "PYTHONPATH": tree} if tree else None
    result = subprocess.run(argv, capture_output=True, text=True, timeout=1800, check=False, env=env)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"sender failed ({result.returncode}): {result.stdout[-2000:]}{result.stderr[-2000:]}")
    return json.loads(lines[-1])


def node_data(workdir: Path, spool: Path | None) -> Path:
    return (spool or workdir) / "dimsekit-bench-node-data"


def dcmtk_out(workdir: Path, spool: Path | None) -> Path:
    return (spool or workdir) / "dimsekit-bench-dcmtk-out"


def clean(out: Path) -> None:
    if out.exists():
        for item in out.iterdir():
            item.unlink()


@contextlib.contextmanager
def _removed(path: Path | None) -> Iterator[None]:
    """Remove ``path`` (a directory a receiver wrote to) at the end, whatever happens."""
    try:
        yield
    finally:
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="one large C-STORE: MiB/s and peak RSS")
    parser.add_argument("--size", default="1G", help="file size, e.g. 1G, 200M (default 1G)")
    parser.add_argument("--receivers", default="dimsekit",
                        help="comma list of dimsekit,dimsekit-node,dcmtk,orthanc,pynetdicom,pynetdicom-chunked, dimsekit@DIR, dimsekit-node@DIR")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--max-pdu", type=int, default=None, help="Maximum Length Received of both sides (default: each one's own)")
    parser.add_argument("--spool-dir", default=None,
                        help="where receivers write (TMPDIR, DCMTK -od); e.g. /dev/shm to take the disk out")
    parser.add_argument("--name", default="store_large")
    args = parser.parse_args()
    size = parse_size(args.size)
    kinds = [k.strip() for k in args.receivers.split(",") if k.strip()]
    spool = Path(args.spool_dir) if args.spool_dir else None

    results: dict[str, dict[str, Any]] = {}
    with (
        temp_dir("dimsekit-store-") as workdir,
        _removed(dcmtk_out(workdir, spool) if spool else None),
        _removed(node_data(workdir, spool) if spool else None),
        _removed(spool / "dimsekit-bench-orthanc" if spool else None),
    ):
        path = workdir / "large.dcm"
        started = time.perf_counter()
        pixel_length = make_instance(path, size)
        file_size = path.stat().st_size
        settle([path])  # its write-back would otherwise run under the first transfers timed
        print(f"made {path.name}: {file_size / MIB:,.1f} MiB in {time.perf_counter() - started:.1f} s", flush=True)
        from dimsekit.datasets import part10_info

        expect = part10_info(path).dataset_length
        with Servers() as servers:
            receivers = {}
            for kind in kinds:
                receivers[kind] = start_receiver(servers, kind, free_port(), workdir, expect, args.max_pdu, spool)
            runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
            order = list(receivers.items())
            for i in range(args.runs):  # each run visits every receiver in turn, from the next one on
                shift = i % len(order)
                for kind, receiver in order[shift:] + order[:shift]:
                    prefault(2 * size)
                    run = send(receiver.port, path, args.max_pdu, source_tree(kind))
                    run["mib_per_s"] = run["dataset_bytes"] / MIB / run["store_seconds"]
                    runs[kind].append(run)
                    clean(dcmtk_out(workdir, spool))
                    # What this receiver wrote, out (and the page cache emptied, the
                    # instance read back in) before the next one is timed.
                    settle([path])
                    print(f"run {i + 1}/{args.runs} {kind}: {run['mib_per_s']:,.0f} MiB/s, sender peak RSS "
                          f"{run['sender_peak_rss_kib'] / 1024:,.1f} MiB, status 0x{run['status']:04X}", flush=True)
            for kind, receiver in receivers.items():
                hwm = vm_hwm_kib(receiver.pid)
                servers.stop(receiver)
                results[kind] = {
                    "runs": runs[kind],
                    "mib_per_s": median([r["mib_per_s"] for r in runs[kind]]),
                    "store_seconds": median([r["store_seconds"] for r in runs[kind]]),
                    "sender_peak_rss_mib": max(r["sender_peak_rss_kib"] for r in runs[kind]) / 1024,
                    "receiver_peak_rss_mib": (hwm or 0) / 1024,
                    "peer_max_pdu": runs[kind][0]["peer_max_pdu"],
                }

    goal = 150 * 1e6 / MIB  # 150 MB in MiB
    rows = []
    for kind, r in results.items():
        ok = r["sender_peak_rss_mib"] < goal and r["receiver_peak_rss_mib"] < goal
        rows.append([kind, fmt(r["mib_per_s"]), fmt(r["store_seconds"], 2), fmt(r["sender_peak_rss_mib"], 1),
                     fmt(r["receiver_peak_rss_mib"], 1), r["peer_max_pdu"], "yes" if ok else "no"])
    markdown = (
        f"# One C-STORE of {file_size / MIB:,.0f} MiB (Pixel Data {pixel_length / MIB:,.0f} MiB), "
        f"sender dimsekit, median of {args.runs} run(s)\n"
        + table(["receiver", "MiB/s", "C-STORE s", "sender peak RSS MiB", "receiver peak RSS MiB",
                 "receiver max PDU", "both < 150 MB"], rows)
    )
    ratios = [
        f"{ours} / {k}: {results[ours]['mib_per_s'] / r['mib_per_s']:.2f}x"
        for ours in results if ours.startswith("dimsekit")
        for k, r in results.items() if k != ours and (ours == "dimsekit" or not k.startswith("dimsekit"))
    ]
    if ratios:
        markdown += "\nThroughput ratios (same run): " + "; ".join(ratios) + "\n"
    data = {"environment": environment(), "settings": vars(args), "file_bytes": file_size,
            "pixel_data_bytes": pixel_length, "results": results}
    json_path, md_path = save(args.name, data, markdown)
    print()
    print(markdown)
    print(f"results: {json_path} {md_path}")


if __name__ == "__main__":
    main()
