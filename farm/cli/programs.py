"""The commands that run one of the farm's programs, `controller`, `node` and `viewer`, and `token`,
which shows the controller's tokens to hand out. Each program is imported only when its command runs."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
from pathlib import Path
from typing import Any

from farm import tags
from farm.auth import ROLES
from farm.cli.common import EXIT_OK, Subcommands, add_client_flags, add_patience_flag, connect, positive_int
from farm.client import Client
from farm.config import Config
from farm.discovery import resolve_controller
from farm.faults import Code, FarmError

log = logging.getLogger(__name__)


def add_controller(commands: Subcommands) -> None:
    p = commands.add("controller", cmd_controller,
                     help="run the controller that takes jobs and hands strips to nodes",
                     example="povfarm controller --bind 0.0.0.0 --tls-cert cert.pem --tls-key key.pem",
                     description="It listens on 127.0.0.1:8642 unless told otherwise; its tokens are in "
                                 "DATA_DIR/tokens (see 'povfarm token show').")
    p.add_argument("--bind", metavar="ADDR", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8642)")
    p.add_argument("--data-dir", type=Path, metavar="DIR",
                   help="where jobs, results and images live (default ~/.local/share/povfarm)")
    p.add_argument("--lease-timeout", type=float, metavar="SECONDS",
                   help="a node silent this long is presumed dead (default 30)")
    p.add_argument("--strip-timeout", type=float, metavar="SECONDS",
                   help="wall-clock limit for one strip on any node (default: none)")
    p.add_argument("--token-file", metavar="FILE",
                   help="role file with the submit/node/view tokens (default: DATA_DIR/tokens, made on first start;"
                        " $POVFARM_TOKEN sets one token for every role instead)")
    p.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this certificate (chain) in PEM")
    p.add_argument("--tls-key", metavar="FILE", help="the TLS certificate's private key in PEM")
    p.add_argument("--max-connections", type=int, metavar="N",
                   help="connections holding a valid token, all roles (default 2048; view tokens at most 256, "
                        "submit tokens 128, 64 per address: settings max_view_connections, "
                        "max_submit_connections, max_peer_connections)")
    p.add_argument("--announce", action="store_const", const=True,
                   help="broadcast a signed announcement of this controller on the LAN (UDP port 8643), so "
                        "nodes and clients find it without --controller (setting: announce)")
    p.add_argument("--announce-url", metavar="URL",
                   help="the URL to announce (default: the address it listens on, or sends the broadcast from)")
    _add_kind_modules(p)


def add_node(commands: Subcommands) -> None:
    p = commands.add("node", cmd_node,
                     help="run a render node: it takes strips from the controller and renders them",
                     example="povfarm node --controller http://HOST:8642 --token-file node.token",
                     description="It needs the controller's node token. Ctrl-C once lets the current strip "
                                 "finish; twice stops POV-Ray at once.")
    add_client_flags(p)
    p.add_argument("--name", help="node name (default: the host name)")
    p.add_argument("--povray", metavar="PATH", help="the povray program (default: povray on PATH)")
    p.add_argument("--threads", type=int, help="POV-Ray render threads (default: all cores)")
    p.add_argument("--slots", type=int, help="POV-Ray processes at once (default 2: one starts while another"
                                             " finishes)")
    p.add_argument("--cores", type=int, help="the cores this node's box gives it, which the controller plans "
                                             "for (default: those it may run on)")
    p.add_argument("--tags", metavar="TAG,TAG",
                   help="this node's tags (setting: tags), e.g. windows,fast: jobs submitted with --require TAG "
                        "render only on nodes with it; `povfarm node-tags` overrides them from the controller")
    p.add_argument("--kinds", metavar="KIND,KIND",
                   help="the kinds of job this node runs (setting: kinds): povray, video, and those of "
                        "--kind-modules (default: each whose program it has: povray, ffmpeg)")
    _add_kind_modules(p)
    p.add_argument("--ffmpeg", metavar="PATH", help="the ffmpeg program for video jobs (default: ffmpeg on PATH)")
    p.add_argument("--machine", metavar="NAME",
                   help="which box's cores this node shares: nodes of one machine, with nobody watching, get a "
                        "frame in as few strips as keep it busy (default: the running kernel, told by its boot id)")
    p.add_argument("--work-dir", type=Path, metavar="DIR",
                   help="bundle cache and per-strip folders (default ~/.cache/povfarm-node)")
    p.add_argument("--strip-timeout", type=float, metavar="SECONDS", help="wall-clock limit per strip")
    p.add_argument("--keep-work", action="store_true", default=None, help="keep per-strip folders")
    p.add_argument("--sandbox", choices=("auto", "bwrap", "none"),
                   help="confine POV-Ray: 'auto' (default) uses bubblewrap when it works and warns when it "
                        "cannot, 'bwrap' refuses to start without it, 'none' is unsafe for untrusted scenes")
    p.add_argument("--max-memory-mb", type=int, metavar="MB", help="POV-Ray's address-space limit (default 8192)")
    p.add_argument("--max-output-mb", type=int, metavar="MB",
                   help="the largest file POV-Ray may write (default 1024)")
    p.add_argument("--render-nice", type=int, metavar="N",
                   help="POV-Ray's CPU priority below the node's, 0-19 (default 10): the node, its uploads and "
                        "the box's other work come first")


def _add_kind_modules(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kind-modules", metavar="MODULE,MODULE",
                   help="Python modules to import for more kinds of job (setting: kind_modules), e.g. "
                        "farm.extras.checksums; the controller and the nodes that run them load the same")


def add_token(commands: Subcommands) -> None:
    p = commands.add("token", cmd_token,
                     help="show the controller's access tokens (run it on the controller's box)",
                     example="povfarm token show --role node > node.token",
                     description="Give each node the node token, each user the submit token and each "
                                 "watcher the view token.")
    p.add_argument("action", choices=("show",), metavar="show", help="print the tokens (the only action)")
    p.add_argument("--role", choices=ROLES, help="print only this role's token")
    p.add_argument("--data-dir", type=Path, metavar="DIR", help="the controller's data directory")
    p.add_argument("--token-file", metavar="FILE", help="the controller's role file (default: DATA_DIR/tokens)")


def add_viewer(commands: Subcommands) -> None:
    p = commands.add("viewer", cmd_viewer, help="watch a render live in a window (needs pygame)",
                     example="povfarm viewer 12 --snapshot 12.png --exit-when-done")
    add_client_flags(p)
    p.add_argument("job", type=positive_int, nargs="?", help="job id (default: follow the newest job)")
    p.add_argument("--snapshot", type=Path, metavar="FILE",
                   help="when the job ends, write its image (without the overlay) here as PNG")
    p.add_argument("--exit-when-done", action="store_true",
                   help="exit when the job ends: 0 if it is done, 1 if it failed or was canceled")
    p.add_argument("--scale", type=_scale, default="fit", metavar="fit|FACTOR",
                   help="'fit' the image to the window (default) or a zoom factor such as 1 or 0.5")
    add_patience_flag(p)


def _scale(text: str) -> str | float:
    if text == "fit":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--scale takes 'fit' or a zoom factor such as 1 or 0.5, not {text!r}"
                                         ) from None
    if not 0.05 <= value <= 16:
        raise argparse.ArgumentTypeError("--scale must be from 0.05 to 16")
    return value


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def cmd_controller(config: Config, args: argparse.Namespace) -> int:
    from farm.controller import Controller

    controller = Controller(config)
    signal.signal(signal.SIGTERM, _interrupt)   # a service manager's stop is a clean shutdown too
    try:
        controller.serve_forever()
    except KeyboardInterrupt:
        log.info("controller stopping")
    finally:
        controller.shutdown()
    return EXIT_OK


def cmd_node(config: Config, args: argparse.Namespace) -> int:
    from farm.node import run_node
    tags.parse(config.tags, "--tags")     # a tag that is no tag stops the node before it starts
    return run_node(resolve_controller(config, "node"))


def cmd_viewer(config: Config, args: argparse.Namespace) -> int:
    from farm.viewer import run_viewer   # pygame is loaded there, and only if it is installed

    config = resolve_controller(config, "view")

    def make_client(timeout: float) -> Client:      # long polls need a longer timeout than other calls
        return connect(dataclasses.replace(config, rpc_timeout=timeout), "view")

    return run_viewer(config.controller, args.job or 0, snapshot=args.snapshot,
                      exit_when_done=args.exit_when_done, scale=args.scale, rpc_timeout=config.rpc_timeout,
                      make_client=make_client, patience=config.patience)


def cmd_token(config: Config, args: argparse.Namespace) -> int:
    """Print the controller's tokens, for the operator to hand to nodes, users and viewers."""
    from farm.auth import TOKEN_FILE_NAME, read_token_file

    path = Path(config.token_file) if config.token_file else config.data_dir / TOKEN_FILE_NAME
    if not path.exists():
        raise FarmError(Code.BAD_ARGUMENT, f"there is no token file at {path}; start the controller once "
                                           f"(or pass --data-dir / --token-file)")
    tokens = read_token_file(path)
    if "" in tokens:
        print(tokens[""])
    elif args.role:
        print(tokens[args.role])
    else:
        for role, token in tokens.items():
            print(f"{role}: {token}")
    return EXIT_OK
