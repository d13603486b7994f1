"""Secrets at rest: AES-256-GCM under the master key from configuration.

A sealed value is `v1` + a 12-byte random nonce + the ciphertext and tag. The associated data
names where the value lives (table, column, row id), so a sealed value copied to another row
or column does not open.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION = b"v1"
NONCE_BYTES = 12


class SecretError(Exception):
    """A master key is missing or malformed, or a sealed value does not open."""


def generate_master_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def master_key(env: Mapping[str, str] | None = None) -> bytes:
    env = os.environ if env is None else env
    text = env.get("IMAGECP_MASTER_KEY")
    if not text:
        raise SecretError("IMAGECP_MASTER_KEY is not set: it must hold 32 random bytes in"
                          " base64 (bin/ctl master-key prints a new one)")
    try:
        key = base64.b64decode(text, validate=True)
    except binascii.Error:
        raise SecretError("IMAGECP_MASTER_KEY is not valid base64") from None
    if len(key) != 32:
        raise SecretError(f"IMAGECP_MASTER_KEY must decode to 32 bytes, not {len(key)}")
    return key


def seal(key: bytes, plaintext: bytes, where: str) -> bytes:
    nonce = secrets.token_bytes(NONCE_BYTES)
    return VERSION + nonce + AESGCM(key).encrypt(nonce, plaintext, where.encode())


def unseal(key: bytes, sealed: bytes, where: str) -> bytes:
    if sealed[:2] != VERSION or len(sealed) < 2 + NONCE_BYTES + 16:
        raise SecretError(f"sealed value for {where} has an unknown format")
    nonce, body = sealed[2:2 + NONCE_BYTES], sealed[2 + NONCE_BYTES:]
    try:
        return AESGCM(key).decrypt(nonce, body, where.encode())
    except InvalidTag:
        raise SecretError(f"sealed value for {where} does not open with this master key"
                          ) from None
