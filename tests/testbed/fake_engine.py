"""A scriptable stand-in for the Docker Engine API on a unix socket.

Speaks just enough of the API for the docker SDK as dnsd uses it (/version, /_ping,
/containers/json, /containers/{id}/json, a chunked /events stream), so tests can script what a
real engine cannot be made to do on demand (an event that never arrives, a stream that ends,
hostile inspect data) and benchmarks can feed 10,000 synthetic containers.  The real-engine
tests live in test_docker.py; this is the seam for the rest.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import socketserver
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlparse

API_VERSION = "1.41"


def container(
    cid: str,
    name: str,
    ip: str,
    labels: dict[str, str] | None = None,
    network: str = "bridge",
    prefix: int = 16,
    ports: tuple[str, ...] = (),
    running: bool = True,
) -> dict[str, Any]:
    """An inspect document of the shape dockerd returns."""
    return {
        "Id": cid,
        "Name": "/" + name,
        "Config": {
            "Hostname": cid[:12],
            "Labels": labels or {},
            "ExposedPorts": {p: {} for p in ports},
        },
        "State": {"Running": running, "Paused": False, "Status": "running"},
        "NetworkSettings": {
            "Networks": {
                network: {
                    "IPAddress": ip,
                    "IPPrefixLen": prefix,
                    "Aliases": None,
                    "EndpointID": "ep-" + cid,
                }
            },
            "Ports": {p: None for p in ports},
        },
    }


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    request_queue_size = 512  # dockerd's backlog is large too
    engine: FakeEngine


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args: Any) -> None:
        pass

    def address_string(self) -> str:
        return "fake-engine"

    def _json(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        engine = self.server.engine
        path = re.sub(r"^/v\d+\.\d+/", "/", urlparse(self.path).path)
        engine.requests.append(path)
        if path == "/version":
            self._json(200, {"ApiVersion": API_VERSION, "Version": "fake"})
        elif path == "/_ping":
            self._json(200, "OK")
        elif path == "/containers/json":
            self._json(200, [engine.list_entry(c) for c in engine.running()])
        elif path.startswith("/containers/") and path.endswith("/json"):
            cid = path.split("/")[2]
            with engine.inspecting(cid):
                found = engine.containers.get(cid)
            if found is None:
                self._json(404, {"message": f"No such container: {cid}"})
            else:
                self._json(200, found)
        elif path == "/events":
            self._events()
        else:
            self._json(404, {"message": "not faked"})

    def _events(self) -> None:
        engine = self.server.engine
        feed: queue.Queue[dict[str, Any] | None] = queue.Queue()
        with engine.lock:
            engine.subscribers.append(feed)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        try:
            while True:
                event = feed.get()
                if event is None:
                    break
                data = json.dumps(event).encode() + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            pass
        finally:
            with engine.lock:
                if feed in engine.subscribers:
                    engine.subscribers.remove(feed)
            self.close_connection = True


class FakeEngine:
    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self.url = f"unix://{socket_path}"
        self.containers: dict[str, dict[str, Any]] = {}
        self.subscribers: list[queue.Queue[dict[str, Any] | None]] = []
        self.requests: list[str] = []
        self.lock = threading.Lock()
        self._server: _Server | None = None
        # Inspections of these containers wait until ``released`` is set (a slow Engine).
        self.held: set[str] = set()
        self.released = threading.Event()
        self.in_flight = 0  # inspections being answered now, and the most at once
        self.most_in_flight = 0

    def start(self) -> FakeEngine:
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)
        self._server = _Server(self.socket_path, _Handler)
        self._server.engine = self
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.released.set()
        self.end_streams()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)

    @contextlib.contextmanager
    def inspecting(self, cid: str) -> Iterator[None]:
        with self.lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if cid in self.held:
                self.released.wait(30)
            yield
        finally:
            with self.lock:
                self.in_flight -= 1

    def start_slow_then_quick(self, network: str, quick: int) -> None:
        """Start ``slow`` (``<network>.99``), whose inspection is held until ``released``,
        then ``quick0``... (``<network>.1``...), each inspected at once."""
        slow = "5" * 64
        self.containers[slow] = container(slow, "slow", f"{network}.99")
        self.held.add(slow)
        self.emit("start", slow)
        for i in range(quick):
            cid = f"{i:064x}"
            self.containers[cid] = container(cid, f"quick{i}", f"{network}.{i + 1}")
            self.emit("start", cid)

    def running(self) -> list[dict[str, Any]]:
        return [c for c in self.containers.values() if (c.get("State") or {}).get("Running")]

    @staticmethod
    def list_entry(attrs: dict[str, Any]) -> dict[str, Any]:
        """The /containers/json entry dockerd gives for ``attrs`` (no hostname, no aliases)."""
        settings = attrs.get("NetworkSettings") or {}
        ports = []
        for key, bindings in (settings.get("Ports") or {}).items():
            number, _, proto = key.partition("/")
            for binding in bindings or [{}]:
                port = {"PrivatePort": int(number), "Type": proto or "tcp"}
                if binding.get("HostPort"):
                    port.update(IP=binding.get("HostIp", ""), PublicPort=int(binding["HostPort"]))
                ports.append(port)
        health = ((attrs.get("State") or {}).get("Health") or {}).get("Status")
        return {
            "Id": attrs["Id"],
            "Names": [attrs.get("Name", "")],
            "Created": 1_790_000_000,
            "State": "running",
            "Status": "Up 1 second" + (f" ({health})" if health else ""),
            "Ports": ports,
            "Labels": (attrs.get("Config") or {}).get("Labels") or {},
            "NetworkSettings": {
                "Networks": {
                    name: dict(network, Aliases=None)
                    for name, network in (settings.get("Networks") or {}).items()
                }
            },
        }

    def subscriber_count(self) -> int:
        with self.lock:
            return len(self.subscribers)

    def emit(self, action: str, cid: str, kind: str = "container") -> None:
        attributes = {"name": self.containers.get(cid, {}).get("Name", "").lstrip("/")}
        if kind == "network":
            attributes["container"] = cid
        event = {
            "Type": kind,
            "Action": action,
            "Actor": {"ID": cid if kind == "container" else "net", "Attributes": attributes},
        }
        with self.lock:
            for feed in self.subscribers:
                feed.put(event)

    def end_streams(self) -> None:
        """Like a daemon going away: every event stream just ends."""
        with self.lock:
            for feed in self.subscribers:
                feed.put(None)
