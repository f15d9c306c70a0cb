"""Docker discovery against a real, private Docker Engine (tests/testbed/dockerd.py)."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype
import dns.reversename
import pytest
from conftest import (
    Dnsd,
    DnsdFactory,
    FakeUpstream,
    StopAtEnd,
    eventually,
    free_port,
    query,
    rcode,
    start_dnsd,
)
from testbed.dockerd import BRIDGE_IP, IMAGE, Dockerd

NET_SUBNET = "172.29.1.0/24"
NET_GATEWAY = "172.29.1.1"


@pytest.fixture(scope="module")
def net(dockerd: Dockerd) -> Iterator[str]:
    name = "testnet"
    dockerd.docker("network", "create", "--subnet", NET_SUBNET, "--gateway", NET_GATEWAY, name)
    yield name
    dockerd.remove_all_containers()
    dockerd.docker("network", "rm", name, check=False)


@pytest.fixture(scope="module")
def module_upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def dnsd(
    dockerd: Dockerd,
    net: str,
    module_upstream: FakeUpstream,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Dnsd]:
    """dnsd on loopback and on both bridge gateways (:53), the containers' resolver."""
    server = start_dnsd(
        tmp_path_factory.mktemp("dnsd"),
        "--listen", f"{BRIDGE_IP}:53",
        "--listen", f"{NET_GATEWAY}:53",
        "--upstream", f"127.0.0.1:{module_upstream.port}",
        docker=dockerd.url,
    )  # fmt: skip
    server.wait_source("docker")
    yield server
    server.stop()


def addrs(port: int, name: str, rdtype: str = "A", source: str | None = None) -> list[str]:
    message = dns.message.make_query(name, rdtype)
    kwargs = {"source": source} if source else {}
    reply = dns.query.udp(message, "127.0.0.1", port=port, timeout=2, **kwargs)
    return sorted(item.to_text() for rrset in reply.answer for item in rrset)


def run(dockerd: Dockerd, *args: str, cmd: tuple[str, ...] = ("sleep", "1000")) -> str:
    """docker run -d --pull never ...; returns the container name."""
    return dockerd.run(*args, cmd=cmd)


def ip_of(dockerd: Dockerd, name: str, network: str = "bridge") -> str:
    return dockerd.docker(
        "inspect", "-f", f'{{{{(index .NetworkSettings.Networks "{network}").IPAddress}}}}', name
    )


def test_start_stop_kill_rm(dockerd: Dockerd, dnsd: Dnsd) -> None:
    first, second = run(dockerd), run(dockerd)
    ip = ip_of(dockerd, first)
    eventually(lambda: addrs(dnsd.port, f"{first}.docker") == [ip])
    assert addrs(dnsd.port, f"{first}.docker", "PTR") == []  # PTR lives under in-addr.arpa
    reverse = dns.reversename.from_address(ip).to_text()
    assert addrs(dnsd.port, reverse, "PTR") == [f"{first}.docker."]
    dockerd.docker("stop", "-t", "0", first)
    eventually(lambda: addrs(dnsd.port, f"{first}.docker") == [])
    assert rcode(query(dnsd.port, f"{first}.docker")) == "NXDOMAIN"
    dockerd.docker("start", first)
    eventually(lambda: addrs(dnsd.port, f"{first}.docker") != [])
    dockerd.docker("kill", first)
    eventually(lambda: addrs(dnsd.port, f"{first}.docker") == [])
    eventually(lambda: addrs(dnsd.port, f"{second}.docker") != [])
    dockerd.docker("rm", "-f", second)
    eventually(lambda: addrs(dnsd.port, f"{second}.docker") == [])


def test_stopped_container_is_gone_at_once(dockerd: Dockerd, dnsd: Dnsd) -> None:
    name = run(dockerd)
    eventually(lambda: addrs(dnsd.port, f"{name}.docker"))
    for _ in range(20):  # warm the packed-answer cache
        addrs(dnsd.port, f"{name}.docker")
    dockerd.docker("kill", name)  # returns once the container is dead
    eventually(lambda: addrs(dnsd.port, f"{name}.docker") == [], timeout=1.0)


def test_rename(dockerd: Dockerd, dnsd: Dnsd) -> None:
    old = run(dockerd)
    eventually(lambda: addrs(dnsd.port, f"{old}.docker"))
    new = old + "-renamed"
    dockerd.docker("rename", old, new)
    eventually(lambda: addrs(dnsd.port, f"{new}.docker"))
    assert addrs(dnsd.port, f"{old}.docker") == []


def test_network_connect_disconnect_aliases(dockerd: Dockerd, dnsd: Dnsd, net: str) -> None:
    name = run(dockerd)
    eventually(lambda: addrs(dnsd.port, f"{name}.docker"))
    dockerd.docker("network", "connect", "--alias", "shared-db", net, name)
    net_ip = ip_of(dockerd, name, net)
    bridge_ip = ip_of(dockerd, name)
    eventually(lambda: addrs(dnsd.port, f"shared-db.{net}.docker") == [net_ip])
    assert addrs(dnsd.port, "shared-db.docker") == [net_ip]
    assert addrs(dnsd.port, f"{name}.{net}.docker") == [net_ip]
    assert addrs(dnsd.port, f"{name}.bridge.docker") == [bridge_ip]
    assert addrs(dnsd.port, f"{name}.docker") == sorted([net_ip, bridge_ip])
    dockerd.docker("network", "disconnect", net, name)
    eventually(lambda: addrs(dnsd.port, "shared-db.docker") == [])
    assert addrs(dnsd.port, f"{name}.docker") == [bridge_ip]


def test_short_container_id_is_a_name_on_user_defined_networks(
    dockerd: Dockerd, dnsd: Dnsd, net: str
) -> None:
    """As docs/docker.md's name table says: the 12-character ID answers on a user-defined
    network (the Engine lists it among the aliases), not on the default bridge."""
    name = run(dockerd, "--network", net)
    short = dockerd.docker("inspect", "-f", "{{.Id}}", name)[:12]
    net_ip = ip_of(dockerd, name, net)
    eventually(lambda: addrs(dnsd.port, f"{short}.docker") == [net_ip])
    assert addrs(dnsd.port, f"{short}.{net}.docker") == [net_ip]
    on_bridge = run(dockerd)
    eventually(lambda: addrs(dnsd.port, f"{on_bridge}.docker"))
    bridge_short = dockerd.docker("inspect", "-f", "{{.Id}}", on_bridge)[:12]
    assert addrs(dnsd.port, f"{bridge_short}.docker") == []


def test_network_aware_answers(dockerd: Dockerd, dnsd: Dnsd, net: str) -> None:
    """A client on one of the container's networks gets the address on that network only.

    The askers are containers; a network's gateway address counts as the host."""
    name = run(dockerd)
    dockerd.docker("network", "connect", net, name)
    net_ip, bridge_ip = ip_of(dockerd, name, net), ip_of(dockerd, name)
    eventually(lambda: len(addrs(dnsd.port, f"{name}.docker")) == 2)
    for _ in range(2):  # the second round is served from the packed-answer cache
        assert addrs(dnsd.port, f"{name}.docker") == sorted([net_ip, bridge_ip])
        on_bridge = nslookup(dockerd, f"{name}.docker", BRIDGE_IP)
        assert bridge_ip in on_bridge and net_ip not in on_bridge, on_bridge
        on_net = nslookup(dockerd, f"{name}.docker", NET_GATEWAY, "--network", net)
        assert net_ip in on_net and bridge_ip not in on_net, on_net
        # From a network's gateway (the host itself, or a client NATed or proxied through a
        # published port): outside every network, so both addresses, as from loopback.
        for gateway in (BRIDGE_IP, NET_GATEWAY):
            both = addrs(dnsd.port, f"{name}.docker", source=gateway)
            assert both == sorted([net_ip, bridge_ip]), (gateway, both)


def nslookup(dockerd: Dockerd, name: str, server: str, *args: str) -> str:
    """busybox nslookup NAME SERVER in a throwaway container (A records only)."""
    return dockerd.docker(
        "run", "--rm", "--pull", "never", *args, IMAGE, "nslookup", "-type=a", name, server
    )


def test_compose_labels_group_replicas(dockerd: Dockerd, dnsd: Dnsd) -> None:
    labels = ["-l", "com.docker.compose.service=api", "-l", "com.docker.compose.project=shop"]
    replicas = [run(dockerd, *labels, "--expose", "5432") for _ in range(2)]
    ips = sorted(ip_of(dockerd, r) for r in replicas)
    eventually(lambda: addrs(dnsd.port, "api.shop.docker") == ips)
    srv = eventually(lambda: addrs(dnsd.port, "_postgresql._tcp.api.shop.docker", "SRV"))
    assert sorted(s.split()[-1] for s in srv) == sorted(f"{r}.docker." for r in replicas)
    first = addrs(dnsd.port, "api.shop.docker")
    assert first == ips
    dockerd.docker("rm", "-f", replicas[0])
    eventually(lambda: addrs(dnsd.port, "api.shop.docker") == [ip_of(dockerd, replicas[1])])


def test_every_label(dockerd: Dockerd, dnsd: Dnsd) -> None:
    name = run(
        dockerd,
        "-l", "dnsd.name=alpha, beta.team",
        "-l", "dnsd.ttl=42",
        "-l", "dnsd.service=payments",
        "-l", "dnsd.srv.8080=api",
        "-l", "dnsd.priority=5",
        "-l", "dnsd.weight=70",
        "--expose", "8080", "--expose", "80", "--expose", "9999/udp",
        "--hostname", "explicit-host",
    )  # fmt: skip
    ip = ip_of(dockerd, name)
    eventually(lambda: addrs(dnsd.port, "alpha.docker") == [ip])
    for alias in ("beta.team.docker", "payments.docker", "explicit-host.docker"):
        assert addrs(dnsd.port, alias) == [ip], alias
    reply = query(dnsd.port, f"{name}.docker")
    assert reply.answer[0].ttl == 42
    srv = query(dnsd.port, f"_api._tcp.{name}.docker", "SRV")
    record = srv.answer[0][0]
    assert (record.priority, record.weight, record.port) == (5, 70, 8080)
    assert record.target.to_text() == f"{name}.docker."
    assert [item.to_text() for rrset in srv.additional for item in rrset] == [ip]
    assert addrs(dnsd.port, f"_http._tcp.{name}.docker", "SRV") == [f"5 70 80 {name}.docker."]
    assert addrs(dnsd.port, f"_9999._udp.{name}.docker", "SRV") == [f"5 70 9999 {name}.docker."]
    assert addrs(dnsd.port, "_api._tcp.payments.docker", "SRV") == [f"5 70 8080 {name}.docker."]
    ignored = run(dockerd, "-l", "dnsd.ignore=true")
    barrier = run(dockerd)  # started after it: once it is served, the ignored one was seen
    eventually(lambda: addrs(dnsd.port, f"{barrier}.docker"))
    assert addrs(dnsd.port, f"{ignored}.docker") == []


def test_dnsdock_style_names(dnsd_factory: DnsdFactory, dockerd: Dockerd, dnsd: Dnsd) -> None:
    """com.dnsdock.alias, dnsd.wildcard=true (RFC 4592) and, opted in, <name>.<image>."""
    with_image = dnsd_factory(
        "--no-forward", env={"DNSD_DOCKER_IMAGE_NAMES": "true"}, docker=dockerd.url
    )
    name = run(dockerd, "-l", "com.dnsdock.alias=db.docker,sql", "-l", "dnsd.wildcard=true")
    ip = ip_of(dockerd, name)
    eventually(lambda: addrs(dnsd.port, "db.docker") == [ip])
    assert addrs(dnsd.port, "sql.docker") == [ip]
    assert addrs(dnsd.port, f"tenant1.{name}.docker") == [ip]
    assert addrs(dnsd.port, f"a.b.{name}.docker") == [ip]
    ptr = dns.reversename.from_address(ip).to_text()
    assert addrs(dnsd.port, ptr, "PTR") == [f"{name}.docker."]  # no PTR to "*.name"
    assert addrs(dnsd.port, f"{name}.busybox.docker") == []  # image names: opt-in
    image = IMAGE.split(":")[0].rsplit("/", 1)[-1]
    eventually(lambda: addrs(with_image.port, f"{name}.{image}.docker") == [ip])
    plain = run(dockerd)
    plain_ip = ip_of(dockerd, plain)
    eventually(lambda: addrs(dnsd.port, f"{plain}.docker") == [plain_ip])
    assert rcode(query(dnsd.port, f"x.{plain}.docker")) == "NXDOMAIN"  # no label: none
    dockerd.docker("rm", "-f", name)
    eventually(lambda: addrs(dnsd.port, f"tenant1.{name}.docker") == [])


def test_dnsdock_labels_and_environment_are_honoured(dockerd: Dockerd, dnsd: Dnsd) -> None:
    """Users moving from dnsdock keep their labels and DNSDOCK_* variables: ignore, name,
    image, region, tags and ttl (an ignored container is neither answered nor published);
    a dnsd.* or com.dnsdock.* label dnsd does not know is one warning for the container."""
    ignored = run(dockerd, "-l", "com.dnsdock.ignore=1")
    ignored_env = run(dockerd, "-e", "DNSDOCK_IGNORE=1")
    named = run(dockerd, "-l", "com.dnsdock.name=api", "-l", "com.dnsdock.image=shop",
                "-l", "com.dnsdock.region=eu", "-l", "com.dnsdock.ttl=42")  # fmt: skip
    from_env = run(dockerd, "-l", "com.dnsdock.name=not-this", "-e", "DNSDOCK_NAME=worker",
                   "-e", "DNSDOCK_IMAGE=jobs")  # fmt: skip
    tagged = run(dockerd, "-l", "com.dnsdock.tags=blue,green", "-l", "com.dnsdock.image=web")
    odd = run(dockerd, "-l", "com.dnsdock.ip_addr=1.2.3.4", "-l", "dnsd.nmae=x")
    eventually(lambda: addrs(dnsd.port, f"{odd}.docker") == [ip_of(dockerd, odd)])
    for name in (ignored, ignored_env):  # started before the last one: decided already
        assert rcode(query(dnsd.port, f"{name}.docker")) == "NXDOMAIN", name
    assert addrs(dnsd.port, "api.shop.eu.docker") == [ip_of(dockerd, named)]
    assert query(dnsd.port, "api.shop.eu.docker").answer[0].ttl == 42
    assert query(dnsd.port, f"{named}.docker").answer[0].ttl == 42
    assert addrs(dnsd.port, "worker.jobs.docker") == [ip_of(dockerd, from_env)]
    assert rcode(query(dnsd.port, "not-this.jobs.docker")) == "NXDOMAIN"  # the variable wins
    assert addrs(dnsd.port, "blue.web.docker") == [ip_of(dockerd, tagged)]
    warning = (
        f"container {odd}: labels dnsd does not know (ignored): com.dnsdock.ip_addr, dnsd.nmae"
    )
    log = eventually(lambda: dnsd.log() if warning in dnsd.log() else "")
    assert log.count(warning) == 1
    records = json.loads(dnsd._get("/records?name=" + ignored))
    assert records and all(not r["served"] for r in records), records


def test_bad_labels_are_counted_and_defaults_used(dockerd: Dockerd, dnsd: Dnsd) -> None:
    name = run(
        dockerd, "-l", "dnsd.ttl=soon", "-l", "dnsd.priority=-3", "-l", "dnsd.ignore=maybe",
        "-l", "dnsd.name=!!!", "-l", "dnsd.srv.7=x", "--expose", "80",
    )  # fmt: skip
    ip = ip_of(dockerd, name)
    eventually(lambda: addrs(dnsd.port, f"{name}.docker") == [ip])
    assert query(dnsd.port, f"{name}.docker").answer[0].ttl == 5
    assert addrs(dnsd.port, f"_http._tcp.{name}.docker", "SRV") == [f"10 10 80 {name}.docker."]
    log = eventually(lambda: dnsd.log() if "dnsd.srv.7" in dnsd.log() else "")
    for fragment in ("dnsd.ttl", "dnsd.priority", "dnsd.ignore", "dnsd.name"):
        assert f"container {name}: label {fragment}" in log
    assert dnsd.proc.poll() is None


def test_invalid_names_are_mapped(dockerd: Dockerd, dnsd: Dnsd) -> None:
    name = run(dockerd, "-l", "dnsd.name=Odd_Name.With.Dots")
    eventually(lambda: addrs(dnsd.port, "odd_name.with.dots.docker") == [ip_of(dockerd, name)])
    under = "c" + uuid.uuid4().hex[:6] + "_x.y"
    dockerd.docker("run", "-d", "--pull", "never", "--name", under, IMAGE, "sleep", "1000")
    mapped = under.replace(".", "-")
    eventually(lambda: addrs(dnsd.port, f"{mapped}.docker") == [ip_of(dockerd, under)])
    assert f"container name '{under}' is served as '{mapped}'" in dnsd.log()


def test_health_and_pause_withhold(dockerd: Dockerd, dnsd: Dnsd) -> None:
    name = run(
        dockerd,
        "--health-cmd", "test -f /tmp/ok", "--health-interval", "1s", "--health-retries", "1",
        "--health-timeout", "1s",
        cmd=("sh", "-c", "touch /tmp/ok; exec sleep 1000"),
    )  # fmt: skip
    ip = ip_of(dockerd, name)
    eventually(lambda: addrs(dnsd.port, f"{name}.docker") == [ip])
    eventually(
        lambda: dockerd.docker("inspect", "-f", "{{.State.Health.Status}}", name) == "healthy"
    )
    dockerd.docker("exec", name, "rm", "/tmp/ok")
    eventually(lambda: addrs(dnsd.port, f"{name}.docker") == [], timeout=15)
    dockerd.docker("exec", name, "touch", "/tmp/ok")
    eventually(lambda: addrs(dnsd.port, f"{name}.docker") == [ip], timeout=15)
    dockerd.docker("pause", name)
    eventually(lambda: addrs(dnsd.port, f"{name}.docker") == [])
    dockerd.docker("unpause", name)
    eventually(lambda: addrs(dnsd.port, f"{name}.docker") == [ip])


def test_end_to_end_container_resolves_through_dnsd(
    dockerd: Dockerd, dnsd: Dnsd, module_upstream: FakeUpstream
) -> None:
    """busybox nslookup in a container whose resolver (--dns) is dnsd on the bridge gateway."""
    target = run(dockerd)
    ip = ip_of(dockerd, target)
    eventually(lambda: addrs(dnsd.port, f"{target}.docker") == [ip])
    out = dockerd.docker(
        "run", "--rm", "--pull", "never", "--dns", BRIDGE_IP, IMAGE,
        "nslookup", f"{target}.docker",
    )  # fmt: skip
    assert ip in out, out
    outside = dockerd.docker(
        "run", "--rm", "--pull", "never", "--dns", BRIDGE_IP, IMAGE,
        "nslookup", "-type=a", "outside.example",
    )  # fmt: skip
    assert module_upstream.address in outside, outside
    assert ("udp", "outside.example.", "A") in module_upstream.queries


def test_one_resolver_setup_for_every_bridge(
    dockerd: Dockerd, net: str, tmp_path: Path, module_upstream: FakeUpstream
) -> None:
    """docs/resolver.md: dnsd on the docker0 gateway (here on a high port, with the documented
    DNAT rule: -d the gateway, no -i), containers use --dns <gateway> whatever their network:
    a user-defined network's embedded DNS forwards *.docker there too."""
    import subprocess

    port = free_port()
    server = start_dnsd(
        tmp_path, "--listen", f"{BRIDGE_IP}:{port}", "--log-queries",
        "--upstream", f"127.0.0.1:{module_upstream.port}", docker=dockerd.url,
    )  # fmt: skip
    rules = [
        ["-t", "nat", "PREROUTING", "-d", BRIDGE_IP, "-p", proto, "--dport", "53",
         "-m", "comment", "--comment", "dnsd-test", "-j", "DNAT",
         "--to-destination", f"{BRIDGE_IP}:{port}"]
        for proto in ("udp", "tcp")
    ]  # fmt: skip
    for rule in rules:
        subprocess.run(["iptables", rule[0], rule[1], "-I", *rule[2:]], check=True)
    try:
        target = run(dockerd)
        ip = ip_of(dockerd, target)
        eventually(lambda: addrs(server.port, f"{target}.docker") == [ip])
        on_bridge = nslookup(dockerd, f"{target}.docker", BRIDGE_IP)
        assert ip in on_bridge, on_bridge
        on_net = dockerd.docker(  # the embedded DNS (127.0.0.11) forwards to --dns
            "run", "--rm", "--pull", "never", "--network", net, "--dns", BRIDGE_IP,
            "--dns-search", "docker", IMAGE, "nslookup", "-type=a", f"{target}.docker",
        )  # fmt: skip
        assert ip in on_net, on_net
        asked = [line.split() for line in server.log().splitlines() if f" {target}.docker" in line]
        clients = {words[words.index("query") + 1].rsplit(".", 1)[0] for words in asked}
        # both containers came to this dnsd: one from docker0, one from the user network
        assert {"172.29.0", "172.29.1"} <= clients, clients
    finally:
        for rule in rules:
            subprocess.run(["iptables", rule[0], rule[1], "-D", *rule[2:]], check=False)
        server.stop()


def test_docker_unreachable_then_appears(
    dnsd_factory: DnsdFactory, tmp_path: Path, dockerd: Dockerd
) -> None:
    """dnsd serves its static zone while Docker is away and picks Docker up later."""
    (tmp_path / "hosts").write_text("10.0.0.1 static\n")
    missing = f"unix://{tmp_path}/docker.sock"
    server = dnsd_factory("--no-forward", config='[static]\nhosts = ["hosts"]\n', docker=missing)
    assert addrs(server.port, "static.docker") == ["10.0.0.1"]
    time.sleep(1.0)
    log = server.log()
    assert log.count("docker unreachable") == 1  # said once, not per retry
    (tmp_path / "docker.sock").symlink_to(dockerd.socket)
    server.wait_source("docker", timeout=20)
    name = run(dockerd)
    eventually(lambda: addrs(server.port, f"{name}.docker") == [ip_of(dockerd, name)])


def test_dockerd_restart(dockerd: Dockerd, dnsd: Dnsd) -> None:
    keeper = run(dockerd, "--restart", "always")
    doomed = run(dockerd)
    eventually(
        lambda: addrs(dnsd.port, f"{keeper}.docker") and addrs(dnsd.port, f"{doomed}.docker")
    )
    dockerd.kill()
    dnsd.wait_source("docker", "degraded")  # it noticed: synced once, serving what it had
    assert addrs(dnsd.port, f"{doomed}.docker")  # last known answers stay while Docker is away
    eventually(
        lambda: "docker event stream ended" in dnsd.log() or "docker unreachable" in dnsd.log()
    )
    dockerd.restart()  # without live-restore, containers that were running are stopped ...
    newcomer = run(dockerd)  # ... and one is created before dnsd has reconnected
    eventually(lambda: addrs(dnsd.port, f"{newcomer}.docker"), timeout=30)
    eventually(lambda: addrs(dnsd.port, f"{doomed}.docker") == [], timeout=30)
    eventually(lambda: addrs(dnsd.port, f"{keeper}.docker") == [ip_of(dockerd, keeper)], timeout=30)
    assert dnsd.proc.poll() is None


def test_burst_of_containers(dockerd: Dockerd, dnsd: Dnsd) -> None:
    names = [run(dockerd) for _ in range(8)]
    for name in names:
        eventually(lambda name=name: addrs(dnsd.port, f"{name}.docker"))
    dockerd.docker("rm", "-f", *names)
    for name in names:
        eventually(lambda name=name: addrs(dnsd.port, f"{name}.docker") == [])


def test_containers_started_at_once_are_each_answered(
    dockerd: Dockerd, dnsd: Dnsd, net: str
) -> None:
    """Containers created first, then started together from 8 threads (a deployment): each is
    answered, the one with an explicit hostname and a network alias under those names too
    (its own inspection), and all are gone after ``rm -f``."""
    from concurrent.futures import ThreadPoolExecutor

    special = "c" + uuid.uuid4().hex[:8]
    dockerd.docker(
        "create", "--pull", "never", "--name", special, "--hostname", "burst-host",
        "--network", net, "--network-alias", "burst-alias", IMAGE, "sleep", "1000",
    )  # fmt: skip
    names = [special]
    for _ in range(15):
        names.append("c" + uuid.uuid4().hex[:8])
        dockerd.docker("create", "--pull", "never", "--name", names[-1], IMAGE, "sleep", "1000")
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda name: dockerd.docker("start", name), names))
    for name in names:
        eventually(lambda name=name: addrs(dnsd.port, f"{name}.docker") != [], timeout=20)
    ip = ip_of(dockerd, special, net)
    eventually(lambda: addrs(dnsd.port, "burst-host.docker") == [ip], timeout=20)
    eventually(lambda: addrs(dnsd.port, "burst-alias.docker") == [ip], timeout=20)
    dockerd.docker("rm", "-f", *names)
    for name in names:
        eventually(lambda name=name: addrs(dnsd.port, f"{name}.docker") == [])


def test_tls_engine(
    stop_at_end: StopAtEnd, dnsd_factory: DnsdFactory, dockerd: Dockerd, tmp_path: Path
) -> None:
    """A tcp:// Engine with --tlsverify: dnsd connects with the client certificate only."""
    certs = dockerd.certs  # type: ignore[attr-defined]
    url = dockerd.tls_url  # type: ignore[attr-defined]
    name = run(dockerd)
    ip = ip_of(dockerd, name)
    config = (
        f'[docker]\nurl = "{url}"\ntls_ca = "{certs.ca}"\n'
        f'tls_cert = "{certs.client_cert}"\ntls_key = "{certs.client_key}"\n'
    )
    server = dnsd_factory("--no-forward", config=config, docker=url)
    eventually(lambda: addrs(server.port, f"{name}.docker") == [ip])
    # Without a client certificate the Engine refuses: dnsd says so once and keeps serving.
    bare = stop_at_end(
        start_dnsd(
            tmp_path, "--no-forward", config=f'[docker]\ntls_ca = "{certs.ca}"\n', docker=url
        )
    )
    eventually(lambda: "docker unreachable" in bare.log())
    assert addrs(bare.port, f"{name}.docker") == []


def test_containers_cannot_take_names_they_do_not_own(
    dnsd_factory: DnsdFactory, dockerd: Dockerd, net: str
) -> None:
    static = '[[static.records]]\nname = "api"\ntype = "A"\nvalue = "10.0.0.20"\n'
    http = free_port()
    server = dnsd_factory("--http", f"127.0.0.1:{http}", docker=dockerd.url, config=static)
    server.wait_source("docker")
    victim = run(dockerd, "--network", net)
    victim_ip = ip_of(dockerd, victim, net)
    eventually(lambda: addrs(server.port, f"{victim}.docker") == [victim_ip])
    attacker = run(
        dockerd, "--network", net, "--network-alias", victim, "--hostname", "api",
        "--label", f"dnsd.name=api,{victim},ns",
    )  # fmt: skip
    attacker_ip = ip_of(dockerd, attacker, net)
    eventually(lambda: addrs(server.port, f"{attacker}.docker") == [attacker_ip])
    assert addrs(server.port, "ns.docker") == [attacker_ip]  # a free name: first come
    for asker in ("127.0.0.1", NET_GATEWAY):  # network-aware answers too
        assert addrs(server.port, f"{victim}.docker", source=asker) == [victim_ip]
        assert addrs(server.port, f"{victim}.{net}.docker", source=asker) == [victim_ip]
        assert addrs(server.port, "api.docker", source=asker) == ["10.0.0.20"]
    with urllib.request.urlopen(f"http://127.0.0.1:{http}/records", timeout=5) as response:
        rows = json.load(response)
    refused = {(r["name"], r["reason"]) for r in rows if not r["served"]}
    assert ("api.docker.", "name held by the static zone") in refused
    assert (f"{victim}.docker.", f"name held by container {victim}") in refused
    # Replicas of one service share a name; a stranger cannot join it.
    one = run(dockerd, "--network", net, "--label", "dnsd.service=pay")
    two = run(dockerd, "--network", net, "--label", "dnsd.service=pay")
    stranger = run(dockerd, "--network", net, "--label", "dnsd.name=pay")
    pair = sorted([ip_of(dockerd, one, net), ip_of(dockerd, two, net)])
    eventually(lambda: addrs(server.port, f"{stranger}.docker") != [])
    assert addrs(server.port, "pay.docker") == pair
    assert "may not join" in server.log()


def test_busybox_gets_addresses_from_an_answer_too_big_for_udp(
    dockerd: Dockerd, dnsd: Dnsd
) -> None:
    """busybox nslookup never retries over TCP: a service with 36 replicas must still resolve
    (as many whole records as fit in 512 bytes, TC set)."""
    service = "many" + uuid.uuid4().hex[:6]
    replicas = [run(dockerd, "--label", f"dnsd.service={service}") for _ in range(36)]

    def over_tcp() -> int:
        return sum(len(rrset) for rrset in query(dnsd.port, f"{service}.docker", tcp=True).answer)

    eventually(lambda: over_tcp() == 36, timeout=30)
    out = dockerd.docker(
        "run", "--rm", "--pull", "never", "--dns", BRIDGE_IP, IMAGE,
        "nslookup", "-type=a", f"{service}.docker",
    )  # fmt: skip
    found = [line for line in out.splitlines() if line.startswith("Address") and ":53" not in line]
    assert len(found) >= 20, out
    dockerd.docker("rm", "-f", *replicas)


def test_first_sync_from_the_real_engine_list(dockerd: Dockerd, net: str, tmp_path: Path) -> None:
    """Many containers already running when dnsd starts: it serves dockerd's own list at once,
    then inspects for what the list lacks (an explicit hostname, a network alias)."""
    named = run(dockerd, "--hostname", "explicit-host", "--network", net, "--network-alias", "al1")
    others = [run(dockerd) for _ in range(33)]
    server = start_dnsd(tmp_path, "--no-forward", "--log-level", "DEBUG", docker=dockerd.url)
    try:
        for name in (named, *others):
            eventually(lambda name=name: addrs(server.port, f"{name}.docker") != [], timeout=20)
        ip = ip_of(dockerd, named, net)
        eventually(lambda: addrs(server.port, "explicit-host.docker") == [ip], timeout=20)
        eventually(lambda: addrs(server.port, "al1.docker") == [ip], timeout=20)
        log = server.log()
        assert log.index("(from the list)") < log.index("(inspected)")
    finally:
        server.stop()
        dockerd.docker("rm", "-f", named, *others)
