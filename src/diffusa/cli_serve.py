"""`diffusa serve`: the web page and REST API (diffusa.serve) on this machine, at http://127.0.0.1:7860/.

Loopback only unless --listen, which binds 0.0.0.0 and requires an access token (--token, or one generated and
printed here). The socket is bound here, before anything else starts, so a port in use is one line; --port 0
takes a free port, and the printed URL names it.
"""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import os
import socket
from pathlib import Path
from typing import Any

from diffusa.cli_common import threads_flag
from diffusa.errors import DiffusaError
from diffusa.threads import use_threads

DEFAULT_PORT = 7860


def port_number(text: str) -> int:
    """argparse type: a TCP port, 0..65535 (0: any free port)."""
    if not text.isdecimal() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0..65535, got {text!r}")
    return int(text)


def queue_size(text: str) -> int:
    """argparse type: --max-queue, 0..MAX_QUEUE."""
    from diffusa.serve.limits import MAX_QUEUE

    if not text.isdecimal() or int(text) > MAX_QUEUE:
        raise argparse.ArgumentTypeError(f"expected an integer 0..{MAX_QUEUE}, got {text!r}")
    return int(text)


def add_parser(sub: Any) -> None:
    """Register `serve` on the CLI's sub-parsers."""
    from diffusa.serve.limits import DEFAULT_QUEUE

    s = sub.add_parser("serve", help="a web page and REST API over the models, on this machine",
                       description="Serve the shipped models (and the runs under --runs) as a web page at / and a "
                                   "REST API at /api (OpenAPI page: /docs). Loopback only unless --listen. "
                                   "See docs/serve.md.")
    s.add_argument("--host", help="address to bind (default 127.0.0.1; 0.0.0.0 with --listen)")
    s.add_argument("--port", type=port_number, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}; 0: a free one")
    s.add_argument("--runs", metavar="DIR", help="a folder whose run folders the page and API may load, besides "
                                                 "the shipped models (nothing outside it)")
    s.add_argument("--listen", action="store_true",
                   help="serve other machines (bind 0.0.0.0); requires an access token, generated if not given")
    s.add_argument("--token", help="access token required on every request (at least 16 letters, digits, - or _); "
                                   "optional on loopback")
    s.add_argument("--max-queue", type=queue_size, default=DEFAULT_QUEUE,
                   help=f"requests that may wait behind the running one; more are answered 429 busy "
                        f"(default {DEFAULT_QUEUE})")
    s.add_argument("--history", default="diffusa-history", metavar="DIR",
                   help="where each generation's PNG and settings are kept (default ./diffusa-history)")
    s.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or mps")
    threads_flag(s, "torch's, one per core; one generation runs at a time")
    s.set_defaults(func=cmd_serve)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or one line saying why not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise DiffusaError(f"cannot listen on {host}:{port}: {e.strerror or e} (choose another --port, or "
                           "--port 0 for a free one)") from None
    return sock


def cmd_serve(args: argparse.Namespace) -> int:
    from diffusa.serve.guard import check_token, new_token

    host = args.host or ("0.0.0.0" if args.listen else "127.0.0.1")
    if not args.listen and not _loopback(host):
        raise DiffusaError(f"--host {host} would serve other machines: add --listen (which requires an access "
                           "token), or drop --host for 127.0.0.1")
    token = check_token(args.token)
    if args.listen and token is None:
        token = new_token()
    if args.runs is not None and not Path(args.runs).is_dir():
        raise DiffusaError(f"--runs {args.runs}: no such folder")
    missing = [m for m in ("fastapi", "uvicorn", "gradio") if importlib.util.find_spec(m) is None]
    if missing:
        raise DiffusaError(f"diffusa serve needs {', '.join(missing)}: pip install 'diffusa[serve]'")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("GRADIO_TEMP_DIR", str(Path(args.history).resolve() / ".gradio"))  # its uploads, here
    import torch
    import uvicorn

    from diffusa.serve import create_app

    use_threads(args.threads, is_image=True)  # auto: torch's default (the models a page serves are images)
    app = create_app(runs=args.runs, history=args.history, token=token, listen=args.listen,
                     max_queue=args.max_queue, device=args.device)
    sock = bind(host, args.port)
    port = sock.getsockname()[1]
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    shown = f"[{shown}]" if ":" in shown else shown
    url = f"http://{shown}:{port}/"
    print(f"diffusa serve: {url}{'?token=' + token if token else ''}", flush=True)
    print(f"  API {url}api/generate (docs {url}docs); history in {Path(args.history).resolve()}; "
          f"queue {args.max_queue}; {torch.get_num_threads()} threads on {args.device}"
          f"; listening on {host}{' (token required)' if token else ''}; Ctrl-C stops", flush=True)
    if token:
        print(f"  access token: {token} (header 'Authorization: Bearer {token}')", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shut down gracefully, then raised Ctrl-C again: the way to stop a server
        pass
    finally:
        sock.close()
    print("diffusa serve: stopped", flush=True)
    return 0


__all__ = ["add_parser", "bind", "cmd_serve"]
