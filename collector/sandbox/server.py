"""The sandbox's HTTP/1.1 server on 127.0.0.1 (asyncio, in a thread of its own or as `python -m
collector.sandbox`) and its command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from collector.sandbox.core import FULL, REASONS, Repos, Response, Sandbox, repo_list


class Server:
    """Serves a Sandbox on 127.0.0.1 from a background thread (or the current loop via `serve`)."""

    def __init__(self, sandbox: Sandbox | None = None, port: int = 0):
        self.sandbox = sandbox or Sandbox()
        self.port = port
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._ready = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def serve(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port, backlog=2048)
        self.port = self._server.sockets[0].getsockname()[1]
        self._loop = asyncio.get_running_loop()
        self._ready.set()
        async with self._server:
            with contextlib.suppress(asyncio.CancelledError):
                await self._server.serve_forever()

    def start(self) -> Server:
        self._thread = threading.Thread(target=lambda: asyncio.run(self.serve()), daemon=True, name="sandbox")
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("sandbox server did not start")
        return self

    def stop(self) -> None:
        if self._loop and self._server:
            self._loop.call_soon_threadsafe(self._server.close)
        if self._thread:
            self._thread.join(5)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                method, target, _version = line.decode("latin-1").split(" ", 2)
                headers = {}
                while (raw := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = raw.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", 0) or 0))
                headers["x-sandbox-base"] = f"http://{headers.get('host', f'127.0.0.1:{self.port}')}"
                headers["x-sandbox-arrived"] = repr(time.time())  # the hit time, before the latency
                if self.sandbox.latency and not target.startswith("/_sandbox/"):
                    await asyncio.sleep(self.sandbox.latency)
                resp = self.sandbox.handle(method, target, headers, body)
                if target.startswith("/_sandbox/"):
                    await self._send(writer, resp)
                else:
                    await self._transfer(reader, writer, resp, target, headers)
                if headers.get("connection", "").lower() == "close":
                    break
        except (ConnectionError, asyncio.IncompleteReadError, ValueError, asyncio.CancelledError):
            pass  # a client gone, a garbled request, or the server stopping: drop the connection
        finally:
            writer.close()

    async def _transfer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, resp: Response,
                        target: str, headers: dict[str, str]) -> None:
        """Answer an API request and record the transfer: arrival, end, body bytes sent before the
        client went away (ended early: `complete` False)."""
        auth = headers.get("authorization", "")
        record = {"token": auth[7:] if auth.lower().startswith("bearer ") else headers.get("x-api-access-token", ""),
                  "path": urlsplit(target).path, "status": resp.status, "fault": resp.fault,
                  "arrived": float(headers["x-sandbox-arrived"]), "size": len(resp.body), "sent": 0,
                  "complete": False}
        try:
            if resp.action == "reset":
                writer.transport.abort()
                return
            if resp.action == "delay":  # answer late, unless the client gives up first
                with contextlib.suppress(TimeoutError):
                    if await asyncio.wait_for(reader.read(1), resp.seconds) == b"":
                        return
            record["sent"] = await self._send(writer, resp, record)
            record["complete"] = True
        finally:
            record["ended"] = time.time()
            self.sandbox.record_transfer(**record)

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, resp: Response, record: dict[str, Any] | None = None) -> int:
        """Write the reply; returns the body bytes handed to the kernel (kept in record["sent"] as it goes)."""
        head = [f"HTTP/1.1 {resp.status} {REASONS.get(resp.status, 'Status')}"]
        head.append("transfer-encoding: chunked" if resp.chunked else f"content-length: {len(resp.body)}")
        head += [f"{k}: {v}" for k, v in resp.headers.items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        body, step = memoryview(resp.body), 1 if resp.action == "drip" else 65536
        written = 0
        for i in range(0, len(body), step):
            piece = body[i:i + step]
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece) if resp.chunked else piece)
            written += len(piece)
            await writer.drain()
            if record is not None:
                record["sent"] = max(written - writer.transport.get_write_buffer_size(), 0)
            if resp.action == "drip":  # one byte at a time over `seconds`
                await asyncio.sleep(resp.seconds / max(len(resp.body), 1))
        if resp.chunked:
            writer.write(b"0\r\n\r\n")
        await writer.drain()
        return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m collector.sandbox", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8900)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every API reply")
    parser.add_argument("--github-repos", default=None, metavar=f"{FULL}|JSON",
                        help=f"serve full-size GitHub repositories instead of compact ones: {FULL!r}, generated from "
                             "GitHub's documented repository schema, or those of a JSON list, ids and names changed "
                             "(e.g. those Likeastore recorded, read from ../shared/fixtures/likeastore/"
                             "github.connector.init.json beside the clone)")
    args = parser.parse_args(argv)
    repos: Repos = args.github_repos
    if repos is not None and repos != FULL:
        try:
            repos = json.loads(Path(args.github_repos).read_text())
        except (OSError, ValueError) as exc:
            parser.error(f"{args.github_repos}: {exc}")
        if not repo_list(repos):
            parser.error(f"{args.github_repos}: expected a non-empty JSON list of repository objects")
    server = Server(Sandbox(latency=args.latency, repos=repos), args.port)

    async def run() -> None:
        task = asyncio.create_task(server.serve())
        await asyncio.get_running_loop().run_in_executor(None, server._ready.wait)
        print(server.url, flush=True)
        await task

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
