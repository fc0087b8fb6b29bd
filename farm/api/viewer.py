"""viewer.*: the live feed that viewers paint the image from."""

from __future__ import annotations

from typing import Iterator

from farm.api import args, rpc
from farm.auth import READERS
from farm.faults import Code, FarmError
from farm.server.departures import departure_watch
from farm.states import ENDED
from farm.wire import Binary, LONG_POLL_CAP


class ViewerAPI:
    namespace = "viewer"

    def __init__(self, services):
        self._services = services

    @rpc(*READERS)
    def watch(self, job: int, cursor: int, timeout: float, live_cursor: int = -1) -> dict:
        """The viewers' live feed, as a long poll: returns at once when strips newer than `cursor` are stored
        (or the job has ended), else when anything about the job changes, else after `timeout` seconds (at
        most 30).

        @param job: int, 0 for the newest job
        @param cursor: int, 0 for every strip stored so far; then the cursor of the previous reply
        @param timeout: float seconds
        @param live_cursor: int (optional): 0, then the live_cursor of the previous reply, to be sent the live
            blocks of the units in flight too; -1 (the default) for none
        @return: struct: job (struct as jobs.list gives it; {} when there is no job yet), cursor (int),
            strips ([struct] frame, row_start, row_end, rows: base64 zlib of the rows in `encoding` ("zlib": the
            raw rows; "filtered": PNG scanlines, each row led by its filter type, the first filtered against
            zeros), oldest first,
            kind: "rows" (final rows of the image), or "preview" (a quick low-resolution render of the whole
            frame, to be shown scaled up until final rows replace it; its rows are of its own width and
            height, given as width and height)),
            in_flight ([struct] frame, row_start, row_end, node (name), progress 0..1, kind ("rows";
            "pretrace": a radiosity pre-pass over the frame's rows, never sheared, with pieces ([[start, end]]:
            the rows it pretraces, a folded band's at the top and the bottom of the frame); "preview": the
            frame's preview, rows of the preview's own size)); with live_cursor >= 0 also live ([struct] frame, left, top, right, bottom
            (the block's rectangle, inclusive, in image coordinates), rows (base64: zlib of its 8-bit RGB rows):
            finished blocks of units still rendering, oldest first, to be painted until final rows replace
            them) and live_cursor (int)
        """
        job_id = args.whole("job", job, 0, args.MAX_ID)
        cursor = args.whole("cursor", cursor, 0, args.MAX_ID)
        timeout = args.seconds("timeout", timeout)
        live_cursor = args.whole("live_cursor", live_cursor, -1, args.MAX_ID)
        services = self._services
        services.watchers.polled(job_id)
        target = job_id or services.store.jobs.newest_id()
        services.dispatcher.viewer_came(target)
        seen = services.changes.version(target)
        reply = services.views.feed(target, cursor)
        ended = reply["job"].get("state") in ENDED
        live_cursor, live = services.live.after(target, live_cursor) if live_cursor >= 0 else (live_cursor, [])
        if not (reply["strips"] or live or (ended and job_id)):
            # Nothing new: wait for this job to change, or (following the newest job) for a new job.
            with departure_watch(services.changes.wake) as gone:
                services.changes.wait(target, seen, min(timeout, LONG_POLL_CAP), gone)
            current = job_id or services.store.jobs.newest_id()
            reply = services.views.feed(current, cursor if current == target else 0)   # a new job: cursor 0
            if live_cursor >= 0:
                live_cursor, live = services.live.after(current, live_cursor if current == target else 0)
        if live_cursor >= 0:
            reply["live"] = [{**block, "rows": Binary(block["rows"])} for block in live]
            reply["live_cursor"] = live_cursor
        for piece in reply["strips"]:
            piece["rows"] = Binary(piece["rows"])
        return reply


class FeedStream:
    """`GET /feed?job=J&cursor=C[&live=1]`: the same feed as viewer.watch as one long response, each piece
    framed once for all viewers (farm/service/feed.py gives the record format); with live=1 the live blocks
    of units in flight too. Same roles as viewer.watch."""

    path = "/feed"
    roles = READERS

    def __init__(self, services):
        self._services = services

    def __call__(self, query: dict[str, list[str]]) -> Iterator[list[bytes]]:
        job_id = args.whole("job", _query_int(query, "job"), 0, args.MAX_ID)
        cursor = args.whole("cursor", _query_int(query, "cursor"), 0, args.MAX_ID)
        live = args.whole("live", _query_int(query, "live"), 0, 1) == 1
        if job_id:
            self._services.store.jobs.get(job_id)     # UNKNOWN_JOB now, not inside the stream
        self._services.dispatcher.viewer_came(job_id or self._services.store.jobs.newest_id())
        return self._records(job_id, cursor, live)

    def _records(self, job_id: int, cursor: int, live: bool) -> Iterator[list[bytes]]:
        with departure_watch(self._services.changes.wake) as gone, self._services.watchers.streaming(job_id):
            yield from self._services.streams.watch(job_id, cursor, gone, live)


def _query_int(query: dict[str, list[str]], name: str) -> int:
    values = query.get(name, ["0"])
    if len(values) != 1 or not values[0].isdigit() or len(values[0]) > 19:
        raise FarmError(Code.BAD_ARGUMENT, f"{name} must be given once, as a whole number")
    return int(values[0])
