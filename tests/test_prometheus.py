"""dnsd's alerts, recording rules and dashboard (conf/prometheus, conf/grafana) against Debian's
prometheus and promtool: the rules check and pass their unit tests, and a real Prometheus
scraping a dnsd that serves answers gets data for every query of the dashboard."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import pytest
import yaml
from conftest import ROOT, FakeUpstream, StopAtEnd, eventually, free_port, start_dnsd
from testbed.etcd import Etcd
from testbed.fake_engine import FakeEngine, container

PROMETHEUS = ROOT / "conf" / "prometheus"
DASHBOARD = ROOT / "conf" / "grafana" / "dnsd.json"
RUNBOOKS = ROOT / "docs" / "operations.md"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing: scripts/setup --system installs Debian's prometheus")
    return path


def promtool(*args: str, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("promtool"), *args], capture_output=True, text=True, timeout=60, cwd=cwd
    )


def alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load((PROMETHEUS / "rules.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def recordings() -> list[str]:
    groups = yaml.safe_load((PROMETHEUS / "rules.yml").read_text())["groups"]
    return [rule["record"] for group in groups for rule in group["rules"] if "record" in rule]


def test_rules_and_config_check() -> None:
    checked = promtool("check", "rules", "rules.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = promtool("check", "config", "prometheus.yml")  # loads rules.yml too
    assert config.returncode == 0, config.stdout + config.stderr


def test_rules_unit_tests_pass() -> None:
    tested = promtool("test", "rules", "rules_test.yml")
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


def test_the_unit_tests_fail_when_an_alert_is_broken(tmp_path: Path) -> None:
    """The unit tests catch an alert that never fires and one that always does."""
    rules = (PROMETHEUS / "rules.yml").read_text()
    (tmp_path / "rules_test.yml").write_text((PROMETHEUS / "rules_test.yml").read_text())
    for broken in (
        rules.replace('expr: up{job="dnsd"} == 0', 'expr: up{job="dnsd"} == 2'),
        rules.replace("> 0.8", "> 0.01"),
    ):
        assert broken != rules
        (tmp_path / "rules.yml").write_text(broken)
        run = promtool("test", "rules", "rules_test.yml", cwd=tmp_path)
        assert run.returncode != 0 and "FAILED" in run.stdout + run.stderr


def test_every_alert_is_tested_firing_and_silent_and_has_a_runbook() -> None:
    tests = yaml.safe_load((PROMETHEUS / "rules_test.yml").read_text())["tests"]
    cases: dict[str, set[bool]] = {}
    for test in tests:
        for case in test.get("alert_rule_test", []):
            cases.setdefault(case["alertname"], set()).add(bool(case["exp_alerts"]))
    runbooks = RUNBOOKS.read_text()
    headings = {
        re.sub(r"[^a-z0-9 -]", "", line[4:].strip().lower()).replace(" ", "-")
        for line in runbooks.splitlines()
        if line.startswith("### ")
    }
    names = [rule["alert"] for rule in alerts()]
    assert len(names) >= 11
    for rule in alerts():
        name = rule["alert"]
        assert cases.get(name) == {True, False}, f"{name}: needs a firing and a silent case"
        assert rule["labels"]["severity"] in {"critical", "warning"}
        anchor = rule["annotations"]["runbook"].partition("#")[2]
        assert anchor == name.lower() and anchor in headings, f"{name}: no runbook section"


def test_dashboard_shape() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert "label_values(dnsd_build_info, instance)" in variables["instance"]["definition"]
    exprs = dashboard_queries(dashboard)
    assert exprs and all('instance=~"$instance"' in e for e in exprs)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in ("rcode", "type", "transport", "path", "quantiles", "cache hit", "upstream",
                  "records by source", "source state", "etcd revision", "lease", "memory", "cpu",
                  "file descriptors"):  # fmt: skip
        assert topic in titles


def test_the_dashboard_asks_for_its_data_source_on_import() -> None:
    """Grafana's import asks for each of ``__inputs``: the Prometheus data source the docs
    say it asks for."""
    dashboard = json.loads(DASHBOARD.read_text())
    (source,) = dashboard["__inputs"]
    assert source["type"] == "datasource" and source["pluginId"] == "prometheus"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["current"]["value"] == "${" + source["name"] + "}"
    used = {
        p["datasource"]["uid"]
        for p in [
            *dashboard["panels"],
            *[t for p in dashboard["panels"] for t in p.get("targets", [])],
        ]
        if isinstance(p.get("datasource"), dict)
    }
    assert used == {"${datasource}"}, used


def test_series_known_at_start_are_there_at_zero(stop_at_end: StopAtEnd, tmp_path: Path) -> None:
    """Each upstream's request, reply and failure series and each drop reason exist from
    the start at 0, so the first failure shows in rate()/increase() (Prometheus'
    instrumentation advice); the code drops packets for no reason outside that list."""
    from dnsd.stats import DROP_REASONS, UPSTREAM_RCODES
    from dnsd.wire import fair_queue, miss_rate

    upstream = stop_at_end(FakeUpstream().start())
    to = f"127.0.0.1:{upstream.port}"
    server = stop_at_end(start_dnsd(tmp_path, "--upstream", to))
    text = server._get("/metrics")
    for name in ("dnsd_forward_requests_total", "dnsd_forward_failures_total"):
        assert f'{name}{{to="{to}"}} 0.0' in text, name
    for rcode in UPSTREAM_RCODES:
        assert f'dnsd_forward_responses_total{{rcode="{rcode}",to="{to}"}} 0.0' in text
    for reason in DROP_REASONS:
        assert f'dnsd_dropped_packets_total{{reason="{reason}"}} 0.0' in text, reason
    constants = {
        miss_rate.TOO_MANY_MISSES,
        miss_rate.TOO_MANY_FROM_NETWORK,
        miss_rate.OVER_TOTAL,
        fair_queue.TOO_MANY,
        fair_queue.TOO_MANY_FROM_ONE,
    }
    literals = {
        m.group(1)
        for path in (ROOT / "dnsd").rglob("*.py")
        for m in re.finditer(r'(?:\.drop|_busy)\([^)]*?"([^"]+)"\)', path.read_text())
    }
    assert literals and (constants | literals) <= set(DROP_REASONS), (constants | literals) - set(
        DROP_REASONS
    )


def dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


class Prometheus:
    """Debian's prometheus on loopback, with its own data directory, scraping once a second."""

    def __init__(self, tmp: Path, target: str) -> None:
        config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        config["rule_files"] = [str(PROMETHEUS / "rules.yml")]
        config["scrape_configs"][0]["static_configs"] = [{"targets": [target]}]
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.log = open(tmp / "prometheus.log", "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [tool("prometheus"), f"--config.file={tmp / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as error:  # a bad query: Prometheus says why
            body = json.loads(error.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query", query=expr)["result"]
        return result

    def ready(self) -> bool:
        try:
            return bool(self.query('up{job="dnsd"} == 1'))
        except (OSError, ValueError):  # not listening, or not ready yet (503, not JSON)
            return False

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def has_numbers(result: list[dict[str, Any]]) -> bool:
    return any(not math.isnan(float(series["value"][1])) for series in result)


@pytest.fixture
def traffic() -> Iterator[list[int]]:
    """Queries to a dnsd for the length of the test, in a thread: (port) set by the test."""
    port: list[int] = []
    done = threading.Event()

    def ask() -> None:
        n = 0
        while not done.is_set():
            if port:
                n += 1
                asked = [f"web.{ZONE}", f"nope.{ZONE}", f"f{n}.example.com"]  # hit, NX, forwarded
                for name, qtype in [*((name, "A") for name in asked), (f"web.{ZONE}", "AAAA")]:
                    q = dns.message.make_query(name, qtype)
                    try:
                        if n % 5 == 0:
                            dns.query.tcp(q, "127.0.0.1", port=port[0], timeout=2)
                        else:
                            dns.query.udp(q, "127.0.0.1", port=port[0], timeout=2)
                    except Exception:
                        pass
            done.wait(0.05)

    thread = threading.Thread(target=ask, daemon=True)
    thread.start()
    yield port
    done.set()
    thread.join(5)


ZONE = f"p{uuid.uuid4().hex[:8]}.test."


def _samples(prometheus: Prometheus, selector: str) -> int:
    """How many samples Prometheus holds for ``selector`` (a range vector)."""
    found = prometheus.query(f"count_over_time({selector})")
    return int(float(found[0]["value"][1])) if found else 0


def test_prometheus_scrapes_dnsd_and_every_dashboard_query_has_data(
    stop_at_end: StopAtEnd, etcd: Etcd, tmp_path: Path, traffic: list[int]
) -> None:
    good = stop_at_end(FakeUpstream().start())
    dead = stop_at_end(FakeUpstream(mode="silent").start())
    engine = stop_at_end(FakeEngine(str(tmp_path / "engine.sock")).start())
    engine.containers["a" * 64] = container("a" * 64, "web", "10.21.0.1")
    (tmp_path / "hosts").write_text("10.21.0.9 gateway\n")
    # A record outside dnsd's zones: refused, counted.
    etcd.put("/skydns/org/example/stray", '{"host": "10.21.0.8"}')
    server = stop_at_end(start_dnsd(
        tmp_path, "--zone", ZONE, "--etcd", etcd.endpoints, "--node-id", "promhost",
        "--upstream", f"127.0.0.1:{dead.port}", "--upstream", f"127.0.0.1:{good.port}",
        config='[static]\nhosts = ["hosts"]\n[forward]\ntimeout = 0.3\n[etcd]\nlease_ttl = 5\n',
        docker=engine.url,
    ))  # fmt: skip
    server.wait_source("etcd-publish")
    traffic.append(server.port)
    target = f"127.0.0.1:{server.http_port}"
    prometheus = stop_at_end(Prometheus(tmp_path, target))
    eventually(prometheus.ready, timeout=30)
    # A few scrapes, so every rate has two samples or more (counted, not waited for).
    eventually(lambda: _samples(prometheus, "dnsd_build_info[1m]") >= 3, timeout=60)
    instance = {"$instance": target.replace(".", "\\\\."), "$__rate_interval": "15s"}
    missing = []
    dashboard = json.loads(DASHBOARD.read_text())
    for expr in dashboard_queries(dashboard):
        for variable, value in instance.items():
            expr = expr.replace(variable, value)
        if not has_numbers(prometheus.query(expr)):
            missing.append(expr)
    assert missing == [], f"dashboard queries without data: {missing}"
    # The instance variable: label_values(dnsd_build_info, instance).
    assert [s["metric"]["instance"] for s in prometheus.query("dnsd_build_info")] == [target]
    # The recording rules have data too, and the alerts are loaded, none firing.
    eventually(lambda: all(prometheus.query(name) for name in recordings()), timeout=15)
    rules = prometheus.api("rules")["groups"]
    loaded = [r for g in rules for r in g["rules"] if r["type"] == "alerting"]
    assert {r["name"] for r in loaded} == {rule["alert"] for rule in alerts()}
    assert [r["name"] for r in loaded if r["state"] == "firing"] == []
