"""Shell commands from a constant template and individually quoted arguments.

    render("imagecp-agent unit run :unit :shelljoin_argv", unit="u1", argv=["a b", "$(x)"])
    == "imagecp-agent unit run u1 'a b' '$(x)'"

`:name` takes one value, quoted as one word; `:shelljoin_name` takes a list, each element a
word. Every placeholder must be given and every argument used; a placeholder inside quotes
is refused (quoting is ours to do). Secrets never go into a command: pass them on stdin.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from typing import Any

_PLACEHOLDER = re.compile(r":([a-z_][a-z0-9_]*)")


class TemplateError(ValueError):
    """A template and its arguments do not fit together."""


def render(template: str, **arguments: Any) -> str:
    if "'" in template or '"' in template:
        raise TemplateError(f"templates carry no quotes; arguments are quoted for you: {template}")
    used: set[str] = set()

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        key = name.removeprefix("shelljoin_")
        if key not in arguments:
            raise TemplateError(f"no value for :{name} in {template!r}")
        used.add(key)
        value = arguments[key]
        if name.startswith("shelljoin_"):
            if isinstance(value, str) or not isinstance(value, Sequence):
                raise TemplateError(f":{name} takes a list of words, got {value!r}")
            return " ".join(shlex.quote(str(word)) for word in value)
        return shlex.quote(str(value))

    command = _PLACEHOLDER.sub(substitute, template)
    unused = set(arguments) - used
    if unused:
        raise TemplateError(f"arguments {sorted(unused)} are not in {template!r}")
    return command


class SshError(Exception):
    """A command failed on the host, or the host could not be reached."""

    def __init__(self, message: str, *, command: str = "", exit_status: int | None = None,
                 exit_signal: str | None = None, stdout: str = "", stderr: str = "") -> None:
        super().__init__(message)
        self.command = command
        self.exit_status = exit_status
        self.exit_signal = exit_signal
        self.stdout = stdout
        self.stderr = stderr


class SshCommandFailed(SshError):
    """The command ran and exited non-zero, or was killed by a signal."""


class SshTimeout(SshError):
    """The command did not finish in time; it was abandoned."""


class SshUnreachable(SshError):
    """No session could be had: connection refused or lost, DNS, timeout, authentication."""


class HostKeyMismatch(SshUnreachable):
    """The host presented a key that is not pinned for it: nothing was run."""


class ClientKeyRefused(SshUnreachable):
    """The host does not accept our client key (not authorized for the user)."""
