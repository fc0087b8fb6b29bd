"""How a kind plans its units through its controller part (docs/kinds.md): the store applies the verdicts a
kind gives (`Worth`, `Keeping`) without knowing the kind, the policy takes what a kind of unit says as
arguments, and POV-Ray's part answers with the rules its strips, pre-passes and previews always had."""

from __future__ import annotations

from farm import policy
from farm.kinds import PRETRACE, PREVIEW, ROWS, PreviewMode
from farm.planning import UnitPlan
from farm.records import JobSpec, Unit
from farm.service import kindparts
from farm.service.povray_kind import PART as POVRAY
from farm.states import UnitState
from farm.store import PLAIN, Keeping, Store, Worth
from farm.store.units import AsIs

LATER, SKIPPED, PART = "later", "skipped", "part"     # kinds of unit no kind registers: the store needs none
FIRST, STRIP, LOOK = "first", "strip", "look"


class ToyKinds:
    """A kind's answers as the dispatcher gives them to the store (farm.store.units.UnitKinds)."""
    unbound_units = (LATER, SKIPPED, PART)

    def __init__(self):
        self.asked: list[str] = []

    def worth(self, unit, queue, node_id):
        self.asked.append(unit.kind)
        return {LATER: Worth.WAIT, SKIPPED: Worth.EMPTY}.get(unit.kind, Worth.LEASE)

    def cut(self, unit, queue, node_id):
        return unit.row_end

    def binds_frames(self, unit):
        return False

    def keeping(self, unit):
        return Keeping(completes_frames=True, optional=LATER) if unit.kind == PART else Keeping(fed=False)


def spec(preview: PreviewMode = PreviewMode.NEVER) -> JobSpec:
    return JobSpec(bundle="b" * 64, scene="s.pov", width=8, height=8, options=(), channels=3, bits=8, priority=0,
                   name="toy", animation=None, block=8, pretrace=False, preview=preview)


def test_the_store_applies_a_kinds_verdicts_without_knowing_the_kind(tmp_path):
    store = Store(tmp_path / "db.sqlite3")
    try:
        job = store.jobs.create(spec(), [UnitPlan(1, 1, 0, 8, LATER), UnitPlan(1, 1, 0, 8, SKIPPED),
                                         UnitPlan(1, 1, 0, 8, PART)], 1.0)
        node, _ = store.nodes.register("n", {"povray": "3.7.0.10"}, 1.0)
        kinds = ToyKinds()
        lease = store.units.lease_next(node, 2.0, 30.0, policy.choose_unit, kinds)
        assert lease.unit.kind == PART and kinds.asked == [LATER, SKIPPED, PART]
        states = {unit.kind: unit for unit in store.units.of_job(job)}
        assert states[LATER].state is UnitState.WAITING                  # set aside for a viewer
        assert (states[SKIPPED].state, states[SKIPPED].done_seq) == (UnitState.DONE, 0)   # kept done, unfed
        assert [frame.povray for frame in store.jobs.frames(job)] == [""]   # its kind binds no build
        assert store.units.queue_set_aside(job, LATER) and not store.units.queue_set_aside(job, SKIPPED)
        done = store.units.complete(node, lease.token, b"rows", 0.5, 3.0, keeping=kinds.keeping(lease.unit))
        assert done.complete_frames == (1,)                              # the optional unit held nothing back...
        states = {unit.kind: unit for unit in store.units.of_job(job)}
        assert states[LATER].state is UnitState.CANCELED                 # ...and is not needed any more
        assert states[PART].done_seq == 1 and store.units.stored_for_frame(job, 1, PART)[0].data == b"rows"
    finally:
        store.close()


class LooksBindNothing(AsIs):
    unbound_units = (LOOK,)

    def binds_frames(self, unit):
        return unit.kind != LOOK


def test_the_stores_reads_take_the_kinds_of_unit_they_mean_from_their_caller(tmp_path):
    """What the store reads for the status, the farm's limit, the restart's complete frames and the pure
    rules (a frame's units of one kind, whether they still wait whole for another kind's, the frames bound
    to a build) goes by the kinds of unit its caller names: a kind nobody registered is read alike."""
    store = Store(tmp_path / "db.sqlite3")
    try:
        job = store.jobs.create(spec(), [UnitPlan(1, 1, 0, 1, LOOK), UnitPlan(1, 1, 0, 8, FIRST),
                                         UnitPlan(1, 1, 0, 8, STRIP, remainder=True), UnitPlan(2, 2, 0, 8, STRIP)],
                                1.0, waits_for={STRIP: FIRST})
        states = {(unit.frame, unit.kind): unit.state for unit in store.units.of_job(job)}
        assert states == {(1, LOOK): UnitState.QUEUED, (1, FIRST): UnitState.QUEUED,
                          (1, STRIP): UnitState.WAITING, (2, STRIP): UnitState.QUEUED}   # frame 2 has no FIRST
        assert not store.jobs.get(job).pretrace       # as the spec says: the store infers nothing from kinds
        assert store.units.state_of_kind(job, LOOK) is UnitState.QUEUED and store.units.state_of_kind(job, "x") is None
        assert (store.units.open_count(), store.units.open_count((LOOK,)), store.units.open_count((LOOK, FIRST))) == (4, 3, 2)
        node, _ = store.nodes.register("n", {"povray": "3.7.0.10"}, 1.0)
        seen = []

        def lease(kind, kinds=LooksBindNothing()):
            def choose(queue, name, now, tags, build):
                seen.append((queue.whole_frame_waits(job, 1, STRIP, FIRST), queue.whole_frame_waits(job, 1, FIRST, STRIP),
                             queue.frame_units(job, 1, STRIP), queue.frames_of_other_builds(job, "3.8.0 (console)"),
                             queue.frame_units(job, 1, FIRST)))
                return next((unit for unit in queue.queued_units(job, 10) if unit.kind == kind), None)
            return store.units.lease_next(node, 2.0, 30.0, choose, kinds)

        first = lease(FIRST)
        assert seen.pop() == (True, False, ([], []), frozenset(), ([], []))   # nothing bound yet, FIRST not begun
        store.units.release(node, first.token, 3.0)                  # handed back: its frame stays bound...
        lease(LOOK)
        assert lease("none") is None and seen.pop()[3] == frozenset()   # ...by nothing kept or in flight but LOOK
        assert lease("none", AsIs()) is None and seen.pop()[3] == frozenset({1})   # for whom LOOK binds it
        lease(FIRST)
        probe = (lease("none"), seen.pop())
        assert probe[0] is None and probe[1][:3] == (False, False, ([], []))   # FIRST begun: STRIP may be cut
        assert [(running.node, running.rows) for running in probe[1][4][1]] == [(node, 8)]
        assert store.jobs.complete_frames() == [] and store.jobs.complete_frames((LOOK, FIRST)) == []
    finally:
        store.close()


def test_a_restart_finds_complete_frames_leaving_out_the_kinds_its_caller_names(tmp_path):
    store = Store(tmp_path / "db.sqlite3")
    try:
        job = store.jobs.create(spec(), [UnitPlan(1, 1, 0, 8, STRIP), UnitPlan(1, 1, 0, 1, LOOK)], 1.0)
        node, _ = store.nodes.register("n", {"povray": "3.7.0.10"}, 1.0)
        lease = store.units.lease_next(node, 2.0, 30.0, policy.choose_unit)
        assert lease.unit.kind == STRIP
        store.units.complete(node, lease.token, b"rows", 0.5, 3.0)   # kept plainly: the store completes nothing
        assert store.jobs.complete_frames() == [] and store.jobs.complete_frames((LOOK,)) == [(job, 1)]
    finally:
        store.close()


def test_povrays_part_names_its_kinds_of_unit_for_the_store():
    assert POVRAY.waits_for == {ROWS: PRETRACE} and POVRAY.preview_unit == PREVIEW
    assert kindparts.uncounted_units() == (PREVIEW,) and kindparts.unbound_units() == (PREVIEW,)


def test_a_kind_without_such_things_leases_whole_units_binding_their_frames_and_retries_them(tmp_path):
    default = kindparts.ControllerPart()
    unit = make_unit("anything")
    assert (default.cut(unit, None, None), default.binds_frames(unit), default.retries(unit)) == (32, True, True)
    assert default.worth(unit, None, None) is Worth.LEASE and default.keeping(unit) is PLAIN
    assert not default.sends_live(unit) and (default.progress_unit, default.uncounted_unit) == ("", "")
    assert (default.preview_unit, default.unbound_units) == ("", frozenset())
    verdict = policy.after_failure(unit, "boom", False, 3, frozenset({"a"}), frozenset({"a", "b"}), 10.0)
    dropped = policy.after_failure(unit, "boom", False, 3, frozenset({"a"}), frozenset({"a", "b"}), 10.0,
                                   retried=False)
    assert not verdict.drop_unit and verdict.retry_at > 10.0 and dropped.drop_unit and not dropped.fail_job
    assert not policy.fits_frames(unit, frozenset({1})) and policy.fits_frames(unit, frozenset({1}), lambda u: False)


def test_povrays_part_answers_as_its_strips_pre_passes_and_previews_always_did(tmp_path):
    rows, pretrace, preview = make_unit(ROWS), make_unit(PRETRACE), make_unit(PREVIEW)
    assert [POVRAY.binds_frames(u) for u in (rows, pretrace, preview)] == [True, True, False]
    assert [POVRAY.retries(u) for u in (rows, pretrace, preview)] == [True, True, False]
    assert [POVRAY.sends_live(u) for u in (rows, pretrace, preview)] == [True, False, False]
    assert POVRAY.keeping(rows) == Keeping(completes_frames=True, optional=PREVIEW)
    assert POVRAY.keeping(pretrace) == Keeping(fed=False, releases_frame=True, releases_early=True)
    assert POVRAY.keeping(preview) is PLAIN
    assert (POVRAY.progress_unit, POVRAY.uncounted_unit) == (ROWS, PREVIEW)
    store = Store(tmp_path / "db.sqlite3")
    try:
        for mode, watched, worth in ((PreviewMode.WATCHED, False, Worth.WAIT), (PreviewMode.WATCHED, True, Worth.LEASE),
                                     (PreviewMode.ALWAYS, False, Worth.LEASE)):
            job = store.jobs.get(store.jobs.create(spec(mode), [UnitPlan(1, 1, 0, 1, PREVIEW)], 1.0))
            leasing = kindparts.Leasing(job, "n", "", lambda watched=watched: watched, lambda: 0.0, dict)
            assert POVRAY.worth(preview, None, leasing) is worth
            assert POVRAY.worth(rows, None, leasing) is Worth.LEASE
    finally:
        store.close()


def make_unit(kind: str) -> Unit:
    return Unit(id=1, job=1, frame=1, frame_last=1, index=1, row_start=0, row_end=32, state=UnitState.QUEUED,
                kind=kind, attempt=0, failures=0, lease="", node="", lease_expires=0.0, retry_at=0.0, progress=0.0,
                error="", seconds=0.0, done_seq=0)

