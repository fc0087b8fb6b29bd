"""`povfarm render`: POV-Ray's command line rendered on a farm of its own, a controller and N nodes on
threads of this process, started for the one job and stopped when it ends however it ends."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import pkgutil
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from farm.cli.chained import frames_read_back, plan_of, read_back_note, render_in_order
from farm.cli.common import EXIT_INTERRUPTED, Subcommands, positive_int
from farm.cli.job_request import POVRAY_HELP, add_job_flags, prepare_job, submit_job
from farm.cli.videos import add_video_flags, video_after
from farm.cli.waiting import StopRequest, finish_job, keep_finished_frames, wait_for_job
from farm.client import Client
from farm.config import Config
from farm.faults import Code, FarmError

log = logging.getLogger(__name__)


def add_render(commands: Subcommands) -> None:
    p = commands.add(
        "render", cmd_render,
        help="render a scene on a local farm (an embedded controller and N local nodes), like povray",
        example="povfarm render scene.pov +W640 +H480 +A0.3      # writes scene.png beside scene.pov",
        description="Takes POV-Ray's command line and writes the image where povray would. Ctrl-C stops "
                    "everything.", epilog=POVRAY_HELP + "\n")
    add_job_flags(p)
    add_video_flags(p)
    p.add_argument("--nodes", type=positive_int, default=2, help="local nodes to start (default 2)")
    p.add_argument("--povray", metavar="PATH", help="the povray program (default: povray on PATH)")
    p.add_argument("--threads", type=int, help="POV-Ray threads per process (default: all cores)")
    p.add_argument("--slots", type=int, help="POV-Ray processes per node at once (default 2)")


def cmd_render(config: Config, args: argparse.Namespace) -> int:
    request = prepare_job(args)
    read_back = frames_read_back(request, plan_of(args, request))
    if read_back and args.video is not None:
        raise FarmError(Code.BAD_ARGUMENT, "--video needs the animation rendered as one job, and this scene reads "
                                           "its own frames (rendered in order, one job each): render it, then "
                                           "encode the frames with ffmpeg yourself")
    if read_back:
        sys.stderr.write(f"povfarm: {read_back_note(request, read_back)}\n")
    workspace = Path(tempfile.mkdtemp(prefix="povfarm-render-"))
    config.data_dir, config.bind, config.port = workspace / "controller", "127.0.0.1", 0
    config.token, config.token_file, config.tls_cert, config.tls_key = "", "", "", ""
    config.announce = False            # a one-box farm is nobody else's business
    if logging.getLogger().getEffectiveLevel() >= logging.WARNING:    # unless more was asked for (INFO)
        _quiet_local_farm_logs()
    nodes: list[_LocalNode] = []
    with StopRequest() as stop:
        controller, nodes = _start_local_farm(config, args.nodes, workspace)
        try:
            controller.start_in_thread()
            client = Client(controller.url, config.rpc_timeout, token=controller.tokens["submit"])
            _wait_for_local_nodes(nodes, stop)
            status, job_id = None, None
            if read_back and not stop.is_set():
                return render_in_order(client, args, request, stop)
            if not stop.is_set():
                job_id = submit_job(client, args, request)
                status = wait_for_job(client, job_id, interval=0.1, stop=stop, local=True,
                                      streams=request.command.streams)
            if status is None:
                sys.stderr.write("povfarm: interrupted; stopping the local nodes\n")
                if job_id is not None:
                    keep_finished_frames(client, job_id, request)
                return EXIT_INTERRUPTED
            return video_after(client, config, args, job_id, finish_job(client, status, request), stop, local=True)
        finally:
            _stop_local_farm(nodes, controller, abort=stop.is_set())
            shutil.rmtree(workspace, ignore_errors=True)


def _start_local_farm(config: Config, count: int, workspace: Path) -> tuple[Any, list["_LocalNode"]]:
    """The controller and its nodes, all in this process."""
    from farm.controller import Controller

    controller = Controller(config)
    nodes: list[_LocalNode] = []
    try:
        for index in range(count):
            nodes.append(_LocalNode(controller.url, controller.tokens["node"], index, workspace, config))
    except BaseException:
        _stop_local_farm(nodes, controller, abort=True)
        raise
    return controller, nodes


def _quiet_local_farm_logs() -> None:
    """The job's failure is printed once by `render`: the farm's own notes about strips and leases would
    repeat it, so only errors and the nodes' sandbox warning are shown."""
    from farm.node import BROKEN_NODE

    def worth_showing(record: logging.LogRecord) -> bool:
        if record.msg == BROKEN_NODE:
            return False       # render says once, for all its nodes, why none can render the job
        return record.levelno >= logging.ERROR or "UNCONFINED" in record.getMessage()

    for layer in ("farm.controller", "farm.api", "farm.service", "farm.store", "farm.store.db"):
        logging.getLogger(layer).setLevel(logging.ERROR)
    # A logger's filter does not see its children's records: name every module of the node's side.
    import farm.rendering
    node_side = [f"farm.rendering.{module.name}" for module in pkgutil.iter_modules(farm.rendering.__path__)]
    for layer in ("farm.node", *node_side, "farm.bundle.cache", "farm.bundle.packing", "farm.client"):
        logging.getLogger(layer).addFilter(worth_showing)


def _stop_local_farm(nodes: Sequence["_LocalNode"], controller: Any, abort: bool) -> None:
    """On an interrupt, nodes first (they stop POV-Ray at once and hand their strips back while the
    controller still answers), then the controller, once nothing talks to it any more. After the job
    ended there is nothing to hand back, so both wind down at once."""
    for node in nodes:
        node.stop(abort)
    if not abort:
        controller.shutdown()    # the job is over and nothing is handed back: both wind down at once
    deadline = time.monotonic() + (1.0 if abort else 10)
    for node in nodes:
        node.wait(deadline)
    if abort:
        controller.shutdown()


def _wait_for_local_nodes(nodes: Sequence["_LocalNode"], stop: threading.Event, timeout: float = 20.0) -> None:
    """Let the local nodes register before the job is planned, so an animation's runs of frames are cut
    for all of them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stop.is_set():
        if any(node.ended for node in nodes):
            raise FarmError(Code.RENDER_FAILED, "a local node stopped at start; its messages are above")
        if all(node.registered for node in nodes):
            return
        stop.wait(0.01)


class _LocalNode:
    """A render node of `render`: the node's own code (`farm.node.Node`) on a thread of this process.
    In the process it needs no interpreter and imports of its own (a fifth of a second before it could
    take work), and it ends with `render` however that ends; POV-Ray runs as on any node, confined, in a
    session of its own (so a Ctrl-C at the terminal reaches only `render`, which stops the nodes in
    order), and dies with it."""

    def __init__(self, url: str, token: str, index: int, workspace: Path, config: Config):
        from farm.node import Node

        mine = dataclasses.replace(config, name=f"local-{index + 1}", work_dir=workspace / f"node-{index + 1}",
                                   controller=url, token=token, token_file="")
        self.node = Node(mine, Client(url, config.rpc_timeout, token=token))
        self._thread = threading.Thread(target=self._run, name=f"node-{index + 1}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.node.run()
        except FarmError as err:     # a refused token or the like: said once, and `render` sees it ended
            log.error("local node %s: %s", self.node.config.name, err)

    @property
    def registered(self) -> bool:
        return self.node.node_id is not None

    @property
    def ended(self) -> bool:
        return not self._thread.is_alive()

    def stop(self, abort: bool) -> None:
        """Finish up and stop; on an interrupt, stop POV-Ray now and hand the strip back."""
        self.node.stop(now=abort)

    def wait(self, deadline: float) -> None:
        self._thread.join(max(0.05, deadline - time.monotonic()))
