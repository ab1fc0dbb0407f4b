"""Process settings the commands apply (bnlab.host), each checked in a fresh process."""

import subprocess
import sys

import pytest

SCRIPT = """
import ctypes, resource, sys, torch
from bnlab.host import freed_memory_kept

def faults_per_round():
    x = torch.randn(64, 6, 24, 24)
    for _ in range(5):  # warm up the heap
        (x * 2).sum()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        (x * 2 + 1).sum()  # temporaries of 0.9 MiB, freed and reallocated each round
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20

with freed_memory_kept() as took:
    inside = faults_per_round()
print(took, inside, faults_per_round())
"""


def run(env_extra: dict[str, str]) -> tuple[bool, float, float]:
    """(took effect, page faults per round inside, and after leaving)."""
    import os

    env = dict(os.environ, **env_extra)
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                         text=True, check=True)
    took, inside, after = out.stdout.split()
    return took == "True", float(inside), float(after)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_freed_blocks_are_reused_without_page_faults():
    took, inside, after = run({"MALLOC_MMAP_THRESHOLD_": "131072"})  # glibc's default, pinned
    assert took
    assert inside < 50  # a few stray pages (thread stacks, small allocations)
    assert after > 200  # defaults back: each 0.9 MiB temporary is a fresh mmap (~220 faults)
    took, inside, _ = run({"MALLOC_MMAP_THRESHOLD_": "131072", "BNLAB_KEEP_FREED_MEMORY": "0"})
    assert not took
    assert inside > 200
