"""The exporter's state across requests: open exports by id, one per output folder.

Usage:
    reg = Registry(max_held_bytes=4 << 30)
    reply = reg.open_export(output, source, camera_key, ["rgbm"], {})   # {export, done, n_episodes}
    reg.get(reply["export"]).put_masks(...)
    reg.close_all()
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from services.exporter.errors import ExportError, bad
from services.exporter.export import Export, MemoryBudget
from services.exporter.fsutil import user_path
from services.exporter.options import ExportOptions, parse_outputs

log = logging.getLogger(__name__)


class Registry:
    def __init__(self, max_held_bytes: int) -> None:
        self.budget = MemoryBudget(max_held_bytes)
        self._exports: dict[str, Export] = {}
        self._lock = threading.Lock()

    def open_export(self, output: str, source: str, camera_key: str, outputs: list[str],
                    options: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
        root = user_path(output, "output")
        with self._lock:
            same = [e for e in self._exports.values() if e.layout.root == root]
            if same:
                return self._reopen(same[0], source, camera_key, outputs, options)
            exp = Export.open(output, source, camera_key, outputs, options, self.budget)
            self._exports[exp.id] = exp
        return self._reply(exp)

    def _reopen(self, exp: Export, source: str, camera_key: str, outputs: list[str],
                options: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
        """open_export again on an output open here (a retry): same settings -> same export."""
        want = {"camera_key": camera_key, "outputs": list(parse_outputs(outputs)),
                "options": ExportOptions.from_dict(options).output_settings()}  # fmt: skip
        src = str(user_path(source, "source"))
        if want != exp.config or src != str(exp.source.path):
            raise bad(
                f"output: {exp.layout.root} is already open (export {exp.id}) with other "
                "settings or another source; close_export it first or use another output"
            )
        return self._reply(exp)

    @staticmethod
    def _reply(exp: Export) -> dict[str, Any]:
        with exp._lock:
            done = sorted(exp.done)
        return {"export": exp.id, "done": done, "n_episodes": exp.source.n_episodes}

    def get(self, export_id: str) -> Export:
        with self._lock:
            exp = self._exports.get(export_id)
        if exp is None:
            raise ExportError(
                "not_found",
                f"export: unknown id {export_id!r}; call open_export first "
                "(the exporter may have restarted - open_export resumes the output)",
            )
        return exp

    def close_export(self, export_id: str) -> None:
        with self._lock:
            exp = self._exports.pop(export_id, None)
        if exp is not None:
            exp.close()

    def close_all(self) -> None:
        with self._lock:
            exports = list(self._exports.values())
            self._exports.clear()
        for exp in exports:
            try:
                exp.close()
            except Exception:
                log.exception("closing export %s failed", exp.id)

    def info(self) -> dict[str, Any]:
        with self._lock:
            exports = {e.id: str(e.layout.root) for e in self._exports.values()}
        return {"exports": exports, "held_mb": round(self.budget.used / 2**20, 1),
                "max_held_mb": self.budget.max_bytes >> 20}  # fmt: skip
