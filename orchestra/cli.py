"""`orchestra serve [DIR...]`: the web page over the records under DIRs, served by uvicorn.

Loopback by default. Any other address needs `--token` (one is generated and printed when none
is given, as Jupyter does); with a token, every request needs it.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from pathlib import Path

import uvicorn

from liborchestra import __version__
from orchestra import live
from orchestra.app import create_app
from orchestra.security import is_loopback, new_token

EXIT_USAGE = 2


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="orchestra",
                                  description="The web page over batches and searches.")
    top.add_argument("--version", action="version", version=f"orchestra {__version__}")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser("serve", help="serve the page over the records under DIRs",
                           description="Serve batches, scheds and searches found under DIRs "
                                       "(default: this folder); runs launched from the page "
                                       "are made under the first DIR.")
    serve.add_argument("dirs", nargs="*", type=Path, metavar="DIR")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to bind (default 127.0.0.1; any other needs --token)")
    serve.add_argument("--port", type=int, default=8765, help="port (default 8765; 0: any)")
    serve.add_argument("--token", nargs="?", const="", default=None,
                       help="require this token on every request (none given: one is "
                            "generated and printed)")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    dirs = args.dirs or [Path(".")]
    for folder in dirs:
        if not folder.is_dir():
            print(f"orchestra: {folder}: no such folder", file=sys.stderr)
            return EXIT_USAGE
    token = args.token
    if token is None and not is_loopback(args.host):
        print(f"orchestra: refusing to serve on {args.host} without a token: add --token "
              "(one is generated and printed) or bind 127.0.0.1", file=sys.stderr)
        return EXIT_USAGE
    if token == "":
        token = new_token()
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as error:
        print(f"orchestra: cannot bind {args.host}:{args.port}: {error.strerror}",
              file=sys.stderr)
        return EXIT_USAGE
    port = sock.getsockname()[1]
    shown = f"[{args.host}]" if family == socket.AF_INET6 else args.host
    url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    print(f"orchestra {__version__}: serving {', '.join(str(d.resolve()) for d in dirs)}",
          flush=True)
    print(f"open {url}", flush=True)
    logging.basicConfig(level=logging.WARNING, format="orchestra: %(message)s")
    config = uvicorn.Config(create_app(dirs, token), log_level="warning", lifespan="on",
                            timeout_graceful_shutdown=2)
    _Server(config).run(sockets=[sock])
    return 0


class _Server(uvicorn.Server):
    """uvicorn's server, telling the live streams to end when it is asked to stop."""

    def handle_exit(self, sig: int, frame) -> None:
        live.stopping.set()
        super().handle_exit(sig, frame)


def run() -> None:
    sys.exit(main())
