"""DNS protocol constants, written once: response codes, header flags, sizes and name limits
(RFC 1035, RFC 6891).  A leaf: every layer may read it."""

# Response codes (RFC 1035 4.1.1; BADVERS is EDNS's extended code, RFC 6891): the resolver
# decides them, the wire layer only packs them.
RCODE_NOERROR = 0
RCODE_FORMERR = 1
RCODE_SERVFAIL = 2
RCODE_NXDOMAIN = 3
RCODE_NOTIMP = 4
RCODE_REFUSED = 5
EDNS_BADVERS = 16

# Header flag bits (RFC 1035 4.1.1), as a 16-bit word.
FLAG_QR = 0x8000
FLAG_AA = 0x0400
FLAG_TC = 0x0200
FLAG_RD = 0x0100
FLAG_RA = 0x0080
OPCODE_MASK = 0x7800

QTYPE_ANY = 255

# EDNS options (RFC 6891 6.1.2) dnsd checks: a COOKIE is a client cookie of 8 bytes, with a
# server cookie of 8 to 32 after it (RFC 7873 4); any other length is FORMERR (5.2.2).
EDNS_OPTION_COOKIE = 10
COOKIE_LENGTHS = frozenset({8, *range(16, 41)})

HEADER_LEN = 12
CLASSIC_UDP_SIZE = 512  # a reply to a query without EDNS fits this (RFC 1035)
MAX_TCP_SIZE = 65535  # a TCP message's two-byte length

# The fewest bytes one record takes in a message: a compressed owner name (2), type, class,
# TTL and RDATA length (10): no more than limit // this many records can ever fit.
MIN_RECORD_BYTES = 12
# The most records of one RRset an answer is built from (a name holding more, from etcd or a
# wildcard, is answered with a rotating window of this many): a TCP message holds at most
# about 4,000 A records, a UDP one about 75, and each record built costs the event loop.
MAX_ANSWER_RECORDS = 1000

MAX_TTL = 2**31 - 1  # a TTL is 0 .. 2^31 - 1 seconds (RFC 2181 8)

MAX_LABEL_BYTES = 63
MAX_NAME_WIRE_BYTES = 255  # on the wire: length bytes and the root label included
MAX_NAME_TEXT_LEN = 253  # the same limit in presentation form, without the trailing dot
