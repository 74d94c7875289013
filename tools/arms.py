"""Two planar robot arms with two-finger grippers: kinematics, trajectories, rendering.

An arm is a chain base -> shoulder link -> elbow -> forearm -> wrist -> wrist link -> gripper,
solved with two-link inverse kinematics for a gripper pose (grasp point, approach angle,
opening, height). Links are shaded capsules of one light-grey material; the gripper
(palm + two fingers) is dark charcoal. Geometry is in design coordinates (see tools.scene).

Usage:
    traj = interpolate(waypoints, n_frames)            # dict of (T, ...) arrays
    geom = solve_arm(ArmSpec("right", (600, 540)), traj_at(traj, t))
    draw_arm_shadows(img, canvas, [geom]); draw_arm(img, labels, canvas, geom, 12, 13)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from tools.scene import SHADOW_DIR, Canvas, bbox_grid, paint, shade

ARM_RGB = np.array([190, 194, 202], np.float32)  # painted aluminium links
JOINT_RGB = np.array([150, 155, 166], np.float32)  # same material, joint caps a bit darker
PALM_RGB = np.array([66, 68, 76], np.float32)  # gripper body
FINGER_RGB = np.array([46, 48, 54], np.float32)  # gripper fingers

PALM_R = 9.0  # palm half thickness (design px)
FINGER_R = 5.5  # finger half width
FINGER_START, FINGER_END = 6.0, 44.0  # finger extent along the approach axis from the palm centre
GRASP_OFFSET = 26.0  # grasp point = palm centre + GRASP_OFFSET * approach direction
PX_TO_M = 0.0015  # design px on the table plane -> metres


@dataclass(frozen=True)
class ArmSpec:
    name: str  # "left" | "right"
    base: tuple[float, float]  # shoulder position in design px (may lie below the image)
    l1: float = 205.0  # upper arm length
    l2: float = 180.0  # forearm length
    l3: float = 40.0  # wrist link length (wrist joint -> palm centre)
    r1: float = 19.0  # upper arm radius
    r2: float = 15.0  # forearm radius
    r3: float = 11.0  # wrist link radius


@dataclass
class ArmGeom:
    """One arm at one instant, design coordinates."""

    spec: ArmSpec
    links: list[tuple[np.ndarray, np.ndarray, float, np.ndarray]] = field(default_factory=list)
    gripper: list[tuple[np.ndarray, np.ndarray, float, np.ndarray]] = field(default_factory=list)
    joints: np.ndarray = field(
        default_factory=lambda: np.zeros(3, np.float32)
    )  # shoulder, elbow, wrist (rad)
    palm: np.ndarray = field(default_factory=lambda: np.zeros(2, np.float32))
    height: float = 0.1  # gripper height above the table (m)


def min_jerk(s: np.ndarray) -> np.ndarray:
    return 10 * s**3 - 15 * s**4 + 6 * s**5


def interpolate(waypoints: list[tuple[float, dict]], n: int) -> dict[str, np.ndarray]:
    """Piecewise minimum-jerk interpolation of waypoints [(t in [0,1], {key: value}), ...].

    Returns {key: (n, ...) float32}; every waypoint must carry the same keys.
    """
    ts = np.array([w[0] for w in waypoints], np.float64)
    tf = np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(1)
    seg = np.clip(np.searchsorted(ts, tf, side="right") - 1, 0, len(ts) - 2)
    s = np.clip((tf - ts[seg]) / np.maximum(ts[seg + 1] - ts[seg], 1e-9), 0, 1)
    s = min_jerk(s)
    out = {}
    for key in waypoints[0][1]:
        vals = np.array([np.atleast_1d(np.asarray(w[1][key], np.float64)) for w in waypoints])
        v = vals[seg] + (vals[seg + 1] - vals[seg]) * s[:, None]
        out[key] = (v[:, 0] if vals.shape[1] == 1 else v).astype(np.float32)
    return out


def solve_arm(spec: ArmSpec, grasp: np.ndarray, theta: float, opening: float, z: float) -> ArmGeom:
    """Arm geometry for a gripper pose: grasp point (2,), approach angle, opening (px), height (m)."""
    d = np.array([np.cos(theta), np.sin(theta)], np.float32)
    perp = np.array([-d[1], d[0]], np.float32)
    palm = np.asarray(grasp, np.float32) - d * GRASP_OFFSET
    wrist = palm - d * spec.l3
    base = np.asarray(spec.base, np.float32)
    v = wrist - base
    dist = float(np.clip(np.linalg.norm(v), abs(spec.l1 - spec.l2) + 1.0, spec.l1 + spec.l2 - 1.0))
    a = float(np.arctan2(v[1], v[0]))
    alpha = float(np.arccos((spec.l1**2 + dist**2 - spec.l2**2) / (2 * spec.l1 * dist)))
    # Elbow bends outward (away from the image centre), like a humanoid's arms.
    sign = 1.0 if spec.name == "right" else -1.0
    shoulder = a + sign * alpha
    elbow = base + spec.l1 * np.array([np.cos(shoulder), np.sin(shoulder)], np.float32)
    fore = float(np.arctan2(*(wrist - elbow)[::-1]))
    wrist = elbow + spec.l2 * np.array([np.cos(fore), np.sin(fore)], np.float32)  # if clamped
    palm = wrist + d * spec.l3
    g = ArmGeom(spec=spec, palm=palm, height=z)
    g.links = [
        (base, base, 27.0, JOINT_RGB),
        (base, elbow, spec.r1, ARM_RGB),
        (elbow, elbow, spec.r1 + 3.0, JOINT_RGB),
        (elbow, wrist, spec.r2, ARM_RGB),
        (wrist, wrist, spec.r2 + 2.0, JOINT_RGB),
        (wrist, palm, spec.r3, ARM_RGB),
    ]
    half = opening / 2 + FINGER_R
    g.gripper = [
        (palm - perp * (half + 2.0), palm + perp * (half + 2.0), PALM_R, PALM_RGB),
        (
            palm + perp * half + d * FINGER_START,
            palm + perp * half + d * FINGER_END,
            FINGER_R,
            FINGER_RGB,
        ),
        (
            palm - perp * half + d * FINGER_START,
            palm - perp * half + d * FINGER_END,
            FINGER_R,
            FINGER_RGB,
        ),
    ]
    wrap = lambda x: float((x + np.pi) % (2 * np.pi) - np.pi)  # noqa: E731
    g.joints = np.array([wrap(shoulder), wrap(fore - shoulder), wrap(theta - fore)], np.float32)
    return g


def draw_capsule(
    img, labels, canvas: Canvas, p0, p1, r: float, rgb: np.ndarray, label: int
) -> None:
    """Paint a shaded capsule (segment p0-p1, radius r; p0 == p1 gives a sphere)."""
    a, b = canvas.pt(p0), canvas.pt(p1)
    rr = max(r * canvas.s, 0.75)
    g = bbox_grid(
        min(a[0], b[0]) - rr,
        min(a[1], b[1]) - rr,
        max(a[0], b[0]) + rr,
        max(a[1], b[1]) + rr,
        *labels.shape,
    )
    if g is None:
        return
    sl, xs, ys = g
    ab = b - a
    t = np.clip(((xs - a[0]) * ab[0] + (ys - a[1]) * ab[1]) / max(float(ab @ ab), 1e-9), 0.0, 1.0)
    dx, dy = xs - (a[0] + t * ab[0]), ys - (a[1] + t * ab[1])
    d2 = (dx * dx + dy * dy) / (rr * rr)
    inside = d2 <= 1.0
    nz = np.sqrt(np.clip(1.0 - d2, 0.0, 1.0))
    paint(
        img,
        labels,
        sl,
        inside,
        shade(rgb, dx / rr, dy / rr, nz, amb=0.38, kd=0.72, ks=0.45, shin=20),
        label,
    )


def draw_arm(img, labels, canvas: Canvas, g: ArmGeom, arm_label: int, gripper_label: int) -> None:
    """Paint the arm's links (arm_label) then its gripper on top (gripper_label)."""
    for p0, p1, r, rgb in g.links:
        draw_capsule(img, labels, canvas, p0, p1, r, rgb, arm_label)
    for p0, p1, r, rgb in g.gripper:
        draw_capsule(img, labels, canvas, p0, p1, r, rgb, gripper_label)


def draw_arm_shadows(
    img: np.ndarray, canvas: Canvas, geoms: list[ArmGeom], strength: float = 0.36
) -> None:
    """Darken img in place with soft shadows of the arms, cast down-right by their height."""
    q = 4
    h, w = img.shape[:2]
    qh, qw = max(h // q, 1), max(w // q, 1)
    fx, fy = canvas.sx * qw / w, canvas.sy * qh / h  # design -> quarter-res pixels
    m = np.zeros((qh, qw), np.float32)
    for g in geoms:
        for parts, hgt in ((g.links, 0.22), (g.gripper, g.height)):
            off = SHADOW_DIR * (1.0 + hgt * 12.0)
            for p0, p1, r, _ in parts:
                a = np.round((p0 + off) * [fx, fy] * 16).astype(np.int64)
                b = np.round((p1 + off) * [fx, fy] * 16).astype(np.int64)
                th = max(int(round(2 * r * np.sqrt(fx * fy))), 1)
                cv2.line(
                    m,
                    tuple(int(x) for x in a),
                    tuple(int(x) for x in b),
                    1.0,
                    th,
                    cv2.LINE_AA,
                    shift=4,
                )
    k = max(int(5 * canvas.s) | 1, 3)
    m = cv2.GaussianBlur(np.clip(m, 0, 1), (k, k), 0)
    m = cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR)
    img *= (1.0 - strength * m)[..., None]


def pose_to_state(g: ArmGeom, grasp: np.ndarray, theta: float, opening: float) -> np.ndarray:
    """13-D state: ee xyz (m), ee quaternion xyzw, gripper opening (m), 5 joint positions. (13,) float32."""
    x = (grasp[0] - 320.0) * PX_TO_M
    y = (480.0 - grasp[1]) * PX_TO_M + 0.25
    # Gripper pitched 60 deg down, yawed by the approach angle (image y points toward the robot).
    yaw, pitch = -theta, np.deg2rad(60.0)
    qy = np.array([0, 0, np.sin(yaw / 2), np.cos(yaw / 2)])
    qp = np.array([0, np.sin(pitch / 2), 0, np.cos(pitch / 2)])
    q = _qmul(qy, qp)
    lift = np.arcsin(np.clip(g.height / 0.5, -1, 1))
    finger = opening * PX_TO_M / 0.12 * 0.8  # finger joint angle (rad)
    st = [
        x,
        y,
        g.height,
        *q,
        opening * PX_TO_M,
        g.joints[0],
        g.joints[1],
        g.joints[2],
        lift,
        finger,
    ]
    return np.array(st, np.float32)


STATE_NAMES = [
    "ee_x", "ee_y", "ee_z", "ee_qx", "ee_qy", "ee_qz", "ee_qw", "gripper_opening",
    "shoulder", "elbow", "wrist", "lift", "finger",
]  # fmt: skip


def _qmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ax, ay, az, aw = a
    bx, by, bz, bw = b
    return np.array(
        [
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
            aw * bw - ax * bx - ay * by - az * bz,
        ]
    )


WRIST_AHEAD = 20.0  # wrist camera view centre: grasp point + WRIST_AHEAD * approach (design px)


def wrist_view(
    img: np.ndarray, canvas: Canvas, grasp: np.ndarray, theta: float, z: float, size: tuple
) -> np.ndarray:
    """The right wrist camera's image: the head image seen from the gripper, looking along
    the approach direction (approach = up in the wrist image), zoomed in as the gripper
    descends. Its own fingers stay at a fixed place at the bottom and show the opening.

    img (H, W, 3) float32 head image; grasp (2,) design px; size (height, width) -> float32.
    """
    wh, ww = size
    d = np.array([np.cos(theta), np.sin(theta)], np.float64)
    c = canvas.pt(np.asarray(grasp, np.float64) + d * WRIST_AHEAD)
    span = (150.0 + 500.0 * float(z)) * canvas.sx  # head pixels across the wrist image
    k = ww / span
    phi = -np.pi / 2 - float(theta)  # rotates the approach direction to (0, -1)
    rot = k * np.array([[np.cos(phi), -np.sin(phi)], [np.sin(phi), np.cos(phi)]])
    q0 = np.array([ww / 2.0, wh / 2.0])
    m = np.concatenate([rot, (q0 - rot @ np.asarray(c, np.float64))[:, None]], axis=1)
    return cv2.warpAffine(
        img, m.astype(np.float32), (ww, wh), flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REFLECT_101,
    )  # fmt: skip
