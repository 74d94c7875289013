"""VLM service: boxes for named objects and DexGraspVLA planner tasks, over the mesh protocol.

Usage:
    python -m services.vlm --backend prompts --option prompts_file=configs/prompts/demo.yaml
"""

__version__ = "0.1.0"
