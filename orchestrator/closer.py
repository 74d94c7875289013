"""Closing SAM sessions so that the close is not lost behind a propagate still running.

Usage:
    closer = SessionCloser(mesh.sam, deadline_s=cfg.run.propagate_timeout_s, sessions=open_sessions)
    closer.close({sid: endpoint}, wait_s=5.0)   # -> sids whose close was not answered in time

A SAM replica runs one request at a time. After a propagate timed out on our side it may still
be running there, and a close_session sent then waits in the replica's queue; with a short
deadline the replica drops it there and the session leaks until the replica's idle timeout.
So each close carries a long deadline (the propagate timeout; None = the client's timeout) and
is sent on its own thread and Client (retries=0), while the caller waits only `wait_s`: a
replica that is still busy closes the session when the propagate ends, a dead one is left to
the worker's pings, and Ctrl-C never blocks for minutes. A close that is answered removes the
session from `sessions`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from protocol.client import Client
from protocol.errors import RemoteError, ServiceUnavailable
from services.sam.api import CONTRACT as SAM

log = logging.getLogger(__name__)


class SessionCloser:
    def __init__(self, client_for: Callable[[str], Client], *, deadline_s: float | None,
                 sessions: dict[str, str]):  # fmt: skip
        self.client_for = client_for  # endpoint -> a Client for that one replica
        self.deadline_s = deadline_s
        self.sessions = sessions  # open sessions (sid -> endpoint), shared with the workers

    def close(self, sessions: dict[str, str], wait_s: float) -> list[str]:
        """Send close_session for every sid -> endpoint; wait at most wait_s in all for the
        answers. Returns the sids still unanswered (their closes stay queued on the replica)."""
        threads = []
        for sid, endpoint in sessions.items():
            t = threading.Thread(target=self._close, args=(sid, endpoint), daemon=True,
                                 name=f"orc-close-{sid}")  # fmt: skip
            t.start()
            threads.append((sid, t))
        end = time.monotonic() + wait_s
        for _, t in threads:
            t.join(max(0.0, end - time.monotonic()))
        return [sid for sid, t in threads if t.is_alive()]

    def _close(self, sid: str, endpoint: str) -> None:
        try:
            client = self.client_for(endpoint)
        except Exception as e:  # noqa: BLE001 - a cleanup thread must not crash
            log.warning("sam %s: could not close session %s: %s", endpoint, sid, e)
            return
        client.retries = 0  # one long wait; resending would only queue another copy
        timeout = self.deadline_s or client.timeout
        try:
            client.call("close_session", SAM.request("close_session", session=sid),
                        timeout=timeout)  # fmt: skip
            self.sessions.pop(sid, None)
        except (RemoteError, ServiceUnavailable) as e:
            log.warning("sam %s: could not close session %s: %s", endpoint, sid, e)
        finally:
            client.close()
