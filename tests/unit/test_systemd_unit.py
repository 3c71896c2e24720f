"""The shipped systemd unit (systemd/collector@.service) keeps the limits README.md and docs/operating.md promise:
memory and task caps, and a kernel-enforced egress deny-list beside the daemon's own policy (issue: one hostile
network cannot hurt any other user)."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess

import pytest

from tests.conftest import ROOT

UNIT = ROOT / "systemd" / "collector@.service"
ALIASES = {"link-local": ["169.254.0.0/16", "fe80::/10"], "multicast": ["224.0.0.0/4", "ff00::/8"],
           "localhost": ["127.0.0.0/8", "::1/128"]}


def service_settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    section = ""
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            out.setdefault(key, []).append(value)
    return out


def networks(values: list[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    nets = []
    for value in values:
        for word in value.split():
            nets += [ipaddress.ip_network(n) for n in ALIASES.get(word, [word])]
    return nets


def covered(address: str, nets) -> bool:
    ip = ipaddress.ip_address(address)
    return any(ip.version == n.version and ip in n for n in nets)


def test_memory_and_tasks_are_capped():
    settings = service_settings()
    assert settings["MemoryMax"] == ["2G"] and settings["MemoryHigh"] == ["1536M"]
    assert int(settings["TasksMax"][0]) > 0


@pytest.mark.parametrize("address", ["169.254.169.254", "10.1.2.3", "172.16.0.1", "192.168.1.1", "100.64.0.1",
                                     "fd00::1", "fe80::1", "224.0.0.1"])
def test_non_global_addresses_are_denied_by_the_kernel_too(address):
    settings = service_settings()
    assert covered(address, networks(settings["IPAddressDeny"]))
    assert not covered(address, networks(settings.get("IPAddressAllow", [])))  # the shipped unit allows none


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "140.82.112.3", "2606:4700::1"])
def test_loopback_and_public_addresses_stay_reachable(address):
    settings = service_settings()
    reachable = covered(address, networks(settings.get("IPAddressAllow", [])))
    assert reachable or not covered(address, networks(settings["IPAddressDeny"]))


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
def test_systemd_reads_every_line_of_the_unit():
    out = subprocess.run(["systemd-analyze", "verify", str(UNIT)], capture_output=True, text=True, timeout=60)
    # a line systemd ignores (an unknown key, an invalid address) is reported as "<unit>:<line>: ..."
    ignored = [line for line in out.stderr.splitlines() if line.startswith(f"{UNIT}:")]
    assert ignored == [], ignored
