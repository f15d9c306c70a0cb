"""A running dnsd process queried over real sockets with dnspython and dig."""

from __future__ import annotations

import shutil
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.rdatatype
import dns.reversename
import pytest
from conftest import Dnsd, eventually, free_port, query, rcode, start_dnsd

from dnsd.wire.codec import opt_well_formed

ZONE_CONFIG = """
[server]
zones = ["docker.", "svc.local."]
negative_ttl = 7

[static]
hosts = ["hosts"]
watch_interval = 0.2

[[static.records]]
name = "api"
type = "A"
value = "10.0.0.20"
ttl = 30

[[static.records]]
name = "www"
type = "CNAME"
value = "web"

[[static.records]]
name = "loop1"
type = "CNAME"
value = "loop2"

[[static.records]]
name = "loop2"
type = "CNAME"
value = "loop1"

[[static.records]]
name = "_http._tcp.web"
type = "SRV"
value = "10 50 80 web"

[[static.records]]
name = "web"
type = "TXT"
value = "hello"
"""

HOSTS = """
10.0.0.10 web
10.0.0.11 web
10.0.0.12 web
fd00::10 web
10.0.1.1 db.svc.local
"""


@pytest.fixture
def zone_dnsd(tmp_path: Path, dnsd_factory) -> Dnsd:  # type: ignore[no-untyped-def]
    (tmp_path / "hosts").write_text(HOSTS)
    return dnsd_factory("--no-forward", config=ZONE_CONFIG)


def addresses(message: dns.message.Message) -> list[str]:
    return [item.to_text() for rrset in message.answer for item in rrset]


def test_a_aaaa_and_relative_names(zone_dnsd: Dnsd) -> None:
    reply = query(zone_dnsd.port, "web.docker", "A")
    assert rcode(reply) == "NOERROR"
    assert reply.flags & dns.flags.AA
    assert sorted(addresses(reply)) == ["10.0.0.10", "10.0.0.11", "10.0.0.12"]
    assert addresses(query(zone_dnsd.port, "web.docker", "AAAA")) == ["fd00::10"]
    assert addresses(query(zone_dnsd.port, "db.svc.local", "A")) == ["10.0.1.1"]
    assert reply.answer[0].ttl == 5  # the default TTL


def test_tcp_answers_the_same(zone_dnsd: Dnsd) -> None:
    reply = query(zone_dnsd.port, "api.docker", "A", tcp=True)
    assert addresses(reply) == ["10.0.0.20"]
    assert reply.answer[0].ttl == 30


def test_several_queries_on_one_tcp_connection(zone_dnsd: Dnsd) -> None:
    with socket.create_connection(("127.0.0.1", zone_dnsd.port), timeout=2) as conn:
        for ident, name in enumerate(["web.docker", "api.docker", "nope.docker"], 1):
            message = dns.message.make_query(name, "A")
            message.id = ident
            wire = message.to_wire()
            conn.sendall(struct.pack("!H", len(wire)) + wire)
        replies = {}
        for _ in range(3):
            (length,) = struct.unpack("!H", _recv_exact(conn, 2))
            reply = dns.message.from_wire(_recv_exact(conn, length))
            replies[reply.id] = reply
    assert rcode(replies[3]) == "NXDOMAIN"
    assert addresses(replies[2]) == ["10.0.0.20"]


def test_pipelined_tcp_questions_are_answered_from_the_packed_answer_cache(
    zone_dnsd: Dnsd,
) -> None:
    """A batch of pipelined TCP questions whose answers are cached is answered from the
    packed answers (counted as such), each with its own ID and letter case; a name first asked
    over TCP is cached too; an answer truncated for UDP is never served over TCP."""
    port = zone_dnsd.port
    names = ["web.docker", "api.docker", "nope.docker", "WeB.DoCkEr"]
    for name in names[:3]:
        query(port, name, "A", tcp=True)  # misses, over TCP only: cached from here on
    resolved = zone_dnsd.metric_total("dnsd_queries_total", transport="tcp", path="resolver")
    assert resolved == 3
    batch = 200
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        wires = b""
        for ident in range(batch):
            message = dns.message.make_query(names[ident % len(names)], "A")
            message.id = ident
            wire = message.to_wire()
            wires += struct.pack("!H", len(wire)) + wire
        conn.sendall(wires)  # one write: the server reads them in one go
        replies = {}
        for _ in range(batch):
            (length,) = struct.unpack("!H", _recv_exact(conn, 2))
            reply = dns.message.from_wire(_recv_exact(conn, length))
            replies[reply.id] = reply
    assert sorted(replies) == list(range(batch))
    for ident, reply in replies.items():
        name = names[ident % len(names)]
        assert reply.question[0].name.to_text() == name + "."  # the asker's letter case
        if name.lower() == "web.docker":
            assert sorted(addresses(reply)) == ["10.0.0.10", "10.0.0.11", "10.0.0.12"]
        elif name == "api.docker":
            assert addresses(reply) == ["10.0.0.20"]
        else:
            assert rcode(reply) == "NXDOMAIN"
    cached = zone_dnsd.metric_total("dnsd_queries_total", transport="tcp", path="cache")
    assert cached == batch
    assert zone_dnsd.metric_total("dnsd_queries_total", transport="tcp", path="resolver") == 3


def _recv_exact(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        assert chunk, "connection closed"
        data += chunk
    return data


def test_rotation_between_queries(zone_dnsd: Dnsd) -> None:
    firsts = {addresses(query(zone_dnsd.port, "web.docker"))[0] for _ in range(6)}
    assert len(firsts) == 3


def test_nxdomain_and_nodata_carry_the_soa(zone_dnsd: Dnsd) -> None:
    missing = query(zone_dnsd.port, "nope.docker", "A")
    assert rcode(missing) == "NXDOMAIN"
    assert missing.authority[0].rdtype == dns.rdatatype.SOA
    assert missing.authority[0].ttl == 7
    assert missing.authority[0][0].minimum == 7
    nodata = query(zone_dnsd.port, "api.docker", "MX")
    assert rcode(nodata) == "NOERROR" and not nodata.answer
    assert nodata.authority[0].rdtype == dns.rdatatype.SOA
    # An empty non-terminal (parent of _http._tcp.web) exists: NODATA, not NXDOMAIN.
    assert rcode(query(zone_dnsd.port, "_tcp.web.docker", "A")) == "NOERROR"


def test_apex_soa_and_ns(zone_dnsd: Dnsd) -> None:
    soa = query(zone_dnsd.port, "docker", "SOA")
    assert soa.answer[0][0].mname.to_text() == "ns.dns.docker."  # as CoreDNS/SkyDNS name it
    assert soa.answer[0][0].rname.to_text() == "hostmaster.docker."
    ns = query(zone_dnsd.port, "svc.local", "NS")
    assert addresses(ns) == ["ns.dns.svc.local."]


def test_names_in_zone_are_never_forwarded(zone_dnsd: Dnsd) -> None:
    assert rcode(query(zone_dnsd.port, "deep.unknown.docker", "A")) == "NXDOMAIN"
    assert rcode(query(zone_dnsd.port, "example.com", "A")) == "REFUSED"  # --no-forward


def test_ptr_for_every_address(zone_dnsd: Dnsd) -> None:
    assert addresses(query(zone_dnsd.port, "11.0.0.10.in-addr.arpa", "PTR")) == ["web.docker."]
    six = query(zone_dnsd.port, dns.reversename.from_address("fd00::10").to_text(), "PTR")
    assert addresses(six) == ["web.docker."]


def test_cname_chase_and_loop(zone_dnsd: Dnsd) -> None:
    reply = query(zone_dnsd.port, "www.docker", "A")
    assert [rrset.rdtype for rrset in reply.answer] == [dns.rdatatype.CNAME, dns.rdatatype.A]
    assert len(addresses(reply)) == 4
    looped = query(zone_dnsd.port, "loop1.docker", "A")
    assert rcode(looped) == "NOERROR"
    assert all(rrset.rdtype == dns.rdatatype.CNAME for rrset in looped.answer)


def test_srv_with_addresses_in_additional(zone_dnsd: Dnsd) -> None:
    reply = query(zone_dnsd.port, "_http._tcp.web.docker", "SRV")
    srv = reply.answer[0][0]
    assert (srv.priority, srv.weight, srv.port, srv.target.to_text()) == (10, 50, 80, "web.docker.")
    extra = sorted(item.to_text() for rrset in reply.additional for item in rrset)
    assert extra == ["10.0.0.10", "10.0.0.11", "10.0.0.12", "fd00::10"]


def test_case_is_echoed_on_every_path(zone_dnsd: Dnsd) -> None:
    for _ in range(3):  # first: slow path, then packed-answer cache hits
        reply = query(zone_dnsd.port, "WeB.DoCKer", "A")
        assert reply.question[0].name.to_text() == "WeB.DoCKer."
        assert reply.answer[0].name.to_text() == "WeB.DoCKer."
    lower = query(zone_dnsd.port, "web.docker", "A")
    assert lower.question[0].name.to_text() == "web.docker."


def test_any_gets_a_minimal_answer(zone_dnsd: Dnsd) -> None:
    reply = query(zone_dnsd.port, "web.docker", "ANY")
    assert [rrset.rdtype for rrset in reply.answer] == [dns.rdatatype.HINFO]
    assert rcode(query(zone_dnsd.port, "nope.docker", "ANY")) == "NXDOMAIN"


def test_edns_is_echoed_and_size_honoured(zone_dnsd: Dnsd) -> None:
    reply = query(zone_dnsd.port, "web.docker", "A", use_edns=0, payload=4096)
    assert reply.edns == 0
    assert reply.payload == 1232  # capped
    plain = query(zone_dnsd.port, "web.docker", "A")
    assert plain.edns == -1


def test_badvers(zone_dnsd: Dnsd) -> None:
    reply = query(zone_dnsd.port, "web.docker", "A", use_edns=1)
    assert reply.rcode() == 16  # BADVERS


@pytest.mark.parametrize("tcp", [False, True])
def test_a_cookie_of_a_wrong_length_is_formerr_on_every_path(zone_dnsd: Dnsd, tcp: bool) -> None:
    """RFC 7873 5.2.2: a COOKIE option that is not 8 or 16-40 bytes is FORMERR, also when the
    answer to the same question is in the packed-answer cache (hot path, mixed case)."""

    def asked(name: str, cookie: bytes) -> dns.message.Message:
        option = dns.edns.GenericOption(dns.edns.OptionType.COOKIE, cookie)
        return query(zone_dnsd.port, name, "A", tcp=tcp, use_edns=0, options=[option])

    for _ in range(3):  # well-formed: answered, then cached (client cookie, then both)
        assert rcode(asked("web.docker", b"c" * 8)) == "NOERROR"
        assert rcode(asked("web.docker", b"c" * 24)) == "NOERROR"
    for length in (0, 5, 9, 15, 41):
        for name in ("web.docker", "WeB.dOcKeR", f"new{length}.docker"):
            assert rcode(asked(name, b"c" * length)) == "FORMERR", (name, length)
    assert rcode(asked("WEB.docker", b"c" * 8)) == "NOERROR"


def test_opt_rdata_is_checked_option_by_option() -> None:
    opt = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00"  # after the question: OPT, no RDATA yet

    def packet(rdata: bytes) -> bytes:
        return b"Q" * 17 + opt + len(rdata).to_bytes(2, "big") + rdata

    cookie = b"\x00\x0a\x00\x08" + b"c" * 8
    padding = b"\x00\x0c\x00\x03" + b"\x00" * 3
    assert opt_well_formed(packet(b""), 17)
    assert opt_well_formed(packet(cookie + padding), 17)
    assert not opt_well_formed(packet(cookie[:-1]), 17)  # the option runs past the RDATA
    assert not opt_well_formed(packet(b"\x00\x0a\x00\x05" + b"c" * 5), 17)
    assert not opt_well_formed(packet(b"\x00\x0c\x00"), 17)  # half an option header
    assert not opt_well_formed(packet(cookie)[:-1], 17)  # RDLEN says more than there is


def test_notimp_for_other_opcodes(zone_dnsd: Dnsd) -> None:
    message = dns.message.make_query("web.docker", "A")
    message.set_opcode(dns.opcode.NOTIFY)
    reply = dns.query.udp(message, "127.0.0.1", port=zone_dnsd.port, timeout=2)
    assert rcode(reply) == "NOTIMP"


def test_formerr_for_two_questions_and_garbage(zone_dnsd: Dnsd) -> None:
    header = struct.pack("!HHHHHH", 0x1234, 0x0100, 2, 0, 0, 0)
    question = b"\x03web\x06docker\x00\x00\x01\x00\x01"
    reply = _raw_udp(zone_dnsd.port, header + question * 2)
    assert reply[:2] == b"\x12\x34" and reply[3] & 0x0F == 1  # FORMERR
    garbage = struct.pack("!HHHHHH", 0x4321, 0x0100, 1, 0, 0, 0) + b"\x3fabc"
    reply = _raw_udp(zone_dnsd.port, garbage)
    assert reply[:2] == b"\x43\x21" and reply[3] & 0x0F == 1
    with pytest.raises(TimeoutError):
        _raw_udp(zone_dnsd.port, b"\x01\x02\x03", timeout=0.3)  # no header: dropped


def _raw_udp(port: int, packet: bytes, timeout: float = 2.0) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(packet, ("127.0.0.1", port))
        try:
            return sock.recv(65535)
        except TimeoutError:
            raise
        except OSError as exc:  # socket.timeout is TimeoutError on 3.11
            raise TimeoutError from exc


def _srv_targets(tmp_path: Path, dnsd_factory, name: str, target: str, count: int) -> Dnsd:  # type: ignore[no-untyped-def]
    """A dnsd whose ``_db._tcp.<name>.docker`` has ``count`` SRV records, each target
    (``<target><i>``) with an address of its own."""
    lines = [f"10.1.{i // 250}.{i % 250 + 1} {target}{i}" for i in range(count)]
    (tmp_path / "hosts").write_text("\n".join(lines))
    records = "".join(
        f'[[static.records]]\nname = "_db._tcp.{name}"\ntype = "SRV"\n'
        f'value = "10 10 {5000 + i} {target}{i}"\n'
        for i in range(count)
    )
    return dnsd_factory("--no-forward", config=f'[static]\nhosts = ["hosts"]\n{records}')  # type: ignore[no-any-return]


def test_tcp_never_gets_an_answer_cut_to_fit_udp(tmp_path: Path, dnsd_factory) -> None:  # type: ignore[no-untyped-def]
    """SRV records that fit 512 bytes without their targets' addresses: UDP gets them without
    the additional section (no TC, RFC 2181 9) and caches that; TCP askers, first or later,
    get every address."""
    dnsd = _srv_targets(tmp_path, dnsd_factory, "mid", "t", 14)
    for _ in range(2):
        small = query(dnsd.port, "_db._tcp.mid.docker", "SRV")
        assert not small.flags & dns.flags.TC and len(small.answer[0]) == 14
        assert sum(len(rrset) for rrset in small.additional) < 14  # cut to fit
    for _ in range(3):
        full = query(dnsd.port, "_db._tcp.mid.docker", "SRV", tcp=True)
        assert len(full.answer[0]) == 14
        assert sum(len(rrset) for rrset in full.additional) == 14
    assert dnsd.metric_total("dnsd_queries_total", transport="tcp", path="cache") == 0
    assert dnsd.metric_total("dnsd_queries_total", transport="udp", path="cache") == 1


def test_big_answer_truncated_then_full_over_tcp(tmp_path: Path, dnsd_factory) -> None:  # type: ignore[no-untyped-def]
    dnsd = _srv_targets(tmp_path, dnsd_factory, "big", "host", 60)
    small = query(dnsd.port, "_db._tcp.big.docker", "SRV")
    assert small.flags & dns.flags.TC and 0 < len(small.answer[0]) < 60  # whole records that fit
    full = query(dnsd.port, "_db._tcp.big.docker", "SRV", tcp=True)
    assert len(full.answer[0]) == 60
    assert sum(len(rrset) for rrset in full.additional) == 60  # each target's address
    if shutil.which("dig"):
        out = subprocess.run(
            [
                "dig",
                "@127.0.0.1",
                "-p",
                str(dnsd.port),
                "+bufsize=512",
                "+noall",
                "+answer",
                "_db._tcp.big.docker",
                "SRV",
            ],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
        assert out.count("SRV") == 60  # dig saw TC=1 and retried over TCP
        notrunc = subprocess.run(
            [
                "dig",
                "@127.0.0.1",
                "-p",
                str(dnsd.port),
                "+bufsize=512",
                "+ignore",
                "+comments",
                "_db._tcp.big.docker",
                "SRV",
            ],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
        assert " tc" in notrunc.split("flags:")[1].split(";")[0]


def test_dig_answers(zone_dnsd: Dnsd) -> None:
    dig = shutil.which("dig")
    assert dig, "bind9-dnsutils (dig) must be installed"

    def run(*args: str) -> str:
        result = subprocess.run(
            [dig, "@127.0.0.1", "-p", str(zone_dnsd.port), "+short", *args],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return result.stdout

    assert sorted(run("web.docker").split()) == ["10.0.0.10", "10.0.0.11", "10.0.0.12"]
    assert run("+tcp", "api.docker").split() == ["10.0.0.20"]
    assert run("-x", "10.0.0.20").split() == ["api.docker."]
    assert run("web.docker", "TXT").split() == ['"hello"']
    assert run("_http._tcp.web.docker", "SRV").split() == ["10", "50", "80", "web.docker."]


def test_sighup_and_file_change_reload(tmp_path: Path, dnsd_factory) -> None:  # type: ignore[no-untyped-def]
    hosts = tmp_path / "hosts"
    hosts.write_text("10.0.0.1 one\n")
    dnsd = dnsd_factory("--no-forward", config='[static]\nhosts = ["hosts"]\nwatch_interval = 0\n')
    # Beside it, a dnsd polling the same file: by the time that one has seen the change,
    # the one with polling off has not (counted reloads, not a wall-clock wait).
    polling = dnsd_factory(
        "--no-forward", config=f'[static]\nhosts = ["{hosts}"]\nwatch_interval = 0.05\n'
    )
    assert addresses(query(dnsd.port, "one.docker")) == ["10.0.0.1"]
    hosts.write_text("10.0.0.4 one\n")
    eventually(lambda: addresses(query(polling.port, "one.docker")) == ["10.0.0.4"])
    hosts.write_text("10.0.0.2 one\n10.0.0.3 two\n")  # a second change, seen by polling too
    eventually(lambda: addresses(query(polling.port, "one.docker")) == ["10.0.0.2"])
    assert polling.metric("dnsd_reloads_total") == 2
    assert addresses(query(dnsd.port, "one.docker")) == ["10.0.0.1"]  # polling is off
    assert dnsd.metric("dnsd_reloads_total") == 0
    dnsd.proc.send_signal(signal.SIGHUP)
    eventually(lambda: addresses(query(dnsd.port, "one.docker")) == ["10.0.0.2"])
    assert addresses(query(dnsd.port, "two.docker")) == ["10.0.0.3"]


def test_file_change_reload_and_bad_file_keeps_records(tmp_path: Path, dnsd_factory) -> None:  # type: ignore[no-untyped-def]
    hosts = tmp_path / "hosts"
    hosts.write_text("10.0.0.1 one\n")
    config = '[static]\nhosts = ["hosts"]\nwatch_interval = 0.1\n'
    dnsd = dnsd_factory("--no-forward", config=config)
    assert addresses(query(dnsd.port, "one.docker")) == ["10.0.0.1"]
    hosts.write_text("10.0.0.9 one\n")
    eventually(lambda: addresses(query(dnsd.port, "one.docker")) == ["10.0.0.9"])
    # A broken config file: the reload fails, the last good records stay.
    config_path = next(tmp_path.glob("dnsd-*.toml"))
    config_path.write_text(config + "[[static.records]]\nname = 'x'\ntype = 'A'\nvalue = 'bad'\n")
    eventually(lambda: "reload failed" in dnsd.log())
    assert addresses(query(dnsd.port, "one.docker")) == ["10.0.0.9"]
    # Queries keep flowing while the file is rewritten many times.
    for i in range(20):
        hosts.write_text(f"10.0.1.{i} one\n")
        assert rcode(query(dnsd.port, "one.docker")) == "NOERROR"
        time.sleep(0.02)
    assert dnsd.proc.poll() is None


def test_sigterm_drains_and_exits_zero_quickly(zone_dnsd: Dnsd) -> None:
    with socket.create_connection(("127.0.0.1", zone_dnsd.port)):  # an idle TCP client
        query(zone_dnsd.port, "web.docker")
        zone_dnsd.proc.send_signal(signal.SIGTERM)
        code = zone_dnsd.proc.wait(10)
    assert code == 0
    # An orderly stop (the idle client was not waited for): not the deadline's forced exit.
    assert "stopped" in zone_dnsd.log() and "exiting now" not in zone_dnsd.log()


def test_busy_port_is_a_clear_error(tmp_path: Path) -> None:
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", port))
        dnsd = start_dnsd(tmp_path, "--no-forward", port=port, wait=False)
        code = dnsd.proc.wait(10)
    assert code == 2
    assert "address already in use" in dnsd.log()
    assert f"127.0.0.1:{port}" in dnsd.log()


def test_ipv6_listen(tmp_path: Path, dnsd_factory) -> None:  # type: ignore[no-untyped-def]
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    port = free_port()
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", port))
    except OSError:
        pytest.skip("::1 not available")
    (tmp_path / "hosts").write_text("10.0.0.1 one\n")
    dnsd = dnsd_factory(
        "--no-forward", "--listen", f"[::1]:{port}", config='[static]\nhosts = ["hosts"]\n'
    )
    message = dns.message.make_query("one.docker", "A")
    assert addresses(dns.query.udp(message, "::1", port=port, timeout=2)) == ["10.0.0.1"]
    assert addresses(dns.query.tcp(message, "::1", port=port, timeout=2)) == ["10.0.0.1"]
    assert addresses(query(dnsd.port, "one.docker")) == ["10.0.0.1"]


def test_tcp_idle_timeout_and_connection_limit(tmp_path: Path, dnsd_factory) -> None:  # type: ignore[no-untyped-def]
    """Every slot taken by idle connections: a new one takes the slot of one of them; the
    idle timeout closes the rest."""
    config = "[server]\ntcp_idle_timeout = 0.5\ntcp_max_connections = 2\n"
    dnsd = dnsd_factory("--no-forward", config=config)
    held = [socket.create_connection(("127.0.0.1", dnsd.port), timeout=3) for _ in range(2)]
    eventually(lambda: dnsd.metric("dnsd_tcp_connections_total") == 2)  # both accepted
    assert rcode(query(dnsd.port, "x.docker", "A", tcp=True)) == "NXDOMAIN"  # a third: served
    assert dnsd.metric("dnsd_tcp_idle_closed_total") == 1
    for conn in held:
        conn.settimeout(8)  # generous: the idle timeout is 0.5 s
        assert conn.recv(10) == b""  # closed for the third, or idle too long
        conn.close()
    assert rcode(query(dnsd.port, "x.docker", "A", tcp=True)) == "NXDOMAIN"  # slots free again


def test_json_logs(dnsd_factory) -> None:  # type: ignore[no-untyped-def]
    dnsd = dnsd_factory("--no-forward", "--log-format", "json")
    import json

    lines = [json.loads(line) for line in dnsd.log().splitlines() if line.strip()]
    listening = [line for line in lines if "listening on" in line["message"]]
    assert listening and {"time", "level", "logger", "message"} <= set(listening[0])
    assert listening[0]["event"] == "listening"
    loaded = next(line for line in lines if line.get("event") == "static_loaded")
    assert loaded["source"] == "static" and loaded["level"] == "INFO"
    assert "name" not in listening[0]  # "name" is for DNS names, never the logger's


def test_json_log_name_is_the_dns_name() -> None:
    import json
    import logging

    from dnsd.logs import JsonFormatter

    record = logging.LogRecord("dnsd.records", logging.WARNING, __file__, 1, "refused", (), None)
    record.dns_name = "www.example.com."
    line = json.loads(JsonFormatter().format(record))
    assert line["name"] == "www.example.com." and line["logger"] == "dnsd.records"


def test_udp_answer_that_does_not_fit_keeps_whole_records(tmp_path: Path, dnsd_factory) -> None:  # type: ignore[no-untyped-def]
    hosts = tmp_path / "many"
    hosts.write_text("".join(f"10.7.0.{i} many\n" for i in range(1, 61)))
    srv = "".join(
        f'[[static.records]]\nname = "_x._tcp.many"\ntype = "SRV"\nvalue = "10 10 80 t{i}"\n'
        for i in range(12)
    )
    targets = "".join(f"10.8.0.{i} t{i}\n" for i in range(12))
    (tmp_path / "targets").write_text(targets)
    config = f'[static]\nhosts = ["{hosts}", "{tmp_path / "targets"}"]\n' + srv
    dnsd = dnsd_factory("--no-forward", config=config)
    message = dns.message.make_query("many.docker", "A")
    plain = dns.query.udp(
        message, "127.0.0.1", port=dnsd.port, timeout=2, raise_on_truncation=False
    )
    assert plain.flags & dns.flags.TC
    kept = [r.to_text() for rrset in plain.answer for r in rrset]
    assert 20 <= len(kept) < 60 and len(set(kept)) == len(kept)  # whole records, no repeats
    assert len(plain.to_wire()) <= 512
    with_edns = query(dnsd.port, "many.docker", "A", use_edns=0, payload=1232)
    assert not with_edns.flags & dns.flags.TC and len(with_edns.answer[0]) == 60
    tcp = query(dnsd.port, "many.docker", "A", tcp=True)
    assert len(tcp.answer[0]) == 60
    # An SRV answer too big with its additional addresses drops them first, without TC.
    srv_reply = dns.message.make_query("_x._tcp.many.docker", "SRV")
    got = dns.query.udp(
        srv_reply, "127.0.0.1", port=dnsd.port, timeout=2, raise_on_truncation=False
    )
    assert len(got.answer[0]) == 12
    assert not got.flags & dns.flags.TC and not got.additional
    truncated_edns = query(dnsd.port, "many.docker", "A", use_edns=0, payload=512)
    assert truncated_edns.flags & dns.flags.TC and truncated_edns.edns == 0  # OPT kept


def test_explicit_ptr_wins_over_the_automatic_one(tmp_path: Path, dnsd_factory) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "hosts").write_text("10.0.5.1 auto\n10.0.5.2 other\n")
    config = (
        '[static]\nhosts = ["hosts"]\n'
        '[[static.records]]\nname = "1.5.0.10.in-addr.arpa."\ntype = "PTR"\nvalue = "named"\n'
    )
    dnsd = dnsd_factory("--no-forward", config=config)
    assert addresses(query(dnsd.port, "1.5.0.10.in-addr.arpa", "PTR")) == ["named.docker."]
    assert addresses(query(dnsd.port, "2.5.0.10.in-addr.arpa", "PTR")) == ["other.docker."]


def test_srv_target_that_is_a_cname_brings_its_chain(tmp_path: Path, dnsd_factory) -> None:  # type: ignore[no-untyped-def]
    config = (
        '[[static.records]]\nname = "_x._tcp.svc"\ntype = "SRV"\nvalue = "10 10 80 alias"\n'
        '[[static.records]]\nname = "alias"\ntype = "CNAME"\nvalue = "real"\n'
        '[[static.records]]\nname = "real"\ntype = "A"\nvalue = "10.0.9.1"\n'
        '[[static.records]]\nname = "_y._tcp.svc"\ntype = "SRV"\nvalue = "10 10 80 away"\n'
        '[[static.records]]\nname = "away"\ntype = "CNAME"\nvalue = "www.example.com."\n'
    )
    dnsd = dnsd_factory("--no-forward", config=config)
    reply = query(dnsd.port, "_x._tcp.svc.docker", "SRV")
    extra = sorted(f"{rrset.name} {rdata}" for rrset in reply.additional for rdata in rrset)
    assert extra == ["alias.docker. real.docker.", "real.docker. 10.0.9.1"]
    away = query(dnsd.port, "_y._tcp.svc.docker", "SRV")
    assert not away.additional  # the chain leaves the zones: nothing to add
