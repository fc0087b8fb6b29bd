"""A node is one file: povfarm.pyz, built by the documented command, renders as a node."""

from __future__ import annotations

import json
import subprocess
import sys

from harness import ROOT, SCENES, assert_same_pixels, native_render, needs_povray, run_cli

pytestmark = needs_povray


def build_pyz(tmp_path):
    pyz = tmp_path / "dist" / "povfarm.pyz"
    done = subprocess.run(["bash", str(ROOT / "scripts" / "build_pyz.sh"), "--output", str(pyz)],
                          capture_output=True, text=True, timeout=120, env={"PYTHON": sys.executable,
                                                                             "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    return pyz


def test_a_node_run_from_povfarm_pyz_renders_exact_pixels(farm, tmp_path):
    pyz = build_pyz(tmp_path)
    # -S: no site-packages, so nothing but the standard library and the archive itself can be imported;
    # run from a folder without the source tree.
    stdlib_only = [sys.executable, "-S", str(pyz)]
    assert subprocess.run([*stdlib_only, "--version"], cwd=tmp_path, capture_output=True).returncode == 0
    where = subprocess.run([sys.executable, "-S", "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                            "from farm import web; print(web.__file__, len(web.static_file('app.js')))",
                            str(pyz)], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert where.stdout.startswith(str(pyz)) and int(where.stdout.split()[1]) > 1000, where.stderr

    farm.start_controller()
    node = subprocess.Popen([*stdlib_only, "node", "--controller", farm.url, "--name", "pyz", "--threads", "1",
                             "--slots", "1", "--work-dir", str(tmp_path / "pyz-node")],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "pyz.log", "ab"))
    farm.nodes.append(node)
    scene = SCENES / "advanced/drums2/drums.pov"
    out = tmp_path / "drums.png"
    done = run_cli("submit", str(scene), "--width", "160", "--height", "120", "--strips", "3", "--option", "+A0.3",
                   "--wait", "--output", str(out), "--controller", farm.url)
    assert done.returncode == 0, done.stderr + farm.log("pyz")
    assert_same_pixels(out, native_render(scene, 160, 120, ["+A0.3"], tmp_path / "native.png"))
    [record] = json.loads(run_cli("nodes", "--json", "--controller", farm.url).stdout)
    assert record["name"] == "pyz" and record["strips_done"] == 3 and record["povray_flavour"] == "console"
