"""Configuration from the environment: lib/config.py."""

from __future__ import annotations

import pytest

from lib import config
from lib.config import ConfigError


@pytest.mark.parametrize("raw", [
    "postgresql://alice:secret@db.example:6543/imagecp",
    "postgres://alice:secret@db.example:6543/imagecp",
    "postgresql+asyncpg://alice:secret@db.example:6543/imagecp",
    "  postgresql://alice:secret@db.example:6543/imagecp\n",
])
def test_database_url_is_accepted_and_normalized_to_asyncpg(raw: str) -> None:
    url = config.load({"DATABASE_URL": raw}).database_url
    assert url.drivername == "postgresql+asyncpg"
    assert url.host == "db.example"
    assert url.port == 6543
    assert url.database == "imagecp"
    assert url.username == "alice"
    assert url.password == "secret"


def test_database_url_with_mysql_is_rejected_naming_database_url() -> None:
    with pytest.raises(ConfigError, match="DATABASE_URL") as raised:
        config.load({"DATABASE_URL": "mysql://alice@db.example/imagecp"})
    assert "mysql" in str(raised.value)


@pytest.mark.parametrize("raw", ["garbage", "not a url at all", ""])
def test_database_url_garbage_is_rejected_naming_database_url(raw: str) -> None:
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        config.load({"DATABASE_URL": raw})


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


def test_default_database_url_when_absent() -> None:
    url = config.load({}).database_url
    assert url.render_as_string(hide_password=False) == config.DEFAULT_DATABASE_URL
    assert url.drivername == "postgresql+asyncpg"
    assert url.host == "127.0.0.1"
    assert url.port == 5432
    assert url.database == "imagecp"


def test_load_reads_only_the_explicit_mapping(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "mysql://elsewhere/db")
    monkeypatch.setenv("IMAGECP_ENV", "nonsense")
    monkeypatch.setenv("LOG_LEVEL", "nonsense")
    loaded = config.load({})
    assert loaded.database_url.database == "imagecp"
    assert loaded.environment == "development"
    assert loaded.log_level == "info"


def test_load_without_a_mapping_reads_the_process_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgres://bob@envhost/envdb")
    monkeypatch.setenv("IMAGECP_ENV", "production")
    monkeypatch.delenv("LOG_FORMAT", raising=False)
    monkeypatch.setenv("LOG_LEVEL", "warning")
    loaded = config.load()
    assert loaded.database_url.host == "envhost"
    assert loaded.database_url.database == "envdb"
    assert loaded.production
    assert loaded.log_format == "json"
    assert loaded.log_level == "warning"


# -- IMAGECP_ENV ---------------------------------------------------------------------------

def test_imagecp_env_defaults_to_development() -> None:
    loaded = config.load({})
    assert loaded.environment == "development"
    assert not loaded.production


@pytest.mark.parametrize("name", ["development", "test", "production"])
def test_imagecp_env_accepts_the_three_environments(name: str) -> None:
    loaded = config.load({"IMAGECP_ENV": name})
    assert loaded.environment == name
    assert loaded.production == (name == "production")


@pytest.mark.parametrize("name", ["staging", "prod", ""])
def test_imagecp_env_invalid_is_rejected_naming_imagecp_env(name: str) -> None:
    with pytest.raises(ConfigError, match="IMAGECP_ENV"):
        config.load({"IMAGECP_ENV": name})


# -- LOG_FORMAT ----------------------------------------------------------------------------

def test_log_format_defaults_to_json_in_production() -> None:
    assert config.load({"IMAGECP_ENV": "production"}).log_format == "json"


@pytest.mark.parametrize("env", [{}, {"IMAGECP_ENV": "development"}, {"IMAGECP_ENV": "test"}])
def test_log_format_defaults_to_console_outside_production(env: dict[str, str]) -> None:
    assert config.load(env).log_format == "console"


@pytest.mark.parametrize(("environment", "log_format"), [
    ("production", "console"), ("development", "json"), ("test", "json"),
])
def test_log_format_explicit_value_wins_over_the_default(environment: str,
                                                         log_format: str) -> None:
    loaded = config.load({"IMAGECP_ENV": environment, "LOG_FORMAT": log_format})
    assert loaded.log_format == log_format


@pytest.mark.parametrize("value", ["xml", "text", ""])
def test_log_format_invalid_is_rejected_naming_log_format(value: str) -> None:
    with pytest.raises(ConfigError, match="LOG_FORMAT"):
        config.load({"LOG_FORMAT": value})


# -- LOG_LEVEL -----------------------------------------------------------------------------

def test_log_level_defaults_to_info() -> None:
    assert config.load({}).log_level == "info"


@pytest.mark.parametrize("value", ["debug", "info", "warning", "error", "critical"])
def test_log_level_accepts_logging_level_names(value: str) -> None:
    assert config.load({"LOG_LEVEL": value}).log_level == value


def test_log_level_is_case_insensitive() -> None:
    assert config.load({"LOG_LEVEL": "DEBUG"}).log_level == "debug"


@pytest.mark.parametrize("value", ["verbose", "trace", "10", ""])
def test_log_level_invalid_is_rejected_naming_log_level(value: str) -> None:
    with pytest.raises(ConfigError, match="LOG_LEVEL"):
        config.load({"LOG_LEVEL": value})


def test_config_is_immutable() -> None:
    loaded = config.load({})
    with pytest.raises(AttributeError):
        loaded.environment = "production"  # type: ignore[misc]
