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
