from __future__ import annotations

import pytest

from collector import config


def test_the_packaged_defaults_are_read_first():
    s = config.load(environment="production", environ={})
    assert s.sources[0].endswith("collector/defaults.toml")
    assert s.sources[1].endswith("collector/defaults.production.toml")
    assert s.daemon.concurrency == 128 and s.daemon.lease_ttl == 300.0 and s.log.format == "json"
    assert s.schedule.max_errors == 5 and s.schedule.normal_interval == 900.0
    assert s.service("github").base_url == "https://api.github.com"
    assert s.service("stackoverflow").options["site"] == "stackoverflow"
    assert s.service("stackoverflow").schedule.initial_pace == 2.0
    # what a wheel lost when it shipped no TOML: Reddit's app-wide cap, every service's token endpoint
    assert s.service("reddit_saved").concurrency == 2
    assert s.service("gitlab").options["token_url"] == "https://gitlab.com/oauth/token"
    # a service without a section gets the global schedule
    assert s.service("elsewhere").schedule == s.schedule


def test_the_environment_overlay_applies_over_the_defaults():
    s = config.load(environment="development", environ={})
    assert s.schedule.normal_interval == 60.0 and s.log.format == "console"
    assert s.schedule.max_errors == 5  # untouched keys keep their default
    assert config.load(environ={}).environment == "development"  # the default environment
    assert config.load(environ={"COLLECTOR_ENV": "test"}).environment == "test"


def test_environment_variables_override_files_and_flags_override_both():
    env = {"COLLECTOR_DAEMON__CONCURRENCY": "7", "COLLECTOR_SERVICES__GITHUB__BASE_URL": "http://127.0.0.1:9/",
           "MONGODB_URI": "mongodb://db.example:27017/", "COLLECTOR_SCHEDULE__JITTER": "0.5"}
    s = config.load(environment="test", environ=env)
    assert s.daemon.concurrency == 7 and s.schedule.jitter == 0.5
    assert s.service("github").base_url == "http://127.0.0.1:9"
    assert s.database.uri == "mongodb://db.example:27017/"
    assert s.origins["daemon", "concurrency"] == "$COLLECTOR_DAEMON__CONCURRENCY"
    assert s.origins["database", "uri"] == "$MONGODB_URI"
    s = config.load(environment="test", environ=env, flags=[(("daemon", "concurrency"), 3, "--concurrency")])
    assert s.daemon.concurrency == 3 and s.origins["daemon", "concurrency"] == "--concurrency"
    s = config.load(environment="test", environ=env, overrides={"daemon": {"concurrency": 4}})
    assert s.daemon.concurrency == 4


def test_text_from_the_environment_is_typed_by_the_setting():
    s = config.load(environment="test", environ={
        "COLLECTOR_DATABASE__NAME": "2024", "COLLECTOR_DATABASE__WRITE_CONCERN": "2",
        "COLLECTOR_DAEMON__SERVICES": "github, gitlab", "COLLECTOR_HTTP__ALLOW": '["10.0.0.0/8"]'})
    assert s.database.name == "2024" and s.database.write_concern == 2
    assert s.daemon.services == ("github", "gitlab") and s.selectors.services == {"github", "gitlab"}
    assert s.http.allow == ("10.0.0.0/8",)


def test_service_schedule_inherits_global_overrides():
    s = config.load(environment="test", environ={"COLLECTOR_SCHEDULE__BACKOFF_CAP": "10"})
    assert s.service("github").schedule.backoff_cap == 10.0


@pytest.mark.parametrize("over, message", [
    ({"daemon": {"concurrency": "many"}}, "concurrency must be an integer"),
    ({"daemon": {"concurrency": 0}}, "between 1 and"),
    ({"schedule": {"backoff_base": -1}}, "must not be negative"),
    ({"daemon": {"lease_ttl": 10.0}}, "lease_ttl"),
    ({"log": {"format": "xml"}}, "format must be one of auto, console, json"),
    ({"log": {"level": "loud"}}, "level must be one of"),
    ({"services": {"github": "yes"}}, "must be a table"),
    ({"schedule": {"incident_share": 2}}, "fraction"),
    ({"services": {"github": {"incident_share": 0}}}, r"\[services.github\] incident_share must be a fraction"),
    ({"schedule": {"normal_interval_min": 900, "normal_interval_max": 60}}, "normal_interval_min must be at most"),
    ({"database": {"write_concern": 0}}, "write_concern"),
    ({"daemon": {"partition": "3/2"}}, r"\[daemon\]"),
    ({"secrets": {"require_encrypted": True}}, "needs master_key_file"),
    ({"daemon": {"concurency": 3}}, "unknown setting 'concurency' in .daemon. .did you mean concurrency"),
    ({"daemon": 3}, "must be a table"),
])
def test_bad_settings_give_a_clear_error(over, message):
    with pytest.raises(config.ConfigError, match=message):
        config.load(environment="test", environ={}, overrides=over)


def test_a_services_options_are_kept_and_typed_like_toml():
    s = config.load(environment="test", environ={"COLLECTOR_SERVICES__GITLAB__REWALK_INTERVAL": "60"},
                    overrides={"services": {"fake": {"concurrency": 2, "anything": [1]}}})
    assert s.service("gitlab").options["rewalk_interval"] == 60
    assert s.service("fake").concurrency == 2 and s.service("fake").options == {"anything": [1]}
