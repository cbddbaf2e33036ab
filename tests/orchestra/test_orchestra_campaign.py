"""orchestra over expegit campaigns made by the real `expegit init` and `expegit run` on the
local scheduler: the overview, the campaign's table (filters, sort, pages), an execution with
its commit, patch, streams, images and files, traversal and bad input over HTTP; and in the
browser a click-through and counts that move while a run goes on."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from expegit.record import all_records
from orchestra.discovery import entry_id
from tests.helpers import local_profile
from tests.orchestra.test_orchestra_http import EVIL, PNG
from tests.orchestra.web import GIT_IDENTITY, expegit, git, make_batch, make_campaign, serving

pytestmark = pytest.mark.timeout(240)
SVG = '<svg xmlns="http://www.w3.org/2000/svg" width="40" height="40"><rect width="40" ' \
      'height="40" fill="teal"/></svg>'
ODD = "<img src=x onerror=alert(1)>.txt"  # a file name a script chose
IMG = f"""#!/usr/bin/env bash
echo "lr $1 {EVIL}"
echo "careful with $1" >&2
mkdir -p plots
python3 -c "import sys; open('plots/loss.png', 'wb').write(bytes.fromhex(sys.argv[1]))" \\
  {PNG.hex()}
printf '%s\\n' '{SVG}' > curve.svg
echo weights > model.bin
echo odd > '{ODD}'
"""
FAIL = '#!/usr/bin/env bash\necho "broke: $*" >&2\nexit 3\n'
SLOW = '#!/usr/bin/env bash\nsleep "${1#--t=}"\necho "slept $1"\n'


def cid(folder: Path) -> str:
    return entry_id((folder / "expegit.yml").resolve())


@pytest.fixture(scope="module")
def camp(tmp_path_factory):
    """A campaign of 56 records: 54 of img.sh, a failure, and a run of a dirty code/."""
    root = tmp_path_factory.mktemp("camps")
    profile = str(local_profile(tmp_path_factory.mktemp("profile"), slots=4))
    folder = make_campaign(root / "study", {"img.sh": IMG, "fail.sh": FAIL})
    expegit("run", profile, "img.sh", "--param", "lr=0.1,0.2,0.3", "-x", "18", cwd=folder)
    assert expegit("run", profile, "fail.sh", "--", "oops", cwd=folder,
                   check=False).returncode == 1
    (folder / "code" / "img.sh").write_text(IMG + "# tuned by hand\n")
    expegit("run", profile, "img.sh", "--dirty", "--param", "lr=9", cwd=folder)
    recs = list(all_records(folder / "runs"))  # expegit's own reader: what the pages must show
    assert len(recs) == 56
    first = next(r for r in recs if r.parameters.get("lr") == 0.1)
    out = folder / "runs" / first.id
    (out / "escape").symlink_to("/etc/passwd")
    (out / "outside").symlink_to(root)
    (out / "inside").symlink_to(out / "stdout")
    (folder / "runs" / "linked").symlink_to(root)  # a record folder that points out
    make_batch(root / "batch" / "neighbour", ["x"], ["completed"])
    with serving(root) as server:
        yield server, folder, recs, first


def test_the_overview_shows_the_campaign_with_its_counts(camp):
    server, folder, _, _ = camp
    page = server.get("/")
    assert page.status == 200
    row = re.search(rf'<tr data-id="{cid(folder)}">(.*?)</tr>', page.body, re.S)[1]
    assert "campaign" in row and f'href="/campaign/{cid(folder)}"' in row
    assert "completed 55" in row and "failed 1" in row and '"total">56<' in row
    assert "neighbour" in page.body  # batches beside it still found


def test_the_campaign_table_filters_sorts_and_pages_on_the_server(camp):
    server, folder, recs, _ = camp
    url = f"/campaign/{cid(folder)}"
    first = server.get(url)
    assert first.status == 200 and "56 matching" in first.body and "page 1 of 2" in first.body
    assert first.body.count('<tr class="') == 50
    assert server.get(url + "?page=2").body.count('<tr class="') == 6
    failed = server.get(url + "?state=failed")
    assert "1 matching" in failed.body and '<td class="args">oops</td>' in failed.body
    assert "18 matching" in server.get(url + "?q=--lr%3D0.2").body
    head = git(folder / "code", "rev-parse", "HEAD").strip()
    assert "56 matching" in server.get(url + f"?commit={head[:7]}").body
    assert "1 matching" in server.get(url + f"?commit={head[:12]}%2Bpatch").body  # the dirty
    assert "0 matching" in server.get(url + "?commit=ffff").body
    ids = re.findall(rf'href="{url}/([\w-]+)"', server.get(url + "?sort=id&desc=1").body)
    assert ids == sorted((r.id for r in recs), reverse=True)[:50]
    by_start = re.findall(rf'href="{url}/([\w-]+)"', server.get(url + "?page=2").body)
    assert by_start == [r.id for r in sorted(recs, key=lambda r: (r.started, r.id))][50:]


def test_a_campaign_execution_shows_its_record_streams_images_and_files(camp):
    server, folder, _, first = camp
    base = f"/campaign/{cid(folder)}/{first.id}"
    page = server.get(base)
    assert page.status == 200
    assert EVIL not in page.body and "lr --lr=0.1 &lt;script&gt;" in page.body
    assert "careful with --lr=0.1" in page.body
    assert f"<code>{first.commit}</code>" in page.body and "patch" not in re.search(
        r'<td id="commit">(.*?)</td>', page.body)[1]
    assert f'<td id="node">{first.node} / {first.slot}</td>' in page.body
    assert '<td id="ecode">0' in page.body and "<code>lr=0.1</code>" in page.body
    for name in ("plots/loss.png", "curve.svg"):
        assert f'<img src="{base}/files/{name}"' in page.body
    assert f'href="{base}/files/model.bin?download=1"' in page.body
    assert "escape" not in page.body and "outside" not in page.body
    assert ODD not in page.body and "&lt;img src=x onerror=alert(1)&gt;.txt" in page.body
    odd = re.search(r'href="([^"]*onerror[^"]*)"', page.body)[1].replace("&amp;", "&")
    assert "<" not in odd and server.get(odd).body == "odd\n"
    assert server.get(base + "/files/plots/loss.png").headers["content-type"] == "image/png"
    whole = server.get(base + "/files/stdout")
    assert whole.headers["content-type"].startswith("text/plain") and EVIL in whole.body
    assert server.get(base + "/files/inside").status == 200  # a link that stays inside
    assert server.get(base + "/patch").status == 404  # a clean commit has none


def test_a_dirty_execution_shows_its_patch(camp):
    server, folder, recs, _ = camp
    dirty = next(r for r in recs if r.patch)
    base = f"/campaign/{cid(folder)}/{dirty.id}"
    page = server.get(base)
    assert f"+ patch <code>{dirty.patch[:12]}</code>" in page.body
    assert "# tuned by hand" in re.search(r'<pre id="patch">(.*?)</pre>', page.body, re.S)[1]
    whole = server.get(base + "/patch")
    assert whole.status == 200 and whole.headers["content-type"].startswith("text/plain")
    assert "+# tuned by hand" in whole.body


@pytest.mark.parametrize("path", [
    "../record.json/x", "..%2frecord.json", "%2e%2e%2f%2e%2e%2fexpegit.yml",
    "%2E%2E/%2E%2E/expegit.yml", "plots/../../../expegit.yml", "..%252fexpegit.yml",
    "/etc/passwd", "%2fetc%2fpasswd", "escape", "outside/study/expegit.yml", "plots",
    "nosuch", "stdout%00.png", "..\\..\\expegit.yml",
])
def test_campaign_file_views_stay_inside_the_record_folder(camp, path):
    server, folder, _, first = camp
    answer = server.get(f"/campaign/{cid(folder)}/{first.id}/files/{path}")
    assert answer.status == 404, (path, answer.status, answer.body[:200])
    assert "root:" not in answer.body and "schema" not in answer.body


@pytest.mark.parametrize("run", ["..", "%2e%2e", ".git", "..%2f..%2f", "%2e", "nosuch",
                                 ".gitkeep", "linked", "%2fetc", "x%00"])
def test_campaign_record_names_cannot_leave_runs(camp, run):
    server, folder, _, _ = camp
    for tail in ("", "/files/expegit.yml", "/files/stdout", "/files/study/expegit.yml",
                 "/patch"):
        answer = server.get(f"/campaign/{cid(folder)}/{run}{tail}")
        assert answer.status == 404, (run, tail, answer.status)
        assert "schema" not in answer.body


@pytest.mark.parametrize("path, status", [
    ("/campaign/{id}?page=abc", 400), ("/campaign/{id}?page=0", 400),
    ("/campaign/{id}?page=3", 404), ("/campaign/{id}?state=bogus", 400),
    ("/campaign/{id}?sort=started;drop", 400), ("/campaign/nosuch", 404),
    ("/campaign/nosuch/events", 404), ("/campaign/{batch}", 404), ("/batch/{id}", 404),
    ("/campaign/{batch}/x", 404),
])
def test_bad_campaign_urls_are_a_clear_4xx(camp, path, status):
    server, folder, _, _ = camp
    batch = entry_id((folder.parent / "batch" / "neighbour" / "journal.sqlite").resolve())
    answer = server.get(path.format(id=cid(folder), batch=batch))
    assert answer.status == status, answer.body[:300]
    assert "Traceback" not in answer.body


def test_a_new_campaign_and_its_running_executions_show_up_live(tmp_path):
    profile = str(local_profile(tmp_path / "profile", slots=2))
    served = tmp_path / "served"
    served.mkdir()
    with serving(served) as server:
        assert "Nothing found" in server.get("/").body
        folder = make_campaign(served / "late", {"slow.sh": SLOW})
        run = subprocess.Popen([sys.executable, "-m", "expegit", "run", profile, "slow.sh",
                                "--param", "t=2,2,2,2"], cwd=folder, env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            url = f"/campaign/{cid(folder)}"
            body = _wait(server, url, "running 2")
            assert 'driver <span class="alive">running' in body
            assert body.count('<td class="state running">') == 2  # in the table, unrecorded
            assert "running" in server.get("/").body
            flying = re.search(rf'href="({url}/[\w-]+)">\w+</a></td>\s*<td class="args">'
                               r'--t=2</td>\s*<td class="state running">', body)[1]
            one = server.get(flying).body  # an execution in flight: no record yet
            assert "not yet: the run has it in flight" in one and "<code>t=2</code>" in one
            assert run.wait(timeout=120) == 0, run.stderr.read()
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
            run.stderr.close()
        body = _wait(server, url, "completed 4")
        assert "running" not in re.search(r'<span class="states">(.*?)</span>\s*;', body,
                                          re.S)[1]
        assert body.count('<td class="state completed">') == 4
        assert "completed 4" in server.get("/").body
        done = server.get(flying).body  # the same page, now from its record
        assert '<td class="state completed">' in done and "not yet" not in done


def _env() -> dict:
    import os

    return {**os.environ, **GIT_IDENTITY}


def _wait(server, path: str, text: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        body = server.get(path).body
        if text in body:
            return body
        assert time.monotonic() < deadline, f"{text!r} never shown:\n{body[:3000]}"
        time.sleep(0.3)


def test_in_the_browser_click_through_a_campaign_while_it_runs(tmp_path, page):
    profile = str(local_profile(tmp_path / "profile", slots=2))
    folder = make_campaign(tmp_path / "served" / "pictures", {"img.sh": IMG, "slow.sh": SLOW})
    expegit("run", profile, "img.sh", "--param", "lr=0.5,0.7", cwd=folder)
    shots = tmp_path / "screenshots"
    with serving(tmp_path / "served") as server:
        page.goto(server.url + "/")
        assert "completed 2" in page.inner_text("#records")
        page.screenshot(path=shots / "overview-campaign.png", full_page=True)
        page.click("text=pictures")
        page.wait_for_selector("table.executions")
        page.evaluate("window.sameDocument = true")
        run = subprocess.Popen([sys.executable, "-m", "expegit", "run", profile, "slow.sh",
                                "--param", "t=1,1,1"], cwd=folder, env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            page.wait_for_selector(".summary .state.running", timeout=60000)
            page.screenshot(path=shots / "campaign-running.png", full_page=True)
            page.wait_for_function(  # counts and table follow the run, no reload
                "document.querySelector('.summary').innerText.includes('completed 5')",
                timeout=90000)
            page.wait_for_function(
                "document.querySelectorAll('td.state.completed').length === 5")
            assert run.wait(timeout=60) == 0
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
        assert page.evaluate("window.sameDocument === true")
        page.screenshot(path=shots / "campaign.png", full_page=True)
        page.fill("input[name=q]", "lr=0.7")
        page.click("text=show")
        page.wait_for_function("document.querySelectorAll('td.id').length === 1")
        page.click("td.id a")
        page.wait_for_selector("#stdout")
        assert "<script>" in page.inner_text("#stdout") and page.title() != "owned"
        assert "lr=0.7" in page.inner_text("#params")
        for name in ("plots/loss.png", "curve.svg"):
            image = page.locator(f"img[alt='{name}']")
            assert image.evaluate("i => i.complete && i.naturalWidth > 0"), name
        page.screenshot(path=shots / "campaign-execution.png", full_page=True)
        page.click("#stderr-whole")
        assert "careful with --lr=0.7" in page.inner_text("body")
    assert all((shots / f).stat().st_size > 5000 for f in
               ("overview-campaign.png", "campaign.png", "campaign-running.png",
                "campaign-execution.png"))


def test_launch_a_campaign_run_at_a_commit_then_run_its_failures_again(tmp_path):
    """The form's campaign run at an older commit; its failures run again from the page, at
    the commit they ran, linked to their records; the forms refuse forged posts."""
    marker = tmp_path / "marker"
    flaky = f'#!/usr/bin/env bash\ntest -e {marker} || exit 3\necho "VERSION ok $*"\n'
    folder = make_campaign(tmp_path / "served" / "flaky", {"job.sh": flaky.replace(
        "VERSION", "v1")})
    first = git(folder / "code", "rev-parse", "HEAD").strip()
    (folder / "code" / "job.sh").write_text(flaky.replace("VERSION", "v2"))
    git(folder / "code", "commit", "-q", "-am", "v2")
    profile = str(local_profile(tmp_path / "profile", slots=2))
    url = f"/campaign/{cid(folder)}"
    with serving(tmp_path / "served") as server:
        form = server.get(f"/launch?kind=campaign&campaign={cid(folder)}").body
        assert f'<option value="{cid(folder)}" selected>' in form
        nowhere = server.post("/launch", {"csrf": server.csrf(), "kind": "campaign",
                                          "profile": profile, "script": "job.sh"})
        assert nowhere.status == 400 and "choose one of the campaigns" in nowhere.body
        missing = server.post("/launch", {"csrf": server.csrf(), "kind": "campaign",
                                          "campaign": cid(folder), "profile": profile,
                                          "script": "nosuch.sh"})
        assert missing.status == 400 and "nosuch.sh" in missing.body
        answer = server.post("/launch", {
            "csrf": server.csrf(), "kind": "campaign", "campaign": cid(folder),
            "profile": profile, "script": "job.sh", "commit": first[:10], "name": "old",
            "template": "--k={1;2}"})
        assert answer.status == 303 and answer.headers["location"] == url, answer.body[:500]
        _wait(server, url, "failed 2")
        _wait(server, url, 'driver <span class="alive">stopped')
        assert server.post(url + "/retry", {"csrf": "forged"}).status == 403
        assert server.post(url + "/cancel", {"csrf": server.csrf()}).status == 409  # none
        marker.touch()
        assert server.post(url + "/retry", {"csrf": server.csrf()}).status == 303
        body = _wait(server, url, "completed 2")
        _wait(server, url, 'driver <span class="alive">stopped')
    recs = list(all_records(folder / "runs"))
    assert sorted(r.state for r in recs) == ["completed", "completed", "failed", "failed"]
    assert {r.commit for r in recs} == {first}  # the old commit, for the reruns too
    failed = {r.id for r in recs if r.state == "failed"}
    again = [r for r in recs if r.state == "completed"]
    assert {r.rerun_of for r in again} == failed
    assert all((folder / "runs" / r.id / "stdout").read_text().startswith("v1 ok --k=")
               for r in again)
    assert "4 matching" in body


def test_cancel_a_campaign_run_driven_by_the_server(tmp_path):
    folder = make_campaign(tmp_path / "served" / "slow", {"slow.sh": SLOW})
    profile = str(local_profile(tmp_path / "profile", slots=2))
    url = f"/campaign/{cid(folder)}"
    with serving(tmp_path / "served") as server:
        answer = server.post("/launch", {
            "csrf": server.csrf(), "kind": "campaign", "campaign": cid(folder),
            "profile": profile, "script": "slow.sh", "template": "--t={61.7;61.7;61.7}"})
        assert answer.status == 303
        _wait(server, url, "running 2")
        assert server.post(url + "/retry", {"csrf": server.csrf()}).status == 409
        assert server.post(url + "/cancel", {"csrf": "x"}).status == 403
        assert server.post(url + "/cancel", {"csrf": server.csrf()}).status == 303
        body = _wait(server, url, 'driver <span class="alive">stopped')
        assert "running" not in re.search(r'<span class="states">(.*?)</span>\s*;', body,
                                          re.S)[1]
        assert subprocess.run(["pgrep", "-f", "sleep 61.7"]).returncode == 1  # none left


def test_a_large_file_kept_in_git_annex_is_named_not_served_from_outside(tmp_path):
    """A result above the campaign's threshold is a git-annex link into .git/annex: outside
    the record folder, so it is named on the page (fetch it with `expegit get`), never
    followed."""
    big = '#!/usr/bin/env bash\nhead -c 2097152 /dev/zero > weights.bin\necho small > ok.txt\n'
    folder = make_campaign(tmp_path / "served" / "heavy", {"big.sh": big})
    # git-annex is one of the bed's Debian packages (tests/testbed/up.sh): never skipped
    assert "annex: true" in (folder / "expegit.yml").read_text(), "git-annex is not installed"
    expegit("run", str(local_profile(tmp_path / "profile")), "big.sh", cwd=folder)
    (rec,) = all_records(folder / "runs")
    assert rec.large == ("weights.bin",) and (folder / "runs" / rec.id / "weights.bin")\
        .is_symlink()
    with serving(tmp_path / "served") as server:
        base = f"/campaign/{cid(folder)}/{rec.id}"
        page = server.get(base).body
        assert "git-annex" in page and "weights.bin" in page
        assert f'href="{base}/files/ok.txt?download=1"' in page
        assert f'{base}/files/weights.bin' not in page
        assert server.get(base + "/files/weights.bin").status == 404
        assert server.get(base + "/files/ok.txt").body == "small\n"
