"""A lean HTTP/1.1 load client: the api's submission rate (bench/compare.py's rate part) and
the read latencies of bench/large_table.py.

httpx spends about 2.5 ms of client CPU per request (measured: 307 GET /healthz a second
from one client process at 32 connections, the client at a full core), so on a 2-core
machine the client, not the api, set the measured POST /jobs rate. This client writes each
request as prepared bytes on a keep-alive connection and reads the answer by its
Content-Length: tens of microseconds a request. It speaks only what the api answers
(HTTP/1.1, Content-Length bodies), and counts a request as failed on any other answer.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit


@dataclass
class Tally:
    ok: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)


class Connection:
    """One keep-alive connection to one api process."""

    def __init__(self, base_url: str, headers: Mapping[str, str]) -> None:
        url = urlsplit(base_url)
        self.host = url.hostname or "127.0.0.1"
        self.port = url.port or 80
        self._head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    def prepare(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: Mapping[str, str] | None = None,
    ) -> bytes:
        """The request's bytes: `query` url-encoded onto `path`, `body` (if not None) as
        JSON."""
        target = f"{path}?{urlencode(query)}" if query else path
        head = f"{method} {target} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{self._head}"
        if body is None:
            return f"{head}\r\n".encode()
        payload = json.dumps(body, separators=(",", ":")).encode()
        head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        return head.encode() + payload

    async def send(self, request: bytes) -> tuple[int, bytes]:
        """Write one prepared request; (status, body) of its answer."""
        if self._writer is None:
            await self.open()
        assert self._reader is not None and self._writer is not None
        self._writer.write(request)
        head = await self._reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
            elif name.strip().lower() == b"connection" and value.strip().lower() == b"close":
                self.close()
        body = await self._reader.readexactly(length) if length else b""
        return status, body


async def post_all(
    base_urls: Sequence[str],
    headers: Mapping[str, str],
    path: str,
    bodies: Sequence[Any],
    connections: int,
    deadline: float,
) -> tuple[Tally, float]:
    """POST every body to `path` over `connections` connections spread evenly over the
    api processes (connection i goes to base_urls[i % len]); each connection sends its
    next request once the previous one is answered. Returns the tally and the seconds
    from the first request to the last answer. Requests are prepared before the clock
    starts."""
    pool = [Connection(base_urls[i % len(base_urls)], headers) for i in range(connections)]
    # Each api process gets its own copy (the Host header names it).
    prepared = {
        url: [Connection(url, headers).prepare("POST", path, body) for body in bodies]
        for url in dict.fromkeys(base_urls)
    }
    tally = Tally()
    pending: Iterator[int] = iter(range(len(bodies)))

    async def loop(conn: Connection, url: str) -> None:
        requests = prepared[url]
        for index in pending:
            if time.monotonic() > deadline:
                return
            sent = time.perf_counter()
            try:
                status, _ = await conn.send(requests[index])
            except (OSError, asyncio.IncompleteReadError, ValueError):
                tally.errors += 1
                conn.close()
                continue
            tally.latencies.append(time.perf_counter() - sent)
            if 200 <= status < 300:
                tally.ok += 1
            else:
                tally.errors += 1

    try:
        for conn in pool:
            await conn.open()
        started = time.perf_counter()
        await asyncio.gather(
            *(loop(conn, base_urls[i % len(base_urls)]) for i, conn in enumerate(pool))
        )
        return tally, time.perf_counter() - started
    finally:
        for conn in pool:
            conn.close()
