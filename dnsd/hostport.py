"""``ADDR[:PORT]`` as written in settings and flags (listen addresses, upstreams, endpoints).

A leaf: the settings (``config``), the forwarder and the command-line tools all parse
addresses the same way, and none of them needs the others for it.
"""

from __future__ import annotations

import ipaddress


def format_hostport(host: str, port: int) -> str:
    """(host, port) as ``ADDR:PORT``, an IPv6 address in brackets: ``[::1]:53``."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_hostport(text: str, default_port: int) -> tuple[str, int]:
    """``1.2.3.4``, ``1.2.3.4:53``, ``::1``, ``[::1]:53`` -> (host, port)."""
    text = text.strip()
    host, port_text = text, ""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":") if rest.startswith(":") else rest
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        name_like = host and all(c.isalnum() or c in "-." for c in host)
        if name_like and not all(part.isdigit() for part in host.split(".")):
            raise ValueError(
                f"{text!r}: only IP addresses are accepted (ADDR[:PORT]), not a host name"
            ) from None
        raise ValueError(f"not an ADDR[:PORT]: {text!r}") from None
    try:
        port = int(port_text) if port_text else default_port
    except ValueError:
        raise ValueError(f"not an ADDR[:PORT]: {text!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range: {text!r}")
    return host, port
