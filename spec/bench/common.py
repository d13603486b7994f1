"""Shared by the benchmarks: fresh databases, result lines (table or JSON), git commit."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

from pytest_postgresql.janitor import DatabaseJanitor

from lib import migrations

HOST = os.environ.get("TEST_DATABASE_HOST", "127.0.0.1")
PORT = int(os.environ.get("TEST_DATABASE_PORT", "5432"))


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@contextmanager
def fresh_database() -> Iterator[str]:
    """A migrated, throwaway database; yields its asyncpg URL."""
    name = f"imagecp_bench_{uuid.uuid4().hex[:10]}"
    with DatabaseJanitor(user="postgres", host=HOST, port=PORT, dbname=name):
        url = f"postgresql+asyncpg://postgres@{HOST}:{PORT}/{name}"
        # Alembic's environment runs its own event loop: keep it off the caller's.
        with ThreadPoolExecutor(1) as pool:
            pool.submit(migrations.upgrade, url).result()
        yield url


@dataclass
class Result:
    bench: str
    value: float
    unit: str
    note: str = ""


class Report:
    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.commit = git_commit()
        self.results: list[Result] = []

    def add(self, bench: str, value: float, unit: str, note: str = "") -> None:
        result = Result(bench, round(value, 4), unit, note)
        self.results.append(result)
        if self.as_json:
            print(json.dumps({"bench": bench, "value": result.value, "unit": unit,
                              "git_commit": self.commit, "note": note}), flush=True)
        else:
            print(f"{bench:<32} {result.value:>12g} {unit:<10} {note}", flush=True)
