"""TEST BACKEND (not for real work): the classical backend with an injected fault.

Usage (tests only; registered only when MESH_TEST_BACKENDS=1 is in the environment):
    MESH_TEST_BACKENDS=1 python -m services.sam --backend test_hang \
        --option hang_after_frames=5

`test_hang` yields the classical backend's first `hang_after_frames` propagated frames, then
blocks its worker thread forever (until the process exits): a stuck GPU worker as seen from
outside. The socket thread keeps answering ping, info and inflight, so only the worker's
progress shows the hang (tests/reliability/test_liveness.py).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from services.sam.backends.classical import ClassicalBackend


class HangingTestBackend(ClassicalBackend):
    """TEST BACKEND: propagation hangs after `hang_after_frames` frames."""

    name = "test_hang"

    def __init__(self, hang_after_frames: int = 3, **options):
        if type(hang_after_frames) is not int or hang_after_frames < 0:
            raise ValueError(f"hang_after_frames: expected an integer >= 0, got "
                             f"{hang_after_frames!r}")  # fmt: skip
        super().__init__(**options)
        self.hang_after_frames = hang_after_frames
        self._never = threading.Event()

    def propagate(self, state, windows) -> Iterator:
        for i, item in enumerate(super().propagate(state, windows)):
            if i >= self.hang_after_frames:
                self._never.wait()  # the stuck worker: no more frames, no error, no return
            yield item

    def info(self) -> dict:
        return {**super().info(), "test_backend": True, "hang_after_frames": self.hang_after_frames}
