import itertools
import random
import time
from pathlib import Path

import attrs
import pytest

from liborchestra.errors import OrchestraError
from liborchestra.params import (
    ParamsError,
    Point,
    Sweep,
    Template,
    arguments_file,
    argv,
    config_dir,
    param_grid,
    template,
)

EXPECTED = ["--lr=0.1 --bs=32", "--lr=0.1 --bs=64", "--lr=0.01 --bs=32", "--lr=0.01 --bs=64"]


def _expand(text):
    return list(Template.parse(text).expand())


def _argvs(sweep):
    return [list(point.argv) for point in sweep]


# --- templates -----------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "--lr= + {0.1;0.01} + ' --bs=' + {32;64}",  # the original syntax
    '--lr= + {0.1;0.01} + " --bs=" + {32;64}',
    "--lr={0.1;0.01} --bs={32;64}",  # the natural form
    "--lr={0.1;0.01} + ' --bs=' + {32;64}",  # a mix
    "--lr={ 0.1 ; 0.01 } --bs={32; 64}",  # unquoted spaces around alternatives are dropped
])
def test_template_forms_give_the_same_strings_in_order(text):
    assert _expand(text) == EXPECTED
    assert Template.parse(text).count == 4
    assert [argv(s) for s in EXPECTED][1] == ["--lr=0.1", "--bs=64"]
    assert _argvs(template(text))[2] == ["--lr=0.01", "--bs=32"]


def test_first_group_varies_slowest():
    assert _expand("{a;b;c}{1;2}") == ["a1", "a2", "b1", "b2", "c1", "c2"]


def test_template_without_group_is_one_string():
    assert _expand("--epochs 10") == ["--epochs 10"]
    assert _expand("") == [""]
    assert _argvs(template("")) == [[]]


def test_alternatives_quoted_empty_and_with_symbols():
    assert _argvs(template("--name={'a b';c}")) == [["--name=a b"], ["--name=c"]]
    assert _argvs(template("--name= + {'a b';c}")) == [["--name=a b"], ["--name=c"]]
    assert _expand("x{;y}") == ["x", "xy"]
    assert _expand("{--opt=1.5;-v;a.b}") == ["--opt=1.5", "-v", "a.b"]
    assert _expand("{;}") == ["", ""]


def test_semicolon_in_quotes_and_escaped_braces_are_literal():
    assert _argvs(template("{'a;b';c}")) == [["a;b"], ["c"]]
    assert _argvs(template(r"--json=\{a\} {1;2}")) == [["--json={a}", "1"], ["--json={a}", "2"]]
    assert _argvs(template("--x='{a;b}'")) == [["--x={a;b}"]]
    assert _argvs(template("a;b")) == [["a;b"]]
    assert _argvs(template("a+b c +d")) == [["a+b", "c", "+d"]]


def test_user_quoting_groups_words():
    assert _argvs(template("--name 'a b'")) == [["--name", "a b"]]
    two = [["--name", "a b", "1"], ["--name", "a b", "2"]]
    assert _argvs(template('--name "a b" {1;2}')) == two


def test_values_are_data_never_shell():
    sweep = template("""--cmd={"$(touch /tmp/x); it's";`id`} + ' --q=' + "it's" + ' $HOME'""")
    assert _argvs(sweep) == [
        ["--cmd=$(touch /tmp/x); it's", "--q=it's", "$HOME"],
        ["--cmd=`id`", "--q=it's", "$HOME"],
    ]
    # A quoted part keeps quotes and backslashes as characters; only spaces split words.
    assert _argvs(template("""'say "hi"\\' + {1}""")) == [['say', '"hi"\\1']]


@pytest.mark.parametrize(("text", "column", "what"), [
    ("--lr={0.1;0.01", 6, "never closed"),
    ("--lr=0.1}", 9, "without a '{'"),
    ("--name='a b", 8, "quote ' is never closed"),
    ('--name="a b', 8, 'quote " is never closed'),
    ("--lr={}", 6, "empty group"),
    ("--lr={ }", 6, "empty group"),
    ("+ {1;2}", 1, "nothing on its left"),
    ("{1;2} +", 7, "nothing on its right"),
    ("a + + b", 3, "nothing on its right"),
    ("{a;{b}}", 4, "do not nest"),
    ("abc\\", 4, "escapes nothing"),
])
def test_bad_templates_name_the_template_and_column(text, column, what):
    with pytest.raises(ParamsError) as caught:
        Template.parse(text)
    message = str(caught.value)
    assert message.startswith(f"template {text!r}: column {column}: ")
    assert what in message
    assert "\n" not in message
    assert isinstance(caught.value, OrchestraError)


def test_argv_helper_reports_bad_quoting():
    assert argv("--a 'b c' d") == ["--a", "b c", "d"]
    with pytest.raises(ParamsError, match="No closing quotation"):
        argv("'open")


def test_million_points_are_lazy_and_counted_exactly():
    started = time.monotonic()
    text = " ".join(f"--p{k}={{0;1;2;3;4;5;6;7;8;9}}" for k in range(6))
    sweep = template(text)
    assert sweep.count == 1_000_000
    first = list(itertools.islice(sweep, 3))
    assert [p.index for p in first] == [0, 1, 2]
    assert first[1].argv == ("--p0=0", "--p1=0", "--p2=0", "--p3=0", "--p4=0", "--p5=1")
    last = list(sweep.iter_from(sweep.count - 2))
    assert [p.index for p in last] == [999_998, 999_999]
    assert last[-1].argv == tuple(f"--p{k}=9" for k in range(6))
    middle = next(sweep.iter_from(123_456))
    assert middle.label == "--p0=1 --p1=2 --p2=3 --p3=4 --p4=5 --p5=6"
    assert sweep.repeat(1000).count == 10**9
    assert time.monotonic() - started < 2


# --- arguments file ------------------------------------------------------------------------------


def test_arguments_file_keeps_file_order(tmp_path):
    path = tmp_path / "args.txt"
    path.write_text("# learning rates\n--lr={1;2}\n\n   # indented comment\n--last x\r\n")
    sweep = arguments_file(path)
    assert sweep.count == 3
    assert [p.label for p in sweep] == ["--lr=1", "--lr=2", "--last x"]
    assert [p.index for p in sweep] == [0, 1, 2]


def test_arguments_file_errors_name_file_and_line(tmp_path):
    path = tmp_path / "args.txt"
    path.write_text("--ok\n# comment\n--lr={1;2\n")
    with pytest.raises(ParamsError, match=r"args\.txt:3: column 6: '\{' is never closed"):
        arguments_file(path)


def test_arguments_file_missing_or_empty(tmp_path):
    with pytest.raises(ParamsError, match=r"nope\.txt: no such arguments file$"):
        arguments_file(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("\n# nothing\n")
    with pytest.raises(ParamsError, match="expected at least one template"):
        arguments_file(tmp_path / "empty.txt")
    (tmp_path / "bin").write_bytes(b"\xff\xfe")
    with pytest.raises(ParamsError, match="expected UTF-8"):
        arguments_file(tmp_path / "bin")


# --- parameter grid ------------------------------------------------------------------------------


def test_param_grid_product_first_slowest():
    sweep = param_grid(["lr=0.1,0.01", "bs=32,64"])
    assert sweep.count == 4
    assert _argvs(sweep) == [
        ["--lr=0.1", "--bs=32"], ["--lr=0.1", "--bs=64"],
        ["--lr=0.01", "--bs=32"], ["--lr=0.01", "--bs=64"],
    ]
    assert next(iter(sweep)).label == "--lr=0.1 --bs=32"


def test_param_grid_values_are_verbatim():
    sweep = param_grid(["cmd=$(touch /tmp/x);it's,a=b c"])
    assert _argvs(sweep) == [["--cmd=$(touch /tmp/x);it's"], ["--cmd=a=b c"]]


@pytest.mark.parametrize(("specs", "bad", "what"), [
    (["lr"], "lr", "no '='"),
    (["=1,2"], "=1,2", "expected a name"),
    (["--lr=1"], "--lr=1", "leading '-'"),
    (["lr="], "lr=", "expected values"),
    (["lr=1,,2"], "lr=1,,2", "value 2 is empty"),
    (["lr=1", "lr=2"], "lr=2", "given twice"),
])
def test_param_grid_bad_specs_name_the_option(specs, bad, what):
    with pytest.raises(ParamsError) as caught:
        param_grid(specs, option="--grid")
    assert str(caught.value).startswith(f"--grid {bad!r}: ")
    assert what in str(caught.value)
    with pytest.raises(ParamsError, match="at least one"):
        param_grid([])


# --- configuration directory ---------------------------------------------------------------------


def _configs(root: Path) -> Path:
    directory = root / "configs"
    directory.mkdir()
    for name in ["b.json", "a.json", "my conf.yml", ".hidden", "%OUT.json"]:
        (directory / name).write_text("{}")
    (directory / "sub").mkdir()
    return directory


def test_config_dir_one_execution_per_file(tmp_path):
    directory = _configs(tmp_path)
    sweep = config_dir(directory, "--config %IN --out=%OUT --data %DATA", data="/data/set 1")
    assert sweep.ship == {"_configs": directory}
    assert sweep.count == 4
    assert _argvs(sweep) == [
        ["--config", "_configs/%OUT.json", "--out=out/%OUT", "--data", "/data/set 1"],
        ["--config", "_configs/a.json", "--out=out/a", "--data", "/data/set 1"],
        ["--config", "_configs/b.json", "--out=out/b", "--data", "/data/set 1"],
        ["--config", "_configs/my conf.yml", "--out=out/my conf", "--data", "/data/set 1"],
    ]
    assert list(sweep)[3].label == "--config '_configs/my conf.yml' '--out=out/my conf' " \
        "--data '/data/set 1'"


def test_config_dir_errors(tmp_path):
    directory = _configs(tmp_path)
    with pytest.raises(ParamsError, match="uses %DATA but no data path"):
        config_dir(directory, "%IN %DATA")
    with pytest.raises(ParamsError, match="expected %IN"):
        config_dir(directory, "--out %OUT")
    with pytest.raises(ParamsError, match="No closing quotation"):
        config_dir(directory, "%IN 'x")
    with pytest.raises(ParamsError, match=r"missing: no such directory"):
        config_dir(tmp_path / "missing", "%IN")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".only-hidden").write_text("")
    with pytest.raises(ParamsError, match=r"empty: expected config files"):
        config_dir(tmp_path / "empty", "%IN")
    (directory / "a.yml").write_text("")
    with pytest.raises(ParamsError, match=r"a\.json and a\.yml would share the output out/a"):
        config_dir(directory, "%IN")


# --- sweeps --------------------------------------------------------------------------------------


def test_repeat_consecutive_with_repeat_index():
    sweep = template("{a;b}").repeat(3)
    assert sweep.count == 6
    points = list(sweep)
    assert [(p.index, p.label, p.repeat) for p in points] == [
        (0, "a", 0), (1, "a", 1), (2, "a", 2), (3, "b", 0), (4, "b", 1), (5, "b", 2),
    ]
    assert points[0] == Point(0, ("a",), "a", 0)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        points[0].index = 5
    assert [p.repeat for p in sweep.repeat(2)][:6] == [0, 1, 2, 3, 4, 5]
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ParamsError, match="-x/--repeats"):
            sweep.repeat(bad)


def _mixed(tmp_path):
    directory = _configs(tmp_path)
    return Sweep.chain(
        template("--lr={1;2;3} {x;y}").repeat(2),
        param_grid(["a=1,2", "b=3,4,5"]),
        config_dir(directory, "%IN"),
        Sweep.of(Template.parse("--solo")).repeat(3),
    )


def test_chain_concatenates_in_order(tmp_path):
    sweep = _mixed(tmp_path)
    points = list(sweep)
    assert sweep.count == len(points) == 12 + 6 + 4 + 3
    assert [p.index for p in points] == list(range(sweep.count))
    assert points[12].argv == ("--a=1", "--b=3")
    assert points[18].argv == ("_configs/%OUT.json",)
    assert [p.repeat for p in points[-3:]] == [0, 1, 2]
    assert sweep.ship == {"_configs": tmp_path / "configs"}


def test_chain_refuses_clashing_shipments(tmp_path):
    (tmp_path / "one").mkdir()
    first = config_dir(_configs(tmp_path / "one"), "%IN")
    second = config_dir(_configs(tmp_path), "%IN")
    with pytest.raises(ParamsError, match="both ship as _configs"):
        Sweep.chain(first, second)
    assert Sweep.chain(second, second).count == 8


def test_iter_from_equals_islice(tmp_path):
    sweep = _mixed(tmp_path)
    full = list(sweep)
    rng = random.Random(7)
    for index in [0, 1, 11, 12, 17, 18, 21, 22, 24, 25, *rng.sample(range(25), 8)]:
        assert list(sweep.iter_from(index)) == full[index:]
        assert list(sweep.iter_from(index)) == list(itertools.islice(sweep, index, None))
    big = template("{0;1;2;3}{a;b;c}{x;y;z;w;v}").repeat(2)
    big_full = list(big)
    for index in rng.sample(range(big.count + 1), 20):
        assert list(big.iter_from(index)) == big_full[index:]


def test_iter_from_out_of_range():
    sweep = template("{a;b}")
    with pytest.raises(ParamsError, match="resume index 3: expected 0 to 2"):
        sweep.iter_from(3)
    with pytest.raises(ParamsError, match="resume index -1"):
        sweep.iter_from(-1)
    assert list(Sweep.chain().iter_from(0)) == []
