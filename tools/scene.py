"""Static scene rendering for the demo data: a wooden table under a soft light, and objects.

Everything is drawn with vectorised numpy over small bounding boxes (plus a few OpenCV
calls), in float32 RGB in [0, 255]. Geometry is given in *design* coordinates (a 640x480
image); `Canvas` maps it to the actual output size so tests can render tiny frames.

Usage:
    canvas = Canvas(height=480, width=640)
    specs = place_objects(np.random.default_rng(0))
    background, labels = render_static(np.random.default_rng(1), canvas, specs)
    # background (H, W, 3) float32 RGB, labels (H, W) uint8 (LABEL_TARGET, LABEL_DISTRACTOR + i)
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

DESIGN_W, DESIGN_H = 640, 480

LABEL_BG = 0
LABEL_TARGET = 1
LABEL_DISTRACTOR = 2  # distractor i gets LABEL_DISTRACTOR + i

# Light from the top-left, above the table (x right, y down, z toward the camera).
LIGHT = np.array([-0.45, -0.55, 0.70], np.float32) / np.linalg.norm([-0.45, -0.55, 0.70])
HALF = (LIGHT + np.array([0, 0, 1], np.float32)) / np.linalg.norm(LIGHT + [0, 0, 1])
SHADOW_DIR = np.array([9.0, 7.0], np.float32)  # design px of shadow offset per unit height


@dataclass(frozen=True)
class Canvas:
    """Output size and the design -> pixel mapping."""

    height: int = DESIGN_H
    width: int = DESIGN_W

    @property
    def sx(self) -> float:
        return self.width / DESIGN_W

    @property
    def sy(self) -> float:
        return self.height / DESIGN_H

    @property
    def s(self) -> float:  # isotropic scale for radii and thicknesses
        return float(np.sqrt(self.sx * self.sy))

    def pt(self, p: np.ndarray | tuple[float, float]) -> np.ndarray:
        return np.asarray(p, np.float32) * np.array([self.sx, self.sy], np.float32)


@dataclass(frozen=True)
class ObjectSpec:
    """One object on the table, in design coordinates."""

    kind: str  # "mug" | "bowl" | "box" | "ball"
    center: tuple[float, float]  # mug/bowl: rim centre; box: base centre; ball: centre
    size: float  # radius (mug, bowl, ball) or half side (box)
    height: float  # visible body height in design px
    color: tuple[float, float, float]  # RGB 0..255
    angle: float = 0.0  # box rotation (rad)
    label: int = LABEL_DISTRACTOR
    name: str = ""


def smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Value noise in [-1, 1]: a (cells x cells) random grid upsampled bicubically. (h, w) float32."""
    grid = rng.uniform(-1.0, 1.0, (cells, cells)).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


def shade(base: np.ndarray, nx, ny, nz, amb=0.42, kd=0.68, ks=0.35, shin=24.0) -> np.ndarray:
    """Blinn-Phong shading of colour `base` (3,) for normals (...). Returns (..., 3) float32."""
    diff = np.clip(nx * LIGHT[0] + ny * LIGHT[1] + nz * LIGHT[2], 0.0, 1.0)
    spec = np.clip(nx * HALF[0] + ny * HALF[1] + nz * HALF[2], 0.0, 1.0) ** shin
    lum = amb + kd * diff
    return (base * lum[..., None] + (ks * 255.0) * spec[..., None]).astype(np.float32)


def bbox_grid(cx0: float, cy0: float, cx1: float, cy1: float, h: int, w: int):
    """Integer bbox clipped to the image and its pixel-centre grid; None when empty."""
    x0, y0 = max(int(np.floor(cx0)), 0), max(int(np.floor(cy0)), 0)
    x1, y1 = min(int(np.ceil(cx1)) + 1, w), min(int(np.ceil(cy1)) + 1, h)
    if x0 >= x1 or y0 >= y1:
        return None
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    return (slice(y0, y1), slice(x0, x1)), xs, ys


def paint(img: np.ndarray, labels: np.ndarray, sl, inside: np.ndarray, rgb: np.ndarray, label: int):
    """Write `rgb` (h, w, 3) where `inside` (h, w) bool into img/labels at bbox `sl`."""
    sub = img[sl]
    sub[inside] = rgb[inside]
    labels[sl][inside] = label


def table_background(rng: np.random.Generator, canvas: Canvas) -> np.ndarray:
    """Wood table in perspective with planks, grain, a light pool and a wall behind. (H, W, 3) float32."""
    h, w = canvas.height, canvas.width
    yd = (np.arange(h, dtype=np.float32) + 0.5)[:, None] / canvas.sy  # design y
    xd = (np.arange(w, dtype=np.float32) + 0.5)[None, :] / canvas.sx  # design x
    horizon = 42.0 + rng.uniform(-6, 6)
    y_v = -620.0  # vanishing line far above the image: mild perspective
    depth = DESIGN_H - y_v
    scale = depth / np.maximum(yd - y_v, 1.0)  # (h, 1) table units per design px
    u = (xd - DESIGN_W / 2) * scale  # lateral table coordinate (h, w)
    v = depth * np.log(depth / np.maximum(yd - y_v, 1.0)) + 0 * xd  # forward coordinate (h, w)
    # Smooth noise sampled in table coordinates (wraps), so grain follows the perspective.
    n = 512
    tex = [smooth_noise(rng, n, n, c) for c in (10, 40, 6)]
    mx = ((u + 2000.0) * 0.9) % n
    my = (v * 0.35) % n
    n1 = cv2.remap(
        tex[0],
        mx.astype(np.float32),
        my.astype(np.float32),
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_WRAP,
    )
    n3 = cv2.remap(
        tex[2],
        (mx * 0.5).astype(np.float32),
        (my * 0.5).astype(np.float32),
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_WRAP,
    )
    n2 = cv2.remap(
        tex[1],
        (mx * 2.0 % n).astype(np.float32),
        (my * 1.5 % n).astype(np.float32),
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_WRAP,
    )
    plank_w = 118.0
    pu = (u + 9000.0) / plank_w
    plank = np.floor(pu).astype(np.int32)
    tint = rng.uniform(0.88, 1.08, 64).astype(np.float32)[plank % 64]
    phase = rng.uniform(0, 40, 64).astype(np.float32)[plank % 64]
    wobble = u + 16.0 * n1 + 0.8 * n2 + phase + 0.015 * v
    grain = (0.5 + 0.5 * np.sin(2 * np.pi * wobble / 10.0)) ** 3
    light_wood = np.array([196, 146, 96], np.float32)
    dark_wood = np.array([128, 82, 46], np.float32)
    mix = np.clip(0.45 * grain + 0.25 * (n3 + 1) * 0.5 + 0.15 * n2, 0, 1)
    wood = light_wood * (1 - mix[..., None]) + dark_wood * mix[..., None]
    wood *= tint[..., None]
    seam = np.abs(pu - np.round(pu)) * plank_w / scale  # design px to nearest seam
    wood *= (0.55 + 0.45 * np.clip(seam / 1.4, 0, 1))[..., None]
    # Light pool and vignette.
    lx, ly = 250.0 + rng.uniform(-40, 40), 180.0 + rng.uniform(-30, 30)
    r2 = (xd - lx) ** 2 + (yd - ly) ** 2
    lum = 0.78 + 0.32 * np.exp(-r2 / (2 * 330.0**2))
    lum *= 1.0 - 0.18 * (((xd - 320) / 400) ** 2 + ((yd - 240) / 330) ** 2)
    img = wood * lum[..., None]
    # Wall behind the table and the table's back edge.
    wall = np.array([178, 180, 176], np.float32) * (0.80 + 0.25 * (yd / horizon))[..., None]
    wall = np.broadcast_to(wall * (1 - 0.05 * np.abs(xd - 320) / 320)[..., None], img.shape)
    img = np.where((yd < horizon)[..., None], wall, img)
    edge = (yd >= horizon) & (yd < horizon + 3.0)
    img = np.where(np.broadcast_to(edge[..., None], img.shape), img * 1.25 + 10, img)
    return np.ascontiguousarray(img, dtype=np.float32)


def _frustum(canvas: Canvas, o: ObjectSpec, shape, bottom_ratio: float, rim: float):
    """Mug/bowl: a vertical frustum seen from above-front. Returns (sl, inside, rgb) or None."""
    h, w = shape
    cx, cy = canvas.pt(o.center)
    rt = o.size * canvas.sx
    rb = rt * bottom_ratio
    hb = o.height * canvas.sy
    k = 0.48 * canvas.sy / canvas.sx  # ellipse squash (view angle)
    g = bbox_grid(cx - rt - 1, cy - rt * k - 1, cx + rt + 1, cy + hb + rb * k + 1, h, w)
    if g is None:
        return None
    sl, xs, ys = g
    dx, dy = xs - cx, ys - cy
    t = np.clip(dy / max(hb, 1e-3), 0.0, 1.0)
    rr = rt + (rb - rt) * t
    side = (dy >= 0) & (dy <= hb) & (np.abs(dx) <= rr)
    top = (dx / rt) ** 2 + (dy / (rt * k)) ** 2 <= 1.0
    bottom = (dx / rb) ** 2 + ((dy - hb) / (rb * k)) ** 2 <= 1.0
    inside = side | top | bottom
    base = np.asarray(o.color, np.float32)
    nx = np.clip(dx / np.maximum(rr, 1e-3), -1, 1)
    nz = np.sqrt(1 - nx**2)
    rgb = shade(base, nx, 0.55 * nz, 0.83 * nz, ks=0.45)
    ri = max(rt - rim * canvas.s, 1.0)
    inner = (dx / ri) ** 2 + (dy / (ri * k)) ** 2 <= 1.0
    depth_grad = 0.30 + 0.28 * np.clip(dy / (ri * k) + 1, 0, 2) / 2
    inner_rgb = base[None, None] * depth_grad[..., None]
    rgb = np.where(inner[..., None], inner_rgb, rgb)
    rim_band = top & ~inner
    rgb = np.where(rim_band[..., None], np.minimum(base * 1.15 + 25, 255), rgb)
    return sl, inside, rgb


def _handle(canvas: Canvas, o: ObjectSpec, shape):
    """Mug handle: half a torus on the right of the body."""
    h, w = shape
    cx, cy = canvas.pt(o.center)
    rt = o.size * canvas.sx
    hx, hy = cx + rt * 0.98, cy + o.height * canvas.sy * 0.5
    ax, ay = 0.42 * rt, 0.55 * o.height * canvas.sy
    th = 0.13 * rt
    g = bbox_grid(hx - ax - th, hy - ay - th, hx + ax + th, hy + ay + th, h, w)
    if g is None:
        return None
    sl, xs, ys = g
    ex, ey = (xs - hx) / ax, (ys - hy) / ay
    rho = np.sqrt(ex**2 + ey**2) + 1e-6
    a_mean = 0.5 * (ax + ay)
    uu = (rho - 1.0) * a_mean / th
    inside = (np.abs(uu) <= 1.0) & (xs >= hx - 0.1 * ax)
    uu = np.clip(uu, -1, 1)
    nx, ny, nz = uu * ex / rho, uu * ey / rho, np.sqrt(1 - uu**2)
    rgb = shade(np.asarray(o.color, np.float32), nx, ny, nz, ks=0.4)
    return sl, inside, rgb


def _box(canvas: Canvas, o: ObjectSpec, shape, rng: np.random.Generator):
    """A rotated cuboid: top face plus the side faces that face the camera."""
    h, w = shape
    cx, cy = canvas.pt(o.center)
    a = o.size
    ca, sa = np.cos(o.angle), np.sin(o.angle)
    corners = np.array([[-a, -a], [a, -a], [a, a], [-a, a]], np.float32)
    rot = corners @ np.array([[ca, sa], [-sa, ca]], np.float32)
    rot[:, 1] *= 0.62  # foreshortening
    base_pts = rot * np.array([canvas.sx, canvas.sy], np.float32) + [cx, cy]
    top_pts = base_pts - [0.0, o.height * canvas.sy]
    allp = np.concatenate([base_pts, top_pts])
    g = bbox_grid(*allp.min(0), *allp.max(0), h, w)
    if g is None:
        return None
    sl, xs, _ = g
    oy, ox = sl[0].start, sl[1].start
    bh, bw = xs.shape
    rgb = np.zeros((bh, bw, 3), np.float32)
    inside = np.zeros((bh, bw), bool)
    col = np.asarray(o.color, np.float32)
    faces = []
    for i in range(4):
        j = (i + 1) % 4
        e = base_pts[j] - base_pts[i]
        nrm = np.array([e[1], -e[0]], np.float32)
        nrm /= np.linalg.norm(nrm) + 1e-6
        mid = (base_pts[i] + base_pts[j]) / 2 - [cx, cy]
        if np.dot(nrm, mid) < 0:
            nrm = -nrm
        quad = np.array([top_pts[i], top_pts[j], base_pts[j], base_pts[i]])
        faces.append((mid[1], quad, nrm))
    faces.sort(key=lambda f: f[0])
    m = np.zeros((bh, bw), np.uint8)
    for _, quad, nrm in faces:
        m[:] = 0
        cv2.fillConvexPoly(m, np.round(quad - [ox, oy]).astype(np.int32), 1)
        fill = m.astype(bool)
        c = shade(col, np.float32(nrm[0] * 0.9), np.float32(nrm[1] * 0.9), np.float32(0.35), ks=0.1)
        rgb[fill] = c
        inside |= fill
    m[:] = 0
    cv2.fillConvexPoly(m, np.round(top_pts - [ox, oy]).astype(np.int32), 1)
    fill = m.astype(bool)
    tex = 1.0 + 0.05 * smooth_noise(rng, bh, bw, 12)
    top_rgb = shade(col, np.float32(0.0), np.float32(-0.25), np.float32(0.97), ks=0.15)
    rgb[fill] = (top_rgb * tex[..., None])[fill]
    inside |= fill
    return sl, inside, rgb


def _ball(canvas: Canvas, o: ObjectSpec, shape):
    h, w = shape
    cx, cy = canvas.pt(o.center)
    r = o.size * canvas.s
    g = bbox_grid(cx - r, cy - r, cx + r, cy + r, h, w)
    if g is None:
        return None
    sl, xs, ys = g
    dx, dy = (xs - cx) / r, (ys - cy) / r
    d2 = dx**2 + dy**2
    inside = d2 <= 1.0
    nz = np.sqrt(np.clip(1 - d2, 0, 1))
    rgb = shade(np.asarray(o.color, np.float32), dx, dy, nz, ks=0.5, shin=30)
    return sl, inside, rgb


def object_footprint(o: ObjectSpec) -> tuple[np.ndarray, np.ndarray]:
    """Design-space (centre, radii) of the object's shadow ellipse on the table."""
    cx, cy = o.center
    if o.kind in ("mug", "bowl"):
        return np.array([cx, cy + o.height * 0.9]), np.array([o.size * 1.05, o.size * 0.6])
    if o.kind == "box":
        return np.array([cx, cy]), np.array([o.size * 1.2, o.size * 0.85])
    return np.array([cx, cy + o.size * 0.6]), np.array([o.size * 0.95, o.size * 0.55])


def render_static(rng: np.random.Generator, canvas: Canvas, objects: list[ObjectSpec]):
    """Table + soft object shadows + shaded objects. -> ((H, W, 3) float32, (H, W) uint8 labels)."""
    img = table_background(rng, canvas)
    h, w = canvas.height, canvas.width
    shadow = np.zeros((h, w), np.float32)
    for o in objects:
        c, r = object_footprint(o)
        off = SHADOW_DIR * (0.6 + o.height / 40.0)
        cc = canvas.pt(c + off)
        axes = (max(int(r[0] * canvas.sx), 1), max(int(r[1] * canvas.sy), 1))
        cv2.ellipse(shadow, (int(cc[0]), int(cc[1])), axes, 0, 0, 360, 1.0, -1)
    k = int(18 * canvas.s) | 1
    shadow = cv2.GaussianBlur(shadow, (k, k), 0)
    img *= (1.0 - 0.42 * np.clip(shadow, 0, 1))[..., None]
    labels = np.zeros((h, w), np.uint8)
    for o in sorted(objects, key=lambda o: o.center[1]):  # far objects first
        if o.kind == "mug":
            parts = [_handle(canvas, o, (h, w)), _frustum(canvas, o, (h, w), 0.92, 3.5)]
        elif o.kind == "bowl":
            parts = [_frustum(canvas, o, (h, w), 0.62, 4.0)]
        elif o.kind == "box":
            parts = [_box(canvas, o, (h, w), rng)]
        else:
            parts = [_ball(canvas, o, (h, w))]
        for part in parts:
            if part is not None:
                paint(img, labels, part[0], part[1], part[2], o.label)
    return img, labels


def place_objects(rng: np.random.Generator) -> list[ObjectSpec]:
    """A red mug (the target) on the right half and three distractors, not overlapping."""
    for _ in range(200):
        mug = ObjectSpec(
            "mug", (rng.uniform(355, 445), rng.uniform(175, 245)), 30.0, 36.0,
            (196, 32, 38), label=LABEL_TARGET, name="red mug")  # fmt: skip
        bowl = ObjectSpec(
            "bowl", (rng.uniform(140, 230), rng.uniform(185, 250)), 40.0, 22.0,
            (40, 92, 190), label=LABEL_DISTRACTOR, name="blue bowl")  # fmt: skip
        box = ObjectSpec(
            "box", (rng.uniform(250, 330), rng.uniform(115, 150)), 24.0, 26.0,
            (58, 150, 72), angle=float(rng.uniform(-0.6, 0.6)), label=LABEL_DISTRACTOR + 1,
            name="green block")  # fmt: skip
        ball = ObjectSpec(
            "ball", (rng.uniform(265, 330), rng.uniform(255, 300)), 19.0, 19.0,
            (232, 196, 40), label=LABEL_DISTRACTOR + 2, name="yellow ball")  # fmt: skip
        objs = [mug, bowl, box, ball]
        ok = all(
            np.hypot(a.center[0] - b.center[0], a.center[1] - b.center[1]) > 1.6 * (a.size + b.size)
            for i, a in enumerate(objs)
            for b in objs[i + 1 :]
        )
        if ok:
            return objs
    raise RuntimeError("could not place objects without overlap; widen the placement ranges")
