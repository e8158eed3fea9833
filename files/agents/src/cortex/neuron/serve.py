"""`neuron serve`: the agent under gunicorn (one worker, gthread)."""

from __future__ import annotations

import logging
from typing import Any

from cortex.core.serving import Server
from cortex.neuron import fence
from cortex.neuron.config import NeuronConfig

log = logging.getLogger("cortex.neuron")


def serve(cfg: NeuronConfig) -> None:
    host, port = cfg.bind

    def factory() -> Any:
        from cortex.neuron.app import create_app

        return create_app(cfg)

    def post_worker_init(worker: fence.Worker) -> None:
        # On SIGTERM, refuse new work at once (503 shutting_down) while gunicorn lets
        # running requests finish within graceful_timeout.
        handle_exit = worker.handle_exit

        def on_exit(sig: int, frame: Any) -> None:
            app = worker.wsgi
            neuron = getattr(app, "extensions", {}).get("neuron")
            if neuron is not None:
                neuron.registry.shutting_down = True
            handle_exit(sig, frame)

        worker.handle_exit = on_exit

    def worker_exit(server: Any, worker: Any) -> None:
        neuron = getattr(worker.wsgi, "extensions", {}).get("neuron")
        if neuron is not None:
            neuron.registry.shutdown()

    Server(factory, {
        "bind": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        "workers": 1,  # loaded models live in this one process's memory
        "worker_class": "gthread",
        "threads": cfg.http_threads,
        "timeout": 120,
        "graceful_timeout": 30,
        "keepalive": 75,
        "loglevel": cfg.log_level,
        "accesslog": "-" if cfg.log_level == "debug" else None,
        "errorlog": "-",
        "proc_name": "helexa-neuron",
        "control_socket_disable": True,  # no writable $HOME under systemd hardening
        "post_worker_init": post_worker_init,
        "worker_exit": worker_exit,
    }).run()
