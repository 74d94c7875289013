"""Bind policy and CURVE set-up for mesh sockets.

Usage:
    check_bind("tcp://0.0.0.0:5552", curve=None, insecure=False)   # raises: keys or --insecure
    curve_server(sock, ServerKeys.load("keys/sam.key_secret"), authorized_dir="keys/clients")
    curve_client(sock, server_public="keys/sam.key", client_secret="keys/orchestrator.key_secret")

Key files are the ones `python -m protocol.keys generate` (pyzmq's zmq.auth) writes:
NAME.key (public, safe to copy to clients) and NAME.key_secret (public + secret; keep it on
the host that owns it). A server with CURVE and an authorized-clients folder admits only
clients whose public key file is in that folder; without the folder, any client that knows
the server's public key is admitted (the traffic is still encrypted).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth

log = logging.getLogger(__name__)

_TCP = re.compile(r"^tcp://(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:/]+)):(?P<port>\d+|\*)$")


def is_loopback(endpoint: str) -> bool:
    """True for ipc://, inproc:// and tcp:// on 127.0.0.0/8, ::1 or localhost."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    m = _TCP.match(endpoint)
    if not m:
        raise ValueError(
            f"endpoint: {endpoint!r} is not a ZeroMQ address; use tcp://HOST:PORT, e.g. tcp://127.0.0.1:5552"
        )
    host = m.group("v6") or m.group("host")
    if host == "localhost":
        return True
    if host == "*":
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: assume it is reachable from the network


@dataclass(frozen=True)
class ServerKeys:
    public: bytes
    secret: bytes

    @classmethod
    def load(cls, secret_file: str | os.PathLike) -> ServerKeys:
        path = Path(secret_file)
        if not path.is_file():
            raise FileNotFoundError(
                f"curve secret key: {path} does not exist; make one with "
                f"`python -m protocol.keys generate --dir {path.parent} --name {path.stem}`"
            )
        public, secret = zmq.auth.load_certificate(str(path))
        if not secret:
            raise ValueError(
                f"curve secret key: {path} holds only a public key; pass the NAME.key_secret file"
            )
        return cls(public, secret)


def check_bind(endpoint: str, *, curve: bool, insecure: bool) -> None:
    """Refuse a network-facing bind without CURVE unless the user said --insecure."""
    if is_loopback(endpoint) or curve:
        return
    if insecure:
        log.warning(
            "binding %s without CURVE (--insecure): anyone on the network can use it", endpoint
        )
        return
    raise PermissionError(
        f"bind: {endpoint} is reachable from the network and no CURVE keys are configured. "
        f"Give --curve-secret keys/NAME.key_secret (make keys with `python -m protocol.keys "
        f"generate`), bind 127.0.0.1 instead, or pass --insecure if this network is trusted."
    )


def curve_server(
    sock: zmq.Socket,
    keys: ServerKeys,
    *,
    authorized_dir: str | os.PathLike | None,
    ctx: zmq.Context,
):
    """Make `sock` a CURVE server. Returns the authenticator thread to stop at shutdown (or None)."""
    auth = None
    if authorized_dir is not None:
        from zmq.auth.thread import ThreadAuthenticator

        d = Path(authorized_dir)
        if not d.is_dir():
            raise FileNotFoundError(f"curve authorized clients: folder {d} does not exist")
        auth = ThreadAuthenticator(ctx, log=logging.getLogger("protocol.zap"))
        auth.start()
        auth.configure_curve(domain="*", location=str(d))
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.curve_server = True
    return auth


def curve_client(
    sock: zmq.Socket,
    *,
    server_public: str | os.PathLike | bytes,
    client_secret: str | os.PathLike | None,
) -> None:
    """Make `sock` a CURVE client of the server whose public key file (or z85 key) is given."""
    if isinstance(server_public, bytes):
        server_key = server_public
    else:
        p = Path(server_public)
        if not p.is_file():
            raise FileNotFoundError(
                f"curve server key: {p} does not exist (copy the server's NAME.key here)"
            )
        server_key, _ = zmq.auth.load_certificate(str(p))
    if client_secret is not None:
        pub, sec = zmq.auth.load_certificate(str(client_secret))
        if not sec:
            raise ValueError(
                f"curve client key: {client_secret} holds no secret key; pass NAME.key_secret"
            )
    else:
        pub, sec = zmq.curve_keypair()  # ephemeral: fine when the server admits any client
    sock.curve_serverkey = server_key
    sock.curve_publickey = pub
    sock.curve_secretkey = sec
