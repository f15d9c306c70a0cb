"""A private Docker Engine for tests and benchmarks (Debian's docker.io, run as root).

Own data root, exec root, socket, pidfile and config file under one folder; a bridge of its
own (``dnsd-test0``, made here and deleted at the end; in the root network namespace dockerd
is given ``--bridge`` and no iptables, so a machine's own dockerd keeps ``docker0`` and its
rules); a busybox-static image imported without any registry.  Never pulls.  Leftover daemons
from an earlier run (found by their pidfiles) are stopped first, since two daemons managing
iptables in one network namespace wipe each other's rules.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

BASE_GLOB = "/tmp/dnsd-dockerd-*"
DIED_LOG = "/tmp/dnsd-test-dockerd-died.log"  # outside BASE_GLOB: stop_leftovers keeps it
logger = logging.getLogger(__name__)
TESTBED_PREFIX = "172.29."
OWN_BRIDGE = "dnsd-test0"  # the test daemon's default bridge in the root network namespace
MACHINE_BRIDGE = "docker0"  # the machine's own Docker: never touched
BRIDGE_IP = "172.29.0.1"
BRIDGE_CIDR = f"{BRIDGE_IP}/24"
IMAGE = "local/busybox:latest"
BUSYBOX = "/bin/busybox"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def _umount_under(root: Path) -> None:
    with open("/proc/mounts") as mounts:
        points = [line.split()[1] for line in mounts if line.split()[1].startswith(str(root))]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)


def _remove_stale_bridges() -> None:
    """Bridges a killed test daemon left behind (in the testbed's 172.29.0.0/16) would keep
    routes to the same subnets as the next daemon's bridges."""
    listing = subprocess.run(
        ["ip", "-j", "addr", "show", "type", "bridge"], capture_output=True, text=True
    )
    with contextlib.suppress(ValueError):
        for link in json.loads(listing.stdout or "[]"):
            addresses = [a.get("local", "") for a in link.get("addr_info", [])]
            if link["ifname"] == MACHINE_BRIDGE:
                continue
            if link["ifname"] == OWN_BRIDGE or any(a.startswith(TESTBED_PREFIX) for a in addresses):
                subprocess.run(["ip", "link", "del", link["ifname"]], capture_output=True)


def _own_bridge(cidr: str) -> None:
    """``OWN_BRIDGE`` with address ``cidr``, up (made when missing)."""
    exists = subprocess.run(["ip", "link", "show", OWN_BRIDGE], capture_output=True)
    if exists.returncode != 0:
        subprocess.run(["ip", "link", "add", OWN_BRIDGE, "type", "bridge"], check=True)
    subprocess.run(["ip", "addr", "replace", cidr, "dev", OWN_BRIDGE], check=True)
    subprocess.run(["ip", "link", "set", OWN_BRIDGE, "up"], check=True)


def _kill_under(root: str) -> None:
    """Container shims (and the containers they keep) of a daemon whose folder is ``root``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if root in cmdline and "containerd-shim" in cmdline:
                os.kill(int(entry.name), signal.SIGKILL)


OWNER = "owner.pid"  # in a daemon's folder: the test process that started it


def stop_leftovers() -> None:
    """Stop test daemons of earlier runs and remove what they left (mounts, bridges).  A
    daemon whose test process still runs is another session's (they share one bridge, so only
    one session at a time can have a daemon): RuntimeError saying so, that daemon untouched."""
    for folder in glob.glob(BASE_GLOB):
        with contextlib.suppress(OSError, ValueError):
            owner = int((Path(folder) / OWNER).read_text().strip())
            if owner != os.getpid() and _pid_alive(owner):
                raise RuntimeError(
                    f"another test session (pid {owner}) has a private dockerd in {folder}: "
                    "run one session with Docker tests at a time"
                )
    for folder in glob.glob(BASE_GLOB):
        for pidfile in (
            Path(folder) / "docker.pid",
            Path(folder) / "exec/containerd/containerd.pid",
        ):
            with contextlib.suppress(OSError, ValueError):
                pid = int(pidfile.read_text().strip())
                if _pid_alive(pid):
                    os.kill(pid, signal.SIGKILL)
                    _wait_gone(pid, 5)
        _umount_under(Path(folder))
        shutil.rmtree(folder, ignore_errors=True)
    _kill_under(BASE_GLOB.rstrip("*"))  # shims whose daemon's folder is already gone, too
    _remove_stale_bridges()


class Dockerd:
    def __init__(
        self, extra_args: list[str] | None = None, netns: str | None = None, bip: str = BRIDGE_CIDR
    ) -> None:
        self.netns = netns  # run inside this network namespace (a separate "host")
        self.bip = bip
        self.root = Path(tempfile.mkdtemp(prefix="dnsd-dockerd-", dir="/tmp"))
        (self.root / OWNER).write_text(str(os.getpid()))
        self.socket = self.root / "docker.sock"
        self.url = f"unix://{self.socket}"
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen[bytes] | None = None

    def docker(self, *args: str, check: bool = True, timeout: float = 60) -> str:
        result = subprocess.run(
            ["docker", "-H", self.url, *args], capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout.strip()

    def run(self, *args: str, cmd: tuple[str, ...] = ("sleep", "1000"), prefix: str = "c") -> str:
        """``docker run -d --pull never`` of the test image under a fresh name; returns it."""
        name = prefix + uuid.uuid4().hex[:8]
        self.docker("run", "-d", "--pull", "never", "--name", name, *args, IMAGE, *cmd)
        return name

    def start(self) -> Dockerd:
        (self.root / "daemon.json").write_text("{}")
        log = open(self.root / "dockerd.log", "ab")  # noqa: SIM115
        enter = ["nsenter", f"--net=/run/netns/{self.netns}"] if self.netns else []
        if self.netns:  # a namespace of its own: its docker0 is no one else's
            network = ["--bip", self.bip]
        else:
            _own_bridge(self.bip)
            network = ["--bridge", OWN_BRIDGE, "--iptables=false", "--ip-masq=false"]
        self.proc = subprocess.Popen(
            [
                *enter,
                "dockerd",
                "--data-root", str(self.root / "data"),
                "--exec-root", str(self.root / "exec"),
                "-H", self.url,
                "--pidfile", str(self.root / "docker.pid"),
                "--config-file", str(self.root / "daemon.json"),
                *network,
                "--dns", self.bip.split("/")[0],
                *self.extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dockerd exited:\n{self.log()[-3000:]}")
            try:
                probe = subprocess.run(
                    ["docker", "-H", self.url, "version"], capture_output=True, timeout=5
                )
            except subprocess.TimeoutExpired:
                continue  # restoring containers after a crash can hold the API a while
            if probe.returncode == 0:
                return self
            time.sleep(0.1)
        raise RuntimeError(f"dockerd did not come up:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return (self.root / "dockerd.log").read_text(errors="replace")

    def import_busybox(self) -> str:
        rootfs = self.root / "rootfs"
        (rootfs / "bin").mkdir(parents=True, exist_ok=True)
        (rootfs / "etc").mkdir(exist_ok=True)
        (rootfs / "tmp").mkdir(exist_ok=True)
        shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
        applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True).stdout
        for applet in applets.split():
            link = rootfs / "bin" / applet
            if applet != "busybox" and not link.exists():
                link.symlink_to("busybox")
        (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
        (rootfs / "etc" / "group").write_text("root:x:0:\n")
        with subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE) as tar:
            subprocess.run(
                ["docker", "-H", self.url, "import", "-c", 'CMD ["/bin/sh"]', "-c",
                 "ENV PATH=/bin", "-", IMAGE],
                stdin=tar.stdout, check=True, capture_output=True, timeout=60,
            )  # fmt: skip
        return IMAGE

    def kill(self) -> None:
        """SIGKILL the daemon and the containerd it manages (the shims survive).

        containerd's output is piped through dockerd: once dockerd is gone it would hang, and
        the next dockerd would wait for it in vain."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        pidfile = self.root / "exec" / "containerd" / "containerd.pid"
        with contextlib.suppress(OSError, ValueError):
            pid = int(pidfile.read_text().strip())
            os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, 5)

    def restart(self) -> None:
        self.start()

    def remove_all_containers(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        ids = self.docker("ps", "-aq", check=False).split()
        if ids:
            self.docker("rm", "-f", *ids, check=False)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            # It ended before it was asked to: keep its log (the folder goes) for whoever
            # looks into why.
            with contextlib.suppress(OSError):
                shutil.copy(self.root / "dockerd.log", DIED_LOG)
                logger.warning("the test dockerd had exited (%s): its log is in %s",
                               self.proc.returncode, DIED_LOG)  # fmt: skip
        self.remove_all_containers()
        if self.proc is not None and self.proc.poll() is None:
            self.docker("network", "prune", "-f", check=False)  # deletes their bridges
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        _kill_under(str(self.root))
        _umount_under(self.root)
        shutil.rmtree(self.root, ignore_errors=True)
        if not self.netns:
            _remove_stale_bridges()


def available() -> str | None:
    """None when a private dockerd can run here, else why not."""
    if os.geteuid() != 0:
        return "dockerd needs root"
    for tool in ("dockerd", "docker", BUSYBOX):
        if not shutil.which(tool) and not os.path.exists(tool):
            return f"{tool} is not installed (scripts/setup --system)"
    return None
