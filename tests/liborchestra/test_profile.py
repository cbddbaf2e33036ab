from pathlib import Path

import pytest

from liborchestra.errors import ProfileError
from liborchestra.profile import load_profile, parse_duration, parse_profile
from tests.helpers import write_profile


def test_builtin_local_is_found_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    profile = load_profile("local")
    assert profile.scheduler.kind == "local"
    assert profile.is_local and profile.source == "<built-in local>"


def test_profile_found_by_name_in_profiles_folder_before_builtin(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_profile(tmp_path / "profiles", "local", {"scheduler": "local", "slots": 3})
    profile = load_profile("local")
    assert profile.slots == 3 and profile.source.endswith("profiles/local.yml")


def test_profile_found_in_user_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    write_profile(tmp_path / "cfg/orchestra/profiles", "mine", {"scheduler": "local"})
    assert load_profile("mine").name == "mine"


def test_hosts_profile_parses_every_field():
    profile = parse_profile({
        "name": "c", "ssh": {"host": "login", "user": "u", "port": 2200, "identity": "~/.ssh/k",
                             "max_channels": 5, "keepalive": "30s"},
        "scheduler": {"kind": "hosts", "hosts": ["n1", {"host": "n2", "port": 22, "slots": 3}]},
        "slots": 2, "setup": ["module load x"], "env": {"A": 1}}, "f.yml")
    assert profile.ssh.identity == ("~/.ssh/k",) and profile.ssh.max_channels == 5
    assert profile.ssh.keepalive == 30.0
    assert [h.host for h in profile.scheduler.hosts] == ["n1", "n2"]
    assert profile.scheduler.hosts[1].slots == 3 and profile.env == (("A", "1"),)


@pytest.mark.parametrize("data, field, words", [
    ({}, "scheduler", "is required"),
    ({"scheduler": {"kind": "slurmy"}}, "scheduler.kind", "expected one of"),
    ({"scheduler": "local", "colour": 1}, "colour", "unknown field"),
    ({"scheduler": "local", "slots": 0}, "slots", "positive integer"),
    ({"scheduler": "local", "slots": "many"}, "slots", "'cores'"),
    ({"scheduler": {"kind": "hosts"}}, "scheduler.hosts", "is required"),
    ({"scheduler": {"kind": "hosts", "hosts": []}}, "scheduler.hosts", "non-empty"),
    ({"scheduler": {"kind": "hosts", "hosts": [{"slots": 2}]}}, "scheduler.hosts[0].host",
     "is required"),
    ({"scheduler": {"kind": "hosts", "hosts": ["a"]}, "ssh": {"port": 70000}}, "ssh.port",
     "port number"),
    ({"scheduler": {"kind": "hosts", "hosts": ["a"]}, "ssh": {"hots": "x"}}, "ssh.hots",
     "unknown field"),
    ({"scheduler": "local", "ssh": "login"}, "ssh", "remove ssh"),
    ({"scheduler": "local", "env": {"1BAD": "x"}}, "env", "not a valid"),
    ({"scheduler": "local", "shared_filesystem": "yes"}, "shared_filesystem", "true or false"),
    ({"scheduler": {"kind": "hosts", "hosts": ["a"]}, "reach": "direct"}, "reach",
     "slurm, sge and pbs"),
    ({"scheduler": "slurm", "ssh": "login", "reach": "jump"}, "reach", "expected one of"),
    ([1, 2], None, "expected a mapping"),
])
def test_bad_profiles_name_file_field_and_expectation(data, field, words):
    with pytest.raises(ProfileError) as caught:
        parse_profile(data, "bad.yml")
    message = str(caught.value)
    assert message.startswith(f"bad.yml: {field}:" if field else "bad.yml: ")
    assert words in message
    assert caught.value.field == field


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ProfileError, match="no such profile file"):
        load_profile(str(tmp_path / "nope.yml"))
    with pytest.raises(ProfileError, match="no profile of that name"):
        load_profile("definitely-not-a-profile")
    bad = tmp_path / "bad.yml"
    bad.write_text("scheduler: [\n")
    with pytest.raises(ProfileError, match=r"bad.yml: line 2: invalid YAML"):
        load_profile(str(bad))
    bad.write_text("")
    with pytest.raises(ProfileError, match="empty"):
        load_profile(str(bad))


@pytest.mark.parametrize("text, seconds", [
    (90, 90.0), ("30s", 30.0), ("15m", 900.0), ("2h", 7200.0), ("1d", 86400.0),
    ("1:30:00", 5400.0), ("10:00", 600.0), ("1-00:00:10", 86410.0), ("1.5h", 5400.0)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


def test_bad_duration_is_rejected():
    with pytest.raises(ProfileError, match="ssh.keepalive: expected a duration"):
        parse_profile({"scheduler": {"kind": "hosts", "hosts": ["a"]},
                       "ssh": {"keepalive": "soon"}}, "p.yml")


def test_repo_example_profiles_load():
    root = Path(__file__).resolve().parents[2] / "profiles"
    for path in root.glob("*.yml"):
        assert load_profile(str(path)).name
