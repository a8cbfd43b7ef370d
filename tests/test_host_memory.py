"""glibc settings that let freed host memory be reused: measured by page faults in fresh processes."""

from __future__ import annotations

import subprocess
import sys

import pytest

BLOCKS, BLOCK_BYTES = 16, 20 << 20
"""Like a sweep's compressed cache on CPU: many blocks below 32 MiB, all freed at the end of a batch."""

PROGRAM = f"""
import resource, sys, torch
from infokv.eval.host_memory import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def batch():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [torch.ones({BLOCK_BYTES}, dtype=torch.uint8) for _ in range({BLOCKS})]
    del blocks
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
batch()
print(batch())
"""


def second_batch_faults(mode: str) -> int:
    result = subprocess.run([sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, check=True)
    return int(result.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc settings")
def test_a_second_batch_reuses_freed_blocks_instead_of_faulting_pages_in():
    pages = BLOCKS * BLOCK_BYTES // 4096
    default = second_batch_faults("default")
    assert default > pages // 2  # glibc returned the blocks to the system
    assert second_batch_faults("keep") < default // 2
