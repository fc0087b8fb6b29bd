"""How many rows of a frame the next unit renders: decided when a node asks, from what the farm measured.

A still (or each frame of an animation with fewer frames than slots) is not cut at submit. It is queued
as one *remainder* unit covering its rows; every lease cuts the next row range off the top of it, and the
last lease takes what is left. Cuts fall on multiples of the render block size, which keeps anti-aliased
strips bit-identical to a single render.

The size follows guided self-scheduling, weighted by node speed: each lease gets a third of its node's
share of the rows that remain, the share being the node's speed (per slot, times its slots) over that of
every live slot. So units are large while much is left and shrink toward the end. The share is the
node's, not the slot's: a node's slots share its cores, so when one slot runs out of work the others
get its cores, and cutting finer for them would only add POV-Ray start-ups. Why a third: rows ahead of
the cut have not been measured, and a band of a scene can cost several times the average (chess2's
pieces against its sky); a third of a share keeps a unit cut into such a band within the time the
others need for the rest.

- Before anything is measured, every slot gets a small probe (1/PROBE_SHARES of an even share), so a
  slow node cannot take a large unit of dear rows blind; a lone node needs no probe. (A preview is no
  substitute: it times the whole frame on one node, not its rows, and small first units also give
  viewers their first final rows early.)
- Node speeds are relative and learnt from the frame's finished units: a unit's cost per row at speed 1
  is guessed from its neighbours (the units just above and below, rendered by other nodes), and a node's
  speed is the median ratio of that guess to what it took; repeated a few times, this separates how fast
  a node is from how dear its rows were.
- The tail: when a node's fair share of what is left is smaller than the unit it would get, it declines
  (returns None) if another live slot that is busy now, counting the work it still has, would finish
  that unit clearly sooner. The last units go to fast nodes, and nothing starves: a node declines only
  while some unit is running, whose node asks again when it is done.
- A unit is never less than MIN_UNIT_SECONDS of work by the measured cost, nor less than OVERHEAD_RATIO
  times what each unit of the job costs its node besides tracing (POV-Ray's start-up, the parse, loading
  caches: the node measures it and says so with each result) unless that is more than the node's share of
  what is left, so a cheap scene, or one whose parse is dear, is not cut into pieces whose fixed cost
  outweighs their work: it gets fewer, larger units. Only where the rows just above the cut are measured:
  below rows still rendering the cost is read from rows further up, and a unit sized by a sky's cost that
  runs into a dear middle is one box's tail (stackertransp), so there the unit stays the guided third.
- One box, nobody watching: when every live slot is on the controller's own machine (the nodes report
  which kernel they run on) and no viewer watches the job, a whole frame's rows cost nothing to deliver
  (elsewhere they would go up after it, on an uplink that may be slow) and there is nothing to balance:
  the box's POV-Ray processes share its cores, so a process that ends early leaves its cores to the
  others. Cutting finer would only repeat POV-Ray's start-up, the parse and any radiosity cache load
  (measured on chess2 640x480, one node: 2 units 14.6 s, the guided plan's 7 units 14.8 s). So the frame
  goes out in as many units as it takes to keep the box's cores busy (`box_runs`: one when POV-Ray uses
  all cores, which is then a single render, radiosity and all), and other slots decline. Watched, the
  guided plan above gives the viewer fresh rows every few seconds, at that small cost.

- A sheared frame (farm.shear, the default for a frame cut as nodes ask): every row of its sheared image
  holds blocks from all over the frame, so its rows cost alike and none of the caution above is needed
  (`_even_cut`). Each POV-Ray run that keeps a node busy (`runs_to_keep_busy`: one where POV-Ray uses all
  its cores) gets a first unit of 1/FIRST_WAVE of an even share, then half its node's share of the rows
  left and in flight, by the measured speeds, or the whole share where half is worth less than a unit's
  start-up and parse: two to four units a node, where bands of rows took 10-14 on two boxes.

Pure: no SQL, no sockets, no clock. The store asks `next_cut` inside its leasing transaction.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Mapping, Sequence

# A POV-Ray process's fixed wall time as a node reports it: its start-up, 0.35-0.45 s measured here. Not its
# shut-down (0.3 s more): a unit ends with its image (farm/rendering/finished.py). Too much taken off a short
# unit's time makes its rows look free and the next node takes all that is left in one unit.
STARTUP_SECONDS = 0.4
MIN_UNIT_SECONDS = 1.5    # a unit should work at least this long, by the measured cost per row
OVERHEAD_RATIO = 4.0      # ...and at least this many times its node's fixed cost per unit (start-up, parse)
SHARES = 3                # a node's unit is 1/SHARES of its speed-weighted share of the rows left
# A sheared frame's rows (farm.shear), which cost alike (`_even_cut`):
FIRST_WAVE = 1.5          # its first units, before speeds are known: 1/FIRST_WAVE of an even share each
AHEAD_SECONDS = 3.0       # a node whose runs are all busy gets its next unit in their last seconds only
EVEN_SHARES = 2           # a unit is half its node's share, or the whole when half is not worth a unit
PROBE_SHARES = 8          # before anything is measured: 1/PROBE_SHARES of an even share per slot
DECLINE_MARGIN = 0.9      # decline only if another slot would finish in less than this part of the time
SPEED_ROUNDS = 6
SPLIT_ERROR = 0.04        # a split of a frame by known speeds at most this far from whole block rows per run
LEARNING = 0.5            # how far one sheared frame moves the node speeds the farm remembers (`learned_speeds`)


@dataclass(frozen=True)
class Finished:
    """A finished unit of the frame as the cost model sees it."""
    node: str
    row_start: int
    row_end: int
    seconds: float        # POV-Ray's wall time for it, as its node reported it
    # Where the seconds went by rows, when its node measured it (a radiosity pre-pass band's pretrace)
    parts: tuple[tuple[int, int, float], ...] = ()
    # The frame's rows it covered, when they are more than [row_start, row_end): a band of a folded pre-pass
    # (farm.radiosity.band_pieces)
    pieces: tuple[tuple[int, int], ...] = ()

    @property
    def rows(self) -> int:
        return self.row_end - self.row_start


@dataclass(frozen=True)
class Running:
    """A leased unit of the frame."""
    node: str
    rows: int
    progress: float       # 0..1, from the node's heartbeats


@dataclass(frozen=True)
class Model:
    """What the finished units say: relative node speeds (mean 1) and seconds per row at speed 1 near
    the cut."""
    speeds: Mapping[str, float]
    seconds_per_row: float

    def rate(self, node: str) -> float:
        """Rows per second the node renders near the cut."""
        return self.speeds.get(node, 1.0) / self.seconds_per_row


def _work(unit: Finished) -> float:
    return max(0.05, unit.seconds - STARTUP_SECONDS)


def node_speeds(finished: Sequence[Finished], rounds: int = SPEED_ROUNDS) -> tuple[dict[str, float], list[float]]:
    """Relative node speeds (mean 1 over the nodes measured) and each unit's seconds per row at speed 1."""
    order = sorted(finished, key=lambda unit: unit.row_start)
    nodes = [unit.node for unit in order]
    work = [_work(unit) for unit in order]
    rows = [unit.rows for unit in order]
    # Each unit's neighbours rendered by another node: the same in every round, so found once (a job's
    # status computes this for its ETA, several times a second while viewers watch a busy job).
    neighbours = [(index, [j for j in (index - 1, index + 1) if 0 <= j < len(order) and nodes[j] != node])
                  for index, node in enumerate(nodes)]
    neighbours = [(index, near) for index, near in neighbours if near]
    speeds = dict.fromkeys(nodes, 1.0)
    for _ in range(rounds):
        cost = [speeds[node] * seconds / count for node, seconds, count in zip(nodes, work, rows)]
        ratios: dict[str, list[float]] = {}
        for index, near in neighbours:
            mean = cost[near[0]] if len(near) == 1 else (cost[near[0]] + cost[near[1]]) / 2
            ratios.setdefault(nodes[index], []).append(mean * rows[index] / work[index])
        if not ratios:
            break
        estimates = {node: statistics.median(values) for node, values in ratios.items()}
        mean = statistics.fmean(estimates.values())
        speeds = {node: estimates.get(node, mean) / mean for node in speeds}
    return speeds, [speeds[node] * seconds / count for node, seconds, count in zip(nodes, work, rows)]


def model(finished: Sequence[Finished], cut: int, nearest: int = 3) -> Model | None:
    """The cost model from a frame's finished units, for rows just below `cut`; None with none."""
    if not finished:
        return None
    speeds, costs = node_speeds(finished)
    order = sorted(finished, key=lambda unit: unit.row_start)
    near = sorted(range(len(order)), key=lambda i: abs(order[i].row_end - cut))[:nearest]
    per_row = sum(costs[i] * order[i].rows for i in near) / sum(order[i].rows for i in near)
    return Model(speeds, max(per_row, 1e-9))


def next_cut(node: str, start: int, end: int, block: int, slots: Mapping[str, int],
             finished: Sequence[Finished], running: Sequence[Running], box_runs: int = 0,
             overhead: float = 0.0, least_blocks: int = 1, even: bool = False,
             known: Mapping[str, float] | None = None, idle_slot: bool = False) -> int | None:
    """The end row of the unit `node` should render off a frame's remainder [start, end) (0-based, end
    exclusive), or None when it should leave those rows to faster slots.

    `slots`: live node -> POV-Ray slots (the asking node counts with at least one). `box_runs`: when every
    live slot is on one machine and nobody watches the job, how many POV-Ray processes keep that machine
    busy; 0 otherwise. `overhead`: seconds each unit of the job costs `node` besides tracing, as it
    measured them (0 unknown). `least_blocks`: the fewest blocks of rows a unit may have (unless fewer are
    left). `even`: the rows cost alike (a sheared frame's, farm.shear; `slots` are then the POV-Ray runs that
    keep each node busy): `_even_cut`, with `known` (node -> the speed of one of its runs, remembered from
    earlier frames, `learned_speeds`) and `idle_slot` (an idle slot of `node` asks, not one asking ahead of
    its unit's end). `start` is on a block edge; the result is a block edge or `end`, and
    always more than `start`."""
    if block < 1 or not 0 <= start < end or start % block:
        raise ValueError(f"rows [{start}, {end}) do not start on an edge of {block}-row blocks")
    if box_runs > 0:
        return _lone_box_cut(start, end, block, box_runs - len(running))
    slots = dict(slots)
    slots[node] = max(1, slots.get(node, 1))
    if even:
        return _even_cut(node, start, end, block, slots, finished, running, overhead, least_blocks, known or {},
                         idle_slot)
    blocks_left = -(-(end - start) // block)
    costs = model(finished, start)
    if costs is None:     # one node has no speed to tell apart from others: it needs no probe
        shares = PROBE_SHARES * sum(slots.values()) if len(slots) > 1 else SHARES
        return min(end, start + _at_least(math.ceil(blocks_left / shares), least_blocks, blocks_left) * block)
    total_speed = sum(costs.speeds.get(name, 1.0) * count for name, count in slots.items())
    fair = (end - start) * costs.speeds.get(node, 1.0) * slots[node] / total_speed    # the node's share
    # The least rows worth a unit, by the measured cost: never more than the node's share (balance first). The
    # cost may come from one probe of cheap rows (a sky): measured without POV-Ray's shut-down, 1.5 s of it
    # can be most of a frame whose lower rows cost ten times as much.
    least = min(max(MIN_UNIT_SECONDS, OVERHEAD_RATIO * overhead) * costs.rate(node), fair)
    if not any(unit.row_end == start for unit in finished):
        # The rows just above the cut are still rendering: the cost comes from rows further up, a guess where
        # a frame's middle costs tens of times its sky (stackertransp: one such unit ran 9 s past the rest).
        least = min(least, fair / SHARES)
    rows = max(fair / SHARES, least)
    blocks = _at_least(min(blocks_left, max(1, round(rows / block))), least_blocks, blocks_left)
    if blocks_left - blocks < 1 or blocks_left - blocks < least / block / 2:
        blocks = blocks_left      # what would be left is not worth a start-up of its own
    size = min(end - start, blocks * block)
    if _others_finish_sooner(node, size, end - start, slots, running, costs):
        return None
    return start + size


def _even_cut(node: str, start: int, end: int, block: int, slots: Mapping[str, int], finished: Sequence[Finished],
              running: Sequence[Running], overhead: float, least_blocks: int, known: Mapping[str, float],
              idle_slot: bool) -> int | None:
    """next_cut for a frame whose rows cost alike (farm.shear): no probe of a band can mislead, so each run
    a node keeps busy first gets its whole share of the frame by the speeds remembered from earlier frames
    (`known`: one unit per run when every live node has one), or 1/FIRST_WAVE of an even share (the nodes'
    speeds are not known yet), then 1/EVEN_SHARES of its node's speed-weighted share of the rows left and in
    flight, less what the node has in hand (the whole share where that part is worth less than a unit's
    start-up and parse).
    Every unit costs POV-Ray's start-up and the parse again (0.84 s on stackertransp), so the fewer the
    better. A node whose runs are all busy declines until it has measured, or while its units have more
    than AHEAD_SECONDS to go, or while it holds its share, or when a spare slot of its asks (`idle_slot`):
    a run asks for its next unit itself as its unit nears its end
    (farm/rendering/ahead.py), and an idle node's long poll wakes when a unit is in (povray_kind.stored)."""
    blocks_left = -(-(end - start) // block)
    own = [unit for unit in running if unit.node == node]
    costs = overall_model(finished)     # no row is dearer than another: the mean of them all
    if costs is None:
        if len(own) >= slots[node]:
            return None
        return min(end, start + _at_least(_first_wave(node, blocks_left, block, slots, running, known),
                                          least_blocks, blocks_left) * block)
    in_hand = sum(unit.rows * (1.0 - unit.progress) for unit in own)     # rows
    if len(own) >= slots[node] and (idle_slot or in_hand / costs.rate(node) > AHEAD_SECONDS):
        # Its runs are busy (for a while, or its spare slot asks): a second POV-Ray now would share their
        # cores. A run asks for its next unit itself as it nears its end (balcony: a box's spare slot took
        # the frame's last rows beside its busy run, and the other box idled 5 s).
        return None
    weight = costs.speeds.get(node, 1.0) * slots[node]
    total = sum(costs.speeds.get(name, 1.0) * count for name, count in slots.items())
    in_flight = sum(unit.rows * (1.0 - unit.progress) for unit in running)
    share = (end - start + in_flight) * weight / total - in_hand
    if own and share < block / 2:
        return None
    # Half the share, unless that is less than a unit is worth (its start-up and parse, as the node measured
    # them: a scene that parses dearly gets its whole share at once): a cheap scene's last units are small,
    # so a block row dearer than the rest holds no box back. What is left after it goes to the node free
    # first, which may be one busy now, whose next POV-Ray starts while its last one ends (overlap.py).
    least = max(MIN_UNIT_SECONDS, OVERHEAD_RATIO * overhead) * costs.rate(node)
    rows = min(share, max(share / EVEN_SHARES, least))
    blocks = _at_least(min(blocks_left, max(1, round(rows / block))), least_blocks, blocks_left)
    size = min(end - start, blocks * block)
    if _others_finish_sooner(node, size, end - start, slots, running, costs):
        return None
    return start + size


def _first_wave(node: str, blocks_left: int, block: int, slots: Mapping[str, int], running: Sequence[Running],
                known: Mapping[str, float]) -> int:
    """The blocks of a sheared frame's first unit for one run of `node`, before the frame measured anything:
    its share of the whole frame (the blocks left and those leased) by the remembered speeds (`_known_shares`:
    two boxes then render a still in one POV-Ray each, as every further unit parses the scene again; the last
    run to start takes what is left), or 1/FIRST_WAVE of an even share, so that the rest balances speeds not
    known yet, or a split that whole block rows cannot make even."""
    frame = blocks_left + sum(unit.rows for unit in running) / block
    shares = _known_shares(frame, slots, known)
    if shares is None:
        return max(1, math.ceil(frame / (FIRST_WAVE * sum(slots.values())) - 1e-9))
    last = sum(slots.values()) - len(running) <= 1
    return blocks_left if last else max(1, round(shares[node]))


def _known_shares(frame: float, slots: Mapping[str, int], known: Mapping[str, float]) -> dict[str, float] | None:
    """Each run's share of a frame of `frame` block rows by the remembered speeds; None unless every live node
    has one and every share comes within SPLIT_ERROR of whole block rows (15 rows of 32 pixels on two boxes
    split 8 and 7: one box's tail, where smaller units share them out)."""
    if not all(known.get(name, 0.0) > 0 for name in slots):
        return None
    total = sum(known[name] * count for name, count in slots.items())
    shares = {name: frame * known[name] / total for name in slots}
    return shares if all(abs(round(share) - share) <= SPLIT_ERROR * share for share in shares.values()) else None


def learned_speeds(known: Mapping[str, float], finished: Sequence[Finished],
                   busy: Mapping[str, float] | None = None) -> dict[str, float]:
    """The node speeds the farm remembers (`known`: node -> the speed of one of its POV-Ray runs, on a scale
    of their own) after a finished frame whose rows cost alike (farm.shear): each node's rows per second of
    work in it, put on the remembered scale by the nodes known already, moves its speed LEARNING of the way.
    A node's work is at most its `busy` seconds (the time any of its units ran, `union_seconds`) less one
    start-up: two of its units that ran side by side for a while shared its cores. Unchanged when fewer than
    two nodes rendered the frame: one node alone says nothing of the others."""
    rows: dict[str, float] = {}
    work: dict[str, float] = {}
    for unit in finished:
        rows[unit.node] = rows.get(unit.node, 0) + unit.rows
        work[unit.node] = work.get(unit.node, 0.0) + _work(unit)
    for name, seconds in (busy or {}).items():
        if name in work:
            work[name] = max(0.05, min(work[name], seconds - STARTUP_SECONDS))
    if len(rows) < 2:
        return dict(known)
    rates = {name: rows[name] / work[name] for name in rows}
    both = [name for name in rates if known.get(name, 0.0) > 0]
    scale = (statistics.fmean(known[name] for name in both) / statistics.fmean(rates[name] for name in both)
             if both else 1.0 / statistics.fmean(rates.values()))
    learned = dict(known)
    for name, rate in rates.items():
        seen = rate * scale
        learned[name] = known[name] + LEARNING * (seen - known[name]) if name in both else seen
    return learned


def union_seconds(runs: Sequence[tuple[float, float]]) -> float:
    """The seconds during which any of the (start, end) runs ran."""
    total, reached = 0.0, -math.inf
    for start, end in sorted(runs):
        if end > reached:
            total += end - max(start, reached)
            reached = end
    return total


def _at_least(blocks: int, least: int, left: int) -> int:
    """`blocks`, raised to `least`, and to all `left` when fewer than `least` would remain after it."""
    blocks = max(blocks, least)
    return left if left - blocks < least else blocks


def _lone_box_cut(start: int, end: int, block: int, free_runs: int) -> int | None:
    """An even share of what is left for each process the box may still start; None (decline) when
    enough run already: the one whose unit ends first asks again."""
    if free_runs <= 0:
        return None
    blocks_left = -(-(end - start) // block)
    return min(end, start + math.ceil(blocks_left / free_runs) * block)


def runs_to_keep_busy(cores: int, threads: int, slots: int) -> int:
    """How many POV-Ray processes keep a box of `cores` busy on one frame when each renders with
    `threads` threads: enough to use every core, at most the box's slots. One, when POV-Ray uses all
    cores: its own threads share a frame's blocks out better than any cut, and a second process on the
    same frame would idle through its start-up at the same moment as the first."""
    return max(1, min(slots, -(-max(1, cores) // max(1, threads))))


def _free_at(slots: Mapping[str, int], running: Sequence[Running], costs: Model) -> list[tuple[str, float]]:
    """(node, seconds until it may start another unit) for every live slot."""
    busy: dict[str, list[float]] = {}
    for unit in running:
        left = unit.rows * (1.0 - unit.progress) / costs.rate(unit.node)
        busy.setdefault(unit.node, []).append(left + (STARTUP_SECONDS if unit.progress <= 0 else 0.0))
    free = []
    for name, count in slots.items():
        waits = sorted(busy.get(name, []))
        free += [(name, waits[i] if i < len(waits) else 0.0) for i in range(count)]
    return free


def _others_finish_sooner(node: str, size: int, rows_left: int, slots: Mapping[str, int],
                          running: Sequence[Running], costs: Model) -> bool:
    """At the tail (the node's fair share of what is left is less than `size`): whether another slot,
    once free, would render `size` rows clearly sooner than `node` could. A node whose slots are all busy
    asks ahead of its next free one (farm/rendering/ahead.py) and starts the unit only then: the last rows
    of balcony, taken 1.2 s ahead by one box, left the other box's slot that freed 0.2 s later idle to the
    end (9 s)."""
    free = _free_at(slots, running, costs)
    own = min((wait for name, wait in free if name == node), default=0.0)
    waits = [wait for _, wait in free]
    rates = [costs.rate(name) for name, _ in free]
    finish = (rows_left + sum(rate * (wait + STARTUP_SECONDS) for rate, wait in zip(rates, waits))) / sum(rates)
    if costs.rate(node) * max(0.0, finish - own - STARTUP_SECONDS) >= size:
        return False
    mine = own + STARTUP_SECONDS + size / costs.rate(node)
    # Only in favour of a busy slot: it asks again when its unit is in, so the rows are never left to a
    # slot that is not asking (and two idle slots can never leave them to each other).
    return any(name != node and wait > 0 and wait + STARTUP_SECONDS + size / costs.rate(name) < mine * DECLINE_MARGIN
               for name, wait in free)


def seconds_left(rows_left: int, finished: Sequence[Finished], slots: Mapping[str, int],
                 running: Sequence[Running] = ()) -> float | None:
    """A rough time to render `rows_left` rows (plus what is running) on the live slots at the measured
    cost; None while nothing is measured or no slot is live."""
    return time_left(rows_left, overall_model(finished), slots, running)


def overall_model(finished: Sequence[Finished]) -> Model | None:
    """The cost model over all of `finished`: node speeds, and the mean seconds per row at speed 1; None
    with nothing finished. Fitting it is most of the time a job's status takes."""
    if not finished:
        return None
    speeds, costs = node_speeds(finished)
    order = sorted(finished, key=lambda unit: unit.row_start)
    per_row = sum(cost * unit.rows for cost, unit in zip(costs, order)) / sum(unit.rows for unit in order)
    return Model(speeds, per_row)


def time_left(rows_left: int, costs: Model | None, slots: Mapping[str, int],
              running: Sequence[Running] = ()) -> float | None:
    """seconds_left with the cost model already fitted (None: nothing measured yet)."""
    if costs is None or not slots:
        return None
    rate = sum(costs.speeds.get(name, 1.0) * count for name, count in slots.items()) / costs.seconds_per_row
    in_flight = sum(unit.rows * (1.0 - unit.progress) for unit in running)
    return (rows_left + in_flight) / rate + (STARTUP_SECONDS if rows_left else 0.0)
