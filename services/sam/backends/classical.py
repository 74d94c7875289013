"""The `classical` sam backend: GrabCut prompts, optical-flow tracking, colour refinement.

CPU only, no weights, deterministic. Usage:
    backend = ClassicalBackend(flow_scale=0.5)
    state = backend.init_state(frames)                     # (T, H, W, 3) uint8 RGB store
    backend.add_prompt(state, Prompt(0, 1, box=np.array([10, 10, 90, 70], np.float32)))
    for t, masks in backend.propagate(state, windows): ...   # the session's plan; PassMasks

How it works:
- add_prompt: GrabCut initialised from the box and/or similar-colour regions around the
  clicked points (points of one frame accumulate, like SAM clicks); a points-only prompt on
  a frame that already has a propagated mask refines that mask near the clicks, unless a
  positive click says the mask lost the object (none, or far from it): then the object is
  found again around the click from its shape on the nearest keyframe (classical_clicks).
  Clicks sent after a box on the same frame edit the box's mask the same way, near them.
  A mask prompt is taken as is.
  Each prompted (object, frame) becomes a keyframe with its mask and a colour model.
- propagate: dense optical flow (DIS) between neighbouring frames, computed once per frame
  pair and shared by all objects, on the region around them (flow_margin), warps each mask; the pixels in a band around the warped
  boundary are re-decided from the object's colour model and the distance to the boundary.
- Several keyframes / direction 'both': each frame takes each object's mask from the
  nearest prompted keyframe of that object in time; ties go to the forward pass (the
  session layer's merge rule, base.pass_distances). Each (object, frame) is computed once,
  by the pass that owns it (the windows' `sources`, planned by the session layer); a
  non-overlap update of an object the other pass owns is tagged with that pass.
- Bounded windows (a correction's re-propagation) compute only the objects and frames their
  `sources` give; the stored masks of the other objects on those frames compete for pixels.
  A correction's re-propagation stops for an object where it loses it (option lost_area):
  on the first frame whose new mask is under lost_area x the stored mask x the correction's
  own area change on its keyframe, the stored masks stay, from there to the window's end.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import asdict

import cv2
import numpy as np

from protocol.options import parse_options
from services.sam.backends.base import PassMasks, Prompt, SamBackend, Window
from services.sam.backends.classical_clicks import is_lost, redetect, refine_with_clicks
from services.sam.backends.classical_cut import check_solver
from services.sam.backends.classical_ops import (
    ColourModel,
    Flow,
    Tracked,
    bbox,
    features,
    flow_roi,
    gray,
    lightness,
    quantise,
    resolve_overlaps,
    track_step,
)
from services.sam.backends.classical_prompt import segment_prompt
from services.sam.backends.classical_state import (
    ClassicalState,
    ObjectState,
    area_change,
    object_like,
    others_mask,
    pass_owners,
    reference,
    stored,
    stored_area,
)
from services.sam.backends.classical_track import ObjectTracker, TrackOptions

log = logging.getLogger(__name__)

PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


class ClassicalBackend(SamBackend):
    name = "classical"
    prompt_kinds = frozenset({"points", "box", "mask"})
    capabilities = frozenset({"segment_image", "bounded"})

    def __init__(
        self,
        device: str = "cpu",  # only "cpu"
        flow_scale: float = 0.75,  # optical flow computed at this fraction of the resolution
        flow_preset: str = "medium",  # DIS preset: ultrafast | fast | medium
        flow_margin: float | None = 0.5,  # flow on the objects' box grown by this x its size
        band: int = 6,  # pixels inside the warped boundary that are re-decided each frame
        grow: int = 3,  # pixels outside it that may join the object each frame
        sigma: float = 2.5,  # px; how strongly the warped boundary outweighs colour
        colour_weight: float = 1.0,  # weight of the colour log-odds in the band
        colour_rate: float = 0.05,  # per-frame adaptation of the colour model (0 = fixed)
        non_overlap: bool = True,  # a pixel belongs to at most one tracked object
        grabcut_iters: int = 4,  # GrabCut iterations for box/point prompts
        threads: int | None = None,  # cv2.setNumThreads (None: OpenCV's default)
        tracker: str = "local",  # local: classical_track.py; flow_colour: the first tracker
        track: dict | None = None,  # classical_track.TrackOptions overrides (tracker local)
        # a bounded re-propagation (a correction's) stops for an object on the first frame
        # where its new mask is smaller than lost_area x the stored mask x the correction's
        # own area change on its keyframe: the tracker lost the object there, and the stored
        # masks stay from that frame to the window's end (0: off)
        lost_area: float = 0.5,
    ) -> None:
        if device != "cpu":
            raise ValueError(f"device: the classical backend runs on 'cpu' only, got {device!r}")
        if flow_preset not in PRESETS:
            raise ValueError(f"flow_preset: {flow_preset!r} is not one of {sorted(PRESETS)}")
        if not 0.1 <= flow_scale <= 1.0:
            raise ValueError(f"flow_scale: must be in [0.1, 1.0], got {flow_scale}")
        if band < 1 or sigma <= 0 or grabcut_iters < 1 or not 0 <= colour_rate <= 1:
            raise ValueError(
                "band >= 1, sigma > 0, grabcut_iters >= 1 and 0 <= colour_rate <= 1 are required"
            )
        if flow_margin is not None and flow_margin < 0:
            raise ValueError(f"flow_margin: must be >= 0 or None (whole frame), got {flow_margin}")
        if not 0 <= lost_area < 1:
            raise ValueError(f"lost_area: must be in [0, 1) (0: off), got {lost_area}")
        if tracker not in ("local", "flow_colour"):
            raise ValueError(f"tracker: {tracker!r} is not one of ['flow_colour', 'local']")
        self.tracker = tracker
        opts = parse_options(TrackOptions, track, where="backend classical options.track")
        self.track = asdict(opts)
        self.device = device
        self.flow_scale = flow_scale
        self.flow_preset = flow_preset
        self.flow_margin = flow_margin
        self.band = band
        self.grow = grow
        self.non_overlap = non_overlap
        self.sigma = sigma
        self.colour_weight = colour_weight
        self.colour_rate = colour_rate
        self.grabcut_iters = grabcut_iters
        self.threads = threads
        self.lost_area = lost_area

    def setup(self) -> None:
        if self.tracker == "local" and self.track["cut_weight"] > 0:
            # at start-up, not on the first propagated frame (builds the C max-flow once)
            solver = check_solver(self.track["solver"])
            log.info("classical backend: band cuts by %s max-flow", solver)
        if self.threads is not None:
            cv2.setNumThreads(self.threads)
        log.info(
            "classical backend ready (OpenCV %s, %d threads)", cv2.__version__, cv2.getNumThreads()
        )

    def info(self) -> dict:
        return {
            "opencv": cv2.__version__,
            "flow": f"DIS {self.flow_preset} at scale {self.flow_scale}",
            "refine": f"colour model in a {self.band}px band",
        }

    # ---- sessions --------------------------------------------------------------------
    def init_state(self, frames: np.ndarray) -> ClassicalState:
        return ClassicalState(frames)

    def add_prompt(self, state, prompt: Prompt):
        st: ClassicalState = state
        frame, obj_id, points, labels = prompt.frame, prompt.obj_id, prompt.points, prompt.labels
        box, mask, text = prompt.box, prompt.mask, prompt.text
        if text is not None:
            raise ValueError("text: the classical backend has no text prompts; use sam3")
        img = st.frames[frame]  # (H, W, 3) uint8, a view of the store
        h, w = img.shape[:2]
        obj = st.objects.setdefault(obj_id, ObjectState())
        obj.version += 1
        if frame not in obj.before:
            obj.before[frame] = stored_area(obj, frame) if frame in obj.results else None
        p = obj.prompts.get(frame)
        if p is None:
            p = {"points": [], "labels": []}
            if frame in obj.results:  # refine what propagation produced on this frame
                p["prior"] = stored(obj, frame, w)
            obj.prompts[frame] = p
        if mask is not None:  # replaces the frame's earlier prompts, a box's mask too
            p.update(mask=mask, points=[], labels=[], box=None, prior=None, box_mask=None)
        if box is not None:
            p["box"] = box
            p.pop("box_mask", None)  # segmented again below, with the points so far
        if points is not None:
            p["points"].extend(points.tolist())
            p["labels"].extend(labels.tolist())
        pts = np.asarray(p["points"], np.float32).reshape(-1, 2)
        lab = np.asarray(p["labels"], np.int32)
        base = p.get("mask") if p.get("mask") is not None else p.get("prior")
        feat = None  # features(img), computed at most once below
        if len(pts) == 0 and p.get("box") is None:
            m = base
        elif (
            p.get("box") is None
            and (ref := reference(obj, frame)) is not None
            and (lab == 1).any()
            and (base is None or is_lost(base, pts, lab, ref))
            and object_like(obj, frame, img, pts[lab == 1][0])
            and (
                m := redetect(feat := features(img), ref, pts, lab, base, iters=self.grabcut_iters)
            )
            is not None
        ):  # a positive click on the object's colours where the mask lost it: found again
            pass
        elif p.get("box_mask") is not None and p["box_mask"].any() and box is None:
            # clicks after a box on this frame: edits of the box's mask near them, as on any
            # other frame (not GrabCut on the box again with every click)
            k = p["box_points"]
            m = refine_with_clicks(features(img), p["box_mask"], pts[k:], lab[k:])
        elif p.get("box") is None and base is not None and base.any():
            rb = bbox(ref) if ref is not None else None
            size = max(rb[2] - rb[0], rb[3] - rb[1]) if rb is not None else 0
            if feat is None:  # not yet computed by the re-detection attempt above
                feat = features(img)
            m = refine_with_clicks(feat, base, pts, lab, ref_size=size)  # near clicks
        else:
            other = [k for k in obj.models if k != frame and obj.models[k] is not None]
            near = min(other, key=lambda k: abs(k - frame)) if other else None
            m = segment_prompt(
                img,
                p.get("box"),
                pts if len(pts) else None,
                lab if len(pts) else None,
                prior=base,
                appearance=obj.models[near] if near is not None else None,
                exclude=others_mask(st, frame, obj_id),
                iters=self.grabcut_iters,
            )
            if p.get("box") is not None:
                p["box_mask"], p["box_points"] = m, len(pts)
        if not m.any():
            log.warning("obj %d frame %d: prompt produced an empty mask", obj_id, frame)
        q = quantise(img)
        obj.keymasks[frame] = m
        obj.models[frame] = ColourModel.learn(q, m) if m.any() else None
        obj.results[frame] = np.packbits(m, axis=-1)
        out = {obj_id: m}
        if self.non_overlap and m.any():  # the latest prompt is authoritative on its frame
            for oid, o in st.objects.items():
                if oid == obj_id or frame not in o.results:
                    continue
                other = stored(o, frame, w)
                if not (other & m).any():
                    continue
                other &= ~m
                o.results[frame] = np.packbits(other, axis=-1)
                if frame in o.keymasks:
                    o.version += 1
                    o.keymasks[frame] = other
                    o.models[frame] = ColourModel.learn(q, other) if other.any() else None
                out[oid] = other
        return out

    def remove_object(self, state, obj_id):
        state.objects.pop(obj_id, None)
        for o in state.objects.values():  # it no longer competes for pixels: recompute all
            o.done = None

    def reset(self, state):
        state.objects.clear()

    def close(self, state):
        state.objects.clear()
        state.frames = None

    # ---- propagation -----------------------------------------------------------------
    def propagate(self, state, windows: list[Window]) -> Iterator[tuple[int, PassMasks]]:
        st: ClassicalState = state
        owners = pass_owners(st, windows)
        fresh: dict[int, set[int]] = {}  # frame -> objects whose masks are current there
        skip: set[int] = set()
        # under non_overlap objects are tracked jointly: any change anywhere recomputes all
        group = tuple((k, o.version) for k, o in st.objects.items()) if self.non_overlap else ()
        for oid, o in st.objects.items():
            sig = (o.version, group, tuple(owners[d][oid].tobytes() for d in owners))
            if o.done == sig:  # nothing changed for it: keep its masks (they still compete)
                skip.add(oid)
                for d in owners:
                    for t in np.flatnonzero(owners[d][oid] >= 0):
                        fresh.setdefault(int(t), set()).add(oid)
            o.done = sig
        for w in windows:
            yield from self._pass(st, w.direction, w.lo, w.hi, owners, fresh, skip, w.bounded)
        for o in st.objects.values():  # its prompts are propagated: a new correction next
            o.before.clear()

    def _pass(
        self, st, d, lo, hi, owners, fresh, skip, bounded=False
    ) -> Iterator[tuple[int, PassMasks]]:
        own = owners[d]
        step = 1 if d == "forward" else -1
        first, last = (lo, hi) if step == 1 else (hi, lo)
        w = st.frames.shape[2]
        flow = Flow(self.flow_scale, PRESETS[self.flow_preset])
        cur: dict[int, np.ndarray] = {}
        models: dict[int, ColourModel | None] = {}
        trackers: dict[int, ObjectTracker | None] = {}
        local = self.tracker == "local"
        prev_gray = None
        guard: dict[int, float] = {}  # bounded: obj -> its correction's area change (lost_area)
        lost: set[int] = set()  # bounded: objects that keep their stored masks from here on
        guarded = bounded and self.lost_area > 0
        for t in range(first, last + step, step):
            img = st.frames[t]  # (H, W, 3) uint8
            g = gray(img)
            q = None
            feat = lum = None
            tracks: dict[int, Tracked] = {}
            todo = []  # objects tracked from the previous frame here
            for oid, o in st.objects.items():
                if own[oid][t] < 0 or oid in skip:
                    cur.pop(oid, None)
                    continue
                if t in o.keymasks:
                    models[oid] = o.models[t]
                    tracks[oid] = Tracked(o.keymasks[t].copy(), fixed=True)
                    trackers.pop(oid, None)  # learnt from the keymask below, once final
                    lost.discard(oid)
                    guard.pop(oid, None)
                    if guarded and (ratio := area_change(o, t)) is not None:
                        guard[oid] = ratio  # a correction's keyframe
                    continue
                if oid in lost:  # the correction's tracker lost it: the stored mask stays
                    tracks[oid] = Tracked(stored(o, t, w))
                    continue
                if oid not in cur:  # continue an earlier result from just outside
                    cur[oid] = stored(o, t - step, w)
                    if guarded and t - step in o.keymasks:  # from a correction's keyframe
                        ratio = area_change(o, t - step)
                        if ratio is not None:
                            guard[oid] = ratio
                    if local:
                        f_prev = self._feat(st.frames[t - step])
                        if prev_gray is None:
                            prev_gray = gray(st.frames[t - step])
                        trackers[oid] = (
                            ObjectTracker.start(f_prev, cur[oid], self.track, lightness(prev_gray))
                            if cur[oid].any() else None
                        )  # fmt: skip
                    else:
                        q_prev = quantise(st.frames[t - step])
                        models[oid] = (
                            ColourModel.learn(q_prev, cur[oid]) if cur[oid].any() else None
                        )
                m = trackers.get(oid) if local else models[oid]
                if m is None or not cur[oid].any():
                    tracks[oid] = Tracked(np.zeros_like(cur[oid]))
                    continue
                todo.append((oid, m))
            if todo:
                if prev_gray is None:
                    prev_gray = gray(st.frames[t - step])
                # once per frame pair, for all objects, on the region around them (their
                # lines, tracked without flow, left out: they may span the frame)
                roi = flow_roi(
                    [m.body(cur[oid]) if local else cur[oid] for oid, m in todo], self.flow_margin
                )
                maps = flow.maps(g, prev_gray, roi)
            for oid, m in todo:
                if local:
                    if feat is None:
                        feat = self._feat(img)
                        lum = lightness(g)
                    tracks[oid] = m.step(feat, lum, cur[oid], maps[0], maps[1])
                    continue
                if q is None:
                    q = quantise(img)
                tracks[oid] = track_step(
                    cur[oid], maps[0], maps[1], q, m, band=self.band, grow=self.grow,
                    sigma=self.sigma, colour_weight=self.colour_weight,
                )  # fmt: skip
            for oid, ratio in guard.items():
                tr = tracks.get(oid)
                if tr is None or tr.fixed or oid in lost or t not in st.objects[oid].results:
                    continue
                a0 = stored_area(st.objects[oid], t)  # a popcount: unpacked only when lost
                if a0 and np.count_nonzero(tr.mask) < self.lost_area * ratio * a0:
                    lost.add(oid)
                    tracks[oid] = Tracked(stored(st.objects[oid], t, w))
            changed: set[int] = set()
            if self.non_overlap and tracks:
                # objects the other pass already computed on this frame compete too
                near = set(fresh.get(t, ()))
                if bounded:  # objects this call does not recompute here keep their masks
                    near |= {oid for oid, o in st.objects.items() if t in o.results}
                others = {
                    oid: Tracked(stored(st.objects[oid], t, w))
                    for oid in near
                    if oid not in tracks and oid in st.objects
                }
                if len(tracks) + len(others) > 1:
                    changed = resolve_overlaps({**tracks, **others}) & set(others)
                tracks.update({oid: others[oid] for oid in changed})
            out = {e: PassMasks(e) for e in owners}  # by the pass that owns the (obj, t)
            for oid, tr in tracks.items():
                # an object of the other pass (or a skipped one) lost pixels to this pass's:
                # its update belongs to the pass that owns it there
                e = (
                    d
                    if own[oid][t] >= 0
                    else next((e for e in owners if owners[e][oid][t] >= 0), d)
                )
                out[e][oid] = tr.mask
                if oid not in changed:
                    cur[oid] = tr.mask
                    if oid in lost:  # tracked no further in this pass: nothing to learn
                        pass
                    elif local and own[oid][t] >= 0:
                        self._learn(trackers, oid, tr, img, feat, g)
                    elif tr.sd is not None and not tr.fixed and models[oid] is not None:
                        models[oid] = models[oid].update(q, tr.mask, self.colour_rate)
                st.objects[oid].results[t] = np.packbits(tr.mask, axis=-1)
                fresh.setdefault(t, set()).add(oid)
            prev_gray = g
            for masks in sorted(out.values(), key=lambda m: m.direction != d):
                if masks:
                    yield t, masks

    def _feat(self, img: np.ndarray) -> np.ndarray:
        return features(img, self.track["l_weight"], self.track["ab_gain"])

    def _learn(self, trackers: dict, oid: int, tr: Tracked, img, feat, g) -> None:
        """After a frame (image img, its features feat or None, gray g): start the object's
        tracker on a keyframe, else adapt its models."""
        if not tr.mask.any():
            trackers[oid] = None
        elif tr.fixed or trackers.get(oid) is None:
            f = feat if feat is not None else self._feat(img)
            trackers[oid] = ObjectTracker.start(f, tr.mask, self.track, lightness(g))
        elif tr.sd is not None:
            trackers[oid].update(feat if feat is not None else self._feat(img), tr.mask)

    # ---- single images ---------------------------------------------------------------
    def segment_image(self, image, boxes, points, labels) -> np.ndarray:
        h, w = image.shape[:2]
        if boxes is None or len(boxes) == 0:
            if points is None:
                raise ValueError("segment_image: give boxes and/or points")
            return segment_prompt(image, None, points, labels, iters=self.grabcut_iters)[None]
        out = np.zeros((len(boxes), h, w), bool)  # (n, H, W)
        for i, b in enumerate(boxes):
            out[i] = segment_prompt(image, b, points, labels, iters=self.grabcut_iters)
        return out
