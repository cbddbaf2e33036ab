"""The sched protocol: codec, features, and the scheduler program over real pipes."""

from __future__ import annotations

import json
import shlex
import sys

import anyio
import pytest

from liborchestra.sched import (
    SchedProtocolError,
    SchedulerProgram,
    decode,
    encode,
    find_features,
    parse_features,
    split_parameters,
)


def test_requests_have_the_original_shapes():
    assert json.loads(encode("GET_PARAMETERS_REQUEST", uuid="kkk")) == \
        {"GET_PARAMETERS_REQUEST": {"uuid": "kkk"}}
    assert encode("SHUTDOWN_REQUEST") == b'{"SHUTDOWN_REQUEST": {}}\n'
    line = encode("RECORD_OUTPUT_REQUEST", uuid="u", parameters="--a 1", stdout="o\né",
                  stderr="", ecode=0, features="0.5 0.5", path="/x")
    assert line.endswith(b"\n") and line.count(b"\n") == 1 and line.isascii()
    assert json.loads(line)["RECORD_OUTPUT_REQUEST"]["stdout"] == "o\né"


@pytest.mark.parametrize("line, kind, parameters, message", [
    ('{"GET_PARAMETERS_RESPONSE": {"parameters": "--lr 0.1"}}', "GET_PARAMETERS_RESPONSE",
     "--lr 0.1", ""),
    ('{"GET_PARAMETERS_RESPONSE": {"parameters": ["a b", "$(c)"]}}',
     "GET_PARAMETERS_RESPONSE", ("a b", "$(c)"), ""),
    ('{"NOT_READY_RESPONSE": {}}', "NOT_READY_RESPONSE", None, ""),
    ('  {"SEARCH_FINISHED_RESPONSE": null}\r', "SEARCH_FINISHED_RESPONSE", None, ""),
    ('{"RECORD_OUTPUT_RESPONSE": {}}', "RECORD_OUTPUT_RESPONSE", None, ""),
    ('{"SHUTDOWN_RESPONSE": {}}', "SHUTDOWN_RESPONSE", None, ""),
    ('{"ERROR_RESPONSE": {"message": "disk full"}}', "ERROR_RESPONSE", None, "disk full"),
])
def test_responses_decode(line, kind, parameters, message):
    response = decode(line.encode())
    assert (response.kind, response.parameters, response.message) == \
        (kind, parameters, message)


@pytest.mark.parametrize("line, words", [
    ("hello", ["invalid JSON", "'hello'", "stderr"]),
    ('{"NOT_READY_RESPONSE": {}', ["invalid JSON"]),
    ("[1, 2]", ["single key"]),
    ('{"NOT_READY_RESPONSE": {}, "SHUTDOWN_RESPONSE": {}}', ["single key"]),
    ('{"GIVE": {}}', ["unknown message", "'GIVE'", "GET_PARAMETERS_RESPONSE"]),
    ('{"NOT_READY_RESPONSE": 3}', ["must be an object"]),
    ('{"GET_PARAMETERS_RESPONSE": {}}', ["\"parameters\": a string"]),
    ('{"GET_PARAMETERS_RESPONSE": {"parameters": [1]}}', ["\"parameters\": a string"]),
])
def test_bad_responses_say_what_is_wrong(line, words):
    with pytest.raises(SchedProtocolError) as caught:
        decode(line.encode())
    for word in words:
        assert word in str(caught.value)


def test_parameters_are_split_never_expanded():
    argv = ["it's", 'a "b"', "$(touch /tmp/x)", "x; y", "`id`", "l1\nl2", "", "*"]
    assert split_parameters(shlex.join(argv)) == tuple(argv)
    assert split_parameters("--x=1   --y='a b'") == ("--x=1", "--y=a b")
    assert split_parameters(("a b", "$c")) == ("a b", "$c")
    with pytest.raises(SchedProtocolError, match="cannot be split"):
        split_parameters("--x 'open")


def test_features(tmp_path):
    assert parse_features(" 1.0 2.5\n") == (1.0, 2.5)
    assert parse_features("[1, 2.5e-3]") == (1.0, 0.0025)
    assert parse_features("1,2") == (1.0, 2.0)
    assert parse_features("") == ()
    assert str(parse_features("nan inf")) == "(nan, inf)"
    for bad in ("one", "[1, \"a\"]", "[1,", "[true]"):
        with pytest.raises(ValueError):
            parse_features(bad)
    stdout = "noise\nRUNAWAY_FEATURES: 1 2\n  RUNAWAY_FEATURES: 3\nmore\n"
    assert find_features(tmp_path, stdout) == (3.0,)  # the last line counts
    assert find_features(tmp_path, "nothing") == ()
    (tmp_path / "features").write_text("[4, 5]\n")
    assert find_features(tmp_path, stdout) == (4.0, 5.0)  # the file wins


ORIGINAL_STYLE = """\
import json
import sys
while True:
    inpt = json.loads(input())
    if "GET_PARAMETERS_REQUEST" in inpt.keys():
        sys.stderr.write(f"got {inpt}\\n")
        print(json.dumps({"GET_PARAMETERS_RESPONSE": {"parameters": "params_from_python"}}))
    elif "RECORD_OUTPUT_REQUEST" in inpt.keys():
        if inpt["RECORD_OUTPUT_REQUEST"]["features"] != "1.5": raise Exception()
        sys.stdout.write(json.dumps({"RECORD_OUTPUT_RESPONSE": {}}))
        sys.stdout.write("\\n")
    elif "SHUTDOWN_REQUEST" in inpt.keys():
        sys.stdout.write(json.dumps({"SHUTDOWN_RESPONSE": {}}))
        break
"""


def program(tmp_path, source: str, **options) -> SchedulerProgram:
    path = tmp_path / "sched.py"
    path.write_text(source)
    return SchedulerProgram(shlex.join([sys.executable, str(path)]), **options)


def test_a_scheduler_written_for_the_original_works(tmp_path):
    """print() without flush, and a last response without its newline, as the original's own
    test scheduler did."""
    lines: list[str] = []

    async def main() -> None:
        sched = program(tmp_path, ORIGINAL_STYLE, on_stderr=lines.append)
        async with anyio.create_task_group() as tg:
            await sched.start(tg)
            response = await sched.get_parameters("hhh")
            assert response.parameters == "params_from_python"
            await sched.record_output(uuid="hhh", parameters="p", stdout="", stderr="",
                                      ecode=0, features="1.5", path=".")
            await sched.shutdown(timeout=10)
            await sched.close()
            assert sched.error is None
            tg.cancel_scope.cancel()

    anyio.run(main, backend="asyncio")
    assert lines == ["got {'GET_PARAMETERS_REQUEST': {'uuid': 'hhh'}}"]


@pytest.mark.parametrize("source, words", [
    ("import sys, time\nsys.stdin.readline()\nsys.exit(4)\n", ["exited with status 4"]),
    ("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n", ["killed by signal 9"]),
    ("print('{\"NOT_READY_RESPONSE\": {}}', flush=True)\nimport time\ntime.sleep(30)\n",
     ["when nothing was asked"]),
    ("import sys\nsys.stdin.readline()\nprint('x' * 300, flush=True)\n"
     "import time\ntime.sleep(30)\n", ["invalid JSON", "x" * 200 + "..."]),
])
def test_program_failures_are_one_message(tmp_path, source, words):
    async def main() -> str:
        failed = anyio.Event()
        sched = program(tmp_path, source, on_failure=failed.set)
        async with anyio.create_task_group() as tg:
            await sched.start(tg)
            with anyio.move_on_after(1):  # some fail before any request
                await failed.wait()
            with anyio.fail_after(10):
                with pytest.raises(SchedProtocolError) as caught:
                    await sched.get_parameters("u")
                await failed.wait()
            await sched.close(grace=1)
            tg.cancel_scope.cancel()
        assert str(caught.value) == sched.error
        return sched.error

    message = anyio.run(main, backend="asyncio")
    for word in words:
        assert word in message
