"""The controller: the farm's API on an XML-RPC server, with its maintenance loop.

Layers, outside in:
- `farm.server`: HTTP, TLS, tokens, admission and limits; XML-RPC marshalling (`farm.wire`: what
  clients share of it);
- `farm.api`: one adapter per namespace (jobs, nodes, bundles, viewer, api); the only code that
  knows XML-RPC's types;
- `farm.service`: the rules (submission, leasing, stitching, views), over
- `farm.policy` (pure decisions: who renders what, what a failure means) and
- `farm.store` (persistence in SQLite, via `farm.store.db`'s grouped commits), returning
  `farm.records`.

`Controller` wires them up. The clock is injected so a test can step the farm
(`Services.tick`) without sleeping.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Callable

from farm import api
from farm.api.metrics import MetricsPage
from farm.api.viewer import FeedStream
from farm.auth import controller_tokens
from farm.config import Config
from farm.faults import Code, FarmError
from farm.limits import request_limits
from farm.server.rpc import RPCServer, server_tls_context
from farm.wire import is_loopback
from farm.service.files import sweep_temporary
from farm.service import Services
from farm.store import Store
from farm.server.supervise import Supervisor

log = logging.getLogger(__name__)


class Controller:
    """The farm on an XML-RPC server, with its maintenance thread."""

    def __init__(self, config: Config, clock: Callable[[], float] = time.time):
        self.config = config
        self.store = Store(config.data_dir / "povfarm.sqlite3")
        sweep_temporary(config.data_dir)
        self.services = Services(config, self.store, clock)
        self.supervisor = Supervisor()     # every long-lived thread: restarted if it fails, else the process ends
        self.tokens = controller_tokens(config.data_dir, Path(config.token_file) if config.token_file else None,
                                        config.token or None)
        try:
            self.server = self._server()
        except (OSError, FarmError):
            self.store.close()
            raise
        for name, (method, roles) in api.build(self.services).items():
            self.server.register_function(method, name, roles)
        feed = FeedStream(self.services)
        self.server.register_stream(feed.path, feed, feed.roles)
        metrics = MetricsPage(self.services, self.server.connections.counts)
        self.server.register_page(metrics.path, metrics, metrics.roles, metrics.content_type)
        self._stop = threading.Event()
        self._maintenance: threading.Thread | None = None
        self.announcer = self._announcer()

    def _announcer(self):
        """With `announce`, what broadcasts this controller to the LAN (made now, so a controller that
        cannot be announced says so before it serves)."""
        if not self.config.announce:
            return None
        from farm.discovery import Announcer
        try:
            return Announcer(self.config, self.url, self.tokens)
        except FarmError:
            self.server.server_close()
            self.store.close()
            raise

    def _server(self) -> RPCServer:
        config = self.config
        tls = server_tls_context(config.tls_cert, config.tls_key)
        try:
            return RPCServer((config.bind, config.port), self.tokens, tls, request_limits(config), self.supervisor,
                             self.services.meter)
        except OSError as err:
            raise FarmError(Code.BAD_ARGUMENT,
                            f"cannot listen on {config.bind}:{config.port}: {err.strerror or err}") from None

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"{'https' if self.server.tls else 'http'}://{host}:{port}"

    def _maintain(self) -> None:
        """Tick every interval, and at once when frames are ready to be written."""
        interval = max(0.2, min(1.0, self.config.lease_timeout / 4))
        next_tick = time.monotonic() + interval
        while not self._stop.is_set():
            self.services.stitcher.wait(max(0.0, next_tick - time.monotonic()))
            if self._stop.is_set():
                return
            try:
                if time.monotonic() >= next_tick:
                    self.services.tick()
                    next_tick = time.monotonic() + interval
                else:
                    self.services.stitcher.drain()
            except FarmError as err:
                log.error("maintenance: %s", err)

    def serve_forever(self) -> None:
        self.services.recover()
        self._maintenance = self.supervisor.start("maintenance", self._maintain)
        log.info("controller listening on %s (data in %s)", self.url, self.config.data_dir)
        if self.server.tls is None and not is_loopback(self.config.bind):
            log.warning("*" * 72)
            log.warning("listening on %s WITHOUT TLS: tokens and scenes cross the network in clear text.",
                        self.config.bind)
            log.warning("Use --tls-cert/--tls-key unless every host that can reach this port is trusted.")
            log.warning("*" * 72)
        if self.announcer is not None:
            self.announcer.start()
        try:
            self.server.serve_forever(poll_interval=0.05)   # shutdown() waits for this loop to notice
        finally:
            self._stop.set()

    def start_in_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="controller", daemon=True)
        thread.start()
        return thread

    def shutdown(self) -> None:
        self._stop.set()
        if self.announcer is not None:
            self.announcer.stop()
        self.services.stitcher.wake()   # so the maintenance thread sees the stop at once
        self.server.shutdown()
        self.server.server_close()
        if self._maintenance is not None and self._maintenance.is_alive():
            self._maintenance.join(timeout=5)
        self.store.close()
