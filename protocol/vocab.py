"""Words every side of the mesh shares: object roles, export outputs, propagation directions.

Usage:
    from protocol.vocab import ROLES, OUTPUTS, DIRECTIONS
    if role not in ROLES: raise ...

One owner: the orchestrator, the exporter, the sam service, the vlm prompts backend and the
studio import these tuples; none keeps its own copy.
"""

from __future__ import annotations

from typing import Literal

TARGET = "target"
ARM_ROLES = ("arm_left", "arm_right")
GRIPPER_ROLES = ("gripper_left", "gripper_right")
ROLES = (TARGET, *ARM_ROLES, *GRIPPER_ROLES)  # what an object id stands for in an export

OUTPUTS = ("rgbm", "arm_only", "npz", "preview", "ytvis", "sam3", "grounding")  # exporter writes

DIRECTIONS = ("forward", "backward", "both")  # how sam propagates from the keyframes
Direction = Literal["forward", "backward", "both"]

COORDS = ("abs", "rel")  # pixels of the original image, or fractions in [0, 1]

__all__ = ["ARM_ROLES", "COORDS", "DIRECTIONS", "GRIPPER_ROLES", "OUTPUTS", "ROLES", "TARGET",
           "Direction"]  # fmt: skip
