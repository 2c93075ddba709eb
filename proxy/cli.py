"""The `imagegate` command: serve, check-config, hash-key."""
from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import multiprocessing.connection
import os
import secrets
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

import msgspec
import structlog


def configure_logging(level: str = "info") -> None:
    """structlog once per process: JSON lines on stdout; aiohttp's and asyncio's loggers too."""
    from imagegate.proxy.logs import configure_logging as configure

    configure(level)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imagegate", description="OpenAI-compatible image gateway.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", help="config file (default: $IMAGEGATE_CONFIG, else the "
                       "bundled offline config serving the `local` provider)")
    serve.add_argument("--host", help="listen address (overrides server.host)")
    serve.add_argument("--port", type=int, help="listen port (overrides server.port)")
    serve.add_argument("--workers", type=int, default=1,
                       help="worker processes sharing the port (default 1)")
    check = sub.add_parser("check-config", help="validate a config and print its routes")
    check.add_argument("path")
    hash_key = sub.add_parser("hash-key", help="print the key_sha256 form of an API key")
    hash_key.add_argument("key")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "hash-key":
        print(hashlib.sha256(args.key.encode()).hexdigest())
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
    return serve(config, args, path)


def print_routes(config: Any) -> None:
    rows = [("MODEL", "PROVIDER", "TYPE", "UPSTREAM MODEL", "PRIORITY", "WEIGHT", "PRICE")]
    for name, model in config.models.items():
        for r in model.routes:
            rows.append((name, r.provider, config.providers[r.provider].type, r.model or name,
                         str(r.priority), f"{r.weight:g}", price_text(r.price)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)).rstrip())
    keys = len(config.auth.keys)
    print(f"\n{len(config.models)} models, {len(config.providers)} providers, {keys} API keys"
          + ("" if keys else " (open gateway)"))
    limited = limited_keys(config)
    if limited and config.state.backend == "memory":
        print(f"note: state.backend is memory: the limits and budgets of {', '.join(limited)} "
              "hold per process (with --workers N, each worker enforces them on its own)")
    for warning in unpriced_warnings(config):
        print(f"warning: {warning}", file=sys.stderr)


def price_text(price: Any) -> str:
    if price is None:
        return "unpriced"
    if price.tokens is not None:
        return "tokens"
    if isinstance(price.per_image, dict):
        return "per-image table"
    return f"${price.per_image:g}/image"


def unpriced_warnings(config: Any) -> list[str]:
    """Each unpriced route a key with a USD budget can reach: its spend would go uncounted."""
    out = []
    for key in config.auth.keys:
        budget = key.budget
        if budget is None or (budget.usd_per_day is None and budget.usd_per_month is None):
            continue
        for name, model in config.models.items():
            if key.models is not None and name not in key.models:
                continue
            for i, r in enumerate(model.routes):
                if r.price is None:
                    out.append(f"models.{name}.routes[{i}] ({r.provider}) has no price: the "
                               f"USD budget of key '{key.id}' cannot count what it spends there")
    return out


def limited_keys(config: Any) -> list[str]:
    """Key ids with limits or a budget (`anonymous`: an open gateway's default_limits)."""
    from imagegate.middlewares.plans import policies

    return list(policies(config.auth))


def per_worker_warning(config: Any, workers: int) -> str | None:
    """Limits kept in memory are never silently multiplied by the worker count: it is said."""
    if workers <= 1 or config.state.backend != "memory" or not limited_keys(config):
        return None
    return (f"state.backend is memory: each of the {workers} workers enforces the limits and "
            f"budgets on its own, so together they admit up to {workers} times each limit; "
            "use state.backend: redis to share them")


def with_flags(config: Any, args: argparse.Namespace) -> Any:
    """The config with --host and --port applied (on start and on every reload)."""
    server = msgspec.structs.replace(
        config.server,
        host=args.host or config.server.host,
        port=config.server.port if args.port is None else args.port,
    )
    return msgspec.structs.replace(config, server=server)


def serve(config: Any, args: argparse.Namespace, path: str | None = None) -> int:
    config = with_flags(config, args)
    if args.workers <= 1:
        run_worker(config, False, path, args)
        return 0
    if not config.storage.signing_secret:  # one secret for all workers: any of them serves a link
        storage = msgspec.structs.replace(config.storage, signing_secret=secrets.token_hex(32))
        config = msgspec.structs.replace(config, storage=storage)
    own_dir = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    if own_dir:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="imagegate-prom-")
    try:
        return supervise(config, args.workers, path, args)
    finally:
        if own_dir:
            shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)


def supervise(config: Any, count: int, path: str | None = None,
              args: argparse.Namespace | None = None) -> int:
    """Runs the workers; if one dies on its own the others are stopped and the exit code says
    so, for the process supervisor (systemd, Kubernetes) to restart the gateway."""
    configure_logging(config.server.log_level)
    log = structlog.get_logger("imagegate")
    detail = per_worker_warning(config, count)
    if detail:
        log.warning("limits_per_worker", workers=count, keys=limited_keys(config), detail=detail)
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=run_worker, args=(config, True, path, args))
               for _ in range(count)]
    for w in workers:
        w.start()
    stopping = crashed = False

    def stop_workers(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for w in workers:  # each worker shuts down gracefully on SIGTERM
            if w.is_alive():
                w.terminate()

    def reload_workers(signum: int, frame: Any) -> None:
        """Checked once here (one `config_reload_failed` line), then every worker reloads."""
        if read_config(path, log) is None:
            return
        for w in workers:
            if w.is_alive() and w.pid is not None:
                os.kill(w.pid, signal.SIGHUP)

    signal.signal(signal.SIGTERM, stop_workers)
    signal.signal(signal.SIGINT, stop_workers)
    signal.signal(signal.SIGHUP, reload_workers)
    while True:
        alive = [w for w in workers if w.is_alive()]  # is_alive() reaps: read it once a turn
        if not alive:
            break
        if len(alive) < len(workers) and not stopping:
            dead = next(w for w in workers if w not in alive)
            log.error("worker_died", pid=dead.pid, exitcode=dead.exitcode)
            crashed = True
            stop_workers(signal.SIGTERM, None)
        multiprocessing.connection.wait([w.sentinel for w in alive], timeout=1.0)
    for w in workers:
        w.join()
    return 1 if crashed else 0


def read_config(path: str | None, log: Any) -> Any:
    """The config file as it is now, or None (logged with the error's path) when invalid."""
    from imagegate.config.loader import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        log.error("config_reload_failed", error=str(exc), path=exc.path,
                  detail="the config loaded before keeps serving")
    except OSError as exc:
        log.error("config_reload_failed", error=f"cannot read the config: {exc.strerror}",
                  path="", detail="the config loaded before keeps serving")
    return None


def run_worker(config: Any, multiprocess: bool, path: str | None = None,
               args: argparse.Namespace | None = None) -> None:
    from imagegate.proxy.app import create_app
    from imagegate.proxy.reload import GENERATIONS

    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the loop's reload handler is in place
    configure_logging(config.server.log_level)
    log = structlog.get_logger("imagegate")
    app = create_app(config, multiprocess=multiprocess, workers=args.workers if args else 1)
    generations = app[GENERATIONS]

    def reload() -> None:
        log.info("config_reload_requested", pid=os.getpid())
        new = read_config(path, log)
        if new is None:
            return
        new = with_flags(new, args) if args is not None else new
        if not new.storage.signing_secret:  # the one --workers made up at start stays
            storage = msgspec.structs.replace(
                new.storage, signing_secret=generations.current.config.storage.signing_secret)
            new = msgspec.structs.replace(new, storage=storage)
        generations.reload(new)

    log.info("starting", host=config.server.host, port=config.server.port, pid=os.getpid(),
             models=len(config.models))
    from imagegate.proxy.server import run

    run(app, config.server, reuse_port=multiprocess, on_reload=reload)
    log.info("stopped", pid=os.getpid())
