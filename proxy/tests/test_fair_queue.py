"""The fair scheduler of a busy deployment's queue (proxy/tunnel/fair.py): pure and deterministic,
so each test pushes tickets and reads the order they come out in."""

from __future__ import annotations

import random

import pytest

from proxy.tunnel.fair import FairQueue, Ticket

LATER = 1e12  # a deadline no test reaches


def push(queue: FairQueue, rid: str, org: int, key: int, deadline: float = LATER) -> None:
    queue.push(Ticket(rid, org, key, deadline))


def drain(queue: FairQueue, now: float = 0.0) -> list[str]:
    order = []
    while (ticket := queue.pop(now)) is not None:
        order.append(ticket.rid)
    return order


def test_one_org_one_key_is_first_come_first_served():
    queue = FairQueue()
    for i in range(5):
        push(queue, f"a{i}", org=1, key=1)

    assert drain(queue) == ["a0", "a1", "a2", "a3", "a4"]
    assert len(queue) == 0


def test_a_flooding_org_gets_one_turn_in_two_while_another_org_waits():
    queue = FairQueue()
    for i in range(6):
        push(queue, f"flood{i}", org=1, key=1)
    push(queue, "light0", org=2, key=2)
    push(queue, "light1", org=2, key=2)

    assert drain(queue) == ["flood0", "light0", "flood1", "light1", "flood2", "flood3", "flood4", "flood5"]


def test_an_org_that_arrives_behind_a_flood_is_served_next_not_after_it():
    queue = FairQueue()
    for i in range(100):
        push(queue, f"flood{i}", org=1, key=1)
    assert queue.pop(0).rid == "flood0"
    assert queue.pop(0).rid == "flood1"

    push(queue, "light", org=2, key=2)

    assert queue.position("light") == 1
    assert queue.pop(0).rid == "light"


def test_inside_one_org_a_flooding_key_cannot_starve_the_org_s_other_key():
    queue = FairQueue()
    for i in range(4):
        push(queue, f"heavy{i}", org=1, key=10)
    push(queue, "other", org=1, key=11)

    assert drain(queue) == ["heavy0", "other", "heavy1", "heavy2", "heavy3"]


def test_orgs_share_first_then_keys_within_an_org():
    queue = FairQueue()
    # Org 1 has two keys with two requests each; org 2 has one key with four.
    for rid, key in (("k1a", 10), ("k1b", 10), ("k2a", 11), ("k2b", 11)):
        push(queue, rid, org=1, key=key)
    for i in range(4):
        push(queue, f"o2_{i}", org=2, key=20)

    # Orgs alternate; inside org 1 its keys alternate.
    assert drain(queue) == ["k1a", "o2_0", "k2a", "o2_1", "k1b", "o2_2", "k2b", "o2_3"]


def test_an_org_that_was_just_served_gets_no_head_start_by_leaving_and_coming_back():
    queue = FairQueue()
    for i in range(4):
        push(queue, f"a{i}", org=1, key=1)
    push(queue, "b0", org=2, key=2)
    assert queue.pop(0).rid == "a0"
    assert queue.pop(0).rid == "b0"  # org 2 now waits for nothing

    push(queue, "b1", org=2, key=2)  # and comes straight back

    # It rejoins the round where it left it: after org 1's turn, not before.
    assert drain(queue) == ["a1", "b1", "a2", "a3"]


def test_requests_past_their_deadline_are_dropped_not_served():
    queue = FairQueue()
    push(queue, "stale", org=1, key=1, deadline=10.0)
    push(queue, "fresh", org=2, key=2, deadline=100.0)

    assert queue.pop(now=50.0).rid == "fresh"
    assert queue.pop(now=50.0) is None
    assert len(queue) == 0


def test_a_request_that_leaves_is_gone_and_the_rest_keep_their_order():
    queue = FairQueue()
    for i in range(3):
        push(queue, f"a{i}", org=1, key=1)
    push(queue, "b0", org=2, key=2)

    assert queue.remove("a1") is True
    assert queue.remove("a1") is False
    assert queue.remove("never") is False

    assert drain(queue) == ["a0", "b0", "a2"]


def test_a_dead_process_s_requests_are_dropped_together():
    queue = FairQueue()
    queue.push(Ticket("x1", 1, 1, LATER, process="p-dead"))
    queue.push(Ticket("y1", 2, 2, LATER, process="p-alive"))
    queue.push(Ticket("x2", 1, 1, LATER, process="p-dead"))

    assert queue.remove_process("p-dead") == 2
    assert drain(queue) == ["y1"]


def test_the_same_request_cannot_wait_twice():
    queue = FairQueue()
    push(queue, "a", org=1, key=1)

    with pytest.raises(ValueError):
        push(queue, "a", org=1, key=1)


def test_position_is_the_place_the_request_is_served_in_when_nobody_else_comes():
    queue = FairQueue()
    for i in range(5):
        push(queue, f"flood{i}", org=1, key=1)
    push(queue, "light", org=2, key=2)

    assert [queue.position(f"flood{i}") for i in range(5)] == [1, 3, 4, 5, 6]
    assert queue.position("light") == 2
    assert queue.position("nobody") == 0


@pytest.mark.parametrize("seed", range(40))
def test_position_predicts_the_order_exactly_whatever_was_served_before(seed):
    """Random orgs, keys and arrivals, with some served and some leaving on the way: at any moment,
    the positions of everything waiting are exactly the order the queue then serves it in."""
    rng = random.Random(seed)
    queue = FairQueue()
    for step in range(rng.randint(5, 60)):
        roll = rng.random()
        if roll < 0.65 or not len(queue):
            push(queue, f"r{step}", org=rng.randint(1, 4), key=rng.randint(1, 3))
        elif roll < 0.9:
            queue.pop(0)
        else:
            queue.remove(rng.choice(list(queue.tickets)))

    predicted = sorted(queue.tickets, key=queue.position)
    assert sorted(queue.position(rid) for rid in queue.tickets) == list(range(1, len(queue) + 1))
    assert drain(queue) == predicted


@pytest.mark.parametrize("seed", range(10))
def test_a_queue_stored_and_loaded_again_serves_the_same_order(seed):
    """What Redis mode does on every change: dump, load, go on."""
    rng = random.Random(seed)
    queue = FairQueue()
    for step in range(50):
        if rng.random() < 0.7 or not len(queue):
            queue.push(Ticket(f"r{step}", rng.randint(1, 3), rng.randint(1, 3), LATER, "reply", "proc"))
        else:
            queue.pop(0)
    copy = FairQueue.load(queue.dump())

    assert [(t.rid, t.reply, t.process) for t in iter(lambda: copy.pop(0), None)] == [
        (t.rid, t.reply, t.process) for t in iter(lambda: queue.pop(0), None)
    ]


def test_a_long_stream_of_orgs_each_served_once_keeps_its_memory_bounded():
    queue = FairQueue()
    for org in range(20_000):
        push(queue, f"r{org}", org=org, key=org)
        queue.pop(0)

    assert len(queue.finished) <= 4096
