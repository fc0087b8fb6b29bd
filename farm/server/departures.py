"""Long polls that end when their client leaves: whether the client of the request this thread serves has
disconnected, and one epoll thread that wakes a waiter the moment its client goes."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from typing import Callable, Iterator

from farm.server.admission import current
from farm.server.supervise import Supervisor


def client_gone() -> bool:
    """In a method: whether the client of the request this thread serves has disconnected (a long
    poll then stops waiting). False outside a request or where it cannot be told."""
    record = getattr(current, "record", None)
    if record is None:
        return False
    try:
        fd = record.sock.fileno()
        if fd < 0:
            return True
        poller = select.poll()
        poller.register(fd, select.POLLIN | getattr(select, "POLLRDHUP", 0))
        events = poller.poll(0)
    except (OSError, ValueError, AttributeError):
        return False
    if not events:
        return False
    flags = events[0][1]
    if flags & (select.POLLHUP | select.POLLERR | select.POLLNVAL | getattr(select, "POLLRDHUP", 0)):
        return True
    try:   # readable: data (a pipelined request) or the end of the stream
        return socket.socket.recv(record.sock, 1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True


class Departures:
    """One thread watches the sockets of requests waiting in long polls (Linux epoll, for the end of the
    stream only) and wakes a waiter whose client disconnects, so a waiting poll costs nothing until then."""

    _EVENTS = getattr(select, "EPOLLRDHUP", 0) | getattr(select, "EPOLLHUP", 0) | getattr(select, "EPOLLERR", 0)

    def __init__(self):
        self._epoll = select.epoll()
        self._lock = threading.Lock()
        self._waiting: dict[int, Callable[[], None]] = {}
        Supervisor().start("departures", self._run)

    def watch(self, fd: int, wake: Callable[[], None]) -> bool:
        with self._lock:
            try:
                self._epoll.register(fd, self._EVENTS)
            except OSError:
                return False
            self._waiting[fd] = wake
            return True

    def unwatch(self, fd: int) -> None:
        with self._lock:
            if self._waiting.pop(fd, None) is not None:
                try:
                    self._epoll.unregister(fd)
                except OSError:
                    pass

    def _run(self) -> None:
        while True:
            for fd, _ in self._epoll.poll():
                with self._lock:        # never held while waking: the waker takes the waiter's lock
                    wake = self._waiting.pop(fd, None)
                    if wake is not None:
                        self._epoll.unregister(fd)
                if wake is not None:
                    wake()


departures_singleton: Departures | None = None
departures_lock = threading.Lock()


def departure_watcher() -> Departures | None:
    global departures_singleton
    if not hasattr(select, "epoll"):
        return None
    with departures_lock:
        if departures_singleton is None:
            departures_singleton = Departures()
        return departures_singleton


@contextlib.contextmanager
def departure_watch(wake: Callable[[], None]) -> Iterator[Callable[[], bool]]:
    """Around a long poll's wait: `wake` is called (from another thread) if the client of the request this
    thread serves disconnects; yields a function that says whether it has. Outside a request, or without
    epoll, it only tells when asked."""
    record = getattr(current, "record", None)
    watcher = departure_watcher() if record is not None else None
    fd = record.sock.fileno() if record is not None else -1
    departed = threading.Event()

    def fired() -> None:
        departed.set()
        wake()
    if watcher is None or fd < 0 or not watcher.watch(fd, fired):
        yield client_gone
        return
    try:
        yield departed.is_set      # a flag: waiters check it on every wake-up, so it must be cheap
    finally:
        watcher.unwatch(fd)


