"""Running commands on hosts over SSH (asyncssh): templates, cached connections, errors."""

from lib.ssh.command import (
    ClientKeyRefused,
    HostKeyMismatch,
    SshCommandFailed,
    SshError,
    SshTimeout,
    SshUnreachable,
    TemplateError,
    render,
)
from lib.ssh.session import Sessions, Target, cmd, current, deadline, run_scope

__all__ = [
    "ClientKeyRefused", "HostKeyMismatch", "Sessions", "SshCommandFailed", "SshError", "SshTimeout",
    "SshUnreachable", "Target", "TemplateError", "cmd", "current", "deadline", "render",
    "run_scope",
]
