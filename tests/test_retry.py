"""The one retry policy of every client: growing delays, outages said once, patience, and faults that are
answers never retried. Time is a fake clock that the injected sleep moves on."""

from __future__ import annotations

import pytest

from farm.faults import Code, FarmError
from farm.retry import Outage, Patience, Patient, duration, grow


class Time:
    def __init__(self):
        self.now = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> bool:
        self.slept.append(seconds)
        self.now += seconds
        return False


def policy(time: Time, limit: float = 60.0, reached: bool = True) -> tuple[Patience, list[str]]:
    said: list[str] = []
    outage = Outage("http://farm:8642", limit, said.append, clock=time.clock)
    return Patience(outage, sleep=time.sleep, reached=reached), said


def failing(times: int, code: Code = Code.UNREACHABLE, result: str = "ok"):
    """A call that fails `times` times with `code`, then returns `result`."""
    calls = []

    def attempt():
        calls.append(1)
        if len(calls) <= times:
            raise FarmError(code, "cannot reach the controller at http://farm:8642: Connection refused")
        return result
    attempt.calls = calls
    return attempt


def test_delays_double_from_the_first_to_the_ceiling_with_jitter_within_a_quarter():
    delays, delay = [], 0.0
    for _ in range(7):
        delay = grow(delay, 0.5, 10.0)
        delays.append(delay)
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert grow(4.0, 0.5, 10.0, rng=lambda: 0.0) == 6.0 and grow(4.0, 0.5, 10.0, rng=lambda: 1.0) == 10.0


def test_an_outage_is_retried_with_growing_delays_and_said_once_each_way():
    time = Time()
    patience, said = policy(time)
    attempt = failing(5)
    assert patience.call(attempt) == "ok"
    assert len(attempt.calls) == 6 and time.slept == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert said == ["lost the controller at http://farm:8642 (Connection refused); retrying for up to 60 s",
                    "reconnected to the controller at http://farm:8642 after 16 s"]
    # The next outage starts again from the first delay, and is said again.
    time.slept.clear()
    assert patience.call(failing(2)) == "ok"
    assert time.slept == [0.5, 1.0] and len(said) == 4


def test_answers_from_the_controller_are_never_retried():
    for code in (Code.UNKNOWN_JOB, Code.FORBIDDEN, Code.UNAUTHORIZED, Code.BAD_ARGUMENT, Code.JOB_NOT_DONE):
        time = Time()
        patience, said = policy(time)
        attempt = failing(1, code)
        with pytest.raises(FarmError) as caught:
            patience.call(attempt)
        assert caught.value.code is code and len(attempt.calls) == 1 and not time.slept and not said


def test_a_controller_never_reached_is_not_waited_for():
    """A wrong URL, or a controller that is not running, is said at once; once it answered, an outage is
    ridden out."""
    time = Time()
    patience, said = policy(time, reached=False)
    with pytest.raises(FarmError) as caught:
        patience.call(failing(1))
    assert caught.value.code is Code.UNREACHABLE and not time.slept and not said
    assert patience.call(lambda: "first answer") == "first answer"
    assert patience.call(failing(1)) == "ok" and time.slept == [0.5]


def test_patience_bounds_an_outage_and_the_last_wait_ends_on_it():
    time = Time()
    patience, said = policy(time, limit=20.0)
    attempt = failing(100)
    with pytest.raises(FarmError) as caught:
        patience.call(attempt)
    assert caught.value.code is Code.UNREACHABLE
    assert "gave up after 20 s of retrying (setting: patience)" in str(caught.value)
    assert time.slept == [0.5, 1.0, 2.0, 4.0, 8.0, 4.5] and time.now == 120.0
    assert len(said) == 1


def test_no_limit_retries_for_ever():
    time = Time()
    patience, said = policy(time, limit=0)
    assert patience.call(failing(50)) == "ok"
    assert max(time.slept) == 10.0 and "until it answers" in said[0]


def test_a_stop_during_a_wait_ends_the_retrying_with_the_fault():
    time = Time()
    said: list[str] = []
    patience = Patience(Outage("http://farm:8642", 60, said.append, clock=time.clock), sleep=lambda s: True,
                        reached=True)
    attempt = failing(5)
    with pytest.raises(FarmError) as caught:
        patience.call(attempt)
    assert caught.value.code is Code.UNREACHABLE and len(attempt.calls) == 1


def test_a_patient_client_retries_its_calls_under_one_policy():
    time = Time()
    patience, said = policy(time)

    class Flaky:
        url = "http://farm:8642"
        failures = 2

        def call(self, method, *args):
            if self.failures:
                self.failures -= 1
                raise FarmError(Code.UNREACHABLE, "cannot reach the controller")
            return (method, args)

    client = Patient(Flaky(), patience)
    assert client.url == "http://farm:8642"
    assert client.call("jobs.wait", 3, 1.0) == ("jobs.wait", (3, 1.0))
    assert time.slept == [0.5, 1.0] and len(said) == 2


def test_a_blocked_job_is_said_when_its_reason_changes_and_given_up_after_the_patience():
    time = Time()
    patience, _ = policy(time, limit=60.0)
    assert not patience.blocked("") and not patience.blocked_too_long()
    assert patience.blocked("no node can render it: n1: POV-Ray was not found")
    assert not patience.blocked("no node can render it: n1: POV-Ray was not found")
    time.now += 30
    assert patience.blocked("no node is connected to the controller")     # a new reason: said again
    assert not patience.blocked_too_long()
    time.now += 30                                                          # blocked all along: 60 s
    assert patience.blocked_too_long()
    assert patience.blocked("") and not patience.blocked_too_long()        # a node came: the clock restarts
    assert patience.blocked("no node is connected to the controller")
    time.now += 59
    assert not patience.blocked_too_long()


def test_durations_read_as_people_say_them():
    assert [duration(s) for s in (0.4, 16, 119, 120, 900, 3600, 5400)] == \
        ["0 s", "16 s", "119 s", "2 min", "15 min", "1 h", "1 h 30 min"]
