"""`cortex serve`: the gateway under gunicorn with gevent workers, metrics on their own port.

Call `patch()` before anything imports ssl, urllib3 or requests (the CLI does it first).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
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

    def factory() -> Any:
        # Read the files again in every new worker: `systemctl reload` (HUP) makes gunicorn
        # start fresh workers, which then serve the new cortex.toml and models.toml.
        from cortex.gateway.app import create_app

        try:
            return create_app(*gw_config.load(config_path))
        except Exception:
            log.exception("%s: cannot load the configuration; keeping the old one",
                          config_path)
            return create_app(cfg, models)

    def when_ready(server: Any) -> None:
        start_metrics_server(cfg, models, *parse_listen(g.metrics_listen, DEFAULT_METRICS_PORT))

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
        "graceful_timeout": 30,
        # Idle keep-alive connections hold a gevent worker at shutdown: keep them short.
        "keepalive": 5,
        "loglevel": g.log_level,
        "errorlog": "-",
        "proc_name": "helexa-cortex",
        "control_socket_disable": True,
        "when_ready": when_ready,
        "child_exit": child_exit,
        "on_exit": on_exit,
    }).run()


def start_metrics_server(cfg: Any, models: Any, host: str, port: int) -> None:
    """In the gunicorn master: the workers' counters plus the fleet's live gauges."""
    from prometheus_client import CollectorRegistry, multiprocess
    from werkzeug.serving import make_server

    from cortex.gateway.app import metrics_app
    from cortex.gateway.catalogue import Catalogue
    from cortex.gateway.fleet import Fleet
    from cortex.gateway.metrics import FleetCollector
    from cortex.gateway.upstream import Upstream

    g = cfg.gateway
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    fleet = Fleet(cfg.neurons, Upstream(g.neuron_token, g.connect_timeout_secs, 10),
                  g.poll_interval_secs)
    registry.register(FleetCollector(fleet, Catalogue(models, g.default_keep_alive),
                                     refresh=True))
    server = make_server(host, port, metrics_app(registry), threaded=True)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    log.info("metrics on http://%s:%d/metrics", host, port)
