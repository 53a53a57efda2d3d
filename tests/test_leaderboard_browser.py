"""The leaderboard site in a real headless browser (Debian's chromium + chromium-driver, driven by
selenium): it loads offline without console errors, sorts, shows escaped names as text, opens panels.

`.ci/run` installs chromium, chromium-driver and selenium; elsewhere the test is skipped, saying why."""

import shutil

import pytest

from harness.leaderboard import collect, submissions_from
from harness.site import write_site

from leaderboard_helpers import make_result, scores, write

EVIL = "<script>alert(1)</script>"


def _browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install selenium; .ci/run installs it)")
    binary = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    driver = shutil.which("chromedriver")
    if binary is None or driver is None:
        pytest.skip("no headless browser: needs Debian's chromium and chromium-driver "
                    "(apt-get install chromium chromium-driver; .ci/run installs them)")
    options = Options()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1400,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(options=options, service=Service(driver))
    browser.set_page_load_timeout(120)
    return browser


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    folder = tmp_path_factory.mktemp("results")
    for seed in range(3):
        write(folder, make_result("alpha", seed, metrics=scores(10 + seed, 20 - seed), index=0))
        write(folder, make_result("beta", seed, metrics=scores(30 + seed, 25 + seed), index=1))
    write(folder, make_result(EVIL, 0, status="failed", error="RuntimeError: <b>boom</b>", index=2))
    out = tmp_path_factory.mktemp("site")
    write_site(collect(submissions_from([str(folder)])), out)
    return out


@pytest.fixture(scope="module")
def browser():
    browser = _browser()
    yield browser
    browser.quit()


def _open(browser, page):
    browser.get(page.as_uri())
    return [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


def _order(browser):
    return browser.execute_script(
        "return Array.from(document.querySelectorAll('table.board tbody.method'), b => b.dataset.method)")


def _header(browser, text):
    from selenium.webdriver.common.by import By
    return next(b for b in browser.find_elements(By.CSS_SELECTOR, "thead button.sort") if b.text.startswith(text))


def test_pages_load_offline_without_console_errors(browser, site):
    from selenium.webdriver.common.by import By
    for page in (site / "index.html", site / "bench.html"):
        assert _open(browser, page) == []
        # every asset is inline: the page made no request at all
        assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0
    _open(browser, site / "index.html")
    browser.find_element(By.LINK_TEXT, "bench").click()
    assert browser.title == "bench · leaderboard"


def test_clicking_a_header_sorts_the_rows_in_the_metrics_direction(browser, site):
    _open(browser, site / "bench.html")
    assert _order(browser) == ["alpha", "beta", EVIL]  # the benchmark file's order
    r_at_1 = _header(browser, "retrieval/t2i_R@1")
    r_at_1.click()  # higher is better: best first, rows without a value last
    assert _order(browser) == ["beta", "alpha", EVIL]
    r_at_1.click()
    assert _order(browser) == ["alpha", "beta", EVIL]
    _header(browser, "retrieval/t2i_medr").click()  # lower is better: smallest first
    assert _order(browser) == ["alpha", "beta", EVIL]
    _header(browser, "retrieval/t2i_medr").click()
    assert _order(browser) == ["beta", "alpha", EVIL]
    _header(browser, "method").click()
    assert _order(browser) == sorted(["alpha", "beta", EVIL])
    sort = browser.execute_script("return Array.from(document.querySelectorAll('thead th'), "
                                  "th => th.getAttribute('aria-sort'))")
    assert sort[0] == "ascending" and set(sort[1:]) == {None}


def test_an_escaped_name_is_shown_as_text(browser, site):
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By
    _open(browser, site / "bench.html")
    names = [b.text for b in browser.find_elements(By.CSS_SELECTOR, "button.toggle")]
    assert EVIL in names
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018 - the script in the name never ran
    assert browser.execute_script("return document.querySelectorAll('b').length") == \
        browser.execute_script("return document.querySelectorAll('p.legend b').length")


def test_the_expandable_panel_opens_and_closes(browser, site):
    from selenium.webdriver.common.by import By
    _open(browser, site / "bench.html")
    button = next(b for b in browser.find_elements(By.CSS_SELECTOR, "button.toggle") if b.text == "beta")
    panel = browser.find_element(By.ID, button.get_attribute("aria-controls"))
    assert not panel.is_displayed()
    button.click()
    assert panel.is_displayed() and button.get_attribute("aria-expanded") == "true"
    assert '"temperature": 0.07' in panel.text and "abc123def4 (uncommitted changes)" in panel.text
    link = panel.find_element(By.PARTIAL_LINK_TEXT, "seed-0.json")
    assert link.get_attribute("href").endswith("/bench/beta/seed-0.json")
    button.click()
    assert not panel.is_displayed()
    evil = next(b for b in browser.find_elements(By.CSS_SELECTOR, "button.toggle") if b.text == EVIL)
    evil.click()
    error_panel = browser.find_element(By.ID, evil.get_attribute("aria-controls"))
    assert "RuntimeError: <b>boom</b>" in error_panel.text  # shown as text, not markup
