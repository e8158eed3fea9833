"""`cortex serve`: the gateway under gunicorn with gevent workers, metrics on their own port.

Call `patch()` before anything imports ssl, urllib3 or requests (the CLI does it first).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("cortex.gateway")


def patch() -> None:
    from gevent import monkey

    monkey.patch_all()


def serve(config_path: str) -> None:
    Master(config_path).run()


class Master:
    """The gunicorn master of `cortex serve` and its hooks: the configuration (the last one
    that loaded, which every worker is forked from), the metrics listener, and what each
    worker needs set up or flushed around its fork and exit."""

    def __init__(self, config_path: str) -> None:
        from cortex.gateway import config as gw_config

        self.config_path = config_path
        # Workers add their counters up through files in this folder (prometheus multiprocess).
        self.mp_dir = tempfile.mkdtemp(prefix="cortex-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = self.mp_dir
        self.cfg, self.models = gw_config.load(config_path)
        self.loaded_at = time.strftime("%Y-%m-%d %H:%M:%S")
        Path(self.cfg.gateway.state_dir).mkdir(parents=True, exist_ok=True)
        self.metrics: MetricsServer | None = None
        self.threads: dict[int, threading.Thread] = {}  # the master's, at the last fork

    def run(self) -> None:
        from cortex.core.config import parse_listen
        from cortex.core.serving import Server
        from cortex.gateway.config import DEFAULT_PORT

        g = self.cfg.gateway
        host, port = parse_listen(g.listen, DEFAULT_PORT)
        Server(self.app, {
            "bind": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
            "workers": g.workers,
            "worker_class": "cortex.gateway.worker.GatewayWorker",  # gevent, one write a reply
            "worker_connections": g.worker_connections,
            "timeout": 60,
            # A reload's old workers finish their requests, streams included, up to this long.
            "graceful_timeout": math.ceil(g.graceful_timeout_secs),
            # Idle keep-alive connections hold a gevent worker at shutdown: keep them short.
            "keepalive": 5,
            "loglevel": g.log_level,
            "errorlog": "-",
            "proc_name": "helexa-cortex",
            "control_socket_disable": True,
            "when_ready": self.when_ready,
            "on_reload": self.on_reload,
            "pre_fork": self.pre_fork,
            "post_fork": self.post_fork,
            "worker_exit": self.worker_exit,
            "child_exit": self.child_exit,
            "on_exit": self.on_exit,
        }).run()

    def app(self) -> Any:
        """In each worker (no preload): the app over the configuration it was forked with."""
        from cortex.gateway.app import create_app

        return create_app(self.cfg, self.models)

    # -- gunicorn's hooks, in the master ---------------------------------------------------
    def when_ready(self, server: Any) -> None:
        from cortex.core.config import parse_listen
        from cortex.gateway.config import DEFAULT_METRICS_PORT

        host, port = parse_listen(self.cfg.gateway.metrics_listen, DEFAULT_METRICS_PORT)
        self.metrics = MetricsServer(self.cfg, self.models, host, port)
        log.info("metrics on http://%s:%d/metrics", host, self.metrics.port)

    def on_reload(self, server: Any) -> None:
        """HUP (`systemctl reload`): read the files again here, before gunicorn forks the new
        workers. A broken file keeps the last good configuration, never the start-up one
        (that would bring revoked keys back)."""
        from cortex.gateway import config as gw_config

        try:
            cfg, models = gw_config.load(self.config_path)
        except Exception as exc:  # a ConfigError names the file and key, never a secret
            log.error("%s: reload failed, keeping the last good configuration (loaded %s): %s",
                      self.config_path, self.loaded_at, exc)
            return
        self.cfg, self.models = cfg, models
        self.loaded_at = time.strftime("%Y-%m-%d %H:%M:%S")
        log.info("%s: reloaded (%d neurons, %d models, %d keys)", self.config_path,
                 len(cfg.neurons), len(models.models), len(cfg.entitlements.keys))
        if self.metrics is not None:
            self.metrics.reconfigure(cfg, models)

    def pre_fork(self, server: Any, worker: Any) -> None:
        from cortex.gateway.internals import forked_threads

        self.threads = forked_threads()

    def child_exit(self, server: Any, worker: Any) -> None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)

    def on_exit(self, server: Any) -> None:
        shutil.rmtree(self.mp_dir, ignore_errors=True)

    # -- ... and in a worker ---------------------------------------------------------------
    def post_fork(self, server: Any, worker: Any) -> None:
        """In the new worker. gevent forks the master's greenlets too: this copy of the
        metrics server and its poller must stop here, or the worker would poll the neurons
        on the master's sockets and answer scrapes on the master's port."""
        from cortex.gateway.internals import keep_forked_threads

        keep_forked_threads(self.threads)
        if self.metrics is not None:
            self.metrics.forget()

    def worker_exit(self, server: Any, worker: Any) -> None:
        """As a worker ends: what its metrics buffer still holds goes to the files."""
        # (a worker stopped while it built the app has none)
        gw = getattr(getattr(worker, "wsgi", None), "extensions", {}).get("gateway")
        if gw is not None:
            gw.metrics.flush()


class MetricsServer:
    """The metrics listener in the gunicorn master: the workers' counters plus the fleet's
    gauges. A scrape reads the view its own poller keeps (every poll_interval_secs), so
    scrapes on this unauthenticated port never turn into calls to the neurons."""

    def __init__(self, cfg: Any, models: Any, host: str, port: int) -> None:
        from prometheus_client import CollectorRegistry, multiprocess
        from werkzeug.serving import make_server

        from cortex.gateway.app import metrics_app
        from cortex.gateway.metrics import FleetCollector

        self.registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(self.registry)
        self.fleet, catalogue = self._fleet(cfg, models)
        self.collector = FleetCollector(self.fleet, catalogue)
        self.registry.register(self.collector)
        self.server = make_server(host, port, metrics_app(self.registry), threaded=True)
        self.port = self.server.server_port
        threading.Thread(target=self.server.serve_forever, name="metrics", daemon=True).start()

    @staticmethod
    def _fleet(cfg: Any, models: Any) -> tuple[Any, Any]:
        from cortex.gateway.catalogue import Catalogue
        from cortex.gateway.fleet import Fleet
        from cortex.gateway.upstream import Upstream

        g = cfg.gateway
        fleet = Fleet(cfg.neurons, Upstream(g.neuron_token, g.connect_timeout_secs, 10),
                      g.poll_interval_secs)
        fleet.start()
        return fleet, Catalogue(models, g.default_keep_alive)

    def reconfigure(self, cfg: Any, models: Any) -> None:
        """After a reload: poll the new neuron list, label with the new catalogue."""
        old = self.fleet
        self.fleet, catalogue = self._fleet(cfg, models)
        self.collector.fleet, self.collector.catalogue = self.fleet, catalogue
        old.stop()

    def stop(self) -> None:
        self.fleet.stop()
        self.server.shutdown()
        self.server.server_close()

    def forget(self) -> None:
        """In a forked worker: end this process's copy without touching the master's
        sockets: the poller and the serving loop just end (`shutdown` waits for the loop's
        next tick, so it runs beside the worker's start; nothing is closed)."""
        self.fleet.stop()
        threading.Thread(target=self.server.shutdown, name="metrics-copy-stop",
                         daemon=True).start()
