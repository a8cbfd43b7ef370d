"""Code benchmarks' shared parts: reading the code out of a completion, and a sandbox run's audit trail.

:func:`extract_code` takes the last fenced code block (```` ```python ```` or a bare fence) of the text
after the last ``</think>``; without a fence, the completion is taken as raw code (a continuation).
"""

from __future__ import annotations

import re
from typing import Any

from infokv.eval.sandbox.process import RunResult

FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)
STDERR_KEPT = 2000  # characters of the sandbox's stderr kept (the end, where the traceback is)


def extract_code(completion: str) -> str:
    """The code in ``completion``: its last fenced block (an unclosed last fence runs to the end), else
    the whole text (after any reasoning closed by ``</think>``)."""
    text = completion.rsplit("</think>", 1)[-1]
    blocks = [block for block in FENCE.findall(text) if block.strip()]
    return blocks[-1] if blocks else text


def run_details(result: RunResult) -> dict[str, Any]:
    """What a Score keeps of a sandbox run: the reason, how it ended, the layers in place and what no
    kernel layer enforced, the stderr tail."""
    return {
        "reason": result.reason,
        "detail": result.detail,
        "isolation": list(result.isolation),
        "unenforced": list(result.unenforced),
        "stderr": result.stderr[-STDERR_KEPT:],
        "seconds": round(result.wall_seconds, 3),
    }
