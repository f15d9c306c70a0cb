"""A TCP forwarder on 127.0.0.1 that can be cut like a network partition: while cut, bytes
stop flowing both ways (connections stay open, as a dropped link looks to gRPC keepalive) and
new connections are held unanswered; ``heal`` closes the stalled connections and forwards
again.  Gives one dnsd "host" its own path to etcd."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

from testbed.dnsd import free_port


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.cut = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        while self.cut.is_set() and not self._closed:  # a partition: no answer at all
            time.sleep(0.05)
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        with self._lock:
            self._sockets += [client, upstream]
        for source, sink in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                while self.cut.is_set() and not self._closed:  # held: the link is down
                    time.sleep(0.05)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def partition(self) -> None:
        self.cut.set()

    def heal(self) -> None:
        """Forward again; the connections that stalled are closed (their peers reconnect)."""
        with self._lock:
            stalled, self._sockets = self._sockets, []
        for sock in stalled:
            with contextlib.suppress(OSError):
                sock.close()
        self.cut.clear()

    def close(self) -> None:
        self._closed = True
        self.cut.clear()
        with contextlib.suppress(OSError):
            self._listener.close()
        self.heal()
