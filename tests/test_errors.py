"""Why a source lost etcd, in words: raw gRPC text never reaches /ready or the log."""

from __future__ import annotations

from types import SimpleNamespace

import grpc
import pytest

from dnsd.sources.errors import explain
from dnsd.sources.etcd import describe


class FakeRpcError(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(
    ("code", "details", "words"),
    [
        (grpc.StatusCode.UNAVAILABLE,
         "Stream removed (Socket closed (GOAWAY received; Error code: 0; Debug Data: ))",
         "the member closed the connection (restarting or shutting down)"),
        (grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; last error: ...",
         "no connection could be made"),
        (grpc.StatusCode.UNAVAILABLE, "keepalive watchdog timeout",
         "the member stopped answering keepalive pings (frozen or cut off)"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "", "the member did not answer in time"),
        (grpc.StatusCode.INVALID_ARGUMENT,
         "etcdserver: authentication failed, invalid user ID or password",
         "etcd refused the request: authentication failed, invalid user ID or password"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "grpc: received message larger than max",
         "a reply was over the gRPC message limit"),
    ],
)  # fmt: skip
def test_grpc_errors_in_words(code: grpc.StatusCode, details: str, words: str) -> None:
    assert explain(FakeRpcError(code, details)) == words


def test_the_endpoint_is_named() -> None:
    client = SimpleNamespace(endpoint_in_use=SimpleNamespace(netloc="10.0.0.5:2379"))
    error = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "Socket closed")
    assert describe(error, client) == "the connection was closed (10.0.0.5:2379)"
    assert describe(ConnectionRefusedError(111, "Connection refused"), None) == (
        "cannot connect: Connection refused"
    )


def test_dnsd_errors_share_one_base() -> None:
    from dnsd.config_error import ConfigError
    from dnsd.daemon import StartupError
    from dnsd.errors import DnsdError
    from dnsd.register import RegistrationError
    from dnsd.resolve.dot import DotError
    from dnsd.resolve.forward import UpstreamError

    for error in (ConfigError, StartupError, RegistrationError, DotError, UpstreamError):
        assert issubclass(error, DnsdError), error
    assert issubclass(RegistrationError, ValueError)  # callers catching ValueError still do
    assert issubclass(DotError, ConnectionError)
