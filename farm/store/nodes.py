"""Nodes as the controller remembers them."""

from __future__ import annotations

import collections
import dataclasses
import json
import secrets
import sqlite3
from typing import Any

from farm.store.db import Database
from farm.faults import Code, FarmError
from farm.records import Node
from farm.states import NodeState, UnitState
from farm.store import schema

SEEN_STEP = 1.0          # seconds: a node's last_seen is written at most this often


def node_in(db: sqlite3.Connection, node_id: str) -> Node:
    row = db.execute("SELECT * FROM nodes WHERE id=?", (node_id,)).fetchone()
    if row is None:
        raise FarmError(Code.UNKNOWN_NODE, f"node {node_id!r} is not registered; register again")
    return schema.node(row)


def touch(db: sqlite3.Connection, node_id: str, now: float) -> Node:
    """The node, as it calls in: refused when it was presumed dead, else its last_seen renewed."""
    node = node_in(db, node_id)
    if node.state is NodeState.OFFLINE:
        # It was presumed dead and its leases went back; it must register again.
        raise FarmError(Code.UNKNOWN_NODE, f"node {node_id!r} timed out; register again")
    # Coarse on purpose: a busy node calls many times a second, and each write costs the batch a page.
    db.execute("UPDATE nodes SET last_seen=? WHERE id=? AND last_seen < ?", (now, node_id, now - SEEN_STEP))
    return node


_HELD = f"state = '{UnitState.LEASED.value}' AND {schema.OPEN_JOBS}"    # the units nodes hold now


def requeue_leases_of(db: sqlite3.Connection, node_id: str) -> list[int]:
    """The node is gone: its leased units go back to the queue. Returns their jobs."""
    jobs = []
    for row in db.execute(f"SELECT {schema.UNIT_COLUMNS} FROM units WHERE node=? AND {_HELD}",
                          (node_id,)).fetchall():
        unit = schema.unit(row)
        schema.set_state(db, unit, UnitState.QUEUED, lease_expires=None, progress=0)
        jobs.append(unit.job)
    return jobs


class NodeRecords:
    def __init__(self, db: Database):
        self._db = db

    def register(self, name: str, info: dict[str, Any], now: float) -> tuple[str, list[int]]:
        """A node (re)starts: a new id; leases of an earlier incarnation with the same name go back.
        Returns the id and the jobs whose units went back."""
        node_id = f"{name}-{secrets.token_hex(4)}"
        requeued: list[int] = []
        with self._db.write() as db:
            for row in db.execute("SELECT * FROM nodes WHERE name=? AND state != ?",
                                  (name, NodeState.OFFLINE.value)).fetchall():
                old = schema.node(row)
                requeued += requeue_leases_of(db, old.id)
                schema.set_state(db, old, NodeState.OFFLINE)
            broken = info.get("error")
            override = db.execute("SELECT tags FROM node_tags WHERE name=?", (name,)).fetchone()
            tags = override["tags"] if override is not None else json.dumps(list(info.get("tags", ())))
            db.execute("INSERT INTO nodes (id, name, state, info, registered, last_seen, error, tags,"
                       " tags_overridden) VALUES (?,?,?,?,?,?,?,?,?)",
                       (node_id, name, (NodeState.BROKEN if broken else NodeState.IDLE).value,
                        json.dumps(info), now, now, broken or None, tags, int(override is not None)))
        return node_id, requeued

    def set_tags(self, name: str, tags: tuple[str, ...] | None) -> tuple[str, ...]:
        """Set the tags of the nodes called `name` from the controller (they win over the node's own and
        outlive its registrations), or with None clear that override: each node has its own again.
        UNKNOWN_NODE for a name no node ever registered with. Returns the tags the latest node has now."""
        with self._db.write() as db:
            rows = db.execute("SELECT id, info FROM nodes WHERE name=? ORDER BY registered", (name,)).fetchall()
            if not rows:
                raise FarmError(Code.UNKNOWN_NODE, f"no node called {name!r} ever registered")
            if tags is None:
                db.execute("DELETE FROM node_tags WHERE name=?", (name,))
            else:
                db.execute("INSERT OR REPLACE INTO node_tags VALUES (?, ?)", (name, json.dumps(list(tags))))
            for row in rows:
                now_tags = tags if tags is not None else tuple(json.loads(row["info"]).get("tags", ()))
                db.execute("UPDATE nodes SET tags=?, tags_overridden=? WHERE id=?",
                           (json.dumps(list(now_tags)), int(tags is not None), row["id"]))
        return tuple(now_tags)

    def all(self) -> list[Node]:
        """Every node, with the units it holds now."""
        with self._db.read() as db:
            nodes = db.execute("SELECT * FROM nodes ORDER BY name, registered").fetchall()
            held = db.execute(f"SELECT node, job, frame, idx FROM units WHERE {_HELD} ORDER BY job, frame, idx"
                              ).fetchall()
        current: dict[str, list[str]] = collections.defaultdict(list)
        for unit in held:
            current[unit["node"]].append(f"{unit['job']}/{unit['frame']}/{unit['idx']}")
        return [dataclasses.replace(schema.node(row), current=",".join(current[row["id"]])) for row in nodes]

    def live(self) -> list[Node]:
        with self._db.read() as db:
            return [schema.node(row) for row in db.execute(
                "SELECT * FROM nodes WHERE state IN (?, ?)", (NodeState.IDLE.value, NodeState.BUSY.value))]

    def present(self) -> tuple[list[Node], float]:
        """The nodes not presumed dead (live or broken), and when any node was last seen (0.0: never)."""
        with self._db.read() as db:
            nodes = [schema.node(row) for row in db.execute("SELECT * FROM nodes WHERE state != ?",
                                                            (NodeState.OFFLINE.value,))]
            last = db.execute("SELECT MAX(last_seen) FROM nodes").fetchone()[0]
        return nodes, float(last or 0.0)

    def expire_silent(self, now: float, silence: float) -> tuple[list[str], list[int]]:
        """Mark nodes silent for `silence` seconds offline; their units go back.
        Returns the nodes marked and the jobs of the units that went back."""
        gone: list[str] = []
        jobs: list[int] = []
        with self._db.write() as db:
            for row in db.execute("SELECT * FROM nodes WHERE state != ? AND last_seen < ?",
                                  (NodeState.OFFLINE.value, now - silence)).fetchall():
                node = schema.node(row)
                jobs += requeue_leases_of(db, node.id)
                schema.set_state(db, node, NodeState.OFFLINE)
                gone.append(node.id)
        return gone, jobs
