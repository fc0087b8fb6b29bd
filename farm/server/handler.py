"""The HTTP request handler: tokens and seats, the body limit from the headers alone, reading and running
a call, answering it (gzip when worth it, files streamed), and the feed's long chunked responses."""

from __future__ import annotations

import contextlib
import functools
import http
import logging
import re
import socket
import ssl
import time
import urllib.parse
import xmlrpc.client
from typing import Any, Iterable, Iterator
from xmlrpc.server import SimpleXMLRPCRequestHandler

from farm import __version__, web
from farm.auth import roles_of
from farm.faults import Code, FarmError
from farm.server.admission import RETRY_AFTER, Connection, current
from farm.server.bodies import FileReply, Spool, body_chunks
from farm.wire import (fault_of, FAULT_HEADER, METHOD_HEADER, STREAM_TYPE, TIMING_HEADER, BadBody, Base64Value, Busy,
                       HeldBase64, TooLarge, inflated, read_xmlrpc, timing_value)

log = logging.getLogger(__name__)

_CONTENT_LENGTH = re.compile(r"[0-9]{1,18}")


class RequestHandler(SimpleXMLRPCRequestHandler):
    protocol_version = "HTTP/1.1"      # keep-alive: nodes poll over one connection
    rpc_paths = ("/", "/RPC2")
    # Only gzip what is worth it: a task or a status is a few KB of XML, and compressing every one costs
    # the controller more CPU than the bytes saved (the stdlib's default is 1,400 bytes).
    encode_threshold = 8192
    server_version = f"povfarm/{__version__}"    # the Server header (RPC and web page): not Python's version

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s %s", self.address_string(), format % args)

    @property
    def record(self) -> Connection:
        return current.record

    def handle_one_request(self) -> None:
        """Wait for the next request (a new connection: until its header deadline; a trusted one: the
        idle timeout), then give its headers and the whole request their deadlines to arrive."""
        limits, connections = self.server.limits, self.server.connections
        if self.record.trusted:
            connections.deadline(self.record, None)
            self.connection.settimeout(limits.idle_timeout)
            try:
                if not self.rfile.peek(1):
                    self.close_connection = True
                    return
            except (OSError, ValueError):
                self.close_connection = True
                return
            connections.deadline(self.record, limits.header_timeout)
        self.connection.settimeout(limits.request_timeout)
        self._started = time.monotonic() if self.record.trusted else self.record.opened
        try:
            super().handle_one_request()
        except (OSError, ValueError):     # cut off by the reaper, or the client went away
            self.close_connection = True

    def _refuse(self, status: http.HTTPStatus, message: str, close: bool = True, fault: Code | None = None,
                retry_after: int | None = None) -> None:
        body = (message + "\n").encode()
        self.send_response(status)
        if retry_after is not None:
            self.send_header("Retry-After", str(retry_after))
        if fault is not None:
            self.send_header(FAULT_HEADER, str(int(fault)))    # the fault code a client can branch on
        if status is http.HTTPStatus.UNAUTHORIZED:
            self.send_header("WWW-Authenticate", 'Bearer realm="povfarm"')
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def _refused_seat(self, roles: frozenset[str], stream: bool = False) -> bool:
        """Seat the connection by its token's role; if there is no seat, answer 503 with Retry-After."""
        reason = self.server.connections.seat(self.record, roles, stream)
        if reason is None:
            return False
        self._refuse(http.HTTPStatus.SERVICE_UNAVAILABLE, f"the controller is busy: {reason}; retry later",
                     retry_after=RETRY_AFTER)
        return True

    def _roles(self) -> frozenset[str]:
        values = self.headers.get_all("Authorization") or []
        if len(values) != 1:
            return frozenset()
        scheme, _, token = values[0].partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return frozenset()
        return roles_of(token.strip(), self.server.tokens)

    def do_GET(self) -> None:
        """A stream (needs a token), else the farm's page and its static files (they hold no data)."""
        target = urllib.parse.urlsplit(self.path)
        if target.path in self.server.pages:
            self._send_page(self.server.pages[target.path])
            return
        stream = self.server.streams.get(target.path)
        if stream is None:
            web.serve(self)
            return
        roles = self._roles()
        if not roles & stream.roles:
            self._refuse(http.HTTPStatus.UNAUTHORIZED if not roles else http.HTTPStatus.FORBIDDEN,
                         "a valid bearer token is required" if not roles else "this token may not watch")
            return
        if self._refused_seat(roles, stream=True):
            return
        try:
            chunks = stream.function(urllib.parse.parse_qs(target.query, max_num_fields=16))
        except (FarmError, ValueError) as err:    # ValueError: more query fields than allowed
            code = err.code if isinstance(err, FarmError) else Code.BAD_ARGUMENT
            self._refuse(http.HTTPStatus.BAD_REQUEST, str(err), fault=code)
            return
        self._send_stream(chunks)

    def _send_page(self, page) -> None:
        """A page made per request for the roles it names (the metrics): 401/403 without a token for it."""
        started = time.monotonic()
        roles = self._roles()
        if not roles & page.roles:
            self._refuse(http.HTTPStatus.UNAUTHORIZED if not roles else http.HTTPStatus.FORBIDDEN,
                         "a valid bearer token is required" if not roles else "this token may not read this")
            return
        if self._refused_seat(roles):
            return
        body = page.function()
        self.send_response(http.HTTPStatus.OK)
        self.send_header("Content-Type", page.content_type)
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self._metered("GET " + urllib.parse.urlsplit(self.path).path, started, 0, len(body))

    def _metered(self, method: str, started: float, received: int, sent: int) -> None:
        meter = self.server.meter
        meter.observe("request_duration_seconds", time.monotonic() - started, method=method)
        meter.count("received_bytes_total", received)
        meter.count("sent_bytes_total", sent)

    def _write_chunk(self, parts: list[bytes]) -> None:
        """One HTTP chunk of the parts. On a plain socket in one gathering write: the pieces are shared
        by every viewer and never copied for one, and the thread gives up the GIL once per send, not
        once per piece. TLS has no gathering write: the parts are joined."""
        size = sum(len(part) for part in parts)
        self.server.meter.count("sent_bytes_total", size)
        data = [b"%x\r\n" % size, *parts, b"\r\n"]
        self.wfile.flush()
        if isinstance(self.connection, ssl.SSLSocket) or not hasattr(self.connection, "sendmsg"):
            self.wfile.write(b"".join(data))
            self.wfile.flush()
        else:
            send_gathered(self.connection, data)

    def _send_stream(self, chunks: Iterator[list[bytes]]) -> None:
        """A long response in HTTP chunks, each written as it comes. No reaper deadline: a viewer that
        stops reading is cut off by the socket's timeout on a write."""
        self.server.connections.deadline(self.record, None)
        self.close_connection = True
        self.send_response(http.HTTPStatus.OK)
        self.send_header("Content-Type", STREAM_TYPE)
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for parts in chunks:
                self._write_chunk(parts)
            self.wfile.write(b"0\r\n\r\n")
        except OSError as err:
            log.debug("stream to %s ended: %s", self.client_address[0], err)
        except FarmError as err:       # e.g. the database failed: the viewer reconnects and resumes
            log.warning("stream to %s broken off: %s", self.client_address[0], err)
        except Exception:
            log.exception("stream to %s broken off by an unexpected error", self.client_address[0])
        finally:
            chunks.close()

    def do_POST(self) -> None:
        """A call, metered: its latency by method, the bytes of its body and its answer."""
        started, self._method, self._length, self._sent = time.monotonic(), None, 0, 0
        self._body_in: float | None = None
        try:
            self._post()
        finally:
            self._metered(self.server.method_label(self._method or self.headers.get(METHOD_HEADER)), started,
                          self._length, self._sent)

    def _post(self) -> None:
        if not self.is_rpc_path_valid():
            self._refuse(http.HTTPStatus.NOT_FOUND, "not found")
            return
        roles = self._roles()
        if not roles:
            self._refuse(http.HTTPStatus.UNAUTHORIZED, "a valid bearer token is required")
            return
        if self._refused_seat(roles):
            return
        left = self.server.limits.request_timeout - (time.monotonic() - self._started)
        self.server.connections.deadline(self.record, max(left, 0.0))
        declared = self.headers.get(METHOD_HEADER)
        limit = self.server.body_limit(roles, declared)
        length = self._content_length(limit)
        if length is None:
            return
        self._length = length
        with contextlib.ExitStack() as self._held:   # a heavy call's place, until its answer is sent
            response = self._answer(length, limit, roles, declared)
            if response is not None:
                self._reply(response)

    def _reply(self, response: bytes | FileReply) -> None:
        if isinstance(response, FileReply):
            self._send_file(response)
            return
        self.send_response(http.HTTPStatus.OK)
        self.send_header("Content-Type", "text/xml")
        if self._body_in is not None:     # the call's time here, which the client's upload timing leaves out
            self.send_header(TIMING_HEADER, timing_value(time.monotonic() - self._body_in))
        if self.encode_threshold is not None and len(response) > self.encode_threshold \
                and "gzip" in self.accept_encodings() and getattr(response, "compressible", True):
            response = xmlrpc.client.gzip_encode(response)
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(response)))
        self.end_headers()
        self.wfile.write(response)
        self._sent = len(response)

    def _send_file(self, reply: FileReply) -> None:
        try:
            self.send_response(http.HTTPStatus.OK)
            self.send_header("Content-Type", "text/xml")
            self.send_header("Content-Length", str(reply.length))
            self.end_headers()
            for piece in reply.pieces():
                self.wfile.write(piece)
                self._sent += len(piece)
        except OSError as err:
            log.warning("sending a file to %s failed: %s", self.client_address[0], err)
            self.close_connection = True
        finally:
            reply.close()

    def _answer(self, length: int, limit: int, roles: frozenset[str],
                declared: str | None) -> bytes | FileReply | None:
        """Read, parse and run the call; the response body, or None when an HTTP error was sent."""
        encoding = self.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("identity", "gzip"):
            self._refuse(http.HTTPStatus.NOT_IMPLEMENTED, f"Content-Encoding {encoding} is not supported")
            return None
        # Once the body is in, a slow method is fine: the request deadline ends there.
        chunks = body_chunks(self.rfile, length, self._body_read)
        if encoding == "gzip":
            chunks = inflated(chunks, limit)
        values: list[Base64Value] = []
        try:
            if self.server.may_call(roles, declared):   # a heavy one waits for its place before its body
                self._held.enter_context(self.server.gates.enter(declared))
            return self._run(chunks, limit, roles, declared, values)
        except TooLarge as err:
            self._refuse(http.HTTPStatus.REQUEST_ENTITY_TOO_LARGE, str(err))
        except BadBody as err:
            self._refuse(http.HTTPStatus.BAD_REQUEST, str(err))
        except Busy as err:
            self._refuse(http.HTTPStatus.SERVICE_UNAVAILABLE, str(err), retry_after=RETRY_AFTER)
        finally:
            for value in values:       # a request's files never outlive it (a method keeping one moved it)
                value.discard()
        return None

    def _body_read(self) -> None:
        self._body_in = time.monotonic()
        self.server.connections.deadline(self.record, None)

    def _run(self, chunks: Iterable[bytes], limit: int, roles: frozenset[str], declared: str | None,
             values: list[Base64Value]) -> bytes | FileReply:
        server = self.server
        # A large method's one large value has a limit of its own: everything else in it is small.
        max_text = server.limits.small_body(roles) if declared in server.limits.large_methods else limit
        try:
            params, method = read_xmlrpc(chunks, server.limits.max_depth, max_text,
                                         functools.partial(self._large_value, declared, roles, values))
        except (ValueError, FarmError, xmlrpc.client.Fault) as err:
            return self._refused_call(err, chunks)
        self._method = method
        if declared is not None and declared != method:
            return server.dump_fault(fault_of(FarmError(
                Code.BAD_REQUEST, f"the call is to {method}, not {declared} as its header says")))
        if declared is None:     # a heavy method's place, for a caller that did not name it
            self._held.enter_context(server.gates.enter(method))
        return server.dispatch(method, params, roles)

    def _large_value(self, declared: str | None, roles: frozenset[str], values: list[Base64Value],
                     method: str | None, before: tuple) -> Base64Value | None:
        """The decoder of a declared large method's large value: a file (an upload, for a role that may
        write one), or memory up to the method's own limit for it (a result: its unit's rows); either
        within the budget all requests share for them."""
        server, limits = self.server, self.server.limits
        if method != declared or not server.may_call(roles, method) or method not in limits.large_methods:
            return None
        if method in limits.spooled_methods and limits.spool_size(roles):
            values.append(Spool(limits.spool_dir, limits.spool_size(roles), server.spool_budget))
        else:
            values.append(HeldBase64(server.value_limit(method, before), server.held_budget))
        return values[-1]

    def _refused_call(self, err: Exception, chunks: Iterable[bytes]) -> bytes:
        """The fault for a call that could not be read (malformed, or STORAGE while spooling), after
        reading (and inflating) the rest of the body within its limits: a body over them is still a 413."""
        if isinstance(err, FarmError) and err.code is Code.STORAGE:
            log.warning("request from %s refused: %s", self.client_address[0], err)
        elif isinstance(err, FarmError):
            log.info("request from %s refused: %s", self.client_address[0], err)
        else:
            log.info("malformed request from %s: %s", self.client_address[0], err)
        for _ in chunks:
            pass
        fault = err if isinstance(err, FarmError) else FarmError(
            Code.BAD_REQUEST, f"the request is not acceptable XML-RPC: {err}")
        return self.server.dump_fault(self.server.hide_paths(fault_of(fault)))

    def _content_length(self, limit: int) -> int | None:
        if "Transfer-Encoding" in self.headers:
            self._refuse(http.HTTPStatus.LENGTH_REQUIRED, "chunked bodies are not accepted; send Content-Length")
            return None
        values = self.headers.get_all("Content-Length") or []
        if not values:
            self._refuse(http.HTTPStatus.LENGTH_REQUIRED, "Content-Length is required")
            return None
        if len(values) > 1 or not _CONTENT_LENGTH.fullmatch(values[0]):
            self._refuse(http.HTTPStatus.BAD_REQUEST, "Content-Length must appear once, as decimal digits")
            return None
        length = int(values[0])
        if length > limit:
            self._refuse(http.HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                         f"the request body is over the limit of {limit} bytes for this token and method")
            return None
        return length


def send_gathered(sock: socket.socket, parts: list[bytes]) -> None:
    """sendall for a list of buffers, with sendmsg: what a partial send left goes in the next call."""
    views = [memoryview(part) for part in parts if part]
    while views:
        sent = sock.sendmsg(views[:512])    # IOV_MAX is 1024 on Linux
        while sent:
            if sent >= len(views[0]):
                sent -= len(views.pop(0))
            else:
                views[0], sent = views[0][sent:], 0


