"""How much one request, one job and the whole farm may ask of the controller.

Each limit on its own is not enough: frames x strips x size is what a job
really costs (rows in the database, time inside one submit), so the product
is bounded too, per job and for everything queued on the farm.
"""

from __future__ import annotations

from pathlib import Path

from farm.images.raster import row_size
from farm.server import rpc
from farm.auth import NODE, SUBMIT, VIEW
from farm.server.admission import Quotas
from farm.faults import Code, FarmError
from farm.records import JobSpec

# Requests: any method, per role (a view token only ever sends small calls).
VIEW_BODY = 64 * 1024
SMALL_BODY = 1024 * 1024
# Methods that may send more: uploads (streamed to disk, up to the bundle limit) and nodes' results (in
# memory, up to their unit's rows compressed at worst).
UPLOADS = frozenset({"bundles.upload"})
RESULTS = frozenset({"nodes.complete", "nodes.complete_and_poll"})
LARGE_METHODS = UPLOADS | RESULTS
SPOOLED_METHODS = UPLOADS
RANGED_FETCHES = frozenset({"bundles.fetch_range"})
HEADER_TIMEOUT = 5.0     # seconds for a request's headers to arrive

# Work.
MAX_JOB_UNITS = 20_000             # units of work (strips, runs of frames, pre-passes) in one job
MAX_QUEUED_UNITS = 100_000         # units not finished yet, over all jobs
MAX_JOB_BYTES = 64 * 1024 ** 3     # raw pixel bytes of all of a job's frames


def request_limits(config) -> rpc.Limits:
    """The RPC server's limits for this controller."""
    return rpc.Limits(
        max_body=config.max_bundle_bytes * 4 // 3 + (1 << 20),   # base64 plus the envelope
        role_body=((VIEW, VIEW_BODY), (SUBMIT, SMALL_BODY), (NODE, SMALL_BODY)),
        large_methods=LARGE_METHODS, spooled_methods=SPOOLED_METHODS,
        role_spool=((SUBMIT, config.max_bundle_bytes),), max_spool=config.max_spool_bytes,
        max_held=config.max_result_bytes,
        gates=((UPLOADS, config.max_uploads), (RESULTS, config.max_results),
               (RANGED_FETCHES, config.max_range_fetches)), gate_wait=config.busy_wait,
        spool_dir=Path(config.data_dir) / "uploads", hidden_paths=_hidden(Path(config.data_dir)),
        header_timeout=min(HEADER_TIMEOUT, config.request_timeout), request_timeout=config.request_timeout,
        quotas=connection_quotas(config))


def connection_quotas(config) -> Quotas:
    return Quotas(held=config.max_connections,
                  role_held=((SUBMIT, config.max_submit_connections), (VIEW, config.max_view_connections)),
                  peer_held=config.max_peer_connections, streams=config.max_streams,
                  peer_streams=config.max_peer_streams)


def _hidden(data_dir: Path) -> tuple[str, ...]:
    """The data directory as faults might spell it: as given and resolved, longest first."""
    spellings = {str(data_dir), str(data_dir.expanduser()), str(data_dir.expanduser().resolve())}
    return tuple(sorted((s for s in spellings if len(s) > 1), key=len, reverse=True))


def check_plan(job: JobSpec, count: int | str) -> None:
    """Before planning a checked job: explicit strips cannot ask for more units than allowed (planning a
    million units would itself cost seconds)."""
    if count == "auto":
        return
    frames = job.last_frame - job.first_frame + 1
    per_frame = min(int(count), max(1, -(-job.height // max(1, job.block))))
    units = frames * per_frame
    if units > MAX_JOB_UNITS:
        raise FarmError(Code.BAD_ARGUMENT, f"{frames} frames x {per_frame} strips is {units} units of "
                                           f"work; a job may have at most {MAX_JOB_UNITS}")


def check_units(job: JobSpec, units: int, queued: int) -> None:
    """A planned job: its units, its bytes of pixels, and what the farm already has queued."""
    if units > MAX_JOB_UNITS:
        raise FarmError(Code.BAD_ARGUMENT, f"the job would have {units} units of work; at most "
                                           f"{MAX_JOB_UNITS} are allowed")
    size = (job.last_frame - job.first_frame + 1) * job.height * row_size(job.width, job.channels, job.bits)
    if size > MAX_JOB_BYTES:
        raise FarmError(Code.BAD_ARGUMENT, f"the job's frames hold {size} bytes of pixels; at most "
                                           f"{MAX_JOB_BYTES} are allowed per job")
    if queued + units > MAX_QUEUED_UNITS:
        raise FarmError(Code.BAD_ARGUMENT, f"the farm has {queued} units of work waiting; this job's {units} "
                                           f"would pass the limit of {MAX_QUEUED_UNITS}: try again when "
                                           f"some have finished")
