"""The fake Kubernetes API server as its own process, for the DRA benchmark.

``python apiserver_proc.py NODE``. Stdout, one JSON object per line, each with ``t`` =
``time.monotonic_ns()``: ``{"ev": "up", "url"}`` once listening, then
``{"ev": "slices", "n", "tainted", "generations"}`` after every change of a stored
object (``n`` slices, ``tainted`` devices with taints). Stdin: ``quit``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from host.testing import FakeApiServer
from host.testing._apiserver_store import RESOURCE_SLICES


def emit(event: str, **fields: Any) -> None:
    """Write one event line, stamped with the monotonic clock (shared across processes)."""
    fields["ev"] = event
    fields["t"] = time.monotonic_ns()
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


async def main(node: str) -> None:
    async with FakeApiServer(nodes=[node]) as api:

        def changed() -> None:
            slices = api.store.list(RESOURCE_SLICES)["items"]
            tainted = sum(
                "taints" in device for s in slices for device in s["spec"].get("devices", ())
            )
            generations = sorted({s["spec"]["pool"]["generation"] for s in slices})
            emit("slices", n=len(slices), tainted=tainted, generations=generations)

        api.on_change = changed
        emit("up", url=api.url)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while (line := await reader.readline()) and line.strip() != b"quit":
            pass


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
