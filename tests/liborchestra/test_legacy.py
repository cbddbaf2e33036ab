"""Legacy runaway profiles (the 9-field format) load unchanged as `custom` profiles."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from liborchestra.errors import ProfileError
from liborchestra.legacy import FIELDS, is_legacy, parse_legacy
from liborchestra.profile import load_profile

REPO = Path(__file__).resolve().parents[2]

# The Slurm example of the original's documentation, with the one command that holds ": "
# quoted for YAML.
PLAFRIM = """\
name: plafrim
ssh_configuration: plafrim-ext
node_proxycommand: "ssh -A -l user plafrim-ext -W $RUNAWAY_NODE_ID:22"
start_allocation:
  - 'export RUNAWAY_JOB_ID=$(salloc -N10 -p court --no-shell 2>&1 | sed -e "s/salloc: Granted job allocation //")'
  - export RUNAWAY_NODES=$(squeue -j $RUNAWAY_JOB_ID -h -o %N | xargs scontrol show hostnames | tr '\\n' ' ')
cancel_allocation:
  - scancel $RUNAWAY_JOB_ID
allocation_duration: 10000
get_node_handles:
  - export RUNAWAY_HANDLES=$(seq -s ' ' 0 15)
directory: /projets/flowers/user/executions
execution:
  - cd $RUNAWAY_PWD
  - taskset -c $RUNAWAY_HANDLE_ID bash $RUNAWAY_SCRIPT_PATH $RUNAWAY_ARGUMENTS
"""  # noqa: E501 (the example as users have it)


def plafrim(**changes) -> dict:
    data = yaml.safe_load(PLAFRIM)
    for key, value in changes.items():
        if value is ...:
            del data[key]
        else:
            data[key] = value
    return data


def test_the_documented_example_maps_to_a_custom_profile():
    profile = parse_legacy(plafrim(), "plafrim.yml")
    custom = profile.scheduler.custom
    assert profile.name == "plafrim" and profile.source == "plafrim.yml"
    assert profile.scheduler.kind == "custom" and profile.ssh.host == "plafrim-ext"
    assert profile.ssh.user is None and profile.ssh.identity == ()  # from ~/.ssh/config
    assert profile.scheduler.walltime == 10000 * 60
    assert profile.directory == "/projets/flowers/user/executions"
    assert custom.node_proxycommand == "ssh -A -l user plafrim-ext -W $RUNAWAY_NODE_ID:22"
    assert custom.start_allocation[0].endswith('sed -e "s/salloc: Granted job allocation //")')
    assert custom.start_allocation[1].endswith("tr '\\n' ' ')")
    assert custom.cancel_allocation == ("scancel $RUNAWAY_JOB_ID",)
    assert custom.get_node_handles == ("export RUNAWAY_HANDLES=$(seq -s ' ' 0 15)",)
    assert custom.execution[1].startswith("taskset -c $RUNAWAY_HANDLE_ID bash")


def test_files_are_recognised_and_loaded(tmp_path):
    path = tmp_path / "old.yml"
    path.write_text(PLAFRIM)
    assert load_profile(str(path)).scheduler.kind == "custom"
    repo = load_profile(str(REPO / "profiles/testbed-legacy.yml"))
    assert repo.scheduler.kind == "custom" and repo.ssh.host == "tb-login"
    assert repo.scheduler.custom.execution[-1] == "bash $RUNAWAY_SCRIPT_PATH $RUNAWAY_ARGUMENTS"


def test_which_files_are_legacy():
    assert is_legacy(plafrim())
    assert is_legacy({"name": "x", "start_allocation": ["true"]})  # incomplete: errors below
    assert not is_legacy({"name": "x", "scheduler": "local"})
    assert not is_legacy({"name": "x", "directory": "/d"})
    assert not is_legacy(["start_allocation"])


def test_empty_proxy_command_means_through_the_frontend():
    assert parse_legacy(plafrim(node_proxycommand=""), "p.yml").scheduler.custom \
        .node_proxycommand is None
    assert parse_legacy(plafrim(node_proxycommand=None), "p.yml").scheduler.custom \
        .node_proxycommand is None


@pytest.mark.parametrize("field", FIELDS)
def test_every_field_is_required(field):
    with pytest.raises(ProfileError) as caught:
        parse_legacy(plafrim(**{field: ...}), "old.yml")
    assert str(caught.value) == f"old.yml: {field}: is required"
    assert caught.value.field == field


@pytest.mark.parametrize("field, value, words", [
    ("name", ["a"], "expected a string"),
    ("ssh_configuration", {"host": "x"}, "expected a string"),
    ("ssh_configuration", " ", "must not be empty"),
    ("node_proxycommand", ["ssh", "-W"], "expected a string"),
    ("start_allocation", "export RUNAWAY_NODES=n1", "expected a list of shell commands"),
    ("start_allocation", [], "at least one command"),
    ("cancel_allocation", [["scancel"]], "expected a string"),
    ("get_node_handles", [], "RUNAWAY_HANDLES"),
    ("allocation_duration", "10000", "positive number of minutes"),
    ("allocation_duration", 0, "positive number of minutes"),
    ("allocation_duration", True, "positive number of minutes"),
    ("directory", 3.5j, "expected a string"),
    ("directory", "", "must not be empty"),
    ("execution", [], "at least one command"),
])
def test_ill_typed_fields_name_file_and_field(field, value, words):
    with pytest.raises(ProfileError) as caught:
        parse_legacy(plafrim(**{field: value}), "old.yml")
    assert str(caught.value).startswith(f"old.yml: {field}: ")
    assert words in str(caught.value)


def test_unknown_fields_are_errors():
    with pytest.raises(ProfileError, match="old.yml: scheduler_kind: unknown field; expected "
                                           "one of allocation_duration, cancel_allocation"):
        parse_legacy(plafrim(scheduler_kind="slurm"), "old.yml")


def test_unquoted_colon_in_a_command_gets_a_hint(tmp_path):
    """YAML reads `sed -e "s/salloc: Granted//"` unquoted as a mapping: say how to fix it."""
    path = tmp_path / "old.yml"
    path.write_text(PLAFRIM.replace("  - 'export RUNAWAY_JOB_ID", "  - export RUNAWAY_JOB_ID")
                    .replace('//")\'', '//")'))
    with pytest.raises(ProfileError) as caught:
        load_profile(str(path))
    message = str(caught.value)
    assert message.startswith(f"{path}: start_allocation: item 1 is not a string")
    assert "quote" in message
