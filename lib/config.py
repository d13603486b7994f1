"""Configuration read from the environment, validated once, immutable afterwards."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message names the variable."""


DEFAULT_DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/imagecp"


def normalize_database_url(raw: str) -> URL:
    """Accept postgresql://, postgres:// or postgresql+asyncpg:// URLs; return an asyncpg one."""
    try:
        url = make_url(raw.strip())
    except ArgumentError as error:
        raise ConfigError(f"DATABASE_URL is not a database URL: {error}") from None
    if url.drivername in ("postgresql", "postgres", "postgresql+asyncpg"):
        return url.set(drivername="postgresql+asyncpg")
    raise ConfigError(
        f"DATABASE_URL must be a postgresql:// URL, got driver {url.drivername!r}"
    )


def _environment_name(env: Mapping[str, str]) -> str:
    name = env.get("IMAGECP_ENV", "development").strip().lower()
    if name not in ("development", "test", "production"):
        raise ConfigError(
            f"IMAGECP_ENV must be development, test or production, got {name!r}"
        )
    return name


@dataclass(frozen=True)
class Config:
    database_url: URL
    environment: str
    log_format: str  # "json" or "console"
    log_level: str
    max_capture_gib: int = 40  # the largest disk a version may be captured from
    version_quota: int = 16  # versions per project, unless the project row says otherwise

    @property
    def production(self) -> bool:
        return self.environment == "production"


def _positive(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, str(default)).strip()
    if not raw.isdigit() or int(raw) == 0:
        raise ConfigError(f"{name} must be a positive whole number, got {raw!r}")
    return int(raw)


def load(env: Mapping[str, str] | None = None) -> Config:
    """Read the configuration from `env` (the process environment by default)."""
    env = os.environ if env is None else env
    environment = _environment_name(env)
    log_format = env.get("LOG_FORMAT", "json" if environment == "production" else "console")
    if log_format not in ("json", "console"):
        raise ConfigError(f"LOG_FORMAT must be json or console, got {log_format!r}")
    log_level = env.get("LOG_LEVEL", "info").lower()
    if log_level not in ("debug", "info", "warning", "error", "critical"):
        raise ConfigError(f"LOG_LEVEL must be a logging level name, got {log_level!r}")
    return Config(
        max_capture_gib=_positive(env, "IMAGECP_MAX_CAPTURE_GIB", 40),
        version_quota=_positive(env, "IMAGECP_VERSION_QUOTA", 16),
        database_url=normalize_database_url(env.get("DATABASE_URL", DEFAULT_DATABASE_URL)),
        environment=environment,
        log_format=log_format,
        log_level=log_level,
    )
