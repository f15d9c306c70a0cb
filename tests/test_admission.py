"""Admission: DNS limits and zone confinement for every record a source offers."""

from __future__ import annotations

import pytest

from dnsd.admission import Admission, name_problem
from dnsd.record import MxValue, Record, SrvValue

RULES = Admission(["docker.", "svc.local."])


@pytest.mark.parametrize(
    ("name", "ok"),
    [("web.docker.", True), ("_http._tcp.web.docker.", True), ("*.web.docker.", True),
     ("a" * 63 + ".docker.", True), ("a" * 64 + ".docker.", False),
     ("a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 61 + ".", True),  # 255 on the wire
     ("a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 62 + ".", False),  # 256
     ("we b.docker.", False), ("web.docker", False),
     ("w*b.docker.", False), ("web..docker.", False), ("wéb.docker.", False)],
)  # fmt: skip
def test_name_limits(name: str, ok: bool) -> None:
    assert (name_problem(name) is None) == ok


@pytest.mark.parametrize(
    ("source", "record", "why"),
    [
        ("etcd", Record("www.example.com.", "A", "6.6.6.6", 5), "outside the zones"),
        ("docker", Record("docker.", "A", "6.6.6.6", 5), None),
        ("etcd", Record("6.6.6.6.in-addr.arpa.", "PTR", "evil.example.com.", 5), "PTR pointing"),
        ("etcd", Record("9.9.9.10.in-addr.arpa.", "PTR", "web.docker.", 5), None),
        (
            "etcd",
            Record("x.docker.", "SRV", SrvValue(1, 1, 80, "b" * 64 + ".docker."), 5),
            "target",
        ),
        ("etcd", Record("x.docker.", "MX", MxValue(1, "mail.example.com."), 5), None),
        ("etcd", Record("x.docker.", "TXT", ("a" * 255,) * 15, 5), None),
        ("etcd", Record("x.docker.", "TXT", ("a" * 255,) * 16, 5), "TXT record longer"),
        ("etcd", Record("x.docker.", "TXT", ("a" * 256,), 5), "TXT string longer"),
        ("static", Record("www.example.com.", "A", "6.6.6.6", 5), "outside the zones"),
    ],
)
def test_admission_table(source: str, record: Record, why: str | None) -> None:
    problem = RULES.problem(source, record)
    assert (problem is None) if why is None else (problem is not None and why in problem)


def test_outside_sources_may_leave_the_zones_but_not_the_limits() -> None:
    rules = Admission(["docker."], ["static"])
    assert rules.problem("static", Record("www.example.com.", "A", "6.6.6.6", 5)) is None
    assert rules.problem("static", Record("a" * 64 + ".com.", "A", "6.6.6.6", 5)) is not None
    assert rules.problem("etcd", Record("www.example.com.", "A", "6.6.6.6", 5)) is not None
