"""Network namespaces as separate "hosts" on one machine: each gets a veth pair to the root
namespace (root side X.1/30, host side X.2/30, default route via X.1) and its own loopback."""

from __future__ import annotations

import subprocess

PREFIX = "dnsd-h-"


def _ip(*args: str, check: bool = True) -> None:
    subprocess.run(["ip", *args], check=check, capture_output=True)


class Host:
    def __init__(self, name: str, subnet: int) -> None:
        self.netns = PREFIX + name
        self.veth = f"vd{name}"[:15]
        self.root_ip = f"172.31.{subnet}.1"
        self.ip = f"172.31.{subnet}.2"

    def create(self) -> Host:
        _ip("netns", "del", self.netns, check=False)
        _ip("link", "del", self.veth, check=False)
        _ip("netns", "add", self.netns)
        _ip("link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", self.netns)
        _ip("addr", "add", f"{self.root_ip}/30", "dev", self.veth)
        _ip("link", "set", self.veth, "up")
        inside = ["netns", "exec", self.netns, "ip"]
        _ip(*inside, "link", "set", "lo", "up")
        _ip(*inside, "addr", "add", f"{self.ip}/30", "dev", "eth0")
        _ip(*inside, "link", "set", "eth0", "up")
        _ip(*inside, "route", "add", "default", "via", self.root_ip)
        return self

    def enter(self) -> list[str]:
        """The command prefix that runs a program inside this host's network namespace."""
        return ["nsenter", f"--net=/run/netns/{self.netns}"]

    def destroy(self) -> None:
        _ip("netns", "del", self.netns, check=False)
        _ip("link", "del", self.veth, check=False)


def remove_leftovers() -> None:
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for line in listing.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(PREFIX):
            _ip("netns", "del", name, check=False)
