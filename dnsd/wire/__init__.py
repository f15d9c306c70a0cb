"""The only code that touches bytes and sockets: codec, packed-answer cache, UDP, TCP."""
