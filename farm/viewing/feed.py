"""The viewer's network side, in threads: one follows the job the window asks for (a new thread per request,
so switching jobs never waits for a poll to return), one "scout" asks now and then for the newest job and
the nodes. Everything reaches the window through one queue; an unreachable controller is retried with
back-off and reported as ("link", False, text)."""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Callable, Iterable

from farm.client import Client, check_url
from farm.kinds import LIVE
from farm.faults import Code, FarmError
from farm.features import FEED_STREAM, LIVE_BLOCKS, Features
from farm.retry import RETRY_CEILING, RETRY_FIRST, grow
from farm.states import ENDED
from farm.wire import LONG_POLL_CAP

log = logging.getLogger(__name__)

CURSOR_END = 2**31 - 1          # past every stored strip (XML-RPC ints are 32-bit): "no strips, just the job"
POLL_TIMEOUT = LONG_POLL_CAP - 5.0   # seconds one viewer.watch may wait: under the controller's cap


class Feed:
    """The network side: long polls for the wanted job and a scout for the newest job and the nodes.

    Results go to `messages` as tuples for `ViewerState.handle`:
    ("feed", session, reply), ("newest", job), ("nodes", [node]), ("jobs", [job] or None),
    ("link", ok, text), ("error", session, text).
    """

    def __init__(self, url: str, poll_timeout: float = POLL_TIMEOUT, scout_interval: float = 1.0,
                 nodes_interval: float = 3.0, rpc_timeout: float = 30.0,
                 make_client: Callable[[float], Client] | None = None):
        self.url = check_url(url)
        # Each thread makes its own client; the argument is the client's timeout in seconds.
        self._make_client = make_client or (lambda timeout: Client(self.url, timeout=timeout))
        self.poll_timeout = poll_timeout
        self.scout_interval = scout_interval
        self.nodes_interval = nodes_interval
        self.rpc_timeout = rpc_timeout
        self.messages: queue.Queue = queue.Queue()
        self.follow = True                      # the scout asks for the newest job only when following
        self._lock = threading.Condition()
        self._want: tuple[int, int] | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._jobs_wanted = threading.Event()
        self._scout_thread: threading.Thread | None = None
        self._features: Features | None = None     # the controller's, once asked

    def start(self) -> "Feed":
        self._scout_thread = threading.Thread(target=self._scout, name="viewer-scout", daemon=True)
        self._scout_thread.start()
        return self

    def watch(self, session: int, job: int) -> None:
        """Poll `job` (0: the newest) for `session`; a poll still running for an older one is abandoned."""
        with self._lock:
            if self._want == (session, job):
                return
            self._want = (session, job)
            self._lock.notify_all()
        threading.Thread(target=self._poll, args=(session, job), name=f"viewer-feed-{session}",
                         daemon=True).start()

    @property
    def wanted(self) -> tuple[int, int] | None:
        return self._want

    def request_jobs(self) -> None:
        self._jobs_wanted.set()
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        with self._lock:
            self._lock.notify_all()

    def _current(self, session: int, job: int) -> bool:
        return self._want == (session, job) and not self._stop.is_set()

    def _pause(self, seconds: float, session: int, job: int) -> None:
        with self._lock:
            self._lock.wait_for(lambda: not self._current(session, job), timeout=seconds)

    def _poll(self, session: int, job: int) -> None:
        """Follow `job` for `session`: on the controller's stream (GET /feed) when it has one, else by
        viewer.watch long polls. Connection trouble is reported and retried with a growing pause."""
        client = self._make_client(self.poll_timeout + self.rpc_timeout)
        state = {"asked": job, "cursor": 0, "live_cursor": 0}
        delay = 0.0
        try:
            while self._current(session, job):
                try:
                    streams = FEED_STREAM in self._controller_features(client)
                    finished = (self._follow_stream if streams else self._follow_polls)(client, session, job, state)
                except FarmError as err:
                    if not self._current(session, job):
                        return
                    self.messages.put(("link", False, str(err)) if err.code is Code.UNREACHABLE
                                      else ("error", session, str(err)))
                    delay = grow(delay, RETRY_FIRST, RETRY_CEILING)
                    self._pause(delay, session, job)
                    continue
                if finished:
                    return
                delay = 0.0
        finally:
            client.close()

    def _controller_features(self, client: Client) -> Features:
        """What the controller can do, asked once (api.version) for every job this viewer follows."""
        if self._features is None:
            self._features = Features.of_reply(client.call("api.version"))
        return self._features

    def _follow_polls(self, client: Client, session: int, job: int, state: dict) -> bool:
        """One viewer.watch long poll; True when nothing about the job changes any more."""
        live = LIVE_BLOCKS in self._controller_features(client)
        reply = client.call("viewer.watch", state["asked"], state["cursor"], self.poll_timeout,
                            *([state["live_cursor"]] if live else []))
        state["live_cursor"] = reply.get("live_cursor", 0)
        self.messages.put(("link", True, ""))
        if not self._current(session, job):
            return True
        self._deliver(session, state, reply)
        return (reply.get("job") or {}).get("state") in ENDED and not reply["strips"]

    def _follow_stream(self, client: Client, session: int, job: int, state: dict) -> bool:
        """Read the stream until it ends (True: the job ended) or the viewer moves on (True); a broken
        stream raises FarmError, and the caller reconnects from the cursor. The records of one read go
        to the window as one reply, so a send of hundreds of pieces is one message, not hundreds."""
        query = {"job": state["asked"], "cursor": state["cursor"]}
        if LIVE_BLOCKS in self._controller_features(client):
            query["live"] = 1      # the live blocks of units in flight too (all of them again after a reconnect)
        reads = client.stream("/feed", query, self.poll_timeout + self.rpc_timeout)
        reading = _StreamReading(state["asked"], state["cursor"])
        try:
            self.messages.put(("link", True, ""))
            for records in reads:
                if not self._current(session, job):
                    return True
                for reply in reading.replies(records):
                    self._deliver(session, state, reply)
                if reading.over:
                    return True
            return False
        finally:
            reads.close()

    def _deliver(self, session: int, state: dict, reply: dict) -> None:
        info = reply.get("job") or {}
        if state["asked"] == 0 and info:
            state["asked"] = info["id"]      # the cursor now belongs to this job: stay with it
        state["cursor"] = reply["cursor"]
        self.messages.put(("feed", session, reply))

    def _scout(self) -> None:
        client = self._make_client(self.rpc_timeout)
        next_newest = next_nodes = 0.0
        delay, last_error = 0.0, ""
        try:
            while not self._stop.is_set():
                try:
                    if self._jobs_wanted.is_set():
                        self._jobs_wanted.clear()
                        self.messages.put(("jobs", client.call("jobs.list")))
                    now = time.monotonic()
                    if self.follow and now >= next_newest:
                        reply = client.call("viewer.watch", 0, CURSOR_END, 0)
                        self.messages.put(("newest", reply.get("job") or {}))
                        next_newest = now + self.scout_interval
                    if now >= next_nodes:
                        self.messages.put(("nodes", client.call("nodes.list")))
                        next_nodes = now + self.nodes_interval
                    self.messages.put(("link", True, ""))
                    delay = 0.0
                    due = min(next_newest if self.follow else next_nodes, next_nodes)
                    wait = max(0.05, due - time.monotonic())
                except FarmError as err:
                    if err.code is Code.UNREACHABLE:
                        self.messages.put(("link", False, str(err)))
                    else:
                        if str(err) != last_error:
                            log.warning("viewer: %s", err)
                        self.messages.put(("jobs", None))    # a pending N/P gives up
                        self.messages.put(("error", 0, str(err)))
                    last_error = str(err)
                    wait = delay = grow(delay, RETRY_FIRST, RETRY_CEILING)
                self._wake.wait(wait)
                self._wake.clear()
        finally:
            client.close()


class _StreamReading:
    """Turns the stream's records into viewer.watch replies, one per read rather than one per record:
    the pieces of a read go together under the job's latest status (a job's first status comes before
    its pieces, later ones after them), and the end of the stream is an empty reply of its own, as the
    last long poll was."""

    def __init__(self, asked: int, cursor: int):
        self.asked, self.cursor = asked, cursor
        self.info: dict[str, Any] = {}
        self.in_flight: list[dict[str, Any]] = []
        self.statuses = 0         # the job's status records read
        self.over = False         # the stream ended, or moved on to a job this viewer did not ask for

    def replies(self, records: Iterable[tuple[dict, bytes]]) -> list[dict[str, Any]]:
        pieces: list[dict[str, Any]] = []
        live: list[dict[str, Any]] = []
        news = settled = False
        for header, payload in records:
            kind = header.get("type")
            if kind == "piece" and header.get("kind") == LIVE:
                header["rows"] = payload
                live.append(header)
                news = True
            elif kind == "piece":
                header["rows"] = payload        # the header is the piece (its other fields go unread)
                pieces.append(header)
                self.cursor, news, settled = header["cursor"], True, False
            elif kind == "job":
                info = header.get("job") or {}
                if info and self.asked and info.get("id") != self.asked:
                    self.over = True        # a newer job: the scout says so, and the viewer decides
                    break
                self.asked = self.asked or info.get("id", 0)
                # Any status but the stream's first comes after the pieces it follows: it settles them.
                settled, self.statuses = self.statuses > 0, self.statuses + 1
                self.info, self.in_flight, news = info, header.get("in_flight", []), True
            elif kind == "end":
                # A job that had ended before the stream began sent its status first, before its
                # pieces: only the end says that every piece is in.
                self.over = True
                ended = [self._reply(pieces, live)] if pieces or live else []
                return ended + [{**self._reply([], []), "in_flight": []}]
        return [{**self._reply(pieces, live), "settled": settled}] if news else []

    def _reply(self, pieces: list[dict[str, Any]], live: list[dict[str, Any]]) -> dict[str, Any]:
        return {"job": self.info, "cursor": self.cursor, "strips": pieces, "in_flight": self.in_flight,
                "live": live}
