"""dnsd: DNS service discovery for containers."""

__version__ = "0.1.0"
