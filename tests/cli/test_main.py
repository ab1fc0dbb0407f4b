"""The ``bnlab`` entry point itself."""

import os
import subprocess
import sys


def test_a_closed_output_pipe_ends_the_command_quietly():
    # As `bnlab selfcheck | head -1`: the reader is gone before the table is written.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([sys.executable, "-m", "bnlab", "selfcheck"], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write_end)
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
    assert done.returncode == 141  # 128 + SIGPIPE, as a shell reports a killed reader


def test_a_bad_kernel_setting_in_the_environment_is_a_one_line_error(tmp_path, monkeypatch,
                                                                      capsys):
    from bnlab.cli import main

    monkeypatch.setenv("BNLAB_KERNEL", "bogus")
    out = tmp_path / "run"
    code = main(["train", "--epochs", "1", "--no-download", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == ("bnlab train: error: the environment variable BNLAB_KERNEL must be "
                           "one of auto, fused, triton, reference; got 'bogus'")
    assert not out.exists()  # refused before anything was loaded or written
