"""
Open an HTML report in headless Chromium, the way tests/test_report.py checks it, and save a screenshot of its top.

    $ python scripts/screenshot.py --report=runs/demo/disc/report.html --out=docs/report.png
    $ python scripts/screenshot.py --report=runs/demo/report.html --out=sweep.png --height=700

Needs the Python package playwright (requirements-dev.txt) and a Chromium executable: $CHROMIUM, else Debian's
/usr/bin/chromium (apt-get install chromium). Nothing is downloaded (no `playwright install`). The page must load
without a console error, a failed request or a request that leaves the file system; the PNG is saved with at most
256 colours, which keeps a page of text and plots small.
"""

import contextlib
import os
import re
import shutil
import sys
from io import BytesIO
from pathlib import Path

from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from utils.config import ConfigError, apply_overrides, run_cli  # noqa: E402
from utils.files import atomic_write, check_outputs  # noqa: E402

# -----------------------------------------------------------------------------
report = ""  # the HTML file to open
out = ""  # the PNG to write
width = 1280  # viewport in CSS pixels
height = 1500  # the height of the screenshot, from the top of the page
debug = False  # show Python tracebacks for user errors
# -----------------------------------------------------------------------------
config_keys = ["report", "out", "width", "height", "debug"]

CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
NOT_FILE = re.compile(r"^(?!file:|data:|about:)")  # any request a report must not make


def find_chromium():
    """The Chromium executable to drive: $CHROMIUM, else the first of CHROMIUM_PATHS or `chromium` on PATH; None if none."""
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    return next((p for p in CHROMIUM_PATHS if os.access(p, os.X_OK)), None) or shutil.which("chromium")


@contextlib.contextmanager
def open_page(path, viewport=(1280, 900)):
    """Yield (page, problems): the HTML file at path loaded in headless Chromium, and a list that collects every
    console error, page error, failed request and request for anything but a local file while the page is open."""
    from playwright.sync_api import sync_playwright

    executable = find_chromium()
    if not executable:
        raise ConfigError(f"no Chromium found ({', '.join(CHROMIUM_PATHS)}); apt-get install chromium, or set CHROMIUM=/path")
    problems = []
    with sync_playwright() as playwright:
        # --no-sandbox: Chromium refuses to run its sandbox as root, as CI does
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
            page.on("console", lambda message: message.type == "error" and problems.append(f"console error: {message.text}"))
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            page.on("requestfailed", lambda request: problems.append(f"failed request: {request.url} ({request.failure})"))

            def refuse(route):
                problems.append(f"request outside the file system: {route.request.url}")
                route.abort()

            page.route(NOT_FILE, refuse)
            page.goto(Path(path).resolve().as_uri(), wait_until="load")
            yield page, problems
        finally:
            browser.close()


def main():
    apply_overrides(globals(), sys.argv[1:], config_keys)
    if not os.path.isfile(report):
        raise ConfigError(f"--report={report}: no such file")
    if not out.endswith(".png"):
        raise ConfigError(f"--out={out}: must be a .png file")
    check_outputs(f"out={out}", os.path.dirname(out), [os.path.basename(out)])
    try:
        import playwright  # noqa: F401
    except ImportError:
        raise ConfigError("playwright is not installed: pip install -r requirements-dev.txt") from None
    with open_page(report, (width, height)) as (page, problems):
        picture = page.screenshot(clip={"x": 0, "y": 0, "width": width, "height": height})
    if problems:
        raise ConfigError(f"{report}: {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    small = Image.open(BytesIO(picture)).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
    atomic_write(out, lambda f: small.save(f, format="PNG", optimize=True))
    print(f"wrote {out} ({os.path.getsize(out) / 1024:.0f} KiB, {width}x{height})")


if __name__ == "__main__":
    run_cli(main, lambda: debug)
