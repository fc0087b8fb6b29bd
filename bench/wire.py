"""What a node sends, packet by packet, by RPC method (used by bench/wan.py inside its network namespace).

    ip netns exec NS python bench/wire.py IFACE OUT.json

Counts every packet IFACE sends (as its tx_bytes counter does: link header included), sorted into: the
requests of each RPC method (the packets of a request's headers and body, attributed by the method header
the node's client sends), pure TCP acknowledgements (by the method whose response they acknowledge),
connection set-up and tear-down (SYN, FIN, RST), and anything else. On SIGUSR1 it writes the totals so far
to OUT.json (one object: category -> packets, bytes, calls); SIGTERM writes them and exits.
Linux only, root (a raw packet socket).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys
from collections import defaultdict
from pathlib import Path

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
METHOD_HEADER = b"x-povfarm-method:"
SYN, FIN, RST = 0x02, 0x01, 0x04


class Tally:
    def __init__(self):
        self.counts: dict[str, dict[str, int]] = defaultdict(lambda: {"packets": 0, "bytes": 0, "calls": 0})
        self.method_of: dict[tuple[int, int], str] = {}   # (local port, remote port) -> method of its last request

    def add(self, frame: bytes, length: int) -> None:
        category = self._category(frame)
        entry = self.counts[category]
        entry["packets"] += 1
        entry["bytes"] += length

    def _category(self, frame: bytes) -> str:
        if len(frame) < 14 + 20 or struct.unpack_from("!H", frame, 12)[0] != 0x0800:
            return "other (not IPv4)"
        ihl = (frame[14] & 0x0F) * 4
        total = struct.unpack_from("!H", frame, 16)[0]
        if frame[23] != socket.IPPROTO_TCP:
            return "other (not TCP)"
        tcp = 14 + ihl
        sport, dport = struct.unpack_from("!HH", frame, tcp)
        offset = (frame[tcp + 12] >> 4) * 4
        flags = frame[tcp + 13]
        payload = frame[tcp + offset:14 + total] if total else frame[tcp + offset:]
        key = (sport, dport)
        if flags & (SYN | FIN | RST):
            if flags & (FIN | RST):
                self.method_of.pop(key, None)
            return "tcp connect/close"
        if not payload:
            return f"ack: {self.method_of.get(key, '?')}"
        if payload.startswith(b"POST ") or payload.startswith(b"GET "):
            method = _method(payload)
            self.method_of[key] = method
            self.counts[method]["calls"] += 1
        return self.method_of.get(key, "? (data)")

    def write(self, out: Path) -> None:
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(self.counts, indent=1, sort_keys=True))
        os.replace(tmp, out)


def _method(payload: bytes) -> str:
    head = payload.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n"):
        if line.lower().startswith(METHOD_HEADER):
            return line.split(b":", 1)[1].strip().decode("ascii", "replace")
    return head.split(b"\r\n", 1)[0].decode("ascii", "replace")[:40]


def main() -> int:
    iface, out = sys.argv[1], Path(sys.argv[2])
    tally = Tally()
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind((iface, 0))
    stopping = []
    signal.signal(signal.SIGUSR1, lambda *_: tally.write(out))
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    sock.settimeout(0.5)
    tally.write(out)
    buffer = bytearray(512)
    while not stopping:
        try:
            # The first bytes name the packet; with MSG_TRUNC the call returns its whole length, which is
            # what the interface counted.
            length, address = sock.recvfrom_into(buffer, len(buffer), socket.MSG_TRUNC)
        except socket.timeout:
            continue
        if address[2] == PACKET_OUTGOING:
            tally.add(bytes(buffer[:min(length, len(buffer))]), length)
    tally.write(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
