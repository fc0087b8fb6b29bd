"""The XML-RPC edge of the controller: a threaded HTTP/1.1 server that is safe to expose.

- Every request must carry `Authorization: Bearer <token>`; it is checked (in
  constant time) before the body is read: wrong or missing gets HTTP 401.
- A method runs only for the roles it was registered for (FORBIDDEN fault).
- Bodies need a Content-Length within the limit (411/400/413); gzip bodies are
  capped after decompression; DOCTYPE/ENTITY declarations are refused before
  the XML parser sees them (no entity expansion tricks).
- Each request must arrive within a deadline (a reaper thread shuts down the
  socket of one that trickles in), idle keep-alive connections close, and the
  number of connections is bounded. TLS handshakes run in the connection's own
  thread with a timeout, so a silent client never blocks `accept()`.
- The dispatcher turns `FarmError` into a Fault with its code, anything
  unexpected into INTERNAL plus a logged traceback; `allow_dotted_names` and
  multicall are never enabled.
"""

from __future__ import annotations

import dataclasses
import http
import inspect
import logging
import re
import socket
import socketserver
import ssl
import threading
import time
import uuid
import xmlrpc.client
import zlib
from typing import Any, Callable, Iterable
from xmlrpc.server import SimpleXMLRPCRequestHandler, SimpleXMLRPCServer

from farm import web
from farm.auth import roles_of
from farm.faults import Code, FarmError
from farm.feedcache import marshal_response

log = logging.getLogger(__name__)

ANY_ROLE = frozenset({"submit", "node", "view"})
_DECLARATION = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Limits:
    max_body: int = 400 * 1024 * 1024      # bytes of a request body, after any decompression
    request_timeout: float = 60.0          # seconds to receive one whole request (headers and body)
    idle_timeout: float = 120.0            # an idle keep-alive connection is closed after this
    handshake_timeout: float = 10.0
    max_connections: int = 512


class _Reaper:
    """Shuts down connections whose request has not arrived in time (slow-loris clients)."""

    def __init__(self):
        self._deadlines: dict[socket.socket, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        threading.Thread(target=self._run, name="request-reaper", daemon=True).start()

    def watch(self, sock: socket.socket, deadline: float) -> None:
        with self._lock:
            self._deadlines[sock] = deadline

    def release(self, sock: socket.socket) -> None:
        with self._lock:
            self._deadlines.pop(sock, None)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            now = time.monotonic()
            with self._lock:
                late = [sock for sock, deadline in self._deadlines.items() if deadline < now]
                for sock in late:
                    del self._deadlines[sock]
            for sock in late:
                log.info("closing a connection whose request did not arrive in time")
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        self._stop.set()


class RequestHandler(SimpleXMLRPCRequestHandler):
    protocol_version = "HTTP/1.1"      # keep-alive: nodes poll over one connection
    rpc_paths = ("/", "/RPC2")
    # Only gzip what is worth it: a task or a status is a few KB of XML, and compressing every one costs
    # the controller more CPU than the bytes saved (the stdlib's default is 1,400 bytes).
    encode_threshold = 8192

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s %s", self.address_string(), format % args)

    def handle_one_request(self) -> None:
        """Wait (idle timeout) for the next request, then give it a deadline to arrive in full."""
        limits = self.server.limits
        self.connection.settimeout(limits.idle_timeout)
        try:
            if not self.rfile.peek(1):
                self.close_connection = True
                return
        except (OSError, ValueError):
            self.close_connection = True
            return
        self.connection.settimeout(limits.request_timeout)
        self.server.reaper.watch(self.connection, time.monotonic() + limits.request_timeout)
        try:
            super().handle_one_request()
        finally:
            self.server.reaper.release(self.connection)

    def _refuse(self, status: http.HTTPStatus, message: str, close: bool = True) -> None:
        body = (message + "\n").encode()
        self.send_response(status)
        if status is http.HTTPStatus.UNAUTHORIZED:
            self.send_header("WWW-Authenticate", 'Bearer realm="povfarm"')
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def _roles(self) -> frozenset[str]:
        header = self.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return frozenset()
        return roles_of(token.strip(), self.server.tokens)

    def do_GET(self) -> None:
        """The farm's page and its static files (they hold no data; every API call needs a token)."""
        web.serve(self)

    def do_POST(self) -> None:
        if not self.is_rpc_path_valid():
            self._refuse(http.HTTPStatus.NOT_FOUND, "not found")
            return
        roles = self._roles()
        if not roles:
            self._refuse(http.HTTPStatus.UNAUTHORIZED, "a valid bearer token is required")
            return
        length = self._content_length()
        if length is None:
            return
        body = self.rfile.read(length)
        if len(body) != length:
            self.close_connection = True
            return
        self.server.reaper.release(self.connection)   # the request is in; a slow method is fine
        body = self._decoded(body)
        if body is None:
            return
        response = self.server.dispatch_request(body, roles)
        self.send_response(http.HTTPStatus.OK)
        self.send_header("Content-Type", "text/xml")
        if self.encode_threshold is not None and len(response) > self.encode_threshold \
                and "gzip" in self.accept_encodings() and getattr(response, "compressible", True):
            response = xmlrpc.client.gzip_encode(response)
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(response)))
        self.end_headers()
        self.wfile.write(response)

    def _content_length(self) -> int | None:
        if "Transfer-Encoding" in self.headers:
            self._refuse(http.HTTPStatus.LENGTH_REQUIRED, "chunked bodies are not accepted; send Content-Length")
            return None
        raw = self.headers.get("Content-Length")
        if raw is None:
            self._refuse(http.HTTPStatus.LENGTH_REQUIRED, "Content-Length is required")
            return None
        try:
            length = int(raw)
        except ValueError:
            length = -1
        if length < 0:
            self._refuse(http.HTTPStatus.BAD_REQUEST, "Content-Length must be a non-negative integer")
            return None
        if length > self.server.limits.max_body:
            self._refuse(http.HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                         f"the request body is over the limit of {self.server.limits.max_body} bytes")
            return None
        return length

    def _decoded(self, body: bytes) -> bytes | None:
        encoding = self.headers.get("Content-Encoding", "identity").lower()
        if encoding == "identity":
            return body
        if encoding != "gzip":
            self._refuse(http.HTTPStatus.NOT_IMPLEMENTED, f"Content-Encoding {encoding} is not supported")
            return None
        try:
            return capped_gunzip(body, self.server.limits.max_body)
        except ValueError as err:
            self._refuse(http.HTTPStatus.REQUEST_ENTITY_TOO_LARGE
                         if "limit" in str(err) else http.HTTPStatus.BAD_REQUEST, str(err))
            return None


def capped_gunzip(data: bytes, limit: int) -> bytes:
    """Decompress gzip data, refusing output over `limit` bytes (a gzip bomb) or a broken stream."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error:
        raise ValueError("the gzip body is corrupt") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise ValueError(f"the decompressed body is over the limit of {limit} bytes")
    return out


class RPCServer(socketserver.ThreadingMixIn, SimpleXMLRPCServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128     # many nodes and viewers connect at once; the default 5 drops them

    def __init__(self, address: tuple[str, int], tokens: dict[str, str],
                 tls: ssl.SSLContext | None = None, limits: Limits = Limits()):
        self.tokens = tokens
        self.tls = tls
        self.limits = limits
        self.reaper = _Reaper()
        self._slots = threading.BoundedSemaphore(limits.max_connections)
        self._methods: dict[str, Callable[..., Any]] = {}
        self._roles: dict[str, frozenset[str]] = {}
        self._signatures: dict[str, inspect.Signature] = {}
        super().__init__(address, requestHandler=RequestHandler, logRequests=False,
                         allow_none=False, use_builtin_types=False)
        self.register_function(self._list_methods, "system.listMethods", ANY_ROLE)
        self.register_function(self._method_help, "system.methodHelp", ANY_ROLE)

    # -- connections ---------------------------------------------------------------------------

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            log.warning("connection limit (%d) reached; refusing %s", self.limits.max_connections,
                        client_address[0])
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def finish_request(self, request, client_address) -> None:
        if self.tls is not None:
            request.settimeout(self.limits.handshake_timeout)
            try:
                request = self.tls.wrap_socket(request, server_side=True)
            except (OSError, ssl.SSLError) as err:
                log.info("TLS handshake with %s failed: %s", client_address[0], err)
                return
        super().finish_request(request, client_address)

    def server_close(self) -> None:
        self.reaper.stop()
        super().server_close()

    # -- methods -------------------------------------------------------------------------------

    def register_function(self, function: Callable[..., Any] | None = None, name: str | None = None,
                          roles: Iterable[str] = ANY_ROLE):
        name = name or function.__name__
        self._methods[name] = function
        self._roles[name] = frozenset(roles)
        self._signatures[name] = inspect.signature(function)
        return function

    def _list_methods(self) -> list[str]:
        """system.listMethods() -> [str]: every method name."""
        return sorted(self._methods)

    def _method_help(self, name: str) -> str:
        """system.methodHelp(name: str) -> str: the method's documentation and the roles that may call it."""
        if name not in self._methods:
            raise FarmError(Code.UNKNOWN_METHOD, f"there is no method {name!r}")
        roles = ", ".join(sorted(self._roles[name]))
        return f"{inspect.getdoc(self._methods[name]) or ''}\nRoles: {roles}."

    def dispatch_request(self, data: bytes, roles: frozenset[str]) -> bytes:
        """One XML-RPC request body in, one response body out; never raises."""
        if _DECLARATION.search(data):
            return self._dump_fault(FarmError(Code.BAD_REQUEST, "XML declarations (DOCTYPE, ENTITY) are not "
                                              "accepted").to_fault())
        try:
            params, method = xmlrpc.client.loads(data, use_builtin_types=False)
        except Exception as err:  # noqa: BLE001 - any parse failure is the caller's malformed request
            log.info("malformed request: %s", err)
            return self._dump_fault(FarmError(Code.BAD_REQUEST, "the request is not valid XML-RPC").to_fault())
        try:
            result = self._call(method, params, roles)
        except xmlrpc.client.Fault as fault:
            return self._dump_fault(fault)
        try:
            return marshal_response(result)   # as xmlrpc.client.dumps, with pre-encoded feed strips verbatim
        except (TypeError, OverflowError):
            return self._dump_fault(self._internal_fault(method))

    def _marshaled_dispatch(self, data, dispatch_method=None, path=None):
        # Only reachable without the handler above; never without roles.
        return self.dispatch_request(data, frozenset())

    @staticmethod
    def _dump_fault(fault: xmlrpc.client.Fault) -> bytes:
        return xmlrpc.client.dumps(fault, methodresponse=True).encode()

    def _call(self, method: str, params: tuple, roles: frozenset[str]) -> Any:
        try:
            function = self._methods.get(method)
            if function is None:
                raise FarmError(Code.UNKNOWN_METHOD, f"there is no method {method!r}")
            if not roles & self._roles[method]:
                raise FarmError(Code.FORBIDDEN, f"a {'/'.join(sorted(roles))} token may not call {method}")
            try:
                self._signatures[method].bind(*params)
            except TypeError:
                raise FarmError(Code.BAD_ARGUMENT,
                                f"{method}{self._signatures[method]} called with {len(params)} arguments") from None
            return function(*params)
        except FarmError as err:
            raise err.to_fault() from None
        except Exception:
            raise self._internal_fault(method) from None

    @staticmethod
    def _internal_fault(method: str) -> xmlrpc.client.Fault:
        """Log the traceback under a short reference the caller can quote."""
        ref = uuid.uuid4().hex[:8]
        log.exception("internal error in %s (ref %s)", method, ref)
        return FarmError(Code.INTERNAL, f"internal error in {method} (ref {ref}); see the controller log"
                         ).to_fault()
