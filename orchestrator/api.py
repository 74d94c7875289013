"""The orchestrator's library entry points, for tools (the demo runner) and notebooks.

Usage:
    from orchestrator.api import run_pipeline
    report = run_pipeline("configs/pipelines/rgbm.yaml", "data/demo/demo.zarr", "out/rgbm",
                          "configs/services.yaml", episodes="0-2")

See orchestrator/run.py (the implementation) and orchestrator/README.md.
"""

from orchestrator.config import PipelineConfig, PipelineConfigError, load_pipeline
from orchestrator.run import RunError, RunInterrupted, run_pipeline
from orchestrator.status import dry_run, mesh_status

__all__ = [
    "PipelineConfig",
    "PipelineConfigError",
    "RunError",
    "RunInterrupted",
    "dry_run",
    "load_pipeline",
    "mesh_status",
    "run_pipeline",
]
