"""The daemon refuses a server known to break the guarantees the lease protocol relies on."""

from __future__ import annotations

import pytest

from collector.app import UnsafeDatabase, check_server, make_store, run_daemon
from tests.conftest import make_settings


@pytest.mark.parametrize("version", ["v1.24.2", "1.0.0", "v0.9.1", "junk"])
def test_ferretdb_v1_is_refused_with_the_reason(version):
    with pytest.raises(UnsafeDatabase, match="findAndModify is not atomic") as err:
        check_server({"version": "7.0.77", "ferretdbVersion": version})
    assert version in str(err.value) and "MongoDB" in str(err.value)


@pytest.mark.parametrize("info", [{"version": "7.0.14"}, {"version": "7.0.77", "ferretdbVersion": "v2.5.0"}, {}])
def test_mongodb_and_ferretdb_v2_are_accepted(info):
    check_server(info)


class Admin:
    def __init__(self, info):
        self.info = info

    async def command(self, name):
        assert name == "buildInfo"
        return self.info


async def test_run_daemon_refuses_before_touching_anything(mock_db):
    mock_db.client.admin = Admin({"version": "7.0.77", "ferretdbVersion": "v1.24.2"})
    with pytest.raises(UnsafeDatabase):
        await run_daemon(make_settings(), "initial", db=mock_db)
    assert await mock_db.list_collection_names() == []  # no index, no registry document


async def test_operator_commands_do_not_check(mock_db):
    mock_db.client.admin = Admin({"ferretdbVersion": "v1.24.2"})
    await make_store(mock_db, make_settings())  # `networks list` on any server is harmless


def test_the_cli_exits_4_with_the_reason(monkeypatch):
    from click.testing import CliRunner

    import collector.app
    from collector.cli import main

    async def refused(settings, mode, **kwargs):
        raise UnsafeDatabase("refusing to run on ferretdb v1.24.2: its findAndModify is not atomic")

    monkeypatch.setattr(collector.app, "run_daemon", refused)
    result = CliRunner().invoke(main, ["--mode", "initial", "--env", "test"])
    assert result.exit_code == 4
    assert "refusing to run on ferretdb v1.24.2" in result.output


async def test_shutdown_is_bounded_when_the_database_stops_answering(mock_db, monkeypatch):
    """A stop must not wait forever on a database write (the fleet's last word, the client's close): each
    shutdown step gets `database.timeout`, then the daemon exits anyway."""
    import asyncio

    from collector.fleet import Fleet

    async def hangs(self):
        await asyncio.sleep(3600)

    monkeypatch.setattr(Fleet, "stopped", hangs)
    settings = make_settings(database={"timeout": 0.3})
    # without the bound, run_daemon would wait out the hour: 30 s is a hang detector, not a speed check
    scheduler = await asyncio.wait_for(
        run_daemon(settings, "initial", db=mock_db, on_ready=lambda sched: sched.stop()), 30)
    assert scheduler.stopping
