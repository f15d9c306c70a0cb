"""Real etcd for tests and benchmarks (Debian's etcd-server): one member or a 3-member cluster
on 127.0.0.1 with free ports, each member in its own data folder; members can be killed,
restarted, frozen (SIGSTOP) and thawed."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from testbed.dnsd import free_port


class Member:
    def __init__(
        self, name: str, root: Path, extra_hosts: tuple[str, ...] = (), certs: Any = None
    ) -> None:
        self.name = name
        self.certs = certs  # testbed.certs.Certs: serve clients over TLS and require a cert
        self.scheme = "https" if certs else "http"
        self.extra_hosts = extra_hosts  # also listen for clients on these addresses
        self.dir = root / name
        self.client_port = free_port()
        self.peer_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def start(self, cluster: str, state: str = "new") -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        log = open(self.dir.with_suffix(".log"), "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                "etcd", "--name", self.name, "--data-dir", str(self.dir / "data"),
                "--listen-client-urls", ",".join(
                    f"{self.scheme}://{h}:{self.client_port}"
                    for h in ("127.0.0.1", *self.extra_hosts)
                ),
                "--advertise-client-urls", f"{self.scheme}://{self.endpoint}",
                *self._tls_flags(),
                "--listen-peer-urls", self.peer_url,
                "--initial-advertise-peer-urls", self.peer_url,
                "--initial-cluster", cluster, "--initial-cluster-state", state,
                "--heartbeat-interval", "100", "--election-timeout", "1000",
            ],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()

    def _tls_flags(self) -> list[str]:
        if not self.certs:
            return []
        return [
            "--cert-file", str(self.certs.server_cert), "--key-file", str(self.certs.server_key),
            "--trusted-ca-file", str(self.certs.ca), "--client-cert-auth",
        ]  # fmt: skip

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def freeze(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)


class Etcd:
    def __init__(
        self,
        members: int = 1,
        extra_hosts: tuple[str, ...] = (),
        certs: Any = None,
        under: str | None = None,  # where the data goes (a benchmark: /dev/shm)
    ) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="dnsd-etcd-", dir=under))
        self.certs = certs
        self.members = [Member(f"m{i + 1}", self.root, extra_hosts, certs) for i in range(members)]
        self.auth: list[str] = []  # etcdctl --user ROOT:PW once auth is on
        self.cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    @property
    def endpoints(self) -> str:
        return ",".join(m.endpoint for m in self.members)

    def start(self) -> Etcd:
        for member in self.members:
            member.start(self.cluster)
        self.wait_healthy()
        return self

    def restart(self, member: Member) -> None:
        member.start(self.cluster, state="existing")

    def wait_healthy(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = self.ctl("endpoint", "health", check=False, timeout=5)
            if result.returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError(f"etcd not healthy: {result.stderr}")

    def ctl(
        self, *args: str, endpoints: str | None = None, check: bool = True, timeout: float = 10
    ) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, ETCDCTL_API="3")
        tls = []
        if self.certs:
            tls = ["--cacert", str(self.certs.ca), "--cert", str(self.certs.client_cert),
                   "--key", str(self.certs.client_key)]  # fmt: skip
        return subprocess.run(
            ["etcdctl", "--endpoints", endpoints or self.endpoints, *tls, *self.auth, *args],
            capture_output=True, text=True, env=env, check=check, timeout=timeout,
        )  # fmt: skip

    def put(self, key: str, value: str, endpoints: str | None = None) -> None:
        """Retried: writes fail for about a second while a new leader is elected."""
        deadline = time.monotonic() + 15
        while True:
            result = self.ctl("put", key, value, endpoints=endpoints, check=False)
            if result.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if result.returncode != 0:
            raise RuntimeError(result.stderr)

    def leader(self) -> Member:
        for member in self.members:
            if member.proc is None or member.proc.poll() is not None:
                continue
            out = self.ctl(
                "endpoint", "status", "-w", "simple", endpoints=member.endpoint, check=False
            ).stdout
            fields = [f.strip() for f in out.split(",")]
            if len(fields) > 4 and fields[4] == "true":
                return member
        raise RuntimeError("no leader")

    def stop(self) -> None:
        for member in self.members:
            if member.proc is not None and member.proc.poll() is None:
                member.thaw()
                member.kill()
        shutil.rmtree(self.root, ignore_errors=True)


def available() -> str | None:
    for tool in ("etcd", "etcdctl"):
        if not shutil.which(tool):
            return f"{tool} is not installed (scripts/setup --system)"
    return None
