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
    # Workers add their counters up through files in this folder (prometheus multiprocess).
    mp_dir = tempfile.mkdtemp(prefix="cortex-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = mp_dir

    from cortex.core.config import parse_listen
    from cortex.core.serving import Server
    from cortex.gateway import config as gw_config
    from cortex.gateway.config import DEFAULT_METRICS_PORT, DEFAULT_PORT

    cfg, models = gw_config.load(config_path)
    g = cfg.gateway
    host, port = parse_listen(g.listen, DEFAULT_PORT)
    Path(g.state_dir).mkdir(parents=True, exist_ok=True)
    # The last configuration that loaded, kept in the master: workers are forked from it,
    # so every worker (after a reload, or replacing one that died) serves exactly this.
    good = {"cfg": cfg, "models": models, "at": time.strftime("%Y-%m-%d %H:%M:%S")}
    metrics: dict[str, MetricsServer] = {}

    def factory() -> Any:
        from cortex.gateway.app import create_app

        return create_app(good["cfg"], good["models"])

    def on_reload(server: Any) -> None:
        # HUP (`systemctl reload`): read the files again here, before gunicorn forks the new
        # workers. A broken file keeps the last good configuration, never the start-up one
        # (that would bring revoked keys back).
        try:
            new_cfg, new_models = gw_config.load(config_path)
        except Exception as exc:  # a ConfigError names the file and key, never a secret
            log.error("%s: reload failed, keeping the last good configuration (loaded %s): %s",
                      config_path, good["at"], exc)
            return
        good.update(cfg=new_cfg, models=new_models, at=time.strftime("%Y-%m-%d %H:%M:%S"))
        log.info("%s: reloaded (%d neurons, %d models, %d keys)", config_path,
                 len(new_cfg.neurons), len(new_models.models), len(new_cfg.entitlements.keys))
        if "server" in metrics:
            metrics["server"].reconfigure(new_cfg, new_models)

    def when_ready(server: Any) -> None:
        metrics["server"] = start_metrics_server(
            cfg, models, *parse_listen(g.metrics_listen, DEFAULT_METRICS_PORT))

    threads: dict[int, threading.Thread] = {}

    def pre_fork(server: Any, worker: Any) -> None:
        threads.clear()
        threads.update(threading._active)  # the master's threads, greenlets under gevent

    def post_fork(server: Any, worker: Any) -> None:
        # In the new worker. gevent forks the master's greenlets too: this copy of the
        # metrics server and its poller must stop here, or the worker would poll the
        # neurons on the master's sockets and answer scrapes on the master's port.
        # threading forgot those threads at the fork, yet they still run here and end by
        # removing themselves from its table: a KeyError traceback in each new worker's
        # log (gevent/gevent#2130) unless they are put back for that.
        for ident, thread in threads.items():
            threading._active.setdefault(ident, thread)
        if "server" in metrics:
            metrics["server"].forget()

    def worker_exit(server: Any, worker: Any) -> None:
        # In the worker, as it ends: what its metrics buffer still holds goes to the files.
        gw = getattr(worker.wsgi, "extensions", {}).get("gateway")
        if gw is not None:
            gw.metrics.flush()

    def child_exit(server: Any, worker: Any) -> None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)

    def on_exit(server: Any) -> None:
        shutil.rmtree(mp_dir, ignore_errors=True)

    Server(factory, {
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
        "when_ready": when_ready,
        "on_reload": on_reload,
        "pre_fork": pre_fork,
        "post_fork": post_fork,
        "worker_exit": worker_exit,
        "child_exit": child_exit,
        "on_exit": on_exit,
    }).run()


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
        sockets (no shutdown, no close of shared connections; the loops just end)."""
        self.fleet.stop()
        self.server._BaseServer__shutdown_request = True  # serve_forever ends at its next tick


def start_metrics_server(cfg: Any, models: Any, host: str, port: int) -> MetricsServer:
    server = MetricsServer(cfg, models, host, port)
    log.info("metrics on http://%s:%d/metrics", host, server.port)
    return server
