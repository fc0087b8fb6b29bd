"""`python tests/older_controller.py ARGS` is `povfarm controller ARGS`, the real controller, answering nodes as
a version before filtered rows and the feature list did: nodes.register lists no features, nodes.complete and
nodes.complete_and_poll take no `encoding`, nodes.heartbeat no `stats` and nodes.poll no `inline` (one argument
more is fault 10, BAD_ARGUMENT, for the argument count)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from farm.api import rpc  # noqa: E402
from farm.auth import NODE  # noqa: E402
from farm.api.nodes import NodesAPI  # noqa: E402
from farm.cli import main  # noqa: E402

_register, _complete, _heartbeat, _poll = NodesAPI.register, NodesAPI.complete, NodesAPI.heartbeat, NodesAPI.poll


@rpc(NODE)
def register(self, name, info):
    reply = _register(self, name, info)
    del reply["features"]
    return reply


@rpc(NODE)
def complete(self, node_id, lease, rows, seconds):
    return _complete(self, node_id, lease, rows, seconds)


@rpc(NODE)
def complete_and_poll(self, node_id, lease, rows, seconds):
    _complete(self, node_id, lease, rows, seconds)
    return self.poll(node_id)


@rpc(NODE)
def heartbeat(self, node_id, progress):
    return _heartbeat(self, node_id, progress)


@rpc(NODE)
def poll(self, node_id, wait=0.0):
    return _poll(self, node_id, wait)


NodesAPI.register, NodesAPI.complete, NodesAPI.complete_and_poll, NodesAPI.heartbeat, NodesAPI.poll = \
    register, complete, complete_and_poll, heartbeat, poll

if __name__ == "__main__":
    sys.exit(main(["controller", *sys.argv[1:]]))
