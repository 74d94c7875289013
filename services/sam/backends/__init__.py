"""Backend registry for the sam service: name -> SamBackend factory, imported lazily so the
server never imports torch unless a torch backend is chosen.

Usage:
    from services.sam.backends import create_backend, BACKENDS
    backend = create_backend("classical", options)   # options: backend-specific dict
"""

from __future__ import annotations

import importlib
import os

from protocol.options import check_kwargs
from services.sam.backends.base import (
    CAPABILITIES,
    DIRECTIONS,
    PROMPT_KINDS,
    Prompt,
    SamBackend,
    Window,
    propagation_windows,
)

# name -> "module:Class"; each class takes **options (unknown keys -> ValueError naming them).
BACKENDS: dict[str, str] = {
    "classical": "services.sam.backends.classical:ClassicalBackend",
    "sam2": "services.sam.backends.sam2_backend:Sam2Backend",
    "efficienttam": "services.sam.backends.sam2_backend:EfficientTamBackend",
    "sam3": "services.sam.backends.sam3_backend:Sam3Backend",
}
if os.environ.get("MESH_TEST_BACKENDS") == "1":  # fault-injecting backends, for tests only
    BACKENDS["test_hang"] = "services.sam.backends.testing:HangingTestBackend"


def create_backend(name: str, options: dict | None = None) -> SamBackend:
    """Instantiate backend `name` with its options (not yet set up)."""
    if name not in BACKENDS:
        raise ValueError(f"backend: unknown {name!r}; choose one of {sorted(BACKENDS)}")
    module_name, cls_name = BACKENDS[name].split(":")
    module = importlib.import_module(module_name)
    cls = getattr(module, cls_name)
    # one rule for every option (protocol/options.py): unknown names refused, values by type
    options = check_kwargs(cls.__init__, options, where=f"backend {name} options")
    backend = cls(**options)
    unknown = set(backend.capabilities) - CAPABILITIES
    if unknown or ("text" in backend.prompt_kinds) != ("text_prompts" in backend.capabilities):
        raise TypeError(
            f"backend {name!r}: capabilities {sorted(backend.capabilities)} must be a subset of "
            f"{sorted(CAPABILITIES)}, with text_prompts exactly when 'text' is a prompt kind"
        )
    return backend


__all__ = [
    "BACKENDS",
    "CAPABILITIES",
    "Prompt",
    "Window",
    "DIRECTIONS",
    "PROMPT_KINDS",
    "SamBackend",
    "create_backend",
    "propagation_windows",
]
