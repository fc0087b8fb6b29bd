"""What a controller can do, said once: the feature list of `nodes.register` and `api.version`.

The controller lists the features it has (docs/protocol.md §1); a client reads the list once, when it
registers or first asks, and chooses how to talk by it, instead of trying the newer way and catching the
fault an older controller answers. A controller from before the list says nothing: it is taken to have none
of these features (the oldest protocol: plain zlib rows, `nodes.complete`, whole bundles, long polls), which
every controller since understands. Shared by both ends: the controller lists `FEATURES`, clients ask
`Features`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from farm.rows import ENCODINGS, FILTERED_BZ2      # bz2 where this Python has it

# One constant per feature, the text that goes on the wire.
COMPLETE_AND_POLL = "complete_and_poll"   # nodes.complete_and_poll: deliver and take the next task at once
BUNDLE_RANGES = "bundle_ranges"           # bundles.fetch_range: a download resumes where it broke off
FILTERED_ROWS = "filtered_rows"           # nodes.complete takes `encoding` ("filtered": PNG-filtered rows)
HEARTBEAT_STATS = "heartbeat_stats"       # nodes.heartbeat takes `stats` (the node's upload rate)
FEED_STREAM = "feed_stream"               # GET /feed: a viewer's stream of a job's pieces
LIVE_BLOCKS = "live_blocks"               # nodes.live; viewer.watch's live_cursor, GET /feed's live=1
NODE_TAGS = "node_tags"                   # node tags: jobs.submit's require/prefer, nodes.set_tags
JOB_AFTER = "job_after"                   # jobs.submit's after: a job queued until other jobs are done
FARM_HISTORY = "farm_history"             # jobs.list's limit/before pages; farm.status, farm.purge; GET /metrics
POVRAY_PIN = "povray_pin"                 # jobs.submit's povray_version; one POV-Ray build per frame
SCENE_FILES = "scene_files"               # nodes.scene_files, jobs.scene_files: the files a scene writes
UNIT_LOGS = "unit_logs"                   # nodes.complete/complete_and_poll/fail take `log`; jobs.log
UNIT_OVERHEAD = "unit_overhead"           # nodes.complete takes `overhead` (a unit's seconds besides tracing)
VIDEO_JOBS = "video_jobs"                 # jobs.video, nodes.source_frame: an animation's video (farm.video)
JOB_KINDS = "job_kinds"                   # jobs.kind: a job of any kind loaded (farm.jobkinds, kind_modules)
INLINE_BUNDLES = "inline_bundles"         # nodes.poll's inline: a small bundle comes with the node's first lease
BZ2_ROWS = "bz2_rows"                     # nodes.complete takes `encoding` "filtered-bz2" (farm.rows.FILTERED_BZ2)
UNIT_COSTS = "unit_costs"                 # nodes.complete takes `costs` (where a pre-pass band's time went)

FEATURES = (COMPLETE_AND_POLL, BUNDLE_RANGES, FILTERED_ROWS, HEARTBEAT_STATS, FEED_STREAM, LIVE_BLOCKS,
            NODE_TAGS, JOB_AFTER, FARM_HISTORY, POVRAY_PIN, SCENE_FILES, UNIT_LOGS, UNIT_OVERHEAD,
            VIDEO_JOBS, JOB_KINDS, INLINE_BUNDLES, UNIT_COSTS,
            *((BZ2_ROWS,) if FILTERED_BZ2 in ENCODINGS else ()))   # this version's


@dataclass(frozen=True)
class Features:
    """A controller's features, as it listed them."""
    names: frozenset[str]

    @classmethod
    def of_reply(cls, reply: Any) -> Features:
        """From a `nodes.register` or `api.version` reply: its `features`, or none for a reply without the
        list (a controller from before it). Names this client does not know are kept and never asked for."""
        listed = reply.get("features") if isinstance(reply, dict) else None
        if not isinstance(listed, list):
            return OLDEST
        return cls(frozenset(name for name in listed if isinstance(name, str)))

    def __contains__(self, feature: str) -> bool:
        return feature in self.names


OLDEST = Features(frozenset())            # a controller that lists nothing
CURRENT = Features(frozenset(FEATURES))   # a controller of this version
