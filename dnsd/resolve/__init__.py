"""Readers of the record store: local zone -> forwarding cache -> upstream forwarder."""
