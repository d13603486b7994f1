"""bin/bench archive: `agent.py archive create` measured against baselines run here, now.

Parts (--only NAME, repeatable):

    dense    a 2 GiB file of compressible data (random words, about 3:1 with zstd -3): the
             archive into a directory store against `zstd -3 -T0` of the same file; best of 3
             runs each, alternated, from a warm page cache. Target: ours/zstd >= 0.8.
    sparse   a 20 GiB sparse file holding 256 MiB of data in scattered 4 MiB-aligned regions
             against a dense 256 MiB file of the same data. Target: sparse/dense <= 2.

Both report the agent's peak RSS (max over the runs, read from a fresh wrapper process's
RUSAGE_CHILDREN): target <= 256 MiB. Files live in a temporary directory under /var/tmp,
removed at the end. Needs no database; installs the zstd CLI with apt-get if it is missing.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from spec.bench.common import Report

AGENT = Path(__file__).resolve().parents[2] / "lib" / "host" / "agent.py"
MIB, GIB = 1 << 20, 1 << 30
RUNS = 3
DENSE_SIZE = 2 * GIB
SPARSE_SIZE, SPARSE_DATA, REGION = 20 * GIB, 256 * MIB, 4 * MIB
POOL = 256 * MIB  # distinct compressible bytes, sliced into the files

# Runs argv (stdin passed through) and prints {"seconds", "max_rss_kib"} of that child alone.
WRAPPER = ("import json, resource, subprocess, sys, time\n"
           "start = time.perf_counter()\n"
           "status = subprocess.run(sys.argv[1:]).returncode\n"
           "seconds = time.perf_counter() - start\n"
           "rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
           "print(json.dumps({'seconds': seconds, 'max_rss_kib': rss, 'status': status}))\n")


def ensure_zstd() -> str:
    found = shutil.which("zstd")
    if found:
        return found
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "zstd"], check=True,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    return shutil.which("zstd") or "/usr/bin/zstd"


def word_pool(size: int, seed: int) -> bytes:
    """Compressible bytes: random words of a random vocabulary (about 3:1 with zstd -3)."""
    rng = random.Random(seed)
    vocabulary = [bytes(rng.choices(b"abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 10)))
                  for _ in range(2000)]
    out = bytearray()
    while len(out) < size:
        out += b" ".join(rng.choices(vocabulary, k=8192)) + b"\n"
    return bytes(out[:size])


def slices(pool: bytes, rng: random.Random, size: int) -> bytes:
    """`size` bytes made of 1 MiB slices at random offsets of the pool."""
    return b"".join(pool[start:start + MIB]
                    for start in (rng.randrange(len(pool) - MIB) for _ in range(size // MIB)))


def warm(path: Path) -> None:
    """Read the file once, so every run reads it from the page cache."""
    buffer = bytearray(16 * MIB)
    with open(path, "rb") as file:
        while file.readinto(buffer):
            pass


class Bench:
    def __init__(self, directory: Path, report: Report) -> None:
        self.directory, self.report = directory, report
        self.store = directory / "store"
        self.secrets = json.dumps({
            "store": {"kind": "directory", "path": str(self.store)}, "prefix": "bench/",
            "kek": base64.b64encode(os.urandom(32)).decode()}).encode()
        self.peak_rss_kib = 0
        self.runs = 0

    def archive(self, disk: Path) -> float:
        """Seconds of one `archive create` of the disk into an empty store."""
        shutil.rmtree(self.store, ignore_errors=True)
        self.runs += 1
        result = subprocess.run(
            [sys.executable, "-c", WRAPPER, sys.executable, str(AGENT), "archive", "create",
             "--disk", str(disk), "--stats", str(self.directory / "stats.json"),
             "--progress", str(self.directory / "progress.json")],
            input=self.secrets, capture_output=True, check=True)
        measured = json.loads(result.stdout)
        if measured["status"] != 0:
            raise RuntimeError(f"archive create failed: {result.stderr.decode()[-2000:]}")
        self.peak_rss_kib = max(self.peak_rss_kib, measured["max_rss_kib"])
        return float(measured["seconds"])

    def best(self, *contenders: Callable[[], float]) -> list[float]:
        """Best of RUNS runs of each, alternated."""
        times: list[list[float]] = [[] for _ in contenders]
        for _ in range(RUNS):
            for run, contender in zip(times, contenders, strict=True):
                run.append(contender())
        return [min(run) for run in times]

    def dense(self, pool: bytes) -> None:
        disk = self.directory / "dense.img"
        disk.write_bytes(slices(pool, random.Random(2), DENSE_SIZE))
        warm(disk)
        zstd, out = ensure_zstd(), self.directory / "dense.img.zst"

        def baseline() -> float:
            out.unlink(missing_ok=True)
            start = time.perf_counter()
            subprocess.run([zstd, "-3", "-T0", "-q", "-f", str(disk), "-o", str(out)],
                           check=True)
            return time.perf_counter() - start

        ours, theirs = self.best(lambda: self.archive(disk), baseline)
        ratio = out.stat().st_size / DENSE_SIZE
        stats = json.loads((self.directory / "stats.json").read_text())
        disk.unlink()
        out.unlink()
        self.report.add("archive.dense_mib_s", DENSE_SIZE / MIB / ours, "MiB/s",
                        f"2 GiB; stored {stats['physical_size_bytes'] / DENSE_SIZE:.3f} of it")
        self.report.add("archive.zstd_mib_s", DENSE_SIZE / MIB / theirs, "MiB/s",
                        f"zstd -3 -T0; output {ratio:.3f} of the input")
        self.report.add("archive.dense_ratio_to_zstd", theirs / ours, "x", "target >= 0.8")

    def sparse(self, pool: bytes) -> None:
        rng = random.Random(3)
        regions = sorted(rng.sample(range(SPARSE_SIZE // REGION), SPARSE_DATA // REGION))
        sparse, dense = self.directory / "sparse.img", self.directory / "dense256.img"
        with open(sparse, "wb") as sparse_file, open(dense, "wb") as dense_file:
            sparse_file.truncate(SPARSE_SIZE)
            for region in regions:
                data = slices(pool, rng, REGION)
                os.pwrite(sparse_file.fileno(), data, region * REGION)
                dense_file.write(data)
        warm(dense)  # the sparse file's data are in the page cache too: just written
        sparse_s, dense_s = self.best(lambda: self.archive(sparse), lambda: self.archive(dense))
        sparse.unlink()
        dense.unlink()
        self.report.add("archive.sparse_s", sparse_s, "s", "20 GiB, 256 MiB of data")
        self.report.add("archive.dense256_s", dense_s, "s", "the same 256 MiB, dense")
        self.report.add("archive.sparse_to_dense_time", sparse_s / dense_s, "x", "target <= 2")


def main() -> None:
    parser = argparse.ArgumentParser(prog="bin/bench archive")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--only", action="append", choices=["dense", "sparse"])
    args = parser.parse_args()
    parts = args.only or ["dense", "sparse"]
    report = Report(args.json)
    directory = Path(tempfile.mkdtemp(prefix="bench-archive-", dir="/var/tmp"))
    try:
        bench = Bench(directory, report)
        pool = word_pool(POOL, seed=1)
        if "dense" in parts:
            bench.dense(pool)
        if "sparse" in parts:
            bench.sparse(pool)
        report.add("archive.agent_peak_rss", bench.peak_rss_kib / 1024, "MiB",
                   f"max over {bench.runs} runs; target <= 256")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
