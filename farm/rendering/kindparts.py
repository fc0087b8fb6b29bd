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

import threading
from typing import Any

from farm import jobkinds
from farm.config import Config
from farm.rendering import sandbox as sandboxes


def povray(node: Any) -> Any:
    """POV-Ray's node part: the node's UnitRenderer (farm.rendering.render), which it builds as it starts
    (its bundle cache serves the node's downloads)."""
    return node.renderer


class Offered:
    """The kinds a node offers (its setting `kinds`, or each whose program it has: farm.jobkinds), after
    loading the modules its setting `kind_modules` names, and the runners of their units, each made the first
    time the node runs a unit of its kind."""

    def __init__(self, config: Config, broken: str):
        """`broken`: why the node's POV-Ray does not run, as its probe said ("" when it does)."""
        jobkinds.load_modules(config.kind_modules)
        self.config, self.broken = config, broken
        self.names = jobkinds.parse_offered(config.kinds, self.has_program)
        self._runners: dict[str, Any] = {}
        self._lock = threading.Lock()

    def has_program(self, kind: str) -> bool:
        """Whether the node has the program a kind needs (the setting of that name says which program;
        POV-Ray's: the one the node probed as it started, unless it is broken; a kind that runs none: yes)."""
        program = jobkinds.get(kind).program
        if not program:
            return True
        if program == "povray":
            return not self.broken
        return bool(sandboxes.resolve_program(str(getattr(self.config, program, program))))

    @property
    def without_povray(self) -> bool:
        """Whether the setting `kinds` names kinds and leaves POV-Ray's out: the node needs no POV-Ray, so one
        that does not run does not make it broken (with `kinds` left to find them, it does, as ever)."""
        return self.config.kinds.strip().lower() not in ("", "auto") and jobkinds.POVRAY not in self.names

    def runner_for(self, node: Any, unit_kind: str) -> Any:
        """What runs a unit of `unit_kind` on `node`: its kind's node part's runner."""
        kind = jobkinds.of_unit(unit_kind)
        with self._lock:
            if kind.name not in self._runners:
                self._runners[kind.name] = jobkinds.part(kind.node)(node)
            return self._runners[kind.name]

    def missing_programs(self) -> list[str]:
        """A sentence for each kind the setting `kinds` names whose program this node does not have."""
        return [f"setting 'kinds' names {kind}, but its program {getattr(self.config, program, program)!r} is not "
                "found: its units will fail here" for kind in self.names
                if (program := jobkinds.get(kind).program) != "povray" and not self.has_program(kind)]
