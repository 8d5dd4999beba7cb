"""An L4 test server run inside a test network namespace: ``peer_server.py IP:PORT ...``.

Each connection gets one line ``peer=<client ip> local=<ip>:<port>`` followed by
whatever the client sends, echoed until it half-closes.  It stands in for "what is
really at that ClusterIP" (kube-proxy's job) so tests can see whether a connection
arrived untouched (the client's own address) or through the proxy (the node's).
Prints ``ready`` once every address is bound.  Standard library only.
"""

from __future__ import annotations

import asyncio
import signal
import sys


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    peer = writer.get_extra_info("peername")
    local = writer.get_extra_info("sockname")
    writer.write(f"peer={peer[0]} local={local[0]}:{local[1]}\n".encode())
    try:
        async with asyncio.timeout(10.0):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
    except (OSError, TimeoutError):
        pass
    finally:
        writer.close()


async def main(listens: list[str]) -> int:
    servers = []
    for listen in listens:
        host, _, port = listen.rpartition(":")
        servers.append(await asyncio.start_server(handle, host.strip("[]"), int(port)))
    print("ready", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    for server in servers:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
