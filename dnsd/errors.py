"""dnsd's own exceptions share one base, so a caller can tell dnsd's errors (each saying in
words what went wrong) from a library's or a bug.  A leaf: every layer may import it.

- ``ConfigError`` (``dnsd.config_error``): bad settings; exit code 2.
- ``StartupError`` (``dnsd.daemon``): dnsd cannot start as configured; exit code 2.
- ``RegistrationError`` (``dnsd.register``): a name ``dnsd register`` will not publish.
- ``UpstreamError`` (``dnsd.resolve.forward``), ``DotError`` (``dnsd.resolve.dot``): an
  upstream gave no usable reply.
"""

from __future__ import annotations


class DnsdError(Exception):
    """An error dnsd raises on purpose; its message is meant for the operator."""


class StartupError(DnsdError):
    """dnsd cannot start as configured (a busy port; the message says why)."""
