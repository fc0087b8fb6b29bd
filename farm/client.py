"""Talking to the controller: one place that turns wire failures into `FarmError`.

`Client.call("jobs.status", 3)` returns the result, or raises `FarmError` with
the controller's fault code, or `Code.UNREACHABLE` when the controller cannot
be reached. Each thread gets its own keep-alive connection, because
`xmlrpc.client.ServerProxy` is not thread-safe.
"""

from __future__ import annotations

import http.client
import socket
import threading
import urllib.parse
import xmlrpc.client
from typing import Any

from farm.faults import Code, FarmError


class _TimeoutTransport(xmlrpc.client.Transport):
    def __init__(self, timeout: float):
        super().__init__()
        self._timeout = timeout

    def make_connection(self, host):
        connection = super().make_connection(host)
        connection.timeout = self._timeout
        return connection


class _SafeTimeoutTransport(xmlrpc.client.SafeTransport):
    def __init__(self, timeout: float):
        super().__init__()
        self._timeout = timeout

    def make_connection(self, host):
        connection = super().make_connection(host)
        connection.timeout = self._timeout
        return connection


def check_url(url: str) -> str:
    """Refuse a controller URL that is not http(s)://host[:port]."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise FarmError(Code.BAD_ARGUMENT, f"{url!r} is not a controller URL like http://HOST:8642")
    try:
        parsed.port
    except ValueError:
        raise FarmError(Code.BAD_ARGUMENT, f"{url!r} has a bad port number") from None
    return url


class Client:
    def __init__(self, url: str, timeout: float = 60.0):
        self.url = check_url(url)
        self.timeout = timeout
        self._local = threading.local()

    def _proxy(self) -> xmlrpc.client.ServerProxy:
        proxy = getattr(self._local, "proxy", None)
        if proxy is None:
            transport_type = _SafeTimeoutTransport if self.url.startswith("https") else _TimeoutTransport
            proxy = xmlrpc.client.ServerProxy(self.url, transport=transport_type(self.timeout),
                                              allow_none=False)
            self._local.proxy = proxy
        return proxy

    def _reset(self) -> None:
        proxy = getattr(self._local, "proxy", None)
        if proxy is not None:
            proxy("close")()
        self._local.proxy = None

    def call(self, method: str, *args: Any) -> Any:
        try:
            return getattr(self._proxy(), method)(*args)
        except xmlrpc.client.Fault as fault:
            raise FarmError.from_fault(fault) from None
        except xmlrpc.client.ProtocolError as err:
            self._reset()
            raise FarmError(Code.UNREACHABLE,
                            f"the controller at {self.url} answered HTTP {err.errcode} {err.errmsg}") from None
        except (OSError, http.client.HTTPException, socket.timeout) as err:
            self._reset()
            reason = getattr(err, "strerror", None) or str(err) or type(err).__name__
            raise FarmError(Code.UNREACHABLE, f"cannot reach the controller at {self.url}: {reason}") from None
        except xmlrpc.client.ResponseError as err:
            self._reset()
            raise FarmError(Code.UNREACHABLE, f"the controller at {self.url} sent a bad response: {err}") from None

    def close(self) -> None:
        self._reset()
