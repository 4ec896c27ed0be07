"""The annotation page in a real browser: headless Chromium from the OS packages, driven by
Playwright (executable_path: the system binary; no browser download).

Loads the page, labels 5 pairs with the keyboard, reloads and finds the progress kept, and checks
that replies holding <script> and markup render as text and never run. RLAIF_SCREENSHOT=FILE.png
also saves a screenshot of the page there.
"""

import json
import os
import shutil
from pathlib import Path

import pytest

from rlaif.annotate.store import Store
from annotate_server import start_server, stop

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def browser_page(tmp_path):
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra (make install)")
    if not (Path(CHROMIUM).exists() or shutil.which("chromium")):
        pytest.skip(f"no system chromium at {CHROMIUM}: apt-get install -y chromium (.ci/run does this)")
    with playwright.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
            headless=True, args=ARGS, viewport={"width": 1200, "height": 900})
        page = context.new_page()
        page.set_default_timeout(10_000)
        try:
            yield page
        finally:
            context.close()


def hostile_pairs(path: Path, n: int = 7) -> None:
    """Pairs whose texts carry markup and script, as red-team data does."""
    rows = [{"prompt": f"Question {i}: what does <b>bold</b> do? <img src=x onerror=\"window.pwned=1\">",
             "response_a": f"<script>window.pwned = {i}; document.title = 'pwned'</script>Reply one to {i}.",
             "response_b": f"A plain second reply to question {i}, with a </div> stray closing tag."} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_label_five_pairs_with_the_keyboard_reload_and_script_stays_text(tmp_path, browser_page):
    page = browser_page
    pairs, db = tmp_path / "pairs.jsonl", tmp_path / "labels.sqlite"
    hostile_pairs(pairs)
    proc, base = start_server(db, "--pairs", pairs, annotator="alice")
    try:
        page.goto(base + "/")
        assert page.inner_text("#progress") == "0/7" and page.inner_text("#annotator") == "alice"
        for i, point in enumerate([1, 3, 5, 8, 2]):
            page.keyboard.press(str(point))
            assert page.is_checked(f"#point{point}")
            page.keyboard.press("n")
            page.wait_for_function(f"document.getElementById('progress').textContent === '{i + 1}/7'")
        page.reload()
        assert page.inner_text("#progress") == "5/7"
        # the data's markup is text: the script is shown, not run; no element came from the data
        texts = page.inner_text("#reply-a") + page.inner_text("#reply-b")
        assert "<script>window.pwned" in texts and "</div> stray" in texts
        assert "<b>bold</b>" in page.inner_text(".conversation")
        assert page.evaluate("window.pwned") is None and page.title() != "pwned"
        assert page.query_selector_all("main script, main img, .conversation b") == []
        # n without a choice does not save; s skips
        page.keyboard.press("n")
        assert "Pick a point" in page.inner_text("#note") and page.inner_text("#progress") == "5/7"
        page.keyboard.press("3")
        shot = os.environ.get("RLAIF_SCREENSHOT")
        page.screenshot(path=shot or str(tmp_path / "page.png"), full_page=True)
        page.keyboard.press("s")
        page.wait_for_function("document.getElementById('progress').textContent === '6/7'")
    finally:
        stop(proc)
    labels = Store(db).labels()
    assert sum(x["status"] == "label" for x in labels) == 5 and sum(x["status"] == "skip" for x in labels) == 1
    # the keys pressed, read back on the sides each pair was shown on
    shown = sorted(9 - x["point"] if x["flipped"] else x["point"] for x in labels if x["status"] == "label")
    assert shown == [1, 2, 3, 5, 8]
