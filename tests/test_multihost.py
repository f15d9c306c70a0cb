"""Two "hosts" (network namespaces), each with its own dockerd and dnsd, sharing one etcd:
a container on one host resolves a container on the other by name through its own dnsd."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import eventually
from testbed import dockerd as testbed_dockerd
from testbed import etcd as testbed_etcd
from testbed import netns

LEASE_TTL_S = 3


@dataclass
class Node:
    name: str
    host: netns.Host
    docker: testbed_dockerd.Dockerd
    gateway: str
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start_dnsd(self, etcd_endpoint: str, config: Path) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    *self.host.enter(), sys.executable, "-m", "dnsd", "serve",
                    "--config", str(config),
                    "--listen", f"{self.gateway}:53", "--no-forward",
                    "--docker-url", self.docker.url, "--etcd", etcd_endpoint,
                    "--node-id", self.name,
                ],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        eventually(lambda: "etcd publishing" in self.log.read_text(), timeout=20, interval=0.1)

    def stop_dnsd(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)

    def lookup(self, name: str) -> str:
        """busybox nslookup in a container on this host, using this host's dnsd (--dns)."""
        result = subprocess.run(
            ["docker", "-H", self.docker.url, "run", "--rm", "--pull", "never",
             "--dns", self.gateway, testbed_dockerd.IMAGE, "nslookup", "-type=a", name],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        return result.stdout


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Node, Node, Any]]:
    reason = testbed_dockerd.available() or testbed_etcd.available()
    if reason:
        pytest.fail(f"multi-host tests need dockerd and etcd: {reason}")
    work = tmp_path_factory.mktemp("multihost")
    netns.remove_leftovers()
    testbed_dockerd.stop_leftovers()
    host_a, host_b = netns.Host("a", 1).create(), netns.Host("b", 2).create()
    etcd = testbed_etcd.Etcd(1, extra_hosts=(host_a.root_ip, host_b.root_ip)).start()
    nodes: list[Node] = []
    try:
        for name, host, subnet in (("hosta", host_a, 11), ("hostb", host_b, 12)):
            daemon = testbed_dockerd.Dockerd(netns=host.netns, bip=f"172.31.{subnet}.1/24")
            daemon.start()
            daemon.import_busybox()
            nodes.append(Node(name, host, daemon, f"172.31.{subnet}.1", work / f"{name}.log"))
        config = work / "dnsd.toml"
        config.write_text(f"[etcd]\nlease_ttl = {LEASE_TTL_S}\n")
        port = etcd.members[0].client_port
        for node in nodes:
            node.start_dnsd(f"{node.host.root_ip}:{port}", config)
        yield nodes[0], nodes[1], (etcd, config, port)
    finally:
        for node in nodes:
            node.stop_dnsd()
            node.docker.stop()
        etcd.stop()
        host_a.destroy()
        host_b.destroy()


def run_container(node: Node, name: str) -> str:
    node.docker.docker("run", "-d", "--pull", "never", "--name", name, testbed_dockerd.IMAGE,
                       "sleep", "1000")  # fmt: skip
    return node.docker.docker(
        "inspect", "-f", "{{.NetworkSettings.Networks.bridge.IPAddress}}", name
    )


def test_containers_resolve_each_other_across_hosts(hosts: tuple[Node, Node, Any]) -> None:
    a, b, _ = hosts
    ip_a = run_container(a, "web-a")
    ip_b = run_container(b, "db-b")
    eventually(lambda: ip_b in a.lookup("db-b.docker"), timeout=20)
    eventually(lambda: ip_a in b.lookup("web-a.docker"), timeout=20)
    assert ip_a in a.lookup("web-a.docker")  # its own host's container, too


def test_crashed_host_vanishes_within_lease_ttl_and_returns(hosts: tuple[Node, Node, Any]) -> None:
    a, b, (_, config, port) = hosts
    ip = run_container(a, "crashy")
    eventually(lambda: ip in b.lookup("crashy.docker"), timeout=20)
    a.stop_dnsd(signal.SIGKILL)
    killed = time.monotonic()
    eventually(lambda: ip not in b.lookup("crashy.docker"), timeout=LEASE_TTL_S + 10)
    # busybox nslookup in a fresh container takes ~0.5 s per probe: allow for it.
    assert time.monotonic() - killed <= LEASE_TTL_S + 2 + 1.5
    a.start_dnsd(f"{a.host.root_ip}:{port}", config)
    eventually(lambda: ip in b.lookup("crashy.docker"), timeout=20)
