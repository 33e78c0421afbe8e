"""Running an exec step's command: no shell, a timeout, and the tail of its output kept."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import Any

#: Output kept from an exec step, per stream.
EXEC_OUTPUT_LIMIT = 4096


async def run_command(command: list[str], timeout: float, env: dict[str, str]) -> dict[str, Any]:
    """Run ``command`` with ``env`` added to ours; say how it went, as history evidence.

    Returns:
        ``returncode`` (-1 when it could not start or timed out), ``command``,
        and ``error`` when it failed; ``seconds``, ``stdout`` and ``stderr``
        (their last :data:`EXEC_OUTPUT_LIMIT` bytes) when it ran to its end.
    """
    started = time.monotonic()
    try:
        process = await asyncio.create_subprocess_exec(
            *command,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **env},
        )
    except OSError as exc:
        return {"returncode": -1, "error": f"cannot start {command[0]}: {exc}", "command": command}
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        with contextlib.suppress(ProcessLookupError):
            await process.wait()
        return {"returncode": -1, "error": f"timed out after {timeout:g}s", "command": command}
    result: dict[str, Any] = {
        "command": command,
        "returncode": process.returncode,
        "seconds": round(time.monotonic() - started, 3),
        "stdout": stdout[-EXEC_OUTPUT_LIMIT:].decode(errors="replace"),
        "stderr": stderr[-EXEC_OUTPUT_LIMIT:].decode(errors="replace"),
    }
    if process.returncode != 0:
        result["error"] = f"{command[0]} exited with {process.returncode}"
    return result
