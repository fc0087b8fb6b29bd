"""What both ends of a connection to the controller share: the headers, reading an XML-RPC document as it
arrives (bounded, never holding base64 as text), inflating gzip with a cap, and the feed's framed records.

Clients (`farm.client`, the node, the viewer, the CLI) and the server (`farm.server`) both import this module;
it imports nothing of the server, so a client never loads the HTTP server.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
import xml.parsers.expat
import xmlrpc.client
import zlib
from typing import Any, Callable, Iterable, Protocol

from farm.faults import Code, FarmError

METHOD_HEADER = "X-Povfarm-Method"      # the method a client calls, so limits are known before the body
FAULT_HEADER = "X-Povfarm-Fault"        # the fault code of a refusal that is not an XML-RPC response
# The controller's own time on a call, from its body read to its answer (W3C Server Timing, "app;dur=MS"):
# a client timing its upload takes it off, so a busy controller is not taken for a slow uplink.
TIMING_HEADER = "Server-Timing"
STREAM_TYPE = "application/x-povfarm-feed"
CHUNK = 64 * 1024

# The wire's own types, for the code on either side that takes or gives them (the API adapters, the node).
Binary = xmlrpc.client.Binary
DateTime = xmlrpc.client.DateTime
Fault = xmlrpc.client.Fault


def timing_value(seconds: float) -> str:
    """The TIMING_HEADER value for the controller's `seconds` on a call."""
    return f"app;dur={max(0.0, seconds) * 1000:.1f}"


def timing_seconds(value: str | None) -> float:
    """The controller's seconds on a call from its TIMING_HEADER value (0.0 without one, or unreadable)."""
    found = re.search(r"(?:^|,)\s*app\s*;\s*dur=([0-9]+(?:\.[0-9]*)?)", value or "")
    return float(found.group(1)) / 1000 if found else 0.0


def fault_of(error: FarmError) -> Fault:
    """A FarmError as the Fault that carries it: its code and sentence."""
    return Fault(int(error.code), error.detail)


def error_of(fault: Fault) -> FarmError:
    """A Fault as the FarmError it carries (a code this side does not know is INTERNAL)."""
    try:
        code = Code(fault.faultCode)
    except ValueError:
        code = Code.INTERNAL
    return FarmError(code, str(fault.faultString))


def shown(value: object, limit: int = 60) -> str:
    """A value someone sent, as a sentence names it: a number or a text (quoted, escaped, cut short) as
    itself, anything else by its XML-RPC type; never a Python repr with a class name and an address, and
    never longer than about `limit` characters however much was sent."""
    if isinstance(value, bool):
        return f"the boolean {'true' if value else 'false'}"
    if isinstance(value, int):
        return repr(value) if value.bit_length() <= 64 else f"a whole number of {value.bit_length()} bits"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return repr(value[:limit]) + ("..." if len(value) > limit else "")
    if isinstance(value, Binary):
        return f"binary data ({len(value.data)} bytes)"
    if isinstance(value, DateTime):
        return f"the date and time {shown(str(value.value), limit)}"
    if isinstance(value, dict):
        return f"a struct of {len(value)} member(s)"
    if isinstance(value, (list, tuple)):
        return f"an array of {len(value)} value(s)"
    if value is None:
        return "nil"
    return "a value of another type"
# The most seconds the controller holds a long poll (jobs.wait, viewer.watch, nodes.poll), whatever the
# client asks: a client's HTTP timeout must outlast it. A node's poll is held at most a third of the lease
# timeout too, so an idle node is heard from again long before it could be presumed dead.
LONG_POLL_CAP = 30.0


class TooLarge(Exception):
    """The body (after decompression) is over its limit."""


class BadBody(Exception):
    """The body cannot be read (corrupt compression, cut short)."""


class Busy(Exception):
    """The controller has no room for this request now (heavy calls, upload files): try again soon."""


class Refused(Exception):
    """The XML is not an acceptable XML-RPC document."""



# -- gzip ------------------------------------------------------------------------------------------

def inflated(chunks: Iterable[bytes], limit: int) -> Iterable[bytes]:
    """gzip data inflated as it arrives, never more than `limit` bytes in all (a gzip bomb stops there)."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    total = 0
    try:
        for chunk in chunks:
            while chunk:
                if inflater.eof:
                    raise BadBody("data follows the end of the gzip body")
                out = inflater.decompress(chunk, CHUNK)
                total += len(out)
                if total > limit:
                    raise TooLarge(f"the decompressed body is over the limit of {limit} bytes")
                if out:
                    yield out
                chunk = inflater.unconsumed_tail or inflater.unused_data
        out = inflater.flush(limit - total + 1)
        if len(out) + total > limit:
            raise TooLarge(f"the decompressed body is over the limit of {limit} bytes")
        if out:
            yield out
    except zlib.error:
        raise BadBody("the gzip body is corrupt") from None
    if not inflater.eof:
        raise BadBody("the gzip body is cut short")


def capped_gunzip(data: bytes, limit: int) -> bytes:
    """Decompress gzip data, refusing output over `limit` bytes (a gzip bomb) or a broken stream."""
    try:
        return b"".join(inflated([data], limit))
    except (TooLarge, BadBody) as err:
        raise ValueError(str(err)) from None


# -- XML-RPC documents, read as they arrive ------------------------------------------------------

class Allowance(Protocol):
    """Bytes shared by all requests (`farm.server.bodies.Budget`): what a decoded value keeps counts."""
    total: int

    def take(self, size: int) -> bool: ...

    def give(self, size: int) -> None: ...


class Base64Value:
    """Decodes a base64 value as its text arrives, `limit` bytes at most: never its text whole. With a
    budget, the bytes it keeps count against it (shared with other requests) until `discard`."""

    def __init__(self, limit: int, budget: Allowance | None = None, what: str = "values"):
        self._limit = limit
        self._budget, self._taken, self._what = budget, 0, what
        self._pending = b""
        self.size = 0

    def feed(self, text: str) -> None:
        data = self._pending + "".join(text.split()).encode("ascii", "replace")
        cut = len(data) - len(data) % 4
        self._pending = data[cut:]
        if cut:
            self._decode(data[:cut])

    def _decode(self, text: bytes) -> None:
        try:
            data = base64.b64decode(text, validate=True)
        except binascii.Error:
            raise Refused("a base64 value is malformed") from None
        self.size += len(data)
        if self.size > self._limit:
            raise TooLarge(f"a base64 value is over the limit of {self._limit} bytes")
        if self._budget is not None:
            if not self._budget.take(len(data)):
                if self.size > self._budget.total:   # it would not fit even alone
                    raise TooLarge(f"a base64 value is over the limit of {self._budget.total} bytes")
                raise Busy(f"the controller is receiving as many {self._what} as it has room for; try again "
                            f"in a few seconds")
            self._taken += len(data)
        self._keep(data)

    def _keep(self, data: bytes) -> None:
        raise NotImplementedError

    def _last(self) -> None:
        if self._pending:
            self._decode(self._pending + b"=" * (-len(self._pending) % 4))
            self._pending = b""

    def finish(self) -> Any:
        raise NotImplementedError

    def abandon(self) -> None:
        pass

    def discard(self) -> None:
        """The request is over: what the value held leaves the budget."""
        self.abandon()
        if self._budget is not None:
            self._budget.give(self._taken)
        self._taken = 0


class HeldBase64(Base64Value):
    """A base64 value decoded into memory."""

    def __init__(self, limit: int, budget: Allowance | None = None):
        super().__init__(limit, budget, "results")
        self._parts: list[bytes] = []

    def _keep(self, data: bytes) -> None:
        self._parts.append(data)

    def finish(self) -> xmlrpc.client.Binary:
        self._last()
        data, self._parts = b"".join(self._parts), []
        return xmlrpc.client.Binary(data)


class CallReader(xmlrpc.client.Unmarshaller):
    """xmlrpc's unmarshaller with bounds: nesting depth, and bytes held in memory, as text or as base64
    values (decoded as they arrive, never held as text). A call's large value is its first base64
    parameter: `large(method, the parameters before it)` gives its decoder, with a limit of its own (or
    None: it is like any other); every other value counts against `max_text`."""

    def __init__(self, max_depth: int, max_text: int,
                 large: Callable[[str | None, tuple], Base64Value | None] | None):
        super().__init__(use_datetime=False, use_builtin_types=False)
        self._depth = 0
        self._max_depth = max_depth
        self._text_left = max_text
        self._large = large
        self._base64: Base64Value | None = None
        self._counted = False       # whether the value being decoded counts against max_text

    def start(self, tag, attrs):
        self._depth += 1
        if self._depth > self._max_depth:
            raise Refused(f"the call is nested more than {self._max_depth} elements deep")
        super().start(tag, attrs)
        if tag == "base64":
            self._base64 = self._decoder()

    def _decoder(self) -> Base64Value:
        if self._large is not None and not self._marks:     # a parameter, not inside an array or struct
            large, self._large = self._large, None           # one per call
            decoder = large(self.getmethodname(), tuple(self._stack))
            if decoder is not None:
                self._counted = False
                return decoder
        self._counted = True
        return HeldBase64(max(self._text_left, 0))

    def data(self, text):
        if self._base64 is not None:
            self._base64.feed(text)
            return
        self._text_left -= len(text)
        if self._text_left < 0:
            raise TooLarge("the call holds more text than its limit")
        super().data(text)

    def end(self, tag):
        self._depth -= 1
        if tag == "base64" and self._base64 is not None:
            value, self._base64 = self._base64, None
            if self._counted:
                self._text_left -= value.size
            self.append(value.finish())
            self._value = False
            return None
        return super().end(tag)

    def abandon(self) -> None:
        if self._base64 is not None:
            self._base64.abandon()


def refuse_dtd(*_args) -> None:
    raise Refused("XML declarations (DOCTYPE, ENTITY) are not accepted")


def safe_expat(target: xmlrpc.client.Unmarshaller):
    """An expat parser that refuses any DTD, entity declaration or external reference, whatever the
    document's encoding (expat decodes first, so UTF-16 tricks meet the same handlers)."""
    parser = xml.parsers.expat.ParserCreate()
    parser.buffer_text = True
    parser.buffer_size = CHUNK
    parser.SetParamEntityParsing(xml.parsers.expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartDoctypeDeclHandler = refuse_dtd
    parser.EntityDeclHandler = refuse_dtd
    parser.UnparsedEntityDeclHandler = refuse_dtd
    parser.ExternalEntityRefHandler = refuse_dtd
    parser.StartElementHandler = target.start
    parser.EndElementHandler = target.end
    parser.CharacterDataHandler = target.data
    target.xml(None, None)
    return parser


def read_xmlrpc(chunks: Iterable[bytes], max_depth: int = 256, max_text: int = 1 << 62,
                large: Callable[[str | None, tuple], Base64Value | None] | None = None) -> tuple[tuple, str | None]:
    """(params, method name) of an XML-RPC call or response fed in chunks (`large`: see CallReader).
    Raises `xmlrpc.client.Fault` for a fault response, ValueError for anything else that is not
    acceptable XML-RPC."""
    reader = CallReader(max_depth, max_text, large)
    parser = safe_expat(reader)
    try:
        for chunk in chunks:
            parser.Parse(chunk, False)
        parser.Parse(b"", True)
        return reader.close(), reader.getmethodname()
    except (Refused, xml.parsers.expat.ExpatError, xmlrpc.client.ResponseError) as err:
        raise ValueError(str(err) or "not a well-formed XML-RPC document") from None
    except (TypeError, AttributeError, IndexError, KeyError, OverflowError) as err:
        # The unmarshaller meets malformed structure (a member without a name, ...).
        raise ValueError(f"not a well-formed XML-RPC document ({type(err).__name__})") from None
    finally:
        reader.abandon()


# -- the feed's framed records -----------------------------------------------------------------

MAX_RECORD_HEADER = 1 << 20      # bytes of one stream record's header line
MAX_RECORD = 64 << 20            # bytes of one stream record's payload
_HEADER_DECODER = json.JSONDecoder()



def record(header: dict, payload: bytes = b"") -> bytes:
    """One framed record: the JSON header (with the payload's size) on a line, then the payload."""
    line = json.dumps({**header, "size": len(payload)}, separators=(",", ":")).encode()
    return line + b"\n" + payload



class RecordCutter:
    """Whole records out of reads that cut the stream anywhere. A payload is copied once, out of the read
    it came in; only the record a read cut off is put together, from the end of one read and the start of
    the next."""

    def __init__(self):
        self.partial = bytearray()       # the start of a record the last read cut off

    def cut(self, data: bytes) -> list[tuple[dict, bytes]]:
        """The records that `data`, the next read, completes (ValueError: a bad record)."""
        records, start = [], 0
        if self.partial:
            start = self._complete(data)
            if start < 0:
                return []
            records, _ = _whole_records(self.partial)
            self.partial.clear()
        more, used = _whole_records(data, start)
        self.partial += memoryview(data)[used:]
        return records + more

    def _complete(self, data: bytes) -> int:
        """Append to `partial` what its record still needs of `data`: the offset in `data` after that, or
        -1 when `data` is not enough (all of it is appended)."""
        taken, newline = 0, self.partial.find(b"\n")
        if newline < 0:
            line_end = data.find(b"\n")
            if line_end < 0 or len(self.partial) + line_end > MAX_RECORD_HEADER:
                self.partial += data
                _check_header_length(len(self.partial))
                return -1
            self.partial += memoryview(data)[:line_end + 1]
            taken, newline = line_end + 1, len(self.partial) - 1
        need = newline + 1 + _record_size(_header(self.partial[:newline])) - len(self.partial)
        if need > len(data) - taken:
            self.partial += memoryview(data)[taken:]
            return -1
        self.partial += memoryview(data)[taken:taken + need]
        return taken + need


def _whole_records(data: bytes | bytearray, start: int = 0) -> tuple[list[tuple[dict, bytes]], int]:
    """The whole records in `data` from `start` on and where they end (ValueError: a bad record)."""
    records, used = [], start
    while (newline := data.find(b"\n", used)) >= 0:
        _check_header_length(newline - used)
        header = _header(data[used:newline])
        end = newline + 1 + _record_size(header)
        if end > len(data):
            break
        records.append((header, bytes(data[newline + 1:end])))    # from bytes: the slice is the copy
        used = end
    if newline < 0:
        _check_header_length(len(data) - used)
    return records, used


def _header(line: bytes | bytearray) -> dict:
    """A record's header line as a dict. The decoder's own raw_decode: json.loads spends about as long
    again guessing the encoding and skipping blanks as on the decoding, and a stream has a header per piece."""
    text = line.decode().strip()
    header, end = _HEADER_DECODER.raw_decode(text)
    if end != len(text) or not isinstance(header, dict):
        raise ValueError("a record header that is not one JSON object")
    return header


def _record_size(header: dict) -> int:
    size = header.get("size", 0)
    if not isinstance(size, int) or not 0 <= size <= MAX_RECORD:
        raise ValueError(f"a record of {size!r} bytes")
    return size


def _check_header_length(length: int) -> None:
    if length > MAX_RECORD_HEADER:
        raise ValueError("a record header over the size limit")



# -- addresses -----------------------------------------------------------------------------------

def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


