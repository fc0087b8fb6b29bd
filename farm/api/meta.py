"""api.*: what the controller is."""

from __future__ import annotations

from farm import __version__
from farm.api import API_VERSION, rpc
from farm.auth import ANY_ROLE
from farm.features import FEATURES


class MetaAPI:
    namespace = "api"

    @rpc(*ANY_ROLE)
    def version(self) -> dict:
        """The API version, the server's version and what it can do.

        @return: struct: api (int), server (str, e.g. "povfarm 0.9.0"), features ([str]: the controller's
            features, as nodes.register lists them; a controller from before the list sends none)
        """
        return {"api": API_VERSION, "server": f"povfarm {__version__}", "features": list(FEATURES)}
