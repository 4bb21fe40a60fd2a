"""``sendmux-sandbox``: run the sandbox in the foreground."""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Sequence

from sendmux_sandbox.config import ALL_PERMISSIONS, FaultConfig, SandboxConfig, default_keys

__all__ = ["build_config", "main"]

DEFAULT_PORT = 8025


def _key(value: str) -> tuple[str, frozenset[str]]:
    key, _, perms = value.partition("=")
    if not key:
        raise argparse.ArgumentTypeError("expected KEY or KEY=perm1,perm2")
    permissions = frozenset(p.strip() for p in perms.split(",") if p.strip()) if perms else None
    return key, ALL_PERMISSIONS if permissions is None else permissions


def _limit(value: str) -> int | None:
    if value.lower() in ("0", "none", "off"):
        return None
    return int(value)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sendmux-sandbox", description="A local Sendmux-compatible API server."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="0 picks a free port")
    parser.add_argument(
        "--key",
        action="append",
        type=_key,
        metavar="KEY[=PERMS]",
        help="accept this API key (repeatable; PERMS comma-separated, default all);"
        " replaces the two default keys",
    )
    parser.add_argument("--send-status", type=int, default=200, choices=(200, 201, 202))
    parser.add_argument(
        "--rate-limit", type=_limit, default=1800, help="requests per window per key; 0 disables"
    )
    parser.add_argument("--rate-window", type=float, default=60.0, help="seconds")
    parser.add_argument("--management-rate-limit", type=_limit, default=600)
    parser.add_argument("--management-rate-window", type=float, default=60.0)
    parser.add_argument("--delivery-delay", type=float, default=0.5, help="seconds pending")
    parser.add_argument("--idempotency-ttl", type=float, default=86400.0, help="seconds")
    faults = parser.add_argument_group("faults (probabilities 0..1 unless noted)")
    faults.add_argument("--error-503", type=float, default=0.0)
    faults.add_argument("--error-500", type=float, default=0.0)
    faults.add_argument("--error-429", type=float, default=0.0)
    faults.add_argument("--retry-after", type=int, default=1, help="seconds, for 503 and 429")
    faults.add_argument("--latency", type=float, default=0.0, help="seconds added to each send")
    faults.add_argument("--drop-after-accept", type=float, default=0.0)
    faults.add_argument("--slow-after-accept", type=float, default=0.0)
    faults.add_argument("--slow-seconds", type=float, default=30.0)
    faults.add_argument(
        "--item-error", type=float, default=0.0, help="per batch message: refused, retryable"
    )
    faults.add_argument("--seed", type=int, default=None)
    parser.add_argument("--log-level", default="info")
    return parser


def build_config(args: argparse.Namespace) -> SandboxConfig:
    return SandboxConfig(
        keys=dict(args.key) if args.key else default_keys(),
        send_status=args.send_status,
        rate_limit=args.rate_limit,
        rate_window=args.rate_window,
        management_rate_limit=args.management_rate_limit,
        management_rate_window=args.management_rate_window,
        delivery_delay=args.delivery_delay,
        idempotency_ttl=args.idempotency_ttl,
        faults=FaultConfig(
            error_503=args.error_503,
            error_500=args.error_500,
            error_429=args.error_429,
            retry_after=args.retry_after,
            latency=args.latency,
            drop_after_accept=args.drop_after_accept,
            slow_after_accept=args.slow_after_accept,
            slow_seconds=args.slow_seconds,
            item_error=args.item_error,
            seed=args.seed,
        ),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        config = build_config(args)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        import uvicorn

        from sendmux_sandbox.app import ADMIN_PREFIX, MANAGEMENT_PREFIX, SENDING_PREFIX, create_app
    except ImportError as exc:
        print(f"sendmux-sandbox needs the [sandbox] extra: {exc}", file=sys.stderr)
        return 2

    # Bind first so that --port 0 can print the port it got.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as exc:
        print(f"sendmux-sandbox: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config),
            log_level=args.log_level,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
    )

    base = f"http://{args.host}:{port}"
    print(f"Sending API:    {base}{SENDING_PREFIX}", flush=True)
    print(f"Management API: {base}{MANAGEMENT_PREFIX}", flush=True)
    print(f"Admin API:      {base}{ADMIN_PREFIX}/stats", flush=True)
    for key, permissions in config.keys.items():
        print(f"API key:        {key}  ({', '.join(sorted(permissions))})", flush=True)
    server.run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
