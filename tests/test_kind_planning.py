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

LATER, SKIPPED, PART = "later", "skipped", "part"     # kinds of unit no kind registers: the store needs none


class ToyKinds:
    """A kind's answers as the dispatcher gives them to the store (farm.store.units.UnitKinds)."""

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


def test_a_kind_without_such_things_leases_whole_units_binding_their_frames_and_retries_them(tmp_path):
    default = kindparts.ControllerPart()
    unit = make_unit("anything")
    assert (default.cut(unit, None, None), default.binds_frames(unit), default.retries(unit)) == (32, True, True)
    assert default.worth(unit, None, None) is Worth.LEASE and default.keeping(unit) is PLAIN
    assert not default.sends_live(unit) and (default.progress_unit, default.uncounted_unit) == ("", "")
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
    assert POVRAY.keeping(pretrace) == Keeping(fed=False, releases_frame=True) and POVRAY.keeping(preview) is PLAIN
    assert (POVRAY.progress_unit, POVRAY.uncounted_unit) == (ROWS, PREVIEW)
    store = Store(tmp_path / "db.sqlite3")
    try:
        for mode, watched, worth in ((PreviewMode.WATCHED, False, Worth.WAIT), (PreviewMode.WATCHED, True, Worth.LEASE),
                                     (PreviewMode.ALWAYS, False, Worth.LEASE)):
            job = store.jobs.get(store.jobs.create(spec(mode), [UnitPlan(1, 1, 0, 1, PREVIEW)], 1.0))
            leasing = kindparts.Leasing(job, "n", "", lambda watched=watched: watched, lambda: 0.0)
            assert POVRAY.worth(preview, None, leasing) is worth
            assert POVRAY.worth(rows, None, leasing) is Worth.LEASE
    finally:
        store.close()


def make_unit(kind: str) -> Unit:
    return Unit(id=1, job=1, frame=1, frame_last=1, index=1, row_start=0, row_end=32, state=UnitState.QUEUED,
                kind=kind, attempt=0, failures=0, lease="", node="", lease_expires=0.0, retry_at=0.0, progress=0.0,
                error="", seconds=0.0, done_seq=0)

