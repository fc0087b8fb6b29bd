"""Talking to the controller: one place that turns wire failures into `FarmError`.

`Client.call("jobs.status", 3)` returns the result, or raises `FarmError` with
the controller's fault code, or `Code.UNREACHABLE` when the controller cannot
be reached. Each thread gets its own keep-alive connection, because xmlrpc's
transports are not thread-safe.
"""

from __future__ import annotations

import base64
import collections
import gzip
import hashlib
import hmac
import http.client
import logging
import re
import socket
import ssl
import threading
import time
import urllib.parse
import xml.parsers.expat
import xmlrpc.client
import zlib
from pathlib import Path
from typing import Any, Iterator

from farm import __version__
from farm.auth import client_token
from farm.faults import Code, FarmError
from farm.wire import (FAULT_HEADER, METHOD_HEADER, TIMING_HEADER, RecordCutter, capped_gunzip, error_of, read_xmlrpc,
                       timing_seconds)


log = logging.getLogger(__name__)

MAX_RESPONSE = 512 * 1024 * 1024   # bytes of a response, after decompression
# Request bodies over this many bytes travel gzip-compressed, Huffman coding only: what a large body holds
# is already deflated (strip rows, bundles) inside base64, and Huffman codes alone win back base64's 4/3
# at a fraction of a full deflate's CPU (measured on chess2's strips: 1.04x the PNG on the wire, 5 ms of
# 150 per frame; a level-6 gzip gives a few hundred bytes more for three times the CPU).
GZIP_THRESHOLD = 16 * 1024
# Smaller bodies over this many bytes are gzipped too, at level 6: a heartbeat's XML (some 460 bytes with
# three leases) goes as about 220, a poll's as 140 instead of 210; on a slow uplink that is what counts.
SMALL_GZIP_THRESHOLD = 256
# Calls whose replies are always small (a task, a lease list): no Accept-Encoding, 23 bytes saved each time,
# as the controller gzips only replies over 8 KB.
SMALL_REPLIES = frozenset({"nodes.poll", "nodes.heartbeat", "nodes.complete", "nodes.complete_and_poll"})


def gzip_huffman(body: bytes) -> bytes:
    """A gzip stream (RFC 1952) of `body`, Huffman-coded without string matching."""
    packer = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS, 9, zlib.Z_HUFFMAN_ONLY)
    return packer.compress(body) + packer.flush()


def binary(data: bytes) -> xmlrpc.client.Binary:
    """`data` as a call's argument that travels as bytes (XML-RPC's base64), not as text; so callers
    need not know the protocol."""
    return xmlrpc.client.Binary(data)


class _Marshaller(xmlrpc.client.Marshaller):
    """xmlrpc's marshaller, writing base64 without line breaks. A strip's rows are deflated already: in
    base64 every character is about as likely as any other, and the request's Huffman coding gives each of
    the 64 six bits, but a 65th symbol (the line break every 76 characters) pushes some to seven: 1.8% more
    bytes on the wire (chess2). XML-RPC readers take base64 with or without line breaks."""

    dispatch = dict(xmlrpc.client.Marshaller.dispatch)

    def dump_binary(self, value: xmlrpc.client.Binary, write) -> None:
        write("<value><base64>")
        write(base64.b64encode(value.data).decode("ascii"))
        write("</base64></value>\n")

    def dump_bytes(self, value: bytes, write) -> None:
        """Bytes go as base64 too (as in xmlrpc's own marshaller): callers need not wrap them in a Binary."""
        self.dump_binary(xmlrpc.client.Binary(value), write)

    dispatch[xmlrpc.client.Binary] = dump_binary
    dispatch[bytes] = dump_bytes


def request_body(method: str, params: tuple) -> bytes:
    """An XML-RPC call as `xmlrpc.client.dumps` writes it, but compact: base64 in one line, and no line
    breaks between tags (text values cannot hold one there: the marshaller escapes their < and >). A
    heartbeat or a poll is some 10% smaller."""
    values = _Marshaller("utf-8", allow_none=False).dumps(params)
    text = (f"<?xml version='1.0'?>\n<methodCall>\n<methodName>{xmlrpc.client.escape(method)}</methodName>\n"
            f"{values}</methodCall>\n")
    return text.replace(">\n<", "><").encode("utf-8", "xmlcharrefreplace")


class _OneWrite:
    """An HTTP connection that sends a request's headers and body in one write. http.client writes them
    separately: a small request then takes two packets instead of one, and its body waits (Nagle's
    algorithm) until the controller acknowledges the headers."""

    _held: list[bytes] | None = None

    def endheaders(self, message_body=None, *, encode_chunked=False):
        if not isinstance(message_body, bytes) or encode_chunked:
            return super().endheaders(message_body, encode_chunked=encode_chunked)
        self._held = []
        try:
            super().endheaders()
        finally:
            head, self._held = b"".join(self._held), None
        return self.send(head + message_body)

    def send(self, data):
        if self._held is not None:
            self._held.append(data)
            return None
        return super().send(data)


class _HTTPConnection(_OneWrite, http.client.HTTPConnection):
    pass


class _HTTPSConnection(_OneWrite, http.client.HTTPSConnection):
    pass


class _FarmTransportMixin:
    """Adds to xmlrpc's transports: a timeout, the bearer token, the method's name in a header (so the
    controller knows the call's size limit before reading it), a cap on the response size (also after
    gzip decompression) and a parser that refuses DTDs: a hostile server cannot exhaust the client's
    memory."""

    user_agent = f"povfarm/{__version__}"   # not Python-xmlrpc/3.x: shorter, and says who calls

    def _setup(self, timeout: float, token: str | None, max_response: int) -> None:
        self._timeout = timeout
        self._token = token
        self._max_response = max_response
        self.method: str | None = None
        self.meter: UploadMeter | None = None
        self._sending: tuple[float, int, int, bool] | None = None

    def send_content(self, connection, request_body):
        plain = len(request_body)
        large = plain > GZIP_THRESHOLD
        if large:
            connection.putheader("Content-Encoding", "gzip")
            request_body = gzip_huffman(request_body)
        elif plain > SMALL_GZIP_THRESHOLD:
            connection.putheader("Content-Encoding", "gzip")
            request_body = gzip.compress(request_body, 6, mtime=0)
        connection.putheader("Content-Length", str(len(request_body)))
        self._sending = (time.monotonic(), len(request_body), plain, large)
        connection.endheaders(request_body)

    def make_connection(self, host):
        if self._connection and host == self._connection[0]:
            return self._connection[1]
        chost, self._extra_headers, x509 = self.get_host_info(host)
        self._connection = host, self._new_connection(chost, x509 or {})
        return self._connection[1]

    def send_headers(self, connection, headers):
        if self.method in SMALL_REPLIES:
            headers = [header for header in headers if header[0] != "Accept-Encoding"]
        if self._token:
            headers = [*headers, ("Authorization", f"Bearer {self._token}")]
        if self.method:
            headers = [*headers, (METHOD_HEADER, self.method)]
        super().send_headers(connection, headers)

    def parse_response(self, response):
        if self._sending is not None:
            # From the first byte sent to the reply's headers: the body's time on the wire (kernel buffers
            # included), plus a round trip and the controller's work. A small call's is the round trip alone.
            started, size, plain, large = self._sending
            seconds = time.monotonic() - started
            spent = min(seconds, timing_seconds(response.getheader(TIMING_HEADER)))   # the controller's own
            if large:
                log.info("sent %s: %d bytes (gzip of %d) in %.2f s (%.2f s of it the controller's)", self.method,
                         size, plain, seconds, spent)
            if self.meter is not None and large:
                self.meter.record(size, seconds - spent)
            elif self.meter is not None:     # a small call: the round trip, which large ones leave out
                self.meter.round_trip(seconds - spent)
        self._sending = None
        body = response.read(self._max_response + 1)
        if len(body) > self._max_response:
            raise xmlrpc.client.ResponseError(f"the response is over {self._max_response} bytes")
        try:
            if response.getheader("Content-Encoding", "") == "gzip":
                body = capped_gunzip(body, self._max_response)
            return read_xmlrpc([body])[0]
        except ValueError as err:
            raise xmlrpc.client.ResponseError(str(err)) from None


class _Transport(_FarmTransportMixin, xmlrpc.client.Transport):
    def __init__(self, timeout: float, token: str | None, max_response: int):
        super().__init__()
        self._setup(timeout, token, max_response)

    def _new_connection(self, host: str, x509: dict) -> http.client.HTTPConnection:
        return _HTTPConnection(host, timeout=self._timeout)


class _SafeTransport(_FarmTransportMixin, xmlrpc.client.SafeTransport):
    def __init__(self, timeout: float, token: str | None, max_response: int, context: ssl.SSLContext,
                 pin: str = ""):
        super().__init__(context=context)
        self._setup(timeout, token, max_response)
        self._pin = pin

    def _new_connection(self, host: str, x509: dict) -> http.client.HTTPSConnection:
        if self._pin:
            return _PinnedHTTPSConnection(host, self._pin, context=self.context, timeout=self._timeout)
        return _HTTPSConnection(host, None, context=self.context, timeout=self._timeout, **x509)


class _PinnedHTTPSConnection(_HTTPSConnection):
    """Trusts exactly the certificate with the SHA-256 fingerprint it was given (one learned from the
    controller's signed announcement), checked right after the handshake, before a byte of the request
    and its token is sent."""

    def __init__(self, host: str, pin: str, **kwargs):
        super().__init__(host, **kwargs)
        self._pin = pin

    def connect(self) -> None:
        super().connect()
        seen = hashlib.sha256(self.sock.getpeercert(binary_form=True) or b"").hexdigest()
        if not hmac.compare_digest(seen, self._pin):
            self.close()
            raise ssl.SSLCertVerificationError(f"its certificate's SHA-256 is {seen}, not {self._pin} as "
                                               f"announced")


class UploadMeter:
    """The rate at which this process's large requests reached the controller: bytes over seconds of its
    last few large requests, so one slow or fast moment does not swing it. A request's seconds leave out the
    round trip, the least that its last few small calls took: over a fast link far away (150 ms each way) a
    70-kB result took 0.31 s, 0.30 of it the trip, and counted as a slow link (results one at a time, rows
    filtered at 3-4x the CPU, heartbeats spaced out, live blocks paced) where its bytes took 10 ms."""

    SAMPLES = 8
    RECENT = 3

    def __init__(self):
        self._lock = threading.Lock()
        self._samples: collections.deque[tuple[int, float]] = collections.deque(maxlen=self.SAMPLES)
        self._trips: collections.deque[float] = collections.deque(maxlen=self.SAMPLES)

    def round_trip(self, seconds: float) -> None:
        """A small call took `seconds` (less the controller's own time)."""
        with self._lock:
            self._trips.append(max(seconds, 0.0))

    def record(self, size: int, seconds: float) -> None:
        """A large request of `size` bytes took `seconds` (less the controller's own time)."""
        with self._lock:
            trip = min(self._trips, default=0.0)
            # At least a tenth of its whole time: a body that went in the trip's shadow says little of the link.
            self._samples.append((size, max(seconds - trip, seconds / 10, 1e-6)))

    def recent_best(self) -> float:
        """The fastest of the last RECENT large requests (0.0 before the first): what the link can do now. A
        busy box holds single requests back (a 20-kB call over loopback once took 0.24 s, 80 kB/s, beside
        eight POV-Rays on two cores) but cannot make a slow link fast."""
        return max(self._recent(), default=0.0)

    def recent_worst(self) -> float:
        """The slowest of the last RECENT large requests (0.0 before the first): a link that has just become
        slow shows in it at once."""
        return min(self._recent(), default=0.0)

    def _recent(self) -> list[float]:
        with self._lock:
            return [size / seconds for size, seconds in list(self._samples)[-self.RECENT:]]

    def bytes_per_second(self) -> float:
        """0.0 until a large request has been sent."""
        with self._lock:
            size = sum(sample[0] for sample in self._samples)
            seconds = sum(sample[1] for sample in self._samples)
        return size / seconds if seconds else 0.0


def check_url(url: str) -> str:
    """Refuse a controller URL that is not http(s)://host[:port]."""
    try:
        parsed = urllib.parse.urlsplit(url)      # ValueError for a broken [IPv6] host
    except ValueError:
        parsed = urllib.parse.SplitResult("", "", "", "", "")
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise FarmError(Code.BAD_ARGUMENT, f"{url!r} is not a controller URL like http://HOST:8642")
    try:
        parsed.port
    except ValueError:
        raise FarmError(Code.BAD_ARGUMENT, f"{url!r} has a bad port number") from None
    return url


class Client:
    def __init__(self, url: str, timeout: float = 60.0, token: str | None = None, ca_file: str | None = None,
                 max_response: int = MAX_RESPONSE, pin_sha256: str = ""):
        self.url = check_url(url)
        self.timeout = timeout
        self.token = token
        self.max_response = max_response
        self.pin = pin_sha256 if self.url.startswith("https") else ""
        if self.url.startswith("https"):
            self._tls = _pinned_tls() if self.pin else _client_tls(ca_file)
        else:
            self._tls = None
        parsed = urllib.parse.urlsplit(self.url)
        self._host = parsed.netloc
        self._handler = urllib.parse.urlunsplit(("", "", *parsed[2:])) or "/RPC2"
        self._local = threading.local()
        self.uploads = UploadMeter()

    def _transport(self) -> _FarmTransportMixin:
        """This thread's transport: its own keep-alive connection."""
        transport = getattr(self._local, "transport", None)
        if transport is None:
            if self._tls is not None:
                transport = _SafeTransport(self.timeout, self.token, self.max_response, self._tls, self.pin)
            else:
                transport = _Transport(self.timeout, self.token, self.max_response)
            transport.meter = self.uploads
            self._local.transport = transport
        return transport

    def _reset(self) -> None:
        transport = getattr(self._local, "transport", None)
        if transport is not None:
            transport.close()
        self._local.transport = None

    def call(self, method: str, *args: Any) -> Any:
        try:
            transport = self._transport()
            transport.method = method
            reply = transport.request(self._host, self._handler, request_body(method, args))
            return reply[0] if len(reply) == 1 else reply
        except xmlrpc.client.Fault as fault:
            raise _in_user_terms(error_of(fault), method) from None
        except xmlrpc.client.ProtocolError as err:
            self._reset()
            raise _http_error(self.url, err, has_token=bool(self.token)) from None
        except ssl.SSLError as err:
            self._reset()
            raise FarmError(Code.UNREACHABLE, f"TLS with the controller at {self.url} failed: "
                                              f"{getattr(err, 'reason', None) or err}") from None
        except (OSError, http.client.HTTPException, socket.timeout) as err:
            self._reset()
            raise FarmError(Code.UNREACHABLE, f"cannot reach the controller at {self.url}: {_reason(err)}") from None
        except (xmlrpc.client.ResponseError, xml.parsers.expat.ExpatError) as err:
            self._reset()
            raise FarmError(Code.UNREACHABLE, f"the controller at {self.url} sent a bad response: {err}") from None

    def close(self) -> None:
        self._reset()

    def stream(self, path: str, query: dict[str, Any], timeout: float) -> Iterator[list[tuple[dict, bytes]]]:
        """GET a stream of records (farm/service/feed.py: a JSON header line, then `size` bytes) and yield
        them as they arrive, as lists of (header, payload): the whole records one read brought, so that a
        reader handles a send of many pieces at once. Raises FarmError as `call` does; UNKNOWN_METHOD when
        the controller has no such stream (an older one). `timeout`: the most a read may wait."""
        parsed = urllib.parse.urlsplit(self.url)
        if self._tls is not None and self.pin:
            connection = _PinnedHTTPSConnection(parsed.hostname, self.pin, port=parsed.port, timeout=timeout,
                                                context=self._tls)
        elif self._tls is not None:
            connection = http.client.HTTPSConnection(parsed.hostname, parsed.port, timeout=timeout,
                                                     context=self._tls)
        else:
            connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=timeout)
        try:
            headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
            try:
                connection.request("GET", f"{path}?{urllib.parse.urlencode(query)}", headers=headers)
                response = connection.getresponse()
            except (OSError, http.client.HTTPException) as err:
                raise FarmError(Code.UNREACHABLE,
                                f"cannot reach the controller at {self.url}: {_reason(err)}") from None
            _check_stream_status(self.url, response, bool(self.token))
            yield from _records(self.url, response)
        finally:
            connection.close()


# What a method is for, in the words of the person whose token cannot call it, and the role it needs.
_PURPOSES = {"jobs.submit": ("submitting a job", "submit"), "bundles.has": ("submitting a job", "submit"),
             "bundles.upload": ("submitting a job", "submit"), "jobs.cancel": ("canceling a job", "submit"),
             "jobs.pause": ("pausing a job", "submit"), "jobs.resume": ("resuming a job", "submit"),
             "bundles.fetch": ("rendering as a node", "node")}
_FORBIDDEN = re.compile(r"^an? ([a-z/]+) token may not call ")


def _in_user_terms(error: FarmError, method: str) -> FarmError:
    """A FORBIDDEN fault names an internal method; say instead which token this is and which one the
    action needs."""
    match = _FORBIDDEN.match(str(error))
    if error.code is not Code.FORBIDDEN or match is None:
        return error
    purpose, role = _PURPOSES.get(method, ("rendering as a node", "node") if method.startswith("nodes.")
                                  else (f"this request ({method})", "submit"))
    return FarmError(Code.FORBIDDEN, f"this is a {match[1]} token; {purpose} needs the {role} token "
                                     f"(--token-file or POVFARM_TOKEN; see 'povfarm token show')")


def _http_error(url: str, err: xmlrpc.client.ProtocolError, has_token: bool = True) -> FarmError:
    if err.errcode == 401 and not has_token:
        return FarmError(Code.UNAUTHORIZED, f"no access token was given, and the controller at {url} needs one: "
                                            f"pass --token-file FILE or set POVFARM_TOKEN (on the controller's "
                                            f"box, 'povfarm token show' prints them)")
    if err.errcode == 401:
        return FarmError(Code.UNAUTHORIZED, f"the controller at {url} refused the access token: give the right "
                                            f"one with --token-file or POVFARM_TOKEN (see 'povfarm token show')")
    if err.errcode == 413:
        return FarmError(Code.REQUEST_TOO_LARGE, f"the controller at {url} refused the request as too large")
    if err.errcode == 503:      # a connection limit (README: Security): transient, so retried like an outage
        wait = (getattr(err, "headers", None) or {}).get("Retry-After", "a few")
        return FarmError(Code.UNREACHABLE, f"the controller at {url} is busy (HTTP 503: one of its connection "
                                           f"limits is reached); retry in {wait} s")
    return FarmError(Code.UNREACHABLE, f"the controller at {url} answered HTTP {err.errcode} {err.errmsg}")


STREAM_READ = 1 << 20            # the most bytes one read of a stream takes


def _check_stream_status(url: str, response: http.client.HTTPResponse, has_token: bool) -> None:
    if response.status == 200:
        return
    text = response.read(4096).decode("utf-8", "replace").strip()
    if response.status == 404:
        raise FarmError(Code.UNKNOWN_METHOD, f"the controller at {url} has no feed stream")
    if response.status == 400:
        try:
            code = Code(int(response.getheader(FAULT_HEADER, "")))
        except ValueError:     # no fault named, or one this client does not know
            code = Code.BAD_ARGUMENT
        raise FarmError(code, text)
    if response.status == 403:
        raise FarmError(Code.FORBIDDEN, f"the controller at {url} refused this token: {text}")
    raise _http_error(url, xmlrpc.client.ProtocolError(url, response.status, response.reason, {}), has_token)


def _reason(err: Exception) -> str:
    """What went wrong with a connection, in its own words."""
    return getattr(err, "strerror", None) or str(err) or type(err).__name__


def _records(url: str, response: http.client.HTTPResponse) -> Iterator[list[tuple[dict, bytes]]]:
    """Lists of (header, payload), the whole records of each read off a stream response, until it ends.
    Reads take what has arrived, up to STREAM_READ bytes, so a send of many pieces costs a few reads
    rather than several per piece."""
    cutter = RecordCutter()
    try:
        while data := response.read1(STREAM_READ):
            records = cutter.cut(data)
            if records:
                yield records
        if cutter.partial:
            raise ValueError("the stream ended inside a record")
    except (OSError, http.client.HTTPException) as err:
        raise FarmError(Code.UNREACHABLE, f"the feed from the controller at {url} broke off: {_reason(err)}") from None
    except (ValueError, AttributeError) as err:
        raise FarmError(Code.UNREACHABLE, f"the controller at {url} sent a bad feed: {err}") from None


def _client_tls(ca_file: str | None) -> ssl.SSLContext:
    """Verify the controller's certificate and host name, against ca_file or the system store."""
    try:
        return ssl.create_default_context(cafile=ca_file or None)
    except (OSError, ssl.SSLError) as err:
        raise FarmError(Code.BAD_ARGUMENT, f"cannot load the CA file {ca_file}: {err}") from None


def _pinned_tls() -> ssl.SSLContext:
    """For a pinned certificate: no CA or host name to check (the fingerprint is checked instead)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def client_for(config, role: str) -> Client:
    """A client for the configured controller, with the token for `role` (submit, node or view)."""
    token = client_token(role, config.token or None, Path(config.token_file) if config.token_file else None)
    return Client(config.controller, config.rpc_timeout, token=token, ca_file=config.ca_file or None,
                  pin_sha256=config.tls_fingerprint.replace(":", "").lower())
