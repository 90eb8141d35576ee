"""Regenerate the screenshots in docs/: the report's first screen and the Prefect UI pages of a pipeline run.

    python scripts/screenshots.py [--out DIR] [--docs docs] [--port 4299]

What it does, all on this machine (no network):
1. starts a Prefect server (`prefect server start`, its own PREFECT_HOME under DIR) and waits for its API;
2. runs `dlm-triage --out DIR run` on a small tiny-family grid against that server (finished runs in DIR are
   reused, so a second call trains nothing and takes a minute);
3. renders with headless Chromium (/usr/bin/chromium or `chromium` on PATH):
   - docs/report-first-screen.png   the report's first screen (answer per group, collapsed warnings, verdicts),
   - docs/prefect-flow-run.png       the pipeline's flow-run page (its task runs, the Routed ones, its tags),
   - docs/prefect-pipeline-summary.png  the pipeline run's own 'pipeline-summary' artifact;
4. shrinks each PNG to a 256-colour palette (text and flat UI colours survive; ~5x smaller) and stops the server.

The grid is small so the pictures come quickly; they show what `dlm-triage run` shows, on fewer runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # flows.tempserver of this checkout, installed or not
    sys.path.insert(0, str(REPO))
GRID = ["--families", "tiny", "--ranks", "4", "--mask-ratios", "0.3,0.7", "--learning-rates", "0.01,0.05", "--seeds", "1,2,3",
        "--steps", "30"]
"""12 runs of the tiny family, 30 steps: two learning rates, so some runs go bad and a threshold is calibrated
(the embedded default adds families and runs; the pictures would take its ~7 minutes)."""


def _chromium() -> str:
    for p in (shutil.which("chromium"), "/usr/bin/chromium", shutil.which("chromium-browser"),
              shutil.which("google-chrome")):
        if p and Path(p).is_file():
            return p
    raise SystemExit("headless Chromium not found: install it (Debian: apt-get install -y chromium)")


def _free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _shoot(chromium: str, url: str, png: Path, size: tuple[int, int], wait_ms: int, tmp: Path) -> None:
    """One page into `png` at `size` (w, h): a fresh profile, no sync or updates, `wait_ms` of virtual time for
    the page's scripts (the Prefect UI is a single-page app that fetches its data after load)."""
    png.parent.mkdir(parents=True, exist_ok=True)
    profile = Path(tempfile.mkdtemp(prefix="profile-", dir=tmp))
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
           f"--virtual-time-budget={wait_ms}", f"--screenshot={png}", url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, HOME=str(tmp)),
                          cwd=tmp)
    if not png.is_file():
        raise SystemExit(f"no screenshot of {url}; chromium said:\n{proc.stderr[-2000:]}")
    _shrink(png)


def _shrink(png: Path) -> None:
    from PIL import Image

    img = Image.open(png).convert("RGB")
    img.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(png, optimize=True)


def _pipeline_run(api: str) -> tuple[str, str | None]:
    """(id of the newest pipeline flow run, id of its 'pipeline-summary' artifact or None)."""
    os.environ["PREFECT_API_URL"] = api
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["pipeline"])),
                                     sort=FlowRunSort.START_TIME_DESC, limit=1)
        if not runs:
            raise SystemExit("no pipeline flow run on the server: the run step failed")
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[runs[0].id])))
    art = next((a for a in arts if a.key == "pipeline-summary"), None)
    return str(runs[0].id), (str(art.id) if art else None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    ap.add_argument("--out", type=Path, default=REPO / "dlm-triage-out" / "screenshots",
                    help="output root of the run and the server's home (default: dlm-triage-out/screenshots)")
    ap.add_argument("--docs", type=Path, default=REPO / "docs", help="where the PNGs go (default: docs)")
    ap.add_argument("--port", type=int, default=4299, help="the Prefect server's port (default: 4299)")
    args = ap.parse_args(argv)
    from flows.tempserver import stop, wait_healthy

    chromium = _chromium()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if not _free(args.port):
        raise SystemExit(f"port {args.port} is in use: pass --port")
    api = f"http://127.0.0.1:{args.port}/api"
    env = dict(os.environ, PREFECT_HOME=str(out / "prefect-home"), PREFECT_API_URL=api,
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_API_URL=api,
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    prefect = [sys.executable, "-m", "prefect"]
    log = (out / "server.log").open("w")
    server = subprocess.Popen([*prefect, "server", "start", "--host", "127.0.0.1", "--port", str(args.port)],
                              stdout=log, stderr=subprocess.STDOUT, env=env, cwd=out, start_new_session=True)
    try:
        try:
            wait_healthy(server, api, 180, what="the Prefect server", fix="see the server log")
        except RuntimeError as e:
            raise SystemExit(f"{e} ({out / 'server.log'})") from None
        print(f"Prefect server at {api}; running the pipeline ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "cli", "--out", str(out), "run", *GRID], env=env,
                       cwd=REPO, check=True)
        run_id, art_id = _pipeline_run(api)
        with tempfile.TemporaryDirectory() as tmp:
            report = out / "reports" / "latest" / "report.html"
            _shoot(chromium, report.as_uri(), args.docs / "report-first-screen.png", (1280, 860), 2000, Path(tmp))
            ui = api.removesuffix("/api")
            _shoot(chromium, f"{ui}/runs/flow-run/{run_id}", args.docs / "prefect-flow-run.png",
                   (1440, 900), 20000, Path(tmp))
            if art_id:
                _shoot(chromium, f"{ui}/artifacts/artifact/{art_id}", args.docs / "prefect-pipeline-summary.png",
                       (1440, 1100), 20000, Path(tmp))
        for png in sorted(args.docs.glob("*.png")):
            print(f"{png} ({png.stat().st_size // 1024} KiB)")
    finally:
        stop(server, 30, group=True)  # its own session: `prefect server start` and the uvicorn it runs
        log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
