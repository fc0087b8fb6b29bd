"""A TCP proxy that delays each direction by a fixed time, standing for a link with that much latency.

    python bench/proxy.py --listen 127.0.0.1:9000 --to 127.0.0.1:8642 --delay-ms 150

Every chunk read from one side is written to the other `delay` seconds after it arrived, in order (the
bandwidth is not limited). Stdlib only; loopback traffic only in the benchmarks that use it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Copy reader to writer, each chunk `delay` seconds after it was read; close the writer at the end."""
    loop = asyncio.get_running_loop()
    pending: asyncio.Queue = asyncio.Queue()

    async def send() -> None:
        while True:
            due, chunk = await pending.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if chunk is None:
                break
            writer.write(chunk)
            await writer.drain()
        writer.close()

    sender = asyncio.ensure_future(send())
    try:
        while chunk := await reader.read(65536):
            pending.put_nowait((loop.time() + delay, chunk))
    except (ConnectionError, OSError):
        pass
    pending.put_nowait((loop.time() + delay, None))
    try:
        await sender
    except (ConnectionError, OSError):
        pass


async def serve(listen: tuple[str, int], target: tuple[str, int], delay: float) -> None:
    async def connection(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(*target)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(pump(client_reader, server_writer, delay), pump(server_reader, client_writer, delay))

    server = await asyncio.start_server(connection, *listen)
    async with server:
        await server.serve_forever()


def address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", type=address, required=True, help="HOST:PORT to accept connections on")
    parser.add_argument("--to", type=address, required=True, help="HOST:PORT to forward them to")
    parser.add_argument("--delay-ms", type=float, required=True, help="added to each direction")
    args = parser.parse_args()
    try:
        asyncio.run(serve(args.listen, args.to, args.delay_ms / 1000))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
