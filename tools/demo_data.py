"""Deterministic demo replay buffer (DexGraspVLA / diffusion_policy layout) with ground-truth masks.

A head camera looks at a wooden table with a red mug (the target) and three distractors
(blue bowl, green block, yellow ball). Two arms enter from the bottom corners: the right arm
reaches for the mug and closes its gripper around it; the left arm reaches over the bowl,
closes and reopens its gripper and pulls back. Arms and grippers occlude the objects.

Output (zarr format 2 directory stores, same seed -> same bytes):
    <out>/demo.zarr
        meta/episode_ends       (E,) int64, no compressor
        data/head_cam_img       (T, H, W, 3) uint8 RGB, Blosc lz4, chunks (2, H, W, 3)
        data/right_cam_img      (T, H/2, W/2, 3) uint8 RGB wrist camera of the right arm
                                (sizes: --wrist-height/--wrist-width), Blosc lz4
        data/right_state        (T, 13) float32 (names: attrs["state_names"]); dim 7
                                (GRIPPER_DIM) is the right gripper's opening in metres: open
                                (0.114) until it closes on the mug (0.0915) and holds it
        data/action             (T, 13) float32 = the next frame's right_state (last repeats)
        .zattrs                 {"episodes": [{"instruction", "target", "n_frames",
                                 "grasp_frame"}], "gripper": {key, dim, closing}, ...}
    These are the keys DexGraspVLA's MaskImageDataset reads (right_cam_img, right_state,
    action, plus the rgbm the mesh writes), so the demo's rgbm output trains there as is.
    <out>/demo_gt.zarr
        meta/episode_ends       (E,) int64
        data/gt_arm_left, gt_arm_right, gt_gripper_left, gt_gripper_right, gt_target
                                (T, H, W) bool: visible pixels; arm = links without its gripper
    <out>/prompts.yaml          prompts file (docs/prompts-file.md; coords abs, tied to demo.zarr)
    <out>/prompts_grasp.yaml    answers of the VLM `prompts` backend for rgbm with
                                `prompt.frame: grasp`: per episode the held object
                                (plan.identify_held_object) and the target's box on the
                                frame the grasp finder (orchestrator/prompt_frame.py) picks

Right arm: the gripper is open from the first frame, closes on the mug at about 70% of the
episode (attrs episodes[i].grasp_frame: the first frame it is fully closed) and holds it to
the end. The left arm closes over the bowl, reopens and pulls back (a distractor).

Usage:
    python -m tools.demo_data --out data/demo --seed 0 [--episodes 3 --frames 100 --height 480
        --width 640 --prompts-copy configs/prompts/demo.yaml]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numcodecs
import numpy as np
import zarr

from orchestrator.prompt_frame import find_grasp
from tools.arms import (
    STATE_NAMES,
    ArmSpec,
    draw_arm,
    draw_arm_shadows,
    interpolate,
    pose_to_state,
    solve_arm,
    wrist_view,
)
from tools.demo_prompts import (
    LABEL_ARM,
    LABEL_GRIPPER,
    TARGET_DESCRIPTION,
    buffer_entry,
    episode_prompts,
    mask_box,
    write_prompts,
)
from tools.scene import LABEL_TARGET, Canvas, ObjectSpec, place_objects, render_static

log = logging.getLogger("tools.demo_data")

GT_KEYS = {
    "gt_arm_left": LABEL_ARM["left"],
    "gt_arm_right": LABEL_ARM["right"],
    "gt_gripper_left": LABEL_GRIPPER["left"],
    "gt_gripper_right": LABEL_GRIPPER["right"],
    "gt_target": LABEL_TARGET,
}
LEFT = ArmSpec("left", (40.0, 548.0))
RIGHT = ArmSpec("right", (600.0, 548.0))
INSTRUCTION = "grasp the red mug"
OPEN = 76.0  # right gripper opening before the grasp (design px; x PX_TO_M = 0.114 m)
GRIPPER_DIM = STATE_NAMES.index("gripper_opening")  # 7: right_state[:, 7], metres
GRIPPER = {"key": "right_state", "dim": GRIPPER_DIM, "closing": "smaller"}


@dataclass(frozen=True)
class DemoConfig:
    seed: int = 0  # everything derives from it (per-episode streams: [seed, episode])
    episodes: int = 3  # number of episodes E
    frames: int = 100  # frames per episode
    height: int = 480  # image height H
    width: int = 640  # image width W
    noise_sigma: float = 2.0  # sensor noise std (grey levels)
    wrist_height: int | None = None  # wrist camera image height; None = height // 2
    wrist_width: int | None = None  # wrist camera image width; None = width // 2

    @property
    def wrist_size(self) -> tuple[int, int]:
        return (self.wrist_height or max(self.height // 2, 16),
                self.wrist_width or max(self.width // 2, 16))  # fmt: skip

    def validate(self) -> None:
        for name in ("episodes", "frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.height < 32 or self.width < 32:
            raise ValueError(f"height/width must be >= 32 (got {self.height}x{self.width})")
        wh, ww = self.wrist_size
        if wh < 16 or ww < 16:
            raise ValueError(f"wrist_height/wrist_width must be >= 16 (got {wh}x{ww})")


@dataclass
class Episode:
    rgb: np.ndarray  # (T, H, W, 3) uint8
    wrist: np.ndarray  # (T, Hw, Ww, 3) uint8 right wrist camera
    labels: np.ndarray  # (T, H, W) uint8 label map (see GT_KEYS)
    state: np.ndarray  # (T, 13) float32
    prompts: dict
    objects: list[ObjectSpec]
    grasp_frame: int  # first frame the right gripper is fully closed on the mug


def _unit(v: np.ndarray) -> np.ndarray:
    return v / (np.linalg.norm(v) + 1e-9)


def plan_arms(rng: np.random.Generator, objects: list[ObjectSpec]) -> tuple[list, list]:
    """Waypoints [(t, {p, theta, open, z})] for the left and the right arm (design px, rad, px, m)."""
    mug, bowl, ball = objects[0], objects[1], objects[3]
    j = lambda a: float(rng.uniform(-a, a))  # noqa: E731
    # Right arm: home (below-left of the mug, pointing at it) -> pre-grasp -> grasp -> close -> hold.
    # Left arm: home -> over the bowl (open) -> close -> open -> pull back past the ball.
    grasp = np.array([mug.center[0], mug.center[1] + 0.45 * mug.height])
    over = np.array([bowl.center[0], bowl.center[1] + 0.5 * bowl.height])
    home = grasp + np.array([-40.0 + j(15), 135.0 + j(15)])
    homel = over + np.array([40.0 + j(15), 140.0 + j(15)])
    gap = 180.0 - (home[0] - homel[0])  # keep the two grippers apart at rest
    if gap > 0:
        home, homel = home + [gap / 2, 0.0], homel - [gap / 2, 0.0]
    d = _unit(grasp - home)
    perp = np.array([-d[1], d[0]])
    th = float(np.arctan2(d[1], d[0]))
    closed = 2 * mug.size + 1.0
    r0 = 0.10 + j(0.03)
    # The right gripper is open from the start and closes only on the mug, so its opening
    # (state dim GRIPPER_DIM) falls once per episode: open -> closed on the target, held.
    right = [
        (0.0, {"p": home, "theta": th - 0.3, "open": OPEN, "z": 0.16}),
        (r0, {"p": home, "theta": th - 0.3, "open": OPEN, "z": 0.16}),
        (r0 + 0.32, {"p": grasp - d * 58, "theta": th, "open": OPEN, "z": 0.10}),
        (r0 + 0.47, {"p": grasp, "theta": th, "open": OPEN, "z": 0.06}),
        (r0 + 0.60, {"p": grasp, "theta": th, "open": closed, "z": 0.06}),
        (1.0, {"p": grasp + perp * 2.0, "theta": th, "open": closed, "z": 0.07}),
    ]
    dl = _unit(over - homel)
    thl = float(np.arctan2(dl[1], dl[0]))
    l0 = 0.05 + j(0.03)
    back = 0.5 * (homel + np.array(ball.center)) + np.array([j(15), 25.0])
    thb = float(np.arctan2(*(np.array(ball.center) - back)[::-1]))
    left = [
        (0.0, {"p": homel, "theta": thl - 0.3, "open": 12.0, "z": 0.16}),
        (l0, {"p": homel, "theta": thl - 0.3, "open": 12.0, "z": 0.16}),
        (l0 + 0.30, {"p": over - dl * 18, "theta": thl, "open": 72.0, "z": 0.09}),
        (l0 + 0.44, {"p": over - dl * 18, "theta": thl, "open": 20.0, "z": 0.08}),
        (l0 + 0.56, {"p": over - dl * 24, "theta": thl, "open": 58.0, "z": 0.10}),
        (1.0, {"p": back, "theta": thb, "open": 16.0, "z": 0.15}),
    ]
    return left, right


def render_episode(cfg: DemoConfig, episode: int) -> Episode:
    """Render one episode: images, label maps, right-arm state and prompts."""
    canvas = Canvas(cfg.height, cfg.width)
    rng = np.random.default_rng([cfg.seed, episode])
    noise_rng = np.random.default_rng([cfg.seed, episode, 1])
    wrist_rng = np.random.default_rng([cfg.seed, episode, 2])
    objects = place_objects(rng)
    bg, static_labels = render_static(rng, canvas, objects)  # (H, W, 3) float32, (H, W) uint8
    left_wp, right_wp = plan_arms(rng, objects)
    n, h, w = cfg.frames, cfg.height, cfg.width
    lt, rt = interpolate(left_wp, n), interpolate(right_wp, n)
    rgb = np.empty((n, h, w, 3), np.uint8)
    wsize = cfg.wrist_size
    wrist_rgb = np.empty((n, *wsize, 3), np.uint8)
    labels = np.empty((n, h, w), np.uint8)
    state = np.empty((n, 13), np.float32)
    ksize = 3 if canvas.s > 0.5 else 1
    geoms0 = None
    for t in range(n):
        gl = solve_arm(
            LEFT, lt["p"][t], float(lt["theta"][t]), float(lt["open"][t]), float(lt["z"][t])
        )
        gr = solve_arm(
            RIGHT, rt["p"][t], float(rt["theta"][t]), float(rt["open"][t]), float(rt["z"][t])
        )
        if t == 0:
            geoms0 = (gl, gr)
        img = bg.copy()
        lab = static_labels.copy()
        draw_arm_shadows(img, canvas, [gl, gr])
        draw_arm(img, lab, canvas, gl, LABEL_ARM["left"], LABEL_GRIPPER["left"])
        draw_arm(img, lab, canvas, gr, LABEL_ARM["right"], LABEL_GRIPPER["right"])
        wimg = wrist_view(img, canvas, rt["p"][t], float(rt["theta"][t]), float(rt["z"][t]), wsize)
        wimg += wrist_rng.standard_normal(wimg.shape, dtype=np.float32) * np.float32(
            cfg.noise_sigma
        )
        wrist_rgb[t] = (np.clip(wimg, 0, 255) + 0.5).astype(np.uint8)
        if ksize > 1:
            img = cv2.GaussianBlur(img, (ksize, ksize), 0.6)  # camera optics
        img *= np.float32(1.0 + 0.008 * noise_rng.standard_normal())  # exposure flicker
        img += noise_rng.standard_normal(img.shape, dtype=np.float32) * np.float32(cfg.noise_sigma)
        np.clip(img, 0, 255, out=img)
        rgb[t] = (img + 0.5).astype(np.uint8)
        labels[t] = lab
        state[t] = pose_to_state(gr, rt["p"][t], float(rt["theta"][t]), float(rt["open"][t]))
    cands, palms = {}, {}
    for side, g in zip(("left", "right"), geoms0, strict=True):
        base, elbow, wrist = g.links[1][0], g.links[1][1], g.links[3][1]
        fr = np.array([0.35, 0.65])[:, None]
        pts = np.concatenate(
            [elbow + (wrist - elbow) * fr, base + (elbow - base) * np.array([[0.75]])]
        )
        cands[side] = pts * [canvas.sx, canvas.sy]
        palms[side] = np.asarray(g.palm) * [canvas.sx, canvas.sy]
    prompts = episode_prompts(labels, cands, palms, rng, scale=canvas.s)
    closed = float(right_wp[-1][1]["open"])
    grasp_frame = int(np.argmax(rt["open"] <= closed + 1e-3))  # fully closed from here on
    return Episode(rgb=rgb, wrist=wrist_rgb, labels=labels, state=state, prompts=prompts,
                   objects=objects, grasp_frame=grasp_frame)  # fmt: skip


def held_prompts(epi: Episode, scale: float = 1.0) -> dict:
    """The prompts-file entry the VLM `prompts` backend answers a grasp-frame rgbm run from:
    the held object, and the target's box on the frame the grasp finder picks from the
    state (the same finder the orchestrator runs), padded like the frame-0 box."""
    res = find_grasp(epi.state[:, GRIPPER_DIM], GRIPPER["closing"])
    frame = res.frame if res.frame is not None else len(epi.state) - 1  # as the orchestrator
    box = mask_box(epi.labels[frame] == LABEL_TARGET, pad=6.0 * scale)
    if box is None:
        raise ValueError(f"the target is hidden on the grasp frame {frame}")
    held = {"held": True, "label": "red mug", "description": TARGET_DESCRIPTION}
    return {
        "target": {"frame": int(frame), "box": box, "description": TARGET_DESCRIPTION},
        "plan": {"identify_held_object": held},
    }


def _blosc(cname: str, shuffle: int) -> numcodecs.Blosc:
    return numcodecs.Blosc(cname=cname, clevel=5, shuffle=shuffle)


def write_demo(cfg: DemoConfig, out: str | Path) -> dict[str, Path]:
    """Generate and write demo.zarr, demo_gt.zarr and prompts.yaml under `out`. Returns their paths."""
    cfg.validate()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"data": out / "demo.zarr", "gt": out / "demo_gt.zarr", "prompts": out / "prompts.yaml",
             "prompts_grasp": out / "prompts_grasp.yaml"}  # fmt: skip
    for p in (paths["data"], paths["gt"]):
        if p.exists():
            shutil.rmtree(p)
    e, n, h, w = cfg.episodes, cfg.frames, cfg.height, cfg.width
    total = e * n
    ends = np.arange(1, e + 1, dtype=np.int64) * n  # (E,) int64
    root = zarr.open_group(str(paths["data"]), mode="w", zarr_format=2)
    gt = zarr.open_group(str(paths["gt"]), mode="w", zarr_format=2)
    for g in (root, gt):
        g.create_array(
            "meta/episode_ends", shape=(e,), dtype="int64", chunks=(e,), compressors=None
        )
        g["meta/episode_ends"][:] = ends
    img = root.create_array(
        "data/head_cam_img", shape=(total, h, w, 3), chunks=(2, h, w, 3), dtype="uint8",
        compressors=_blosc("lz4", numcodecs.Blosc.NOSHUFFLE),
    )  # fmt: skip
    wh, ww = cfg.wrist_size
    wrist = root.create_array(
        "data/right_cam_img", shape=(total, wh, ww, 3), chunks=(2, wh, ww, 3), dtype="uint8",
        compressors=_blosc("lz4", numcodecs.Blosc.NOSHUFFLE),
    )  # fmt: skip
    lowdim = {}
    for key in ("right_state", "action"):
        lowdim[key] = root.create_array(
            f"data/{key}", shape=(total, 13), chunks=(min(total, 1024), 13), dtype="float32",
            compressors=_blosc("lz4", numcodecs.Blosc.SHUFFLE),
        )  # fmt: skip
        lowdim[key].attrs["names"] = STATE_NAMES
    gt_chunk = max(1, min(n, (2 << 20) // (h * w)))  # ~2 MB of bool per chunk
    gts = {
        key: gt.create_array(
            f"data/{key}",
            shape=(total, h, w),
            chunks=(gt_chunk, h, w),
            dtype="bool",
            compressors=_blosc("zstd", numcodecs.Blosc.BITSHUFFLE),
        )  # fmt: skip
        for key in GT_KEYS
    }
    prompts, grasp_prompts, episodes_meta = {}, {}, []
    for ep in range(e):
        t0 = time.perf_counter()
        epi = render_episode(cfg, ep)
        s = slice(ep * n, (ep + 1) * n)
        img[s] = epi.rgb
        wrist[s] = epi.wrist
        lowdim["right_state"][s] = epi.state
        lowdim["action"][s] = np.concatenate([epi.state[1:], epi.state[-1:]])  # next state
        for key, lab in GT_KEYS.items():
            gts[key][s] = epi.labels == lab
        prompts[ep] = epi.prompts
        grasp_prompts[ep] = held_prompts(epi, scale=Canvas(h, w).s)
        episodes_meta.append({"instruction": INSTRUCTION, "target": "red mug", "n_frames": n,
                              "grasp_frame": epi.grasp_frame})  # fmt: skip
        log.info("episode %d: %d frames in %.2fs", ep, n, time.perf_counter() - t0)
    common = {
        "generator": "tools.demo_data",
        "seed": cfg.seed,
        "episodes": episodes_meta,
        "camera_key": "head_cam_img",
        "color_order": "RGB",
    }
    root.attrs.update({**common, "state_names": STATE_NAMES, "action": "next right_state",
                       "gripper": GRIPPER, "wrist_camera_key": "right_cam_img"})  # fmt: skip
    gt.attrs.update(
        {
            **common,
            "source": "demo.zarr",
            "masks": "visible pixels; gt_arm_* = arm links without the gripper",
            "roles": {"target": "gt_target", "arm_left": "gt_arm_left", "arm_right": "gt_arm_right",
                      "gripper_left": "gt_gripper_left", "gripper_right": "gt_gripper_right"},
        }
    )  # fmt: skip
    src = f"seed={cfg.seed} episodes={e} frames={n} size={w}x{h}"
    tie = buffer_entry(ends, "head_cam_img", h, w)  # no path: the bytes do not depend on `out`
    write_prompts(paths["prompts"], prompts, source=src, buffer=tie)
    write_prompts(paths["prompts_grasp"], grasp_prompts, source=src + " (prompt.frame: grasp)",
                  buffer=tie)  # fmt: skip
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="data/demo", help="output folder (default data/demo)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--episodes", type=int, default=3)
    ap.add_argument("--frames", type=int, default=100, help="frames per episode")
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--wrist-height", type=int, default=None, help="default: height // 2")
    ap.add_argument("--wrist-width", type=int, default=None, help="default: width // 2")
    ap.add_argument("--prompts-copy", default=None, help="also copy prompts.yaml to this path")
    ap.add_argument(
        "--preview", action="store_true", help="write preview PNGs (frames 0, T/2, T-1)"
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = DemoConfig(
        seed=args.seed,
        episodes=args.episodes,
        frames=args.frames,
        height=args.height,
        width=args.width,
        wrist_height=args.wrist_height,
        wrist_width=args.wrist_width,
    )
    t0 = time.perf_counter()
    paths = write_demo(cfg, args.out)
    if args.prompts_copy:
        Path(args.prompts_copy).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(paths["prompts"], args.prompts_copy)
    if args.preview:
        write_previews(paths["data"], paths["gt"], Path(args.out) / "preview")
    print(
        f"wrote {paths['data']}, {paths['gt']}, {paths['prompts']} in {time.perf_counter() - t0:.1f}s"
    )
    return 0


def write_previews(data: Path, gt: Path, out: Path) -> None:
    """PNG previews of frames 0, T/2, T-1 of episode 0: the RGB image and a GT overlay, and
    the wrist camera on the same frames side by side."""
    out.mkdir(parents=True, exist_ok=True)
    root, g = zarr.open_group(str(data), mode="r"), zarr.open_group(str(gt), mode="r")
    n = int(root["meta/episode_ends"][0])
    colors = {"gt_arm_left": (0, 200, 255), "gt_arm_right": (255, 160, 0), "gt_gripper_left": (255, 0, 255),
              "gt_gripper_right": (0, 255, 0), "gt_target": (255, 255, 255)}  # fmt: skip
    for f in sorted({0, n // 2, n - 1}):
        rgb = np.asarray(root["data/head_cam_img"][f])  # (H, W, 3) uint8
        over = rgb.astype(np.float32)
        for key, c in colors.items():
            m = np.asarray(g[f"data/{key}"][f])
            over[m] = 0.45 * over[m] + 0.55 * np.array(c, np.float32)
        both = np.concatenate([rgb, over.astype(np.uint8)], axis=1)
        cv2.imwrite(str(out / f"ep0_{f:05d}.png"), cv2.cvtColor(both, cv2.COLOR_RGB2BGR))
    wrist = [np.asarray(root["data/right_cam_img"][f]) for f in sorted({0, n // 2, n - 1})]
    cv2.imwrite(
        str(out / "ep0_wrist.png"), cv2.cvtColor(np.concatenate(wrist, 1), cv2.COLOR_RGB2BGR)
    )


if __name__ == "__main__":
    raise SystemExit(main())
