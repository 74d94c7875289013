"""Prompt texts for bbox and the DexGraspVLA planner tasks, chat messages, and image data URLs.

Usage:
    spec = TASKS["mark_bounding_box"]                 # needs_image, needs_instruction
    text = task_prompt("mark_bounding_box", "the green cup", box_hint)
    msgs = build_messages(text, encode_image(rgb))     # OpenAI chat format (also vllm LLM.chat)

The texts are ours; they follow what each DexGraspVLA planner task must achieve and end
with a fixed answer form (```json block, or a last line `ANSWER: ...`) that parsing.py reads.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import cv2
import numpy as np

from .errors import RequestError


@dataclass(frozen=True)
class TaskSpec:
    name: str
    needs_image: bool
    needs_instruction: bool  # False: the instruction is optional (used when given)
    result: str  # what `result` holds in the reply, for info and docs


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        TaskSpec("classify_user_prompt", False, True, '"I" (names objects) or "II" (abstract)'),
        TaskSpec("decompose_user_prompt", True, True, "list[str] objects in grasping order"),
        TaskSpec("generate_instruction", True, False, "{target: str, analysis: ...}"),
        TaskSpec("mark_bounding_box", True, True, "{bbox_2d (original px), label, description}"),
        TaskSpec("check_grasp_success", True, False, "bool: grasped"),
        TaskSpec("check_instruction_complete", True, True, "bool: the object is gone"),
        TaskSpec("check_user_prompt_complete", True, False, "bool: nothing left to grasp"),
        TaskSpec(
            "identify_held_object",
            True,
            False,
            "{held: bool, label, description} (null label/description when nothing is held)",
        ),
    )
}

_ANSWER_BOOL = (
    'Explain briefly, then end with a last line that is exactly "ANSWER: True" or "ANSWER: False".'
)


def bbox_prompt(description: str, box_hint: str) -> str:
    """Ask for the one object best matching `description`, as a bbox_2d JSON object."""
    return f"""Find the one object in the image that best matches this description: "{description}".

Reply with a single JSON object in a ```json code block, like this:
```json
{{"bbox_2d": [x1, y1, x2, y2], "label": "green cup", "description": "a green ceramic cup on the right side of the table, next to the laptop"}}
```
{box_hint} (x1, y1) is the top-left corner and (x2, y2) the bottom-right corner; keep the box tight around the whole object.
- "label": the object's name in 2 to 4 words.
- "description": its colour, shape, position and what is around it.
Return exactly one object, never a list, even if several objects look alike: pick the best match."""


def _classify(instruction: str | None) -> str:
    return f"""A user gave a robot this grasping request: "{instruction}"

Classify the request:
- Type I: it says which objects to take, by kind, colour, position or another property.
  Examples: "grab the green cup", "objects on the right", "all cups", "the red cup on the left".
- Type II: it describes no object at all and asks for everything to go.
  Examples: "clear the table", "clean up", "remove everything".

Explain in one sentence, then end with a last line that is exactly "ANSWER: Type I" or "ANSWER: Type II"."""


def _decompose(instruction: str | None) -> str:
    return f"""The user asked the robot: "{instruction}"
The robot arm is at the right edge of the image, outside the frame.

1. Find every object in the image that the request refers to. If a description fits several objects (for example "green objects"), include each of them. Leave out objects that are not visible.
2. Order them so the arm can take them one at a time without knocking over the rest: usually the rightmost first.
3. Name each with its colour, kind and position, for example "the green cup on the right".

Reply with only a JSON list of strings in grasping order, in a ```json code block:
```json
["the green cup on the right", "the green block in the middle"]
```
Reply with [] if none of the requested objects is visible."""


def _generate(instruction: str | None) -> str:
    request = f'The user\'s request was: "{instruction}".\n' if instruction else ""
    return f"""The robot must clear the table one object at a time. {request}Its arm is at the right edge of the image, outside the frame.
Choose the single object to grasp next:
1. Prefer objects on the right, then in the middle, then on the left, so later grasps do not knock over what remains.
2. Check that the path to it is free and that taking it will not disturb other objects.

Reply with a JSON object in a ```json code block:
```json
{{
  "analysis": {{
    "priority": "why this object comes first",
    "accessibility": "what lies around it and whether the path is free",
    "risk": "what could go wrong while grasping it"
  }},
  "target": "the blue cube on the far right, next to the red cylinder"
}}
```
"target" holds only the object's colour, shape and position as one short phrase, with no reasoning."""


def _grasp(instruction: str | None) -> str:
    obj = f' The object to grasp is "{instruction}".' if instruction else ""
    return f"""Look at the robot hand in the image.{obj}
Has the hand grasped the object, holding it between its fingers (not merely touching it, and not with the object still resting beside the hand)?
{_ANSWER_BOOL} True means grasped, False means not grasped."""


def _instruction_done(instruction: str | None) -> str:
    return f"""The robot was asked to take away: "{instruction}".
Look at the table: is that object still on it?
{_ANSWER_BOOL} True means the object is no longer on the table (done), False means it is still there."""


def _prompt_done(instruction: str | None) -> str:
    scope = (
        f' The user\'s request was: "{instruction}"; count only the objects it refers to.'
        if instruction
        else ""
    )
    return f"""Look at the table in the image.{scope}
Count only solid objects with visible height (cups, bottles, boxes, toys). Ignore flat things (paper, cloths, mats), light spots, shadows and patterns on the surface.
Name any such objects that are left. {_ANSWER_BOOL} True means none is left, False means some remain."""


def _held(instruction: str | None) -> str:
    hint = f' The robot was asked to: "{instruction}".' if instruction else ""
    return f"""Look at the robot gripper (hand) in the image.{hint}
Is it holding an object right now: enclosed by its fingers or lifted by them, not merely touching it or standing next to it?
If it holds an object, name that object so that it can be found in this image by the description alone. Reply with a JSON object in a ```json code block:
```json
{{"held": true, "label": "red mug", "description": "the red mug with a handle, held between the fingers of the gripper on the right"}}
```
- "label": the object's name in 2 to 4 words.
- "description": its colour, shape and position in the image; do not describe the gripper itself.
If the gripper holds nothing, reply with:
```json
{{"held": false, "label": null, "description": null}}
```"""


_BUILDERS = {
    "classify_user_prompt": _classify,
    "decompose_user_prompt": _decompose,
    "generate_instruction": _generate,
    "check_grasp_success": _grasp,
    "check_instruction_complete": _instruction_done,
    "check_user_prompt_complete": _prompt_done,
    "identify_held_object": _held,
}


def check_task(task: str, has_image: bool, instruction: str | None) -> TaskSpec:
    """The task's spec; RequestError when the task is unknown or a required field is missing."""
    spec = TASKS.get(task)
    if spec is None:
        raise RequestError(f"task: {task!r} is not a planner task; use one of {list(TASKS)}")
    if spec.needs_image and not has_image:
        raise RequestError(f"image: task {task} needs the head-camera image (H, W, 3) uint8")
    if spec.needs_instruction and not (instruction and instruction.strip()):
        raise RequestError(f"instruction: task {task} needs a non-empty instruction")
    return spec


def task_prompt(task: str, instruction: str | None, box_hint: str = "") -> str:
    """The prompt text for a planner task (mark_bounding_box uses the bbox prompt)."""
    if task == "mark_bounding_box":
        return bbox_prompt(instruction or "", box_hint)
    return _BUILDERS[task](instruction)


def check_image(image: np.ndarray) -> None:
    """RequestError unless `image` is an RGB (H, W, 3) uint8 array with H, W > 0."""
    if not isinstance(image, np.ndarray):
        raise RequestError(f"image: expected an array (H, W, 3) uint8, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or 0 in image.shape:
        raise RequestError(
            f"image: expected RGB (H, W, 3) uint8, got {image.dtype}{list(image.shape)}; "
            f"send the RGB channels only (e.g. rgbm[..., :3])"
        )


def encode_image(image: np.ndarray, fmt: str = "jpeg", quality: int = 90) -> str:
    """RGB (H, W, 3) uint8 -> `data:image/jpeg;base64,...` (or png)."""
    bgr = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)  # OpenCV encodes BGR
    if fmt == "jpeg":
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    elif fmt == "png":
        ok, buf = cv2.imencode(".png", bgr)
    else:
        raise RequestError(f"image_format: {fmt!r} is not one of ['jpeg', 'png']")
    if not ok:
        raise RequestError(f"image: OpenCV could not encode a {list(image.shape)} image as {fmt}")
    return f"data:image/{fmt};base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def build_messages(prompt: str, image_url: str | None = None, system: str | None = None) -> list:
    """OpenAI chat messages: optional system text, then one user turn (image first, then text)."""
    content: list[dict] = []
    if image_url is not None:
        content.append({"type": "image_url", "image_url": {"url": image_url}})
    content.append({"type": "text", "text": prompt})
    messages: list[dict] = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": content})
    return messages
