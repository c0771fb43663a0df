"""The editor page in a real headless browser: load a demo photo, move a slider, upload a
bad file."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait


def _pixels(data_url: str) -> np.ndarray:
    assert data_url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGB"))


def _wait(driver, cond, timeout=30, what="condition"):
    return WebDriverWait(driver, timeout).until(lambda d: cond(d), message=f"timed out waiting for {what}")


def _idle(driver) -> bool:
    """The page has no edit in flight or pending and shows its latest request."""
    return driver.execute_script("const s = window.sliderEditor; return !s.inflight && !s.dirty && s.shownSeq === s.seq;")


def _open(driver, live_server):
    driver.get(live_server.url + "/")
    _wait(driver, lambda d: d.execute_script("return document.body.dataset.ready === '1'"), what="page ready")
    return driver.execute_script("return window.sliderEditor.sid")


@pytest.fixture(scope="module")
def page(browser, live_server):
    sid = _open(browser, live_server)
    photos = [o.get_attribute("value") for o in browser.find_elements(By.CSS_SELECTOR, "#photo-select option")]
    assert "00000.jpg" in photos  # the demo world's photos are offered
    Select(browser.find_element(By.ID, "photo-select")).select_by_value("00000.jpg")
    _wait(browser, lambda d: d.execute_script("return window.sliderEditor.hasPhoto") and _idle(d), what="photo loaded")
    return browser, sid


def test_page_lists_sliders_and_expressions(page, serve_editor):
    driver, _ = page
    sliders = driver.find_elements(By.CSS_SELECTOR, "#sliders input[type=range]")
    assert len(sliders) == serve_editor.n_params
    labels = [el.text for el in driver.find_elements(By.CSS_SELECTOR, "#sliders label")]
    assert labels == serve_editor.exp_names and labels[0] == "jaw_open"
    assert all(s.get_attribute("min") == "-1" and s.get_attribute("max") == "1" for s in sliders)
    names = [b.text for b in driver.find_elements(By.CSS_SELECTOR, "#expression-buttons button")]
    assert names == ["neutral", "anger", "disgust", "fear", "happiness", "sadness", "surprise"]
    assert driver.find_element(By.ID, "message").is_displayed() is False


def test_slider_move_changes_image_and_sends_slider_values(page, live_server):
    driver, sid = page
    before = driver.find_element(By.ID, "edited").get_attribute("src")
    render_before = driver.find_element(By.ID, "render").get_attribute("src")
    seq_before = driver.execute_script("return window.sliderEditor.seq")
    slider = driver.find_element(By.ID, "slider-1")  # "smile"
    start = float(slider.get_attribute("value"))
    slider.click()
    for _ in range(5):
        slider.send_keys(Keys.ARROW_RIGHT if start < 0.5 else Keys.ARROW_LEFT)  # real key events, 0.01 steps
    _wait(driver, lambda d: d.execute_script("return window.sliderEditor.seq") > seq_before and _idle(d),
          what="edit shown")
    values = [float(el.get_attribute("value")) for el in driver.find_elements(By.CSS_SELECTOR, "#sliders input")]
    assert values[1] != start
    sent = driver.execute_script("return window.sliderEditor.lastSent.p")
    assert sent == pytest.approx(values, abs=1e-9)  # the page sent exactly the slider values
    status, state = live_server.get_json(f"/api/state?sid={sid}")
    assert status == 200 and state["photo"] == "00000.jpg"
    assert state["p"] == pytest.approx(values, abs=1e-6)  # ... and the server edited with them
    after = driver.find_element(By.ID, "edited").get_attribute("src")
    assert after != before
    assert np.abs(_pixels(after).astype(int) - _pixels(before).astype(int)).max() > 0
    assert driver.find_element(By.ID, "render").get_attribute("src") != render_before
    assert "update" in driver.find_element(By.ID, "latency").text


def test_expression_and_neutralise_buttons_set_sliders(page, live_server, serve_editor):
    driver, sid = page
    driver.find_element(By.CSS_SELECTOR, "#expression-buttons button[data-expression=happiness]").click()
    _wait(driver, _idle, what="edit shown")
    want = np.clip(serve_editor.prototypes()["happiness"], -1, 1)
    values = [float(el.get_attribute("value")) for el in driver.find_elements(By.CSS_SELECTOR, "#sliders input")]
    assert values == pytest.approx(np.round(want, 2), abs=1e-6)
    assert live_server.get_json(f"/api/state?sid={sid}")[1]["p"] == pytest.approx(values, abs=1e-6)
    driver.find_element(By.ID, "neutralise").click()
    _wait(driver, lambda d: _idle(d) and all(
        float(el.get_attribute("value")) == 0.0 for el in d.find_elements(By.CSS_SELECTOR, "#sliders input")),
        what="neutral sliders")
    _wait(driver, lambda d: live_server.get_json(f"/api/state?sid={sid}")[1]["p"] == [0.0] * serve_editor.n_params,
          what="server edited with p = 0")


def test_bad_upload_shows_message_and_server_keeps_serving(page, live_server, tmp_path):
    driver, sid = page
    bad = tmp_path / "notes.jpg"
    bad.write_bytes(b"this is not an image at all\n" * 10)
    driver.find_element(By.ID, "file-input").send_keys(str(bad))
    _wait(driver, lambda d: "not an image" in d.find_element(By.ID, "message").text, what="error message")
    msg = driver.find_element(By.ID, "message")
    assert msg.is_displayed() and "notes.jpg" in msg.text
    # the server still answers, and the tab still edits the photo it had
    assert live_server.get_json("/api/info")[0] == 200
    seq = driver.execute_script("return window.sliderEditor.seq")
    driver.find_element(By.ID, "random").click()
    _wait(driver, lambda d: d.execute_script("return window.sliderEditor.seq") > seq and _idle(d), what="edit after error")
    assert live_server.get_json(f"/api/state?sid={sid}")[1]["photo"] == "00000.jpg"


def test_no_face_upload_is_reported(page, tmp_path):
    driver, _ = page
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (160, 160, 3), dtype=np.uint8)).save(noise)
    driver.find_element(By.ID, "file-input").send_keys(str(noise))
    _wait(driver, lambda d: "no face" in d.find_element(By.ID, "message").text, what="no-face message")


def test_two_tabs_have_separate_sessions(browser, live_server, page):
    driver, sid = page
    first = driver.current_window_handle
    driver.switch_to.new_window("tab")
    try:
        sid2 = _open(driver, live_server)
        assert sid2 != sid
        assert live_server.get_json(f"/api/state?sid={sid2}")[1]["photo"] is None
    finally:
        driver.close()
        driver.switch_to.window(first)
