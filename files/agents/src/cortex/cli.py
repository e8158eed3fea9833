"""Command lines: `neuron` (the node agent) and `cortex` (the gateway and fleet tools)."""

from __future__ import annotations

import argparse
import logging
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
    parser = argparse.ArgumentParser(prog="cortex", description="helexa.cortex gateway")
    parser.add_argument("--version", action="version", version=__version__)
    parser.parse_args(argv)
    print("cortex: the gateway commands arrive with the gateway (issue 3)", file=sys.stderr)
    return 2
