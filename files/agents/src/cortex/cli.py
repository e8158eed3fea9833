"""Command lines: `neuron` (the node agent) and `cortex` (the gateway and fleet tools)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from cortex import __version__
from cortex.core.config import ConfigError


def _logging(level: str) -> None:
    logging.basicConfig(level=level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def neuron_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="neuron", description="helexa.cortex node agent")
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="run the agent (gunicorn, one worker)")
    p_serve.add_argument("--config", "-c", help="neuron.toml (default: built-in defaults)")
    p_check = sub.add_parser("check-config", help="validate a neuron.toml and exit")
    p_check.add_argument("config")
    args = parser.parse_args(argv)

    from cortex.neuron import config as neuron_config

    try:
        cfg = neuron_config.load(getattr(args, "config", None))
    except ConfigError as exc:
        print(f"neuron: config error: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        print(f"{args.config}: ok")
        return 0
    _logging(cfg.log_level)
    from cortex.neuron.serve import serve

    serve(cfg)
    return 0


def cortex_main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        # gevent must patch the standard library before ssl/urllib3 are imported.
        from cortex.gateway.serve import patch

        patch()
    parser = argparse.ArgumentParser(prog="cortex", description="helexa.cortex gateway")
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run the gateway (gunicorn, gevent workers)")
    p.add_argument("--config", "-c", default="/etc/cortex/cortex.toml")
    p = sub.add_parser("check-config", help="validate cortex.toml and models.toml")
    p.add_argument("config", nargs="?", default="/etc/cortex/cortex.toml")
    for name, text in (("status", "fleet table: nodes, health, devices, models"),
                       ("models", "the merged model catalogue"),
                       ("drain", "stop routing new requests to a node"),
                       ("undrain", "route to a node again")):
        p = sub.add_parser(name, help=text)
        if name in ("drain", "undrain"):
            p.add_argument("node")
        p.add_argument("--url", default=os.environ.get("CORTEX_URL", "http://127.0.0.1:31313"))
        p.add_argument("--admin-key", default=os.environ.get("CORTEX_ADMIN_KEY", ""),
                       help="admin key (or CORTEX_ADMIN_KEY)")
        p.add_argument("--json", action="store_true", help="machine-readable output")
    for name, text in (("load", "load a model: on --node, or one more replica on the best "
                                "node (a progress bar while it downloads and loads)"),
                       ("unload", "unload a model: from --node, or from every node"),
                       ("top", "a live view of nodes, replicas, queues and scale events")):
        p = sub.add_parser(name, help=text)
        if name != "top":
            p.add_argument("model", help="a catalogue id or alias")
            p.add_argument("--node", help="a node's name (cortex status lists them)")
        p.add_argument("--url", default=os.environ.get("CORTEX_URL", "http://127.0.0.1:31313"))
        p.add_argument("--admin-key", default=os.environ.get("CORTEX_ADMIN_KEY", ""),
                       help="admin key (or CORTEX_ADMIN_KEY)")
        if name == "top":
            p.add_argument("--interval", type=float, default=1.0, help="seconds between reads")
            p.add_argument("--once", action="store_true", help="print one view and exit")
        else:
            p.add_argument("--json", action="store_true", help="machine-readable output")
        if name == "load":
            p.add_argument("--timeout", type=float, default=3600,
                           help="seconds to wait for the load (a large download takes long)")
    args = parser.parse_args(argv)

    if args.command in ("serve", "check-config"):
        from cortex.gateway import config as gw_config

        try:
            cfg, models = gw_config.load(args.config)
        except ConfigError as exc:
            print(f"cortex: config error: {exc}", file=sys.stderr)
            return 2
        if args.command == "check-config":
            print(f"{args.config}: ok ({len(cfg.neurons)} neurons, {len(models.models)} models)")
            return 0
        _logging(cfg.gateway.log_level)
        from cortex.gateway.serve import serve

        serve(args.config)
        return 0
    if args.command in ("load", "unload"):
        from cortex import fleetload

        return fleetload.run(args)
    if args.command == "top":
        from cortex import fleettop

        return fleettop.run(args)
    from cortex import fleetcli

    return fleetcli.run(args)
