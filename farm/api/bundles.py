"""bundles.*: scene bundles (a zip of the scene and its files), stored once per content hash."""

from __future__ import annotations


from farm.api import args, rpc
from farm.auth import NODE, SUBMIT
from farm.server.bodies import FileReply, SpooledBinary
from farm.wire import Binary


MAX_RANGE = 16 * 1024 * 1024   # bytes of a bundle one bundles.fetch_range call returns at most


class BundlesAPI:
    namespace = "bundles"

    def __init__(self, services):
        self._bundles = services.bundles

    @rpc(SUBMIT)
    def has(self, digest: str) -> bool:
        """Whether the controller already stores this bundle (so a client need not upload it).

        @param digest: str, "sha256:<hex>" of the zip's bytes
        @return: bool
        """
        return self._bundles.has(args.text("digest", digest, 100))

    @rpc(SUBMIT)
    def upload(self, data: Binary) -> str:
        """Check and store a scene bundle. The transport streams a large one to disk, hashing it on the way.

        @param data: base64, the zip
        @return: str, its digest ("sha256:<hex>")
        """
        if isinstance(data, SpooledBinary):
            return self._bundles.upload_file(data.path, data.size, data.sha256, data.keep_as)
        return self._bundles.upload(args.binary("data", data))

    @rpc(NODE)
    def fetch_range(self, digest: str, offset: int, length: int) -> FileReply:
        """Part of a stored bundle, so a node on a poor link resumes an interrupted download where it
        stopped rather than starting again (streamed from disk).

        @param digest: str
        @param offset: int, the first byte wanted (0-based)
        @param length: int, bytes wanted, 1 to 16 MiB (fewer come back at the end of the bundle)
        @return: struct: size (int, the whole bundle's bytes), data (base64, the bytes from offset)
        """
        digest = args.text("digest", digest, 100)
        offset = args.whole("offset", offset, 0, args.MAX_ID)
        length = args.whole("length", length, 1, MAX_RANGE)
        return FileReply.open_range(self._bundles.path(digest), f"bundle {digest}", offset, length)

    @rpc(NODE)
    def fetch(self, digest: str) -> FileReply:
        """A stored bundle's bytes, for nodes (streamed from disk).

        @param digest: str
        @return: base64, the zip
        """
        digest = args.text("digest", digest, 100)
        return FileReply.open(self._bundles.path(digest), f"bundle {digest}")
