"""The defaults are written once, in collector/config.py's dataclasses: the packaged collector/defaults.toml that
documents them must say the same, key for key, and ship in the wheel with every environment's overlay."""

from __future__ import annotations

import fnmatch
import tomllib
from dataclasses import fields

import pytest

from collector import config

DEFAULTS = tomllib.loads(config.DEFAULTS.read_text(encoding="utf-8"))
ROOT = config.PACKAGE.parent


@pytest.mark.parametrize("section", list(config.SECTIONS))
def test_the_defaults_file_says_what_the_dataclasses_say(section):
    cls = config.SECTIONS[section]
    written = DEFAULTS.get(section, {})
    assert set(written) == {f.name for f in fields(cls)}, f"[{section}] in collector/defaults.toml and {cls.__name__}"
    from_file = config.build({(section, key): (value, "defaults.toml") for key, value in written.items()})
    assert getattr(from_file, section) == cls(), f"[{section}]: collector/defaults.toml differs from {cls.__name__}"


def test_the_defaults_file_has_no_other_section():
    assert set(DEFAULTS) == {*config.SECTIONS, "services"}


def test_every_packaged_service_is_an_installed_connector():
    assert set(DEFAULTS["services"]) <= config.installed_connectors()


def test_the_wheel_ships_the_defaults_and_every_overlay():
    """pyproject's package data names every settings file of the package (a wheel without them ran on other
    settings than a clone: no per-service section, `--env production` ignored)."""
    shipped = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["collector"]
    files = sorted(p.name for p in config.PACKAGE.glob("*.toml"))
    assert "defaults.toml" in files and {"development", "production", "test"} <= set(config.environments())
    for name in files:
        assert any(fnmatch.fnmatch(name, pattern) for pattern in shipped), f"{name} is not package data"


def test_an_installed_collector_reads_the_package_files():
    """The settings come from the package directory, wherever it is installed: not from a checkout's config/."""
    files = config.load(environment="production", environ={}).sources
    assert files[:2] == (str(config.DEFAULTS), str(config.PACKAGE / "defaults.production.toml"))
    assert not (ROOT / "config" / "default.toml").exists()
