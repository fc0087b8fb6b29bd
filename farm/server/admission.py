"""Who may hold a connection to the controller, and for how long.

A connection goes through three stages:
1. **The lobby.** Just accepted, it waits in one thread's selector until its first bytes arrive; only then
   does it get a thread of its own, so silent sockets cost a file descriptor, not a thread.
2. **Pending.** Until it shows a valid token it counts in a pool of its own, where, once the pool is full, a
   newcomer pushes out an older one (`pushed_out`): idle or unauthenticated sockets never take the seats kept
   for authenticated clients, and are never refused for them either. Each peer address has a fair share of
   the pool, which only counts when the pool is full: a burst from one address (a lab behind one NAT
   reconnecting after a controller restart) may use the room no one else needs, and is never pushed out
   while it is being read just for being many.
3. **Seated.** A valid token takes a seat by role: node, submit or view (`Seats`). Each role has seats of
   its own, so readers can never crowd out the nodes or the submitters; the view and submit roles also have
   a cap per peer address, and feed streams a cap of their own. A request finding no seat gets 503 with
   `Retry-After`, and each peer's refusals are logged once a minute, with their count.

A reaper thread cuts connections whose headers or request did not arrive in time. Both threads run under a
`Supervisor`: no exception in one connection's handling can stop the controller from accepting others.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import selectors
import socket
import threading
import time
from typing import Callable, Collection, Iterable

from farm.auth import NODE, SUBMIT, VIEW
from farm.server.supervise import Supervisor

log = logging.getLogger(__name__)

RETRY_AFTER = 5          # seconds a refused client is told to wait
REFUSAL_LOG_PERIOD = 60.0
current = threading.local()     # `current.record`: the connection this thread serves, while it serves one


def seat_role(roles: Iterable[str]) -> str:
    """The role a token's connection is seated as: the most important one it has (a token shared by every
    role is a node's; a metrics token sits with the viewers)."""
    roles = frozenset(roles)
    return NODE if NODE in roles else SUBMIT if SUBMIT in roles else VIEW


@dataclasses.dataclass(frozen=True)
class Quotas:
    """Connection counts. The node role's seats are what `held` leaves after the other roles' caps, so
    the other roles can never take them."""
    pending: int = 1024                 # not yet shown a valid token, from anyone...
    pending_per_peer: int = 256         # ...and one address's share of them when they are that many
    held: int = 2048                    # seated connections, all roles together
    role_held: tuple[tuple[str, int], ...] = ((SUBMIT, 128), (VIEW, 256))
    peer_held: int = 64                 # seats of a capped role (submit, view) from one address
    streams: int = 128                  # feed streams (viewers and pages watching)...
    peer_streams: int = 32              # ...and from one address

    def role_cap(self, role: str) -> int:
        caps = dict(self.role_held)
        if role in caps:
            return min(caps[role], self.held)
        left = self.held - sum(caps.values())
        return left if left > 0 else self.held     # too few in all to keep any apart


class Seats:
    """The seated connections' counts, by role and by peer; pure bookkeeping (the caller locks)."""

    def __init__(self, quotas: Quotas):
        self.quotas = quotas
        self.total = 0
        self.by_role: collections.Counter[str] = collections.Counter()
        self.by_peer: collections.Counter[tuple[str, str]] = collections.Counter()
        self.streams = 0
        self.streams_by_peer: collections.Counter[str] = collections.Counter()

    def refusal(self, role: str, peer: str, stream: bool = False) -> str | None:
        """Why a connection of `role` from `peer` cannot take a seat (or a stream), or None if it can."""
        quotas = self.quotas
        if not stream:
            if self.by_role[role] >= quotas.role_cap(role):
                return f"{role} connections are at their limit of {quotas.role_cap(role)}"
            if role != NODE and self.by_peer[role, peer] >= quotas.peer_held:
                return f"{role} connections from one address are at their limit of {quotas.peer_held}"
            if self.total >= quotas.held:
                return f"connections are at their limit of {quotas.held}"
            return None
        if self.streams >= quotas.streams:
            return f"feed streams are at their limit of {quotas.streams}"
        if self.streams_by_peer[peer] >= quotas.peer_streams:
            return f"feed streams from one address are at their limit of {quotas.peer_streams}"
        return None

    def take(self, role: str, peer: str, stream: bool = False) -> None:
        if stream:
            self.streams += 1
            self.streams_by_peer[peer] += 1
        else:
            self.total += 1
            self.by_role[role] += 1
            self.by_peer[role, peer] += 1

    def give_back(self, role: str, peer: str, stream: bool = False) -> None:
        if stream:
            self.streams -= 1
            _decrement(self.streams_by_peer, peer)
        else:
            self.total -= 1
            _decrement(self.by_role, role)
            _decrement(self.by_peer, (role, peer))


def pushed_out(pending: Collection[Connection], per_peer: collections.Counter, peer: str,
               quotas: Quotas) -> Connection | None:
    """The pending connection (oldest first in `pending`) that a newcomer from `peer` pushes out, if any.

    Only a full pool pushes anyone out: a cap per address enforced always would cut connections of a burst
    that are merely waiting their turn to be read (300 nodes behind one address reconnecting at once, whose
    every pushed-out call fails and is retried). When the pool is full, an address at its share gives up its
    own oldest; else the oldest of an address over its share goes, so that one address cannot keep the
    others out; else the oldest of all."""
    if len(pending) < quotas.pending:
        return None
    share = quotas.pending_per_peer
    if per_peer[peer] >= share:
        return next(old for old in pending if old.peer == peer)
    return next((old for old in pending if per_peer[old.peer] > share), next(iter(pending)))


def _decrement(counter: collections.Counter, key) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]


class Refusals:
    """Refused connections, counted by reason, and logged at most once per peer per period with how many
    there were since the last line (a flood must not flood the log too)."""

    def __init__(self, period: float = REFUSAL_LOG_PERIOD, clock: Callable[[], float] = time.monotonic):
        self.period, self._clock = period, clock
        self.counts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._last: dict[str, tuple[float, int]] = {}     # peer -> (when logged, refused since)

    def note(self, peer: str, reason: str) -> None:
        now = self._clock()
        with self._lock:
            self.counts[reason] += 1
            logged, since = self._last.get(peer, (float("-inf"), 0))
            if now - logged < self.period:
                self._last[peer] = (logged, since + 1)
                return
            self._last[peer] = (now, 0)
            if len(self._last) > 4096:     # forget peers not heard of for a period
                self._last = {p: v for p, v in self._last.items() if now - v[0] < self.period}
        log.warning("refused %d connection(s) from %s: %s", since + 1, peer, reason)


class Connection:
    """One client connection as the admission bookkeeping sees it."""

    __slots__ = ("sock", "peer", "role", "stream", "waiting", "deadline", "opened")

    def __init__(self, sock: socket.socket, peer: str, deadline: float):
        self.sock, self.peer, self.deadline = sock, peer, deadline
        self.role: str | None = None    # the role it is seated as, once it showed a valid token
        self.stream = False             # it holds a feed stream's seat too
        self.waiting = True             # in the lobby: no thread yet, nothing received yet
        self.opened = time.monotonic()

    @property
    def trusted(self) -> bool:
        return self.role is not None

    def cut(self) -> None:
        """Shut the socket down from another thread; its own thread then sees the end and exits.
        The plain socket call, even for TLS: the TLS object belongs to the connection's thread."""
        try:
            socket.socket.shutdown(self.sock, socket.SHUT_RDWR)
        except (OSError, ValueError):
            pass


class Lobby:
    """New connections wait here, in one thread's selector, until their first bytes arrive."""

    def __init__(self, connections: "Connections", on_ready: Callable[[Connection], None],
                 supervisor: Supervisor):
        self._connections = connections
        self._on_ready = on_ready
        self._selector = selectors.DefaultSelector()
        self._waiting: set[Connection] = set()    # registered in the selector; only the lobby thread touches it
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._ops: collections.deque[tuple[str, Connection]] = collections.deque()
        self._stopped = False
        supervisor.start("connection-lobby", self._serve)

    def add(self, record: Connection) -> None:
        self._post("add", record)

    def drop(self, record: Connection) -> None:
        """Close a waiting connection (or, if it has just been handed a thread, shut it down)."""
        self._post("drop", record)

    def _post(self, op: str, record: Connection) -> None:
        self._ops.append((op, record))
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass   # a wake-up is already pending (or the lobby is closed)

    def _serve(self) -> None:
        while not self._stopped:
            events = self._selector.select(0.5)
            self._apply_ops()
            for key, _ in events:
                if key.fileobj is not self._wake_r:
                    self._hand_over(key.data)
        self._close_all()

    def _hand_over(self, record: Connection) -> None:
        """Its first bytes arrived: out of the selector and to a thread, unless it was dropped earlier in
        this pass (its socket may be closed, and its descriptor's number already another socket's)."""
        if record not in self._waiting:
            return
        self._forget(record)
        if self._connections.leave_lobby(record):
            self._on_ready(record)

    def _forget(self, record: Connection) -> None:
        self._waiting.discard(record)
        try:
            self._selector.unregister(record.sock)
        except (KeyError, ValueError, OSError):
            pass   # closed by its peer's end meanwhile: the selector has let it go already

    def _apply_ops(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass
        while self._ops:
            op, record = self._ops.popleft()
            if op == "add":
                try:
                    self._selector.register(record.sock, selectors.EVENT_READ, record)
                    self._waiting.add(record)
                except (ValueError, OSError):   # closed already
                    self._connections.release(record)
            elif record in self._waiting:
                self._forget(record)
                record.sock.close()
            else:
                record.cut()

    def _close_all(self) -> None:
        for record in self._waiting:
            record.sock.close()
        self._waiting.clear()
        self._selector.close()
        self._wake_w.close()
        self._wake_r.close()

    def stop(self) -> None:
        self._stopped = True
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass


class Connections:
    """Admission, seats and deadlines (see the module's documentation)."""

    def __init__(self, quotas: Quotas, header_timeout: float, on_ready: Callable[[Connection], None],
                 supervisor: Supervisor | None = None):
        self.quotas = quotas
        self.header_timeout = header_timeout
        self._lock = threading.Lock()
        self._pending: collections.OrderedDict[Connection, None] = collections.OrderedDict()
        self._per_peer: collections.Counter[str] = collections.Counter()
        self._seated: set[Connection] = set()
        self.seats = Seats(quotas)
        self.refusals = Refusals()
        self._stop = threading.Event()
        supervisor = supervisor or Supervisor()
        self.lobby = Lobby(self, on_ready, supervisor)
        supervisor.start("request-reaper", self._reap)

    def admit(self, sock: socket.socket, peer: str) -> None:
        """A new connection: into the lobby, pushing an older pending one out when the pool is full."""
        record = Connection(sock, peer, time.monotonic() + self.header_timeout)
        with self._lock:
            pushed = pushed_out(self._pending, self._per_peer, peer, self.quotas)
            if pushed is not None:
                self._forget_pending(pushed)
                self._close(pushed)
            self._pending[record] = None
            self._per_peer[peer] += 1
        self.lobby.add(record)

    def _close(self, record: Connection) -> None:
        """Under the lock: end a pending connection, in the lobby or in its thread."""
        if record.waiting:
            self.lobby.drop(record)
        else:
            record.cut()

    def leave_lobby(self, record: Connection) -> bool:
        """Its first bytes arrived: it gets a thread, unless it was pushed out meanwhile."""
        with self._lock:
            record.waiting = False
            if record not in self._pending:
                record.cut()
                return False
            return True

    def _forget_pending(self, record: Connection) -> None:
        if self._pending.pop(record, 1) is None:
            _decrement(self._per_peer, record.peer)

    def seat(self, record: Connection, roles: Iterable[str], stream: bool = False) -> str | None:
        """The connection showed a valid token: seat it by its role (and as a feed stream), if there is room.
        Else why not (the refusal is noted)."""
        role = record.role or seat_role(roles)
        # The seats it still needs: a connection's (once), and a feed stream's (once).
        kinds = [False] * (not record.trusted) + [True] * (stream and not record.stream)
        with self._lock:
            reason = next(filter(None, (self.seats.refusal(role, record.peer, kind) for kind in kinds)), None)
            if reason is None:
                for kind in kinds:
                    self.seats.take(role, record.peer, kind)
                if not record.trusted:
                    self._forget_pending(record)
                    self._seated.add(record)
                    record.role = role
                record.stream = record.stream or stream
                return None
        self.refusals.note(record.peer, reason)
        return reason

    def release(self, record: Connection) -> None:
        with self._lock:
            self._forget_pending(record)
            if record in self._seated:
                self._seated.discard(record)
                self.seats.give_back(record.role, record.peer)
                if record.stream:
                    self.seats.give_back(record.role, record.peer, stream=True)

    def counts(self) -> dict[str, int]:
        """Connections now, by what holds them: "pending" (no valid token yet), each seated role, and
        "stream" (feed streams, which hold a role's seat too); every one, at zero too."""
        with self._lock:
            return {"pending": len(self._pending), **{role: self.seats.by_role[role] for role in (NODE, SUBMIT, VIEW)},
                    "stream": self.seats.streams}

    def deadline(self, record: Connection, seconds: float | None) -> None:
        record.deadline = None if seconds is None else time.monotonic() + seconds

    def _reap(self) -> None:
        while not self._stop.wait(0.5):
            now = time.monotonic()
            with self._lock:
                late = [r for r in (*self._pending, *self._seated) if r.deadline is not None and r.deadline < now]
                for record in late:
                    record.deadline = None
                    if record in self._pending:
                        self._forget_pending(record)
                        self._close(record)
                    else:
                        record.cut()
            for record in late:
                log.info("closed a connection from %s whose request did not arrive in time", record.peer)

    def stop(self) -> None:
        self._stop.set()
        self.lobby.stop()
