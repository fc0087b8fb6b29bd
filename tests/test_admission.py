"""The pure rules of admission and supervision: seats by role and peer, refusals logged once a minute,
loops restarted when they fail."""

from __future__ import annotations

import collections
import logging

from hypothesis import given, settings
from hypothesis import strategies as st

from farm.auth import NODE, SUBMIT, VIEW
from farm.server.admission import Connection, Quotas, Refusals, Seats, pushed_out, seat_role
from farm.server.supervise import Supervisor

ROLES = st.sampled_from([NODE, SUBMIT, VIEW])
PEERS = st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.0.3"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), ROLES, PEERS, st.booleans()), max_size=300),
       st.integers(1, 40), st.integers(0, 15), st.integers(0, 15), st.integers(1, 10), st.integers(1, 10),
       st.integers(1, 5))
def test_seats_never_pass_a_cap_and_nodes_keep_theirs(ops, held, submit, view, peer, streams, peer_streams):
    quotas = Quotas(held=held, role_held=((SUBMIT, submit), (VIEW, view)), peer_held=peer, streams=streams,
                    peer_streams=peer_streams)
    seats, taken = Seats(quotas), []
    for opening, role, address, stream in ops:
        if opening:
            if seats.refusal(role, address, stream) is None:
                seats.take(role, address, stream)
                taken.append((role, address, stream))
        elif taken:
            seats.give_back(*taken.pop(0))
        assert seats.total <= held and seats.streams <= streams
        assert all(seats.by_role[r] <= quotas.role_cap(r) for r in (NODE, SUBMIT, VIEW))
        assert all(count <= peer for (r, _), count in seats.by_peer.items() if r != NODE)
        assert all(count <= peer_streams for count in seats.streams_by_peer.values())
    if held > submit + view and seats.by_role[NODE] < quotas.role_cap(NODE) and seats.total < held:
        assert seats.refusal(NODE, "10.9.9.9") is None      # readers and submitters never take the nodes' seats


def test_nodes_behind_one_address_are_not_capped_per_peer():
    seats = Seats(Quotas(held=1000, peer_held=4))
    for _ in range(100):
        assert seats.refusal(NODE, "192.0.2.1") is None
        seats.take(NODE, "192.0.2.1")
    for _ in range(4):
        seats.take(VIEW, "192.0.2.1")
    assert "one address" in seats.refusal(VIEW, "192.0.2.1")
    assert seats.refusal(VIEW, "192.0.2.2") is None


def admitted(arrivals: list[str], quotas: Quotas) -> tuple[list[Connection], list[Connection]]:
    """Connections from these peers arriving in turn, none seated yet: (still pending, pushed out)."""
    pending: collections.OrderedDict[Connection, None] = collections.OrderedDict()
    per_peer: collections.Counter[str] = collections.Counter()
    gone = []
    for peer in arrivals:
        victim = pushed_out(pending, per_peer, peer, quotas)
        if victim is not None:
            del pending[victim]
            per_peer[victim.peer] -= 1
            gone.append(victim)
        pending[Connection(None, peer, 0.0)] = None
        per_peer[peer] += 1
    return list(pending), gone


@settings(max_examples=200, deadline=None)
@given(st.lists(PEERS, max_size=200), st.integers(1, 30), st.integers(1, 30))
def test_the_pending_pool_is_bounded_and_shared_fairly_only_when_full(arrivals, size, share):
    quotas = Quotas(pending=size, pending_per_peer=share)
    pending, gone = admitted(arrivals, quotas)
    assert len(pending) == min(len(arrivals), size) and len(gone) == max(0, len(arrivals) - size)
    newest = collections.Counter(arrivals[-size:] if size else [])
    for peer in set(arrivals):      # the last arrivals keep their place, up to their address's share
        assert sum(1 for c in pending if c.peer == peer) >= min(newest[peer], share)


def test_a_burst_from_one_address_is_not_cut_while_the_pool_has_room():
    pending, gone = admitted(["10.0.0.1"] * 600, Quotas(pending=1024, pending_per_peer=256))
    assert len(pending) == 600 and gone == []
    pending, gone = admitted(["10.0.0.1"] * 1024 + ["10.0.0.2"] * 10, Quotas(pending=1024, pending_per_peer=256))
    assert [c.peer for c in gone] == ["10.0.0.1"] * 10 and sum(c.peer == "10.0.0.2" for c in pending) == 10


def test_a_token_is_seated_as_its_most_important_role():
    assert seat_role({"view", "submit", "node"}) == NODE
    assert seat_role({"view", "submit"}) == SUBMIT
    assert seat_role({"view"}) == VIEW


def test_refusals_are_logged_once_per_peer_per_period(caplog):
    now = [0.0]
    refusals = Refusals(period=60, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, "farm.server.admission"):
        for second in range(0, 130):
            now[0] = float(second)
            refusals.note("10.0.0.1", "full")
            refusals.note("10.0.0.2", "full")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 6     # at 0, 60 and 120 s for each peer
    assert "refused 60 connection(s) from 10.0.0.1" in lines[2]
    assert refusals.counts["full"] == 260


def test_a_failing_loop_is_restarted_and_given_up_on_when_it_keeps_failing():
    runs, given_up = [], []

    def loop():
        runs.append(1)
        if len(runs) < 3:
            raise ValueError("a socket closed meanwhile")
    supervisor = Supervisor(sleep=lambda _: None, give_up=given_up.append)
    supervisor.run("lobby", loop)
    assert len(runs) == 3 and not given_up and supervisor.restarts == {"lobby": 2}

    def broken():
        raise RuntimeError("for good")
    supervisor = Supervisor(max_failures=5, sleep=lambda _: None, give_up=given_up.append)
    supervisor.run("reaper", broken)
    assert given_up == ["reaper"] and supervisor.restarts["reaper"] == 6
