"""The archive's format: its keys, its sealed chunks and its manifest.

Under a prefix, an archive is `chunks/<index as 16 hex digits>` for each chunk that holds a
non-zero byte, and `manifest.json`, written last: the commit marker. A run draws a random 32-byte
data key (DEK) and derives three keys from it with HMAC-SHA-256 (an HKDF expand of one block):

    encryption key   each chunk: zstd, then AES-256-GCM; nonce = the index (12 bytes, big-endian;
                     unique since the DEK is new each run), associated data = label + index; the
                     object is nonce || ciphertext || tag
    hash key         each chunk's plaintext hash: HMAC-SHA-256, so the manifest reveals nothing
    MAC key          the manifest's MAC: HMAC-SHA-256 over its canonical JSON body

The DEK itself is wrapped with the key-encryption key (KEK): AES-256-GCM, random nonce, fixed
associated data. The manifest (JSON):

    {"format": "imagecp-archive", "version": 1, "chunk_size": 4194304, "logical_size": N,
     "compression": "zstd", "cipher": "aes-256-gcm", "chunk_hash": "hmac-sha256",
     "data_key": {"nonce": B64, "wrapped": B64},
     "chunks": [{"index": I, "stored_size": S, "hmac": HEX}, ...],   (increasing indices)
     "mac": HEX}

The MAC covers every other field, as `json.dumps(body, sort_keys=True, separators=(",", ":"))`.
Chunks missing from the list are all zeros. Needs `cryptography`; the agent imports this module
only when an archive command runs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

FORMAT, VERSION = "imagecp-archive", 1
MANIFEST = "manifest.json"
COMPRESSION, CIPHER, CHUNK_HASH = "zstd", "aes-256-gcm", "hmac-sha256"
KEY_SIZE, NONCE_SIZE, TAG_SIZE = 32, 12, 16
OVERHEAD = NONCE_SIZE + TAG_SIZE  # of a sealed chunk over its compressed form
MAX_CHUNK_SIZE = 64 << 20
LABEL = b"imagecp-archive/v1/"
DATA_KEY_AAD = LABEL + b"data-key"
FIELDS = {"format", "version", "chunk_size", "logical_size", "compression", "cipher",
          "chunk_hash", "data_key", "chunks", "mac"}


class ArchiveError(Exception):
    """An archive command failed; str() is one line, safe to print (no secret in it)."""


def chunk_path(index: int) -> str:
    return f"chunks/{index:016x}"


def _derive(dek: bytes, purpose: bytes) -> bytes:
    return hmac.digest(dek, LABEL + purpose + b"\x01", "sha256")


class Keys:
    """The keys of one archive, derived from its data key."""

    def __init__(self, dek: bytes) -> None:
        self.dek = dek
        self.aead = AESGCM(_derive(dek, b"chunk-encryption"))
        self.hash_key = _derive(dek, b"chunk-hash")
        self.mac_key = _derive(dek, b"manifest-mac")

    @classmethod
    def new(cls) -> Keys:
        return cls(os.urandom(KEY_SIZE))

    def wrap(self, kek: bytes) -> dict[str, str]:
        nonce = os.urandom(NONCE_SIZE)
        wrapped = AESGCM(kek).encrypt(nonce, self.dek, DATA_KEY_AAD)
        return {"nonce": _b64(nonce), "wrapped": _b64(wrapped)}

    @classmethod
    def unwrap(cls, kek: bytes, data_key: dict[str, str]) -> Keys:
        try:
            dek = AESGCM(kek).decrypt(
                _unb64(data_key["nonce"]), _unb64(data_key["wrapped"]), DATA_KEY_AAD)
        except InvalidTag:
            raise ArchiveError("the KEK does not unwrap the archive's data key: wrong KEK, or"
                               " a tampered manifest") from None
        return cls(dek)

    def chunk_hash(self, plaintext: bytes | memoryview) -> bytes:
        return hmac.digest(self.hash_key, plaintext, "sha256")

    def seal_into(self, index: int, compressed: bytes, buffer: bytearray) -> int:
        """Write the sealed chunk at the start of buffer; its size."""
        nonce = index.to_bytes(NONCE_SIZE, "big")
        size = NONCE_SIZE + len(compressed) + TAG_SIZE
        view = memoryview(buffer)
        view[:NONCE_SIZE] = nonce
        if hasattr(self.aead, "encrypt_into"):  # a newer cryptography: no copy
            self.aead.encrypt_into(nonce, compressed, _chunk_aad(index), view[NONCE_SIZE:size])
        else:
            view[NONCE_SIZE:size] = self.aead.encrypt(nonce, compressed, _chunk_aad(index))
        return size

    def open(self, index: int, sealed: memoryview, name: str) -> bytes:
        """The compressed chunk; ArchiveError naming it if the object `name` is not this
        archive's chunk `index`."""
        try:
            return self.aead.decrypt(sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], _chunk_aad(index))
        except InvalidTag:
            raise ArchiveError(f"chunk {name} is corrupted: it fails authentication") from None

    def mac(self, body: dict[str, Any]) -> str:
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        return hmac.new(self.mac_key, canonical, hashlib.sha256).hexdigest()


def _chunk_aad(index: int) -> bytes:
    return LABEL + b"chunk/" + index.to_bytes(8, "big")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


@dataclass(frozen=True, order=True)
class Chunk:
    index: int
    stored_size: int
    hmac: bytes


@dataclass(frozen=True)
class Manifest:
    chunk_size: int
    logical_size: int
    chunks: list[Chunk]

    @property
    def chunk_count(self) -> int:
        return -(-self.logical_size // self.chunk_size)

    def length(self, index: int) -> int:
        """Bytes of the disk in chunk `index` (the last may be short)."""
        return min(self.chunk_size, self.logical_size - index * self.chunk_size)

    @property
    def stored_bytes(self) -> int:
        return sum(chunk.stored_size for chunk in self.chunks)

    def encode(self, keys: Keys, data_key: dict[str, str]) -> bytes:
        body: dict[str, Any] = {
            "format": FORMAT, "version": VERSION, "chunk_size": self.chunk_size,
            "logical_size": self.logical_size, "compression": COMPRESSION, "cipher": CIPHER,
            "chunk_hash": CHUNK_HASH, "data_key": data_key,
            "chunks": [{"index": c.index, "stored_size": c.stored_size, "hmac": c.hmac.hex()}
                       for c in sorted(self.chunks)]}
        return json.dumps({**body, "mac": keys.mac(body)}, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes | memoryview, kek: bytes) -> tuple[Manifest, Keys]:
        """The manifest and the archive's keys; ArchiveError if malformed, tampered or the KEK
        is wrong."""
        try:
            document = json.loads(bytes(raw))
        except (UnicodeDecodeError, ValueError):
            raise ArchiveError("the manifest is not JSON: it is corrupted") from None
        try:
            manifest, data_key = cls._parse(document)
        except (AttributeError, KeyError, TypeError, ValueError, binascii.Error) as error:
            raise ArchiveError(f"the manifest is malformed: {error}") from None
        keys = Keys.unwrap(kek, data_key)
        body = {key: value for key, value in document.items() if key != "mac"}
        if not hmac.compare_digest(keys.mac(body), str(document["mac"])):
            raise ArchiveError("the manifest fails its MAC check: it was tampered with")
        return manifest, keys

    @classmethod
    def _parse(cls, document: Any) -> tuple[Manifest, dict[str, str]]:
        if not isinstance(document, dict) or document.keys() != FIELDS:
            raise ValueError(f"expected exactly the fields {sorted(FIELDS)}")
        expected = {"format": FORMAT, "version": VERSION, "compression": COMPRESSION,
                    "cipher": CIPHER, "chunk_hash": CHUNK_HASH}
        for field, value in expected.items():
            if document[field] != value:
                raise ValueError(f"{field} is not {value!r}")
        chunk_size = _integer(document, "chunk_size", 1, MAX_CHUNK_SIZE)
        logical_size = _integer(document, "logical_size", 0, 1 << 62)
        manifest = cls(chunk_size, logical_size, [])
        last = -1
        for entry in document["chunks"]:
            if entry.keys() != {"index", "stored_size", "hmac"}:
                raise ValueError("a chunk entry has other fields than index, stored_size, hmac")
            index = _integer(entry, "index", last + 1, manifest.chunk_count - 1)
            stored_size = _integer(entry, "stored_size", NONCE_SIZE + TAG_SIZE,
                                   2 * chunk_size + 4096)
            digest = bytes.fromhex(entry["hmac"])
            if len(digest) != 32:
                raise ValueError(f"chunk {index}: hmac is not 32 bytes")
            manifest.chunks.append(Chunk(index, stored_size, digest))
            last = index
        data_key = document["data_key"]
        if not isinstance(data_key, dict) or data_key.keys() != {"nonce", "wrapped"}:
            raise ValueError("data_key must hold exactly nonce and wrapped")
        if len(_unb64(data_key["nonce"])) != NONCE_SIZE:
            raise ValueError("data_key nonce is not 12 bytes")
        if len(_unb64(data_key["wrapped"])) != KEY_SIZE + TAG_SIZE:
            raise ValueError("data_key wrapped is not 48 bytes")
        if not isinstance(document["mac"], str):
            raise ValueError("mac is not a string")
        return manifest, data_key


def _integer(entry: dict[str, Any], field: str, low: int, high: int) -> int:
    value = entry[field]
    if type(value) is not int or not low <= value <= high:
        raise ValueError(f"{field} {value!r} is not an integer in [{low}, {high}]")
    return value
