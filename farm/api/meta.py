"""api.*: what the controller is."""

from __future__ import annotations

from farm import __version__
from farm.api import API_VERSION, rpc
from farm.auth import ANY_ROLE


class MetaAPI:
    namespace = "api"

    @rpc(*ANY_ROLE)
    def version(self) -> dict:
        """The API version and the server's version.

        @return: struct: api (int), server (str, e.g. "povfarm 0.9.0")
        """
        return {"api": API_VERSION, "server": f"povfarm {__version__}"}
