"""Table-driven unit tests of the etcd mirror: keys (as etcd holds them) -> what the store serves.

The same semantics run against a real etcd in tests/test_fidelity.py; here each rule is one row.
"""

from __future__ import annotations

import pytest
from testbed.mirror import load_all

from dnsd.admission import Admission
from dnsd.record import srv_weights
from dnsd.records import RecordStore
from dnsd.sources.etcd_mirror import Mirror

P = "/skydns"


def _mirror(keys: dict[str, str]) -> tuple[Mirror, RecordStore]:
    store = RecordStore(Admission(["docker."]))
    mirror = Mirror(store, P, ["docker."], 30)
    load_all(mirror, ((key, value.encode(), 0) for key, value in keys.items()))
    return mirror, store


def _served(store: RecordStore, name: str, rtype: str) -> list[str]:
    records = store.lookup(name, rtype)
    if rtype == "SRV":
        records = srv_weights(records)
    return sorted(
        " ".join(str(part) for part in r.value[:4]) if rtype == "SRV" else str(r.value)
        for r in records
    )


@pytest.mark.parametrize(
    ("keys", "name", "rtype", "served"),
    [
        # A key's own name, and every ancestor up to (not including) the apex.
        ({"/skydns/docker/web/x1": '{"host": "10.0.0.1"}'}, "x1.web.docker.", "A", ["10.0.0.1"]),
        ({"/skydns/docker/web/x1": '{"host": "10.0.0.1"}'}, "web.docker.", "A", ["10.0.0.1"]),
        ({"/skydns/docker/web/x1": '{"host": "10.0.0.1"}'}, "docker.", "A", []),
        # x1 is not x10: a name is a path of labels, not a key prefix.
        ({"/skydns/docker/web/x1": '{"host": "10.0.0.1"}',
          "/skydns/docker/web/x10": '{"host": "10.0.0.10"}'}, "x1.web.docker.", "A", ["10.0.0.1"]),
        # A name host: a CNAME when it is the only key, an SRV target always.
        ({"/skydns/docker/alias": '{"host": "web.docker"}'}, "alias.docker.", "CNAME",
         ["web.docker."]),
        ({"/skydns/docker/a/x": '{"host": "web.docker"}', "/skydns/docker/a/y": '{"host": "db"}'},
         "a.docker.", "CNAME", []),
        # SRV: weight 0 counts as 100; percent per priority; an address host -> the key's name.
        ({"/skydns/docker/s/a": '{"host": "10.0.0.1", "port": 80}',
          "/skydns/docker/s/b": '{"host": "10.0.0.2", "port": 80, "weight": 300}',
          "/skydns/docker/s/c": '{"host": "10.0.0.3", "port": 80, "priority": 20}'},
         "s.docker.", "SRV",
         ["10 25 80 a.s.docker.", "10 75 80 b.s.docker.", "20 100 80 c.s.docker."]),
        # targetstrip: the SRV target (and the automatic PTR) is the name minus N labels.
        ({"/skydns/docker/lb/i1": '{"host": "10.0.0.1", "port": 443, "targetstrip": 1}'},
         "lb.docker.", "SRV", ["10 100 443 lb.docker."]),
        # TXT from text, MX from mail (priority as preference).
        ({"/skydns/docker/t": '{"text": "hello"}'}, "t.docker.", "TXT", ["('hello',)"]),
        ({"/skydns/docker/m/x": '{"host": "mx.example.org", "mail": true, "priority": 5}'},
         "m.docker.", "MX", ["MxValue(preference=5, exchange='mx.example.org.')"]),
        # Groups: the shortest keys' group decides; keys without a group always stay.
        ({"/skydns/docker/g/a": '{"host": "10.0.0.1", "group": "g1"}',
          "/skydns/docker/g/s/b": '{"host": "10.0.0.2", "group": "g2"}',
          "/skydns/docker/g/s/c": '{"host": "10.0.0.3"}'},
         "g.docker.", "A", ["10.0.0.1", "10.0.0.3"]),
        # The apex: NS from ns.dns keys (address hosts only), A from apex.dns keys.
        ({"/skydns/docker/dns/ns/a": '{"host": "10.0.0.53"}',
          "/skydns/docker/dns/ns/b": '{"host": "ns.example.org"}'},
         "docker.", "NS", ["a.ns.dns.docker."]),
        # targetstrip names the nameserver (as CoreDNS): one NS, both addresses at its name.
        ({"/skydns/docker/dns/ns/c/ns1": '{"host": "10.0.0.53", "targetstrip": 1}',
          "/skydns/docker/dns/ns/c/ns2": '{"host": "10.0.0.54", "targetstrip": 1}'},
         "docker.", "NS", ["c.ns.dns.docker."]),
        ({"/skydns/docker/dns/ns/c/ns1": '{"host": "10.0.0.53", "targetstrip": 1}',
          "/skydns/docker/dns/ns/c/ns2": '{"host": "10.0.0.54", "targetstrip": 1}'},
         "c.ns.dns.docker.", "A", ["10.0.0.53", "10.0.0.54"]),
        ({"/skydns/docker/dns/apex/x": '{"host": "10.0.0.80"}',
          "/skydns/docker/other": '{"host": "10.0.0.81"}'}, "docker.", "A", ["10.0.0.80"]),
        # Explicit PTR keys.
        ({"/skydns/arpa/in-addr/10/0/0/7": '{"host": "seven.docker"}'},
         "7.0.0.10.in-addr.arpa.", "PTR", ["seven.docker."]),
        # dnsd's own keys (dnsd_node): the name without the instance label, nothing more.
        ({"/skydns/docker/web/hosta-1": '{"host": "10.0.0.1", "targetstrip": 1, '
                                        '"dnsd_node": "hosta"}'}, "web.docker.", "A", ["10.0.0.1"]),
        ({"/skydns/docker/web/hosta-1": '{"host": "10.0.0.1", "targetstrip": 1, '
                                        '"dnsd_node": "hosta"}'}, "hosta-1.web.docker.", "A", []),
        ({"/skydns/docker/web/hosta-1": '{"host": "10.0.0.1", "targetstrip": 1, '
                                        '"dnsd_node": "hosta"}'}, "web.docker.", "SRV", []),
        ({"/skydns/docker/shop/api/hosta-1": '{"host": "10.0.0.1", "dnsd_node": "hosta"}'},
         "shop.docker.", "A", []),
        ({"/skydns/docker/web/*/hosta-1": '{"host": "10.0.0.1", "dnsd_node": "hosta"}'},
         "*.web.docker.", "A", ["10.0.0.1"]),
        ({"/skydns/docker/web/_tcp/_http/hosta-1": '{"host": "web.docker", "port": 80, '
                                                   '"weight": 10, "dnsd_node": "hosta"}',
          "/skydns/docker/web/_tcp/_http/hostb-2": '{"host": "web2.docker", "port": 80, '
                                                   '"weight": 30, "dnsd_node": "hostb"}'},
         "_http._tcp.web.docker.", "SRV", ["10 10 80 web.docker.", "10 30 80 web2.docker."]),
        ({"/skydns/docker/web/_tcp/_http/hosta-1": '{"host": "web.docker", "port": 80, '
                                                   '"dnsd_node": "hosta"}'},
         "_http._tcp.web.docker.", "CNAME", []),
        # Refused: outside the zones, a PTR pointing outside, a wildcard key, malformed values.
        ({"/skydns/com/example/www": '{"host": "6.6.6.6"}'}, "www.example.com.", "A", []),
        ({"/skydns/arpa/in-addr/6/6/6/6": '{"host": "evil.example"}'},
         "6.6.6.6.in-addr.arpa.", "PTR", []),
        ({"/skydns/docker/w/*": '{"host": "10.0.0.9"}'}, "*.w.docker.", "A", []),
        ({"/skydns/docker/bad/p": '{"host": "10.0.0.1", "port": "80"}',
          "/skydns/docker/bad/ok": '{"host": "10.0.0.2"}'}, "bad.docker.", "A", ["10.0.0.2"]),
    ],
)  # fmt: skip
def test_keys_to_served_records(
    keys: dict[str, str], name: str, rtype: str, served: list[str]
) -> None:
    _, store = _mirror(keys)
    assert _served(store, name, rtype) == served


@pytest.mark.parametrize(
    ("pattern", "rtype", "values"),
    [
        ("*.region.docker.", "A", ["10.1.0.1", "10.1.0.2", "10.2.0.1"]),
        ("prod.*.docker.", "A", ["10.1.0.1", "10.1.0.2"]),
        ("any.prod.region.docker.", "A", ["10.1.0.1", "10.1.0.2"]),
        ("*.nowhere.docker.", "A", []),
        ("*.region.docker.", "SRV", ["10 33 80 a.prod.region.docker.",
                                     "10 33 80 b.prod.region.docker.",
                                     "10 33 80 c.dev.region.docker."]),
    ],
)  # fmt: skip
def test_wildcards_answer_as_one_name(pattern: str, rtype: str, values: list[str]) -> None:
    mirror, _ = _mirror(
        {
            "/skydns/docker/region/prod/a": '{"host": "10.1.0.1", "port": 80}',
            "/skydns/docker/region/prod/b": '{"host": "10.1.0.2", "port": 80}',
            "/skydns/docker/region/dev/c": '{"host": "10.2.0.1", "port": 80}',
            "/skydns/docker/prod": '{"host": "10.9.9.9"}',  # one label too short for prod.*
        }
    )
    records = mirror.wildcard(pattern, rtype)
    if rtype == "SRV":
        got = sorted(" ".join(str(p) for p in r.value[:4]) for r in srv_weights(records))  # type: ignore[index]
    else:
        got = sorted(str(r.value) for r in records)
    assert got == values


def test_changes_apply_in_revision_order() -> None:
    mirror, store = _mirror({"/skydns/docker/web/x1": '{"host": "10.0.0.1"}'})
    mirror.apply(
        [
            ("/skydns/docker/web/x2", b'{"host": "10.0.0.2"}', 0),
            ("/skydns/docker/web/x1", None, 0),  # a delete
            ("/skydns/docker/web/x2", b'{"host": "10.0.0.3"}', 0),  # a later value wins
        ]
    )
    assert _served(store, "web.docker.", "A") == ["10.0.0.3"]
    assert _served(store, "x1.web.docker.", "A") == []
