"""Make CURVE key pairs for mesh services and clients (pyzmq's zmq.auth certificate files).

Usage:
    python -m protocol.keys generate --dir keys --name sam            # keys/sam.key(+_secret)
    python -m protocol.keys generate --dir keys/clients --name orchestrator
    python -m protocol.keys show keys/sam.key                         # print the z85 public key

`NAME.key` holds the public key: copy it to every client of that service (and, for a client
key, into the service's authorized-clients folder). `NAME.key_secret` holds both keys: it
stays on the host that owns it and is written readable by its owner only.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import zmq
import zmq.auth


def generate(directory: str | os.PathLike, name: str, *, force: bool = False) -> tuple[Path, Path]:
    """Write DIR/NAME.key and DIR/NAME.key_secret; returns (public_file, secret_file)."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"--name: {name!r} must be a plain file name such as 'sam'")
    if not zmq.has("curve"):
        raise RuntimeError("this libzmq was built without CURVE support; install pyzmq wheels")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    public, secret = d / f"{name}.key", d / f"{name}.key_secret"
    existing = [str(p) for p in (public, secret) if p.exists()]
    if existing and not force:
        raise FileExistsError(
            f"{', '.join(existing)} already exist(s); pass --force to replace the key pair "
            f"(every client holding the old public key must then get the new one)"
        )
    pub, sec = zmq.auth.create_certificates(str(d), name)
    os.chmod(sec, 0o600)
    return Path(pub), Path(sec)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m protocol.keys", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="write NAME.key and NAME.key_secret into --dir")
    g.add_argument("--dir", required=True, help="folder for the key files (created if missing)")
    g.add_argument("--name", required=True, help="key pair name, e.g. the service name")
    g.add_argument("--force", action="store_true", help="replace an existing key pair")
    s = sub.add_parser("show", help="print the z85 public key of a key file")
    s.add_argument("file")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "generate":
            pub, sec = generate(args.dir, args.name, force=args.force)
            print(f"public key (give to clients): {pub}")
            print(f"secret key (keep on this host): {sec}")
        else:
            public, _ = zmq.auth.load_certificate(args.file)
            print(public.decode())
    except (ValueError, OSError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
