"""Shared helpers of the fake FreeBSD commands used by tests/test_bhyve_runner.py.

State lives in $MIGLAB_FAKE_STATE: ``argv.log`` (one JSON line per call),
``modes.json`` (how each fake behaves) and one directory per fake host (the
fake ssh runs commands with that directory as the working directory, as a real
ssh runs them in the remote home directory).
"""

import json
import os
import sys
import time


def state_dir() -> str:
    return os.environ["MIGLAB_FAKE_STATE"]


def record(prog: str, argv: list[str]) -> None:
    line = json.dumps({"prog": prog, "host": os.environ.get("FAKE_HOST", "local"), "argv": argv,
                       "pid": os.getpid(), "cwd": os.getcwd(), "t": time.time()})
    with open(os.path.join(state_dir(), "argv.log"), "a") as f:
        f.write(line + "\n")


def mode(prog: str, default: str = "success") -> str:
    try:
        with open(os.path.join(state_dir(), "modes.json")) as f:
            return json.load(f).get(prog, default)
    except FileNotFoundError:
        return default


def note_pid(prog: str) -> None:
    with open(os.path.join(state_dir(), f"{prog}.pids"), "a") as f:
        f.write(f"{os.getpid()}\n")


def die(msg: str, rc: int) -> None:
    print(msg, file=sys.stderr, flush=True)
    sys.exit(rc)
