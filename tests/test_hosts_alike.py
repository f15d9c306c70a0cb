"""Every host answers alike: random container configurations on two dnsd "hosts" sharing a
real etcd, and the same containers on one dnsd with etcd off.  For every name the containers
answer to (names, compose and service names, aliases, wildcard children, SRV names, the
addresses' PTRs) and every type, the answer and additional sections of host A, host B and the
single host are equal: names, TTLs, SRV targets, ports, priorities and weights.

Each host gets its containers from a scripted Engine API (testbed/fake_engine.py); the
single host's engine holds both hosts' containers.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import dns.message
import dns.rcode
import pytest
from conftest import Dnsd, query, start_dnsd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from testbed.etcd import Etcd
from testbed.fake_engine import FakeEngine, container

TYPES = ("A", "AAAA", "SRV", "TXT", "CNAME")


@dataclass
class Bed:
    zone: str
    hosts: list[tuple[Dnsd, FakeEngine]]  # host A, host B (etcd on)
    single: tuple[Dnsd, FakeEngine]  # etcd off, every container


@pytest.fixture(scope="module")
def bed(etcd: Etcd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    tmp = tmp_path_factory.mktemp("alike")
    zone = "alike" + uuid.uuid4().hex[:4]
    started: list[tuple[Dnsd, FakeEngine]] = []
    for node in ("hosta", "hostb", "single"):
        engine = FakeEngine(str(tmp / f"{node}.sock")).start()
        args = ["--no-forward", "--zone", zone, "--node-id", node]
        if node != "single":
            args += ["--etcd", etcd.endpoints]
        server = start_dnsd(tmp, *args, docker=engine.url)
        server.wait_source("docker")
        started.append((server, engine))
    yield Bed(zone, started[:2], started[2])
    for server, engine in started:
        server.stop()
        engine.stop()


@dataclass(frozen=True)
class Spec:
    name: str
    host: int  # 0: host A, 1: host B
    labels: tuple[tuple[str, str], ...]
    ports: tuple[str, ...]
    networks: int
    health: str


def _labels() -> st.SearchStrategy[tuple[tuple[str, str], ...]]:
    return st.lists(
        st.sampled_from(
            [("dnsd.service", "pay"), ("dnsd.wildcard", "true"), ("dnsd.weight", "10"),
             ("dnsd.weight", "70"), ("dnsd.priority", "5"), ("dnsd.srv.8080", "api"),
             ("com.docker.compose.service", "front"), ("com.docker.compose.project", "shop"),
             ("dnsd.ttl", "3"), ("dnsd.name", "ALIAS")]
        ),
        max_size=5,
        unique_by=lambda pair: pair[0],
    ).map(tuple)  # fmt: skip


specs = st.lists(
    st.builds(
        Spec,
        name=st.sampled_from(["web", "db", "cache", "queue", "auth"]),
        host=st.integers(0, 1),
        labels=_labels(),
        ports=st.lists(
            st.sampled_from(["80/tcp", "8080/tcp", "53/udp"]), max_size=2, unique=True
        ).map(tuple),
        networks=st.integers(1, 2),
        health=st.sampled_from(["", "", "healthy", "unhealthy"]),
    ),
    min_size=1,
    max_size=4,
    unique_by=lambda spec: spec.name,
)


def inspect(spec: Spec, number: int) -> dict[str, Any]:
    cid = f"{number:x}{spec.name}".ljust(64, "0")
    labels = {k: (f"alias-{spec.name}" if v == "ALIAS" else v) for k, v in spec.labels}
    doc = container(
        cid, spec.name, f"10.40.{number}.2", labels=labels, network="front", ports=spec.ports
    )
    if spec.networks == 2:
        doc["NetworkSettings"]["Networks"]["back"] = {
            "IPAddress": f"10.41.{number}.2", "IPPrefixLen": 24, "Aliases": None,
            "EndpointID": f"ep2-{cid}",
        }  # fmt: skip
    if spec.health:
        doc["State"]["Health"] = {"Status": spec.health}
    return doc


def questions(zone: str, chosen: list[Spec]) -> list[tuple[str, str]]:
    names: set[str] = set()
    for number, spec in enumerate(chosen):
        labels = dict(spec.labels)
        compose = labels.get("com.docker.compose.service")
        own = [spec.name, labels.get("dnsd.service", ""), f"alias-{spec.name}",
               f"{compose}.shop" if compose else ""]  # fmt: skip
        for name in filter(None, own):
            names |= {name, f"tenant1.{name}", f"_api._tcp.{name}", f"_http._tcp.{name}",
                      f"_domain._udp.{name}", f"x.{name}"}  # fmt: skip
        names |= {f"2.{number}.40.10.in-addr.arpa", f"2.{number}.41.10.in-addr.arpa"}
    asked = []
    for name in sorted(names):
        full = name if name.endswith(".arpa") else f"{name}.{zone}"
        asked += [(full, "PTR")] if name.endswith(".arpa") else [(full, t) for t in TYPES]
    return asked


def view(reply: dns.message.Message) -> tuple[Any, ...]:
    def rows(section: list[Any]) -> list[str]:
        return sorted(f"{rs.name} {rs.ttl} {rs.rdtype} {r.to_text()}" for rs in section for r in rs)

    return dns.rcode.to_text(reply.rcode()), rows(reply.answer), rows(reply.additional)


def ask(port: int, name: str, rtype: str) -> tuple[Any, ...]:
    return view(query(port, name, rtype, tcp=True))


def differences(bed: Bed, asked: list[tuple[str, str]]) -> list[str]:
    servers = [bed.hosts[0][0], bed.hosts[1][0], bed.single[0]]
    found = []
    for name, rtype in asked:
        a, b, single = (ask(s.port, name, rtype) for s in servers)
        if not a == b == single:
            found.append(f"{name} {rtype}:\n  host A {a}\n  host B {b}\n  single {single}")
    return found


def _set_containers(engine: FakeEngine, docs: dict[str, dict[str, Any]]) -> None:
    for cid in list(engine.containers):
        if cid not in docs:
            del engine.containers[cid]
            engine.emit("die", cid)
            engine.emit("destroy", cid)
    for cid, doc in docs.items():
        engine.containers[cid] = doc
        engine.emit("start", cid)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(chosen=specs)
def test_every_host_answers_alike(bed: Bed, chosen: list[Spec]) -> None:
    docs = [{}, {}]  # type: list[dict[str, dict[str, Any]]]
    for number, spec in enumerate(chosen):
        doc = inspect(spec, number)
        docs[spec.host][doc["Id"]] = doc
    _set_containers(bed.hosts[0][1], docs[0])
    _set_containers(bed.hosts[1][1], docs[1])
    _set_containers(bed.single[1], {**docs[0], **docs[1]})
    asked = questions(bed.zone, chosen)
    deadline = time.monotonic() + 15
    while True:  # publishing and mirroring take a moment; then they must agree for good
        found = differences(bed, asked)
        if not found or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert not found, "\n".join(found[:8])
    time.sleep(0.5)
    assert not differences(bed, asked)  # and they stay that way
