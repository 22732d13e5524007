"""A keep-alive HTTP load generator for status reads, in its own process.

``python -m bench.load PORT IDS_FILE SECONDS CONNECTIONS TOKEN`` prints one JSON line:
requests, errors, wall seconds, req/s, p50 and p99 in ms. Raw asyncio sockets, so the client
costs little of the machine's cores; both contenders of ``bench/api.py`` get the same one.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from pathlib import Path


async def _client(port: int, ids: list[str], token: str, stop: float, out: dict) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < stop:
            request = (
                f"GET /api/transcriptions/{random.choice(ids)} HTTP/1.1\r\n"
                f"Host: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\r\n"
            ).encode()
            sent = time.perf_counter()
            writer.write(request)
            status_line = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            out["latencies"].append(time.perf_counter() - sent)
            if b" 200 " not in status_line:
                out["errors"] += 1
    finally:
        writer.close()


async def run(port: int, ids: list[str], seconds: float, connections: int, token: str) -> dict:
    """``connections`` clients reading random jobs for ``seconds``; the figures."""
    out: dict = {"latencies": [], "errors": 0}
    started = time.perf_counter()
    stop = started + seconds
    await asyncio.gather(*(_client(port, ids, token, stop, out) for _ in range(connections)))
    wall = time.perf_counter() - started
    ordered = sorted(out["latencies"])
    count = len(ordered)
    return {
        "requests": count,
        "errors": out["errors"],
        "requests_per_second": round(count / wall, 1),
        "p50_ms": round(ordered[count // 2] * 1000, 2),
        "p99_ms": round(ordered[min(count - 1, int(0.99 * count))] * 1000, 2),
    }


def main() -> None:
    port, ids_file, seconds, connections, token = sys.argv[1:6]
    ids = Path(ids_file).read_text().split()
    asyncio.run(run(int(port), ids, 2.0, int(connections), token))  # warm-up, not counted
    print(json.dumps(asyncio.run(run(int(port), ids, float(seconds), int(connections), token))))


if __name__ == "__main__":
    main()
