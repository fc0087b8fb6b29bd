"""The XML-RPC edge shared by the controller: a threaded HTTP/1.1 server whose
dispatcher turns `FarmError` into `Fault` and anything unexpected into an
INTERNAL fault plus a logged traceback, never a leaked class name.

Methods are plain functions registered under dotted names (`jobs.submit`);
`allow_dotted_names` and multicall are never enabled.
"""

from __future__ import annotations

import inspect
import logging
import socketserver
import uuid
import xmlrpc.client
from typing import Any, Callable
from xmlrpc.server import SimpleXMLRPCRequestHandler, SimpleXMLRPCServer

from farm.faults import Code, FarmError

log = logging.getLogger(__name__)


class RequestHandler(SimpleXMLRPCRequestHandler):
    protocol_version = "HTTP/1.1"      # keep-alive: nodes poll over one connection
    rpc_paths = ("/", "/RPC2")
    timeout = 120                      # an idle keep-alive connection is closed after this

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s %s", self.address_string(), format % args)


class RPCServer(socketserver.ThreadingMixIn, SimpleXMLRPCServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int]):
        super().__init__(address, requestHandler=RequestHandler, logRequests=False,
                         allow_none=False, use_builtin_types=False)
        self._methods: dict[str, Callable[..., Any]] = {}
        self._signatures: dict[str, inspect.Signature] = {}
        self.register_function(self._list_methods, "system.listMethods")
        self.register_function(self._method_help, "system.methodHelp")

    def register_function(self, function: Callable[..., Any] | None = None, name: str | None = None):
        name = name or function.__name__
        self._methods[name] = function
        self._signatures[name] = inspect.signature(function)
        return function

    def _list_methods(self) -> list[str]:
        """system.listMethods() -> [str]: every method name."""
        return sorted(self._methods)

    def _method_help(self, name: str) -> str:
        """system.methodHelp(name: str) -> str: the method's documentation."""
        if name not in self._methods:
            raise FarmError(Code.UNKNOWN_METHOD, f"there is no method {name!r}")
        return inspect.getdoc(self._methods[name]) or ""

    def _marshaled_dispatch(self, data, dispatch_method=None, path=None):
        try:
            params, method = xmlrpc.client.loads(data, use_builtin_types=False)
        except Exception as err:  # noqa: BLE001 - any parse failure is the caller's malformed request
            log.info("malformed request: %s", err)
            return self._dump_fault(FarmError(Code.BAD_REQUEST, "the request is not valid XML-RPC").to_fault())
        try:
            result = self._dispatch(method, params)
        except xmlrpc.client.Fault as fault:
            return self._dump_fault(fault)
        try:
            return xmlrpc.client.dumps((result,), methodresponse=True, allow_none=False).encode()
        except (TypeError, OverflowError):
            return self._dump_fault(self._internal_fault(method))

    @staticmethod
    def _dump_fault(fault: xmlrpc.client.Fault) -> bytes:
        return xmlrpc.client.dumps(fault, methodresponse=True).encode()

    def _dispatch(self, method: str, params: tuple) -> Any:
        try:
            function = self._methods.get(method)
            if function is None:
                raise FarmError(Code.UNKNOWN_METHOD, f"there is no method {method!r}")
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
