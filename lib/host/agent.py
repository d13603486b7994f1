"""Host agent entry point; the control plane runs it on a host over SSH.

    python3 agent.py [--root DIR] unit COMMAND UNIT [options] [-- ARGV...]
    python3 agent.py archive create|restore|verify [options]     (secrets on stdin)

Nothing from the control plane's repository: this file and its siblings are copied to the host
as they are. Each command group lives in a sibling module (`unit.py`, `archive.py`), found
because this file's directory is sys.path[0]. Units need only the standard library (Python >=
3.9); the archive also zstandard, cryptography and obstore, imported when it runs. Exit codes:
0 done, 1 internal failure, 2 bad usage, 3 refused.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

import archive  # type: ignore[import-not-found]  # a sibling module on the host
import unit  # type: ignore[import-not-found]  # a sibling module on the host

DEFAULT_ROOT = "~/.imagecp/units"


class Parser(argparse.ArgumentParser):
    """Reports bad usage as one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def main(argv: list[str]) -> int:
    # Everything after the first `--` is a command for the unit to run, passed on untouched.
    words, command = argv, None
    if "--" in argv:
        split = argv.index("--")
        words, command = argv[:split], argv[split + 1:]
    parser = Parser(prog="agent.py", description="imagecp host agent")
    parser.add_argument("--root", default=DEFAULT_ROOT, help="state directory of the units")
    groups = parser.add_subparsers(dest="group", required=True, parser_class=Parser)
    unit.add_parser(groups)
    archive.add_parser(groups)
    args = parser.parse_args(words)
    args.root = os.path.abspath(os.path.expanduser(args.root))
    status: int = args.handler(args, command)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
