"""The local launcher (``spawn_local``, behind ``bnlab train --nproc``) stops its processes
whatever stops it, and gives them time to end on their own first."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dist_harness import child_env, run_command

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="signals and /proc as on Linux")


def _launcher(tmp_path: Path, worker: str, grace_s: float = 5.0,
              ignored: tuple[int, ...] = ()) -> subprocess.Popen:
    """``ignored``: signals the launcher starts with ignored, as a script's ``cmd &``
    (SIGINT) or ``nohup`` (SIGHUP) start it; what it starts inherits that."""
    script = ("import sys; from bnlab.distributed import spawn_local; "
              f"from dist_workers import {worker}; "
              f"sys.exit(spawn_local(2, {worker}, ({str(tmp_path)!r},), grace_s={grace_s}))")

    def ignore() -> None:
        for sig in ignored:
            signal.signal(sig, signal.SIG_IGN)

    return subprocess.Popen([sys.executable, "-c", script], env=child_env(tmp_path),
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, preexec_fn=ignore)


def _end(launcher: subprocess.Popen, pids: list[int]) -> None:
    """Whatever a test left running: gone."""
    for pid in [launcher.pid, *pids]:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    launcher.wait(30)


def _worker_pids(tmp_path: Path, launcher: subprocess.Popen) -> list[int]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        files = [tmp_path / f"pid-{rank}" for rank in (0, 1)]
        if all(f.exists() and f.read_text() for f in files):
            return [int(f.read_text()) for f in files]
        if launcher.poll() is not None:
            break
        time.sleep(0.1)
    os.killpg(launcher.pid, signal.SIGKILL)
    pytest.fail(f"the workers did not start: {launcher.communicate()}")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has ended (reaped by whoever adopted it, or not yet)


def _gone_within(pids: list[int], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while any(_alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _assert_stopped_on_their_own(tmp_path: Path, pids: list[int]) -> None:
    """Both workers ended, each after stopping as after Ctrl-C (its outputs written)."""
    assert _gone_within(pids, 5)
    assert (tmp_path / "stopped-0").exists() and (tmp_path / "stopped-1").exists()


@pytest.mark.parametrize("sig, ignored", [(signal.SIGTERM, ()), (signal.SIGHUP, ()),
                                          (signal.SIGTERM, (signal.SIGINT,))])
def test_a_terminated_launcher_stops_its_workers_as_after_ctrl_c(tmp_path, sig, ignored):
    launcher = _launcher(tmp_path, "wait_to_be_stopped", ignored=ignored)
    pids = _worker_pids(tmp_path, launcher)
    launcher.send_signal(sig)
    try:
        out, err = launcher.communicate(timeout=30)
    finally:
        os.killpg(launcher.pid, signal.SIGKILL) if launcher.poll() is None else None
    assert launcher.returncode == 128 + sig, err
    # passed on as their first SIGTERM: each stopped as after Ctrl-C, not killed mid-way
    _assert_stopped_on_their_own(tmp_path, pids)


def test_workers_of_a_killed_launcher_do_not_train_on(tmp_path):
    # SIGINT ignored, as under `bnlab train --nproc 2 ... &` in a script: torch's own
    # parent-death signal (SIGINT) was then lost and the workers trained to the end.
    launcher = _launcher(tmp_path, "wait_to_be_stopped", ignored=(signal.SIGINT,))
    pids = _worker_pids(tmp_path, launcher)
    launcher.kill()  # SIGKILL: no handler runs; the kernel tells the workers (Linux)
    launcher.wait(30)  # (not communicate: surviving workers would hold its pipes open)
    try:
        assert _gone_within(pids, 10)
    finally:
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_when_one_fails_the_others_get_time_to_finish_their_outputs(tmp_path):
    done = run_command(
        [sys.executable, "-c",
         "import sys; from bnlab.distributed import spawn_local; "
         "from dist_workers import rank_one_fails; "
         f"sys.exit(spawn_local(2, rank_one_fails, ({str(tmp_path)!r},), grace_s=5))"],
        child_env(tmp_path), tmp_path, 90)
    assert done.returncode == 3, done.stderr
    assert (tmp_path / "rank-0-finished").exists()  # not terminated the moment rank 1 failed


def test_an_ignored_hangup_or_interrupt_stays_ignored(tmp_path):
    # nohup ignores SIGHUP and a script's `cmd &` SIGINT (a Ctrl-C meant for the script's
    # foreground command reaches the whole process group): the run goes on.
    launcher = _launcher(tmp_path, "wait_to_be_stopped",
                         ignored=(signal.SIGHUP, signal.SIGINT))
    pids = _worker_pids(tmp_path, launcher)
    try:
        launcher.send_signal(signal.SIGHUP)
        for pid in pids:
            os.kill(pid, signal.SIGINT)
        time.sleep(2)
        assert launcher.poll() is None and all(_alive(pid) for pid in pids)
    finally:
        _end(launcher, pids)


def test_an_interrupt_sent_to_the_launcher_alone_reaches_the_workers(tmp_path):
    # `kill -INT <launcher>`, not a terminal's Ctrl-C: after grace_s they get SIGTERM,
    # which they take as Ctrl-C
    launcher = _launcher(tmp_path, "wait_to_be_stopped", grace_s=1.0)
    pids = _worker_pids(tmp_path, launcher)
    try:
        launcher.send_signal(signal.SIGINT)
        launcher.wait(30)
        _assert_stopped_on_their_own(tmp_path, pids)
    finally:
        _end(launcher, pids)


@pytest.mark.parametrize("how", ["group SIGTERM", "group SIGHUP", "SIGTERM then SIGHUP"])
def test_a_signal_that_arrives_twice_still_lets_the_workers_finish(tmp_path, how):
    # `timeout`, systemd and a closing terminal signal the whole process group: each worker
    # gets the signal itself and again from the launcher; the second must not kill it
    # while it writes its outputs
    launcher = _launcher(tmp_path, "wait_to_be_stopped")
    pids = _worker_pids(tmp_path, launcher)
    try:
        if how == "group SIGTERM":
            os.killpg(launcher.pid, signal.SIGTERM)
        elif how == "group SIGHUP":
            os.killpg(launcher.pid, signal.SIGHUP)
        else:
            launcher.send_signal(signal.SIGTERM)
            launcher.send_signal(signal.SIGHUP)
        launcher.wait(30)
        assert launcher.returncode in (128 + signal.SIGTERM, 128 + signal.SIGHUP)
        _assert_stopped_on_their_own(tmp_path, pids)
    finally:
        _end(launcher, pids)


def test_a_worker_stopped_by_a_signal_is_not_a_success(tmp_path):
    # torch's spawn wrapper exits 0 on a KeyboardInterrupt its function lets through
    launcher = _launcher(tmp_path, "sleep_forever", grace_s=1.0)
    pids = _worker_pids(tmp_path, launcher)
    try:
        os.kill(pids[1], signal.SIGTERM)
        launcher.wait(30)
        assert launcher.returncode == 130
    finally:
        _end(launcher, pids)
