"""Jobs that run after others (`submit --after JOB,...`), as a pure rule.

A job submitted after other jobs stays queued until every one of them is done. When one of them fails
(or is canceled), the job fails (or is canceled) too, naming that job; a failure wins over a cancel, the
lowest job id first. A job can only be submitted after jobs that exist already, and the jobs it runs after
never change, so the graph of jobs stays without cycles by construction: `check_after` refuses an unknown
job (or the job itself), the only way to make one.
"""

from __future__ import annotations

import enum
from typing import Callable, Iterable, Mapping

from farm.faults import Code, FarmError
from farm.states import JobState

MAX_AFTER = 64      # jobs one job may run after


class Verdict(str, enum.Enum):
    WAIT = "wait"       # some job it runs after is not done yet
    GO = "go"           # every one is done (or there are none): its units may be leased
    FAIL = "fail"
    CANCEL = "cancel"


def verdict(after: Mapping[int, tuple[JobState, str]]) -> tuple[Verdict, str]:
    """What the states of the jobs a job runs after (id -> (state, error)) mean for it, and why."""
    for job_id in sorted(after):
        state, error = after[job_id]
        if state is JobState.FAILED:
            why = error.splitlines()[0] if error else "no reason given"
            return Verdict.FAIL, f"job {job_id}, which it runs after, failed: {why}"
    for job_id in sorted(after):
        if after[job_id][0] is JobState.CANCELED:
            return Verdict.CANCEL, f"job {job_id}, which it runs after, was canceled"
    waiting = waiting_for(after)
    if waiting:
        return Verdict.WAIT, f"waiting for job{'s' if len(waiting) > 1 else ''} {', '.join(map(str, waiting))}"
    return Verdict.GO, ""


def waiting_for(after: Mapping[int, tuple[JobState, str]]) -> list[int]:
    """The jobs it runs after that are not done yet, in order."""
    return sorted(job_id for job_id, (state, _) in after.items() if state is not JobState.DONE)


def check_after(after: Iterable[int], newest: int, exists: Callable[[int], bool]) -> tuple[int, ...]:
    """The jobs a new job runs after, each once, in order. `newest`: the newest job's id, so the new job's
    is above it. BAD_ARGUMENT for too many, or a job not submitted yet (it could only close a cycle: a job
    waiting for one that waits for it); UNKNOWN_JOB for one `exists` does not know."""
    chosen = tuple(sorted(set(after)))
    if len(chosen) > MAX_AFTER:
        raise FarmError(Code.BAD_ARGUMENT, f"after: at most {MAX_AFTER} jobs")
    for job_id in chosen:
        if job_id > newest:
            raise FarmError(Code.BAD_ARGUMENT, f"after: job {job_id} is not submitted yet; a job runs only after "
                                               "earlier jobs, so that no jobs ever wait for each other (a cycle)")
        if not exists(job_id):
            raise FarmError(Code.UNKNOWN_JOB, f"after: there is no job {job_id}")
    return chosen
