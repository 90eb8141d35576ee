"""The screenshots in docs/ are the ones scripts/screenshots.py writes: each a decodable PNG of a real screen,
small enough for the repository, and linked from the README."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = (REPO / "scripts" / "screenshots.py").read_text()
NAMES = re.findall(r'args\.docs / "([\w-]+\.png)"', SCRIPT)


def test_the_script_names_three_screens():
    assert NAMES == ["report-first-screen.png", "prefect-flow-run.png", "prefect-pipeline-summary.png"]


@pytest.mark.parametrize("name", NAMES)
def test_each_screenshot_is_a_small_real_png_linked_from_the_readme(name):
    from PIL import Image

    png = REPO / "docs" / name
    assert png.is_file(), f"{png} missing: run python scripts/screenshots.py"
    assert 10_000 < png.stat().st_size < 300_000
    with Image.open(png) as img:
        assert img.format == "PNG" and img.width >= 1200 and img.height >= 800
        grey = img.convert("L")
        lo, hi = grey.getextrema()
        assert hi - lo > 100  # text on a background, not one flat colour
    assert f"(docs/{name})" in (REPO / "README.md").read_text()
