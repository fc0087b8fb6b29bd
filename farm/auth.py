"""Bearer tokens with four roles.

- `submit`: everything a user does (submit, cancel, pause, fetch, status, the viewer feed);
- `node`: what a render node does (register, poll, heartbeat, deliver, fetch bundles);
- `view`: read-only (status, lists, fetch images, the viewer feed);
- `metrics`: only `GET /metrics` (what a monitoring system scrapes; every other role may read it too).

The controller keeps one random token per role in a file (mode 0600) in its data
directory, made on first start. Clients take a token from `POVFARM_TOKEN`, or from
`--token-file`, which may hold a single token or the controller's whole role file
(then the client picks the role it needs), so on the controller's own box every
client can simply point at the controller's file.
"""

from __future__ import annotations

import hmac
import secrets
from pathlib import Path

from farm import atomic
from farm.faults import Code, FarmError

# The roles, defined here once: the server seats, limits and checks calls by them, clients ask for them.
SUBMIT, NODE, VIEW, METRICS = "submit", "node", "view", "metrics"
ROLES = (SUBMIT, NODE, VIEW, METRICS)
ANY_ROLE = frozenset({SUBMIT, NODE, VIEW})     # the roles that call the API (metrics does not)
READERS = frozenset({SUBMIT, VIEW})     # the roles that may read jobs, images and the feed
METRICS_READERS = frozenset(ROLES)      # GET /metrics: every role
TOKEN_FILE_NAME = "tokens"


def create_token_file(path: Path) -> dict[str, str]:
    """Write a new role file with fresh random tokens, readable by the owner only."""
    tokens = {role: secrets.token_urlsafe(32) for role in ROLES}
    text = "".join(f"{role} = {token}\n" for role, token in tokens.items())
    atomic.write(path, ("# povfarm access tokens: keep this file secret.\n" + text).encode("ascii"), atomic.PRIVATE)
    return tokens


def read_token_file(path: Path) -> dict[str, str]:
    """{role: token} from a role file, or {"": token} from a file holding one bare token."""
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except OSError as err:
        raise FarmError(Code.BAD_ARGUMENT, f"cannot read token file {path}: {err.strerror or err}") from None
    lines = [line for line in lines if line and not line.startswith("#")]
    tokens: dict[str, str] = {}
    for line in lines:
        role, sep, token = line.partition("=")
        if sep and role.strip() in ROLES and token.strip():
            tokens[role.strip()] = token.strip()
    if not tokens and len(lines) == 1 and "=" not in lines[0]:
        tokens[""] = lines[0]
    if not tokens:
        raise FarmError(Code.BAD_ARGUMENT, f"token file {path} holds no token")
    return tokens


def controller_tokens(data_dir: Path, token_file: Path | None, shared_token: str | None) -> dict[str, str]:
    """The tokens a controller accepts, by role. A single shared token (POVFARM_TOKEN, or a file with one
    bare token) is accepted for every role."""
    if shared_token:
        return {role: shared_token for role in ROLES}
    path = token_file or data_dir / TOKEN_FILE_NAME
    if not path.exists():
        return create_token_file(path)
    tokens = read_token_file(path)
    if "" in tokens:
        return {role: tokens[""] for role in ROLES}
    if METRICS not in tokens and all(role in tokens for role in ROLES if role != METRICS):
        tokens = _add_metrics_token(path, tokens)
    missing = [role for role in ROLES if role not in tokens and role != METRICS]
    if missing:
        raise FarmError(Code.BAD_ARGUMENT, f"token file {path} lacks the role(s) {', '.join(missing)}")
    return tokens


def _add_metrics_token(path: Path, tokens: dict[str, str]) -> dict[str, str]:
    """A role file written before the metrics role gains a token for it (the others stay as they were). One
    the controller may not write (a read-only --token-file) stays as it is: no metrics token then, and the
    other roles' tokens read the metrics."""
    added = {**tokens, METRICS: secrets.token_urlsafe(32)}
    try:
        text = path.read_text(encoding="utf-8")
        atomic.write(path, (text.rstrip("\n") + f"\n{METRICS} = {added[METRICS]}\n").encode("ascii"),
                     atomic.PRIVATE)
    except (OSError, UnicodeError):
        return tokens
    return added


def client_token(role: str, token: str | None, token_file: Path | None) -> str | None:
    """The token a client sends for `role`; None when none is configured."""
    if token:
        return token
    if token_file is None:
        return None
    tokens = read_token_file(token_file)
    if "" in tokens:
        return tokens[""]
    for candidate in (role, SUBMIT):   # a submit token can do what a viewer does
        if candidate in tokens:
            return tokens[candidate]
    raise FarmError(Code.BAD_ARGUMENT, f"token file {token_file} has no {role!r} token")


def roles_of(presented: str, tokens: dict[str, str]) -> frozenset[str]:
    """The roles whose token was presented (a shared token has them all), compared in constant time
    against every token so the answer's timing does not depend on which one matched."""
    matches = [role for role, token in tokens.items()
               if hmac.compare_digest(presented.encode(), token.encode())]
    return frozenset(matches)
