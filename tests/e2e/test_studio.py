"""The studio in a real browser (Playwright + Debian's chromium) on demo data, whole workflow.

Usage: .venvs/test/bin/python -m pytest -q tests/e2e/test_studio.py
Screenshots of each view land in tests/artifacts/studio/ (git-ignored).

One mesh (reader, sam classical, exporter, studio) per module; the tests run in file order
and share one page: click -> mask, propagate, drift jump, bounded correction, approve ->
exporter output == page masks, prompts file, a second annotator refused the held episode.
"""

from __future__ import annotations

import base64
import json
import urllib.request

import numpy as np
import pytest

from tests.e2e.studio_mesh import ARTIFACTS, CHROMIUM, have_browser, studio_mesh

pytestmark = pytest.mark.skipif(have_browser() is not None, reason=str(have_browser()))
EP = 0


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    u = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / u) if u else 1.0


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with studio_mesh(tmp_path_factory.mktemp("studio"), episodes=2, frames=40) as m:
        yield m


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield b
        b.close()


def _login(browser, url: str, name: str):
    ctx = browser.new_context(viewport={"width": 1200, "height": 760})
    page = ctx.new_page()
    page.errors = []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.goto(url)
    page.fill("#login-name", name)
    page.click("#login-form button")
    page.wait_for_selector("#episodes tbody tr")
    return page


@pytest.fixture(scope="module")
def page(browser, mesh):
    page = _login(browser, mesh.url, "alice")
    page.screenshot(path=str(ARTIFACTS / "episodes.png"))
    page.evaluate(f"location.hash = '#episode/{EP}'")
    page.wait_for_function("window.studio.ann && window.studio.ann.ready", timeout=120_000)
    yield page
    assert page.errors == [], page.errors


def held_mask(page, obj: int, t: int, h: int, w: int) -> np.ndarray:
    """The mask the page holds for (obj, frame t) as (H, W) bool (null = empty)."""
    s = page.evaluate(f"window.studio.ann.maskB64({obj}, {t})")
    if s is None:
        return np.zeros((h, w), bool)
    bits = np.frombuffer(base64.b64decode(s), np.uint8).reshape(h, (w + 7) // 8)
    return np.unpackbits(bits, axis=-1, count=w).astype(bool)


def held_all(page, obj: int, n: int, h: int, w: int) -> np.ndarray:
    return np.stack([held_mask(page, obj, t, h, w) for t in range(n)])


def _wait_idle(page, timeout=300_000):
    page.wait_for_function("window.studio.ann.busy === false && window.studio.ann.last !== null",
                           timeout=timeout)  # fmt: skip


def test_click_shows_the_target_mask(page, mesh):
    gt = mesh.gt(EP)
    x0, y0, x1, y1 = mesh.target_box(EP)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    assert gt[0][int(cy), int(cx)], "the click must land on the target (test set-up)"
    page.click("#canvas", position={"x": cx, "y": cy})
    page.wait_for_function("window.studio.ann.latencies.length >= 1", timeout=60_000)
    m = held_mask(page, 1, 0, *gt.shape[1:])
    assert m[int(cy), int(cx)], "the clicked pixel is in the mask the page holds"
    assert m.sum() > 200
    # a box on top: the page's box tool (drag) makes the keyframe robust for propagation
    page.keyboard.press("b")
    page.mouse.move(0, 0)
    box = page.locator("#canvas").bounding_box()
    page.mouse.move(box["x"] + x0 - 4, box["y"] + y0 - 4)
    page.mouse.down()
    page.mouse.move(box["x"] + x1 + 4, box["y"] + y1 + 4, steps=4)
    page.mouse.up()
    page.wait_for_function("window.studio.ann.latencies.length >= 2", timeout=60_000)
    page.keyboard.press("b")
    m = held_mask(page, 1, 0, *gt.shape[1:])
    assert _iou(m, gt[0]) > 0.7, _iou(m, gt[0])
    page.screenshot(path=str(ARTIFACTS / "click.png"))


def test_propagate_streams_every_frame(page, mesh):
    gt = mesh.gt(EP)
    page.keyboard.press("p")
    _wait_idle(page)
    last = page.evaluate("window.studio.ann.last")
    assert last["frames"] == len(gt)
    held = held_all(page, 1, len(gt), *gt.shape[1:])
    ious = [_iou(held[t], gt[t]) for t in range(len(gt)) if gt[t].any()]
    assert np.mean(ious) > 0.6, ious
    page.screenshot(path=str(ARTIFACTS / "propagated.png"))


def test_jump_to_the_most_suspicious_frame(page, mesh):
    drift = page.evaluate("window.studio.ann.drift")
    if not drift:
        pytest.skip("the sam service offers no `drift` op yet (issue: sam drift alarms)")
    scores = np.max(np.array([v for v in drift.values()], float), axis=0)
    page.keyboard.press("Home")
    page.keyboard.press("Shift+N")
    assert page.evaluate("window.studio.ann.t") == int(np.argmax(scores))
    page.screenshot(path=str(ARTIFACTS / "drift.png"))


def test_correction_recomputes_only_the_affected_span(page, mesh):
    gt = mesh.gt(EP)
    n = len(gt)
    k = 3 * n // 4
    ys, xs = np.nonzero(gt[k])
    page.evaluate(f"window.studio.ann.go({k})")
    page.click("#canvas", position={"x": float(np.median(xs)), "y": float(np.median(ys))})
    page.wait_for_function("window.studio.ann.latencies.length >= 3", timeout=60_000)
    page.evaluate("window.studio.ann.last = null")
    page.keyboard.press("p")
    _wait_idle(page)
    last = page.evaluate("window.studio.ann.last")
    shown = page.inner_text("#correction")
    assert f"recomputed {last['recomputed']} frame" in shown
    if not last["bounded_supported"]:
        pytest.skip("the sam service has no bounded propagation yet (propagate.bounded)")
    # keyframes 0 and k: only frames nearer to k than to 0 change their nearest keyframe
    lo = (k + 1) // 2
    assert last["bounded"] is True
    assert 0 < last["recomputed"] <= n - lo, last
    for obj, a, b in last["spans"]:
        assert obj == 1 and lo - 1 <= a and b <= n, last["spans"]
    page.screenshot(path=str(ARTIFACTS / "correction.png"))


def test_approve_exports_exactly_what_the_page_shows(page, mesh):
    import zarr

    gt = mesh.gt(EP)
    held = held_all(page, 1, len(gt), *gt.shape[1:])
    page.fill("#note", "checked every frame")
    page.locator("#canvas").focus()
    page.keyboard.press("a")
    page.wait_for_function("window.studio.ann.lastReview !== undefined", timeout=120_000)
    rev = page.evaluate("window.studio.ann.lastReview")
    assert rev["verdict"] == "approved" and rev["round"] == 0
    g = zarr.open_group(str(mesh.tmp / "out" / "rgbm.zarr"), mode="r")
    ends = np.asarray(g["meta/episode_ends"][:])
    rgbm = np.asarray(g["data/rgbm"][0 : int(ends[0])])
    assert np.array_equal(rgbm[..., 3].astype(bool), held), "exported mask != page mask"
    done = json.loads((mesh.tmp / "out" / "done" / "0000.json").read_text())
    assert done["meta"]["source"] == "studio" and done["meta"]["approved"] is True
    assert done["meta"]["round"] == 0 and done["meta"]["annotator"] == "alice"
    page.screenshot(path=str(ARTIFACTS / "approved.png"))


def test_prompts_file_holds_the_clicks(page, mesh):
    from services.studio.review import schema

    path = mesh.tmp / "out.studio" / "prompts.yaml"
    pf = schema.load_prompts_file(path)
    ep = pf.episode(EP)
    tgt = ep.objects["target"]
    frames = {p.frame: p for p in tgt.prompts}
    assert set(frames) == {0, 3 * len(mesh.gt(EP)) // 4}
    assert frames[0].box is not None and frames[0].labels == (1,)
    x0, y0, x1, y1 = mesh.target_box(EP)
    ((px, py),) = frames[0].points
    assert abs(px - (x0 + x1) / 2) <= 1 and abs(py - (y0 + y1) / 2) <= 1
    assert ep.target is not None and ep.target.frame == 0


def test_second_annotator_cannot_take_the_held_episode(browser, page, mesh):
    bob = _login(browser, mesh.url, "bob")
    bob.evaluate(f"location.hash = '#episode/{EP}'")
    bob.wait_for_function("document.getElementById('message').textContent.includes('held by')",
                          timeout=60_000)  # fmt: skip
    msg = bob.inner_text("#message")
    assert "held by alice" in msg, msg
    token = bob.evaluate("sessionStorage.getItem('studio-token')")
    req = urllib.request.Request(f"{mesh.url}api/episodes/{EP}/prompts", method="POST",
                                 data=json.dumps({"obj_id": 1, "frame": 0, "kind": "point",
                                                  "data": {"x": 5, "y": 5, "label": 1}}).encode(),
                                 headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req)
    assert e.value.code == 409
    bob.screenshot(path=str(ARTIFACTS / "held.png"))
    bob.evaluate("location.hash = '#stats'")
    bob.wait_for_selector("#stats table")
    assert "alice" in bob.inner_text("#stats")
    bob.screenshot(path=str(ARTIFACTS / "stats.png"))
    assert bob.errors == [], bob.errors
    assert token not in mesh.log.read_text()
