"""The archive's pipelines: create (disk -> store), restore (store -> file) and verify.

Chunks go through a thread pool (reading, zstd, HMAC, AES-GCM and the store's I/O release the
GIL) with a bounded number of chunks in flight, so memory stays bounded whatever the disk size.
Needs zstandard, cryptography and obstore; the agent imports this module only when an archive
command runs.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hmac
import json
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any, TypeVar

import zstandard

if TYPE_CHECKING:
    from obstore.store import ObjectStore

    from lib.host import archive_format as fmt
    from lib.host import objects
else:  # on the host: siblings, found on sys.path[0]
    import archive_format as fmt
    import objects

FICLONE = 0x40049409  # ioctl: share the source's extents (a reflink copy)
CLONE_REFUSED = {errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY, errno.EPERM,
                 errno.ENOSYS}
MEMORY_BUDGET = 128 << 20  # for the chunks in flight: each holds about 4 chunk-sized buffers
ZSTD_LEVEL = 3
PROGRESS_EVERY = 0.5  # seconds
T = TypeVar("T")
ArchiveError = fmt.ArchiveError


def pool_size(chunk_size: int, workers: int | None) -> tuple[int, int]:
    """(threads, chunks in flight) within the memory budget."""
    slots = max(1, MEMORY_BUDGET // (4 * chunk_size))
    threads = max(1, min(workers or os.cpu_count() or 1, slots))
    return threads, max(threads, min(2 * threads, slots))


class Window:
    """A thread pool that holds at most `limit` tasks at once; results in completion order."""

    def __init__(self, threads: int, limit: int) -> None:
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="archive")
        self.limit = limit
        self.pending: set[Future[Any]] = set()

    def __enter__(self) -> Window:
        return self

    def __exit__(self, *exc: object) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def _collect(self) -> list[Any]:
        done, self.pending = wait(self.pending, return_when=FIRST_COMPLETED)
        return [future.result() for future in done]  # raises the first failure

    def submit(self, task: Callable[[T], Any], item: T) -> list[Any]:
        """Queue a task once there is room; the results of the tasks that finished meanwhile."""
        finished = []
        while len(self.pending) >= self.limit:
            finished += self._collect()
        self.pending.add(self.pool.submit(task, item))
        return finished

    def drain(self) -> Iterator[Any]:
        while self.pending:
            yield from self._collect()


def write_atomic(path: str, document: Mapping[str, Any], sync: bool = True) -> None:
    temporary = os.path.join(os.path.dirname(path) or ".",
                             f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(temporary, "w") as file:
            file.write(json.dumps(document) + "\n")
            if sync:
                file.flush()
                os.fsync(file.fileno())
        os.replace(temporary, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise ArchiveError(f"cannot write {path}: {error.strerror}") from None


class Progress:
    """`{"bytes_done": d, "bytes_total": t}`, replaced at most every PROGRESS_EVERY seconds."""

    def __init__(self, path: str, total: int) -> None:
        self.path, self.total, self.last = path, total, 0.0

    def update(self, done: int, final: bool = False) -> None:
        now = time.monotonic()
        if final or now - self.last >= PROGRESS_EVERY:
            write_atomic(self.path, {"bytes_done": done, "bytes_total": self.total}, sync=final)
            self.last = now


@contextlib.contextmanager
def disk_snapshot(disk: str) -> Iterator[int]:
    """A read-only descriptor of a reflink copy of the disk, or of the disk itself where the
    filesystem cannot clone it. The copy is an unnamed file (or one unlinked at once) next to
    the disk: it vanishes with the descriptor, whatever happens to this process."""
    try:
        source = os.open(disk, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as error:
        raise ArchiveError(f"cannot open the disk {disk}: {error.strerror}") from None
    copy = None
    try:
        if stat.S_ISREG(os.fstat(source).st_mode):
            copy = _reflink(source, os.path.dirname(os.path.abspath(disk)))
        yield source if copy is None else copy
    finally:
        os.close(source)
        if copy is not None:
            os.close(copy)


def _reflink(source: int, directory: str) -> int | None:
    try:
        copy = os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except OSError:  # no O_TMPFILE here: a named file, unlinked at once
        name = os.path.join(directory, f".archive-snapshot-{os.getpid()}-{threading.get_ident()}")
        try:
            copy = os.open(name, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC, 0o600)
        except OSError:
            return None  # cannot write next to the disk: read it in place
        os.unlink(name)
    try:
        fcntl.ioctl(copy, FICLONE, source)
    except OSError as error:
        os.close(copy)
        if error.errno in CLONE_REFUSED:
            return None  # the filesystem cannot clone: read in place (the VM is stopped)
        raise ArchiveError(f"cannot snapshot the disk: {error.strerror}") from None
    return copy


def data_chunks(fd: int, size: int, chunk_size: int) -> Iterator[int]:
    """Indices of the chunks that overlap data, in order; holes are skipped without reading."""
    position, after = 0, 0  # `after`: the first index not yet yielded
    while position < size:
        try:
            start = os.lseek(fd, position, os.SEEK_DATA)
            end = os.lseek(fd, start, os.SEEK_HOLE)
        except OSError as error:
            if error.errno == errno.ENXIO:  # no data past position
                return
            start, end = position, size  # no SEEK_DATA here: every chunk
        first, last = max(start // chunk_size, after), (min(end, size) - 1) // chunk_size
        yield from range(first, last + 1)
        after = max(after, last + 1)
        position = max(end, after * chunk_size)


def disk_size(fd: int) -> int:
    return os.lseek(fd, 0, os.SEEK_END)


class _PerThread:
    """Per thread: a zstd compressor and decompressor (they are not thread-safe), and reused
    buffers for a chunk and its sealed form (no fresh pages to fault in for every chunk)."""

    def __init__(self, chunk_size: int) -> None:
        self.chunk_size = chunk_size
        self.local = threading.local()

    def compressor(self) -> zstandard.ZstdCompressor:
        if not hasattr(self.local, "compressor"):
            self.local.compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
        compressor: zstandard.ZstdCompressor = self.local.compressor
        return compressor

    def decompressor(self) -> zstandard.ZstdDecompressor:
        if not hasattr(self.local, "decompressor"):
            self.local.decompressor = zstandard.ZstdDecompressor()
        decompressor: zstandard.ZstdDecompressor = self.local.decompressor
        return decompressor

    def buffers(self) -> tuple[bytearray, bytearray]:
        """(a chunk, a sealed chunk): the second fits any zstd output of a chunk, sealed."""
        if not hasattr(self.local, "buffers"):
            bound = self.chunk_size + (self.chunk_size >> 7) + (64 << 10) + fmt.OVERHEAD
            self.local.buffers = (bytearray(self.chunk_size), bytearray(bound))
        buffers: tuple[bytearray, bytearray] = self.local.buffers
        return buffers


def create(store_description: Mapping[str, str], prefix: str, kek: bytes, disk: str,
           stats_path: str, progress_path: str, chunk_size: int,
           workers: int | None) -> dict[str, int]:
    """Archive the disk under the prefix; the stats it wrote."""
    store = objects.open_store(store_description)
    keys = fmt.Keys.new()
    data_key = keys.wrap(kek)
    zeros = bytes(chunk_size)
    codecs = _PerThread(chunk_size)
    with disk_snapshot(disk) as fd:
        size = disk_size(fd)
        progress = Progress(progress_path, size)
        progress.update(0)
        # A previous attempt's objects go first, its manifest before its chunks.
        objects.delete_prefix(store, prefix, first=prefix + fmt.MANIFEST)

        def seal(index: int) -> tuple[int, fmt.Chunk | None]:
            offset = index * chunk_size
            length = min(chunk_size, size - offset)
            path = prefix + fmt.chunk_path(index)
            chunk, sealed = codecs.buffers()
            try:
                done = os.preadv(fd, [memoryview(chunk)[:length]], offset)
            except OSError as error:
                raise ArchiveError(f"cannot read the disk for {path}: {error.strerror}") from None
            if done != length:
                raise ArchiveError(f"the disk shrank while reading it, at {path}")
            data = memoryview(chunk)[:length]
            if chunk == zeros if length == chunk_size else data.tobytes() == bytes(length):
                return length, None
            digest = keys.chunk_hash(data)
            stored = keys.seal_into(index, codecs.compressor().compress(data), sealed)
            objects.put(store, path, memoryview(sealed)[:stored])
            return length, fmt.Chunk(index, stored, digest)

        chunks: list[fmt.Chunk] = []
        frontier = in_flight = 0  # bytes up to the end of the last chunk queued; of those queued

        def collect(results: Iterable[tuple[int, fmt.Chunk | None]]) -> None:
            nonlocal in_flight
            for length, chunk in results:
                in_flight -= length
                if chunk is not None:
                    chunks.append(chunk)

        with Window(*pool_size(chunk_size, workers)) as window:
            for index in data_chunks(fd, size, chunk_size):
                collect(window.submit(seal, index))
                frontier = min(size, (index + 1) * chunk_size)
                in_flight += frontier - index * chunk_size
                progress.update(frontier - in_flight)
            collect(window.drain())
        manifest = fmt.Manifest(chunk_size, size, sorted(chunks))
        encoded = manifest.encode(keys, data_key)
        objects.put(store, prefix + fmt.MANIFEST, encoded)  # last: the commit marker
    stats = {"logical_size_bytes": size, "physical_size_bytes": manifest.stored_bytes
             + len(encoded), "chunks": manifest.chunk_count, "stored_chunks": len(chunks)}
    write_atomic(stats_path, stats)
    progress.update(size, final=True)
    return stats


def load_manifest(store: ObjectStore, prefix: str,
                  kek: bytes) -> tuple[fmt.Manifest, fmt.Keys, int]:
    """The manifest, the archive's keys and the manifest's size in bytes."""
    try:
        raw = objects.get(store, prefix + fmt.MANIFEST)
    except objects.NotFound:
        raise ArchiveError(f"no manifest at {prefix}: the archive is incomplete") from None
    manifest, keys = fmt.Manifest.decode(raw, kek)
    return manifest, keys, len(raw)


def check_chunks(store: ObjectStore, prefix: str, manifest: fmt.Manifest, keys: fmt.Keys,
                 workers: int | None, sink: Callable[[int, bytes], object] | None) -> None:
    """Fetch, decrypt, decompress and check every stored chunk; hand each to sink(offset, data).
    """
    codecs = _PerThread(manifest.chunk_size)

    def fetch(chunk: fmt.Chunk) -> None:
        path = prefix + fmt.chunk_path(chunk.index)
        try:
            sealed = objects.get(store, path)
        except objects.NotFound:
            raise ArchiveError(f"chunk {path} is missing") from None
        if len(sealed) != chunk.stored_size:
            raise ArchiveError(f"chunk {path} is corrupted: {len(sealed)} bytes stored, the"
                               f" manifest says {chunk.stored_size}")
        compressed = keys.open(chunk.index, sealed, path)
        del sealed
        length = manifest.length(chunk.index)
        try:
            data = codecs.decompressor().decompress(compressed, max_output_size=length)
        except zstandard.ZstdError as error:
            raise ArchiveError(f"chunk {path} does not decompress: {error}") from None
        if len(data) != length or not hmac.compare_digest(keys.chunk_hash(data), chunk.hmac):
            raise ArchiveError(f"chunk {path} is corrupted: its hash does not match")
        if sink is not None:
            sink(chunk.index * manifest.chunk_size, data)

    with Window(*pool_size(manifest.chunk_size, workers)) as window:
        for chunk in manifest.chunks:
            window.submit(fetch, chunk)
        for _ in window.drain():
            pass


def restore(store_description: Mapping[str, str], prefix: str, kek: bytes, output: str,
            workers: int | None) -> None:
    """Write the archived disk to output (sparse: unstored chunks stay holes)."""
    store = objects.open_store(store_description)
    manifest, keys, _ = load_manifest(store, prefix, kek)
    partial = output + ".partial"
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    except OSError as error:
        raise ArchiveError(f"cannot create {partial}: {error.strerror}") from None
    try:
        try:
            os.ftruncate(fd, manifest.logical_size)

            def write(offset: int, data: bytes) -> None:
                if os.pwrite(fd, data, offset) != len(data):
                    raise ArchiveError(f"short write to {partial} at {offset}")

            check_chunks(store, prefix, manifest, keys, workers, write)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(partial, output)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        if isinstance(error, OSError):
            raise ArchiveError(f"cannot restore to {output}: {error.strerror}") from None
        raise


def verify(store_description: Mapping[str, str], prefix: str, kek: bytes,
           workers: int | None) -> dict[str, Any]:
    """Check the whole archive, writing nothing; a summary."""
    store = objects.open_store(store_description)
    manifest, keys, manifest_size = load_manifest(store, prefix, kek)
    check_chunks(store, prefix, manifest, keys, workers, None)
    return {"ok": True, "logical_size_bytes": manifest.logical_size,
            "physical_size_bytes": manifest.stored_bytes + manifest_size,
            "chunks": manifest.chunk_count, "stored_chunks": len(manifest.chunks)}
