"""The XML-RPC edge of the controller: a threaded HTTP/1.1 server that is safe to expose.

Memory and threads per request are bounded by design:
- Every request must carry `Authorization: Bearer <token>`; it is checked (in
  constant time) before the body is read: wrong or missing gets HTTP 401.
- The body limit is decided from the headers alone, before a byte of the body is
  read: each role has a small limit for any method, and only the methods named
  large (`bundles.upload` for a submit token, results for a node token) may send
  more, when the client names the method in `X-Povfarm-Method` (the parsed call
  must then be that method). `Content-Length` must be plain digits and appear once.
- The body is read in chunks: gzip is inflated as it arrives with a running cap
  (and nothing may follow its end), XML is parsed by expat as it arrives, refusing
  any DTD (whatever the document's encoding), nesting deeper than a limit, and text
  beyond the small limit. Base64 values are decoded as they arrive, never held as
  text. A large method's one large value has a limit of its own: an upload goes
  straight to a temporary file (SHA-256 computed on the way; per role, and all
  such files together within a budget), a node's result is held up to what its
  unit's rows can be (the method's `rpc_value_limit`); everything else in the
  call counts against the small limit. Temporary files go when the request ends.
- Heavy methods (uploads, results, ranged fetches) have a bounded number of places:
  a call waits a little for one, then gets 503 with Retry-After, as when the upload
  budget is spent.
- Connections (`farm.server.admission`): a new connection waits in a lobby (one
  selector, no thread) until it sends something, and must send its request
  headers within a few seconds; until it has shown a valid token it counts in a
  bounded pending pool where a newcomer pushes out the oldest; a valid token
  takes a seat by role (nodes' seats are their own; view and submit are capped
  per peer address too), else 503 with Retry-After. A long poll ends when its
  client disconnects (`departure_watch`). TLS handshakes run in the
  connection's own thread. The loops that accept, reap and watch are
  supervised: restarted when they fail, the process ended if they keep failing.
- `bundles.fetch`, `bundles.fetch_range` and `jobs.fetch` answer with a `FileReply`,
  streamed from disk.
- The dispatcher turns `FarmError` into a Fault with its code (server paths
  hidden), anything unexpected into INTERNAL plus a logged traceback;
  `allow_dotted_names` and multicall are never enabled.
"""

from __future__ import annotations

import dataclasses
import errno
import inspect
import logging
import os
import re
import socket
import socketserver
import ssl
import threading
import time
import uuid
import xmlrpc.client
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator
from xmlrpc.server import SimpleXMLRPCServer

from farm.auth import ANY_ROLE, NODE, SUBMIT, VIEW
from farm.faults import Code, FarmError
from farm.hostos import HOST
from farm.meter import Meter
from farm.server.admission import Connection, Connections, Quotas, current
from farm.server.bodies import Budget, FileReply, Gates, sweep_spool
from farm.server.handler import RequestHandler
from farm.server.supervise import Supervisor
from farm.wire import fault_of, read_xmlrpc

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Limits:
    max_body: int = 400 * 1024 * 1024      # bytes of a large method's body, also after decompression
    role_body: tuple[tuple[str, int], ...] = ((VIEW, 64 * 1024), (SUBMIT, 1024 * 1024),
                                              (NODE, 1024 * 1024))   # any method, per role
    large_methods: frozenset[str] = frozenset()    # methods that may send up to max_body
    spooled_methods: frozenset[str] = frozenset()  # their base64 argument is streamed to a file...
    role_spool: tuple[tuple[str, int], ...] = ()   # ...of at most this many bytes, per role (none: no file)
    max_spool: int = 1 << 30               # bytes all requests' files may hold at once
    max_held: int = 1 << 30                # bytes all requests' other large values may hold at once
    spool_dir: Path | None = None          # where those files go (default: the system's temp dir)
    gates: tuple[tuple[frozenset[str], int], ...] = ()   # heavy methods, and how many may run at once
    gate_wait: float = 5.0                 # seconds a heavy call waits for its turn before a 503
    hidden_paths: tuple[str, ...] = ()     # server paths that faults never show
    max_depth: int = 256                   # XML elements nested in a call
    header_timeout: float = 5.0            # seconds for a request's headers to arrive
    request_timeout: float = 60.0          # seconds to receive one whole request (headers and body)
    idle_timeout: float = 120.0            # an idle keep-alive connection is closed after this
    handshake_timeout: float = 10.0
    quotas: Quotas = Quotas()              # connections by stage, role and peer (farm.server.admission)

    def small_body(self, roles: Iterable[str]) -> int:
        return _most(self.role_body, roles)

    def spool_size(self, roles: Iterable[str]) -> int:
        """The most bytes one request of these roles may write to a file (0: it may not)."""
        return _most(self.role_spool, roles)


def _most(table: tuple[tuple[str, int], ...], roles: Iterable[str]) -> int:
    sizes = dict(table)
    return max((sizes.get(role, 0) for role in roles), default=0)


_SCARCE = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


@dataclasses.dataclass(frozen=True)
class _Stream:
    function: Callable[[dict[str, list[str]]], Iterator[list[bytes]]]
    roles: frozenset[str]


@dataclasses.dataclass(frozen=True)
class _Page:
    function: Callable[[], bytes]
    roles: frozenset[str]
    content_type: str


class RPCServer(socketserver.ThreadingMixIn, SimpleXMLRPCServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024    # many nodes and viewers connect at once; the default 5 drops them

    def __init__(self, address: tuple[str, int], tokens: dict[str, str],
                 tls: ssl.SSLContext | None = None, limits: Limits = Limits(),
                 supervisor: Supervisor | None = None, meter: Meter | None = None):
        self.tokens = tokens
        self.meter = meter or Meter()     # requests' latency and bytes (farm.meter)
        declare_request_metrics(self.meter)
        self.tls = tls
        self.limits = limits
        HOST.raise_open_files_limit()
        sweep_spool(limits.spool_dir)
        self.connections = Connections(limits.quotas, limits.header_timeout, self._start_thread, supervisor)
        self.gates = Gates(limits.gates, limits.gate_wait)
        self.spool_budget = Budget(limits.max_spool)
        self.held_budget = Budget(limits.max_held)
        self._methods: dict[str, Callable[..., Any]] = {}
        self._value_limits: dict[str, Callable[[tuple], int]] = {}
        self._roles: dict[str, frozenset[str]] = {}
        self._signatures: dict[str, inspect.Signature] = {}
        self._encoded: dict[str, tuple[Any, bytes]] = {}   # shared method -> (its last result, encoded)
        self.streams: dict[str, _Stream] = {}
        self.pages: dict[str, _Page] = {}
        super().__init__(address, requestHandler=RequestHandler, logRequests=False,
                         allow_none=False, use_builtin_types=False)
        self.register_function(self._list_methods, "system.listMethods", ANY_ROLE)
        self.register_function(self._method_help, "system.methodHelp", ANY_ROLE)

    def body_limit(self, roles: frozenset[str], declared: str | None) -> int:
        """The most a request may send, from its headers alone: the role's small limit, unless it names
        a large method its role may call."""
        if declared in self.limits.large_methods and self.may_call(roles, declared):
            return self.limits.max_body
        return self.limits.small_body(roles)

    def may_call(self, roles: frozenset[str], method: str | None) -> bool:
        return bool(roles & self._roles.get(method or "", frozenset()))

    def value_limit(self, method: str, before: tuple) -> int:
        """The most bytes a large method's large value may hold, from the parameters before it (the
        method's `rpc_value_limit`, which may also raise FarmError), else the body limit."""
        limit = self._value_limits.get(method)
        if limit is None:
            return self.limits.max_body
        try:
            return limit(before)
        except FarmError:
            raise
        except Exception:
            raise FarmError(Code.INTERNAL, self._internal_fault(method).faultString) from None

    # -- connections ---------------------------------------------------------------------------

    def get_request(self) -> tuple[socket.socket, Any]:
        """accept(), which fails while the process is out of descriptors or memory: pause a moment then,
        or the accepting loop would spin on the listening socket it cannot empty."""
        try:
            return super().get_request()
        except OSError as err:
            if err.errno in _SCARCE:
                log.error("cannot accept a connection: %s", os.strerror(err.errno))
                time.sleep(0.1)
            raise

    def handle_error(self, request, client_address) -> None:
        """An unexpected error in one connection: logged, never printed, never fatal to the others."""
        log.exception("error while serving %s", client_address[0] if client_address else "a client")

    def process_request(self, request, client_address) -> None:
        """A new connection waits in the lobby (no thread) until it sends something."""
        self.connections.admit(request, client_address[0])

    def _start_thread(self, record: Connection) -> None:
        request = record.sock
        try:
            client_address = request.getpeername()
        except OSError:
            client_address = (record.peer, 0)
        thread = threading.Thread(target=self._serve_connection, args=(request, client_address, record),
                                  daemon=True)
        try:
            thread.start()
        except RuntimeError:     # no thread to be had: drop this one, keep accepting
            log.error("cannot start a thread for a connection from %s", record.peer)
            self.connections.release(record)
            self.shutdown_request(request)

    def _serve_connection(self, request, client_address, record: Connection) -> None:
        current.record = record
        try:
            if self.tls is not None:
                request.settimeout(self.limits.handshake_timeout)
                try:
                    request = record.sock = self.tls.wrap_socket(request, server_side=True)
                except (OSError, ssl.SSLError) as err:
                    log.info("TLS handshake with %s failed: %s", client_address[0], err)
                    return
            self.RequestHandlerClass(request, client_address, self)
        except (OSError, ValueError) as err:
            log.debug("connection from %s ended: %s", client_address[0], err)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            current.record = None
            self.connections.release(record)
            self.shutdown_request(request)

    def server_close(self) -> None:
        self.connections.stop()
        super().server_close()

    # -- methods -------------------------------------------------------------------------------

    def register_function(self, function: Callable[..., Any] | None = None, name: str | None = None,
                          roles: Iterable[str] = ANY_ROLE):
        name = name or function.__name__
        self._methods[name] = function
        self._roles[name] = frozenset(roles)
        self._signatures[name] = inspect.signature(function)
        limit = getattr(function, "rpc_value_limit", None)   # a method of the same object, by name
        if limit is not None:
            self._value_limits[name] = getattr(function.__self__, limit)
        return function

    def register_stream(self, path: str, function: Callable[[dict[str, list[str]]], Iterator[list[bytes]]],
                        roles: Iterable[str]) -> None:
        """Serve `GET path` to the roles as a long chunked response: `function(query)` returns a generator
        of sends (lists of bytes, each send one HTTP chunk), or raises FarmError (HTTP 400 with its
        sentence and fault code) for bad query arguments."""
        self.streams[path] = _Stream(function, frozenset(roles))

    def register_page(self, path: str, function: Callable[[], bytes], roles: Iterable[str],
                      content_type: str) -> None:
        """Serve `GET path` to the roles: `function()` makes the whole body, of `content_type`."""
        self.pages[path] = _Page(function, frozenset(roles), content_type)

    def method_label(self, method: object) -> str:
        """A request's method as a metric's label: a registered one's name, else "other" (a client may
        send any name, and each label value is a series of its own)."""
        return method if isinstance(method, str) and method in self._methods else "other"

    def _list_methods(self) -> list[str]:
        """system.listMethods() -> [str]: every method name."""
        return sorted(self._methods)

    def _method_help(self, name: str) -> str:
        """system.methodHelp(name: str) -> str: the method's documentation and the roles that may call it."""
        if name not in self._methods:
            raise FarmError(Code.UNKNOWN_METHOD, f"there is no method {name!r}")
        roles = ", ".join(sorted(self._roles[name]))
        return f"{method_help(name, self._methods[name])}\nRoles: {roles}."

    def dispatch_request(self, data: bytes, roles: frozenset[str]) -> bytes:
        """One XML-RPC request body in, one response body out; never raises."""
        try:
            params, method = read_xmlrpc([data], self.limits.max_depth)
        except (ValueError, xmlrpc.client.Fault) as err:
            log.info("malformed request: %s", err)
            return self.dump_fault(fault_of(FarmError(Code.BAD_REQUEST,
                                                      f"the request is not acceptable XML-RPC: {err}")))
        response = self.dispatch(method, params, roles)
        if isinstance(response, FileReply):
            try:
                return b"".join(response.pieces())
            finally:
                response.close()
        return response

    def dispatch(self, method: str | None, params: tuple, roles: frozenset[str]) -> bytes | FileReply:
        """Run a parsed call; the response body (or a file to stream as it). Never raises."""
        if not isinstance(method, str):
            return self.dump_fault(fault_of(FarmError(Code.BAD_REQUEST, "the request names no method")))
        try:
            result = self._call(method, params, roles)
        except xmlrpc.client.Fault as fault:
            return self.dump_fault(self.hide_paths(fault))
        if isinstance(result, FileReply):
            return result
        try:
            return self._encode(method, result)
        except (TypeError, OverflowError, RecursionError):
            return self.dump_fault(self._internal_fault(method))

    def _encode(self, method: str, result: Any) -> bytes:
        """The response carrying `result`. A method marked shared (`farm.api.rpc`) returns the very same
        object while its answer is unchanged, so the bytes made for it last time serve again: twenty pages
        listing fifty jobs every two seconds cost one encoding, not twenty."""
        last = self._encoded.get(method)
        if last is not None and last[0] is result:
            return last[1]
        body = xmlrpc.client.dumps((result,), methodresponse=True, allow_none=False).encode()
        if getattr(self._methods[method], "rpc_shared", False):
            self._encoded[method] = (result, body)
        return body

    def _marshaled_dispatch(self, data, dispatch_method=None, path=None):
        # Only reachable without the handler above; never without roles.
        return self.dispatch_request(data, frozenset())

    def hide_paths(self, fault: xmlrpc.client.Fault) -> xmlrpc.client.Fault:
        """The fault without the server's own paths (its data directory): clients need not know them."""
        text = fault.faultString
        for path in self.limits.hidden_paths:
            text = text.replace(path, "<data-dir>")
        return xmlrpc.client.Fault(fault.faultCode, text)

    @staticmethod
    def dump_fault(fault: xmlrpc.client.Fault) -> bytes:
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
            raise fault_of(err) from None
        except Exception:
            raise self._internal_fault(method) from None

    @staticmethod
    def _internal_fault(method: str) -> xmlrpc.client.Fault:
        """Log the traceback under a short reference the caller can quote."""
        ref = uuid.uuid4().hex[:8]
        log.exception("internal error in %s (ref %s)", method, ref)
        return fault_of(FarmError(Code.INTERNAL, f"internal error in {method} (ref {ref}); see the controller log"))


def declare_request_metrics(meter: Meter) -> None:
    meter.declare("request_duration_seconds", "histogram",
                  "Seconds from a request's arrival to its answer, by method (long polls wait inside).")
    meter.declare("received_bytes_total", "counter", "Request body bytes received, as sent (gzip too).",
                  labels=[()])
    meter.declare("sent_bytes_total", "counter", "Response body bytes sent: answers, files and feed streams.",
                  labels=[()])


def server_tls_context(cert: str, key: str) -> ssl.SSLContext | None:
    """A server TLS context from a certificate chain and key, or None for plain HTTP."""
    if not cert and not key:
        return None
    if not (cert and key):
        raise FarmError(Code.BAD_ARGUMENT, "TLS needs both --tls-cert and --tls-key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as err:
        raise FarmError(Code.BAD_ARGUMENT, f"cannot load the TLS certificate or key: {err}") from None
    return context


_PARAM = re.compile(r"^@param (\w+): ([^,\n]+)", re.MULTILINE)
_RETURN = re.compile(r"^@return: ([^,:\n]+)", re.MULTILINE)


def method_help(name: str, function: Callable[..., Any]) -> str:
    """A method's documentation headed by its signature, read from its `@param name: type` and
    `@return: type` lines: `jobs.status(job: int) -> struct`."""
    doc = inspect.getdoc(function) or ""
    if doc.startswith(name):
        return doc
    params = ", ".join(f"{param}: {kind.strip()}" for param, kind in _PARAM.findall(doc))
    returns = _RETURN.search(doc)
    return f"{name}({params}) -> {returns.group(1).strip() if returns else 'nothing'}\n{doc}"
