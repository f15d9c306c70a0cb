"""DNS-SD browsing (RFC 6763): the records derived from SRV records, on their own and against a
real Docker Engine, with dig and dnspython, on two hosts sharing their containers via etcd."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype
import pytest
from conftest import Dnsd, StopAtEnd, eventually, start_dnsd
from testbed.dockerd import Dockerd
from testbed.etcd import Etcd

from dnsd import dns_sd
from dnsd.admission import Admission
from dnsd.record import Record, SrvValue
from dnsd.records import RecordStore
from dnsd.resolve.local import LocalZone
from dnsd.sources.docker_names import DockerNaming, container_records
from dnsd.sources.etcd_publish import PublishSettings, desired_keys
from dnsd.sources.skydns import key_to_name, parse_value, published_records


def zone_answers(zone: LocalZone, name: str, rdtype: str) -> tuple[int, list[str]]:
    found = zone.answer(name, dns.rdatatype.from_text(rdtype), name)
    assert found is not None
    return found.rcode, sorted(rr.rdata.toZone() for rrset in found.rrsets for rr in rrset)


def browsing_store() -> tuple[RecordStore, LocalZone]:
    store = RecordStore(Admission(["docker."]), derive=dns_sd.derived)
    return store, LocalZone(store, ["docker."])


def test_instances_types_and_txt_follow_the_srv_records() -> None:
    store, zone = browsing_store()
    own = SrvValue(10, 10, 80, "web.docker.")
    store.replace_owner("docker", "c1", [
        Record("web.docker.", "A", "10.0.0.1", 5),
        Record("_http._tcp.web.docker.", "SRV", own, 5),
        Record("_http._tcp.web.docker.", "TXT", ("path=/", "v=2"), 5),
        Record("_http._tcp.grp.docker.", "SRV", own._replace(listed=False), 5),
    ])  # fmt: skip
    store.replace_owner("static", "conf", [
        Record("_postgresql._tcp.db.docker.", "SRV", SrvValue(1, 1, 5432, "pg.example."), 5),
    ])  # fmt: skip
    assert zone_answers(zone, "_services._dns-sd._udp.docker.", "PTR") == (
        0, ["_http._tcp.docker.", "_postgresql._tcp.docker."])  # fmt: skip
    assert zone_answers(zone, "_http._tcp.docker.", "PTR") == (0, ["web._http._tcp.docker."])
    browsed = zone.answer("_http._tcp.docker.", dns.rdatatype.PTR, "_http._tcp.docker.")
    assert browsed is not None  # RFC 6763 12.1: the instance's SRV, TXT and address along
    assert [rr.toZone().split()[-1] for rr in browsed.additional] == [
        "web.docker.", '"v=2"', "10.0.0.1"]  # fmt: skip
    assert zone_answers(zone, "web._http._tcp.docker.", "SRV") == (0, ["10 10 80 web.docker."])
    assert zone_answers(zone, "web._http._tcp.docker.", "TXT") == (0, ['"path=/" "v=2"'])
    assert zone_answers(zone, "db._postgresql._tcp.docker.", "TXT") == (0, ['""'])  # RFC 6763 6.1
    assert zone_answers(zone, "grp._http._tcp.docker.", "SRV")[0] == 3  # a group: no instance
    for browse in ("b._dns-sd._udp.docker.", "lb._dns-sd._udp.docker."):
        assert zone_answers(zone, browse, "PTR") == (0, ["docker."])
        assert zone_answers(zone, browse, "A") == (0, [])
    # The same SRV from two sources (the container and its etcd copy) is one instance; the
    # instance goes when the last one does, the service type with its last instance.
    store.replace_owner("etcd", "k1", [Record("_http._tcp.web.docker.", "SRV", own, 5)])
    store.replace_owner("docker", "c1", [])
    assert zone_answers(zone, "_http._tcp.docker.", "PTR") == (0, ["web._http._tcp.docker."])
    store.replace_owner("etcd", "k1", [])
    assert zone_answers(zone, "_http._tcp.docker.", "PTR")[0] == 3
    assert zone_answers(zone, "web._http._tcp.docker.", "TXT")[0] == 3
    assert zone_answers(zone, "_services._dns-sd._udp.docker.", "PTR") == (
        0, ["_postgresql._tcp.docker."])  # fmt: skip
    store.replace_owner("static", "conf", [])
    assert not store.exists("_services._dns-sd._udp.docker.")
    assert not store.exists("_tcp.docker.")


def test_browsing_records_stay_inside_the_zones_and_change_only_their_names() -> None:
    store, _ = browsing_store()
    touched: list[set[str]] = []
    store.subscribe(touched.append)
    # A static SRV outside the zones (allowed for static) derives nothing outside them.
    store.replace_owner("docker", "x", [
        Record("_http._tcp.docker.", "SRV", SrvValue(1, 1, 80, "a.docker."), 5)])  # fmt: skip
    assert not store.exists("docker._http._tcp.")
    store.replace_owner("docker", "c", [
        Record("_ssh._tcp.box.docker.", "SRV", SrvValue(1, 1, 22, "box.docker."), 5)])  # fmt: skip
    names = touched[-1]
    assert {"_ssh._tcp.docker.", "box._ssh._tcp.docker.", "_services._dns-sd._udp.docker."} <= names
    assert "_http._tcp.docker." not in names  # another type's listing keeps its cached answer


def test_container_txt_labels() -> None:
    labels = {
        "dnsd.txt.path": "/api", "dnsd.txt.version": "2", "dnsd.txt.": "x",
        "dnsd.txt.caf\u00e9": "bad key", "dnsd.txt.long": "y" * 300,
        "dnsd.service": "grp",
    }  # fmt: skip
    attrs = {
        "Name": "/web",
        "State": {"Running": True},
        "Config": {"Labels": labels, "ExposedPorts": {"80/tcp": {}}},
        "NetworkSettings": {"Networks": {"bridge": {"IPAddress": "172.17.0.2"}}},
    }
    built = container_records(attrs, DockerNaming(zone="docker."))
    texts = [r for r in built.records if r.rtype == "TXT"]
    assert [(r.name, r.value) for r in texts] == [
        ("_http._tcp.web.docker.", ("path=/api", "version=2"))]  # fmt: skip
    srv = {r.name: r.value for r in built.records if r.rtype == "SRV"}
    assert isinstance(srv["_http._tcp.web.docker."], SrvValue)
    assert srv["_http._tcp.web.docker."].listed  # type: ignore[union-attr]
    assert not srv["_http._tcp.grp.docker."].listed  # type: ignore[union-attr]
    assert len(built.problems) == 3 and all("dnsd.txt." in p for p in built.problems)
    portless = {**attrs, "Config": {"Labels": {"dnsd.txt.a": "1"}}}
    assert "exposes no port" in container_records(portless, DockerNaming(zone="docker."))\
        .problems[0]  # fmt: skip


def test_published_keys_carry_the_txt_and_read_back_the_same() -> None:
    """What another host makes of this host's keys is what this host serves."""
    attrs = {
        "Name": "/web", "State": {"Running": True},
        "Config": {"Labels": {"dnsd.txt.path": "/api", "dnsd.service": "grp"},
                   "ExposedPorts": {"80/tcp": {}}},
        "NetworkSettings": {"Networks": {"bridge": {"IPAddress": "172.17.0.2"}}},
    }  # fmt: skip
    built = container_records(attrs, DockerNaming(zone="docker."))
    built.served = built.records  # no other container claims its names
    keys = desired_keys({"c" * 64: built}, PublishSettings(node_id="hosta"), "/skydns")
    read_back = set()
    for key, value in keys.items():
        service = parse_value(key, key_to_name(key, "/skydns"), value)
        read_back |= set(published_records(service, 5))
    local = {r for r in built.records if r.rtype in ("SRV", "TXT")}
    assert local <= read_back
    srv_key = next(k for k in keys if k.startswith("/skydns/docker/web/_tcp/_http/"))
    assert json.loads(keys[srv_key])["dnsd_txt"] == ["path=/api"]


@pytest.mark.parametrize("bad", [
    '"path=/"', '[1]', '[]', json.dumps(["x" * 256]), json.dumps(["a"] * 65)])  # fmt: skip
def test_bad_txt_field_is_a_clear_error(bad: str) -> None:
    raw = f'{{"host": "web.docker", "port": 80, "dnsd_node": "h", "dnsd_txt": {bad}}}'
    with pytest.raises(ValueError, match="dnsd_txt"):
        parse_value("/skydns/docker/web/_tcp/_http/x", "x._http._tcp.web.docker.", raw.encode())


# --- against a real Docker Engine, two hosts through a real etcd -----------------------------


def dig(port: int, name: str, rdtype: str) -> list[str]:
    out = subprocess.run(
        ["dig", "@127.0.0.1", "-p", str(port), "+short", "+time=2", "+tries=1", name, rdtype],
        capture_output=True, text=True, timeout=10, check=True,
    ).stdout  # fmt: skip
    return sorted(out.split("\n")[:-1])


def ask(port: int, name: str, rdtype: str) -> dns.message.Message:
    return dns.query.udp(dns.message.make_query(name, rdtype), "127.0.0.1", port=port, timeout=2)


def browse(port: int, service_type: str) -> dict[str, tuple[list[str], list[str]]]:
    """What a DNS-SD browser does (dnspython): the instances of a type, each with its SRV and
    TXT records."""
    found = {}
    for rrset in ask(port, service_type, "PTR").answer:
        for ptr in rrset:
            instance = ptr.target.to_text()
            srv = [r.to_text() for s in ask(port, instance, "SRV").answer for r in s]
            txt = [r.to_text() for s in ask(port, instance, "TXT").answer for r in s]
            found[instance] = (sorted(srv), sorted(txt))
    return found


def run(dockerd: Dockerd, *args: str, cmd: tuple[str, ...] = ("sleep", "1000")) -> str:
    return dockerd.run(*args, cmd=cmd, prefix="sd")


def test_browsing_real_containers_on_two_hosts(
    dockerd: Dockerd, etcd: Etcd, stop_at_end: StopAtEnd, tmp_path: Path
) -> None:
    svc, other = "s" + uuid.uuid4().hex[:6], "t" + uuid.uuid4().hex[:6]
    service_type = f"_{svc}._tcp.docker."
    static = (
        f'[[static.records]]\nname = "_{svc}._tcp.legacy"\ntype = "SRV"\n'
        'value = "20 5 8080 legacy.example.com."\n'
    )
    a = stop_at_end(start_dnsd(
        tmp_path, "--no-forward", "--etcd", etcd.endpoints, "--node-id", "sd-a",
        config=static, docker=dockerd.url,
    ))  # fmt: skip
    b = stop_at_end(start_dnsd(
        tmp_path, "--no-forward", "--etcd", etcd.endpoints, "--node-id", "sd-b", config=static,
    ))  # fmt: skip
    a.wait_source("etcd-publish")
    healthy = ("--health-cmd", "test -f /tmp/ok", "--health-interval", "1s",
               "--health-retries", "1", "--health-timeout", "1s")  # fmt: skip
    web = run(
        dockerd, "--expose", "8080", "--expose", "9000", "-l", f"dnsd.srv.8080={svc}",
        "-l", f"dnsd.srv.9000={other}", "-l", "dnsd.txt.path=/api", "-l", "dnsd.txt.version=2",
        "-l", f"dnsd.service=grp{svc}",
    )  # fmt: skip
    api = run(
        dockerd, "--expose", "8080", "-l", f"dnsd.srv.8080={svc}", *healthy,
        cmd=("sh", "-c", "touch /tmp/ok; exec sleep 1000"),
    )  # fmt: skip
    stop_at_end(_Removed(dockerd, web, api))
    instances = {f"{n}.{service_type}" for n in (web, api, "legacy")}

    def listed(server: Dnsd) -> set[str]:
        return set(dig(server.port, service_type, "PTR"))

    for server in (a, b):  # b has the containers from etcd only
        eventually(lambda server=server: listed(server) == instances, timeout=20)  # type: ignore[misc]
        types = dig(server.port, "_services._dns-sd._udp.docker", "PTR")
        assert {service_type, f"_{other}._tcp.docker."} <= set(types)
        assert dig(server.port, f"{web}.{service_type}", "SRV") == [f"10 10 8080 {web}.docker."]
        assert dig(server.port, f"{web}.{service_type}", "TXT") == ['"path=/api" "version=2"']
        assert dig(server.port, f"{api}.{service_type}", "TXT") == ['""']
        assert dig(server.port, f"legacy.{service_type}", "SRV") == [
            "20 5 8080 legacy.example.com."
        ]
        assert dig(server.port, f"grp{svc}.{service_type}", "SRV") == []  # a group, no instance
        for label in ("b", "lb"):
            assert dig(server.port, f"{label}._dns-sd._udp.docker", "PTR") == ["docker."]
    # A bad TXT field in etcd is a skipped, counted key: nothing else changes.
    bad = '{"host": "x.docker", "port": 1, "dnsd_node": "n", "dnsd_txt": "not a list"}'
    etcd.put(f"/skydns/docker/bad{svc}/_tcp/_{svc}/n-1", bad)
    eventually(lambda: b.metric("dnsd_etcd_bad_keys") >= 1)
    assert listed(b) == instances and b.proc.poll() is None
    # dnspython walks the same on both hosts; an instance's SRV brings its address along.
    assert browse(a.port, service_type) == browse(b.port, service_type)
    assert browse(a.port, service_type)[f"{web}.{service_type}"][1] == ['"path=/api" "version=2"']
    srv = ask(a.port, f"{web}.{service_type}", "SRV")
    ip = dockerd.docker("inspect", "-f", "{{.NetworkSettings.IPAddress}}", web)
    assert [r.to_text() for rrset in srv.additional for r in rrset] == [ip]
    along = {rrset.name.to_text() for rrset in ask(a.port, service_type, "PTR").additional}
    assert {f"{web}.{service_type}", f"{web}.docker."} <= along
    # Health-aware: an unhealthy instance leaves every host's listing, and comes back.
    eventually(lambda: dockerd.docker("inspect", "-f", "{{.State.Health.Status}}", api)
               == "healthy")  # fmt: skip
    dockerd.docker("exec", api, "rm", "/tmp/ok")
    for server in (a, b):
        eventually(lambda server=server: f"{api}.{service_type}" not in listed(server),  # type: ignore[misc]
                   timeout=15)  # fmt: skip
    dockerd.docker("exec", api, "touch", "/tmp/ok")
    eventually(lambda: listed(b) == instances, timeout=15)
    # A container that goes takes its instances and, with the last instance, the type.
    dockerd.docker("rm", "-f", web)
    for server in (a, b):
        eventually(lambda server=server: listed(server) == instances - {f"{web}.{service_type}"})  # type: ignore[misc]
        types = dig(server.port, "_services._dns-sd._udp.docker", "PTR")
        assert service_type in types and f"_{other}._tcp.docker." not in types


class _Removed:
    """Removes the test's containers when the test ends."""

    def __init__(self, dockerd: Dockerd, *names: str) -> None:
        self.dockerd, self.names = dockerd, names

    def stop(self) -> None:
        self.dockerd.docker("rm", "-f", *self.names, check=False)
