"""The `imagegate` command: serve, check-config, hash-key."""
from __future__ import annotations

import argparse
import gc
import hashlib
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


def configure_logging(level: str = "info") -> None:
    """structlog once per process: JSON lines on stdout; aiohttp's and asyncio's loggers too."""
    from imagegate.proxy.logs import configure_logging as configure

    configure(level)


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
    serve = sub.add_parser(
        "serve", help="run the gateway",
        description="Run the gateway. SIGHUP re-reads the config file (an invalid one is "
        "refused and the old one keeps serving); SIGTERM drains: /readyz answers 503, requests "
        "in flight finish within server.graceful_shutdown_s, then it exits 0.")
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
    return sys.stdin.readline().rstrip("\r\n")


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
        host=config.server.host if args.host is None else args.host,
        port=config.server.port if args.port is None else args.port,
    )
    return msgspec.structs.replace(config, server=server)


def serve(config: Any, args: argparse.Namespace, path: str | None = None) -> int:
    from imagegate.proxy.supervisor import ListenError, listen

    config = with_flags(config, args)
    try:  # bound once, here: workers inherit it, a second gateway on the port is refused
        sock = listen(config.server.host, config.server.port)
    except ListenError as exc:
        print(f"imagegate: {exc}", file=sys.stderr)
        return 1
    if args.workers <= 1:
        return run_worker(config, sock, False, path, args)
    if not config.storage.signing_secret:  # one secret for all workers: any of them serves a link
        storage = msgspec.structs.replace(config.storage, signing_secret=secrets.token_hex(32))
        config = msgspec.structs.replace(config, storage=storage)
    own_dir = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    if own_dir:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="imagegate-prom-")
    try:
        return supervise(config, sock, args.workers, path, args)
    finally:
        sock.close()
        if own_dir:
            shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)


def supervise(config: Any, sock: socket.socket, count: int, path: str | None = None,
              args: argparse.Namespace | None = None) -> int:
    """Runs the workers on the supervisor's socket; a worker that dies is replaced, a crash loop
    stops the gateway with exit 1 for the process supervisor (systemd, Kubernetes) to see."""
    from imagegate.proxy.supervisor import Supervisor
    from prometheus_client import multiprocess as prom_multiprocess

    configure_logging(config.server.log_level)
    log = structlog.get_logger("imagegate")
    log.info("supervisor_starting", host=config.server.host, port=sock.getsockname()[1],
             workers=count, pid=os.getpid())
    detail = per_worker_warning(config, count)
    if detail:
        log.warning("limits_per_worker", workers=count, keys=limited_keys(config), detail=detail)

    def forget(pid: int) -> None:  # a dead worker's live gauges leave the sums
        prom_multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]

    supervisor = Supervisor(worker_main, (config, sock, path, args), count, log,
                            grace_s=config.server.graceful_shutdown_s, on_death=forget)

    def reload_workers(signum: int, frame: Any) -> None:
        """Checked once here (one `config_reload_failed` line), then every worker reloads;
        a worker started later (replacing a dead one) starts from the new file."""
        new = read_config(path, log)
        if new is None:
            return
        new = with_flags(new, args) if args is not None else new
        if not new.storage.signing_secret:  # the one made up at start stays
            storage = msgspec.structs.replace(new.storage,
                                              signing_secret=config.storage.signing_secret)
            new = msgspec.structs.replace(new, storage=storage)
        supervisor.args = (new, sock, path, args)
        supervisor.signal_workers(signal.SIGHUP)

    signal.signal(signal.SIGHUP, reload_workers)
    code = supervisor.run()
    log.info("shutdown", reason=supervisor.reason or "every worker stopped", exit_code=code,
             pid=os.getpid())
    return code


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


def worker_main(config: Any, sock: socket.socket, path: str | None,
                args: argparse.Namespace | None) -> None:
    """A worker process's entry point: its exit code says whether it failed."""
    sys.exit(run_worker(config, sock, True, path, args))


YOUNG_COLLECTION_EVERY = 10_000  # allocations; CPython's default is 700


def settle_heap() -> None:
    """Once the app is built: start-up's garbage collected and its objects frozen (no full
    collection walks them again), then the young generation collected every 10,000 allocations
    instead of every 700. Each young collection walks what the requests in flight hold, and a
    passthrough request allocates hundreds of objects. A request that held megabytes of images
    is collected as it ends instead (middlewares/context.py): the cycles a failed download
    leaves must not wait for the next threshold while they hold its bytes."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION_EVERY, *gc.get_threshold()[1:])


def run_worker(config: Any, sock: socket.socket, multiprocess: bool, path: str | None = None,
               args: argparse.Namespace | None = None) -> int:
    """One serving process on the given socket. The last line it logs says why it stopped
    (`shutdown` for a lone process; `worker_stopped` under a supervisor, whose own `shutdown`
    line comes last)."""
    from imagegate.proxy.app import create_app
    from imagegate.proxy.reload import GENERATIONS

    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the loop's reload handler is in place
    configure_logging(config.server.log_level)
    log = structlog.get_logger("imagegate")
    app = create_app(config, multiprocess=multiprocess, workers=args.workers if args else 1)
    generations = app[GENERATIONS]
    settle_heap()

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
        try:
            generations.reload(new)
        except Exception as exc:  # a bug, never a bad file: those are ConfigErrors above
            log.exception("config_reload_failed", error=type(exc).__name__, path="",
                          detail="the config loaded before keeps serving")

    log.info("starting", host=config.server.host, port=sock.getsockname()[1], pid=os.getpid(),
             models=len(config.models))
    from imagegate.proxy.server import run

    event = "worker_stopped" if multiprocess else "shutdown"
    try:
        reason = run(app, config.server, sock=sock, on_reload=reload)
    except Exception as exc:
        log.error(event, reason=f"server failed: {type(exc).__name__}", exc_info=exc,
                  pid=os.getpid())
        return 1
    log.info(event, reason=reason, pid=os.getpid())
    return 0
