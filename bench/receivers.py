"""Fast webhook receivers for the benchmarks: raw asyncio HTTP/1.1 servers on 127.0.0.1.

Run as its own process (``python -m bench.receivers --ports 8``) so that receiving does not take
the benchmark's CPU or GIL: it prints the ports it listens on as one JSON line, then answers
every request ``200 ok`` (keep-alive) and records (arrival time, path, webhook-id). No Django.

``GET /_records`` on any of its ports returns the records taken since the last call (and forgets
them): a JSON list of ``[unix time, path, webhook-id]``. ``POST /_stop`` ends the process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time

RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok"


class Receivers:
    def __init__(self) -> None:
        self.records: list[tuple[float, str, str]] = []
        self.stopped = asyncio.Event()

    def take(self) -> bytes:
        records, self.records = self.records, []
        return json.dumps(records).encode()


class _Protocol(asyncio.Protocol):
    def __init__(self, receivers: Receivers) -> None:
        self.receivers = receivers
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).split(b"\r\n")
            length = 0
            webhook_id = ""
            for line in head[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"webhook-id":
                    webhook_id = value.strip().decode()
            if len(self.buffer) < end + 4 + length:
                return
            arrived = time.time()
            del self.buffer[: end + 4 + length]
            method, path = head[0].split(b" ")[:2]
            self._answer(arrived, method, path.decode(), webhook_id)

    def _answer(self, arrived: float, method: bytes, path: str, webhook_id: str) -> None:
        assert self.transport is not None
        if path == "/_records":
            body = self.receivers.take()
            self.transport.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                + f"content-length: {len(body)}\r\n\r\n".encode()
                + body
            )
            return
        if path == "/_stop":
            self.transport.write(RESPONSE)
            self.receivers.stopped.set()
            return
        self.receivers.records.append((arrived, path, webhook_id))
        self.transport.write(RESPONSE)


async def serve(count: int) -> None:
    receivers = Receivers()
    loop = asyncio.get_running_loop()
    servers = [
        await loop.create_server(lambda: _Protocol(receivers), "127.0.0.1", 0, backlog=1024)
        for _ in range(count)
    ]
    ports = [s.sockets[0].getsockname()[1] for s in servers]
    print(json.dumps({"ports": ports}), flush=True)
    await receivers.stopped.wait()
    for server in servers:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ports", type=int, default=8)
    args = parser.parse_args()
    try:
        asyncio.run(serve(args.ports))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
