"""The Docker source at its seams: naming rules (pure) and the event/resync machinery against
a scripted Engine API (tests/testbed/fake_engine.py).  The real engine is in test_docker.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Dnsd, DnsdFactory, eventually, free_port, query, rcode, start_dnsd
from testbed.fake_engine import FakeEngine, container

from dnsd.record import SrvValue
from dnsd.sources.docker_claims import NameClaims, claims_of
from dnsd.sources.docker_engine import docker_reason
from dnsd.sources.docker_labels import dns_label, dns_name
from dnsd.sources.docker_list import attrs_from_list, list_fingerprint
from dnsd.sources.docker_names import DockerNaming, container_records, exposed_ports


def names_of(attrs: dict[str, Any], naming: DockerNaming | None = None) -> dict[str, set[str]]:
    built = container_records(attrs, naming or DockerNaming())
    found: dict[str, set[str]] = {}
    for record in built.records:
        found.setdefault(record.name, set()).add(str(record.value))
    return found


def test_dns_labels() -> None:
    assert dns_label("My_App.1") == "my_app-1"
    assert dns_label("--x--") == "x"
    assert dns_label("ü") == ""
    assert len(dns_label("a" * 100)) == 63
    assert dns_name("api.Prod") == "api.prod"
    assert dns_name("a..b") == ""


@pytest.mark.parametrize(
    ("state", "health", "withheld"),
    [
        ({"Running": True}, None, None),
        ({"Running": False}, None, "not running"),
        ({"Running": True, "Paused": True}, None, "paused"),
        ({"Running": True}, "unhealthy", "unhealthy"),
        ({"Running": True}, "healthy", None),
        ({"Running": True}, "starting", None),
    ],
)
def test_state_and_health(state: dict[str, Any], health: str | None, withheld: str | None) -> None:
    attrs = container("a" * 64, "web", "172.17.0.2")
    attrs["State"] = dict(state, Health={"Status": health} if health else None)
    built = container_records(attrs, DockerNaming())
    assert built.withheld == withheld
    assert bool(built.records) == (withheld is None)


def test_starting_can_be_withheld() -> None:
    attrs = container("a" * 64, "web", "172.17.0.2")
    attrs["State"]["Health"] = {"Status": "starting"}
    assert (
        container_records(attrs, DockerNaming(serve_starting=False)).withheld == "health starting"
    )


def test_names_ptr_flags_and_scopes() -> None:
    attrs = container("b" * 64, "web", "172.17.0.2", labels={"dnsd.name": "api"})
    built = container_records(attrs, DockerNaming(zone="docker."))
    by_name = {(r.name, r.reverse, r.scope) for r in built.records if r.rtype == "A"}
    assert ("web.docker.", True, "172.17.0.0/16") in by_name
    assert ("api.docker.", False, "172.17.0.0/16") in by_name
    assert ("web.bridge.docker.", False, "172.17.0.0/16") in by_name


def test_srv_names_and_well_known_ports() -> None:
    attrs = container(
        "c" * 64, "db", "172.17.0.3", ports=("5432/tcp", "8080/tcp", "53/udp", "junk"),
        labels={"com.docker.compose.service": "pg", "com.docker.compose.project": "shop"},
    )  # fmt: skip
    found = names_of(attrs)
    assert found["_postgresql._tcp.db.docker."] == {str(SrvValue(10, 10, 5432, "db.docker."))}
    assert "_8080._tcp.db.docker." in found
    assert "_domain._udp.db.docker." in found
    assert "_postgresql._tcp.pg.shop.docker." in found
    assert exposed_ports(attrs) == [(53, "udp"), (5432, "tcp"), (8080, "tcp")]


def test_hostile_inspect_data_never_raises() -> None:
    hostile: list[dict[str, Any]] = [
        {},
        {"Name": None, "State": None, "Config": None, "NetworkSettings": None},
        {"Name": "/x", "State": {"Running": True}, "Config": {"Labels": None}},
        {"Name": "/x", "State": {"Running": True},
         "NetworkSettings": {"Networks": {"n": None, "m": {"IPAddress": "not-an-ip"}}}},
        {"Name": "/x", "State": {"Running": True}, "Config": {"Labels": {"dnsd.ttl": "9" * 40}},
         "NetworkSettings": {"Networks": {"n": {"IPAddress": "10.0.0.1", "IPPrefixLen": 99}}}},
    ]  # fmt: skip
    for attrs in hostile:
        built = container_records(attrs, DockerNaming())
        assert isinstance(built.records, list)
    assert list_fingerprint({}) == list_fingerprint({"Names": None})


@pytest.mark.parametrize("gateway", ["not-an-address", 12, "", None])
def test_a_bad_gateway_costs_only_the_gateway_rule(gateway: object) -> None:
    """The address is served whatever the Engine says the network's gateway is; only a real
    address makes queries from it count as the host's."""
    from dnsd.resolve.scopes import inside

    network = {"IPAddress": "10.5.0.2", "IPPrefixLen": 16, "Gateway": gateway}
    attrs = {"Name": "/w", "State": {"Running": True},
             "NetworkSettings": {"Networks": {"n": network}}}  # fmt: skip
    records = [r for r in container_records(attrs, DockerNaming()).records if r.name == "w.docker."]
    assert [(r.value, r.scope) for r in records] == [("10.5.0.2", "10.5.0.0/16")]
    network["Gateway"] = "10.5.0.1"
    (record,) = [
        r for r in container_records(attrs, DockerNaming()).records if r.name == "w.docker."
    ]
    assert record.scope is not None
    assert not inside("10.5.0.1", record.scope) and inside("10.5.0.9", record.scope)


# --- the source machinery against the fake engine -------------------------------------------


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[FakeEngine]:
    fake = FakeEngine(str(tmp_path / "engine.sock")).start()
    yield fake
    fake.stop()


def a_records(server: Dnsd, name: str) -> list[str]:
    reply = query(server.port, name, "A")
    return sorted(item.to_text() for rrset in reply.answer for item in rrset)


def test_no_negative_answer_in_the_docker_zone_before_the_first_list(
    dnsd_factory: DnsdFactory, tmp_path: Path
) -> None:
    """An Engine asked for but not reachable yet: names in Docker's zone get SERVFAIL (not
    an NXDOMAIN resolvers would keep), other zones answer as usual; once the first list is
    applied, NXDOMAIN again."""
    engine = FakeEngine(str(tmp_path / "later.sock"))  # not started yet
    engine.containers["b" * 64] = container("b" * 64, "web", "10.1.0.7")
    server = dnsd_factory("--no-forward", "--zone", "docker.", "--zone", "other.",
                          docker=engine.url)  # fmt: skip
    try:
        assert rcode(query(server.port, "web.docker")) == "SERVFAIL"
        assert rcode(query(server.port, "missing.docker")) == "SERVFAIL"
        assert rcode(query(server.port, "missing.other")) == "NXDOMAIN"
        engine.start()
        server.wait_source("docker")
        assert a_records(server, "web.docker") == ["10.1.0.7"]
        assert rcode(query(server.port, "missing.docker")) == "NXDOMAIN"
    finally:
        engine.stop()


def test_events_then_stream_end_reconnect_and_resync(
    dnsd_factory: DnsdFactory, engine: FakeEngine
) -> None:
    engine.containers["a" * 64] = container("a" * 64, "first", "10.1.0.1")
    server = dnsd_factory("--no-forward", docker=engine.url)
    eventually(lambda: a_records(server, "first.docker") == ["10.1.0.1"])
    assert engine.requests.index("/events") < engine.requests.index("/containers/json")
    engine.containers["b" * 64] = container("b" * 64, "second", "10.1.0.2")
    engine.emit("start", "b" * 64)
    eventually(lambda: a_records(server, "second.docker") == ["10.1.0.2"])
    # The daemon goes away: the stream ends. Meanwhile "first" stops (no event reaches us)
    # and "third" starts; the resync after reconnecting must show both.
    del engine.containers["a" * 64]
    engine.containers["c" * 64] = container("c" * 64, "third", "10.1.0.3")
    engine.end_streams()
    eventually(lambda: a_records(server, "third.docker") == ["10.1.0.3"])
    eventually(lambda: a_records(server, "first.docker") == [])
    assert a_records(server, "second.docker") == ["10.1.0.2"]
    assert server.log().count("event stream ended") == 1


def test_periodic_resync_heals_a_missed_event(
    dnsd_factory: DnsdFactory, engine: FakeEngine
) -> None:
    engine.containers["a" * 64] = container("a" * 64, "ghost", "10.2.0.1")
    config = "[docker]\nresync_interval = 0.3\n"
    server = dnsd_factory("--no-forward", config=config, docker=engine.url)
    eventually(lambda: a_records(server, "ghost.docker") == ["10.2.0.1"])
    del engine.containers["a" * 64]  # and no "die" event is ever sent
    eventually(lambda: rcode(query(server.port, "ghost.docker")) == "NXDOMAIN")
    # Unchanged containers are not inspected again at each resync.
    engine.containers["b" * 64] = container("b" * 64, "steady", "10.2.0.2")
    eventually(lambda: a_records(server, "steady.docker") == ["10.2.0.2"])
    inspected = engine.requests.count(f"/containers/{'b' * 64}/json")
    resyncs = server.metric("dnsd_docker_resyncs_total")
    eventually(lambda: server.metric("dnsd_docker_resyncs_total") >= resyncs + 2)
    assert engine.requests.count(f"/containers/{'b' * 64}/json") == inspected


def test_events_for_vanished_containers_and_junk_events(
    dnsd_factory: DnsdFactory, engine: FakeEngine
) -> None:
    server = dnsd_factory("--no-forward", docker=engine.url)
    eventually(lambda: engine.subscriber_count() == 1)
    engine.emit("start", "f" * 64)  # inspect -> 404: nothing to add
    engine.emit("exec_start: sh", "f" * 64)
    engine.emit("connect", "f" * 64, kind="network")
    engine.containers["d" * 64] = container("d" * 64, "late", "10.3.0.1")
    engine.emit("start", "d" * 64)
    eventually(lambda: a_records(server, "late.docker") == ["10.3.0.1"])
    engine.emit("die", "d" * 64)
    eventually(lambda: a_records(server, "late.docker") == [])
    assert server.proc.poll() is None
    assert "Traceback" not in server.log()


# --- name ownership (docker_claims) ------------------------------------------------------------


def built_of(cid: str, name: str, ip: str, created: str, **labels: str) -> Any:
    attrs = container(cid * 8, name, ip, labels=labels)
    attrs["Created"] = created
    return container_records(attrs, DockerNaming())


def serve_all(builts: dict[str, Any], order: list[str]) -> dict[str, set[str]]:
    """Claims applied in ``order``: name -> addresses served."""
    claims = NameClaims()
    for cid in order:
        claims.claim(cid, claims_of(builts[cid]))
    served: dict[str, set[str]] = {}
    for cid in builts:
        for record in claims.served(cid, builts[cid].records)[0]:
            if record.rtype == "A" and ".bridge." not in record.name:
                served.setdefault(record.name, set()).add(str(record.value))
    return served


def test_extra_names_cannot_take_owned_names_and_order_does_not_matter() -> None:
    builts = {
        "a": built_of("a", "api", "10.0.0.1", "2026-01-01T00:00:01Z"),
        "b": built_of("b", "evil", "10.0.0.2", "2026-01-01T00:00:02Z", **{"dnsd.name": "api,pay"}),
        "c": built_of("c", "pay1", "10.0.0.3", "2026-01-01T00:00:03Z", **{"dnsd.service": "pay"}),
        "d": built_of("d", "pay2", "10.0.0.4", "2026-01-01T00:00:04Z", **{"dnsd.service": "pay"}),
        "e": built_of("e", "late", "10.0.0.5", "2026-01-01T00:00:05Z", **{"dnsd.name": "shared"}),
        "f": built_of("f", "later", "10.0.0.6", "2026-01-01T00:00:06Z", **{"dnsd.name": "shared"}),
    }
    expected = {
        "api.docker.": {"10.0.0.1"},  # an own name beats an extra name
        "evil.docker.": {"10.0.0.2"},
        "pay.docker.": {"10.0.0.2"},  # the oldest claimant (evil) holds it, alone: no group
        "pay1.docker.": {"10.0.0.3"},
        "pay2.docker.": {"10.0.0.4"},
        "shared.docker.": {"10.0.0.5"},
        "late.docker.": {"10.0.0.5"},
        "later.docker.": {"10.0.0.6"},
    }
    assert serve_all(builts, list(builts)) == expected
    assert serve_all(builts, list(reversed(builts))) == expected


def test_a_group_shares_its_names_and_a_freed_name_passes_on() -> None:
    builts = {
        "c": built_of("c", "pay1", "10.0.0.3", "2026-01-01T00:00:03Z", **{"dnsd.service": "pay"}),
        "d": built_of("d", "pay2", "10.0.0.4", "2026-01-01T00:00:04Z", **{"dnsd.service": "pay"}),
        "x": built_of("x", "x", "10.0.0.9", "2026-01-01T00:00:09Z", **{"dnsd.name": "pay"}),
    }
    assert serve_all(builts, list(builts))["pay.docker."] == {"10.0.0.3", "10.0.0.4"}
    claims = NameClaims()
    for cid, built in builts.items():
        claims.claim(cid, claims_of(built))
    assert claims.served("x", builts["x"].records)[1] == {"pay.docker.": "c,d"}
    changed = claims.claim("c", {})
    claims.claim("d", {})
    assert "pay.docker." in changed and claims.winners("pay.docker.") == {"x"}


def test_a_service_name_is_shared_by_members_also_in_another_service() -> None:
    """web is in compose service front.shop and in dnsd.service pay; db only in front.shop:
    both answer for front.shop (as two hosts, one container each, do through etcd), and pay
    stays web's (db does not claim it)."""
    compose = {"com.docker.compose.service": "front", "com.docker.compose.project": "shop"}
    builts = {
        "w": built_of(
            "w", "web", "10.0.0.1", "2026-01-01T00:00:01Z", **compose, **{"dnsd.service": "pay"}
        ),
        "d": built_of("d", "db", "10.0.0.2", "2026-01-01T00:00:02Z", **compose),
        "s": built_of(
            "s", "stranger", "10.0.0.3", "2026-01-01T00:00:03Z", **{"dnsd.name": "front.shop"}
        ),
    }
    for order in (list(builts), list(reversed(builts))):
        served = serve_all(builts, order)
        assert served["front.shop.docker."] == {"10.0.0.1", "10.0.0.2"}  # no stranger
        assert served["pay.docker."] == {"10.0.0.1"}


def test_records_from_the_list_match_the_inspected_ones() -> None:
    labels = {"com.docker.compose.service": "api", "com.docker.compose.project": "shop",
              "dnsd.name": "extra", "dnsd.srv.8080": "web"}  # fmt: skip
    attrs = container("b" * 64, "shop-api-1", "172.18.0.5", labels=labels, ports=("8080/tcp",))
    attrs["NetworkSettings"]["Ports"]["8080/tcp"] = [{"HostIp": "0.0.0.0", "HostPort": "18080"}]
    attrs["State"]["Health"] = {"Status": "healthy"}
    inspected = container_records(attrs, DockerNaming())
    listed = container_records(attrs_from_list(FakeEngine.list_entry(attrs)), DockerNaming())
    assert listed.records == inspected.records and listed.records
    assert listed.published == inspected.published == {(8080, "tcp"): 18080}
    assert listed.health == "healthy" and listed.group == inspected.group == "api.shop"


def test_first_sync_answers_from_the_list_then_inspects(
    dnsd_factory: DnsdFactory, engine: FakeEngine
) -> None:
    for i in range(40):  # over the quick-sync threshold
        cid = f"{i:064x}"
        engine.containers[cid] = container(cid, f"box{i}", f"10.2.0.{i + 1}")
    engine.containers[f"{0:064x}"]["Config"]["Hostname"] = "explicit"  # only inspect shows it
    server = dnsd_factory("--no-forward", "--log-level", "DEBUG", docker=engine.url)
    eventually(lambda: a_records(server, "box39.docker") == ["10.2.0.40"])
    eventually(lambda: a_records(server, "explicit.docker") == ["10.2.0.1"])
    log = server.log()
    assert log.index("(from the list)") < log.index("(inspected)")
    inspected = [r for r in engine.requests if r.startswith("/containers/0")]
    assert len(inspected) >= 40  # and every container was inspected after all


def test_a_slow_inspection_holds_back_no_other_container(
    dnsd_factory: DnsdFactory, engine: FakeEngine
) -> None:
    """Start events are inspected several at a time, and each container is served (and handed
    to the publisher) as soon as its own inspection is back, not after the others'."""
    server = dnsd_factory("--no-forward", docker=engine.url)
    server.wait_source("docker")
    engine.start_slow_then_quick("10.4.0", quick=6)
    for i in range(6):
        eventually(lambda i=i: a_records(server, f"quick{i}.docker") == [f"10.4.0.{i + 1}"])
    assert a_records(server, "slow.docker") == []  # still being inspected
    assert engine.most_in_flight >= 2
    engine.released.set()
    eventually(lambda: a_records(server, "slow.docker") == ["10.4.0.99"])


def test_a_burst_is_answered_from_one_list_while_inspections_are_slow(
    dnsd_factory: DnsdFactory, engine: FakeEngine
) -> None:
    """Hundreds of start events at once (a deployment, a node drain): one list call serves
    them all while their inspections (hostnames, aliases) are still on the way; events for
    the same container are not inspected once per event."""
    server = dnsd_factory("--no-forward", "--log-level", "DEBUG", docker=engine.url)
    server.wait_source("docker")
    burst = [f"{i:064x}" for i in range(200)]
    for i, cid in enumerate(burst):
        engine.containers[cid] = container(cid, f"box{i}", f"10.5.{i // 250}.{i % 250 + 1}")
        engine.held.add(cid)
    for cid in burst:
        engine.emit("start", cid)
        engine.emit("connect", cid, kind="network")
    for i in (0, 57, 199):
        eventually(lambda i=i: a_records(server, f"box{i}.docker") == [f"10.5.0.{i + 1}"])
    assert engine.in_flight > 0  # inspections still held: the list answered
    engine.released.set()
    eventually(lambda: engine.in_flight == 0 and "(inspected)" in server.log().split(
        "(from the list)")[-1])  # fmt: skip
    inspections = sum(r.startswith("/containers/0") for r in engine.requests)
    assert inspections < 2 * len(burst)  # not one per event (400)
    for i in (0, 57, 199):
        assert a_records(server, f"box{i}.docker") == [f"10.5.0.{i + 1}"]


def test_socket_permission_error_says_how_to_fix_it() -> None:
    from docker.errors import DockerException

    raw = DockerException(
        "Error while fetching server API version: ('Connection aborted.', "
        "PermissionError(13, 'Permission denied'))"
    )
    said = docker_reason(raw, "unix:///run/user-docker.sock")
    assert "permission denied on /run/user-docker.sock" in said
    assert 'group-add "$(stat -c %g /run/user-docker.sock)"' in said
    refused = OSError("('Connection aborted.', ConnectionRefusedError(111, 'Connection refused'))")
    assert docker_reason(refused, "unix:///x.sock") == (
        "nothing answers at unix:///x.sock (is dockerd running?)"
    )
    missing = DockerException(
        "Error while fetching server API version: ('Connection aborted.', "
        "FileNotFoundError(2, 'No such file or directory'))"
    )
    assert docker_reason(missing, "") == "no Docker socket at unix:///var/run/docker.sock"
    assert docker_reason(OSError("something else"), "") == "something else"


def test_healthcheck_needs_a_dns_answer(zone_free_dnsd: Dnsd) -> None:
    from dnsd import healthcheck

    assert healthcheck.main([f"127.0.0.1:{zone_free_dnsd.port}"]) == 0
    assert healthcheck.main([f"127.0.0.1:{free_port()}"]) == 1  # nothing listening


@pytest.fixture
def zone_free_dnsd(tmp_path: Path) -> Iterator[Dnsd]:
    server = start_dnsd(tmp_path, "--no-forward")
    yield server
    server.stop()


def _with(
    attrs: dict[str, Any], labels: dict[str, str], env: tuple[str, ...] = ()
) -> dict[str, Any]:
    attrs["Config"]["Labels"] = labels
    attrs["Config"]["Env"] = list(env)
    attrs["Config"]["Image"] = "registry:5000/team/nginx:1.25"
    return attrs


def test_dnsdock_settings_from_labels_and_environment() -> None:
    def built(labels: dict[str, str], env: tuple[str, ...] = ()) -> Any:
        return container_records(
            _with(container("c" * 64, "web1", "10.0.0.5"), labels, env), DockerNaming()
        )

    assert built({"com.dnsdock.ignore": "1"}).withheld == "com.dnsdock.ignore"
    assert built({}, ("DNSDOCK_IGNORE=",)).withheld == "com.dnsdock.ignore"
    assert built({}, ("SERVICE_IGNORE=true",)).withheld == "com.dnsdock.ignore"
    names = {r.name for r in built({"com.dnsdock.region": "eu"}).records}
    assert "web1.nginx.eu.docker." in names  # name and image default to the container's
    assert "web1.nginx.docker." not in {r.name for r in built({}).records}  # only when asked
    env = ("DNSDOCK_NAME=worker", "DNSDOCK_IMAGE=jobs", "SERVICE_REGION=us")
    names = {r.name for r in built({"com.dnsdock.name": "api"}, env).records}
    assert "worker.jobs.us.docker." in names and "api.jobs.us.docker." not in names
    names = {r.name for r in built({"com.dnsdock.tags": "blue,green"}).records}
    assert "blue.nginx.docker." in names
    assert {r.ttl for r in built({"com.dnsdock.ttl": "42"}).records} == {42}
    assert {r.ttl for r in built({"com.dnsdock.ttl": "42", "dnsd.ttl": "7"}).records} == {7}
    assert {r.ttl for r in built({}, ("DNSDOCK_TTL=9",)).records} == {9}
    names = {r.name for r in built({}, ("DNSDOCK_ALIAS=db.docker,sql",)).records}
    assert {"db.docker.", "sql.docker."} <= names
    odd = built({"com.dnsdock.ip_addr": "1.2.3.4", "dnsd.nmae": "x", "dnsd.txt.k": "v",
                 "dnsd.srv.80": "web", "com.dnsdock.alias": "a"})  # fmt: skip
    assert odd.problems[0] == (
        "labels dnsd does not know (ignored): com.dnsdock.ip_addr, dnsd.nmae"
    )
    assert "web1.docker." in {r.name for r in odd.records}
