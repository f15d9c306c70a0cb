"""The static source: hosts-file and config-record parsing, relative names."""

from __future__ import annotations

import pytest

from dnsd.config import ConfigError
from dnsd.records import MxValue, SrvValue
from dnsd.sources.static import Names, config_records, parse_hosts

NAMES = Names(["docker.", "svc.local."])


def test_relative_names_belong_to_the_first_zone() -> None:
    assert NAMES.absolute("web") == "web.docker."
    assert NAMES.absolute("Web.Docker") == "web.docker."
    assert NAMES.absolute("db.svc.local") == "db.svc.local."
    assert NAMES.absolute("example.com.") == "example.com."
    for bad in ("", "a..b", "x" * 64, "sp ace", "a/b"):
        with pytest.raises(ValueError):
            NAMES.absolute(bad)


def test_hosts_lines() -> None:
    text = "# comment\n10.0.0.1 web web-1  # trailing\n\nfd00::1 web\nbad\n300.1.1.1 x\n"
    records, errors = parse_hosts(text, "h", NAMES, 5)
    assert {(r.name, r.rtype, r.value) for r in records} == {
        ("web.docker.", "A", "10.0.0.1"),
        ("web-1.docker.", "A", "10.0.0.1"),
        ("web.docker.", "AAAA", "fd00::1"),
    }
    assert [e.split(":")[1] for e in errors] == ["5", "6"]


def test_config_records_every_type() -> None:
    specs = [
        {"name": "a", "type": "A", "value": "10.0.0.1", "ttl": 60},
        {"name": "a", "type": "aaaa", "value": "fd00::1"},
        {"name": "c", "type": "CNAME", "value": "a"},
        {"name": "_x._tcp.a", "type": "SRV", "value": "1 2 3 a"},
        {"name": "t", "type": "TXT", "value": ["one", "two"]},
        {"name": "docker.", "type": "MX", "value": "10 mail"},
        {"name": "1.0.0.10.in-addr.arpa.", "type": "PTR", "value": "a"},
    ]
    records = config_records(specs, NAMES, 5)
    assert records[0].ttl == 60 and records[1].ttl == 5
    assert records[2].value == "a.docker."
    assert records[3].value == SrvValue(1, 2, 3, "a.docker.")
    assert records[4].value == ("one", "two")
    assert records[5].value == MxValue(10, "mail.docker.")
    assert records[6].name == "1.0.0.10.in-addr.arpa."


@pytest.mark.parametrize(
    "spec",
    [
        {"name": "a", "type": "A", "value": "fd00::1"},
        {"name": "a", "type": "AAAA", "value": "10.0.0.1"},
        {"name": "a", "type": "SRV", "value": "1 2 x a"},
        {"name": "a", "type": "SRV", "value": "1 2 70000 a"},
        {"name": "a", "type": "MX", "value": "mail"},
        {"name": "a", "type": "HINFO", "value": "x"},
        {"name": "a", "type": "A", "value": "10.0.0.1", "ttl": -1},
        {"name": "a", "type": "A", "value": "10.0.0.1", "tll": 5},
        {"name": "a", "type": "A"},
        {"name": "a", "type": "TXT", "value": "x" * 300},
    ],
)
def test_bad_config_records_are_named(spec: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match=r"static.records\[0\]"):
        config_records([spec], NAMES, 5)
