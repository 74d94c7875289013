"""The studio page with frames wider than the page leaves room for (1280x720 in a 1200 px
window): the frame is scaled down beside the panel, not covered by it, and a click lands on
the image pixel under the pointer.

Usage: .venvs/test/bin/python -m pytest -q tests/e2e/test_studio_layout.py
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.e2e.studio_mesh import ARTIFACTS, CHROMIUM, have_browser, studio_mesh
from tests.e2e.test_studio import held_mask
from tests.helpers import ROOT

pytestmark = pytest.mark.skipif(have_browser() is not None, reason=str(have_browser()))
H, W = 720, 1280


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("studio-wide")
    data = tmp / "demo"
    subprocess.run([sys.executable, "-m", "tools.demo_data", "--out", str(data), "--seed", "1",
                    "--episodes", "1", "--frames", "8", "--height", str(H), "--width", str(W)],
                   cwd=ROOT, check=True, capture_output=True)  # fmt: skip
    with studio_mesh(tmp, data=data) as m:
        yield m


def test_a_wide_frame_is_scaled_beside_the_panel_and_clicks_map_to_its_pixels(mesh):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = b.new_context(viewport={"width": 1200, "height": 760}).new_page()
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(mesh.url)
            page.fill("#login-name", "dana")
            page.click("#login-form button")
            page.wait_for_selector("#episodes tbody tr")
            page.evaluate("location.hash = '#episode/0'")
            page.wait_for_function("window.studio.ann && window.studio.ann.ready", timeout=120_000)
            cv = page.locator("#canvas").bounding_box()
            panel = page.locator("#right").bounding_box()
            assert cv["x"] + cv["width"] <= panel["x"] + 1, (cv, panel)  # not covered
            assert cv["width"] < W and abs(cv["height"] / cv["width"] - H / W) < 0.01, cv
            gt = mesh.gt(0)[0]
            x0, y0, x1, y1 = mesh.target_box(0)
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            assert gt[int(cy), int(cx)], "the click must land on the target (test set-up)"
            s = cv["width"] / W  # displayed px per image px
            page.click("#canvas", position={"x": cx * s, "y": cy * s})
            page.wait_for_function("window.studio.ann.latencies.length >= 1", timeout=60_000)
            m = held_mask(page, 1, 0, H, W)
            assert m[int(cy), int(cx)], "the clicked image pixel is in the mask"
            assert (m & gt).sum() > 0.5 * m.sum(), "the mask is on the target"
            page.screenshot(path=str(ARTIFACTS / "wide.png"))
            assert errors == [], errors
        finally:
            b.close()
