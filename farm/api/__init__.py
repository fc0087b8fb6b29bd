"""The RPC API: one thin adapter per namespace, the only code that knows XML-RPC's types.

Each namespace is a class whose public methods marked with `@rpc(roles...)` are
registered as `namespace.method` by introspection (`methods`). Every method's
docstring says what it does and, in `@param name: type` and `@return: type`
lines, what it takes and returns; `system.methodHelp` serves it. The adapters
check and convert arguments, call `farm.service`, and wrap bytes as base64.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

API_VERSION = 1


def rpc(*roles: str, shared: bool = False,
        value_limit: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a namespace method as public, for the token roles given. `shared`: it returns the very same
    object for as long as its answer stays the same, and never changes an object it returned, so the
    server may send the bytes it encoded for that object before. `value_limit`: the name of a method of
    the namespace that, given the parameters before the call's binary one, says how many bytes that may
    hold (or raises FarmError), so that the server refuses a larger one while reading it."""
    def mark(function: Callable[..., Any]) -> Callable[..., Any]:
        function.rpc_roles = frozenset(roles)   # type: ignore[attr-defined]
        function.rpc_shared = shared            # type: ignore[attr-defined]
        if value_limit is not None:
            function.rpc_value_limit = value_limit   # type: ignore[attr-defined]
        return function
    return mark


def methods(*namespaces: Any) -> dict[str, tuple[Callable[..., Any], frozenset[str]]]:
    """name -> (bound method, roles) for every `@rpc` method of the namespace objects given."""
    table = {}
    for namespace in namespaces:
        for name, member in inspect.getmembers(namespace, inspect.ismethod):
            roles = getattr(member, "rpc_roles", None)
            if roles is not None and not name.startswith("_"):
                table[f"{namespace.namespace}.{name}"] = (member, roles)
    return table


def build(services: Any) -> dict[str, tuple[Callable[..., Any], frozenset[str]]]:
    """The controller's whole public API over `services`."""
    from farm.api.bundles import BundlesAPI
    from farm.api.jobs import JobsAPI
    from farm.api.logs import LogsAPI
    from farm.api.meta import MetaAPI
    from farm.api.nodes import NodesAPI
    from farm.api.overview import FarmAPI
    from farm.api.viewer import ViewerAPI

    return methods(MetaAPI(), BundlesAPI(services), JobsAPI(services), LogsAPI(services), NodesAPI(services),
                   ViewerAPI(services), FarmAPI(services))
