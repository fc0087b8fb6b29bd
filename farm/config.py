"""Configuration in layers: named defaults, a config file, the environment, flags.

One `Config` object is built once at the edge (the CLI) and passed down; no
module reads the environment or a file on its own. Each later layer overrides
the earlier one, field by field:

1. the defaults below;
2. the `[povfarm]` section of an INI-style config file: `--config FILE`, else
   `$POVFARM_CONFIG`, else `~/.config/povfarm/povfarm.ini` when it exists;
3. environment variables `POVFARM_<FIELD>` (e.g. `POVFARM_CONTROLLER`);
4. command-line flags that were actually given.
"""

from __future__ import annotations

import configparser
import dataclasses
import os
import socket
from pathlib import Path
from typing import Any, Mapping

from farm.faults import Code, FarmError
from farm.video import DEFAULT_CRF, DEFAULT_FPS

ENV_PREFIX = "POVFARM_"
DEFAULT_PORT = 8642
DISCOVERY_PORT = 8643   # UDP, for the controller's announcements on a LAN


def _data_home() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")


def _cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


def _config_home() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")


@dataclasses.dataclass
class Config:
    # Where clients (CLI, nodes, viewers) find the controller: "" means a controller on this box at the
    # default port, else the one announcing itself on the LAN; "discover" means the LAN one only.
    controller: str = ""
    # Controller.
    bind: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    data_dir: Path = dataclasses.field(default_factory=lambda: _data_home() / "povfarm")
    lease_timeout: float = 30.0        # a node silent this long is presumed dead; its strips go back
    max_attempts: int = 3              # a strip that fails this often fails its job
    max_bundle_bytes: int = 256 * 1024 * 1024
    purge_after: str = ""              # ended jobs older than this age (30d...) are purged hourly; "" = never
    pretrace_bands: int = 0            # with 2+ live nodes, a radiosity frame's pre-pass is cut into this many
                                       # bands that they share (0: a scene's first one folded, one band per
                                       # node, else by cost, or two per node, at most 8; 1: one node
                                       # pretraces the whole frame; radiosity.folded_bands, bands_by_cost)
    # Node.
    name: str = dataclasses.field(default_factory=socket.gethostname)
    povray: str = "povray"
    threads: int = 0                   # POV-Ray render threads; 0 lets POV-Ray use every core
    slots: int = 2                     # POV-Ray processes a node runs at once
    cores: int = 0                     # the cores the node's box gives it; 0: those it may run on
    tags: str = ""                     # the node's tags, comma-separated (farm.tags): jobs may require them
    kinds: str = ""                    # kinds of job the node runs (farm.jobkinds); "": each whose program it has
    ffmpeg: str = "ffmpeg"             # the program the node encodes videos with (farm.video)
    machine: str = ""                  # which box's cores the node shares; "" = the running kernel's boot id
    work_dir: Path = dataclasses.field(default_factory=lambda: _cache_home() / "povfarm-node")
    probe_cache: Path = dataclasses.field(default_factory=lambda: _cache_home() / "povfarm" / "povray-probe.json")
    poll_min: float = 0.2              # idle polling backs off from poll_min to poll_max
    poll_max: float = 2.0
    ask_ahead: float = 1.0             # a slot leases its next unit when its current one has this long left; 0 never
    overlap: float = 0.8               # ... and starts it when its current one has this long left; 0 never
    heartbeat_interval: float = 2.0    # controller: how often nodes renew their leases and report progress
    # Node on a slow uplink (its last three large requests went up slower than slow_uplink_bps bytes a second):
    # while rendering, one heartbeat every slow_heartbeat_interval seconds instead (at most a third of the
    # controller's lease timeout), so heartbeats do not cost more than the pixels' last few percent.
    slow_uplink_bps: float = 500_000.0
    slow_heartbeat_interval: float = 10.0
    strip_timeout: float = 0.0         # wall-clock limit for one POV-Ray run; 0 means none
    # POV-Ray's output kept per run (node and controller: head and tail kept, the middle cut), and of all
    # a job's runs (controller: past it, only each run's messages, farm/service/logs.py).
    unit_log_kb: int = 64
    job_log_mb: int = 64
    keep_work: bool = False            # keep per-strip directories (for debugging scenes)
    sandbox: str = "auto"              # confine POV-Ray: auto (bubblewrap when it works), bwrap, none
    max_memory_mb: int = 8192          # POV-Ray's address-space limit; 0 means none
    max_output_mb: int = 1024          # the largest file POV-Ray may write; 0 means none
    render_nice: int = 10              # POV-Ray's CPU priority below the node's (0-19; 0: the same)
    # Submitting and waiting.
    # A waiting client (submit --wait, fetch, viewer --exit-when-done) rides out an unreachable controller,
    # and a job that no live node can render, for this many seconds before it gives up; 0 means for ever.
    patience: float = 15 * 60.0
    video_fps: float = DEFAULT_FPS     # an animation's video (--video): frames a second
    video_crf: int = DEFAULT_CRF       # and x264's quality, 0 (lossless) .. 51
    preview: str = "auto"              # a quick low-resolution first render for viewers: auto (when one
                                       # watches as the job starts), always or never
    # Access and transport security.
    token: str = ""                    # POVFARM_TOKEN: a client's token; on a controller, one token for every role
    token_file: str = ""               # a client's token file (one token, or the controller's role file)
    tls_cert: str = ""                 # controller: serve HTTPS with this certificate chain...
    tls_key: str = ""                  # ...and this private key
    ca_file: str = ""                  # client: trust this CA for an https:// controller (default: system store)
    tls_fingerprint: str = ""          # client: trust the certificate with this SHA-256 instead (set by discovery)
    # Connections that showed a valid token (farm/server/admission.py): all roles together; of them view and
    # submit tokens at most their own counts (the rest stay the nodes'), and from one address at most
    # max_peer_connections; feed streams (watching viewers and pages) at most max_streams, per address
    # max_peer_streams. Beyond a limit a request gets HTTP 503 with Retry-After.
    max_connections: int = 2048         # a node holds slots + 1 (uploads): 300 two-slot nodes take 900
    max_view_connections: int = 256
    max_submit_connections: int = 128
    max_peer_connections: int = 64
    max_streams: int = 128
    max_peer_streams: int = 32
    request_timeout: float = 60.0      # a request must arrive in full within this
    # Heavy calls: how many run at once (more wait busy_wait seconds for a place, then get HTTP 503), the
    # disk all uploads being received may hold at once, and the memory all results being received may.
    max_uploads: int = 4               # bundles.upload
    max_results: int = 16              # nodes.complete, nodes.complete_and_poll
    max_range_fetches: int = 8         # bundles.fetch_range
    busy_wait: float = 5.0
    max_spool_bytes: int = 1024 * 1024 * 1024
    max_result_bytes: int = 128 * 1024 * 1024
    # Discovery on a LAN (farm/discovery.py).
    announce: bool = False             # controller: broadcast a signed announcement of its URL
    announce_url: str = ""             # the URL to announce (default: the address it listens or sends on)
    announce_to: str = "255.255.255.255"   # the broadcast address to announce to
    announce_interval: float = 2.0
    discovery_port: int = DISCOVERY_PORT
    discovery_timeout: float = 10.0    # client: how long to listen; 0 means until heard
    # Everyone.
    kind_modules: str = ""             # controller and node: modules to import for more kinds of job (farm.jobkinds)
    rpc_timeout: float = 60.0
    log_level: str = "INFO"


FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def _coerce(name: str, raw: Any) -> Any:
    """Turn a text value from a file or the environment into the field's type."""
    kind = FIELDS[name].type
    if not isinstance(raw, str):
        return raw
    text = raw.strip()
    try:
        if kind in ("int", int):
            return int(text)
        if kind in ("float", float):
            return float(text)
        if kind in ("bool", bool):
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if kind in ("Path", Path):
            return Path(text).expanduser()
    except ValueError:
        raise FarmError(Code.BAD_ARGUMENT, f"setting {name!r}: {text!r} is not a valid {kind}") from None
    return text


def _file_layer(path: Path | None) -> dict[str, Any]:
    if path is None:
        default = _config_home() / "povfarm" / "povfarm.ini"
        if not default.is_file():
            return {}
        path = default
    parser = configparser.ConfigParser()
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle)
    except (OSError, configparser.Error) as err:
        raise FarmError(Code.BAD_ARGUMENT, f"cannot read config file {path}: {err}") from None
    if not parser.has_section("povfarm"):
        return {}
    values = {}
    for key, value in parser.items("povfarm"):
        name = key.replace("-", "_")
        if name not in FIELDS:
            raise FarmError(Code.BAD_ARGUMENT, f"config file {path}: unknown setting {key!r}")
        values[name] = value
    return values


def _env_layer(environ: Mapping[str, str]) -> dict[str, Any]:
    return {name: environ[ENV_PREFIX + name.upper()]
            for name in FIELDS if ENV_PREFIX + name.upper() in environ}


def load_config(flags: Mapping[str, Any] | None = None,
                environ: Mapping[str, str] | None = None,
                config_file: Path | None = None) -> Config:
    """Build the Config from all layers. `flags` holds only flags the user gave (None = not given)."""
    environ = os.environ if environ is None else environ
    if config_file is None and environ.get(ENV_PREFIX + "CONFIG"):
        config_file = Path(environ[ENV_PREFIX + "CONFIG"])
    merged: dict[str, Any] = {}
    merged.update(_file_layer(config_file))
    merged.update(_env_layer(environ))
    merged.update({k: v for k, v in (flags or {}).items() if k in FIELDS and v is not None})
    config = Config(**{name: _coerce(name, value) for name, value in merged.items()})
    config.data_dir = Path(config.data_dir).expanduser()
    config.work_dir = Path(config.work_dir).expanduser()
    config.probe_cache = Path(config.probe_cache).expanduser()
    return config
