"""`collector config show [--sources]`, the settings' word in --help, and the error without a database: one short
line (the URI without its password, the cause, what to do) within database.timeout, the detail with --verbose."""

from __future__ import annotations

import socket
import time
import tomllib
from dataclasses import replace

import pytest
from click.testing import CliRunner

from collector import config
from collector.app import DatabaseUnavailable, connect
from collector.cli import main
from tests.conftest import make_settings

CLEAN = {"MONGODB_URI": None, "COLLECTOR_ENV": None, "COLLECTOR_CONFIG_DIR": None}


def invoke(*args, **env):
    return CliRunner().invoke(main, list(args), env={**CLEAN, **env})


@pytest.fixture
def etc(tmp_path):
    directory = tmp_path / "etc"
    directory.mkdir()
    (directory / "production.toml").write_text("# the operator's\n[daemon]\nconcurrency = 7\n\n[services.spotify]\n"
                                              "client_id = 'app'\nclient_secret = 'hunter2-secret'\n")
    return directory


def test_config_show_sources_names_the_file_line_variable_and_flag(etc):
    result = invoke("--env", "production", "--set", "daemon.lease_ttl=240", "config", "show", "--sources",
                    COLLECTOR_CONFIG_DIR=str(etc), COLLECTOR_FLEET__TTL="30",
                    MONGODB_URI="mongodb://bob:pa55word@db.example:27017/?authSource=admin")
    assert result.exit_code == 0, result.output
    lines, table = {}, ""
    for line in result.output.splitlines():
        if line.startswith("["):
            table = line.strip("[]")
        elif " = " in line:
            lines[table, line.split(" = ")[0]] = line
    assert lines["daemon", "concurrency"].split("#")[0].strip() == "concurrency = 7"
    assert lines["daemon", "concurrency"].endswith(f"# {etc / 'production.toml'}:3")
    assert lines["daemon", "lease_ttl"].endswith("# --set daemon.lease_ttl")
    assert lines["fleet", "ttl"].endswith("# $COLLECTOR_FLEET__TTL")
    assert lines["database", "uri"].startswith('uri = "mongodb://bob:****@db.example:27017/?authSource=admin"')
    assert lines["database", "uri"].endswith("# $MONGODB_URI")
    defaults = config.load(environ={}).sources[0]
    assert lines["schedule", "max_errors"].endswith(f"# {defaults}:{_line(defaults, 'max_errors = ')}")
    assert lines["services.spotify", "client_id"].endswith(f"# {etc / 'production.toml'}:6")
    assert lines["services.spotify", "client_secret"].startswith('client_secret = "****"')
    assert lines["services.reddit_saved", "concurrency"].startswith("concurrency = 2")
    assert "pa55word" not in result.output and "hunter2" not in result.output
    assert str(etc / "production.toml") in result.output.splitlines()[1]  # the files read, in order


def _line(path, text):
    with open(path) as lines:
        return next(n for n, line in enumerate(lines, 1) if line.startswith(text))


def test_config_show_is_toml_that_gives_the_same_settings_back(tmp_path):
    shown = invoke("--env", "production", "config", "show")
    assert shown.exit_code == 0, shown.output
    parsed = tomllib.loads(shown.output)
    assert parsed["services"]["reddit_saved"]["concurrency"] == 2  # what a wheel without TOML files lost
    assert all("token_url" in parsed["services"][s] for s in ("gitlab", "youtube", "spotify", "reddit_saved"))
    (tmp_path / "all.toml").write_text(shown.output)
    again = config.load(environment="production", environ={}, config_dir=tmp_path)
    first = config.load(environment="production", environ={})
    assert replace(again, sources=(), origins={}) == replace(first, sources=(), origins={})


def test_help_says_where_settings_come_from():
    text = invoke("--help").output
    assert "config/default.toml" not in text
    for words in ("/etc/collector", "--config", "COLLECTOR_", "config show"):
        assert words in " ".join(text.split()), words


def test_a_configuration_error_is_one_clear_line(etc):
    (etc / "site.toml").write_text("[daemon]\nconcurency = 3\n")
    result = invoke("config", "show", COLLECTOR_CONFIG_DIR=str(etc))
    assert result.exit_code == 2
    said = f"{etc / 'site.toml'}:2: unknown setting 'concurency' in [daemon] (did you mean concurrency?)"
    assert said in result.output
    assert "unknown environment 'bogus'" in invoke("--env", "bogus", "config", "show").output


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_no_database_is_one_short_line_within_the_timeout():
    settings = make_settings(database={"uri": f"mongodb://bob:hunter2@127.0.0.1:{closed_port()}/", "timeout": 0.5})
    began = time.monotonic()
    with pytest.raises(DatabaseUnavailable) as error:
        await connect(settings)
    assert time.monotonic() - began < 0.5 + 0.5
    message = str(error.value)
    assert "\n" not in message and len(message) < 300, message
    for words in ("mongodb://bob:[redacted]@127.0.0.1:", "within 0.5s", "connection refused", "MONGODB_URI",
                  "--mongodb-uri", "./scripts/dev.sh", "--verbose"):
        assert words in message, words
    assert "hunter2" not in message + error.value.detail
    assert "111" in error.value.detail or "refused" in error.value.detail.lower()


@pytest.mark.parametrize("verbose", [False, True])
def test_the_daemon_without_a_database_exits_3_with_the_detail_only_when_verbose(verbose):
    uri = f"mongodb://127.0.0.1:{closed_port()}/"
    args = ["--verbose"] if verbose else []
    result = invoke(*args, "--env", "test", "--mongodb-uri", uri, "--set", "database.timeout=0.3", "--mode", "normal")
    assert result.exit_code == 3, result.output
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith(f"collector: cannot reach MongoDB at {uri} within 0.3s: connection refused")
    assert len(lines) == (2 if verbose else 1), lines
    listed = invoke(*args, "--env", "test", "--mongodb-uri", uri, "--set", "database.timeout=0.3", "networks", "list")
    assert listed.exit_code == 1 and len(listed.stderr.strip().splitlines()) == (2 if verbose else 1)
