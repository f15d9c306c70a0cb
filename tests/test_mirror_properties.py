"""Properties of the etcd mirror, for any keys and values an etcd writer can put there.

- Applied change by change, the mirror serves exactly what a fresh mirror listing the final
  keys serves (the per-key bookkeeping of ancestors, CNAMEs and groups never drifts).
- No value and no key name makes it raise; a key it refuses changes no answer at all, and a
  key it takes changes no answer outside its own name and its ancestors.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from testbed.mirror import load_all

from dnsd.admission import Admission
from dnsd.record import Record
from dnsd.records import RecordStore
from dnsd.sources.etcd_mirror import Mirror

P = "/skydns"
ZONES = ["docker."]

labels = st.sampled_from(["web", "db", "x1", "x2", "_http", "_tcp", "ns", "dns", "apex", "arpa"])
paths = st.lists(labels, min_size=1, max_size=4).map(lambda parts: "/".join(parts))
hosts = st.sampled_from(
    ["10.0.0.1", "10.0.0.2", "fd00::1", "web.docker", "db.docker", "mx.example.org",
     "fe80::1%eth0", "::ffff:10.0.0.9", "", "a..b", "1.2.3.04", "WEB.Docker.", "x" * 70]
)  # fmt: skip
good_values = st.fixed_dictionaries(
    {"host": hosts},
    optional={
        "port": st.integers(-1, 70000), "priority": st.integers(0, 30),
        "weight": st.integers(0, 300), "ttl": st.integers(-1, 100),
        "targetstrip": st.integers(-1, 4), "group": st.sampled_from(["", "g1", "g2"]),
        "text": st.text(max_size=20), "mail": st.booleans(), "reverse": st.booleans(),
        "dnsd_node": st.sampled_from(["", "hosta", 7]),
    },
)  # fmt: skip
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10)
any_json = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
raw_values = (
    good_values.map(lambda v: json.dumps(v).encode())
    | any_json.map(lambda v: json.dumps(v).encode())
    | st.dictionaries(
        st.sampled_from(["host", "port", "ttl", "priority", "weight", "text", "targetstrip"]),
        any_json,
    ).map(lambda v: json.dumps(v).encode())
    | st.binary(max_size=30)
)
odd_keys = st.sampled_from(
    ["docker/*/x", "docker/a b", "docker/" + "l" * 70, "docker//x", "docker/x/", "com/example",
     "arpa/in-addr/10/0/0/1", "docker/dns/ns/c/ns1", "docker/dns/apex/a", "docker/UP/Case",
     "docker/ü", "docker/web/*/hosta-1", "docker/*/hosta-1", "docker/web/*/*"]
)  # fmt: skip
keys = (paths.map(lambda p: f"docker/{p}") | odd_keys).map(lambda p: f"{P}/{p}")
changes = st.lists(
    st.tuples(keys, st.one_of(st.none(), raw_values), st.sampled_from([0, 0, 5, 60])),
    max_size=25,
)

# Few names, valid values, groups on most keys: the cases where the group filter decides.
grouped_changes = st.lists(
    st.tuples(
        st.lists(st.sampled_from(["g", "s", "t"]), min_size=1, max_size=3).map(
            lambda parts: f"{P}/docker/" + "/".join(parts)
        ),
        st.one_of(
            st.none(),
            st.fixed_dictionaries(
                {"host": st.sampled_from(["10.0.0.1", "10.0.0.2", "web.docker"]),
                 "group": st.sampled_from(["", "g1", "g2"])}
            ).map(lambda v: json.dumps(v).encode()),
        ),
        st.just(0),
    ),
    max_size=25,
)  # fmt: skip


def _mirror() -> tuple[Mirror, RecordStore]:
    store = RecordStore(Admission(ZONES))
    return Mirror(store, P, ZONES, 30), store


def served(store: RecordStore) -> set[Record]:
    return {owned.record for owned in store.owned()}


def _final(steps: list[tuple[str, Any, int]]) -> dict[str, tuple[bytes, int]]:
    final: dict[str, tuple[bytes, int]] = {}
    for key, value, lease in steps:
        key = key.rstrip("/")
        if value is None:
            final.pop(key, None)
        else:
            final[key] = (value, lease)
    return final


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(changes | grouped_changes, st.integers(1, 5))
def test_change_by_change_equals_a_fresh_list(
    steps: list[tuple[str, bytes | None, int]], batch: int
) -> None:
    mirror, store = _mirror()
    for start in range(0, len(steps), batch):
        mirror.apply(steps[start : start + batch])
    fresh, fresh_store = _mirror()
    load_all(fresh, ((k, v, lease) for k, (v, lease) in _final(steps).items()))
    assert served(store) == served(fresh_store)
    assert mirror.bad_keys == fresh.bad_keys
    # and a relist of the same keys over the changed mirror changes nothing
    load_all(mirror, ((k, v, lease) for k, (v, lease) in _final(steps).items()))
    assert served(store) == served(fresh_store)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(changes, keys, raw_values)
def test_one_key_changes_only_its_own_names(
    base: list[tuple[str, bytes | None, int]], key: str, value: bytes
) -> None:
    mirror, store = _mirror()
    mirror.apply(base)
    key = key.rstrip("/")
    mirror.apply([(key, None, 0)])
    before = served(store)
    mirror.apply([(key, value, 0)])  # never raises, whatever the value
    after = served(store)
    if key in mirror.bad_keys:
        assert after == before  # refused: no answer changes
        assert key not in mirror.services
        return
    assert key in mirror.services
    own = set(mirror.names_of(key))
    changed = {r.name for r in before ^ after}
    reverse = {n for n in changed if n.endswith(".arpa.")}  # its address's automatic PTR
    assert changed - reverse <= own


def _batch_around(mirror: Mirror, middle: bytes) -> list[str]:
    """Applies keys a, b (``middle``) and c under web.docker in one batch; web's addresses."""
    mirror.apply(
        [
            (f"{P}/docker/web/a", b'{"host": "10.0.0.1"}', 0),
            (f"{P}/docker/web/b", middle, 0),
            (f"{P}/docker/web/c", b'{"host": "10.0.0.3"}', 0),
        ]
    )
    return sorted(str(r.value) for r in mirror._store.lookup("web.docker.", "A"))


def test_a_scoped_address_in_a_batch_costs_only_itself() -> None:
    mirror, _ = _mirror()
    assert _batch_around(mirror, b'{"host": "fe80::1%eth0"}') == ["10.0.0.1", "10.0.0.3"]
    assert "scoped" in mirror.bad_keys[f"{P}/docker/web/b"]


def test_a_failure_while_applying_one_key_costs_only_that_key(monkeypatch: Any) -> None:
    """Whatever still goes wrong inside (a bug) is caught per key, counted and logged."""
    mirror, _ = _mirror()
    real = mirror._key_records

    def broken(service: Any) -> list[Record]:
        if service.key.endswith("/b"):
            raise RuntimeError("a bug")
        return real(service)

    monkeypatch.setattr(mirror, "_key_records", broken)
    assert _batch_around(mirror, b'{"host": "10.0.0.2"}') == ["10.0.0.1", "10.0.0.3"]
    assert mirror.bad_keys[f"{P}/docker/web/b"] == "internal error: RuntimeError"
    assert f"{P}/docker/web/b" not in mirror.services
