"""The controller's LAN announcement: its format, signatures per role, the replay window, the socket
edges on loopback, and certificate pinning. Across real network namespaces: test_discovery_netns.py."""

from __future__ import annotations

import functools
import json
import threading
import time

import pytest
from hypothesis import given, settings, strategies as st

from harness import free_udp_port, make_cert, run_cli
from farm import discovery
from farm.client import Client
from farm.config import Config
from farm.faults import Code, FarmError

TOKENS = {"submit": "submit-token-" + "s" * 30, "node": "node-token-" + "n" * 30, "view": "view-token-" + "v" * 30}
URL = "http://10.231.77.1:8642"
NOW = 1_800_000_000.0


@pytest.fixture(scope="module")
def keys():
    """The controller's keys, one per role (derived once: the derivation is slow on purpose)."""
    return discovery.role_keys(TOKENS)


@functools.lru_cache(maxsize=None)
def reader_keys(token: str) -> tuple[tuple[str, bytes], ...]:
    return tuple((role, discovery.announcement_key(token, role)) for role in discovery.ROLES)


def reader(token: str, clock=lambda: NOW) -> discovery.Receiver:
    """What a client holding `token` checks announcements with."""
    return discovery.Receiver(dict(reader_keys(token)), clock)


def announce(keys, url=URL, fingerprint="", now=NOW, nonce=None) -> bytes:
    return discovery.encode(url, fingerprint, "box", keys, now, nonce)


def test_every_role_reads_the_announcement_with_its_own_token(keys):
    fingerprint = "ab" * 32
    datagram = announce(keys, url="https://10.231.77.1:8642", fingerprint=fingerprint)
    assert len(datagram) <= discovery.MAX_DATAGRAM
    for token in TOKENS.values():
        found = reader(token).check(datagram)
        assert (found.url, found.tls_sha256, found.name, found.time) == \
               ("https://10.231.77.1:8642", fingerprint, "box", NOW)
    # No token, nor a key derived from one, is ever on the wire.
    text = datagram.decode()
    for role, token in TOKENS.items():
        assert token not in text and keys[role].hex() not in text


def test_a_wrong_token_cannot_read_it_and_is_told_so(keys):
    receiver = reader("some-other-farms-token")
    with pytest.raises(discovery.Rejected) as rejected:
        receiver.check(announce(keys))
    assert rejected.value.kind == "signature" and rejected.value.claimed == URL
    assert receiver.accept(announce(keys), "10.231.77.1", set()) is None
    message = receiver.timeout_message(8643, 10, "node")
    assert "the node token is wrong" in message and "povfarm token show --role node" in message


def test_a_changed_url_or_fingerprint_breaks_the_signature(keys):
    outer = json.loads(announce(keys, url="https://10.231.77.1:8642", fingerprint="ab" * 32))
    for field, forged in (("url", "https://10.231.77.66:8642"), ("tls_sha256", "cd" * 32)):
        body = json.loads(outer["body"])
        body[field] = forged
        tampered = json.dumps({**outer, "body": json.dumps(body)}).encode()
        with pytest.raises(discovery.Rejected) as rejected:
            reader(TOKENS["node"]).check(tampered)
        assert rejected.value.kind == "signature"


def test_a_view_token_cannot_forge_an_announcement_for_nodes():
    """Whoever holds the view token can sign for viewers only: under every role's name, with every key
    the view token gives, the node still says no."""
    view_keys = {role: discovery.announcement_key(TOKENS["view"], role) for role in discovery.ROLES}
    forged = announce(view_keys, url="http://10.231.77.66:8642")
    assert reader(TOKENS["view"]).check(forged).url == "http://10.231.77.66:8642"
    with pytest.raises(discovery.Rejected) as rejected:
        reader(TOKENS["node"]).check(forged)
    assert rejected.value.kind == "signature"


def test_one_shared_token_for_every_role():
    shared = discovery.role_keys({role: "one-token-for-all-" + "x" * 30 for role in discovery.ROLES})
    assert reader("one-token-for-all-" + "x" * 30).check(announce(shared)).url == URL


def test_the_replay_window_and_nonces(keys):
    datagram = announce(keys)
    for offset in (-discovery.WINDOW, discovery.WINDOW):             # at the edges: still fresh
        assert reader(TOKENS["node"], clock=lambda: NOW + offset).check(datagram).url == URL
    for offset, words in ((discovery.WINDOW + 1, "ago"), (-discovery.WINDOW - 1, "ahead")):
        with pytest.raises(discovery.Rejected) as rejected:
            reader(TOKENS["node"], clock=lambda: NOW + offset).check(datagram)
        assert rejected.value.kind == "stale" and words in str(rejected.value) and "NTP" in str(rejected.value)
    receiver = reader(TOKENS["node"])
    receiver.check(datagram)
    with pytest.raises(discovery.Rejected) as rejected:
        receiver.check(datagram)                                       # the same datagram again
    assert rejected.value.kind == "replayed"
    assert receiver.check(announce(keys)).url == URL                   # the next one, with its own nonce
    stale = reader(TOKENS["node"], clock=lambda: NOW + 3600)
    stale.accept(datagram, "10.231.77.1", set())
    assert "clock" in stale.timeout_message(8643, 10, "node")


@pytest.mark.parametrize("datagram", [
    b"", b"\xff\xfe", b"hello", b"[]", b'{"povfarm": 1}', b'{"povfarm": 2, "body": "{}", "sig": {}}',
    json.dumps({"povfarm": 1, "body": "not json", "sig": {}}).encode(),
    json.dumps({"povfarm": 1, "body": json.dumps({"url": 5}), "sig": {}}).encode(),
    b"{" + b" " * 2000 + b"}",
])
def test_garbage_is_ignored_without_a_fuss(datagram):
    receiver = reader(TOKENS["node"])
    with pytest.raises(discovery.Rejected) as rejected:
        receiver.check(datagram)
    assert rejected.value.kind == "garbled"
    assert receiver.accept(datagram, "10.231.77.1", set()) is None


def hostile_body(**fields) -> str:
    """A body with every field right but those given, as JSON text."""
    return json.dumps({"url": URL, "tls_sha256": "", "name": "box", "time": NOW, "nonce": "n1", **fields})


def with_body(body: str, sig=None) -> bytes:
    return json.dumps({"povfarm": 1, "body": body, "sig": {"node": "00" * 32} if sig is None else sig}).encode()


@pytest.mark.parametrize("datagram", [
    b"[" * 1000, b"{" * 1000, b'{"a":' * 200, b"[" * 3 + b"]" * 3, b"\"" + b"\\" * 1000,   # deep, unterminated
    with_body("[" * 900), with_body('{"url": [[[[]]]]}'),                                 # deep inside the body
    b'{"povfarm": 1, "body": "' + b"\xc3\x28" * 10 + b'", "sig": {}}',                     # not UTF-8
    with_body(hostile_body(url="\ud800")), with_body(hostile_body(), sig={"node": "\ud800"}),   # lone surrogates
    with_body(hostile_body(), sig={"node": "\u00e9" * 64}), with_body(hostile_body(), sig={"node": 5}),
    with_body(hostile_body(), sig=[]), with_body(hostile_body(), sig={"node": None, "view": {}}),
    with_body(hostile_body()).replace(b'"time": 1800000000.0', b'"time": 1' + b"0" * 900),  # huge numbers
    with_body(hostile_body()).replace(b'"time": 1800000000.0', b'"time": 1e999'),
    with_body(hostile_body()).replace(b'"time": 1800000000.0', b'"time": NaN'),
    with_body(hostile_body()).replace(b'"time": 1800000000.0', b'"time": -Infinity'),
    with_body(hostile_body(time=True)), with_body(hostile_body(time="1800000000")), with_body(hostile_body(url=None)),
    json.dumps({"povfarm": True, "body": hostile_body(), "sig": {}}).encode(),
    json.dumps({"povfarm": 1, "body": 5, "sig": {}}).encode(), b"1" * 1024, b"\0" * 1024, b"[" * 5000,
])
def test_any_datagram_is_garbage_or_a_signature_that_does_not_match(datagram):
    """Whatever anyone on the LAN sends, checking it raises Rejected and nothing else; the signature
    check is reached only with well-formed fields (and fails here: nobody signed these)."""
    receiver = reader(TOKENS["node"])
    with pytest.raises(discovery.Rejected) as rejected:
        receiver.check(datagram)
    assert rejected.value.kind in ("garbled", "signature")
    assert receiver.accept(datagram, "10.231.77.1", set()) is None


def test_the_nesting_is_counted_outside_strings():
    assert discovery._nesting('{"sig": {"node": "[[[[{{{{"}}') == 2
    assert discovery._nesting('{"a": "\\"[[[", "b": [[]]}') == 3
    assert discovery._nesting("[" * 5000) == 5000


def test_a_signed_announcement_with_a_wrong_time_or_url_is_still_refused(keys):
    """What a token holder signs is checked all the same: a time that is no finite number, a URL that
    urlsplit cannot even split."""
    for body in (hostile_body(time=1e308 * 10), hostile_body(url="http://[::1")):
        body = body.replace("Infinity", "1" + "0" * 400)
        datagram = with_body(body, sig={role: discovery._sign(key, body.encode()) for role, key in keys.items()})
        with pytest.raises(discovery.Rejected) as rejected:
            reader(TOKENS["node"]).check(datagram)
        assert rejected.value.kind == "garbled"


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=1100), st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(["povfarm", "body", "sig", "x"]),
                                                                 inner, max_size=4)).map(
    lambda value: json.dumps(value).encode())))
def test_random_datagrams_are_only_ever_rejected(datagram):
    with pytest.raises(discovery.Rejected):
        reader(TOKENS["node"]).check(datagram)


def test_garbage_is_logged_in_one_line_a_minute(caplog):
    now = [0.0]
    receiver = discovery.Receiver(dict(reader_keys(TOKENS["node"])), lambda: NOW, ticker=lambda: now[0])
    with caplog.at_level("WARNING", logger="farm.discovery"):
        for step in range(1000):
            now[0] = step * 0.1                                  # 1,000 datagrams in 100 s
            assert receiver.accept(b"[" * 1000, f"10.231.{step % 250}.9", set()) is None
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "ignored a datagram from 10.231.0.9" in lines[0] and "nested" in lines[0]
    assert "ignored 600 datagram(s)" in lines[1] and "in the last 60 s" in lines[1]
    assert receiver.counts["garbled"] == 1000
    assert "only 1000 datagram(s) that were no povfarm announcement" in receiver.timeout_message(8643, 10, "node")


def test_senders_noted_for_warnings_are_bounded(keys, caplog):
    forged, noted = announce(discovery.role_keys({"node": "guessed"})), set()
    receiver = reader(TOKENS["node"])
    with caplog.at_level("WARNING", logger="farm.discovery"):
        for sender in range(500):
            receiver.accept(forged, f"10.1.{sender // 250}.{sender % 250}", noted)
    assert len(noted) == discovery._MAX_NOTED_SENDERS == len(caplog.records)


def test_an_unverified_url_is_logged_escaped(keys, caplog):
    forged = announce(discovery.role_keys({"node": "guessed"}), url="http://evil\n2030-01-01 node: all fine")
    with caplog.at_level("WARNING", logger="farm.discovery"):
        reader(TOKENS["node"]).accept(forged, "10.231.77.9", set())
    assert "\n" not in caplog.records[0].getMessage() and "\\n" in caplog.records[0].getMessage()


def test_a_signed_announcement_must_still_make_sense(keys):
    for url, fingerprint in (("ftp://10.231.77.1/", ""), ("https://10.231.77.1:8642", ""),
                             (URL, "not-hex")):
        with pytest.raises(discovery.Rejected) as rejected:
            reader(TOKENS["node"]).check(announce(keys, url=url, fingerprint=fingerprint))
        assert rejected.value.kind == "garbled", url


def test_a_forgery_is_logged_once_per_sender(keys, caplog):
    forged = announce(discovery.role_keys({"node": "guessed"}))
    receiver, noted = reader(TOKENS["node"]), set()
    with caplog.at_level("DEBUG", logger="farm.discovery"):
        for _ in range(5):
            assert receiver.accept(forged, "10.231.77.9", noted) is None
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "10.231.77.9" in warnings[0].getMessage()
    assert "does not match" in warnings[0].getMessage()
    assert receiver.counts["signature"] == 5


def test_the_announced_url_and_fingerprint(tmp_path):
    cert, _key, printed = make_cert(tmp_path)
    assert discovery.certificate_sha256(str(cert)) == discovery.normal_fingerprint(printed)
    config = Config(announce=True, tls_cert=str(cert))
    announcer = discovery.Announcer(config, "https://10.231.77.1:8642", TOKENS)
    assert announcer.url == "https://10.231.77.1:8642"
    assert announcer.tls_sha256 == discovery.normal_fingerprint(printed)
    with pytest.raises(FarmError) as refused:
        discovery.Announcer(Config(announce=True), "http://127.0.0.1:8642", TOKENS)
    assert "--bind" in str(refused.value)
    told = discovery.Announcer(Config(announce=True, announce_url="http://farm.lan:8642"),
                               "http://127.0.0.1:8642", TOKENS)
    assert told.url == "http://farm.lan:8642"


def test_announcer_and_listener_on_loopback():
    """The socket edges, on loopback only: the announcer sends to 127.0.0.1, a listener hears it."""
    port = free_udp_port()
    config = Config(announce=True, announce_url=URL, announce_to="127.0.0.1", discovery_port=port,
                    announce_interval=0.2)
    announcer = discovery.Announcer(config, "http://127.0.0.1:8642", TOKENS)
    heard: list = []
    listener = threading.Thread(target=lambda: heard.append(
        discovery.listen(reader(TOKENS["node"], clock=time.time), port, 10)))
    listener.start()
    announcer.start()
    try:
        listener.join(15)
    finally:
        announcer.stop()
    assert heard and heard[0] is not None and heard[0].url == URL
    assert discovery.listen(reader(TOKENS["node"]), port, 0.3) is None     # stopped: nothing more comes


def test_nothing_heard_is_a_clear_error_within_the_timeout():
    config = Config(controller="discover", token=TOKENS["node"], discovery_port=free_udp_port(),
                    discovery_timeout=0.5)
    with pytest.raises(FarmError) as error:
        discovery.resolve_controller(config, "node")
    assert error.value.code is Code.UNREACHABLE
    assert "--announce" in str(error.value) and "--controller URL" in str(error.value)
    assert discovery.resolve_controller(Config(controller=URL), "node").controller == URL


def test_the_cli_needs_a_token_to_find_a_controller(tmp_path, monkeypatch):
    monkeypatch.delenv("POVFARM_TOKEN", raising=False)
    monkeypatch.delenv("POVFARM_TOKEN_FILE", raising=False)
    done = run_cli("node", "--controller", "discover", "--work-dir", str(tmp_path), timeout=60)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "needs the node token" in done.stderr and "povfarm token show --role node" in done.stderr


def test_a_pinned_certificate_is_trusted_and_no_other(tmp_path):
    """On loopback: a controller with a self-signed certificate for another name; a client that pins its
    fingerprint gets through without a CA, one pinning another fingerprint is refused before it sends."""
    from farm.controller import Controller

    cert, key, printed = make_cert(tmp_path)
    controller = Controller(Config(data_dir=tmp_path / "data", port=0, tls_cert=str(cert), tls_key=str(key)))
    controller.start_in_thread()
    try:
        url = f"https://127.0.0.1:{controller.server.server_address[1]}"
        pinned = Client(url, 10, token=controller.tokens["view"], pin_sha256=discovery.normal_fingerprint(printed))
        assert pinned.call("api.version")["api"] == 1
        pinned.close()
        with pytest.raises(FarmError) as refused:
            Client(url, 10, token=controller.tokens["view"], pin_sha256="00" * 32).call("api.version")
        assert refused.value.code is Code.UNREACHABLE and "SHA-256" in str(refused.value)
        with pytest.raises(FarmError) as refused:      # the viewer's stream too
            next(Client(url, 10, token=controller.tokens["view"], pin_sha256="00" * 32).stream(
                "/feed", {"job": 0, "cursor": 0}, 10))
        assert refused.value.code is Code.UNREACHABLE and "SHA-256" in str(refused.value)
        with pytest.raises(FarmError):       # and without the pin, the usual checks still apply
            Client(url, 10, token=controller.tokens["view"]).call("api.version")
    finally:
        controller.shutdown()
