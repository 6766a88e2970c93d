"""Command line: `fastdns serve | check-config | version`.

Owns argument parsing, turning flags into settings overrides, and how errors reach the
terminal (a configuration problem is a message list and exit status 2, never a traceback).
Does not validate settings itself (config.py does) and does not run the server (server.py
does; it is imported only by `serve`).
"""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Sequence
from typing import Any

import yaml

from fastdns import __version__, _wire
from fastdns.config import Settings, dump_settings, load_settings
from fastdns.errors import ConfigError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2  # argparse uses 2 for usage errors; a bad configuration is the same kind of mistake
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    """The `fastdns` argument parser with its subcommands."""
    parser = argparse.ArgumentParser(
        prog="fastdns", description="Caching DNS server with a compiled hit path."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the DNS server")
    serve.add_argument("--config", metavar="FILE", help="YAML or JSON settings file")
    serve.add_argument("--bind", metavar="ADDR", help="listen address (server.bind_address)")
    serve.add_argument("--port", metavar="N", type=int, help="DNS port (server.dns_port)")
    serve.add_argument(
        "--upstream",
        metavar="HOST[:PORT]",
        action="append",
        help="upstream resolver IP; repeat for several (replaces upstream_servers)",
    )

    check = commands.add_parser(
        "check-config", help="validate a settings file and print the effective settings as YAML"
    )
    check.add_argument("file", metavar="FILE", help="YAML or JSON settings file")

    commands.add_parser("version", help="print version information")
    return parser


def serve_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Settings overrides from `serve` flags; flags not given leave file/env values alone."""
    overrides: dict[str, Any] = {}
    server: dict[str, Any] = {}
    if args.bind is not None:
        server["bind_address"] = args.bind
    if args.port is not None:
        server["dns_port"] = args.port
    if server:
        overrides["server"] = server
    if args.upstream:
        overrides["upstream_servers"] = list(args.upstream)
    return overrides


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "check-config":
            return _check_config(args.file)
        return _version()
    except ConfigError as exc:
        _print_config_error(exc)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _serve(args: argparse.Namespace) -> int:
    settings = load_settings(args.config, overrides=serve_overrides(args))
    from fastdns.server import run

    status = run(settings)
    return status if isinstance(status, int) else EXIT_OK


def _check_config(path: str) -> int:
    settings = load_settings(path)
    sys.stdout.write(settings_yaml(settings))
    return EXIT_OK


def settings_yaml(settings: Settings) -> str:
    """The settings as a YAML document, every default filled in, in declaration order."""
    return yaml.safe_dump(dump_settings(settings), sort_keys=False, default_flow_style=False)


def _version() -> int:
    print(f"fastdns {__version__}")
    print(f"python {platform.python_version()} ({platform.python_implementation()})")
    print(f"cython-compiled: yes ({_wire.__file__})")
    return EXIT_OK


def _print_config_error(exc: ConfigError) -> None:
    lines = ["fastdns: configuration error:"] + [f"  - {message}" for message in exc.messages]
    print("\n".join(lines), file=sys.stderr)
