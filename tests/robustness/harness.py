"""The robustness run: a real dnsd fed by a real 3-member etcd, a scripted Docker Engine and a
hosts file, forwarding to a slow scripted upstream, while writers change everything at random,
readers ask over UDP and TCP from several addresses, and faults are injected; then every
answer is checked against the history of writes (``history.History.check``).

Used by tests/robustness/test_robustness.py (a short run in the suite) and bench/robustness.py
(long runs by hand).  Everything runs on loopback; the upstream is the scripted one.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import random
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
from testbed.dnsd import Dnsd, start_dnsd
from testbed.etcd import Etcd
from testbed.fake_engine import FakeEngine, container
from testbed.tcp_proxy import TcpProxy
from testbed.upstream import FakeUpstream

from robustness.history import Asked, History, Report
from robustness.model import (
    OUTSIDE,
    TYPES,
    ZONE,
    Reply,
    Row,
    Value,
    random_value,
    upstream_zone_lines,
)

logger = logging.getLogger(__name__)

ETCD, DOCKER, HOSTS = "etcd", "docker", "hosts"
SUBZONE = "rob." + ZONE  # the etcd writer's names: /skydns/docker/rob/<label>
DOCKER_TTL = HOSTS_TTL = 5  # server.ttl
READER_ADDRESSES = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")
UPSTREAM_TTL = 2  # outside names are asked upstream again every few seconds
CATCH_UP_S = 30.0  # the longest a fault's recovery may take before the run fails


@dataclass
class Plan:
    duration_s: float = 60.0
    readers: int = 4
    etcd_names: int = 24
    leaf_names: int = 8
    outside_names: int = 8
    containers: int = 12
    hosts_names: int = 8
    etcd_writes_per_s: float = 35.0
    docker_writes_per_s: float = 6.0
    hosts_writes_per_s: float = 2.0
    faults: bool = True
    fault_every_s: float = 4.0  # the gap between one fault's end and the next
    bound_s: float = 1.0
    seed: int = field(default_factory=lambda: random.randrange(2**32))


def _names(prefix: str, count: int, suffix: str) -> list[str]:
    return [f"{prefix}{i}.{suffix}" for i in range(count)]


class Run:
    def __init__(self, plan: Plan, workdir: Path) -> None:
        self.plan = plan
        self.workdir = workdir
        self.random = random.Random(plan.seed)
        self.history = History()
        self.stopping = threading.Event()
        self.etcd_names = _names("e", plan.etcd_names, SUBZONE)
        self.leaves = _names("t", plan.leaf_names, SUBZONE)
        self.outside = _names("x", plan.outside_names, OUTSIDE)
        self.container_names = _names("c", plan.containers * 2, ZONE)  # half are free
        self.hosts_names = _names("h", plan.hosts_names, ZONE)
        self.hosts_file = workdir / "hosts"
        self.threads: list[threading.Thread] = []
        self.errors: list[str] = []
        self.etcd_revision = 0  # of the newest write etcd has committed
        self.mod_revisions: dict[str, int] = {}  # key -> its revision after our last write

    # --- components --------------------------------------------------------------------------
    @contextmanager
    def components(self) -> Iterator[Run]:
        self.etcd = Etcd(3).start()
        self.proxies = [TcpProxy("127.0.0.1", int(m.endpoint.rsplit(":", 1)[1]))
                        for m in self.etcd.members]  # fmt: skip
        self.engine = FakeEngine(str(self.workdir / "engine.sock")).start()
        delays = random.Random(self.plan.seed + 1)
        self.upstream = FakeUpstream(
            scripted=upstream_zone_lines(self.outside, ttl=UPSTREAM_TTL),
            delay_of=lambda _name: delays.uniform(0.05, 0.6),
        )
        self.upstream.gate = threading.Event()
        self.upstream.gate.set()
        self.upstream.start()
        self.hosts_file.write_text("")
        config = "[etcd]\npublish = false\n[static]\nwatch_interval = 0.5\n"
        try:
            self.dnsd: Dnsd = start_dnsd(
                self.workdir,
                "--etcd", ",".join(p.endpoint for p in self.proxies),
                "--hosts", str(self.hosts_file),
                "--upstream", f"127.0.0.1:{self.upstream.port}",
                config=config,
                docker=self.engine.url,
            )  # fmt: skip
            self.dnsd.wait_source("etcd", timeout=30)
            self.dnsd.wait_source("docker", timeout=30)
            yield self
        finally:
            self.stopping.set()
            for thread in self.threads:
                thread.join(30)
            if getattr(self, "dnsd", None) is not None:
                self.dnsd.stop()
            self.upstream.gate.set()
            self.upstream.stop()
            self.engine.stop()
            for proxy in self.proxies:
                proxy.close()
            for member in self.etcd.members:
                member.thaw()
            self.etcd.stop()

    # --- the run -----------------------------------------------------------------------------
    def run(self) -> Report:
        workers: list[Callable[[], None]] = [
            self._write_etcd,
            self._write_docker,
            self._write_hosts,
        ]
        workers += [self._read] * self.plan.readers
        if self.plan.faults:
            workers.append(self._inject_faults)
        for i, work in enumerate(workers):
            thread = threading.Thread(target=self._guarded, args=(work,), name=f"rob-{i}")
            thread.start()
            self.threads.append(thread)
        self.stopping.wait(self.plan.duration_s)
        self.stopping.set()
        for thread in self.threads:
            thread.join(60)
        report = self.history.check(self.plan.bound_s)
        report.faults = list(self.history.faults)
        return report

    def _guarded(self, work: Callable[[], None]) -> None:
        try:
            work()
        except Exception as exc:  # a harness bug must fail the run, not hide in a thread
            logger.exception("robustness worker failed")
            self.errors.append(repr(exc))
            self.stopping.set()

    def _pace(self, per_second: float) -> bool:
        """Wait an exponential gap (a Poisson process); False once the run is over."""
        return not self.stopping.wait(self.random.expovariate(per_second))

    # --- writers -------------------------------------------------------------------------------
    def _write_etcd(self) -> None:
        names = self.etcd_names + self.leaves
        while self._pace(self.plan.etcd_writes_per_s):
            name = self.random.choice(names)
            value = random_value(self.random, name, self.leaves, self.outside)
            key = "/skydns/" + "/".join(reversed(name.rstrip(".").split(".")))
            sent = time.monotonic()
            if not self._etcd_call(key, value):
                return  # the run ended while etcd refused the write
            self.history.wrote(ETCD, {name: value}, sent, time.monotonic())

    def _etcd_call(self, key: str, value: Value | None) -> bool:
        """The write through etcd's JSON gateway, member after member until one answers.

        Each write is a transaction that applies only if the key is still at the revision of
        this writer's previous write to it, so an attempt that timed out (a frozen member
        holding it) and commits later can never undo a newer write; when the transaction
        finds the key moved on, an earlier attempt of this very write committed (this writer
        is the keys' only one), and the key now holds it."""
        encoded = base64.b64encode(key.encode()).decode()
        if value is None:
            change = {"request_delete_range": {"key": encoded}}
        else:
            text = (
                {"text": value.data} if value.rtype == "TXT" else {"host": value.data.rstrip(".")}
            )
            raw = base64.b64encode(json.dumps({**text, "ttl": value.ttl}).encode()).decode()
            change = {"request_put": {"key": encoded, "value": raw}}
        expected = self.mod_revisions.get(key, 0)
        body = {
            "compare": [{"key": encoded, "target": "MOD", "result": "EQUAL",
                         "mod_revision": str(expected)}],
            "success": [change],
            "failure": [{"request_range": {"key": encoded}}],
        }  # fmt: skip
        members = list(self.etcd.members)
        attempt = 0
        while not self.stopping.is_set() or attempt == 0:
            member = members[attempt % len(members)]
            attempt += 1
            request = urllib.request.Request(
                f"http://{member.endpoint}/v3/kv/txn", json.dumps(body).encode(), method="POST"
            )
            try:
                with urllib.request.urlopen(request, timeout=1.0) as response:
                    reply = json.load(response)
            except (OSError, urllib.error.URLError, ValueError):
                time.sleep(0.05)
                continue
            revision = int(reply["header"]["revision"])
            if not reply.get("succeeded"):  # an earlier attempt of this write committed
                kvs = reply["responses"][0]["response_range"].get("kvs") or []
                held = kvs[0].get("value") if kvs else None
                wanted = change.get("request_put", {}).get("value")
                if held != wanted:
                    raise AssertionError(f"{key} holds {held!r}, not this writer's {wanted!r}")
                revision = int(kvs[0]["mod_revision"]) if kvs else revision
            self.mod_revisions[key] = 0 if value is None else revision
            self.etcd_revision = max(self.etcd_revision, revision)
            return True
        return False

    def _write_docker(self) -> None:
        slots = {f"{i:064x}": None for i in range(1, self.plan.containers + 1)}  # id -> name
        while self._pace(self.plan.docker_writes_per_s):
            cid = self.random.choice(list(slots))
            name = slots[cid]
            free = [n for n in self.container_names if n not in slots.values()]
            sent = time.monotonic()
            changes: dict[str, Value | None]
            if name is None:  # start it under a free name
                new = self.random.choice(free)
                ip = f"172.30.{self.random.randrange(256)}.{self.random.randrange(1, 255)}"
                with self.engine.lock:
                    self.engine.containers[cid] = container(cid, new.split(".")[0], ip)
                self.engine.emit("start", cid)
                slots[cid], changes = new, {new: Value("A", ip, DOCKER_TTL)}
            else:
                attrs = self.engine.containers[cid]
                ip = attrs["NetworkSettings"]["Networks"]["bridge"]["IPAddress"]
                pick = self.random.random()
                if pick < 0.35:
                    with self.engine.lock:
                        del self.engine.containers[cid]
                    self.engine.emit("die", cid)
                    slots[cid], changes = None, {name: None}
                elif pick < 0.65:
                    new = self.random.choice(free)
                    with self.engine.lock:
                        attrs["Name"] = "/" + new.split(".")[0]
                    self.engine.emit("rename", cid)
                    slots[cid] = new
                    healthy = (attrs["State"].get("Health") or {}).get("Status") != "unhealthy"
                    changes = {name: None, new: Value("A", ip, DOCKER_TTL) if healthy else None}
                else:
                    status = self.random.choice(["healthy", "unhealthy"])
                    with self.engine.lock:
                        attrs["State"] = dict(attrs["State"], Health={"Status": status})
                    self.engine.emit(f"health_status: {status}", cid)
                    changes = {name: Value("A", ip, DOCKER_TTL) if status == "healthy" else None}
            self.history.wrote(DOCKER, changes, sent, time.monotonic())

    def _write_hosts(self) -> None:
        held: dict[str, str] = {}
        while self._pace(self.plan.hosts_writes_per_s):
            changes: dict[str, Value | None] = {}
            for name in self.random.sample(self.hosts_names, 2):
                if self.random.random() < 0.3:
                    held.pop(name, None)
                    changes[name] = None
                else:
                    held[name] = f"10.79.0.{self.random.randrange(1, 255)}"
                    changes[name] = Value("A", held[name], HOSTS_TTL)
            sent = time.monotonic()
            temporary = self.hosts_file.with_suffix(".new")
            temporary.write_text(
                "".join(f"{ip} {name.split('.')[0]}\n" for name, ip in held.items())
            )
            os.replace(temporary, self.hosts_file)
            self.dnsd.proc.send_signal(signal.SIGHUP)
            self.history.wrote(HOSTS, changes, sent, time.monotonic())

    # --- readers -------------------------------------------------------------------------------
    def _read(self) -> None:
        asked = {
            ETCD: self.etcd_names + self.leaves,
            DOCKER: self.container_names,
            HOSTS: self.hosts_names,
        }
        weights = {ETCD: 6, DOCKER: 3, HOSTS: 1}
        writers = [w for w, n in weights.items() for _ in range(n)]
        while not self.stopping.is_set():
            writer = self.random.choice(writers)
            name = self.random.choice(asked[writer])
            qtype = "A" if writer != ETCD else self.random.choice((*TYPES, "A", "A"))
            tcp = self.random.random() < 0.15
            source = self.random.choice(READER_ADDRESSES)
            self.history.answered(ask(self.dnsd.port, writer, name, qtype, tcp, source))

    # --- faults --------------------------------------------------------------------------------
    def _inject_faults(self) -> None:
        faults: list[Callable[[], None]] = [
            self._kill_leader, self._upstream_stall, self._freeze_member, self._sighup_burst,
            self._cut_etcd, self._upstream_servfail, self._cut_docker_events,
        ]  # fmt: skip
        turn = 0
        while not self.stopping.wait(self.plan.fault_every_s):
            faults[turn % len(faults)]()
            turn += 1

    def _hold(self, seconds: float) -> None:
        self.stopping.wait(seconds)

    def _etcd_caught_up(self) -> float:
        """When dnsd has read every write committed so far (a fault's recovery ends then)."""
        wanted = self.etcd_revision
        deadline = time.monotonic() + CATCH_UP_S
        while self.dnsd.metric("dnsd_etcd_revision") < wanted:
            if time.monotonic() > deadline:
                raise AssertionError(f"dnsd did not catch up with etcd revision {wanted}")
            time.sleep(0.05)
        return time.monotonic()

    def _docker_caught_up(self, resyncs: float) -> float:
        """When dnsd has resynced with the Engine after reconnecting (``resyncs`` before)."""
        deadline = time.monotonic() + CATCH_UP_S
        while self.dnsd.metric("dnsd_docker_resyncs_total") <= resyncs:
            if time.monotonic() > deadline:
                raise AssertionError("dnsd did not resync with the Engine")
            time.sleep(0.05)
        return time.monotonic()

    def _kill_leader(self) -> None:
        started = time.monotonic()
        member = self.etcd.leader()
        member.kill()
        self._hold(2.0)
        self.etcd.restart(member)
        self.history.fault(f"etcd leader {member.name} killed 2 s", (ETCD,), started,
                           self._etcd_caught_up())  # fmt: skip

    def _freeze_member(self) -> None:
        started = time.monotonic()
        member = self.random.choice(self.etcd.members)
        member.freeze()
        self._hold(3.0)
        member.thaw()
        self.history.fault(f"etcd member {member.name} SIGSTOPped 3 s", (ETCD,), started,
                           self._etcd_caught_up())  # fmt: skip

    def _cut_etcd(self) -> None:
        started = time.monotonic()
        for proxy in self.proxies:
            proxy.partition()
        self._hold(3.0)
        for proxy in self.proxies:
            proxy.heal()
        self.history.fault("dnsd cut off etcd 3 s", (ETCD,), started, self._etcd_caught_up())

    def _upstream_stall(self) -> None:
        assert self.upstream.gate is not None
        started = time.monotonic()
        self.upstream.gate.clear()
        self._hold(3.0)
        self.upstream.gate.set()
        self.history.fault("upstream stalled 3 s", (), started, time.monotonic())

    def _upstream_servfail(self) -> None:
        started = time.monotonic()
        self.upstream.mode = "servfail"
        self._hold(3.0)
        self.upstream.mode = "answer"
        self.history.fault("upstream SERVFAIL 3 s", (), started, time.monotonic())

    def _sighup_burst(self) -> None:
        started = time.monotonic()
        for _ in range(20):
            self.dnsd.proc.send_signal(signal.SIGHUP)
            time.sleep(0.01)
        self.history.fault("20 SIGHUPs", (), started, time.monotonic())

    def _cut_docker_events(self) -> None:
        resyncs = self.dnsd.metric("dnsd_docker_resyncs_total")
        started = time.monotonic()
        self.engine.end_streams()
        self.history.fault("Docker event stream cut", (DOCKER,), started,
                           self._docker_caught_up(resyncs))  # fmt: skip


def _row(rrset: Any, item: Any, in_zone: bool) -> Row:
    rtype = dns.rdatatype.to_text(rrset.rdtype)
    if rtype == "TXT":
        data = b"".join(item.strings).decode()
    elif rtype == "CNAME":
        data = item.target.to_text().lower()
    else:
        data = item.to_text()
    return rtype, data, rrset.ttl if in_zone else None


def reply_of(message: dns.message.Message) -> Reply:
    """A reply in the model's form (TTLs kept only when every owner is inside the zone)."""
    in_zone = all(rrset.name.to_text().lower().endswith(ZONE) for rrset in message.answer)
    rows = [_row(rrset, item, in_zone) for rrset in message.answer for item in rrset]
    return Reply.of(dns.rcode.to_text(message.rcode()), rows)


def ask(port: int, writer: str, name: str, qtype: str, tcp: bool, source: str) -> Asked:
    query = dns.message.make_query(name, qtype)
    send = dns.query.tcp if tcp else dns.query.udp
    sent = time.monotonic()
    try:
        reply = reply_of(send(query, "127.0.0.1", port=port, timeout=3.0, source=source))
    except (dns.exception.Timeout, OSError, EOFError):
        reply = Reply("timeout", ())
    transport = "tcp" if tcp else "udp"
    return Asked(writer, name, qtype, transport, sent, time.monotonic(), reply)
