"""The /ui page in a real headless Chromium (Debian's, driven by playwright) against a real server."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.test_serving import shared_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.browser


@pytest.fixture(scope="session")
def page_url(tiny_exported, tmp_path_factory, request):
    return shared_server(tiny_exported[0], tmp_path_factory, request) + "/ui/"


@pytest.fixture(scope="module")
def page(page_url):
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} missing: install Debian's browser with `apt-get install -y chromium` "
                    "(`make test` does, as root)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page()
        page.goto(page_url)
        yield page
        browser.close()


def test_upload_shows_label_and_each_modality(page, media_dir):
    page.set_input_files("#file", str(media_dir / "cremad_1001_DFA_ANG_XX.flv"))
    page.click("#classify")
    page.wait_for_function("document.getElementById('label').textContent.length > 0", timeout=60_000)
    assert page.text_content("#label") in {"alpha", "beta", "gamma", "delta"}
    assert page.locator("#modalities [data-modality]").evaluate_all("els => els.map(e => e.dataset.modality)") \
        == ["audio", "video"]
    assert "cremad_1001_DFA_ANG_XX.flv" in page.text_content("#meta")
    assert page.text_content("#error") == ""


def test_classify_on_a_long_file_says_which_part_was_classified(page, media_dir):
    page.set_input_files("#file", str(media_dir / "bbb_vp8_vorbis_30s.webm"))
    page.evaluate("document.getElementById('span').textContent = ''")
    page.click("#classify")
    page.wait_for_function("document.getElementById('span').textContent.length > 0", timeout=60_000)
    assert page.text_content("#span").startswith("classified 0.00-2.00 s of the file")


def test_timeline_of_a_long_file(page, media_dir):
    page.set_input_files("#file", str(media_dir / "bbb_vp8_vorbis_30s.webm"))
    page.click("#timeline")
    page.wait_for_function("document.getElementById('label').textContent.length > 0 && "
                           "!document.getElementById('result').hidden", timeout=90_000)
    rows = page.locator("#windows tr")
    assert rows.count() == 15  # 30 s in the tiny model's 2 s windows
    assert rows.first.locator("td").first.text_content() == "0.00"
    assert page.locator("#strip div").count() == 15
    assert page.text_content("#span") == "whole file: 15 windows, 0.00-30.00 s"


def test_bad_file_shows_the_error(page, tmp_path):
    bad = tmp_path / "notes.mp4"
    bad.write_text("not a video\n")
    page.set_input_files("#file", str(bad))
    page.click("#classify")
    page.wait_for_function("document.getElementById('error').textContent.length > 0", timeout=30_000)
    assert page.text_content("#error").startswith("notes.mp4:")
    assert page.is_hidden("#result")
