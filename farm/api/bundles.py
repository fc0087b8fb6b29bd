"""bundles.*: scene bundles (a zip of the scene and its files), stored once per content hash."""

from __future__ import annotations

import xmlrpc.client

from farm.api import NODE, SUBMIT, args, rpc


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
    def upload(self, data: xmlrpc.client.Binary) -> str:
        """Check and store a scene bundle.

        @param data: base64, the zip
        @return: str, its digest ("sha256:<hex>")
        """
        return self._bundles.upload(args.binary("data", data))

    @rpc(NODE)
    def fetch(self, digest: str) -> xmlrpc.client.Binary:
        """A stored bundle's bytes, for nodes.

        @param digest: str
        @return: base64, the zip
        """
        return xmlrpc.client.Binary(self._bundles.read(args.text("digest", digest, 100)))
