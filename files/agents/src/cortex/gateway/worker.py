"""The gateway's gunicorn worker: gevent's, with the gateway's hooks into gunicorn's reply
(gateway/internals.py: the head sent with the first body bytes, and what gunicorn would
work out again for every request kept) and a graceful stop that ends the dashboard's
event streams, which never end by themselves.
"""

from __future__ import annotations

from gunicorn.workers.ggevent import GeventWorker

from cortex.gateway.internals import install_worker_hooks


class GatewayWorker(GeventWorker):
    def handle_exit(self, sig, frame) -> None:
        # A graceful stop (SIGTERM: a restart, or a reload's old workers) waits for open
        # requests; a dashboard's event stream never ends by itself, so end it now.
        super().handle_exit(sig, frame)
        # A reload right after a start stops workers still building the app: no app yet.
        # (An exception here would surface inside that build, a boot error that stops
        # gunicorn's master and with it the gateway.)
        live = getattr(getattr(self, "wsgi", None), "extensions", {}).get("cortex_ui")
        if live is not None:
            import gevent

            gevent.spawn(live.close)  # not from inside the signal handler

    def init_process(self) -> None:
        install_worker_hooks()  # in this worker process only (the neuron's are untouched)
        super().init_process()
