"""Multi-host discovery through a real etcd (tests/testbed/etcd.py), SkyDNS record format."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import pytest
from conftest import Dnsd, DnsdFactory, StopAtEnd, eventually, free_port, query, rcode, start_dnsd
from testbed.etcd import Etcd, Member, available
from testbed.fake_engine import FakeEngine, container
from testbed.mirror import load_all
from testbed.tcp_proxy import TcpProxy

from dnsd.admission import Admission
from dnsd.protocol import MAX_ANSWER_RECORDS
from dnsd.record import Record
from dnsd.records import RecordStore
from dnsd.sources.etcd_mirror import Mirror
from dnsd.sources.skydns import Service, group_filter, key_to_name, name_to_key, parse_value


def answers(port: int, name: str, rdtype: str = "A") -> list[str]:
    reply = query(port, name, rdtype)
    return sorted(item.to_text() for rrset in reply.answer for item in rrset)


def zone() -> str:
    """A fresh zone per test so tests sharing one etcd do not see each other's keys."""
    return "z" + uuid.uuid4().hex[:6]


# --- the format, unit level ------------------------------------------------------------------


def test_key_name_round_trip() -> None:
    assert key_to_name("/skydns/docker/prod/web", "/skydns") == "web.prod.docker."
    assert name_to_key("web.prod.docker.", "/skydns") == "/skydns/docker/prod/web"
    assert key_to_name("/skydns/Docker/WEB/", "/skydns") == "web.docker."


@pytest.mark.parametrize(
    "raw",
    [b"not json", b"[1]", b'{"host": "10.0.0.1", "port": "8080"}', b'{"host": 5}',
     b'{"host": "10.0.0.1", "port": 70000}', b'{"port": 80}', b'{"host": "a b.c"}',
     b'{"host": "10.0.0.1", "ttl": true}', b"\xff\xfe"],
)  # fmt: skip
def test_malformed_values_raise_value_error(raw: bytes) -> None:
    with pytest.raises(ValueError):
        parse_value("/skydns/x", "x.", raw)


def test_unknown_fields_are_ignored() -> None:
    service = parse_value("/k", "k.", b'{"host": "10.0.0.1", "color": "blue", "port": 8}')
    assert (service.host, service.port) == ("10.0.0.1", 8)


def test_group_filter_follows_coredns() -> None:
    def svc(key: str, group: str) -> Service:
        return Service(key=key, name="n.", host="10.0.0.1", group=group)

    same = [svc("/s/a/1", "g1"), svc("/s/a/2", "g1"), svc("/s/a/b/3", "g2"), svc("/s/a/b/4", "")]
    assert [s.key for s in group_filter(same)] == ["/s/a/1", "/s/a/2", "/s/a/b/4"]
    disagree = [svc("/s/a/1", "g1"), svc("/s/a/2", "g2")]
    assert group_filter(disagree) == disagree


# --- a running dnsd mirroring a real etcd -----------------------------------------------------


@pytest.fixture
def mirror(etcd: Etcd, tmp_path: Path) -> Iterator[tuple[Dnsd, str]]:
    name = zone()
    server = start_dnsd(tmp_path, "--no-forward", "--zone", name, "--etcd", etcd.endpoints)
    server.wait_source("etcd")
    yield server, name
    server.stop()


def test_skydns_records_from_etcdctl(etcd: Etcd, mirror: tuple[Dnsd, str]) -> None:
    server, z = mirror
    put = etcd.put
    put(f"/skydns/{z}/prod/web/x1", '{"host": "10.1.0.1", "port": 8080}')
    put(f"/skydns/{z}/prod/web/x2", '{"host": "10.1.0.2", "port": 8080, "weight": 300}')
    put(f"/skydns/{z}/prod/web/x3", '{"host": "fd00::3", "port": 8080, "priority": 20}')
    put(f"/skydns/{z}/prod/alias", '{"host": "web.prod.' + z + '"}')
    put(f"/skydns/{z}/prod/info", '{"text": "hello"}')
    put(f"/skydns/{z}/mail/mx1", '{"host": "mx1.example.com", "mail": true, "priority": 5}')
    put("/skydns/arpa/in-addr/10/9/9/9", '{"host": "named.' + z + '"}')
    eventually(lambda: answers(server.port, f"web.prod.{z}") == ["10.1.0.1", "10.1.0.2"])
    assert answers(server.port, f"web.prod.{z}", "AAAA") == ["fd00::3"]
    assert answers(server.port, f"x1.web.prod.{z}") == ["10.1.0.1"]
    srv = query(server.port, f"web.prod.{z}", "SRV")
    weights = sorted((r.priority, r.weight, r.target.to_text()) for rs in srv.answer for r in rs)
    assert weights == [
        (10, 25, f"x1.web.prod.{z}."),
        (10, 75, f"x2.web.prod.{z}."),
        (20, 100, f"x3.web.prod.{z}."),
    ]
    additional = sorted(r.to_text() for rs in srv.additional for r in rs)
    assert additional == ["10.1.0.1", "10.1.0.2", "fd00::3"]
    cname = query(server.port, f"alias.prod.{z}", "A")
    assert cname.answer[0][0].to_text() == f"web.prod.{z}."
    assert answers(server.port, f"info.prod.{z}", "TXT") == ['"hello"']
    assert answers(server.port, f"mail.{z}", "MX") == ["5 mx1.example.com."]
    assert answers(server.port, f"*.web.prod.{z}") == ["10.1.0.1", "10.1.0.2"]
    assert answers(server.port, f"any.prod.{z}") == ["10.1.0.1", "10.1.0.2"]
    assert answers(server.port, "9.9.9.10.in-addr.arpa", "PTR") == [f"named.{z}."]
    assert answers(server.port, "2.0.1.10.in-addr.arpa", "PTR") == [f"x2.web.prod.{z}."]
    reply = query(server.port, f"x1.web.prod.{z}")
    assert reply.flags & dns.flags.AA and reply.answer[0].ttl == 5


def test_targetstrip_names_the_nameserver(etcd: Etcd, mirror: tuple[Dnsd, str]) -> None:
    """``…/dns/ns/c/ns1`` and ``…/c/ns2`` with targetstrip 1: one NS ``c.ns.dns.<zone>``
    with both addresses as glue, as CoreDNS answers."""
    server, z = mirror
    etcd.put(f"/skydns/{z}/dns/ns/c/ns1", '{"host": "10.0.0.53", "targetstrip": 1}')
    etcd.put(f"/skydns/{z}/dns/ns/c/ns2", '{"host": "10.0.0.54", "targetstrip": 1}')
    eventually(lambda: answers(server.port, f"ns2.c.ns.dns.{z}") == ["10.0.0.54"])
    assert answers(server.port, z, "NS") == [f"c.ns.dns.{z}."]
    reply = query(server.port, z, "NS")
    glue = sorted((rs.name.to_text(), r.to_text()) for rs in reply.additional for r in rs)
    assert glue == [(f"c.ns.dns.{z}.", "10.0.0.53"), (f"c.ns.dns.{z}.", "10.0.0.54")]


def test_groups(etcd: Etcd, mirror: tuple[Dnsd, str]) -> None:
    server, z = mirror
    etcd.put(f"/skydns/{z}/dom/a", '{"host": "127.0.0.1", "group": "g1"}')
    etcd.put(f"/skydns/{z}/dom/b", '{"host": "127.0.0.2", "group": "g1"}')
    etcd.put(f"/skydns/{z}/dom/sub/c", '{"host": "127.0.0.3", "group": "g2"}')
    etcd.put(f"/skydns/{z}/dom/sub/d", '{"host": "127.0.0.4", "group": "g2"}')
    eventually(lambda: answers(server.port, f"dom.{z}") == ["127.0.0.1", "127.0.0.2"])
    eventually(lambda: answers(server.port, f"sub.dom.{z}") == ["127.0.0.3", "127.0.0.4"])
    assert answers(server.port, f"dom.{z}") == ["127.0.0.1", "127.0.0.2"]


def test_hostile_writer_is_confined_to_the_zones(
    etcd: Etcd, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    z, http = zone(), free_port()
    server = start_dnsd(
        tmp_path,
        "--no-forward",
        "--zone",
        z,
        "--etcd",
        etcd.endpoints,
        "--http",
        f"127.0.0.1:{http}",
    )
    request.addfinalizer(server.stop)
    server.wait_source("etcd")
    put = etcd.put
    put("/skydns/com/example/www", '{"host": "6.6.6.6"}')
    put("/skydns/arpa/in-addr/6/6/6/6", '{"host": "www.example.com"}')
    put(f"/skydns/{z}/svc/{'l' * 70}", '{"host": "10.3.0.9", "port": 80}')
    put(f"/skydns/{z}/svc/big", '{"text": "' + "t" * 70_000 + '"}')
    put(f"/skydns/{z}/svc/good", '{"host": "10.3.0.1", "port": 80}')
    put(f"/skydns/{z}/svc/last", '{"host": "10.3.0.2", "port": 80}')
    eventually(lambda: answers(server.port, f"svc.{z}") == ["10.3.0.1", "10.3.0.2"])
    for name in ("www.example.com", "example.com", "com", "."):
        reply = query(server.port, name)
        assert rcode(reply) == "REFUSED" and not reply.answer, name  # not ours, no forwarding
    assert rcode(query(server.port, "6.6.6.6.in-addr.arpa", "PTR")) == "REFUSED"
    srv = query(server.port, f"svc.{z}", "SRV")  # the parent of the over-long label answers
    assert sorted(r.target.to_text() for rs in srv.answer for r in rs) == [
        f"good.svc.{z}.",
        f"last.svc.{z}.",
    ]
    assert rcode(query(server.port, f"big.svc.{z}", "TXT", tcp=True)) in ("NOERROR", "NXDOMAIN")
    with urllib.request.urlopen(f"http://127.0.0.1:{http}/records", timeout=5) as response:
        refused = {(r["name"], r["reason"]) for r in json.load(response) if not r["served"]}
    assert ("www.example.com.", "outside the zones") in refused
    assert ("6.6.6.6.in-addr.arpa.", "PTR pointing outside the zones") in refused
    assert (f"big.svc.{z}.", "TXT record longer than 4000 bytes") in refused
    assert "label longer than 63 bytes" in server.log()  # the key itself is skipped
    assert "Traceback" not in server.log()


def test_malformed_key_is_skipped_not_the_name(etcd: Etcd, mirror: tuple[Dnsd, str]) -> None:
    server, z = mirror
    etcd.put(f"/skydns/{z}/svc/good", '{"host": "10.2.0.1"}')
    etcd.put(f"/skydns/{z}/svc/bad", '{"host": "10.2.0.2", "port": "8080"}')
    etcd.put(f"/skydns/{z}/svc/junk", "{{{")
    eventually(lambda: answers(server.port, f"svc.{z}") == ["10.2.0.1"])
    assert "port' must be a number" in server.log()
    assert rcode(query(server.port, f"bad.svc.{z}")) == "NXDOMAIN"
    etcd.put(f"/skydns/{z}/svc/bad", '{"host": "10.2.0.2", "port": 8080}')  # fixed
    eventually(lambda: answers(server.port, f"svc.{z}") == ["10.2.0.1", "10.2.0.2"])


def test_ttl_is_capped_by_the_lease(etcd: Etcd, mirror: tuple[Dnsd, str]) -> None:
    server, z = mirror
    lease = etcd.ctl("lease", "grant", "3").stdout.split()[1]
    etcd.ctl("put", f"/skydns/{z}/leased/a", '{"host": "10.3.0.1", "ttl": 60}', "--lease", lease)
    etcd.put(f"/skydns/{z}/plain/a", '{"host": "10.3.0.2", "ttl": 60}')
    eventually(lambda: answers(server.port, f"a.leased.{z}") == ["10.3.0.1"])
    eventually(lambda: answers(server.port, f"a.plain.{z}") == ["10.3.0.2"])
    assert query(server.port, f"a.leased.{z}").answer[0].ttl == 3
    assert query(server.port, f"a.plain.{z}").answer[0].ttl == 60
    eventually(lambda: answers(server.port, f"a.leased.{z}") == [], timeout=10)  # lease expired


# --- publishing: two dnsd "hosts" sharing one etcd --------------------------------------------


def host(
    stop_at_end: StopAtEnd, tmp: Path, etcd: Etcd, node: str, z: str, *extra: str
) -> tuple[Dnsd, FakeEngine]:
    """A dnsd "host" with a scripted Engine, both stopped when the test ends."""
    engine = stop_at_end(FakeEngine(str(tmp / f"{node}.sock")).start())
    config = tmp / f"{node}.toml"
    config.write_text("[etcd]\nlease_ttl = 3\n")
    server = start_dnsd(
        tmp, "--no-forward", "--zone", z, "--etcd", etcd.endpoints, "--node-id", node,
        "--config", str(config), *extra, docker=engine.url,
    )  # fmt: skip
    stop_at_end(server)
    server.wait_source("etcd-publish")
    return server, engine


def test_two_hosts_share_containers_and_a_crash_withdraws(
    stop_at_end: StopAtEnd, etcd: Etcd, tmp_path: Path
) -> None:
    z = zone()
    a, engine_a = host(stop_at_end, tmp_path, etcd, "hosta", z)
    b, engine_b = host(stop_at_end, tmp_path, etcd, "hostb", z)
    engine_a.containers["a" * 64] = container(
        "a" * 64, "web", "10.7.0.1", ports=("80/tcp",),
        labels={"com.docker.compose.service": "api", "com.docker.compose.project": "shop"},
    )  # fmt: skip
    engine_a.emit("start", "a" * 64)
    engine_b.containers["b" * 64] = container("b" * 64, "db", "10.7.0.2")
    engine_b.emit("start", "b" * 64)
    eventually(lambda: answers(b.port, f"web.{z}") == ["10.7.0.1"])
    eventually(lambda: answers(a.port, f"db.{z}") == ["10.7.0.2"])
    assert answers(b.port, f"api.shop.{z}") == ["10.7.0.1"]
    srv = answers(b.port, f"_http._tcp.web.{z}", "SRV")
    assert srv == [f"10 10 80 web.{z}."]  # the container's name and weight, as locally
    eventually(lambda: answers(a.port, f"_http._tcp.web.{z}", "SRV") == srv)
    assert answers(a.port, f"web.{z}") == ["10.7.0.1"]  # local + etcd copy: merged
    keys = etcd.ctl("get", f"/skydns/{z}", "--prefix", "--keys-only").stdout.split()
    assert f"/skydns/{z}/web/hosta-{'a' * 12}" in keys
    assert all(k.rsplit("/", 1)[1].startswith(("hosta-", "hostb-")) for k in keys)
    # A crash (SIGKILL): no withdrawal; the lease (3 s) expires; gone within TTL + 2 s.
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait()
    eventually(lambda: answers(b.port, f"web.{z}") == [], timeout=3 + 6)
    # Back after a restart.
    a2 = start_dnsd(
        tmp_path, "--no-forward", "--zone", z, "--etcd", etcd.endpoints, "--node-id",
        "hosta", "--config", str(tmp_path / "hosta.toml"), docker=engine_a.url,
    )  # fmt: skip
    try:
        eventually(lambda: answers(b.port, f"web.{z}") == ["10.7.0.1"])
    finally:
        a2.stop()
    # A clean stop withdraws at once (the lease is revoked).
    eventually(lambda: answers(b.port, f"web.{z}") == [], timeout=2)


def test_each_container_of_a_burst_is_published_when_it_is_ready(
    stop_at_end: StopAtEnd, etcd: Etcd, tmp_path: Path
) -> None:
    """One container's inspection hangs (a slow Engine): the others started with it are
    answered by the other host meanwhile, not after it."""
    z = zone()
    _, engine_a = host(stop_at_end, tmp_path, etcd, "hosta", z)
    b, _ = host(stop_at_end, tmp_path, etcd, "hostb", z)
    engine_a.start_slow_then_quick("10.8.0", quick=5)
    for i in range(5):
        eventually(lambda i=i: answers(b.port, f"quick{i}.{z}") == [f"10.8.0.{i + 1}"])
    assert answers(b.port, f"slow.{z}") == [] and engine_a.in_flight == 1
    engine_a.released.set()
    eventually(lambda: answers(b.port, f"slow.{z}") == ["10.8.0.99"])


def test_every_host_gives_the_same_srv_answer(
    stop_at_end: StopAtEnd, etcd: Etcd, tmp_path: Path
) -> None:
    """Replicas of one service on two hosts, different weights: each host merges its own
    Docker records with everyone's etcd keys, and both answer alike, with the containers'
    own weights (as a single host does)."""
    z = zone()
    a, engine_a = host(stop_at_end, tmp_path, etcd, "hostf", z)
    b, engine_b = host(stop_at_end, tmp_path, etcd, "hostg", z)
    labels = {"dnsd.service": "payments", "dnsd.srv.8080": "api", "dnsd.priority": "5"}
    for engine, cid, name, ip, weight in (
        (engine_a, "f" * 64, "lbl1", "10.9.0.1", "70"),
        (engine_a, "1" * 64, "lbl2", "10.9.0.2", "10"),
        (engine_b, "2" * 64, "lbl3", "10.9.0.3", "30"),
    ):
        engine.containers[cid] = container(
            cid, name, ip, ports=("8080/tcp",), labels={**labels, "dnsd.weight": weight}
        )
        engine.emit("start", cid)
    want = [f"5 10 8080 lbl2.{z}.", f"5 30 8080 lbl3.{z}.", f"5 70 8080 lbl1.{z}."]
    asked = f"_api._tcp.payments.{z}"
    for server in (a, b):
        eventually(lambda s=server: answers(s.port, asked, "SRV") == want, timeout=5)
    extra = query(b.port, f"_api._tcp.payments.{z}", "SRV").additional
    assert sorted(r.to_text() for rs in extra for r in rs) == [
        "10.9.0.1",
        "10.9.0.2",
        "10.9.0.3",
    ]
    for server in (a, b):  # an address's PTR names the container, never an SRV name
        assert answers(server.port, "1.0.9.10.in-addr.arpa", "PTR") == [f"lbl1.{z}."]
        assert answers(server.port, "3.0.9.10.in-addr.arpa", "PTR") == [f"lbl3.{z}."]


def test_operators_see_the_publishing_nodes(
    stop_at_end: StopAtEnd, etcd: Etcd, tmp_path: Path
) -> None:
    """/records names the node that published each etcd record; /nodes and ``dnsd records
    --nodes`` list the publishing nodes with their key counts and lease time left; keys
    skipped as unservable are rows of /records with the reason."""
    z = zone()
    _a, engine_a = host(stop_at_end, tmp_path, etcd, "nodea", z)
    b, _engine_b = host(stop_at_end, tmp_path, etcd, "nodeb", z)
    engine_a.containers["c" * 64] = container("c" * 64, "web", "10.8.0.1", ports=("80/tcp",))
    engine_a.emit("start", "c" * 64)
    etcd.put(f"/skydns/{z}/bad/k", '{"host": "fe80::1%eth0"}')
    etcd.put(f"/skydns/{z}/foreign/k", '{"host": "10.8.0.9"}')
    eventually(lambda: answers(b.port, f"web.{z}") == ["10.8.0.1"])
    eventually(lambda: answers(b.port, f"foreign.{z}") == ["10.8.0.9"])
    rows = json.loads(b._get(f"/records?source=etcd&name=*{z}"))
    nodes = {(r["name"], r["type"]): r["node"] for r in rows if r["served"]}
    assert nodes[(f"web.{z}.", "A")] == "nodea"
    assert nodes[(f"_http._tcp.web.{z}.", "SRV")] == "nodea"
    assert nodes[(f"foreign.{z}.", "A")] is None  # written by another tool
    skipped = [r for r in rows if not r["served"]]
    assert [(r["name"], r["owner"]) for r in skipped] == [(f"k.bad.{z}.", f"/skydns/{z}/bad/k")]
    assert "scoped" in skipped[0]["reason"]

    def listed() -> list[dict[str, object]]:
        found = [n for n in json.loads(b._get("/nodes")) if n["node"] in ("nodea", "nodeb")]
        return (
            found if len(found) == 2 and all(n["lease_left_s"] is not None for n in found) else []
        )

    # Both, nodeb with nothing to publish too (its presence key), each with its lease time.
    node, empty = eventually(listed, timeout=15)
    assert node["node"] == "nodea" and node["keys"] == 2  # web A, _http._tcp.web SRV
    assert empty["node"] == "nodeb" and empty["keys"] == 0
    assert 0 < float(node["lease_left_s"]) <= 3  # type: ignore[arg-type]
    assert 0 < float(empty["lease_left_s"]) <= 3  # type: ignore[arg-type]
    printed = subprocess.run(
        [sys.executable, "-m", "dnsd", "records", "--nodes", "--http",
         f"127.0.0.1:{b.http_port}"],
        capture_output=True, text=True, timeout=10, check=True,
    )  # fmt: skip
    lines = printed.stdout.splitlines()
    assert lines[0].split() == ["NODE", "KEYS", "LEASE", "LEASE_LEFT_S"]
    assert any(line.split()[:2] == ["nodea", "2"] for line in lines)
    assert any(line.split()[:2] == ["nodeb", "0"] for line in lines)
    one = subprocess.run(
        [sys.executable, "-m", "dnsd", "records", "--name", f"web.{z}", "--source", "docker",
         "--http", f"127.0.0.1:{b.http_port}"],
        capture_output=True, text=True, timeout=10, check=True,
    )  # fmt: skip
    assert one.stderr.strip() in ("0 records", "1 record"), one.stderr  # not "1 records"


def test_earlier_run_leftovers_are_removed(
    stop_at_end: StopAtEnd, etcd: Etcd, tmp_path: Path
) -> None:
    z = zone()
    etcd.put(f"/skydns/{z}/ghost/hostc-000000000000", '{"host": "10.8.0.1"}')
    etcd.put(f"/skydns/{z}/other/hostd-000000000000", '{"host": "10.8.0.2"}')
    c, _engine = host(stop_at_end, tmp_path, etcd, "hostc", z)
    eventually(lambda: answers(c.port, f"ghost.{z}") == [])
    assert answers(c.port, f"other.{z}") == ["10.8.0.2"]  # another node's key stays


def test_advertise_host_ip_with_published_ports(
    stop_at_end: StopAtEnd, etcd: Etcd, tmp_path: Path
) -> None:
    z = zone()
    _e, engine = host(stop_at_end, tmp_path, etcd, "hoste", z, "--advertise-ip", "192.0.2.10")
    observer = stop_at_end(
        start_dnsd(tmp_path, "--no-forward", "--zone", z, "--etcd", etcd.endpoints)
    )
    attrs = container("e" * 64, "shop", "172.17.0.9", ports=("80/tcp", "9000/tcp"))
    attrs["NetworkSettings"]["Ports"] = {
        "80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}], "9000/tcp": None,
    }  # fmt: skip
    engine.containers["e" * 64] = attrs
    engine.emit("start", "e" * 64)
    eventually(lambda: answers(observer.port, f"shop.{z}") == ["192.0.2.10"])
    srv = answers(observer.port, f"_http._tcp.shop.{z}", "SRV")
    assert [s.split()[2] for s in srv] == ["8080"]
    assert answers(observer.port, f"_9000._tcp.shop.{z}", "SRV") == []  # not published


# --- a 3-member cluster: failover, freezing, total loss ---------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[Etcd]:
    reason = available()
    if reason:
        pytest.fail(reason)
    server = Etcd(3).start()
    yield server
    server.stop()


def test_cluster_failover_loses_no_update(
    stop_at_end: StopAtEnd, cluster: Etcd, tmp_path: Path
) -> None:
    z = zone()
    server = stop_at_end(
        start_dnsd(tmp_path, "--no-forward", "--zone", z, "--etcd", cluster.endpoints)
    )

    def watched() -> Member:
        via = server.log().rsplit("etcd watching", 1)[1].split("via ", 1)[1].split()[0]
        return next(m for m in cluster.members if m.endpoint == via)

    def put_and_see(label: str, ip: str, avoid: Member, timeout: float = 30) -> None:
        via = next(m for m in cluster.members if m is not avoid and m.proc.poll() is None)
        cluster.put(f"/skydns/{z}/{label}", json.dumps({"host": ip}), endpoints=via.endpoint)
        eventually(lambda: answers(server.port, f"{label}.{z}") == [ip], timeout=timeout)

    server.wait_source("etcd")
    put_and_see("before", "10.9.0.1", watched())
    # 1. The member the watch runs through dies.
    victim = watched()
    victim.kill()
    put_and_see("after-kill", "10.9.0.2", victim)
    assert watched() is not victim
    cluster.restart(victim)
    cluster.wait_healthy()
    # 2. The leader dies.
    leader = cluster.leader()
    leader.kill()
    put_and_see("after-leader", "10.9.0.3", leader)
    cluster.restart(leader)
    cluster.wait_healthy()
    # 3. The member the watch runs through freezes (SIGSTOP): keepalive notices.
    frozen = watched()
    frozen.freeze()
    try:
        put_and_see("after-freeze", "10.9.0.4", frozen)
        assert watched() is not frozen
    finally:
        frozen.thaw()
    for label, ip in (("before", "10.9.0.1"), ("after-kill", "10.9.0.2")):
        assert answers(server.port, f"{label}.{z}") == [ip]


def test_all_of_etcd_down_keeps_last_answers(stop_at_end: StopAtEnd, tmp_path: Path) -> None:
    solo = stop_at_end(Etcd(1).start())
    z = zone()
    solo.put(f"/skydns/{z}/kept", '{"host": "10.10.0.1"}')
    server = start_dnsd(tmp_path, "--no-forward", "--zone", z, "--etcd", solo.endpoints)
    try:
        eventually(lambda: answers(server.port, f"kept.{z}") == ["10.10.0.1"])
        solo.members[0].kill()
        server.wait_source("etcd", "degraded")
        why = server.source("etcd")["reason"]  # in words, naming the member
        assert "StatusCode" not in why and solo.members[0].endpoint in why, why
        for _ in range(5):
            assert answers(server.port, f"kept.{z}") == ["10.10.0.1"]
            time.sleep(0.2)
        solo.restart(solo.members[0])
        solo.wait_healthy()
        solo.put(f"/skydns/{z}/new", '{"host": "10.10.0.2"}')
        eventually(lambda: answers(server.port, f"new.{z}") == ["10.10.0.2"], timeout=20)
    finally:
        server.stop()


def test_no_negative_answer_before_the_first_etcd_list(
    etcd: Etcd, stop_at_end: StopAtEnd, tmp_path: Path
) -> None:
    """Until etcd's first list is applied, a name it could hold gets SERVFAIL (never cached),
    never an authoritative NXDOMAIN that resolvers would keep for the negative TTL; names the
    hosts file holds are answered meanwhile."""
    z = zone()
    etcd.put(f"/skydns/{z}/app", '{"host": "10.20.0.1"}')
    host, port = etcd.members[0].endpoint.rsplit(":", 1)
    proxy = TcpProxy(host, int(port))
    proxy.cut.set()  # etcd unreachable when dnsd starts
    (tmp_path / "hosts").write_text(f"10.20.0.9 fixed.{z}\n")
    config = f'[static]\nhosts = ["{tmp_path / "hosts"}"]\n'
    server = start_dnsd(tmp_path, "--no-forward", "--zone", z, "--etcd", proxy.endpoint,
                        config=config)  # fmt: skip
    try:
        assert answers(server.port, f"fixed.{z}") == ["10.20.0.9"]
        for name in (f"app.{z}", f"missing.{z}", f"missing.{z}"):
            assert rcode(query(server.port, name)) == "SERVFAIL", name
        assert rcode(query(server.port, f"fixed.{z}", "AAAA")) == "SERVFAIL"  # NODATA, too
        proxy.heal()
        server.wait_source("etcd")
        assert answers(server.port, f"app.{z}") == ["10.20.0.1"]
        assert rcode(query(server.port, f"missing.{z}")) == "NXDOMAIN"
        assert rcode(query(server.port, f"fixed.{z}", "AAAA")) == "NOERROR"
    finally:
        server.stop()
        proxy.close()


@pytest.mark.parametrize("at_the_delete", [False, True])
def test_compaction_relists(dnsd_factory: DnsdFactory, etcd: Etcd, at_the_delete: bool) -> None:
    """dnsd misses a delete while cut off, and the history it would resume from is compacted
    away: only a fresh list can show the delete, and it must.  ``at_the_delete``: compacted at
    exactly the delete's revision, where etcd accepts the resumed watch but drops the delete."""
    z = zone()
    server = dnsd_factory("--no-forward", "--zone", z, "--etcd", etcd.endpoints)
    etcd.put(f"/skydns/{z}/c/one", '{"host": "10.11.0.1"}')
    eventually(lambda: answers(server.port, f"one.c.{z}") == ["10.11.0.1"])
    server.proc.send_signal(signal.SIGSTOP)  # cut off: it sees nothing from here on
    try:
        etcd.put(f"/skydns/{z}/c/two", '{"host": "10.11.0.2"}')
        etcd.ctl("del", f"/skydns/{z}/c/one")
        if not at_the_delete:
            etcd.put(f"/skydns/{z}/c/three", '{"host": "10.11.0.3"}')  # the delete is history
        revision = json.loads(etcd.ctl("get", "/", "-w", "json").stdout)["header"]["revision"]
        etcd.ctl("compact", str(revision))
        etcd.members[0].kill()  # its watch connection breaks
        etcd.restart(etcd.members[0])
        etcd.wait_healthy()
    finally:
        server.proc.send_signal(signal.SIGCONT)
    eventually(lambda: answers(server.port, f"two.c.{z}") == ["10.11.0.2"], timeout=20)
    eventually(lambda: answers(server.port, f"one.c.{z}") == [], timeout=20)
    assert "compacted: listing again" in server.log()
    assert server.proc.poll() is None


def test_tls_and_authentication(stop_at_end: StopAtEnd, tmp_path: Path) -> None:
    """etcd over TLS with client certificates, then with a user and password as well
    (gRPC sends credentials only over TLS, so dnsd requires etcd.ca for a user)."""
    from testbed.certs import make

    certs = make(tmp_path / "certs")
    secure = stop_at_end(Etcd(1, certs=certs).start())
    tls = f'ca = "{certs.ca}"\ncert = "{certs.client_cert}"\nkey = "{certs.client_key}"\n'

    def serve(z: str, extra: str) -> Dnsd:
        config = tmp_path / f"{uuid.uuid4().hex}.toml"
        config.write_text(f"[etcd]\n{tls}{extra}")
        return start_dnsd(
            tmp_path, "--no-forward", "--zone", z, "--etcd", secure.endpoints,
            "--config", str(config),
        )  # fmt: skip

    z = zone()
    secure.put(f"/skydns/{z}/tls", '{"host": "10.12.0.1"}')
    server = serve(z, "")
    try:
        eventually(lambda: answers(server.port, f"tls.{z}") == ["10.12.0.1"])
    finally:
        server.stop()
    secure.ctl("user", "add", "root:rootpw")
    secure.ctl("user", "add", "reader:readerpw")
    secure.ctl("role", "add", "skydns-read")
    secure.ctl("role", "grant-permission", "skydns-read", "--prefix=true", "read", "/skydns")
    secure.ctl("user", "grant-role", "reader", "skydns-read")
    secure.ctl("auth", "enable")
    secure.auth = ["--user", "root:rootpw"]
    secure.put(f"/skydns/{z}/auth", '{"host": "10.12.0.2"}')
    server = serve(z, 'user = "reader"\npassword = "readerpw"\npublish = false\n')
    try:
        eventually(lambda: answers(server.port, f"auth.{z}") == ["10.12.0.2"])
    finally:
        server.stop()
    refused = serve(z, 'user = "reader"\npassword = "wrong"\n')
    try:
        refused.wait_source("etcd", "down", reason="authentication")
        assert answers(refused.port, f"auth.{z}") == []
    finally:
        refused.stop()


def test_lease_lost_is_regranted_and_republished(
    stop_at_end: StopAtEnd, etcd: Etcd, tmp_path: Path
) -> None:
    z = zone()
    node, engine = host(stop_at_end, tmp_path, etcd, "hostf", z)
    engine.containers["f" * 64] = container("f" * 64, "phoenix", "10.13.0.1")
    engine.emit("start", "f" * 64)
    key = f"/skydns/{z}/phoenix/hostf-{'f' * 12}"
    eventually(lambda: key in etcd.ctl("get", key, "--keys-only").stdout)
    leases = etcd.ctl("lease", "list").stdout.splitlines()[1:]
    lease = next(
        lid for lid in leases if key in etcd.ctl("lease", "timetolive", lid, "--keys").stdout
    )
    assert node.metric("dnsd_etcd_lease_losses_total") == 0
    assert node.metric("dnsd_etcd_lease_ttl_seconds") == 3
    left = node.metric("dnsd_etcd_lease_expiry_timestamp_seconds") - time.time()
    assert 0 < left <= 3.5
    etcd.ctl("lease", "revoke", lease)  # as if it had expired while etcd was away
    eventually(lambda: key in etcd.ctl("get", key, "--keys-only").stdout, timeout=10)
    assert "lease" in node.log() and node.log().count("granted") >= 2
    assert node.metric("dnsd_etcd_lease_losses_total") == 1
    assert node.metric("dnsd_source_state", source="etcd-publish", state="ok") == 1


def test_a_wildcard_answer_is_capped_in_records_not_only_names() -> None:
    """100 names of 40 keys each under one wildcard: the walk stops at the answer's record
    cap, not only at the 1,000-name cap (which alone would let 4,000 records through)."""
    store = RecordStore(Admission(["docker."]))
    mirror = Mirror(store, "/skydns", ["docker."], 5)
    load_all(
        mirror,
        [
            (f"/skydns/docker/wide/n{n}/k{k}", f'{{"host": "10.5.{n}.{k + 1}"}}'.encode(), 0)
            for n in range(100)
            for k in range(40)
        ],
    )
    found = mirror.wildcard("*.wide.docker.", "A")
    assert len(found) == MAX_ANSWER_RECORDS
    assert len({str(r.value) for r in found}) == MAX_ANSWER_RECORDS


def test_wildcards_walk_the_etcd_tree_only() -> None:
    store = RecordStore(Admission(["docker."]))
    mirror = Mirror(store, "/skydns", ["docker."], 5)
    entries = [
        (f"/skydns/docker/region{r}/svc{s}/x{i}", f'{{"host": "10.{r}.{s}.{i + 1}"}}'.encode(), 0)
        for r in range(2)
        for s in range(50)
        for i in range(3)
    ]
    entries.append(("/skydns/docker/prod/web/a", b'{"host": "10.9.0.1"}', 0))
    load_all(mirror, entries)
    store.replace_owner("static", "hosts", [Record("a.static.docker.", "A", "10.8.0.1", 5)])
    store.replace_owner("docker", "c1", [Record("c1.region0.docker.", "A", "10.7.0.1", 5)])
    found = {str(r.value) for r in mirror.wildcard("x1.*.region1.docker.", "A")}
    assert found == {f"10.1.{s}.2" for s in range(50)}
    assert {str(r.value) for r in mirror.wildcard("*.web.prod.docker.", "A")} == {"10.9.0.1"}
    assert {str(r.value) for r in mirror.wildcard("prod.any.docker.", "A")} == set()
    assert mirror.wildcard("*.static.docker.", "A") == []  # static and Docker names: no
    assert {str(r.value) for r in mirror.wildcard("*.region0.docker.", "A")} == {
        f"10.0.{s}.{i + 1}" for s in range(50) for i in range(3)
    }
    # Deleting keys prunes the tree.
    mirror.apply([("/skydns/docker/prod/web/a", None, 0)])
    assert mirror.wildcard("*.web.prod.docker.", "A") == []
    assert mirror.wildcard("*.prod.docker.", "A") == []
