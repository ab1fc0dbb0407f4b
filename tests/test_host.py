"""Process settings the commands apply (bnlab.host), each checked in a fresh process."""

import subprocess
import sys

import pytest

SCRIPT = """
import ctypes, resource, sys, torch
from bnlab.host import freed_memory_kept

libc = ctypes.CDLL("libc.so.6")
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]

def mmapped(nbytes=900 * 1024):
    # Whether malloc serves a block of this size with its own mmap (glibc's threshold).
    before = libc.mallinfo2().hblks
    block = libc.malloc(nbytes)
    own = libc.mallinfo2().hblks > before
    libc.free(block)
    return own

def faults_per_round():
    x = torch.randn(64, 6, 24, 24)
    for _ in range(5):  # warm up the heap
        (x * 2).sum()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        (x * 2 + 1).sum()  # temporaries of 0.9 MiB, freed and reallocated each round
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20

with freed_memory_kept() as took:
    kept = not mmapped()  # served from the heap: the threshold is raised
libc.malloc_trim(0)  # the heap top grown inside would serve the next block without mmap
restored = mmapped()
with freed_memory_kept():
    faults = faults_per_round()
print(took, kept, restored, faults)
"""


def run(env_extra: dict[str, str]) -> tuple[bool, bool, bool, float]:
    """(took effect, a 0.9 MiB block kept in the heap inside, glibc's threshold back after,
    page faults per round of temporaries inside)."""
    import os

    env = dict(os.environ, **env_extra)
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                         text=True, check=True)
    took, kept, restored, faults = out.stdout.split()
    return took == "True", kept == "True", restored == "True", float(faults)


def _has_mallinfo2() -> bool:
    import ctypes

    try:
        return hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2")
    except OSError:
        return False


@pytest.mark.skipif(not (sys.platform.startswith("linux") and _has_mallinfo2()),
                    reason="glibc >= 2.33 malloc only")
def test_freed_blocks_are_reused_without_page_faults():
    # Page faults are counted only inside: outside, glibc serves these blocks by mmap or from
    # whatever heap is left, and the count varies from run to run (0 to ~430 here).
    took, kept, restored, faults = run({"MALLOC_MMAP_THRESHOLD_": "131072"})  # the default
    assert took and kept and restored
    assert faults < 50  # a few stray pages (thread stacks, small allocations)
    took, kept, restored, _ = run({"MALLOC_MMAP_THRESHOLD_": "131072",
                                   "BNLAB_KEEP_FREED_MEMORY": "0"})
    assert not took and not kept and restored
