"""Discovery of the installed connectors (collector/plugins.py) and the abstract `Connector`: a plugin that cannot
run fails when it loads, `collector connectors` lists it as BROKEN with the reason, and its networks end disabled
as bad_connector instead of a transient failure retried at every run."""

from __future__ import annotations

import abc
from datetime import UTC, datetime
from importlib.metadata import EntryPoint

import httpx
import pytest
from click.testing import CliRunner
from collector.connectors.github import GitHubStarred
from collector.connectors.stackoverflow import StackOverflowFavorites

from collector import plugins, sdk
from collector.cli import main
from collector.config import Schedule, ServiceSettings
from collector.executor import Executor
from collector.model import Network
from collector.states import Kind
from collector.store import Store
from tests.conftest import make_settings
from tests.harness import claim_one

GROUP = plugins.ENTRY_POINT_GROUP
HERE = __name__  # the fake entry points below name classes of this module
SETTINGS = ServiceSettings(name="plugin", schedule=Schedule())


class NoParse(sdk.Connector):
    service = "noparse"
    api = "a plugin that forgot parse"

    def request(self, ctx):
        return sdk.Request(f"{self.base_url}/items")


class NoRequest(sdk.Connector):
    service = "norequest"

    def parse(self, ctx, response):
        return sdk.Page(items=[], cursor={}, more=False)


class Neither(sdk.Connector):
    service = "neither"


class Complete(NoParse):
    service = "complete"

    def parse(self, ctx, response):
        return sdk.Page(items=[sdk.Item(id=7)], cursor={}, more=False)


class OwnBase(sdk.Connector):
    """A plugin's own base class, which leaves parse to its subclasses and says so."""

    def request(self, ctx):
        return sdk.Request(f"{self.base_url}/items")

    @abc.abstractmethod
    def parse(self, ctx, response): ...


class FromOwnBase(OwnBase):
    service = "fromownbase"

    def parse(self, ctx, response):
        return sdk.Page(items=[], cursor={}, more=False)


def ep(name: str, cls: str) -> EntryPoint:
    return EntryPoint(name, f"{HERE}:{cls}", GROUP)


@pytest.fixture
def installed(monkeypatch):
    """The entry points discovery sees: a built-in connector, the broken plugins above and a complete one."""
    fake = [EntryPoint("github", "collector.connectors.github:GitHubStarred", GROUP), ep("noparse", "NoParse"),
            ep("norequest", "NoRequest"), ep("neither", "Neither"), ep("complete", "Complete")]
    monkeypatch.setattr(plugins, "entry_points", lambda group: fake if group == GROUP else [])


def test_request_and_parse_are_abstract():
    assert NoParse.__abstractmethods__ == {"parse"}
    assert NoRequest.__abstractmethods__ == {"request"}
    assert Neither.__abstractmethods__ == {"parse", "request"}
    with pytest.raises(TypeError, match="abstract"):
        NoParse(SETTINGS)


def test_a_class_that_defines_parse_is_concrete_and_its_parse_still_checks_the_items():
    """The parse wrapper (Connector.__init_subclass__) must not make a defined parse look abstract."""
    for cls in (Complete, GitHubStarred, StackOverflowFavorites, FromOwnBase):
        assert cls.__abstractmethods__ == frozenset(), cls
    network = Network(id=1, user="u", service="complete", mode="initial", cursor={}, errors=0, credentials={})
    ctx = sdk.Context(network=network, mode="initial", cursor={}, now=datetime.now(UTC))
    page = Complete(SETTINGS).parse(ctx, httpx.Response(200))
    assert page.items[0].id == "7"  # the wrapper still stamps the items: an integer id becomes text


def test_a_parse_redeclared_abstract_stays_abstract():
    assert OwnBase.__abstractmethods__ == {"parse"}


def test_discover_finds_the_builtin_connectors_through_entry_points():
    found = plugins.discover()
    assert found["github"].cls is GitHubStarred
    assert found["stackoverflow"].cls is StackOverflowFavorites
    for service in ("github", "stackoverflow"):
        assert found[service].service == service
        assert found[service].package == "collector-daemon"
        assert found[service].version
        assert found[service].error is None


def test_discover_reports_a_plugin_missing_parse_or_request_as_broken(installed):
    found = plugins.discover()
    assert found["github"].cls is GitHubStarred and found["github"].error is None
    assert found["complete"].cls is Complete and found["complete"].error is None
    assert found["noparse"].cls is None
    assert found["noparse"].error == f"TypeError: connector class {HERE}:NoParse does not implement parse"
    assert found["norequest"].cls is None
    assert found["norequest"].error == f"TypeError: connector class {HERE}:NoRequest does not implement request"
    assert found["neither"].error.endswith("does not implement parse and request")


def test_discover_reports_broken_plugins_without_failing(monkeypatch):
    fake = [
        EntryPoint("github", "collector.connectors.github:GitHubStarred", GROUP),
        EntryPoint("missing", "no_such_module_anywhere:Connector", GROUP),
        EntryPoint("notaconnector", "collector.sdk:Item", GROUP),
        EntryPoint("misnamed", "collector.connectors.github:GitHubStarred", GROUP),
    ]
    monkeypatch.setattr(plugins, "entry_points", lambda group: fake)
    found = plugins.discover()
    assert found["github"].cls is GitHubStarred and found["github"].error is None
    assert found["missing"].cls is None and found["missing"].error.startswith("ModuleNotFoundError")
    assert found["notaconnector"].cls is None
    assert "not a collector.sdk.Connector subclass" in found["notaconnector"].error
    assert found["misnamed"].cls is None and "must be 'misnamed'" in found["misnamed"].error


def test_collector_connectors_lists_a_plugin_missing_parse_as_broken(installed):
    result = CliRunner().invoke(main, ["connectors"])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines()}
    assert lines["noparse"].endswith(f"BROKEN: TypeError: connector class {HERE}:NoParse does not implement parse")
    assert "BROKEN" not in lines["complete"] and GitHubStarred.api in lines["github"]


async def test_a_network_of_a_plugin_missing_parse_is_disabled_as_bad_connector(installed, mock_db, clock):
    store = Store(mock_db)
    await store.ensure_indexes()
    await store.networks.insert_one({"user": "u1", "service": "noparse", "accessToken": "tok_123456",
                                     "mode": "initial", "scheduledTo": clock.now, "errors": 0})
    doc, lease = await claim_one(store, "initial", "me", clock.now, 60)
    async with httpx.AsyncClient() as client:
        result = await Executor(store, client, make_settings(), plugins.discover(), clock=clock).run(doc, lease)
    net = await store.networks.find_one({"_id": doc["_id"]})
    assert result.outcome.kind is Kind.PERMANENT and net["lastError"]["kind"] == "bad_connector"
    assert net["disabled"] and net["scheduledTo"] is None  # not due again: nothing retries it
    assert "does not implement parse" in net["disabledReason"]
