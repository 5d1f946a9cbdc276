"""Running the service on uvicorn: in the foreground (``rkd serve``) or in a background thread (tests, notebooks)."""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time

logger = logging.getLogger(__name__)

__all__ = ["BackgroundServer", "bind", "is_loopback", "uvicorn_server"]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free port the system picks; read it with
    ``sock.getsockname()[1]``). Binding first means the port is known, and a taken port fails, before the
    server starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted sockets only then; without it Nagle's
    # algorithm holds a response's second segment for the client's delayed ACK, 40 ms per request
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port or "
                                 "--host") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    if not is_loopback(host):
        logger.warning("listening on %s: the service has no authentication; anyone who reaches this address can "
                       "search the indexes", host)
    return sock


def uvicorn_server(app, access_log: bool = False):
    """A uvicorn server for ``app`` that uses the caller's logging (no uvicorn log config, no access log unless
    asked: writing a log line per request is a large share of a 1 ms request)."""
    import uvicorn

    config = uvicorn.Config(app, log_config=None, access_log=access_log, lifespan="on", timeout_keep_alive=30,
                            server_header=False)
    return uvicorn.Server(config)


class BackgroundServer:
    """``app`` served by uvicorn in a daemon thread of this process, on a free loopback port.

    Use as a context manager: ``with BackgroundServer(app) as server: urlopen(server.url + "/health")``; leaving
    the block stops the server (and the app's workers) and waits for it.
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, start_timeout: float = 60.0):
        self.app, self.host, self.start_timeout = app, host, start_timeout
        self._sock = bind(host, port)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self._server = uvicorn_server(app)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                        name=f"rkd-serve-{self.port}", daemon=True)

    def start(self) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the server stopped while starting (see the log)")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"the server did not start within {self.start_timeout:.0f} s")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.ident is not None:
            self._thread.join(timeout=30)
        self._sock.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
