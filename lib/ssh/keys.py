"""SSH keys: new client keys for hosts, and checking host keys operators pin."""

from __future__ import annotations

import asyncssh


class HostKeyError(ValueError):
    """A key given by an operator is not a usable OpenSSH public key."""


def new_client_key() -> tuple[bytes, str]:
    """A fresh Ed25519 key: (private key in OpenSSH format, public key line)."""
    key = asyncssh.generate_private_key("ssh-ed25519", comment="imagecp")
    return key.export_private_key(), key.export_public_key().decode().strip()


def normalize_host_key(text: str) -> str:
    """`type base64` of an OpenSSH public key line (comment dropped); refuses anything else."""
    try:
        key = asyncssh.import_public_key(text.strip())
    except (asyncssh.KeyImportError, ValueError) as error:
        raise HostKeyError(f"not an OpenSSH public key: {error}") from None
    return " ".join(key.export_public_key().decode().split()[:2])
