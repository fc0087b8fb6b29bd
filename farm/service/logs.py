"""POV-Ray's logs of a job's runs: what is kept of each (bounded per run and per job), and read back.

Per run, the node and the controller keep at most `unit_log_kb` of POV-Ray's output (its head and tail,
farm/povtext.py). Per job, once its logs hold `job_log_mb`, a later run keeps only the scene's messages
(its `#debug` text and warnings), at most MESSAGES_KEPT bytes, with a note saying so: what the user needs
to see of every frame is never what is dropped first.
"""

from __future__ import annotations

import logging

from farm import povtext
from farm.config import Config
from farm.kinds import ROWS
from farm.records import Unit
from farm.store import Store
from farm.unitlog import KeptLog, UnitLog

log = logging.getLogger(__name__)

MESSAGES_KEPT = 4096       # bytes of a run's messages kept once its job's logs reached job_log_mb


class Logs:
    def __init__(self, config: Config, store: Store):
        self._config, self._store = config, store

    def keep(self, unit: Unit, node_id: str, outcome: str, run: UnitLog) -> None:
        """Keep the log of a run that ended `outcome` ("done", "failed")."""
        self._store.logs.add(unit, node_id, outcome, run, self._kept)

    def _kept(self, run: UnitLog, job_size: int) -> tuple[str, list[str], str]:
        """(the text to keep, the scene's messages per frame, what was cut and why) of a run whose job's
        logs hold `job_size` bytes."""
        messages = povtext.parse_messages(run.text)
        cut = (f"{run.cut} bytes of POV-Ray's output cut in the middle (unit_log_kb = "
               f"{self._config.unit_log_kb})") if run.cut else ""
        size = len(run.text.encode("utf-8", "replace"))
        limit = self._config.job_log_mb * 1024 * 1024
        if job_size + size <= limit:
            return run.text, messages, cut
        text, _ = povtext.bounded("".join(messages), MESSAGES_KEPT)
        note = (f"the job's logs reached job_log_mb = {self._config.job_log_mb}: only the scene's messages of "
                f"this run were kept ({size - len(text.encode('utf-8', 'replace'))} bytes cut)")
        return text, [povtext.bounded(m, MESSAGES_KEPT)[0] for m in messages], "; ".join(filter(None, (cut, note)))

    def of_job(self, job_id: int, after: int, index: int | None, frame: int | None,
               limit: int) -> list[tuple[KeptLog, str]]:
        return self._store.logs.of_job(job_id, after, index, frame, limit)

    def frame_messages(self, job_id: int, first: int = 0) -> dict[int, str]:
        """frame -> the scene's messages as `povray` prints them for it, once, for the frames from `first`
        on: from one run of the frame's units (every strip of a frame parses the scene; a run of a unit
        that was done before any other)."""
        found: dict[int, str] = {}
        for start, last, _outcome, texts in self._store.logs.messages(job_id, ROWS, first):
            for number, text in zip(range(start, last + 1), texts):
                if number >= first:
                    found.setdefault(number, text)
        return found
