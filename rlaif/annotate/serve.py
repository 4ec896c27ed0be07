"""Bind the port ourselves, then hand the socket to uvicorn.

Binding first makes "port in use" one clear line before anything is served, lets `--port 0` pick a
free port (the line printed says which), and means the URL printed is the one that answers.
"""

from __future__ import annotations

import errno
import socket
import sys

from rlaif.errors import UserError


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart right after a kill is not "in use"
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise UserError(f"--port {port}: {host}:{port} is already in use; pick another port "
                            "(--port 0 picks a free one)") from None
        if e.errno == errno.EADDRNOTAVAIL:
            raise UserError(f"--host {host}: not an address of this machine") from None
        raise UserError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e})") from None
    except socket.gaierror as e:
        sock.close()
        raise UserError(f"--host {host}: not an address of this machine ({e})") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def run(app, sock: socket.socket, url: str, banner: str) -> None:
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    print(f"{banner}\n  open {url}  (Ctrl-C stops; every label is saved when it is given)", flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    sys.stdout.flush()
