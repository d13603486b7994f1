"""The host agent's disk archives (lib/host/archive*.py), with real processes, files and stores.

Every test runs `agent.py archive ...` as a subprocess, with the secrets on its stdin, as the
control plane does in a unit. Stores are real: a directory, or a moto S3 server
(spec/support/s3.py). Disks are files under tmp_path; most tests use 1 MiB chunks to stay small.
"""

from __future__ import annotations

import base64
import json
import math
import os
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from spec.lib.host.test_unit import wait_for
from spec.support.processes import measured_env
from spec.support.s3 import S3Server
from spec.support.world import sha256_of

AGENT = Path(__file__).resolve().parents[3] / "lib" / "host" / "agent.py"
PY = sys.executable
MIB = 1 << 20
PREFIX = "images/im-1/"


def words(size: int, seed: int) -> bytes:
    """Compressible bytes: random words of a random vocabulary (about 3:1 with zstd)."""
    rng = random.Random(seed)
    vocabulary = [rng.randbytes(rng.randint(2, 10)).hex().encode() for _ in range(500)]
    out = bytearray()
    while len(out) < size:
        out += b" ".join(rng.choices(vocabulary, k=4096)) + b"\n"
    return bytes(out[:size])


def one_line(text: bytes) -> str:
    assert text.endswith(b"\n") and text.count(b"\n") == 1, text
    return text.decode()


class Archive:
    """Runs the archive commands against one store and prefix, with one KEK."""

    def __init__(self, tmp: Path, store: dict[str, str], kek: bytes | None = None) -> None:
        self.tmp, self.store = tmp, store
        self.kek = kek or os.urandom(32)
        self.stats, self.progress = tmp / "stats.json", tmp / "progress.json"

    def secrets(self, **changes: Any) -> bytes:
        document = {"store": self.store, "prefix": PREFIX,
                    "kek": base64.b64encode(self.kek).decode(), **changes}
        return json.dumps(document).encode()

    def argv(self, command: str, *args: str) -> list[str]:
        return [PY, str(AGENT), "archive", command, *args]

    def __call__(self, command: str, *args: str,
                 stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            self.argv(command, *args), input=self.secrets() if stdin is None else stdin,
            capture_output=True, timeout=120, check=False, env=measured_env())

    def create(self, disk: Path, *args: str,
               stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return self("create", "--disk", str(disk), "--stats", str(self.stats), "--progress",
                    str(self.progress), *args, stdin=stdin)

    def ok(self, result: subprocess.CompletedProcess[bytes]) -> subprocess.CompletedProcess[bytes]:
        assert (result.returncode, result.stderr) == (0, b""), result.stderr
        return result

    def restore(self, output: Path, *args: str,
                stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return self("restore", "--output", str(output), *args, stdin=stdin)

    def verify(self) -> subprocess.CompletedProcess[bytes]:
        return self("verify")

    def round_trip(self, disk: Path, chunk_mib: int = 1) -> Path:
        self.ok(self.create(disk, "--chunk-mib", str(chunk_mib)))
        output = self.tmp / f"{disk.name}.restored"
        self.ok(self.restore(output))
        assert sha256_of(output) == sha256_of(disk)
        assert output.stat().st_size == disk.stat().st_size
        assert not Path(f"{output}.partial").exists()
        return output


class DirectoryStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.description = {"kind": "directory", "path": str(root)}

    @property
    def archive(self) -> Path:
        return self.root / PREFIX

    def objects(self) -> dict[str, int]:
        """Object name under the prefix -> size."""
        if not self.archive.exists():
            return {}
        return {str(path.relative_to(self.archive)): path.stat().st_size
                for path in self.archive.rglob("*") if path.is_file()}

    def chunk(self, index: int) -> Path:
        return self.archive / "chunks" / f"{index:016x}"

    def manifest(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads((self.archive / "manifest.json").read_bytes())
        return document


@pytest.fixture
def store(tmp_path: Path) -> DirectoryStore:
    return DirectoryStore(tmp_path / "store")


@pytest.fixture
def archive(tmp_path: Path, store: DirectoryStore) -> Archive:
    return Archive(tmp_path, store.description)


def make_disk(path: Path, size: int, writes: dict[int, bytes] | None = None) -> Path:
    """A sparse file of `size` bytes, with `writes` (offset -> bytes) in it."""
    with open(path, "wb") as file:
        file.truncate(size)
        for offset, data in (writes or {}).items():
            file.seek(offset)
            file.write(data)
    return path


def chunks_with_data(writes: dict[int, bytes], chunk: int = MIB) -> set[int]:
    return {index for offset, data in writes.items() if data.strip(b"\0")
            for index in range(offset // chunk, (offset + len(data) - 1) // chunk + 1)}


def test_a_dense_disk_whose_size_is_not_a_multiple_of_the_chunk_size_round_trips(
        archive: Archive, store: DirectoryStore, tmp_path: Path) -> None:
    size = 5 * MIB + 12345
    disk = make_disk(tmp_path / "dense.img", size, {0: words(size, seed=1)})
    archive.round_trip(disk)
    assert set(store.objects()) == {"manifest.json"} | {f"chunks/{i:016x}" for i in range(6)}
    manifest = store.manifest()
    assert (manifest["logical_size"], manifest["chunk_size"]) == (size, MIB)
    assert (manifest["compression"], manifest["cipher"]) == ("zstd", "aes-256-gcm")
    assert sum(store.objects().values()) < size / 2  # compressed


def test_a_sparse_disk_round_trips_to_a_sparse_file_and_holes_make_no_objects(
        archive: Archive, store: DirectoryStore, tmp_path: Path) -> None:
    rng = random.Random(7)
    size = 256 * MIB
    writes = {offset: rng.randbytes(length) for offset, length in [
        (0, 1000), (3 * MIB + 5, 70_000), (17 * MIB - 10, 20),  # the last straddles two chunks
        (100 * MIB, MIB), (255 * MIB + 1, MIB - 1)]}
    writes[200 * MIB] = bytes(MIB)  # zeros, allocated: no object either
    disk = make_disk(tmp_path / "sparse.img", size, writes)
    output = archive.round_trip(disk)
    stored = chunks_with_data(writes)
    assert stored == {0, 3, 16, 17, 100, 255}
    assert set(store.objects()) == {"manifest.json"} | {f"chunks/{i:016x}" for i in stored}
    assert output.stat().st_blocks * 512 <= 8 * MIB  # the holes stay holes
    assert archive.ok(archive.verify()).stdout.endswith(b"\n")


def test_an_empty_disk_round_trips_to_an_empty_file(
        archive: Archive, store: DirectoryStore, tmp_path: Path) -> None:
    output = archive.round_trip(make_disk(tmp_path / "empty.img", 0))
    assert output.read_bytes() == b""
    assert set(store.objects()) == {"manifest.json"}
    assert json.loads(archive.stats.read_text()) == {
        "logical_size_bytes": 0, "physical_size_bytes": store.objects()["manifest.json"],
        "chunks": 0, "stored_chunks": 0}
    assert json.loads(archive.progress.read_text()) == {"bytes_done": 0, "bytes_total": 0}


def test_stats_and_progress_are_exact(
        archive: Archive, store: DirectoryStore, tmp_path: Path) -> None:
    size = 40 * MIB + 1
    writes = {MIB: words(3 * MIB, seed=2), 30 * MIB: bytes(MIB), 40 * MIB: b"\x01"}
    disk = make_disk(tmp_path / "disk.img", size, writes)
    archive.ok(archive.create(disk, "--chunk-mib", "1"))
    objects = store.objects()
    assert json.loads(archive.stats.read_text()) == {
        "logical_size_bytes": size, "physical_size_bytes": sum(objects.values()),
        "chunks": 41, "stored_chunks": 4}
    assert len(objects) == 5
    assert json.loads(archive.progress.read_text()) == {"bytes_done": size, "bytes_total": size}
    summary = json.loads(one_line(archive.ok(archive.verify()).stdout))
    assert summary == {"ok": True, "logical_size_bytes": size,
                       "physical_size_bytes": sum(objects.values()), "chunks": 41,
                       "stored_chunks": 4}
    assert [(chunk["index"], chunk["stored_size"]) for chunk in store.manifest()["chunks"]] == [
        (index, objects[f"chunks/{index:016x}"]) for index in (1, 2, 3, 40)]


def test_the_manifest_is_written_last(
        archive: Archive, store: DirectoryStore, tmp_path: Path) -> None:
    size = 24 * MIB
    archive.ok(archive.create(make_disk(tmp_path / "d.img", size, {0: words(size, 3)}),
                              "--chunk-mib", "1", "--workers", "4"))
    times = {name: (store.archive / name).stat().st_mtime_ns for name in store.objects()}
    manifest = times.pop("manifest.json")
    assert len(times) == 24 and max(times.values()) <= manifest


def test_a_store_failure_midway_exits_1_with_one_readable_line_and_no_manifest(
        archive: Archive, store: DirectoryStore, tmp_path: Path) -> None:
    size = 12 * MIB
    disk = make_disk(tmp_path / "d.img", size, {0: words(size, 4)})
    blocker = store.chunk(3)
    (blocker / "in-the-way").mkdir(parents=True)  # the chunk's path is a directory
    result = archive.create(disk, "--chunk-mib", "1")
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert line.startswith(f"archive: store put {PREFIX}chunks/0000000000000003 failed: ")
    assert "directory" in line
    assert "manifest.json" not in store.objects()
    assert not archive.stats.exists()
    restore = archive.restore(tmp_path / "out.img")
    assert restore.returncode == 1
    assert one_line(restore.stderr) == (
        f"archive: no manifest at {PREFIX}: the archive is incomplete\n")
    assert not (tmp_path / "out.img").exists()
    assert not (tmp_path / "out.img.partial").exists()


def test_a_create_after_a_failed_one_leaves_only_its_own_objects(
        archive: Archive, store: DirectoryStore, tmp_path: Path) -> None:
    first = make_disk(tmp_path / "first.img", 16 * MIB, {0: words(16 * MIB, 5)})
    (store.chunk(15) / "x").mkdir(parents=True)
    assert archive.create(first, "--chunk-mib", "1", "--workers", "1").returncode == 1
    left = set(store.objects())
    assert "chunks/0000000000000000" in left and "manifest.json" not in left
    (store.chunk(15) / "x").rmdir()
    store.chunk(15).rmdir()  # the store works again
    writes = {5 * MIB: words(1000, 6)}
    second = make_disk(tmp_path / "second.img", 16 * MIB, writes)
    archive.round_trip(second)
    assert set(store.objects()) == {"manifest.json", "chunks/0000000000000005"}


def corrupt(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "flip":
        data[len(data) // 2] ^= 0x01
    elif how == "truncate":
        del data[-1]
    path.write_bytes(bytes(data)) if how != "delete" else path.unlink()


@pytest.mark.parametrize("how", ["flip", "truncate", "delete"])
def test_a_corrupted_chunk_is_caught_by_verify_and_by_restore_which_leaves_no_output(
        archive: Archive, store: DirectoryStore, tmp_path: Path, how: str) -> None:
    disk = make_disk(tmp_path / "d.img", 6 * MIB, {0: words(6 * MIB, 8)})
    archive.ok(archive.create(disk, "--chunk-mib", "1"))
    corrupt(store.chunk(4), how)
    for result in (archive.verify(), archive.restore(tmp_path / "out.img")):
        assert (result.returncode, result.stdout) == (1, b"")
        assert f"{PREFIX}chunks/0000000000000004 is" in one_line(result.stderr)
    assert not (tmp_path / "out.img").exists()
    assert not (tmp_path / "out.img.partial").exists()


def test_a_chunk_swapped_for_another_fails_authentication(
        archive: Archive, store: DirectoryStore, tmp_path: Path) -> None:
    disk = make_disk(tmp_path / "d.img", 2 * MIB, {0: words(2 * MIB, 9)})
    archive.ok(archive.create(disk, "--chunk-mib", "1"))
    store.chunk(1).write_bytes(store.chunk(0).read_bytes())  # caught by size or authentication
    result = archive.verify()
    assert result.returncode == 1
    assert "chunks/0000000000000001 is corrupted" in one_line(result.stderr)


TAMPERINGS: dict[str, Callable[[dict[str, Any]], None]] = {
    "logical size": lambda manifest: manifest.update(logical_size=manifest["logical_size"] + 1),
    "chunk hash": lambda manifest: manifest["chunks"][0].update(hmac="00" * 32),
    "dropped chunk": lambda manifest: manifest["chunks"].pop(),
    "mac": lambda manifest: manifest.update(mac="11" * 32),
    "wrapped key": lambda manifest: manifest["data_key"].update(
        wrapped=base64.b64encode(os.urandom(48)).decode()),
}


@pytest.mark.parametrize("tampering", sorted(TAMPERINGS))
def test_a_tampered_manifest_is_caught(archive: Archive, store: DirectoryStore,
                                       tmp_path: Path, tampering: str) -> None:
    disk = make_disk(tmp_path / "d.img", 3 * MIB, {0: words(3 * MIB, 10)})
    archive.ok(archive.create(disk, "--chunk-mib", "1"))
    manifest = store.manifest()
    TAMPERINGS[tampering](manifest)
    (store.archive / "manifest.json").write_text(json.dumps(manifest))
    for result in (archive.verify(), archive.restore(tmp_path / "out.img")):
        assert result.returncode == 1
        assert "tampered" in one_line(result.stderr)
    assert not (tmp_path / "out.img").exists()


def test_a_manifest_that_is_not_json_is_caught(
        archive: Archive, store: DirectoryStore, tmp_path: Path) -> None:
    archive.ok(archive.create(make_disk(tmp_path / "d.img", MIB, {0: b"x"})))
    (store.archive / "manifest.json").write_bytes(b"{not json")
    result = archive.verify()
    assert result.returncode == 1
    assert one_line(result.stderr) == "archive: the manifest is not JSON: it is corrupted\n"


def test_a_wrong_kek_is_refused(archive: Archive, store: DirectoryStore, tmp_path: Path) -> None:
    disk = make_disk(tmp_path / "d.img", 2 * MIB, {0: words(2 * MIB, 11)})
    archive.ok(archive.create(disk))
    other = Archive(tmp_path, store.description, kek=os.urandom(32))
    for result in (other.verify(), other.restore(tmp_path / "out.img")):
        assert result.returncode == 1
        assert "wrong KEK" in one_line(result.stderr)
    assert not (tmp_path / "out.img").exists()


BAD_SECRETS: dict[str, Any] = {
    "not json": b"{",
    "empty": b"",
    "a list": b"[]",
    "no kek": {"kek": None},
    "an extra key": {"extra": 1},
    "kek not base64": {"kek": "not base64!"},
    "kek of 16 bytes": {"kek": base64.b64encode(bytes(16)).decode()},
    "prefix without a slash": {"prefix": "images/im-1"},
    "absolute prefix": {"prefix": "/images/"},
    "prefix with ..": {"prefix": "images/../x/"},
    "unknown store kind": {"store": {"kind": "ftp", "path": "/x"}},
    "relative store path": {"store": {"kind": "directory", "path": "store"}},
    "s3 without a secret key": {"store": {"kind": "s3", "endpoint": "http://127.0.0.1:1",
                                          "region": "r", "bucket": "b", "access_key": "a"}},
}


@pytest.mark.parametrize("case", sorted(BAD_SECRETS))
def test_bad_secrets_exit_2_with_one_line_and_write_nothing(
        archive: Archive, store: DirectoryStore, tmp_path: Path, case: str) -> None:
    bad = BAD_SECRETS[case]
    if isinstance(bad, dict):
        document = json.loads(archive.secrets())
        document.update(bad)
        bad = json.dumps({key: value for key, value in document.items()
                          if value is not None}).encode()
    disk = make_disk(tmp_path / "d.img", MIB, {0: b"data"})
    results = [archive.create(disk, stdin=bad), archive.restore(tmp_path / "out", stdin=bad),
               archive("verify", stdin=bad)]
    for result in results:
        assert (result.returncode, result.stdout) == (2, b"")
        assert one_line(result.stderr).startswith("archive: bad secrets on stdin: ")
        assert base64.b64encode(archive.kek) not in result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["d.img"]


@pytest.mark.parametrize("argv", [[], ["create"], ["create", "--disk", "d"],
                                  ["verify", "--workers", "0"], ["restore"],
                                  ["create", "--disk", "d", "--stats", "s", "--progress", "p",
                                   "--chunk-mib", "65"]])
def test_bad_usage_exits_2(archive: Archive, argv: list[str]) -> None:
    result = subprocess.run([PY, str(AGENT), "archive", *argv], input=archive.secrets(),
                            capture_output=True, timeout=60, check=False)
    assert result.returncode == 2
    assert result.stderr


def test_a_missing_disk_exits_1_and_touches_no_store(
        archive: Archive, store: DirectoryStore, tmp_path: Path) -> None:
    result = archive.create(tmp_path / "nope.img")
    assert result.returncode == 1
    assert one_line(result.stderr).startswith(f"archive: cannot open the disk {tmp_path}")
    assert store.objects() == {}


def test_the_secrets_appear_in_no_argv_output_or_file(
        store: DirectoryStore, tmp_path: Path) -> None:
    archive = Archive(tmp_path, store.description)
    secrets = [base64.b64encode(archive.kek), archive.kek]
    disk = make_disk(tmp_path / "big.img", 96 * MIB, {0: words(96 * MIB, 12)})
    process = subprocess.Popen(
        archive.argv("create", "--disk", str(disk), "--stats", str(archive.stats),
                     "--progress", str(archive.progress), "--workers", "1"),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=measured_env())
    assert process.stdin is not None
    process.stdin.write(archive.secrets())
    process.stdin.close()
    seen: list[bytes] = []

    def read_cmdline() -> bool:
        try:
            seen.append(Path(f"/proc/{process.pid}/cmdline").read_bytes())
            seen.append(Path(f"/proc/{process.pid}/environ").read_bytes())
        except OSError:
            pass
        return process.poll() is not None

    wait_for(lambda: read_cmdline() or len(seen) >= 20, "a few looks at the running archive")
    assert process.poll() is None, "the archive finished too soon to be watched"
    assert process.stdout is not None and process.stderr is not None
    stdout, stderr = process.stdout.read(), process.stderr.read()
    process.wait(timeout=120)
    assert (process.returncode, stdout, stderr) == (0, b"", b"")
    assert any(b"archive\0create" in text for text in seen)
    restore = archive.restore(tmp_path / "out.img")
    everything = [*seen, stdout, stderr, restore.stdout, restore.stderr,
                  *(path.read_bytes() for path in tmp_path.rglob("*")
                    if path.is_file() and path.name != "out.img")]
    for secret in secrets:
        assert not any(secret in text for text in everything)


def test_create_runs_in_a_unit_with_the_secrets_through_it(
        archive: Archive, store: DirectoryStore, tmp_path: Path) -> None:
    disk = make_disk(tmp_path / "d.img", 3 * MIB, {MIB: words(MIB, 13)})
    root = tmp_path / "units"
    unit = [PY, str(AGENT), "--root", str(root), "unit"]
    run = subprocess.run([*unit, "run", "u1", "--", *archive.argv(
        "create", "--disk", str(disk), "--stats", str(archive.stats), "--progress",
        str(archive.progress), "--chunk-mib", "1")], input=archive.secrets(),
        capture_output=True, timeout=60, check=False, env=measured_env())
    assert run.returncode == 0, run.stderr

    def state() -> str:
        return subprocess.run([*unit, "check", "u1"], capture_output=True, timeout=60,
                              check=True).stdout.decode()

    assert wait_for(lambda: state() in ("Succeeded", "Failed") and state(), "the unit") \
        == "Succeeded", (root / "u1" / "log").read_text()
    assert set(store.objects()) == {"manifest.json", "chunks/0000000000000001"}
    archive.round_trip(disk)


def test_the_default_4_mib_chunks_round_trip(
        archive: Archive, store: DirectoryStore, tmp_path: Path) -> None:
    size = 9 * MIB + 1
    disk = make_disk(tmp_path / "d.img", size, {0: words(size, 14)})
    archive.ok(archive.create(disk))
    assert store.manifest()["chunk_size"] == 4 * MIB
    assert len(store.objects()) == math.ceil(size / (4 * MIB)) + 1
    output = tmp_path / "out.img"
    archive.ok(archive.restore(output, "--workers", "3"))
    assert sha256_of(output) == sha256_of(disk)


def test_an_s3_store_round_trips(s3_server: S3Server, tmp_path: Path) -> None:
    archive = Archive(tmp_path, s3_server.store)
    writes = {0: words(2 * MIB, 15), 9 * MIB: os.urandom(MIB // 2)}
    disk = make_disk(tmp_path / "d.img", 12 * MIB, writes)
    archive.round_trip(disk)
    listing = s3_server.client().list_objects_v2(Bucket=s3_server.bucket, Prefix=PREFIX)
    sizes = {item["Key"][len(PREFIX):]: item["Size"] for item in listing["Contents"]}
    assert set(sizes) == {"manifest.json", "chunks/0000000000000000",
                          "chunks/0000000000000001", "chunks/0000000000000009"}
    stats = json.loads(archive.stats.read_text())
    assert stats["physical_size_bytes"] == sum(sizes.values())
    assert json.loads(archive.ok(archive.verify()).stdout)["stored_chunks"] == 3
    archive.round_trip(disk)  # again, over the first run's objects


def test_an_s3_failure_exits_1_with_one_line_that_names_no_secret(
        s3_server: S3Server, tmp_path: Path) -> None:
    secret_key = "s3cr3t-" + os.urandom(8).hex()
    store = {**s3_server.store, "bucket": "no-such-bucket", "secret_key": secret_key}
    archive = Archive(tmp_path, store)
    result = archive.create(make_disk(tmp_path / "d.img", MIB, {0: b"data"}))
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert line.startswith(f"archive: store list {PREFIX} failed: ")
    assert secret_key not in line and base64.b64encode(archive.kek).decode() not in line


def test_sigterm_stops_create_with_one_line_and_no_manifest(
        archive: Archive, store: DirectoryStore, tmp_path: Path) -> None:
    # 768 MiB of incompressible data on one worker: seconds of work, so the signal, sent as
    # soon as the first chunk is stored, always lands mid-archive.
    block, disk = os.urandom(8 * MIB), tmp_path / "d.img"
    with open(disk, "wb") as file:
        for n in range(96):
            file.write(n.to_bytes(8, "little") + block[8:])
    process = subprocess.Popen(
        archive.argv("create", "--disk", str(disk), "--stats", str(archive.stats),
                     "--progress", str(archive.progress), "--chunk-mib", "1", "--workers", "1"),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=measured_env())
    stdout, stderr = b"", b""
    try:
        assert process.stdin is not None
        process.stdin.write(archive.secrets())
        process.stdin.close()
        wait_for(lambda: any(store.objects()), "the first chunk")
        process.terminate()
        process.wait(timeout=60)
        assert process.stdout is not None and process.stderr is not None
        stdout, stderr = process.stdout.read(), process.stderr.read()
    finally:
        process.kill()
    assert (process.returncode, stdout, stderr) == (
        1, b"", b"archive: interrupted by signal 15\n")
    assert "manifest.json" not in store.objects()
    assert not archive.stats.exists()
