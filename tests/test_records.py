"""RecordStore: owners are isolated, indexes stay consistent (checked against a dict model)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dnsd.names import address_key, ancestors, reverse_address, reverse_name
from dnsd.record import Record, SrvValue, srv_weights
from dnsd.records import RecordStore


def a(name: str, ip: str, ttl: int = 5) -> Record:
    return Record(name, "A", ip, ttl)


def test_sources_and_owners_are_isolated() -> None:
    store = RecordStore()
    store.replace_owner("etcd", "k1", [a("web.docker.", "10.0.0.1")])
    store.replace_owner("docker", "c1", [a("web.docker.", "10.0.0.2")])
    assert {r.value for r in store.lookup("web.docker.", "A")} == {"10.0.0.1", "10.0.0.2"}
    store.replace_source("etcd", {})
    assert [r.value for r in store.lookup("web.docker.", "A")] == ["10.0.0.2"]
    assert store.count("docker") == 1 and store.count("etcd") == 0


def test_static_names_cannot_be_joined_and_are_given_back() -> None:
    store = RecordStore()
    store.replace_owner("static", "hosts", [a("web.docker.", "10.0.0.1")])
    store.replace_owner("docker", "c1", [a("web.docker.", "10.0.0.2"), a("c1.docker.", "10.0.0.2")])
    assert [r.value for r in store.lookup("web.docker.", "A")] == ["10.0.0.1"]
    assert [r.value for r in store.lookup("c1.docker.", "A")] == ["10.0.0.2"]
    refused = list(store.rejected())
    assert [(r.record.name, r.source, r.owner) for r in refused] == [
        ("web.docker.", "docker", "c1")
    ]
    assert store.rejections[("docker", "static name")] == 1
    store.replace_source("static", {})  # the operator lets go of the name
    assert [r.value for r in store.lookup("web.docker.", "A")] == ["10.0.0.2"]
    assert list(store.rejected()) == []
    store.replace_source("static", {"hosts": [a("web.docker.", "10.0.0.9")]})  # and takes it back
    assert [r.value for r in store.lookup("web.docker.", "A")] == ["10.0.0.9"]


def test_identical_records_from_two_owners_are_merged_not_duplicated() -> None:
    store = RecordStore()
    store.replace_owner("docker", "local", [a("web.docker.", "10.0.0.1")])
    store.replace_owner("etcd", "remote", [a("web.docker.", "10.0.0.1")])
    assert len(store.lookup("web.docker.", "A")) == 1
    store.remove_owner("docker", "local")
    assert len(store.lookup("web.docker.", "A")) == 1  # still held by etcd
    store.remove_owner("etcd", "remote")
    assert store.lookup("web.docker.", "A") == []
    assert not store.exists("web.docker.")


def test_reverse_index_and_empty_non_terminals() -> None:
    store = RecordStore()
    srv = Record("_http._tcp.web.docker.", "SRV", SrvValue(10, 10, 80, "web.docker."), 5)
    store.replace_owner("s", "o", [a("web.docker.", "10.0.0.1"), srv])
    assert store.reverse("1.0.0.10.in-addr.arpa.") == ["web.docker."]
    assert store.exists("_tcp.web.docker.")
    assert not store.exists("other.docker.")


def test_generation_and_listeners_only_on_change() -> None:
    store = RecordStore()
    calls: list[int] = []
    store.subscribe(lambda _names: calls.append(store.generation))
    store.replace_owner("s", "o", [a("x.docker.", "10.0.0.1")])
    store.replace_owner("s", "o", [a("x.docker.", "10.0.0.1")])  # same: no change
    store.replace_source("s", {"o": [a("x.docker.", "10.0.0.1")], "p": [a("y.docker.", "1.1.1.1")]})
    assert calls == [1, 2]


def test_bad_records_are_rejected() -> None:
    for name, rtype in (("Web.docker.", "A"), ("web.docker", "A"), ("web.docker.", "HINFO")):
        try:
            Record(name, rtype, "10.0.0.1", 5)
        except ValueError:
            continue
        raise AssertionError(f"{name} {rtype} accepted")


def test_ancestors() -> None:
    assert list(ancestors("a.b.docker.")) == ["a.b.docker.", "b.docker.", "docker.", "."]
    assert reverse_name("fd00::1").endswith(".ip6.arpa.")


names = st.sampled_from(["a.docker.", "b.docker.", "x.a.docker.", "c.svc."])
ips = st.sampled_from(["10.0.0.1", "10.0.0.2", "fd00::1"])
records = st.builds(lambda n, ip: Record(n, "AAAA" if ":" in ip else "A", ip, 5), names, ips)
operations = st.lists(
    st.tuples(
        st.sampled_from(["owner", "owners", "source"]),
        st.sampled_from(["static", "docker", "etcd"]),
        st.dictionaries(
            st.sampled_from(["o1", "o2", "o3"]), st.frozensets(records, max_size=4), max_size=3
        ),
    ),
    max_size=25,
)


@settings(max_examples=300, deadline=None)
@given(operations)
def test_store_matches_a_dict_model(
    ops: list[tuple[str, str, dict[str, frozenset[Record]]]],
) -> None:
    store = RecordStore()
    model: dict[tuple[str, str], frozenset[Record]] = {}
    for verb, source, owners in ops:
        if verb == "owner":
            for owner, recs in owners.items():
                store.replace_owner(source, owner, recs)
                model[(source, owner)] = recs
        elif verb == "owners":
            store.update_owners(source, owners)
            model.update({(source, owner): recs for owner, recs in owners.items()})
        else:
            store.replace_source(source, owners)
            model = {key: recs for key, recs in model.items() if key[0] != source}
            model.update({(source, owner): recs for owner, recs in owners.items()})
    # The static zone's names are its own: other sources' records there are not served.
    static_names = {r.name for (src, _), recs in model.items() if src == "static" for r in recs}
    model = {
        (src, own): frozenset(r for r in recs if src == "static" or r.name not in static_names)
        for (src, own), recs in model.items()
    }
    held = {r for recs in model.values() for r in recs}
    for name in ["a.docker.", "b.docker.", "x.a.docker.", "c.svc."]:
        for rtype in ("A", "AAAA"):
            expected = {r for r in held if r.name == name and r.rtype == rtype}
            assert set(store.lookup(name, rtype)) == expected
        under = any(r.name == name or r.name.endswith("." + name) for r in held)
        assert store.exists(name) == under
    for ip in ["10.0.0.1", "10.0.0.2", "fd00::1"]:
        expected_targets = {r.name for r in held if r.value == ip}
        assert set(store.reverse(reverse_name(ip))) == expected_targets
    owned = {(o.source, o.owner, o.record) for o in store.owned()}
    assert owned == {(src, own, r) for (src, own), recs in model.items() for r in recs}
    assert store.count() == sum(len(v) for v in model.values())


@pytest.mark.parametrize(
    ("weights", "answered"),
    [
        ([(10, 130), (10, 80), (10, 150), (30, 0)], [(10, 36), (10, 22), (10, 41), (30, 0)]),
        ([(10, 100)] * 8, [(10, 100)]),  # the same priority, port and target: answered once
        ([(10, 1), (10, 1000)], [(10, 1), (10, 99)]),  # a share above 0 never rounds to 0
        ([(10, 0), (10, 0)], [(10, 0)]),
    ],
)
def test_srv_shares_become_percent_per_priority(
    weights: list[tuple[int, int]], answered: list[tuple[int, int]]
) -> None:
    def srv(index: int, priority: int, weight: int) -> Record:
        target = "same.docker." if len(set(weights)) == 1 else f"t{index}.docker."
        return Record("s.docker.", "SRV", SrvValue(priority, weight, 80, target, True), 5)

    records = [srv(i, p, w) for i, (p, w) in enumerate(weights)]
    got = [(r.value.priority, r.value.weight) for r in srv_weights(records)]  # type: ignore[union-attr]
    assert got == answered
    plain = [Record("s.docker.", "SRV", SrvValue(10, 70, 80, "a.docker."), 5)]
    assert srv_weights(plain) == plain  # Docker and static weights are answered as given


@given(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)))
def test_an_address_is_found_again_from_its_reverse_name(address: object) -> None:
    """The reverse index is keyed by address: every PTR name leads back to the same key."""
    text = str(address)
    assert reverse_address(reverse_name(text)) == address_key(text)


def test_reverse_address_refuses_other_names() -> None:
    for name in (
        "web.docker.",
        "1.0.10.in-addr.arpa.",
        "x.1.0.0.10.in-addr.arpa.",
        "01.0.0.10.in-addr.arpa.",
        "1.2.ip6.arpa.",
        "g" + ".0" * 31 + ".ip6.arpa.",
    ):
        assert reverse_address(name) is None, name
