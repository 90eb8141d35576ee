"""The HTML report in a real browser: headless Chromium renders it to a non-blank screenshot and decodes all
five embedded figures. Skipped where Chromium is not installed (CI: `apt-get install -y chromium`)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from dlm_triage.report import write_report
from test_report import _make_db

CHROMIUM = next((p for p in (shutil.which("chromium"), "/usr/bin/chromium") if p and Path(p).is_file()), None)

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not found at /usr/bin/chromium or on PATH: "
                                                    "install it (Debian: apt-get install -y chromium) to run this")


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """One headless Chromium run, offline-friendly (no sync, no component updates, fresh profile)."""
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args]
    env = dict(os.environ, HOME=str(tmp_path))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path)


@pytest.fixture(scope="module")
def report_html(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("browser")
    db = _make_db(tmp / "t.duckdb", {"llada": 300, "dream": 60, "mdlm": 60})
    return write_report(db, tmp / "out").html


def test_screenshot_is_not_blank(report_html, tmp_path):
    from PIL import Image

    shot = tmp_path / "report.png"
    proc = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1400,4000", "--hide-scrollbars",
                     report_html.as_uri())
    assert shot.is_file(), f"no screenshot; chromium said:\n{proc.stderr[-2000:]}"
    img = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert img.shape == (4000, 1400)
    assert shot.stat().st_size > 50_000
    assert img.std() > 20  # text, tables and figures, not one flat colour
    # content all the way down (the figures start ~1500 px down): every 500-px band has ink
    for top in range(0, 4000, 500):
        band = img[top:top + 500]
        assert (band < 128).mean() > 0.003, f"blank band at y={top}..{top + 500}"


def test_every_figure_decodes_in_the_browser(report_html, tmp_path):
    # a probe copy with a script (the report itself has none): after load, write each <img>'s decoded size
    probe = tmp_path / "probe.html"
    script = ("<script>window.addEventListener('load',()=>{document.title=JSON.stringify("
              "[...document.images].map(i=>[i.complete,i.naturalWidth,i.naturalHeight]))});</script>")
    probe.write_text(report_html.read_text().replace("</body>", script + "</body>"))
    proc = _chromium(tmp_path, "--dump-dom", "--virtual-time-budget=5000", probe.as_uri())
    m = re.search(r"<title>(.*?)</title>", proc.stdout, re.S)
    assert m, f"no DOM dumped; chromium said:\n{proc.stderr[-2000:]}"
    sizes = json.loads(m.group(1).replace("&quot;", '"'))
    assert len(sizes) == 5
    for complete, w, h in sizes:
        assert complete and w >= 300 and h >= 200
