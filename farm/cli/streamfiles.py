"""POV-Ray's stream files (`All_File=alltext.out`, `Debug_File=true`, `+GDdebug.txt`...) written beside the
image after a job, as `povray` leaves them, from the logs the controller kept of the job's runs.

For each frame, in frame order, the text one run printed: the run of the unit that rendered the frame's
last strip (a still cut into strips ran POV-Ray once per strip; the scene's messages are the same in every
run, so the debug and warning files match `povray`'s; the render and statistics streams are that strip's:
its row range, its counts and times). farm.povstreams makes each file's text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from farm import atomic, povstreams
from farm.cli.job_request import JobRequest
from farm.client import Client
from farm.features import UNIT_LOGS, Features
from farm.kinds import ROWS


def frame_runs(client: Client, job_id: int) -> list[dict[str, Any]]:
    """One kept log per frame (or per unit of several frames), in frame order: of the frame's done units,
    the last one's latest attempt."""
    chosen: dict[int, dict[str, Any]] = {}
    cursor = 0
    while True:
        reply = client.call("jobs.log", job_id, {"after": cursor})
        for entry in reply["logs"]:
            if entry["kind"] != ROWS or entry["outcome"] != "done":
                continue
            best = chosen.get(entry["frame"])
            if best is None or (entry["unit"], entry["attempt"]) > (best["unit"], best["attempt"]):
                chosen[entry["frame"]] = entry
        cursor = reply["cursor"]
        if not reply["more"] or not reply["logs"]:
            break
    return [chosen[frame] for frame in sorted(chosen)]


def write_stream_files(client: Client, job_id: int, request: JobRequest, append: bool = False) -> list[Path]:
    """Write the stream files the command line names; `append` adds to them (Append_File=on does too).
    Returns the files written; none when the controller keeps no logs."""
    streams = request.command.streams
    if not streams.files or UNIT_LOGS not in Features.of_reply(client.call("api.version")):
        return []
    runs = frame_runs(client, job_id)
    folder = next((path.parent for path in request.targets.values() if path is not None), Path.cwd())
    written = []
    for letter, name in streams.files.items():
        text = "".join(povstreams.file_text(letter, [(kind, line) for kind, line in run["lines"]])
                       for run in runs)
        path = folder / name
        if append or streams.append:
            with open(path, "a", encoding="utf-8") as out:
                out.write(text)
        else:
            atomic.write(path, text.encode("utf-8"))
        written.append(path)
    return written
