"""The resolver chain against the robustness runs' model (tests/robustness/model.py): after
any sequence of changes to the store, every answer is the model's.  The history checker uses
the same model, so what it calls right is what these properties pin down."""

from __future__ import annotations

import asyncio

from dnslib import QTYPE, RR, A
from hypothesis import given, settings
from hypothesis import strategies as st
from robustness.model import (
    NOERROR,
    OUTSIDE,
    TYPES,
    ZONE,
    Reply,
    Row,
    Value,
    expected,
    upstream_address,
)

from dnsd.protocol import RCODE_NOERROR
from dnsd.record import Record
from dnsd.records import RecordStore
from dnsd.resolve.acl import Acl
from dnsd.resolve.answer import Answer
from dnsd.resolve.cache import ForwardCache
from dnsd.resolve.chain import standard_chain
from dnsd.resolve.local import LocalZone
from dnsd.stats import Stats

NAMES = [f"e{i}.{ZONE}" for i in range(4)]
LEAVES = [f"t{i}.{ZONE}" for i in range(2)]
OUTSIDE_NAMES = [f"x{i}.{OUTSIDE}" for i in range(2)]


class ScriptedUpstream:
    """The model's upstream: an A record for each outside name, whatever the type."""

    async def resolve(self, qname: str, qtype: int, qclass: int) -> Answer:
        await asyncio.sleep(0)
        rr = RR(qname, QTYPE.A, ttl=300, rdata=A(upstream_address(qname)))
        return Answer(RCODE_NOERROR, rrsets=[[rr]], recursive=True, wire_size=64)


def _values(name: str) -> st.SearchStrategy[Value | None]:
    ttls = st.sampled_from((5, 30, 300))
    if name in LEAVES:
        return st.none() | st.builds(Value, st.just("A"), st.just("10.78.0.1"), ttls)
    return (
        st.none()
        | st.builds(Value, st.just("A"), st.sampled_from(["10.77.0.1", "10.77.0.2"]), ttls)
        | st.builds(Value, st.just("AAAA"), st.just("fd00::77:1"), ttls)
        | st.builds(Value, st.just("TXT"), st.sampled_from(["v1", "v2"]), ttls)
        | st.builds(Value, st.just("CNAME"), st.sampled_from(LEAVES + OUTSIDE_NAMES), ttls)
    )


changes = st.lists(
    st.sampled_from(NAMES + LEAVES).flatmap(lambda n: st.tuples(st.just(n), _values(n))),
    max_size=12,
)


def _rows(answer: Answer) -> Reply:
    in_zone = all(str(rr.rname).lower().endswith(ZONE) for rs in answer.rrsets for rr in rs)
    rows: list[Row] = []
    for rrset in answer.rrsets:
        for rr in rrset:
            rtype = QTYPE[rr.rtype]
            if rtype == "TXT":
                data = b"".join(rr.rdata.data).decode()
            elif rtype == "CNAME":
                data = str(rr.rdata.label).lower()
            else:
                data = str(rr.rdata)
            rows.append((rtype, data, rr.ttl if in_zone else None))
    rcode = {0: NOERROR, 3: "NXDOMAIN"}.get(answer.rcode, str(answer.rcode))
    return Reply.of(rcode, rows)


def _record(name: str, value: Value) -> Record:
    data = (value.data,) if value.rtype == "TXT" else value.data
    return Record(name, value.rtype, data, value.ttl)


@settings(max_examples=150, deadline=None)
@given(changes)
def test_every_answer_is_the_models(writes: list[tuple[str, Value | None]]) -> None:
    store = RecordStore()
    acl = Acl(["127.0.0.0/8"])
    forward = ForwardCache(ScriptedUpstream(), Stats())
    chain = standard_chain(LocalZone(store, [ZONE]), forward, acl)
    state: dict[str, Value] = {}

    async def ask(name: str, qtype: str) -> Answer:
        result = chain.resolve(name, getattr(QTYPE, qtype), 1, name, "127.0.0.1")
        return result if isinstance(result, Answer) else await result

    async def run() -> None:
        for name, value in writes:
            store.replace_owner("prop", name, [] if value is None else [_record(name, value)])
            if value is None:
                state.pop(name, None)
            else:
                state[name] = value
            for asked in NAMES + LEAVES:
                for qtype in TYPES:
                    got = _rows(await ask(asked, qtype))
                    assert got == expected(state, asked, qtype), (asked, qtype, state)

    asyncio.run(run())


@settings(max_examples=150, deadline=None)
@given(changes)
def test_an_answer_completed_after_a_change_is_the_changed_states(
    writes: list[tuple[str, Value | None]],
) -> None:
    """Every question is asked, then one change is made while the questions that went
    upstream wait: those answer as the state after the change, the others (local, or in the
    forwarding cache) as before it."""
    store = RecordStore()
    chain = standard_chain(
        LocalZone(store, [ZONE]), ForwardCache(ScriptedUpstream(), Stats()), Acl(["127.0.0.0/8"])
    )
    state: dict[str, Value] = {}
    questions = [(name, qtype) for name in NAMES + LEAVES for qtype in TYPES]

    async def run() -> None:
        for name, value in writes:
            before = dict(state)
            pending = {}
            for asked, qtype in questions:
                result = chain.resolve(asked, getattr(QTYPE, qtype), 1, asked, "127.0.0.1")
                if isinstance(result, Answer):
                    assert _rows(result) == expected(before, asked, qtype)
                else:
                    pending[(asked, qtype)] = asyncio.ensure_future(result)
            await asyncio.sleep(0)  # those the forwarding cache had are done; others wait
            for (asked, qtype), task in list(pending.items()):
                if task.done():
                    assert _rows(task.result()) == expected(before, asked, qtype)
                    del pending[(asked, qtype)]
            store.replace_owner("prop", name, [] if value is None else [_record(name, value)])
            if value is None:
                state.pop(name, None)
            else:
                state[name] = value
            for (asked, qtype), task in pending.items():
                got = _rows(await task)
                assert got == expected(state, asked, qtype), (asked, qtype, before, state)

    asyncio.run(run())
