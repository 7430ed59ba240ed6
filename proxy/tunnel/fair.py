"""The order in which requests waiting for a busy deployment get a slot: fair across orgs, then
across each org's keys, first come first served within a key.

Two-level start-time fair queueing with a cost of one per request. Each org that has requests
waiting holds a tag; the org with the lowest tag is served next, and serving it moves its tag on by
one. An org that starts waiting gets the deployment's virtual time (the tag served last), or the
tag it would have had next if it was served a moment ago, whichever is later: it joins the current
round, it neither jumps ahead of orgs that have been waiting nor inherits credit for the time it
sent nothing. Within the org chosen, its keys take turns the same way, and each key's requests go
in arrival order. Equal tags go to whoever started waiting first.

So with two slots, an org flooding the deployment gets one turn in two while another org waits,
and that org waits for one slot's turn, not behind the flood; inside one org, a key that floods
cannot starve the org's other keys.

Pure data, no clock and no I/O: the embedded server keeps one per deployment in memory, and with
Redis the same object is loaded from and stored back to one key per deployment in a transaction
(proxy/tunnel/queue.py), so that both modes run this one implementation.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

# Finish tags of flows that stopped waiting are remembered only while they could matter; past this
# many the oldest are forgotten (such a flow merely rejoins at the current virtual time).
MAX_REMEMBERED = 4096


@dataclass(slots=True)
class Ticket:
    """One waiting request: who sent it, until when it waits, and where its grant goes."""

    rid: str
    org: int
    key: int
    deadline: float  # wall clock (time.time()): processes compare it across machines' clocks
    reply: str = ""  # the waiting process's channel (Redis mode)
    process: str = ""  # the waiting process's lease (Redis mode)
    seq: int = 0  # arrival order, set by the queue


@dataclass(slots=True)
class _Key:
    tag: int
    since: int  # the seq at which it started waiting: the tie-break
    fifo: deque[str] = field(default_factory=deque)


@dataclass(slots=True)
class _Org:
    tag: int
    since: int
    clock: int = 0  # the virtual time among this org's keys
    count: int = 0  # requests waiting
    keys: dict[int, _Key] = field(default_factory=dict)
    finished: dict[int, int] = field(default_factory=dict)  # key → the tag it would have had next


class FairQueue:
    def __init__(self) -> None:
        self.seq = 0
        self.clock = 0  # the deployment's virtual time: the org tag served last
        self.orgs: dict[int, _Org] = {}  # orgs with requests waiting
        self.finished: dict[int, int] = {}  # org → the tag it would have had next
        self.tickets: dict[str, Ticket] = {}  # in arrival order

    def __len__(self) -> int:
        return len(self.tickets)

    def __contains__(self, rid: object) -> bool:
        return rid in self.tickets

    # --- changes ----------------------------------------------------------------------------------

    def push(self, ticket: Ticket) -> None:
        """Add a request at the end of its key's line. The caller bounds the depth."""
        if ticket.rid in self.tickets:
            raise ValueError(f"request {ticket.rid} is already waiting")
        ticket.seq = self.seq
        self.seq += 1
        org = self.orgs.get(ticket.org)
        if org is None:
            tag = max(self.clock, self.finished.pop(ticket.org, self.clock))
            org = self.orgs[ticket.org] = _Org(tag=tag, since=ticket.seq)
        key = org.keys.get(ticket.key)
        if key is None:
            tag = max(org.clock, org.finished.pop(ticket.key, org.clock))
            key = org.keys[ticket.key] = _Key(tag=tag, since=ticket.seq)
        key.fifo.append(ticket.rid)
        org.count += 1
        self.tickets[ticket.rid] = ticket

    def pop(self, now: float) -> Ticket | None:
        """The request to serve next (requests past their deadline are dropped first)."""
        for ticket in [t for t in self.tickets.values() if t.deadline <= now]:
            self.remove(ticket.rid)
        if not self.orgs:
            return None
        org_id = min(self.orgs, key=lambda o: (self.orgs[o].tag, self.orgs[o].since))
        org = self.orgs[org_id]
        key_id = min(org.keys, key=lambda k: (org.keys[k].tag, org.keys[k].since))
        key = org.keys[key_id]
        ticket = self.tickets.pop(key.fifo.popleft())
        org.count -= 1

        org.clock = key.tag
        if key.fifo:
            key.tag += 1
        else:
            del org.keys[key_id]
            org.finished[key_id] = key.tag + 1
        _forget_past(org.finished, org.clock)

        self.clock = org.tag
        if org.count:
            org.tag += 1
        else:
            del self.orgs[org_id]
            self.finished[org_id] = org.tag + 1
        _forget_past(self.finished, self.clock)
        return ticket

    def remove(self, rid: str) -> bool:
        """Take a request out of the line (it left, or its time was up); False if not waiting."""
        ticket = self.tickets.pop(rid, None)
        if ticket is None:
            return False
        org = self.orgs[ticket.org]
        key = org.keys[ticket.key]
        key.fifo.remove(rid)
        org.count -= 1
        if not key.fifo:
            del org.keys[ticket.key]
        if not org.count:
            del self.orgs[ticket.org]
        return True

    def remove_process(self, process: str) -> int:
        """Drop every request a (dead) process left waiting; how many there were."""
        gone = [t.rid for t in self.tickets.values() if t.process == process]
        for rid in gone:
            self.remove(rid)
        return len(gone)

    # --- reading ----------------------------------------------------------------------------------

    def position(self, rid: str) -> int:
        """1 for the request served next, and so on, if nobody else arrives or leaves; 0 if it is
        not waiting. Exact: each key's and each org's turns come at consecutive tags, so counting
        the turns of the others that fall before this request's turn is enough."""
        ticket = self.tickets.get(rid)
        if ticket is None:
            return 0
        org = self.orgs[ticket.org]
        key = org.keys[ticket.key]
        # Its turn among its org's requests...
        at = key.tag + key.fifo.index(rid)
        ahead = at - key.tag
        for other_id, other in org.keys.items():
            if other_id != ticket.key:
                ahead += _turns_before(other.tag, len(other.fifo), other.since < key.since, at)
        # ...which is its org's turn at tag org.tag + ahead, among the other orgs' turns.
        at = org.tag + ahead
        for other_id, other_org in self.orgs.items():
            if other_id != ticket.org:
                ahead += _turns_before(other_org.tag, other_org.count, other_org.since < org.since, at)
        return ahead + 1

    # --- storage (Redis mode) ---------------------------------------------------------------------

    def dump(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "clock": self.clock,
            "finished": list(self.finished.items()),
            "orgs": [
                [org_id, org.tag, org.since, org.clock, list(org.finished.items())] for org_id, org in self.orgs.items()
            ],
            "keys": [
                [org_id, key_id, key.tag, key.since]
                for org_id, org in self.orgs.items()
                for key_id, key in org.keys.items()
            ],
            "tickets": [[t.rid, t.org, t.key, t.deadline, t.reply, t.process, t.seq] for t in self.tickets.values()],
        }

    @classmethod
    def load(cls, data: dict[str, Any]) -> FairQueue:
        queue = cls()
        queue.seq = int(data["seq"])
        queue.clock = int(data["clock"])
        queue.finished = {int(o): int(f) for o, f in data["finished"]}
        for org_id, tag, since, clock, finished in data["orgs"]:
            queue.orgs[int(org_id)] = _Org(
                tag=int(tag), since=int(since), clock=int(clock), finished={int(k): int(f) for k, f in finished}
            )
        for org_id, key_id, tag, since in data["keys"]:
            queue.orgs[int(org_id)].keys[int(key_id)] = _Key(tag=int(tag), since=int(since))
        for rid, org_id, key_id, deadline, reply, process, seq in data["tickets"]:
            ticket = Ticket(str(rid), int(org_id), int(key_id), float(deadline), str(reply), str(process), int(seq))
            queue.tickets[ticket.rid] = ticket
            org = queue.orgs[ticket.org]
            org.keys[ticket.key].fifo.append(ticket.rid)
            org.count += 1
        return queue


def _turns_before(tag: int, count: int, wins_ties: bool, at: int) -> int:
    """How many of a flow's `count` turns, at tags tag, tag+1, ..., come before a turn at `at`."""
    before = min(max(0, at - tag), count)
    if wins_ties and tag <= at < tag + count:
        before += 1
    return before


def _forget_past(finished: dict[int, int], clock: int) -> None:
    """A finish tag at or below the virtual time no longer changes anything: max(clock, tag) = clock."""
    for flow in [flow for flow, tag in finished.items() if tag <= clock]:
        del finished[flow]
    while len(finished) > MAX_REMEMBERED:
        del finished[min(finished, key=finished.__getitem__)]
