"""Studio annotators from the command line (for a studio served beyond this machine).

Usage:
    python -m services.studio.admin add NAME --state out/studio.studio     # prints the token once
    python -m services.studio.admin list --state out/studio.studio
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from services.studio.app import NAME_RE
from services.studio.store import AuthError, Store


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m services.studio.admin", description=__doc__.split("\n")[0]
    )
    ap.add_argument("cmd", choices=["add", "list"])
    ap.add_argument("name", nargs="?")
    ap.add_argument("--state", required=True, help="the studio's state folder (<output>.studio)")
    a = ap.parse_args(argv)
    st = Store(Path(a.state) / "studio.sqlite")
    try:
        if a.cmd == "list":
            for r in st._q("SELECT name, created FROM annotators ORDER BY name"):
                print(r["name"])
            return 0
        if not a.name or not NAME_RE.match(a.name):
            print("NAME: 1-32 letters, digits, '_', '-' or '.'", file=sys.stderr)
            return 2
        try:
            name, token = st.register(a.name)
        except AuthError as e:
            print(e, file=sys.stderr)
            return 1
        print(f"{name}: token {token}  (shown once; give it to {name}, who logs in with it)")
        return 0
    finally:
        st.close()


if __name__ == "__main__":
    sys.exit(main())
