"""Two network namespaces joined by a veth pair: a 'client host' and a 'server host'.

Usage:
    pair = NetPair.create()            # raises NetnsUnavailable (-> skip) when not possible
    pair.server_prefix                 # ["ip", "netns", "exec", NAME]: run a process there
    pair.server_ip, pair.client_ip     # 10.77.0.2, 10.77.0.1 (exist only inside the pair)
    pair.destroy()                     # kills what still runs inside, deletes both namespaces

Names are unique per run (pid + random), so parallel runs never collide; addresses live only
inside these namespaces, so no traffic leaves them.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
from dataclasses import dataclass

SERVER_IP, CLIENT_IP, PREFIX_LEN = "10.77.0.2", "10.77.0.1", 24


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be made here (not root, no `ip`, no CAP_SYS_ADMIN)."""


def _ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if r.returncode != 0:
        raise NetnsUnavailable(f"`ip {' '.join(args)}` failed: {r.stderr.strip()}")


@dataclass
class NetPair:
    server: str
    client: str
    server_ip: str = SERVER_IP
    client_ip: str = CLIENT_IP

    @property
    def server_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.server]

    @property
    def client_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.client]

    @classmethod
    def create(cls) -> NetPair:
        if os.geteuid() != 0:
            raise NetnsUnavailable("network namespaces need root (ip netns add); running as "
                                   f"uid {os.geteuid()}")  # fmt: skip
        if shutil.which("ip") is None:
            raise NetnsUnavailable("the `ip` command (iproute2) is not installed")
        tag = f"{os.getpid() % 100000}{secrets.token_hex(2)}"
        pair = cls(server=f"mmr{tag}s", client=f"mmr{tag}c")
        vs, vc = f"mv{tag}s", f"mv{tag}c"  # interface names: at most 15 characters
        try:
            _ip("netns", "add", pair.server)
            _ip("netns", "add", pair.client)
            _ip("link", "add", vs, "type", "veth", "peer", "name", vc)
            _ip("link", "set", vs, "netns", pair.server)
            _ip("link", "set", vc, "netns", pair.client)
            for ns, dev, addr in ((pair.server, vs, SERVER_IP), (pair.client, vc, CLIENT_IP)):
                _ip("-n", ns, "addr", "add", f"{addr}/{PREFIX_LEN}", "dev", dev)
                _ip("-n", ns, "link", "set", dev, "up")
                _ip("-n", ns, "link", "set", "lo", "up")
        except NetnsUnavailable:
            pair.destroy()
            raise
        return pair

    def pids(self) -> list[int]:
        out = []
        for ns in (self.server, self.client):
            r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
            out += [int(p) for p in r.stdout.split()]
        return out

    def destroy(self) -> None:
        for pid in self.pids():  # only processes this test started can be in these namespaces
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for ns in (self.server, self.client):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
