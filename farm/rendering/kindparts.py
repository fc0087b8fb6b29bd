"""The node's side of the kind seam (farm.jobkinds, docs/kinds.md): a kind's node part is called once,
with the node (`farm.node.Node`), the first time the node runs a unit of that kind, and gives the
runner of its units: an object whose `render(task, folder)` does the unit's work in `folder` (made for it,
removed after) and returns a `RenderOutcome` ("done" with the result's bytes as `rows`, "failed" with an
error, "release" or "dropped" when told to stop). What the node does around it (leases, heartbeats,
delivery, retries, the error text sent) is the same for every kind.

What a runner may use of the node: `config`, `sandbox` and `runner` (a program run in the sandbox, with the
unit's time limit, its process group terminated then killed), `client` and `node_id` (calls about its
lease, e.g. nodes.source_frame), `lease_watch(task.lease, log_path)` (what to call while it works: it
renews the lease and says when to stop), and `aborting`."""

from __future__ import annotations

from typing import Any


def povray(node: Any) -> Any:
    """POV-Ray's node part: the node's UnitRenderer (farm.rendering.render), which it builds as it starts
    (its bundle cache serves the node's downloads)."""
    return node.renderer
