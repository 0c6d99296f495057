"""Serves the built browser page (``make web``) on this machine only: ``python bundle/web/serve.py [--port 8000]``.

Python's ``http.server`` with three additions: it binds 127.0.0.1 by default, it names the JavaScript modules and
WebAssembly files' types explicitly (``.mjs`` and ``.wasm`` are missing from some systems' MIME tables, and a
browser refuses a module served as ``application/octet-stream``), and it sends the cross-origin isolation headers
(``Cross-Origin-Opener-Policy: same-origin``, ``Cross-Origin-Embedder-Policy: require-corp``) that let
onnxruntime-web use several WebAssembly threads. The page loads nothing from other origins, so isolation costs
nothing.
"""

from __future__ import annotations

import argparse
import functools
import sys
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

__all__ = ["PageHandler", "make_server", "main"]

DIST = Path(__file__).resolve().parent / "dist"


class PageHandler(SimpleHTTPRequestHandler):
    """A static file handler with module/wasm MIME types, cross-origin isolation and no caching.

    Args:
        args: as :class:`http.server.SimpleHTTPRequestHandler` (request, client address, server).
        directory: the folder served.
        quiet: do not log each request.
        kwargs: further arguments of :class:`http.server.SimpleHTTPRequestHandler`.
    """

    extensions_map = {
        **SimpleHTTPRequestHandler.extensions_map,
        ".js": "text/javascript",
        ".mjs": "text/javascript",
        ".wasm": "application/wasm",
        ".json": "application/json",
        ".onnx": "application/octet-stream",
    }

    def __init__(self, *args, directory: str | None = None, quiet: bool = False, **kwargs) -> None:
        self.quiet = quiet
        super().__init__(*args, directory=directory, **kwargs)

    def end_headers(self) -> None:
        """Adds the isolation and caching headers, then ends the headers."""
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
        """Logs a request unless quiet.

        Args:
            format: a %-format string.
            args: its values.
        """
        if not self.quiet:
            super().log_message(format, *args)


def make_server(directory: str | Path = DIST, port: int = 8000, host: str = "127.0.0.1", quiet: bool = False):
    """A threading HTTP server of ``directory`` (call ``serve_forever``; port 0 picks a free port).

    Args:
        directory: the built page (``index.html``, ``src/``, ``ort/``, ``model/``).
        port: the TCP port (0: any free one; see ``server.server_address``).
        host: the address to bind; 127.0.0.1 keeps the page on this machine.
        quiet: do not log each request.

    Returns:
        The :class:`http.server.ThreadingHTTPServer`.

    Raises:
        FileNotFoundError: when ``directory`` has no ``index.html`` (build it with ``make web``).
    """
    directory = Path(directory)
    if not (directory / "index.html").is_file():
        raise FileNotFoundError(f"{directory}/index.html is missing: build the page with `make web`")
    handler = functools.partial(PageHandler, directory=str(directory), quiet=quiet)
    return ThreadingHTTPServer((host, port), handler)


def main(argv: list[str] | None = None) -> int:
    """Serves the page until interrupted.

    Args:
        argv: command-line arguments (``--directory``, ``--port``, ``--host``).

    Returns:
        The exit status.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--directory", default=str(DIST), help="the built page (default: bundle/web/dist)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    args = parser.parse_args(argv)
    try:
        server = make_server(args.directory, args.port, args.host)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    host, port = server.server_address[:2]
    print(f"serving {args.directory} at http://{host}:{port}/ (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
