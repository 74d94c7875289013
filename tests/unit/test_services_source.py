"""One place resolves the services config for every command (issue 14 item 3): the flag,
then $SERVICES_CONFIG, then configs/services.yaml; each command says which file it used."""

from __future__ import annotations

import subprocess
import sys

import yaml

from protocol.config import DEFAULT_SERVICES_CONFIG, services_config_path
from tests.helpers import ROOT


def test_flag_then_env_then_default(monkeypatch):
    monkeypatch.delenv("SERVICES_CONFIG", raising=False)
    assert services_config_path(None) == (DEFAULT_SERVICES_CONFIG, "default")
    monkeypatch.setenv("SERVICES_CONFIG", "configs/services.remote.yaml")
    assert services_config_path(None) == ("configs/services.remote.yaml", "SERVICES_CONFIG")
    assert services_config_path("mine.yaml") == ("mine.yaml", "flag")
    monkeypatch.setenv("SERVICES_CONFIG", "  ")
    assert services_config_path(None) == (DEFAULT_SERVICES_CONFIG, "default")


def _services_file(tmp_path):
    path = tmp_path / "elsewhere.yaml"
    doc = {"version": 1, "services": {n: {"endpoints": [f"tcp://127.0.0.1:{9 + i}"],
                                           "backend": "x", "timeout_s": 1, "retries": 0}
                                       for i, n in enumerate(("reader", "sam", "exporter"))}}  # fmt: skip
    path.write_text(yaml.safe_dump(doc))
    return path


def test_orchestrator_status_uses_services_config_env(tmp_path):
    path = _services_file(tmp_path)
    env = {**__import__("os").environ, "SERVICES_CONFIG": str(path)}
    r = subprocess.run([sys.executable, "-m", "orchestrator", "status"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert f"services config: {path} (from $SERVICES_CONFIG)" in r.stderr
    assert "tcp://127.0.0.1:9 " in r.stdout and "DOWN" in r.stdout  # that file's endpoints
    assert "5551" not in r.stdout  # not configs/services.yaml


def test_demo_uses_services_config_env(tmp_path, monkeypatch, capsys):
    from tools import demo

    path = _services_file(tmp_path)
    monkeypatch.setenv("SERVICES_CONFIG", str(path))
    seen = []
    monkeypatch.setattr(demo.launch, "up", lambda cfg, *a, **k: seen.append(cfg) or 1)
    data = tmp_path / "data"
    (data / "demo.zarr" / "meta" / "episode_ends").mkdir(parents=True)  # skip generation
    rc = demo.main(["--data", str(data), "--out", str(tmp_path / "out")])
    assert rc == 1 and seen == [str(path)]
    assert f"services config: {path} (from $SERVICES_CONFIG)" in capsys.readouterr().out
