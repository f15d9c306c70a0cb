"""Making etcd clients: endpoints, TLS, credentials and the gRPC keepalive that detects a
frozen member.  Shared by the etcd mirror (reader) and the publisher (writer)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class EtcdConnection:
    """Where etcd is and how to log in: the ``[etcd]`` section's connection keys."""

    endpoints: list[str]
    ca: str = ""  # set: TLS
    cert: str = ""
    key: str = ""
    user: str = ""
    password: str = ""


ETCD_TIMEOUT_S = 5
# A member that stops answering (SIGSTOP, a partition) is noticed by gRPC keepalive pings;
# without them a watch on it would hang forever.
KEEPALIVE_OPTIONS = [
    ("grpc.keepalive_time_ms", 5000),
    ("grpc.keepalive_timeout_ms", 1500),
    ("grpc.http2.ping_timeout_ms", 1500),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # Lists are read in pages well under gRPC's 4 MB default; a watch reply gathering many
    # revisions of big values may not be, so replies up to this size are taken.
    ("grpc.max_receive_message_length", 64 * 2**20),
]
FAILED_MEMBER_RETRY_S = 2.0


def _host_port(endpoint: str) -> tuple[str, int]:
    text = endpoint.split("://", 1)[-1].rstrip("/")
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
    else:
        host, _, port = text.rpartition(":")
    return host, int(port or 2379)


def make_client(settings: EtcdConnection) -> Any:
    import grpc
    import pyetcd

    secure = bool(settings.ca)
    creds = None
    if secure:

        def read(path: str) -> bytes | None:
            if not path:
                return None
            with open(path, "rb") as handle:
                return handle.read()

        creds = grpc.ssl_channel_credentials(
            read(settings.ca), read(settings.key), read(settings.cert)
        )
    endpoints = [
        pyetcd.Endpoint(
            host, port, secure=secure, creds=creds, time_retry=FAILED_MEMBER_RETRY_S,
            opts=KEEPALIVE_OPTIONS,
        )
        for host, port in map(_host_port, settings.endpoints)
    ]  # fmt: skip
    return pyetcd.MultiEndpointEtcd3Client(
        endpoints=endpoints,
        timeout=ETCD_TIMEOUT_S,
        user=settings.user or None,
        password=settings.password or None,
        failover=True,
    )
