"""The `imagegate` command: serve, check-config, hash-key."""
from __future__ import annotations

import argparse
import hashlib
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

import msgspec
import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


def configure_logging(level: str = "info") -> None:
    """structlog once per process: JSON lines on stdout, bytes all the way (no stdlib logging)."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(
                serializer=lambda obj, default: msgspec.json.encode(obj, enc_hook=default)
            ),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.BytesLoggerFactory(),
        cache_logger_on_first_use=True,
    )


def port_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0..65535, not {value}")
    return value


def worker_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid worker count: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"workers must be 1 or more, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from imagegate import __version__

    parser = argparse.ArgumentParser(
        prog="imagegate", description="OpenAI-compatible image gateway.")
    parser.add_argument("--version", action="version", version=f"imagegate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", help="config file (default: $IMAGEGATE_CONFIG, else the "
                       "bundled offline config serving the `local` provider)")
    serve.add_argument("--host", help="listen address (overrides server.host)")
    serve.add_argument("--port", type=port_number, help="listen port, 0..65535 (overrides "
                       "server.port)")
    serve.add_argument("--workers", type=worker_count, default=1,
                       help="worker processes sharing the supervisor's socket (default 1); "
                       "a dead worker is replaced, 5 deaths in 60 s stop the gateway")
    check = sub.add_parser("check-config", help="validate a config and print its routes")
    check.add_argument("path")
    hash_key = sub.add_parser("hash-key", help="print the key_sha256 form of an API key")
    hash_key.add_argument("key", nargs="?", help="the key (default: read from standard input, "
                          "which keeps it out of shell history and `ps`)")
    return parser


def read_key(given: str | None) -> str | None:
    if given is not None:
        return given
    if sys.stdin.isatty():
        import getpass

        return getpass.getpass("API key: ")
    line = sys.stdin.readline()
    return line.rstrip("\r\n")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "hash-key":
        key = read_key(args.key)
        if not key:
            print("imagegate: no key given (pass it as an argument or on standard input)",
                  file=sys.stderr)
            return 1
        print(hashlib.sha256(key.encode()).hexdigest())
        return 0
    from imagegate.config.loader import ConfigError, load_config

    path = args.path if args.command == "check-config" else (
        args.config or os.environ.get("IMAGEGATE_CONFIG"))
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"imagegate: {exc}", file=sys.stderr)
        return 1
    if args.command == "check-config":
        print_routes(config)
        return 0
    return serve(config, args)


def print_routes(config: Any) -> None:
    rows = [("MODEL", "PROVIDER", "TYPE", "UPSTREAM MODEL", "PRIORITY", "WEIGHT")]
    for name, model in config.models.items():
        for r in model.routes:
            rows.append((name, r.provider, config.providers[r.provider].type, r.model or name,
                         str(r.priority), f"{r.weight:g}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)).rstrip())
    keys = len(config.auth.keys)
    print(f"\n{len(config.models)} models, {len(config.providers)} providers, {keys} API keys"
          + ("" if keys else " (open gateway)"))
    limited = limited_keys(config)
    if limited:
        print(f"note: limits of {', '.join(limited)} are not enforced by this version")


def limited_keys(config: Any) -> list[str]:
    return [k.id for k in config.auth.keys
            if any(v is not None for v in msgspec.structs.astuple(k.limits))]


def serve(config: Any, args: argparse.Namespace) -> int:
    from imagegate.proxy.supervisor import ListenError, listen

    server = msgspec.structs.replace(
        config.server,
        host=config.server.host if args.host is None else args.host,
        port=config.server.port if args.port is None else args.port,
    )
    config = msgspec.structs.replace(config, server=server)
    try:
        sock = listen(server.host, server.port)  # bound once, here: workers inherit it
    except ListenError as exc:
        print(f"imagegate: {exc}", file=sys.stderr)
        return 1
    if args.workers <= 1:
        return run_worker(config, sock, multiprocess=False)
    if not config.storage.signing_secret:  # one secret for all workers: any of them serves a link
        storage = msgspec.structs.replace(config.storage, signing_secret=secrets.token_hex(32))
        config = msgspec.structs.replace(config, storage=storage)
    own_dir = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    if own_dir:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="imagegate-prom-")
    try:
        return supervise(config, sock, args.workers)
    finally:
        sock.close()
        if own_dir:
            shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)


def supervise(config: Any, sock: socket.socket, count: int) -> int:
    """Runs the workers on the supervisor's socket; a worker that dies is replaced, a crash loop
    stops the gateway with exit 1 for the process supervisor (systemd, Kubernetes) to see."""
    from imagegate.proxy.supervisor import Supervisor
    from prometheus_client import multiprocess as prom_multiprocess

    configure_logging(config.server.log_level)
    log = structlog.get_logger("imagegate")
    log.info("supervisor_starting", host=config.server.host, port=sock.getsockname()[1],
             workers=count, pid=os.getpid())

    def forget(pid: int) -> None:  # a dead worker's live gauges leave the sums
        prom_multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]

    supervisor = Supervisor(worker_main, (config, sock), count, log,
                            grace_s=config.server.graceful_shutdown_s, on_death=forget)
    code = supervisor.run()
    log.info("shutdown", reason=supervisor.reason or "every worker stopped", exit_code=code,
             pid=os.getpid())
    return code


def worker_main(config: Any, sock: socket.socket) -> None:
    """A worker process's entry point: its exit code says whether it failed."""
    sys.exit(run_worker(config, sock, multiprocess=True))


def run_worker(config: Any, sock: socket.socket, multiprocess: bool) -> int:
    """One serving process; the last line it logs says why it stopped (`shutdown` for a lone
    process, `worker_stopped` under a supervisor, whose own `shutdown` line comes last)."""
    import asyncio

    from aiohttp import web
    from imagegate.proxy.app import create_app
    from imagegate.proxy.supervisor import signal_name

    configure_logging(config.server.log_level)
    log = structlog.get_logger("imagegate")
    app = create_app(config, multiprocess=multiprocess)
    reason: list[str] = []

    async def on_signals(app: web.Application) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop, signum)

    def stop(signum: int) -> None:
        reason.append(f"signal {signal_name(signum)}")
        if len(reason) == 1:  # a second signal while draining does not cut the drain short
            raise web.GracefulExit()

    app.on_startup.append(on_signals)
    log.info("starting", host=config.server.host, port=sock.getsockname()[1], pid=os.getpid(),
             models=len(config.models))
    if limited_keys(config):
        log.warning("limits_not_enforced", keys=limited_keys(config),
                    detail="auth.keys[].limits are accepted but not enforced by this version")
    event = "worker_stopped" if multiprocess else "shutdown"
    try:
        web.run_app(app, sock=sock, print=None, access_log=None, handler_cancellation=True,
                    shutdown_timeout=config.server.graceful_shutdown_s, handle_signals=True)
    except Exception as exc:
        log.error(event, reason=f"server failed: {type(exc).__name__}", exc_info=exc,
                  pid=os.getpid())
        return 1
    log.info(event, reason=reason[0] if reason else "server stopped", pid=os.getpid())
    return 0
