"""Zero-config on a LAN: a controller announces itself, nodes and clients find it.

`povfarm controller --announce` broadcasts one small UDP datagram to port 8643
(`farm.config.DISCOVERY_PORT`) every `announce_interval` seconds. It says where the
controller listens (its URL) and, with TLS, the SHA-256 fingerprint of its
certificate, so a client that finds it this way pins that certificate instead of
needing a CA. No token is ever sent.

Wire format (UTF-8 JSON, at most `MAX_DATAGRAM` bytes, nested two deep):

    {"povfarm": 1, "body": "<JSON text>", "sig": {"node": HEX, "submit": HEX, "view": HEX}}

`body` is itself JSON: {"url", "tls_sha256" ("" without TLS), "name", "time"
(Unix seconds), "nonce"}. Each `sig` is HMAC-SHA256 over the body's exact bytes,
keyed per role by `announcement_key(token, role)` (PBKDF2 of that role's token),
so whoever holds any one role's token can check the announcement with that
token and nobody else can, while the holder of a view token still cannot forge
an announcement that a node would believe.

What the signature protects: the URL and the fingerprint come from someone who
holds the token of the reader's role, recently (the `time` must be within
`WINDOW` seconds of the reader's clock, and a nonce is accepted once). What it
does not: it hides nothing (anyone on the LAN reads the URL); it cannot stop a
replay within the window (which only repeats the real controller's own URL and
fingerprint); it cannot stop anyone from jamming or flooding the port (then
discovery times out); and anyone holding a role's token can announce a
controller of their own to the other holders of that role.

Pure parts (`encode`, `Receiver`) take the clock and keys as arguments; the
socket parts (`Announcer`, `listen`) are thin edges around them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import re
import secrets
import socket
import ssl
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Callable, Mapping

from farm.auth import ROLES, client_token
from farm.client import check_url
from farm.config import DEFAULT_PORT, Config
from farm.faults import Code, FarmError
from farm.wire import is_loopback, shown

log = logging.getLogger(__name__)

VERSION = 1
WINDOW = 60.0                # seconds an announcement is believed, either side of the reader's clock
MAX_DATAGRAM = 1024
KDF_ITERATIONS = 100_000     # slows offline guessing of a weak hand-chosen token from a captured announcement
LOCAL_URL = f"http://127.0.0.1:{DEFAULT_PORT}"
DISCOVER = "discover"        # --controller discover: skip the local controller, listen at once
_FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")
_MAX_NOTED_SENDERS = 32      # senders whose bad announcements are logged at WARNING (then DEBUG)
GARBAGE_LOG_INTERVAL = 60.0  # seconds between two log lines about datagrams that are no announcement
_OUTER_DEPTH, _BODY_DEPTH = 2, 1   # {"sig": {...}} inside the datagram; the body is one flat object
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


@dataclasses.dataclass(frozen=True)
class Announcement:
    url: str
    tls_sha256: str          # lower-case hex, "" when the controller speaks plain HTTP
    name: str                # the controller's host name, for messages only
    time: float
    nonce: str


class Rejected(Exception):
    """A datagram that is not a believable announcement; `kind` says why (garbled, signature, stale,
    replayed), `claimed` is the URL it claims, unverified, for messages."""

    def __init__(self, kind: str, detail: str, claimed: str = ""):
        super().__init__(detail)
        self.kind, self.claimed = kind, claimed


def announcement_key(token: str, role: str) -> bytes:
    """The HMAC key for one role's signature. Derived, never the token itself, and slow to derive,
    so a captured announcement is no quick test for guessed tokens."""
    salt = f"povfarm announcement v{VERSION} {role}".encode()
    return hashlib.pbkdf2_hmac("sha256", token.encode(), salt, KDF_ITERATIONS)


def role_keys(tokens: Mapping[str, str]) -> dict[str, bytes]:
    """{role: key} for a controller's tokens (a shared token derives one key per role all the same)."""
    return {role: announcement_key(token, role) for role, token in tokens.items()}


def normal_fingerprint(text: str) -> str:
    """A SHA-256 fingerprint as 64 lower-case hex digits (colons and case as openssl prints them are fine)."""
    value = text.replace(":", "").strip().lower()
    if not _FINGERPRINT.match(value):
        raise FarmError(Code.BAD_ARGUMENT, f"{text!r} is not a SHA-256 fingerprint (64 hex digits)")
    return value


def certificate_sha256(cert_file: str) -> str:
    """The SHA-256 fingerprint of the first certificate in a PEM chain file (the server's own)."""
    try:
        text = Path(cert_file).read_text(encoding="ascii", errors="replace")
    except OSError as err:
        raise FarmError(Code.BAD_ARGUMENT, f"cannot read the TLS certificate {cert_file}: "
                                           f"{err.strerror or err}") from None
    match = re.search(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", text, re.DOTALL)
    if match is None:
        raise FarmError(Code.BAD_ARGUMENT, f"{cert_file} holds no PEM certificate")
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(match.group(0))).hexdigest()


def encode(url: str, tls_sha256: str, name: str, keys: Mapping[str, bytes], now: float,
           nonce: str | None = None) -> bytes:
    """One announcement datagram, signed once per role key."""
    body = json.dumps({"url": url, "tls_sha256": tls_sha256, "name": name, "time": round(now, 3),
                       "nonce": nonce or secrets.token_hex(12)}, separators=(",", ":"), sort_keys=True)
    signatures = {role: _sign(key, body.encode()) for role, key in sorted(keys.items())}
    data = json.dumps({"povfarm": VERSION, "body": body, "sig": signatures}, separators=(",", ":")).encode()
    if len(data) > MAX_DATAGRAM:
        raise FarmError(Code.BAD_ARGUMENT, f"the announcement for {url} is over {MAX_DATAGRAM} bytes: "
                                           f"use a shorter --announce-url or host name")
    return data


def _sign(key: bytes, body: bytes) -> str:
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def _parse(datagram: bytes) -> tuple[bytes, dict[str, str], dict]:
    """(the body's signed bytes, {role: hex signature}, the body with `time` as a finite float) of a
    well-formed datagram, else Rejected('garbled'). Anyone on the LAN can send anything to the port, so
    everything is checked before it is used: the size, the nesting (before json.loads, whose recursion
    a deep `[[[[...` would exhaust), UTF-8 without lone surrogates (the body's bytes are what is signed),
    every field's type, and a time that is a finite number."""
    try:
        if len(datagram) > MAX_DATAGRAM:
            raise ValueError(f"over {MAX_DATAGRAM} bytes")
        outer = _json_object(datagram.decode("utf-8"), _OUTER_DEPTH)
        body_text, signatures = outer.get("body"), outer.get("sig")
        if type(outer.get("povfarm")) is not int or outer["povfarm"] != VERSION:
            raise ValueError("not an announcement of this version")
        if not isinstance(body_text, str) or not isinstance(signatures, dict):
            raise ValueError("no body or signatures")
        signed = body_text.encode("utf-8")       # a lone surrogate cannot be signed: UnicodeEncodeError
        body = _json_object(body_text, _BODY_DEPTH)
        if not all(isinstance(body.get(key), str) for key in ("url", "tls_sha256", "name", "nonce")):
            raise ValueError("missing fields")
        body["time"] = _finite_time(body.get("time"))
    except ValueError as err:                   # so are UnicodeError and JSONDecodeError
        raise Rejected("garbled", f"not a povfarm announcement ({err})") from None
    return signed, {role: sig for role, sig in signatures.items() if isinstance(sig, str) and sig.isascii()}, body


def _json_object(text: str, depth: int) -> dict:
    """A JSON object nested at most `depth` deep; no NaN or Infinity."""
    if _nesting(text) > depth:
        raise ValueError(f"nested over {depth} deep")
    value = json.loads(text, parse_constant=_no_constant)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def _nesting(text: str) -> int:
    """How deep arrays and objects nest in JSON text, strings left out. An unterminated string's
    brackets count too: such text is garbled anyway."""
    depth = deepest = 0
    for char in _JSON_STRING.sub('""', text):
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number")


def _finite_time(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("no time")
    try:
        seconds = float(value)                   # an int of hundreds of digits: OverflowError
    except OverflowError:
        raise ValueError("a time out of range") from None
    if not math.isfinite(seconds):
        raise ValueError("a time out of range")
    return seconds


class Receiver:
    """Decides which datagrams to believe: signed with one of `keys` (the reader's token, derived per
    role), recent by `clock`, and not seen before. Remembers the nonces of the last WINDOW seconds."""

    def __init__(self, keys: Mapping[str, bytes], clock: Callable[[], float] = time.time, window: float = WINDOW,
                 ticker: Callable[[], float] = time.monotonic):
        self.keys = dict(keys)
        self.clock = clock
        self.window = window
        self._seen: dict[str, float] = {}
        self.counts = {"garbled": 0, "signature": 0, "stale": 0, "replayed": 0}
        self.ticker = ticker                 # paces the log line about garbage
        self._garbage_told: float | None = None
        self._garbage_untold = 0

    def check(self, datagram: bytes) -> Announcement:
        """The announcement, or Rejected. Signature first: nothing unsigned is looked at further."""
        signed, signatures, body = _parse(datagram)
        claimed = body["url"]
        if not any(role in signatures and hmac.compare_digest(signatures[role].encode(), _sign(key, signed).encode())
                   for role, key in self.keys.items()):
            raise Rejected("signature", "its signature does not match this token", claimed)
        now = self.clock()
        age = now - body["time"]
        if abs(age) > self.window:
            raise Rejected("stale", f"it is signed correctly but {'dated' if age > 0 else 'ahead by'} "
                                    f"{abs(age):.0f} s{' ago' if age > 0 else ''} (over {self.window:.0f} s): "
                                    f"replayed, or this box's clock is off (use NTP)", claimed)
        self._seen = {nonce: seen for nonce, seen in self._seen.items() if now - seen <= 2 * self.window}
        if body["nonce"] in self._seen:
            raise Rejected("replayed", "its nonce was seen before (a replay)", claimed)
        self._seen[body["nonce"]] = now
        try:
            url = check_url(claimed)
            fingerprint = normal_fingerprint(body["tls_sha256"]) if body["tls_sha256"] else ""
        except FarmError as err:
            raise Rejected("garbled", str(err), claimed) from None
        if url.startswith("https") and not fingerprint:
            raise Rejected("garbled", "it names an https URL without the certificate's fingerprint", claimed)
        return Announcement(url, fingerprint, body["name"], body["time"], body["nonce"])

    def accept(self, datagram: bytes, sender: str, noted: set[str]) -> Announcement | None:
        """`check`, logging a rejection so that a flood cannot flood the log: a believable-looking one at
        WARNING the first time for each sender and reason (kept in `noted`, up to _MAX_NOTED_SENDERS),
        garbage in one WARNING line at most every GARBAGE_LOG_INTERVAL seconds, which counts the rest;
        everything else at DEBUG."""
        try:
            return self.check(datagram)
        except Rejected as why:
            self.counts[why.kind] += 1
            if why.kind == "garbled" and not why.claimed:
                self._garbage(sender, why)
                return None
            key = f"{sender} {why.kind}"
            loud = key not in noted and len(noted) < _MAX_NOTED_SENDERS
            if loud:
                noted.add(key)
            log.log(logging.WARNING if loud else logging.DEBUG, "ignored an announcement from %s claiming a "
                    "controller at %s: %s", sender, shown(why.claimed, 100), why)
            return None

    def _garbage(self, sender: str, why: Rejected) -> None:
        now = self.ticker()
        self._garbage_untold += 1
        if self._garbage_told is not None and now - self._garbage_told < GARBAGE_LOG_INTERVAL:
            log.debug("ignored a datagram from %s: %s", sender, why)
            return
        if self._garbage_told is None:
            log.warning("ignored a datagram from %s on the discovery port: %s (more of these are counted and "
                        "logged at most every %.0f s)", sender, why, GARBAGE_LOG_INTERVAL)
        else:
            log.warning("ignored %d datagram(s) that were no povfarm announcement in the last %.0f s, the latest "
                        "from %s: %s", self._garbage_untold, now - self._garbage_told, sender, why)
        self._garbage_told, self._garbage_untold = now, 0

    def timeout_message(self, port: int, seconds: float, role: str) -> str:
        if self.counts["signature"]:
            return (f"heard {self.counts['signature']} announcement(s) on UDP port {port} in {seconds:.0f} s, but "
                    f"none was signed with this token: the {role} token is wrong (on the controller's box, "
                    f"'povfarm token show --role {role}' prints the right one), or they were forged")
        if self.counts["stale"]:
            return (f"heard announcement(s) on UDP port {port} signed with this token, but dated more than "
                    f"{self.window:.0f} s from this box's clock: set the clocks right (NTP), or give --controller URL")
        garbage = self.counts["garbled"]
        heard = f" (only {garbage} datagram(s) that were no povfarm announcement)" if garbage else ""
        return (f"no controller announced itself on UDP port {port} within {seconds:.0f} s{heard}: start it with "
                f"--announce (listening on the network, --bind), let UDP port {port} through the firewall, or "
                f"give --controller URL")


# -- the controller's side -------------------------------------------------------------------------

class Announcer:
    """Broadcasts the controller's announcement every `config.announce_interval` seconds."""

    def __init__(self, config: Config, bound_url: str, tokens: Mapping[str, str],
                 clock: Callable[[], float] = time.time):
        self.config = config
        self.bound = urllib.parse.urlsplit(bound_url)
        self.keys = role_keys(tokens)
        self.clock = clock
        self.tls_sha256 = certificate_sha256(config.tls_cert) if config.tls_cert else ""
        self.target = (config.announce_to, config.discovery_port)
        self.url = self.advertised_url()     # refuses a loopback-only controller at start
        self._sender: socket.socket | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="announcer", daemon=True)
        self._failing = False

    def advertised_url(self) -> str:
        """--announce-url, else the address the controller is bound to, else the address this box sends
        the broadcast from (the one the LAN knows it by)."""
        if self.config.announce_url:
            return check_url(self.config.announce_url)
        host = self.bound.hostname or ""
        if is_loopback(host):
            raise FarmError(Code.BAD_ARGUMENT, f"--announce needs a controller the network can reach, but it "
                                               f"listens on {host} only: add --bind 0.0.0.0 (or this box's LAN "
                                               f"address), or --announce-url URL")
        if _unspecified(host):
            host = self._source_address()
        return f"{self.bound.scheme}://{host}:{self.bound.port}"

    def _source_address(self) -> str:
        with _broadcast_socket("") as probe:
            try:
                probe.connect(self.target)
                return probe.getsockname()[0]
            except OSError as err:
                raise FarmError(Code.BAD_ARGUMENT, f"cannot tell which address to announce (no route to "
                                                   f"{self.target[0]}: {err.strerror or err}): give --announce-url "
                                                   f"URL or --bind ADDRESS") from None

    def packet(self) -> bytes:
        return encode(self.url, self.tls_sha256, socket.gethostname(), self.keys, self.clock())

    def start(self) -> None:
        self._sender = _broadcast_socket("" if _unspecified(self.bound.hostname) else self.bound.hostname)
        log.info("announcing %s%s on UDP %s:%d every %.0f s", self.url,
                 f" (certificate SHA-256 {self.tls_sha256})" if self.tls_sha256 else "", *self.target,
                 self.config.announce_interval)
        self._thread.start()

    def _run(self) -> None:
        assert self._sender is not None
        while True:
            self._send(self._sender)
            if self._stop.wait(max(0.2, self.config.announce_interval)):
                return

    def _send(self, sender: socket.socket) -> None:
        """One broadcast; a failure is logged once (the network may come back), not every interval."""
        try:
            if not self.config.announce_url and _unspecified(self.bound.hostname):
                self.url = self.advertised_url()     # this box's address may change (DHCP)
            sender.sendto(self.packet(), self.target)
        except (OSError, FarmError) as err:
            if not self._failing:
                log.warning("cannot send the announcement to %s:%d: %s (retrying quietly)", *self.target,
                            getattr(err, "strerror", None) or err)
            self._failing = True
            return
        if self._failing:
            log.info("announcing again to %s:%d", *self.target)
        self._failing = False

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        if self._sender is not None:
            self._sender.close()


def _broadcast_socket(source: str) -> socket.socket:
    """A UDP socket allowed to broadcast, bound to `source` (a bound address picks the interface even for
    255.255.255.255) or to any address."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.bind((source, 0))
    except OSError as err:
        sock.close()
        raise FarmError(Code.BAD_ARGUMENT, f"cannot open a broadcast socket on {source or 'any address'}: "
                                           f"{err.strerror or err}") from None
    return sock


def _unspecified(host: str | None) -> bool:
    """0.0.0.0 (or ::): listening on every address, so none in particular to announce or send from."""
    try:
        return not host or ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


# -- the client's side -----------------------------------------------------------------------------

def listen(receiver: Receiver, port: int, timeout: float) -> Announcement | None:
    """The first believable announcement heard on UDP `port` within `timeout` seconds (0: no limit)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    noted: set[str] = set()
    with sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):      # a node and a viewer on one box may both listen
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind(("", port))
        except OSError as err:
            raise FarmError(Code.BAD_ARGUMENT, f"cannot listen for announcements on UDP port {port}: "
                                               f"{err.strerror or err}") from None
        deadline = time.monotonic() + timeout if timeout > 0 else None
        while deadline is None or time.monotonic() < deadline:
            sock.settimeout(1.0 if deadline is None else max(0.01, deadline - time.monotonic()))
            try:
                datagram, (sender, _port) = sock.recvfrom(MAX_DATAGRAM + 1)
            except socket.timeout:
                continue
            found = receiver.accept(datagram, sender, noted)
            if found is not None:
                return found
    return None


def discover(config: Config, role: str) -> Announcement:
    """Wait for the controller's announcement and check it with this client's token for `role`."""
    token = client_token(role, config.token or None, Path(config.token_file) if config.token_file else None)
    if not token:
        raise FarmError(Code.BAD_ARGUMENT, f"finding the controller on the network needs the {role} token, which "
                                           f"checks its announcement: --token-file FILE or POVFARM_TOKEN (on the "
                                           f"controller's box, 'povfarm token show --role {role}'), or give "
                                           f"--controller URL")
    # Which role this token has does not matter here: it can only check the signature made with it.
    receiver = Receiver({name: announcement_key(token, name) for name in ROLES})
    timeout = config.discovery_timeout
    log.info("looking for the controller: listening for its announcement on UDP port %d%s", config.discovery_port,
             f" for up to {timeout:.0f} s" if timeout > 0 else "")
    found = listen(receiver, config.discovery_port, timeout)
    if found is None:
        raise FarmError(Code.UNREACHABLE, receiver.timeout_message(config.discovery_port, timeout, role))
    log.info("found the controller %s at %s%s", found.name, found.url,
             f", pinning its certificate SHA-256 {found.tls_sha256}" if found.tls_sha256 else "")
    return found


def _local_controller_listens(timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", DEFAULT_PORT), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_controller(config: Config, role: str) -> Config:
    """The config with a controller URL: the one given; else a controller on this box at the default
    port; else the one announcing itself on the LAN (`--controller discover` skips the local one)."""
    if config.controller and config.controller != DISCOVER:
        return config
    if not config.controller and _local_controller_listens():
        return dataclasses.replace(config, controller=LOCAL_URL)
    try:
        found = discover(config, role)
    except FarmError as err:
        if err.code is Code.UNREACHABLE and not config.controller:
            raise FarmError(err.code, f"no controller at {LOCAL_URL} on this box, and {err}") from None
        raise
    return dataclasses.replace(config, controller=found.url, tls_fingerprint=found.tls_sha256)
