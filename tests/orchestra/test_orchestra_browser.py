"""orchestra in a real browser: Debian's headless Chromium driven by Playwright. Clicks from the
overview to an execution and its images, watches a running search's plot gain points without
a reload, submits the launch form and sees the batch run; a screenshot of each page is saved
under the test's tmp_path."""

from __future__ import annotations

import pytest

from tests.helpers import local_profile, write_script
from tests.orchestra.test_orchestra_http import PNG, SVG
from tests.orchestra.web import make_batch, serving

pytestmark = pytest.mark.timeout(120)
SEARCH_SCRIPT = """\
#!/usr/bin/env bash
for a in "$@"; do case $a in --x=*) x=${a#--x=};; esac; done
sleep 1  # slow enough that the page, plotly parsed, sees the search run
echo "RUNAWAY_FEATURES: $(python3 -c "import sys; print((float(sys.argv[1]) - 2) ** 2)" "$x")"
"""


def test_click_from_overview_to_an_execution_and_its_images(tmp_path, page):
    journal = make_batch(tmp_path / "runs" / "batch" / "pictures",
                         ["--lr=0.1", "--lr=0.01", "--lr=<b>bold</b>"],
                         ["completed", "failed", "running"])
    out = tmp_path / "runs" / "batch" / "pictures" / journal.rows()[0].uuid
    (out / "loss.png").write_bytes(PNG)
    (out / "curve.svg").write_text(SVG)
    (out / "stdout").write_text("epoch 1 <script>document.title='owned'</script>\n")
    shots = tmp_path / "screenshots"
    with serving(tmp_path / "runs") as server:
        page.goto(server.url + "/")
        page.screenshot(path=shots / "overview.png", full_page=True)
        assert "completed 1" in page.inner_text("#records")
        page.click("text=pictures")
        page.wait_for_selector("table.executions")
        assert page.inner_text("table.executions").count("node7 / node7/3") == 3
        assert "<b>bold</b>" in page.inner_text("table.executions")  # as text, not bold
        page.screenshot(path=shots / "batch.png", full_page=True)
        page.click("table.executions >> text=1 >> nth=0")
        page.wait_for_selector("#stdout")
        assert "<script>" in page.inner_text("#stdout") and page.title() != "owned"
        for name in ("loss.png", "curve.svg"):
            image = page.locator(f"img[alt='{name}']")
            assert image.evaluate("i => i.complete && i.naturalWidth > 0"), name  # drawn
        page.screenshot(path=shots / "execution.png", full_page=True)
        page.click("#stdout-whole")
        assert "epoch 1 <script>" in page.inner_text("body")
    assert all((shots / f).stat().st_size > 5000 for f in
               ("overview.png", "batch.png", "execution.png"))


def test_launch_a_search_and_watch_its_plot_gain_points_without_reload(tmp_path, page):
    script = write_script(tmp_path / "code", "quad.sh", SEARCH_SCRIPT)
    with serving(tmp_path) as server:
        page.goto(server.url + "/launch")
        page.check("input[value=search]")
        page.fill("input[name=profile]", str(local_profile(tmp_path, slots=2)))
        page.fill("input[name=script]", str(script))
        page.fill("input[name=name]", "quad")
        page.fill("input[name=priors]", "--x~'uniform(-5, 10)'")
        page.fill("input[name=n]", "12")
        page.fill("input[name=parallel]", "2")
        page.click("#start")
        page.wait_for_url("**/search/*")
        page.evaluate("window.sameDocument = true")
        page.wait_for_function("Number(document.body.dataset.points || 0) >= 2")
        early = _points(page)
        page.wait_for_function("Number(document.body.dataset.points) >= 12", timeout=60000)
        assert page.evaluate("window.sameDocument === true")  # the page never reloaded
        assert 2 <= early < 12 and _points(page) == 12
        assert page.locator("#best tbody tr").count() == 10
        assert page.evaluate("document.getElementById('fig-parallel').data[0].type") \
            == "parcoords"
        page.screenshot(path=tmp_path / "screenshots" / "search.png", full_page=True)


def _points(page) -> int:
    """Markers drawn in the objective-per-trial figure now."""
    return page.evaluate("document.getElementById('fig-history').data[0].x.length")


def test_submit_the_launch_form_and_see_the_batch_run(tmp_path, page):
    script = write_script(tmp_path / "code", "job.sh",
                          '#!/usr/bin/env bash\nsleep 1\necho "ran $*"\n')
    with serving(tmp_path) as server:
        page.goto(server.url + "/launch")
        page.screenshot(path=tmp_path / "screenshots" / "launch.png", full_page=True)
        page.fill("input[name=profile]", str(local_profile(tmp_path, slots=2)))
        page.fill("input[name=script]", str(tmp_path / "nosuch.sh"))
        page.click("#start")
        assert "no such script" in page.inner_text("#launch-error")  # the form, kept
        assert page.problems == ["console: Failed to load resource: the server responded "
                                 "with a status of 400 (Bad Request)"]
        page.problems.clear()
        page.fill("input[name=script]", str(script))
        page.fill("input[name=template]", "--k={1;2;3;4}")
        page.fill("input[name=name]", "fromform")
        page.click("#start")
        page.wait_for_url("**/batch/*")
        page.evaluate("window.sameDocument = true")
        page.wait_for_selector(".summary .state.running")
        page.wait_for_function(
            "document.querySelector('.summary').innerText.includes('completed 4')",
            timeout=60000)
        page.wait_for_function(  # the table follows without a reload
            "document.querySelectorAll('td.state.completed').length === 4")
        assert page.evaluate("window.sameDocument === true")
        page.screenshot(path=tmp_path / "screenshots" / "launched.png", full_page=True)
        page.goto(server.url + "/")
        assert "fromform" in page.inner_text("#records")
