from __future__ import annotations

import pytest

from collector import config


def test_default_toml_is_read_and_matches_the_documented_values():
    s = config.load(environment="no-such-env", environ={})
    assert s.sources and s.sources[0].endswith("config/default.toml")
    assert s.concurrency == 64 and s.lease_ttl == 300.0
    assert s.schedule.max_errors == 5 and s.schedule.normal_interval == 900.0
    assert s.service("github").base_url == "https://api.github.com"
    assert s.service("stackoverflow").options["site"] == "stackoverflow"
    assert s.service("stackoverflow").schedule.initial_pace == 2.0
    # a service without a section gets the global schedule
    assert s.service("elsewhere").schedule == s.schedule


def test_environment_file_overrides_defaults():
    s = config.load(environment="development", environ={})
    assert s.schedule.normal_interval == 60.0 and s.log_format == "console"
    assert s.schedule.max_errors == 5  # untouched keys keep their default


def test_environment_variables_override_files_and_flags_override_both():
    env = {"COLLECTOR_DAEMON__CONCURRENCY": "7", "COLLECTOR_SERVICES__GITHUB__BASE_URL": "http://127.0.0.1:9/",
           "MONGODB_URI": "mongodb://db.example:27017/", "COLLECTOR_SCHEDULE__JITTER": "0.5"}
    s = config.load(environment="test", environ=env)
    assert s.concurrency == 7 and s.schedule.jitter == 0.5
    assert s.service("github").base_url == "http://127.0.0.1:9"
    assert s.database_uri == "mongodb://db.example:27017/"
    s = config.load(environment="test", environ=env, overrides={"daemon": {"concurrency": 3}})
    assert s.concurrency == 3


def test_service_schedule_inherits_global_overrides():
    s = config.load(environment="test", environ={"COLLECTOR_SCHEDULE__BACKOFF_CAP": "10"})
    assert s.service("github").schedule.backoff_cap == 10.0


@pytest.mark.parametrize("over, message", [
    ({"daemon": {"concurrency": "many"}}, "concurrency must be a int"),
    ({"daemon": {"concurrency": 0}}, "at least 1"),
    ({"schedule": {"backoff_base": -1}}, "must not be negative"),
    ({"daemon": {"lease_ttl": 10.0}}, "lease_ttl"),
    ({"log": {"format": "xml"}}, "format"),
    ({"services": {"github": "yes"}}, "must be a table"),
])
def test_bad_settings_give_a_clear_error(over, message):
    with pytest.raises(config.ConfigError, match=message):
        config.load(environment="test", environ={}, overrides=over)


def test_bad_toml_names_the_file(tmp_path):
    (tmp_path / "default.toml").write_text("[daemon\nconcurrency = 1")
    with pytest.raises(config.ConfigError, match=r"default\.toml"):
        config.load(environment="test", environ={"COLLECTOR_CONFIG_DIR": str(tmp_path)})
