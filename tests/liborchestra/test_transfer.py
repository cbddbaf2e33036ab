import os
import tarfile

from liborchestra.transfer import OUTPUT_MARKER, IgnoreRules, build_archive, remote_path


def _tree(root):
    (root / "src").mkdir(parents=True)
    (root / "run.sh").write_text("echo hi\n")
    (root / "src" / "model.py").write_text("x = 1\n")
    (root / "data.bin").write_bytes(b"\0" * 100)
    return root


def _names(archive):
    import io

    with tarfile.open(fileobj=io.BytesIO(archive.data)) as tar:
        return sorted(m.name for m in tar.getmembers() if m.isfile())


def test_digest_depends_on_content_not_on_times(tmp_path):
    root = _tree(tmp_path / "a")
    first = build_archive(root)
    os.utime(root / "run.sh", (1, 1))
    assert build_archive(root).digest == first.digest
    (root / "run.sh").write_text("echo changed\n")
    assert build_archive(root).digest != first.digest
    assert first.files == 3


def test_same_content_elsewhere_has_same_digest(tmp_path):
    first, second = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    assert build_archive(first).digest == build_archive(second).digest


def test_sendignore_globs(tmp_path):
    root = _tree(tmp_path / "a")
    (root / "src" / "cache.pyc").write_text("")
    (root / "logs").mkdir()
    (root / "logs" / "x.log").write_text("")
    (root / ".sendignore").write_text("# comment\n*.bin\n*.pyc\nlogs/\n")
    assert _names(build_archive(root)) == [".sendignore", "run.sh", "src/model.py"]


def test_path_patterns_and_dir_only_patterns():
    rules = IgnoreRules(("src/*.py", "out/"))
    assert rules.ignores("src/a.py", False)
    assert not rules.ignores("lib/src/a.py", False)
    assert rules.ignores("x/out", True) and not rules.ignores("x/out", False)


def test_output_folders_are_never_shipped(tmp_path):
    root = _tree(tmp_path / "a")
    out = root / "runs" / "123"
    out.mkdir(parents=True)
    (out / OUTPUT_MARKER).touch()
    (out / "result.txt").write_text("big")
    assert "runs/123/result.txt" not in _names(build_archive(root))


def test_special_files_are_skipped(tmp_path):
    root = _tree(tmp_path / "a")
    os.mkfifo(root / "pipe")
    (root / "link").symlink_to("run.sh")
    archive = build_archive(root)
    assert "pipe" not in _names(archive)
    import io

    with tarfile.open(fileobj=io.BytesIO(archive.data)) as tar:
        assert tar.getmember("link").linkname == "run.sh"


def test_remote_paths_are_quoted_but_keep_home():
    assert remote_path("~/.orchestra") == '"$HOME"/.orchestra'
    assert remote_path("/data/it's here") == "'/data/it'\"'\"'s here'"
    assert remote_path("~") == '"$HOME"'
