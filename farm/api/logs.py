"""jobs.log and jobs.messages: POV-Ray's logs of a job's runs, and the scene's messages of each frame."""

from __future__ import annotations

from typing import Any

from farm import povtext
from farm.api import args, rpc
from farm.auth import READERS
from farm.unitlog import KeptLog

MAX_LOGS = 200                     # logs in one reply
MAX_REPLY_TEXT = 8 * 1024 * 1024   # bytes of text in one reply (the first log always goes)


class LogsAPI:
    namespace = "jobs"

    def __init__(self, services):
        self._services = services

    @rpc(*READERS)
    def log(self, job: int, query: dict | None = None) -> dict:
        """POV-Ray's logs of the job's runs, in the order they reached the controller (one per run of a unit:
        a unit retried has one per attempt that ran POV-Ray), each bounded (settings unit_log_kb, job_log_mb).

        @param job: int
        @param query: struct (optional): after (int, a cursor from an earlier reply: only logs kept since),
            unit (int, the unit's index: only its runs), frame (int: only the runs of units covering it),
            limit (int, at most 200 logs, the default)
        @return: struct: logs ([struct] id (int, the cursor), unit (int, its index), frame, frame_last (int),
            kind ("rows", "pretrace", "preview"), attempt (int), node (str, its name), outcome ("done" or
            "failed"), command ([str] POV-Ray's command line, the node's folders left out), started (float Unix
            time), seconds (float), exit_code (int, -1 for none), signal (int, 0 for none), timed_out (bool),
            ending (str: "exit 0", "signal 9"...), cut (str: what of its output was not kept and why, "" when
            nothing), lines ([[kind, text]]: each line of the output with the stream it is on: "banner",
            "render", "debug", "warning", "error" or "statistics")), cursor (int: pass it as `after` for later
            logs), more (bool: more logs are kept after the cursor already), size (int: bytes of text the
            job's logs keep)
        """
        job_id = args.job_id(job)
        self._services.store.jobs.get(job_id)     # UNKNOWN_JOB for a job that is not there
        query = args.struct("query", query if query is not None else {})
        after = args.whole("after", query.get("after", 0), 0, 2**62)
        index = args.whole("unit", query["unit"], 0, args.MAX_ID) if "unit" in query else None
        frame = args.whole("frame", query["frame"], 0, args.MAX_ID) if "frame" in query else None
        limit = args.whole("limit", query.get("limit", MAX_LOGS), 1, MAX_LOGS)
        found = self._services.logs.of_job(job_id, after, index, frame, limit)
        logs, total = [], 0
        for kept, text in found:
            total += len(text)
            if logs and total > MAX_REPLY_TEXT:
                break
            logs.append(_wire(kept, text))
        return {"logs": logs, "cursor": logs[-1]["id"] if logs else after,
                "more": len(logs) < len(found) or len(found) == limit,
                "size": self._services.store.logs.size(job_id)}

    @rpc(*READERS)
    def messages(self, job: int, first: int = 0) -> list:
        """The scene's messages of each frame (its #debug text and warnings, POV-Ray's parse warnings) as
        `povray` prints them, once per frame: every unit of a frame parses the scene, so they are taken from
        one run of the frame's units (one that was done, when one was). Frames with no log yet are left out.

        @param job: int
        @param first: int (optional, default 0): only frames from this one on
        @return: [struct] frame (int), text (str, "" when the scene said nothing), in frame order
        """
        job_id = args.job_id(job)
        first = args.whole("first", first, 0, args.MAX_ID)
        self._services.store.jobs.get(job_id)
        found = self._services.logs.frame_messages(job_id, first)
        return [{"frame": number, "text": found[number]} for number in sorted(found)]


def _wire(kept: KeptLog, text: str) -> dict[str, Any]:
    run = kept.run
    return {"id": kept.id, "unit": kept.index, "frame": kept.frame, "frame_last": kept.frame_last,
            "kind": kept.kind, "attempt": kept.attempt, "node": kept.node, "outcome": kept.outcome,
            "command": list(run.command), "started": run.started, "seconds": run.seconds,
            "exit_code": -1 if run.exit_code is None else run.exit_code, "signal": run.signal or 0,
            "timed_out": run.timed_out, "ending": run.ending(), "cut": kept.cut,
            "lines": [[kind, line] for kind, line in povtext.classify(text)]}
