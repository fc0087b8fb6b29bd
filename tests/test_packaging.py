"""What `pip install .` puts in place: every package of the source tree, not only the ones named."""

from __future__ import annotations

import sys

import pytest
from setuptools import find_packages

from harness import ROOT

tomllib = pytest.importorskip("tomllib") if sys.version_info >= (3, 11) else pytest.importorskip("tomli")


def test_the_install_takes_every_package_of_the_tree():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = config["packages"]["find"]
    installed = set(find_packages(where=str(ROOT), include=found["include"]))
    in_tree = {".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "farm").rglob("__init__.py")}
    assert in_tree <= installed, sorted(in_tree - installed)
    assert {"farm.api", "farm.service", "farm.store", "farm.web"} <= installed


@pytest.mark.parametrize("module", ["farm.client", "farm.node", "farm.viewer", "farm.cli", "farm.discovery",
                                    "farm.extras.checksums"])
def test_a_client_does_not_load_the_server(module):
    """Nodes, viewers and the CLI share `farm.wire` with the controller, never its HTTP server."""
    import subprocess
    probe = (f"import sys; import {module}; "
             f"print(sorted(m for m in ('http.server', 'socketserver', 'farm.server', 'farm.web', 'sqlite3') "
             f"if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]", f"{module} loads {loaded.stdout.strip()}"


def test_only_the_wire_and_its_two_ends_know_xmlrpc_and_only_the_store_sqlite():
    """XML-RPC is the wire's business (farm/wire.py) and its ends' (the client, the server's handler and
    dispatch); SQLite is the store's."""
    import re
    importing = {}
    for path in (ROOT / "farm").rglob("*.py"):
        text = path.read_text()
        for library in ("xmlrpc", "sqlite3"):
            if re.search(rf"^\s*(import|from) {library}\b", text, re.MULTILINE):
                importing.setdefault(library, set()).add(path.relative_to(ROOT / "farm").as_posix())
    assert importing["xmlrpc"] == {"wire.py", "client.py", "server/handler.py", "server/rpc.py"}
    assert all(name == "db.py" or name.startswith("store/") for name in importing["sqlite3"]), importing["sqlite3"]
