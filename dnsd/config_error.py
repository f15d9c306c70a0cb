"""The one error of bad settings, shared by the config loader and the sources that read
settings files of their own (static records, hosts files)."""

from dnsd.errors import DnsdError


class ConfigError(DnsdError):
    """A configuration problem; the message names the key (or file and line) and its origin."""
