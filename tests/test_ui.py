"""The /ui page in a real headless Chromium (Debian's, driven by playwright) against a real server: an upload
plays in the page and its timeline follows it (three lanes, a legend, the current window, click to seek);
live mode streams Chromium's fake camera and microphone over the WebSocket and draws windows as they come."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.test_serving import shared_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         # a camera and a microphone without a device or a prompt: a test pattern and a beep
         "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
         "--autoplay-policy=no-user-gesture-required"]

pytestmark = pytest.mark.browser


@pytest.fixture(scope="session")
def page_url(tiny_exported, tmp_path_factory, request):
    return shared_server(tiny_exported[0], tmp_path_factory, request) + "/ui/"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} missing: install Debian's browser with `apt-get install -y chromium` "
                    "(`make test` does, as root)")
    sync_api = pytest.importorskip("playwright.sync_api")
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(str(profile), executable_path=CHROMIUM, args=FLAGS,
                                                       viewport={"width": 1280, "height": 900})
        yield context
        context.close()


@pytest.fixture(scope="module")
def page(browser, page_url):
    page = browser.new_page()
    page.goto(page_url)
    yield page
    page.close()


def test_upload_shows_label_and_each_modality(page, media_dir):
    page.set_input_files("#file", str(media_dir / "cremad_1001_DFA_ANG_XX.flv"))
    page.click("#classify")
    page.wait_for_function("document.getElementById('label').textContent.length > 0", timeout=60_000)
    assert page.text_content("#label") in {"alpha", "beta", "gamma", "delta"}
    assert page.locator("#modalities [data-modality]").evaluate_all("els => els.map(e => e.dataset.modality)") \
        == ["audio", "video"]
    assert "cremad_1001_DFA_ANG_XX.flv" in page.text_content("#meta")
    assert page.text_content("#error") == ""
    assert page.locator("#lane-fused i[data-i]").count() == 1  # the one window classified


def test_classify_on_a_long_file_says_which_part_was_classified(page, media_dir):
    page.set_input_files("#file", str(media_dir / "bbb_vp8_vorbis_30s.webm"))
    page.evaluate("document.getElementById('span').textContent = ''")
    page.click("#classify")
    page.wait_for_function("document.getElementById('span').textContent.length > 0", timeout=60_000)
    assert page.text_content("#span").startswith("classified 0.00-2.00 s of the file")


def test_timeline_plays_with_the_video_in_three_lanes(page, media_dir):
    page.set_input_files("#file", str(media_dir / "bbb_vp8_vorbis_30s.webm"))
    # the picked file plays in the page from a local object URL (it is not uploaded to be played)
    assert page.eval_on_selector("#player", "v => v.src").startswith("blob:")
    page.click("#timeline")
    page.wait_for_function("document.getElementById('label').textContent.length > 0 && "
                           "!document.getElementById('result').hidden", timeout=90_000)
    assert page.locator("#windows tr").count() == 15  # 30 s in the tiny model's 2 s windows
    assert page.locator("#windows tr").first.locator("td").first.text_content() == "0.00"
    for lane in ("fused", "audio", "video"):
        assert page.locator(f"#lane-{lane} i[data-i]").count() == 15
    assert page.text_content("#span") == "whole file: 15 windows, 0.00-30.00 s"
    labels = set(page.locator("#lane-fused i[data-label], #lane-audio i[data-label], #lane-video i[data-label]")
                 .evaluate_all("els => els.map(e => e.dataset.label)"))
    legend = set(page.locator("#legend .key[data-label]").evaluate_all("els => els.map(e => e.dataset.label)"))
    assert labels and labels == legend  # every colour on the lanes is in the legend

    # a click on a window seeks the video there; the window under the playhead is highlighted
    page.locator("#lane-audio i[data-i='6']").click()
    page.wait_for_function("Math.abs(document.getElementById('player').currentTime - 12) < 0.05", timeout=10_000)
    assert page.locator(".lane .cells i.current").evaluate_all("els => els.map(e => e.dataset.i)") == ["6"] * 3
    assert page.text_content("#current-span") == "at the playhead: window 12.00-14.00 s"
    # as the video plays, the highlight follows it
    page.evaluate("v => { v.currentTime = 21.3; }", page.query_selector("#player"))
    page.wait_for_function("document.querySelector('#lane-fused i.current')?.dataset.i === '10'", timeout=10_000)


def test_bad_file_shows_the_error(page, tmp_path):
    bad = tmp_path / "notes.mp4"
    bad.write_text("not a video\n")
    page.set_input_files("#file", str(bad))
    page.click("#classify")
    page.wait_for_function("document.getElementById('error').textContent.length > 0", timeout=30_000)
    assert page.text_content("#error").startswith("notes.mp4:")
    assert page.is_hidden("#result")


def test_live_camera_and_microphone(browser, page_url):
    """Chromium's fake camera and microphone, recorded and sent over /live/ws: windows arrive with both
    modalities' opinions and their latency; Stop ends with the summary."""
    page = browser.new_page()
    try:
        page.goto(page_url)
        page.click("#tab-live")
        page.click("#live-start")
        page.wait_for_function("window.mmLive.windows >= 3", timeout=60_000)
        live = page.evaluate("window.mmLive")
        assert live["error"] is None and live["firstResultMs"] > 0 and live["latencyMs"] >= 0
        assert page.text_content("#current-label") in {"alpha", "beta", "gamma", "delta"}
        assert page.locator("#current-modalities [data-modality]").evaluate_all(
            "els => els.map(e => e.dataset.modality)") == ["audio", "video"]
        for lane in ("fused", "audio", "video"):
            assert page.locator(f"#lane-{lane} i[data-label]").count() >= 3
        assert page.text_content("#stat-latency").endswith(" ms")
        assert page.eval_on_selector("#player", "v => v.srcObject !== null")  # the camera plays in the page
        page.click("#live-stop")
        page.wait_for_function("window.mmLive.summary !== null", timeout=30_000)
        summary = page.evaluate("window.mmLive.summary")
        assert summary["windows"] >= 3 and summary["source"] == "browser"
        assert page.text_content("#status").startswith("Stopped: ")
    finally:
        page.close()
