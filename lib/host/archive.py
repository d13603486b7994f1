"""The agent's `archive` commands: a disk to an encrypted, compressed archive in an object store.

    python3 agent.py archive create --disk PATH --stats PATH --progress PATH [--chunk-mib 4]
                                    [--workers N]
    python3 agent.py archive restore --output PATH [--workers N]
    python3 agent.py archive verify [--workers N]

Each reads its secrets as one JSON object on stdin (never argv, never logged, never on disk):

    {"store": STORE, "prefix": "images/abc/", "kek": "<base64 of 32 bytes>"}

with STORE as objects.py describes it. Bad secrets exit 2 before anything is written. create
writes the archive (archive_format.py describes it; the manifest last), then the stats file
`{"logical_size_bytes", "physical_size_bytes", "chunks", "stored_chunks"}`, while the progress
file `{"bytes_done", "bytes_total"}` is replaced every half second or so. restore writes
`<output>.partial`, renamed to the output once every chunk checked out. verify checks the whole
archive, writes nothing and prints a one-line JSON summary. Any failure exits 1 with one line on
stderr, without secrets.

This module is standard library only: the pipelines (zstandard, cryptography, obstore) are
imported when an archive command runs, so the agent's other commands run on a bare Python.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import signal
import sys
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lib.host import objects
else:  # on the host: a sibling, found on sys.path[0]
    import objects

OK, FAILURE, USAGE = 0, 1, 2
KEK_SIZE = 32
MAX_CHUNK_MIB = 64


@dataclass(frozen=True)
class Secrets:
    store: dict[str, str]
    prefix: str
    kek: bytes
    words: tuple[str, ...]  # the secret strings, redacted from any message

    def redact(self, text: str) -> str:
        for word in self.words:
            text = text.replace(word, "[redacted]")
        return text


def parse_secrets(raw: bytes) -> Secrets:
    """The secrets from stdin; ValueError with a message that quotes none of them."""
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise ValueError("stdin must hold one JSON object (the secrets)") from None
    if not isinstance(document, dict) or document.keys() != {"store", "prefix", "kek"}:
        raise ValueError("the secrets must be a JSON object with exactly store, prefix, kek")
    store = objects.check_description(document["store"])
    prefix = document["prefix"]
    if (not isinstance(prefix, str) or not prefix.endswith("/") or prefix.startswith("/")
            or any(part in ("", ".", "..") for part in prefix[:-1].split("/"))):
        raise ValueError("prefix must be a relative path ending in '/', like 'images/abc/'")
    try:
        kek = base64.b64decode(document["kek"], validate=True)
    except (TypeError, ValueError, binascii.Error):
        raise ValueError("kek must be base64") from None
    if len(kek) != KEK_SIZE:
        raise ValueError(f"kek must be {KEK_SIZE} bytes, base64-encoded")
    words = [document["kek"], store.get("secret_key", ""), store.get("access_key", "")]
    return Secrets(store, prefix, kek, tuple(word for word in words if len(word) >= 4))


class Interrupted(Exception):
    pass


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(f"interrupted by signal {signum}")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _run(args: argparse.Namespace, secrets: Secrets) -> int:
    try:  # a sibling; needs zstandard, cryptography and obstore
        if TYPE_CHECKING:
            from lib.host import archive_pipeline as pipeline
        else:
            import archive_pipeline as pipeline
    except ImportError as error:
        print(f"archive: this host lacks a Python module: {error}", file=sys.stderr)
        return FAILURE
    workers = args.workers
    if args.command == "create":
        pipeline.create(secrets.store, secrets.prefix, secrets.kek, args.disk, args.stats,
                        args.progress, args.chunk_mib << 20, workers)
    elif args.command == "restore":
        pipeline.restore(secrets.store, secrets.prefix, secrets.kek, args.output, workers)
    else:
        summary = pipeline.verify(secrets.store, secrets.prefix, secrets.kek, workers)
        print(json.dumps(summary), flush=True)
    return OK


def _handler(args: argparse.Namespace, argv: list[str] | None) -> int:
    if argv is not None:
        print("archive commands take nothing after `--`", file=sys.stderr)
        return USAGE
    raw = b"" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer.read()
    try:
        secrets = parse_secrets(raw)
    except ValueError as error:
        print(f"archive: bad secrets on stdin: {error}", file=sys.stderr)
        return USAGE
    del raw
    signal.signal(signal.SIGTERM, _on_signal)  # so the cleanups run
    try:
        return _run(args, secrets)
    except (Exception, KeyboardInterrupt) as error:
        expected = {"ArchiveError", "StoreError", "NotFound", "Interrupted"}
        message = str(error) if type(error).__name__ in expected else (
            f"unexpected {type(error).__name__}: {error}")
        print(f"archive: {secrets.redact(_one_line(message))}", file=sys.stderr, flush=True)
        return FAILURE


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def _chunk_mib(text: str) -> int:
    value = _positive(text)
    if value > MAX_CHUNK_MIB:
        raise argparse.ArgumentTypeError(f"at most {MAX_CHUNK_MIB} MiB")
    return value


def add_parser(groups: argparse._SubParsersAction[Any]) -> None:
    """Register the `archive` group: `archive create|restore|verify [options]`."""
    group = groups.add_parser("archive", help="disk archives in an object store")
    group.set_defaults(handler=_handler)
    commands = group.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="archive a (stopped) disk")
    create.add_argument("--disk", required=True, help="the disk image or block device")
    create.add_argument("--stats", required=True, help="JSON file written at the end")
    create.add_argument("--progress", required=True, help="JSON file replaced as it goes")
    create.add_argument("--chunk-mib", type=_chunk_mib, default=4, help="chunk size (MiB)")
    restore = commands.add_parser("restore", help="write the archived disk to a file")
    restore.add_argument("--output", required=True, help="the file to write")
    verify = commands.add_parser("verify", help="check the archive; writes nothing")
    for parser in (create, restore, verify):
        parser.add_argument("--workers", type=_positive, default=None,
                            help="threads (default: one per core)")
