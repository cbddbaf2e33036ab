"""orchestra over HTTP, against a real `orchestra serve`: pages, bad input, and every rule of
"safe to expose" (token, traversal, escaping, CSRF)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestra.discovery import entry_id
from tests.helpers import local_profile, write_script
from tests.orchestra.web import make_batch, serving

EVIL = "<script>alert('x')</script>"
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")
pytestmark = pytest.mark.timeout(120)
SVG = '<svg xmlns="http://www.w3.org/2000/svg" width="40" height="40"><script>alert(1)' \
      '</script><rect width="40" height="40" fill="teal"/></svg>'


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One server over two batches for the read-only tests (a server starts in ~2 s)."""
    tmp_path = tmp_path_factory.mktemp("served")
    labels = [f"--lr={i / 100} --tag=t{i}" for i in range(120)]
    states = ["completed"] * 100 + ["failed"] * 10 + ["running"] * 5 + ["queued"] * 5
    journal = make_batch(tmp_path / "batch" / "big", labels, states)
    evil = make_batch(tmp_path / "batch" / "evil", [f"--name={EVIL}"], ["completed"])
    row = evil.rows()[0]
    out = tmp_path / "batch" / "evil" / row.uuid
    (out / "stdout").write_text(f"hello {EVIL}\n")
    (out / "plots").mkdir()
    (out / "plots" / "loss.png").write_bytes(PNG)
    (out / "drawing.svg").write_text(SVG)
    (out / "model.bin").write_bytes(b"\0\1\2")
    (out / "escape").symlink_to("/etc/passwd")
    (out / "outside").symlink_to(tmp_path)
    (out / "inside").symlink_to(out / "stdout")
    with serving(tmp_path) as server:
        yield server, tmp_path, journal, evil


def _id(tmp_path: Path, name: str, record: str = "journal.sqlite") -> str:
    return entry_id((tmp_path / "batch" / name / record).resolve())


def test_overview_lists_batches_with_counts_and_finds_new_ones(served):
    server, tmp_path, _, _ = served
    page = server.get("/")
    assert page.status == 200
    assert "big" in page.body and "completed 100" in page.body and "failed 10" in page.body
    make_batch(tmp_path / "batch" / "later", ["a", "b"], ["failed", "completed"])
    deadline = time.monotonic() + 10
    while "later" not in server.get("/").body:  # found by a rescan, no restart
        assert time.monotonic() < deadline
        time.sleep(0.3)


def test_batch_table_filters_sorts_and_pages_on_the_server(served):
    server, tmp_path, _, _ = served
    bid = _id(tmp_path, "big")
    first = server.get(f"/batch/{bid}")
    assert first.status == 200 and "120 matching" in first.body and "page 1 of 3" in first.body
    assert first.body.count('<tr class="') == 50
    last = server.get(f"/batch/{bid}?page=3")
    assert "page 3 of 3" in last.body and last.body.count('<tr class="') == 20
    failed = server.get(f"/batch/{bid}?state=failed")
    assert "10 matching" in failed.body
    assert set(re.findall(r'<td class="state (\w+)"', failed.body)) == {"failed"}
    one = server.get(f"/batch/{bid}?q=--tag%3Dt7%20")  # a parameter, exactly
    assert "1 matching" in one.body and "--lr=0.07 --tag=t7" in one.body
    many = server.get(f"/batch/{bid}?q=tag%3Dt7")  # t7, t70..t79
    assert "11 matching" in many.body
    desc = server.get(f"/batch/{bid}?sort=seq&desc=1")
    seqs = [int(s) for s in re.findall(r'/batch/\w+/(\d+)">', desc.body)]
    assert seqs == list(range(120, 70, -1))
    assert "0 matching" in server.get(f"/batch/{bid}?commit=ffff").body
    assert "115 matching" in server.get(f"/batch/{bid}?commit=abab").body  # placed ones


@pytest.mark.parametrize("path, status", [
    ("/batch/{id}?page=abc", 400), ("/batch/{id}?page=0", 400), ("/batch/{id}?page=-1", 400),
    ("/batch/{id}?page=4", 404), ("/batch/{id}?state=bogus", 400),
    ("/batch/{id}?sort=ecode;drop", 400), ("/batch/nosuch", 404), ("/batch/{id}/999", 404),
    ("/batch/{id}/abc", 404), ("/search/{id}", 404), ("/search/nosuch/events", 404),
    ("/nowhere", 404), ("/batch/{id}/retry", 405),
])
def test_bad_input_is_a_clear_4xx_never_a_traceback(served, path, status):
    server, tmp_path, _, _ = served
    answer = server.get(path.format(id=_id(tmp_path, "big")))
    assert answer.status == status, answer.body[:300]
    assert "Traceback" not in answer.body and "File \"" not in answer.body


def test_execution_page_escapes_output_and_shows_images_inline(served):
    server, tmp_path, _, evil = served
    eid = _id(tmp_path, "evil")
    table = server.get(f"/batch/{eid}")
    assert EVIL not in table.body
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in table.body
    page = server.get(f"/batch/{eid}/1")
    assert page.status == 200
    assert EVIL not in page.body and "hello &lt;script&gt;" in page.body
    assert re.search(rf'<img src="/batch/{eid}/1/files/plots/loss.png"', page.body)
    assert re.search(rf'<img src="/batch/{eid}/1/files/drawing.svg"', page.body)
    assert "model.bin" in page.body and "?download=1" in page.body
    assert "node7" in page.body and "abab" in page.body and "job-42" in page.body
    assert "escape" not in page.body and "outside" not in page.body  # links out: not listed
    assert "script-src 'self'" in page.headers["content-security-policy"]
    png = server.get(f"/batch/{eid}/1/files/plots/loss.png")
    assert png.status == 200 and png.headers["content-type"] == "image/png"
    svg = server.get(f"/batch/{eid}/1/files/drawing.svg")
    assert svg.headers["content-type"].startswith("image/svg+xml")
    assert "sandbox" in svg.headers["content-security-policy"]
    assert "script-src" not in svg.headers["content-security-policy"]
    stdout = server.get(f"/batch/{eid}/1/files/stdout")
    assert stdout.headers["content-type"].startswith("text/plain") and EVIL in stdout.body
    assert stdout.headers["x-content-type-options"] == "nosniff"
    download = server.get(f"/batch/{eid}/1/files/model.bin?download=1")
    assert download.headers["content-disposition"].startswith("attachment")


@pytest.mark.parametrize("path", [
    "../journal.sqlite", "..%2fjournal.sqlite", "%2e%2e%2fjournal.sqlite",
    "%2E%2E/%2E%2E/evil/journal.sqlite", "plots/../../journal.sqlite", "..%252fjournal.sqlite",
    "/etc/passwd", "%2fetc%2fpasswd", "escape", "outside/batch/evil/journal.sqlite",
    "plots", "nosuch", "stdout%00.png", "..\\journal.sqlite",
])
def test_file_views_stay_inside_the_execution_folder(served, path):
    server, tmp_path, _, _ = served
    answer = server.get(f"/batch/{_id(tmp_path, 'evil')}/1/files/{path}")
    assert answer.status == 404, (path, answer.status, answer.body[:200])
    assert "root:" not in answer.body and "SQLite" not in answer.body


def test_a_symlink_inside_the_folder_is_served(served):
    server, tmp_path, _, _ = served
    answer = server.get(f"/batch/{_id(tmp_path, 'evil')}/1/files/inside")
    assert answer.status == 200 and "hello" in answer.body


def test_state_changes_need_a_post_with_this_servers_csrf_token(served):
    server, tmp_path, _, _ = served
    bid = _id(tmp_path, "big")
    csrf = server.csrf()
    assert server.post(f"/batch/{bid}/retry", {}).status == 403
    assert server.post(f"/batch/{bid}/retry", {"csrf": "forged"}).status == 403
    assert server.post(f"/batch/{bid}/cancel", {"csrf": "x" + csrf}).status == 403
    assert server.post("/launch", {"csrf": csrf, "script": "x"},
                       origin="http://evil.example").status == 403
    answer = server.post("/launch", {"csrf": csrf, "profile": "local",
                                     "script": str(tmp_path / "nosuch.sh")})
    assert answer.status == 400 and "no such script" in answer.body  # past CSRF: the form


def test_a_non_loopback_address_needs_a_token(tmp_path):
    refused = subprocess.run([sys.executable, "-m", "orchestra", "serve", str(tmp_path),
                              "--host", "0.0.0.0", "--port", "0"],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "without a token" in refused.stderr
    make_batch(tmp_path / "batch" / "b", ["x"], ["completed"])
    with serving(tmp_path, host="0.0.0.0", args=("--token",)) as server:
        token = re.search(r"\?token=([\w-]+)", server.printed)[1]
        assert len(token) >= 24
        for path in ("/", "/launch", "/static/orchestra.js", f"/batch/{_id(tmp_path, 'b')}",
                     "/events"):
            assert server.get(path).status == 403, path
        assert server.get("/?token=wrong").status == 403
        assert server.get("/", authorization="token wrong").status == 403
        opened = server.get(f"/?token={token}")
        assert opened.status == 200 and "orchestra_token=" in opened.headers["set-cookie"]
        assert "httponly" in opened.headers["set-cookie"].lower()
        cookie = opened.headers["set-cookie"].split(";")[0]
        assert server.get(f"/batch/{_id(tmp_path, 'b')}", cookie=cookie).status == 200
        assert server.get("/", authorization=f"token {token}").status == 200
        assert server.post("/launch", {"csrf": server.csrf(cookie=cookie)}).status == 403


def test_retry_failed_runs_them_again_in_the_server(tmp_path):
    """A batch launched from the form fails (no marker); retry runs the failed ones again,
    through the server's own driver, and they complete."""
    marker = tmp_path / "marker"
    script = write_script(tmp_path / "code", "job.sh",
                          f'#!/usr/bin/env bash\ntest -e {marker} || exit 3\necho "ok $*"\n')
    with serving(tmp_path) as server:
        answer = server.post("/launch", {
            "csrf": server.csrf(), "kind": "batch", "profile": str(local_profile(tmp_path)),
            "script": str(script), "name": "flaky", "template": "--k={1;2;3}"})
        assert answer.status == 303, answer.body[:500]
        page = answer.headers["location"]
        assert page == f"/batch/{_id(tmp_path, 'flaky')}"
        _wait(server, page, "failed 3")
        _wait(server, page, 'driver <span class="alive">stopped')  # before: 409, running
        marker.touch()
        retried = server.post(page + "/retry", {"csrf": server.csrf(), "failed": "1"})
        assert retried.status == 303
        body = _wait(server, page, "completed 3")
        assert "failed" not in re.search(r'<span class="states">(.*?)</span>\s*;', body,
                                         re.S)[1]
        one = server.get(page + "/1").body
        assert "ok --k=1" in one and "<td id=\"ecode\">0" in one
        assert "attempts/1/ecode" in one  # the failed attempt kept, as `runaway retry` does


def test_cancel_stops_a_running_batch_driven_by_the_server(tmp_path):
    script = write_script(tmp_path / "code", "slow.sh", "#!/usr/bin/env bash\nsleep 60\n")
    with serving(tmp_path) as server:
        answer = server.post("/launch", {
            "csrf": server.csrf(), "profile": str(local_profile(tmp_path, slots=2)),
            "script": str(script), "name": "slow", "template": "--k={1;2;3;4}"})
        page = answer.headers["location"]
        _wait(server, page, "running 2")
        assert server.post(page + "/retry", {"csrf": server.csrf()}).status == 409
        assert server.post(page + "/cancel", {"csrf": server.csrf()}).status == 303
        _wait(server, page, "queued 4")  # killed and queued again, as on Ctrl-C twice
        _wait(server, page, 'driver <span class="alive">stopped')
        assert subprocess.run(["pgrep", "-f", str(script)]).returncode == 1  # none left


def _wait(server, path: str, text: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        body = server.get(path).body
        if text in body:
            return body
        assert time.monotonic() < deadline, f"{text!r} never shown:\n{body[:3000]}"
        time.sleep(0.3)
