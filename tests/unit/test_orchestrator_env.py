"""The orchestrator runs in its own environment (orchestrator/requirements.txt only) and
imports from services/ nothing but the contract modules (services/<name>/api.py).

Usage: pytest tests/unit/test_orchestrator_env.py
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import ROOT

ENV = ROOT / ".venvs" / "orchestrator-only"

# An import hook refuses what the orchestrator must never need; then every orchestrator module
# is imported and every service's client (with its contract) built from configs/services.yaml.
CHECK = r"""
import importlib, importlib.abc, pkgutil, sys
FORBIDDEN = ("zarr", "numcodecs", "cv2", "torch", "torchvision", "imagecodecs", "httpx",
             "openai", "vllm", "pycocotools", "sam2", "sam3")

def allowed_service_module(name):
    parts = name.split(".")
    return len(parts) <= 2 or (len(parts) == 3 and parts[2] == "api")

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in FORBIDDEN:
            raise ImportError(f"the orchestrator imported {name}")
        if name.startswith("services.") and not allowed_service_module(name):
            raise ImportError(f"the orchestrator imported service internals: {name}")
        return None

sys.meta_path.insert(0, Refuse())
import orchestrator
mods = sorted(m.name for m in pkgutil.iter_modules(orchestrator.__path__))
for m in mods:
    importlib.import_module(f"orchestrator.{m}")
from orchestrator.config import load_pipeline
from protocol.config import load_services
from protocol.prompts_file import load_prompts_file
for p in ("rgbm.yaml", "arm_only.yaml", "rgbm_demo.yaml", "arm_only_demo.yaml"):
    load_pipeline(f"configs/pipelines/{p}")
load_prompts_file("configs/prompts/demo.yaml")
cfg = load_services("configs/services.yaml")
for name, sc in cfg.services.items():
    c = sc.client()
    assert c.contract is not None and c.contract.service == name, name
    c.close()
bad = [m for m in sys.modules if m.split(".")[0] in FORBIDDEN
       or (m.startswith("services.") and not allowed_service_module(m))]
assert not bad, bad
print("OK", len(mods), "orchestrator modules;",
      sorted(m for m in sys.modules if m.startswith("services.")))
"""


def test_orchestrator_imports_in_its_own_environment_without_service_internals():
    build = subprocess.run(
        [sys.executable, "tools/envs.py", ENV.name, "orchestrator/requirements.txt"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if build.returncode != 0:
        pytest.skip(f"cannot build the orchestrator-only environment here: {build.stderr[-500:]}")
    out = subprocess.run([str(ENV / "bin" / "python"), "-c", CHECK], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("OK"), out.stdout
    # the check can fail: service internals are refused by the same hook
    bad = subprocess.run([str(ENV / "bin" / "python"), "-c",
                          CHECK.replace("import orchestrator\n",
                                        "import services.sam.sessions\nimport orchestrator\n")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert bad.returncode != 0 and "service internals: services.sam.sessions" in bad.stderr
