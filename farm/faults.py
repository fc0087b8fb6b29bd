"""The one place for errors that cross the wire.

Every error a caller may see has a stable integer code and a sentence. The
controller raises `FarmError`; its RPC layer turns that into an
Fault with the same code (`farm.wire.fault_of`), and clients turn a Fault back into a
`FarmError` (`farm.wire.error_of`), so both sides branch on `err.code`, never on message text.
Codes are part of the API: never renumber, only add.
"""

from __future__ import annotations

import enum


class Code(enum.IntEnum):
    INTERNAL = 1
    BAD_REQUEST = 2
    UNKNOWN_METHOD = 3
    BAD_ARGUMENT = 10
    BAD_OPTION = 11
    BAD_BUNDLE = 12
    BUNDLE_TOO_LARGE = 13
    REQUEST_TOO_LARGE = 14
    UNKNOWN_JOB = 20
    UNKNOWN_BUNDLE = 21
    JOB_NOT_DONE = 22
    JOB_FINISHED = 23
    UNKNOWN_NODE = 30
    STALE_LEASE = 31
    NOT_READY = 34
    UNAUTHORIZED = 32
    FORBIDDEN = 33
    STORAGE = 40
    UNREACHABLE = 50
    SCENE_NOT_FOUND = 60
    RENDER_FAILED = 61


SENTENCES: dict[Code, str] = {
    Code.INTERNAL: "The controller hit an internal error; its log has the details.",
    Code.BAD_REQUEST: "The request was not a well-formed call.",
    Code.UNKNOWN_METHOD: "There is no such method.",
    Code.BAD_ARGUMENT: "An argument is missing, of the wrong type or out of range.",
    Code.BAD_OPTION: "A POV-Ray option is not allowed or not understood.",
    Code.BAD_BUNDLE: "The scene bundle is malformed or unsafe.",
    Code.BUNDLE_TOO_LARGE: "The scene bundle is larger than allowed.",
    Code.REQUEST_TOO_LARGE: "The request is larger than the controller accepts.",
    Code.UNKNOWN_JOB: "There is no job with that id.",
    Code.UNKNOWN_BUNDLE: "The controller has no bundle with that hash.",
    Code.JOB_NOT_DONE: "The job has not finished rendering.",
    Code.JOB_FINISHED: "The job has already finished.",
    Code.UNKNOWN_NODE: "The node is not registered; register again.",
    Code.STALE_LEASE: "The lease is no longer current; the result was discarded.",
    Code.NOT_READY: "What the unit needs is not ready yet; ask again.",
    Code.UNAUTHORIZED: "The controller refused the access token.",
    Code.FORBIDDEN: "This token's role may not do that.",
    Code.STORAGE: "The controller could not write to its data directory.",
    Code.UNREACHABLE: "The controller could not be reached.",
    Code.SCENE_NOT_FOUND: "The scene file does not exist or cannot be read.",
    Code.RENDER_FAILED: "The render failed.",
}


class FarmError(Exception):
    """An error with a stable code and a human sentence."""

    def __init__(self, code: Code, detail: str | None = None):
        self.code = Code(code)
        self.detail = detail or SENTENCES[self.code]
        super().__init__(self.detail)

    def __str__(self) -> str:
        return self.detail
