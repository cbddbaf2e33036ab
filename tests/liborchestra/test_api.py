"""The Python API without surprises: SyncEngine gives back the user's own exception and
KeyboardInterrupt, Results carry output tails and wall-clock times, arguments accept numbers,
and a missing or non-executable script is one clear error (real engine, local profile)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

from liborchestra import Execution, OrchestraError, State, SyncEngine, load_profile
from tests.helpers import local_profile, write_script


class Mine(Exception):
    pass


def test_results_have_tails_wall_clock_and_numbers_as_arguments(tmp_path):
    script = write_script(tmp_path / "code", "job.sh", 'echo "got $*"; echo warn >&2\n')
    before = time.time()
    with SyncEngine(load_profile(str(local_profile(tmp_path)))) as engine:
        plain = engine.submit(Execution(script, ["--lr", 0.1, 3])).result()
        kept = engine.submit(Execution(script, ["x"], output=tmp_path / "out")).result()
    assert plain.state is State.COMPLETED and plain.stdout == "got --lr 0.1 3\n"
    assert plain.stderr == "warn\n" and plain.output is None and plain.stdout_path is None
    assert before <= plain.started <= plain.finished <= time.time()
    assert kept.stdout_path == tmp_path / "out/stdout" and kept.stdout == "got x\n"


def test_bad_arguments_are_one_type_error():
    with pytest.raises(TypeError, match="argument 1 is dict"):
        Execution("job.sh", ["--x", {"a": 1}])
    with pytest.raises(TypeError, match="not|string"):
        Execution("job.sh", "--lr 0.1")


def test_user_exception_comes_back_as_itself(tmp_path):
    script = write_script(tmp_path / "code", "job.sh", "true\n")
    with pytest.raises(Mine), SyncEngine(load_profile(str(local_profile(tmp_path)))) as engine:
        engine.submit(Execution(script)).result()
        raise Mine("mine")


def test_missing_and_non_executable_scripts(tmp_path):
    shebang = write_script(tmp_path / "code", "train.py",
                           "#!/usr/bin/env python3\nimport sys\nprint('py', sys.argv[1:])\n",
                           executable=False)
    bare = write_script(tmp_path / "code", "bare.py", "print('x')\n", executable=False)
    with SyncEngine(load_profile(str(local_profile(tmp_path)))) as engine:
        with pytest.raises(OrchestraError, match="no such script"):
            engine.submit(Execution(tmp_path / "code/missing.sh"))
        with pytest.raises(OrchestraError, match="not executable"):
            engine.submit(Execution(bare))
        result = engine.submit(Execution(shebang, ["a(b)"])).result()
    assert result.state is State.COMPLETED and result.stdout == "py ['a(b)']\n"


def test_ctrl_c_is_a_keyboard_interrupt(tmp_path):
    running = tmp_path / "running"
    slow = write_script(tmp_path / "code", "slow.sh", f"touch {running}; sleep 60\n")
    program = tmp_path / "prog.py"
    program.write_text(textwrap.dedent(f"""\
        import signal, sys
        from liborchestra import Execution, SyncEngine, load_profile
        # as in a terminal: a test run started in the background (`cmd &`) inherits SIGINT
        # ignored, and Python then installs no KeyboardInterrupt handler at all
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            with SyncEngine(load_profile({str(local_profile(tmp_path))!r})) as engine:
                print("ready", flush=True)
                result = engine.submit(Execution({str(slow)!r})).result()
                print("returned", result.state, result.message, flush=True)
        except KeyboardInterrupt:
            print("KeyboardInterrupt", flush=True)
            sys.exit(7)
        """))
    proc = subprocess.Popen([sys.executable, str(program)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        deadline = time.monotonic() + 60
        while not running.exists():  # the script is running, whatever the machine's load
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
            time.sleep(0.05)
        proc.send_signal(subprocess.signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 7, (out, err)
    assert "KeyboardInterrupt" in out and "Group" not in err
