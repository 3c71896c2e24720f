"""Where settings come from, later wins: the package, /etc/collector (here a temporary stand-in named by
COLLECTOR_CONFIG_DIR), --config DIR, COLLECTOR_* variables, flags; and the errors that name the file and line."""

from __future__ import annotations

import re

import pytest

from collector import config


@pytest.fixture
def etc(tmp_path):
    """A stand-in for /etc/collector."""
    directory = tmp_path / "etc"
    directory.mkdir()
    return directory


def load(etc, environment="production", **kw):
    environ = {"COLLECTOR_CONFIG_DIR": str(etc), **kw.pop("environ", {})}
    return config.load(environment=environment, environ=environ, **kw)


def test_an_operators_production_toml_wins_over_the_defaults(etc):
    (etc / "production.toml").write_text("[daemon]\nconcurrency = 7\n")
    s = load(etc)
    assert s.daemon.concurrency == 7  # the package's production overlay says 128
    assert s.origins["daemon", "concurrency"] == f"{etc / 'production.toml'}:2"
    assert s.sources[-1] == str(etc / "production.toml")


def test_every_toml_file_is_read_sorted_then_the_environments_own(etc):
    (etc / "20-late.toml").write_text("[daemon]\nconcurrency = 20\npoll_interval = 2.0\n")
    (etc / "10-early.toml").write_text("[daemon]\nconcurrency = 10\nshutdown_grace = 9.0\n")
    (etc / "production.toml").write_text("[daemon]\npoll_interval = 3.0\n")
    (etc / "development.toml").write_text("[daemon]\nconcurrency = 99\n")  # another environment's: not read
    (etc / "notes.txt").write_text("not toml")
    s = load(etc)
    assert (s.daemon.concurrency, s.daemon.poll_interval, s.daemon.shutdown_grace) == (20, 3.0, 9.0)
    assert s.sources[2:] == tuple(str(etc / n) for n in ("10-early.toml", "20-late.toml", "production.toml"))
    assert load(etc, "development").daemon.concurrency == 99


def test_a_config_dir_comes_after_the_system_directory(etc, tmp_path):
    (etc / "site.toml").write_text("[daemon]\nconcurrency = 7\nlease_ttl = 200.0\n")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "site.toml").write_text("[daemon]\nconcurrency = 8\n")
    s = load(etc, config_dir=mine)
    assert (s.daemon.concurrency, s.daemon.lease_ttl) == (8, 200.0)
    with pytest.raises(config.ConfigError, match=r"no directory .*--config"):
        load(etc, config_dir=tmp_path / "missing")


def test_the_environment_beats_the_files_and_a_flag_beats_the_environment(etc):
    (etc / "production.toml").write_text("[daemon]\nconcurrency = 7\n")
    environ = {"COLLECTOR_DAEMON__CONCURRENCY": "9"}
    assert load(etc, environ=environ).daemon.concurrency == 9
    s = load(etc, environ=environ, flags=[(("daemon", "concurrency"), 11, "--concurrency")])
    assert s.daemon.concurrency == 11 and s.origins["daemon", "concurrency"] == "--concurrency"


def _line(path, text):
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if text in line)


@pytest.mark.parametrize("body, needle, message", [
    ("[daemon]\npoll_interval = 1.0\nconcurency = 3\n", "concurency", "unknown setting 'concurency' in [daemon]"),
    ("# site\n\n[deamon]\nconcurrency = 3\n", "[deamon]", "unknown section [deamon]"),
    ("[services.githb]\nconcurrency = 3\n", "[services.githb]", "unknown service [services.githb]"),
    ("[services.github]\nconcurrency = 3\nbase_ulr = 'x'\n", "base_ulr", "unknown setting 'base_ulr'"),
    ("[services]\ngithb.concurrency = 3\n", "githb", "unknown service"),
    ("concurrency = 3\n", "concurrency", "every setting is in a section"),
    ("[http]\n\nmax_connections = 'many'\n", "max_connections", "max_connections must be an integer"),
])
def test_an_unknown_or_bad_setting_names_its_file_and_line(etc, body, needle, message):
    path = etc / "site.toml"
    path.write_text(body)
    with pytest.raises(config.ConfigError) as error:
        load(etc)
    assert str(error.value).startswith(f"{path}:{_line(path, needle)}: "), str(error.value)
    assert message in str(error.value)


def test_a_plugins_options_are_its_own_but_a_near_miss_of_an_engine_key_is_an_error(etc, monkeypatch):
    monkeypatch.setattr(config, "installed_connectors", lambda: frozenset({"github", "myplugin"}))
    (etc / "site.toml").write_text("[services.myplugin]\nusername_field = 'x'\n")
    assert load(etc).service("myplugin").options == {"username_field": "x"}
    (etc / "site.toml").write_text("[services.myplugin]\nconcurency = 4\n")
    with pytest.raises(config.ConfigError, match="did you mean concurrency"):
        load(etc)


def test_unknown_variables_and_flags_name_themselves(etc):
    with pytest.raises(config.ConfigError, match=r"^\$COLLECTOR_DAEMON__CONCURENCY: unknown setting"):
        load(etc, environ={"COLLECTOR_DAEMON__CONCURENCY": "3"})
    with pytest.raises(config.ConfigError, match=r"^\$COLLECTOR_SERVICES__NOPE__CONCURRENCY: unknown service"):
        load(etc, environ={"COLLECTOR_SERVICES__NOPE__CONCURRENCY": "3"})
    with pytest.raises(config.ConfigError, match=r"^--set deamon.x: unknown section"):
        load(etc, flags=[(("deamon", "x"), 1, "--set deamon.x")])
    with pytest.raises(config.ConfigError, match=r"^\$COLLECTOR_DAEMON__CONCURRENCY: \[daemon\] concurrency must be"):
        load(etc, environ={"COLLECTOR_DAEMON__CONCURRENCY": "lots"})


@pytest.mark.parametrize("environment, environ, source", [
    ("bogus", {}, "--env"),
    (None, {"COLLECTOR_ENV": "staging"}, r"\$COLLECTOR_ENV"),
])
def test_an_unknown_environment_is_an_error(etc, environment, environ, source):
    (etc / "bogus.toml").write_text("[daemon]\nconcurrency = 3\n")  # a file is no environment of its own
    with pytest.raises(config.ConfigError, match=rf"unknown environment '\w+' \(from {source}\): the environments "
                                                 "are demo, development, production, test"):
        load(etc, environment, environ=environ)


def test_a_missing_system_directory_is_fine_unless_named(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "SYSTEM_DIR", tmp_path / "etc-collector")  # a host without /etc/collector
    assert config.load(environ={}).sources == (str(config.DEFAULTS),
                                               str(config.PACKAGE / "defaults.development.toml"))
    with pytest.raises(config.ConfigError, match=r"no directory .*COLLECTOR_CONFIG_DIR"):
        config.load(environ={"COLLECTOR_CONFIG_DIR": str(tmp_path / "missing")})


def test_bad_toml_names_the_file_and_line(etc):
    (etc / "site.toml").write_text("[daemon]\nconcurrency = 1\nlease_ttl = \n")
    with pytest.raises(config.ConfigError, match=re.escape(str(etc / "site.toml")) + ".*line 3"):
        load(etc)


@pytest.mark.parametrize("path, line", [
    (("daemon",), 2), (("daemon", "concurrency"), 4), (("services", "github"), 6), (("services", "github", "x"), 7),
    (("services", "my-plugin", "y"), 9), (("http", "allow"), 11), (("log",), None),
])
def test_locate_finds_headers_and_keys_dotted_or_quoted(path, line):
    text = ('# a comment: concurrency = 1\n[daemon]  # x\n\nconcurrency = 3\n[services]\ngithub.concurrency = 2\n'
            '"github" . x = 1\n[services."my-plugin"]\ny = 2\n[http]\n  allow = [\n "10.0.0.0/8",\n]\n')
    assert config.locate(text, path) == line


def test_a_value_of_an_inline_table_is_found_on_its_tables_line(etc):
    (etc / "site.toml").write_text("[services]\n\ngithub = { concurrency = 3 }\n")
    assert load(etc).origins["services", "github", "concurrency"] == f"{etc / 'site.toml'}:3"
