"""Minimal HTTP/1.1 keep-alive server on asyncio.Protocol.

It parses the request line and the headers up to the blank line, skips a body of
Content-Length bytes, answers every request with the same small response (with a
Content-Length) and keeps the connection open unless the client asked to close it.
Pipelined requests are answered in order.
"""

from __future__ import annotations

import asyncio

from _serverlib import BACKLOG, parse_args, serve, sockname

BODY = b'Hello, World!\n'
RESPONSE = b'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: keep-alive\r\n\r\n%s' % (
    len(BODY),
    BODY,
)
CLOSE_RESPONSE = RESPONSE.replace(b'keep-alive', b'close')
BAD_REQUEST = b'HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n'
MAX_HEAD = 65536


class Http(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer = b''

    def data_received(self, data: bytes) -> None:
        buf = self.buffer + data if self.buffer else data
        out = []
        while True:
            end = buf.find(b'\r\n\r\n')
            if end < 0:
                if len(buf) > MAX_HEAD:
                    self.fail()
                    return
                break
            lines = buf[:end].split(b'\r\n')
            parts = lines[0].split(b' ')
            if len(parts) != 3 or not parts[2].startswith(b'HTTP/1.'):
                self.fail()
                return
            length = 0
            close = parts[2] == b'HTTP/1.0'
            for line in lines[1:]:
                name, _, value = line.partition(b':')
                name = name.strip().lower()
                if name == b'content-length':
                    length = int(value)
                elif name == b'connection':
                    value = value.strip().lower()
                    close = value == b'close' or (close and value != b'keep-alive')
            if len(buf) < end + 4 + length:
                break  # the body is not all here yet
            buf = buf[end + 4 + length :]
            if close:
                out.append(CLOSE_RESPONSE)
                self.transport.write(b''.join(out))
                self.transport.close()
                return
            out.append(RESPONSE)
        self.buffer = buf
        if out:
            self.transport.write(out[0] if len(out) == 1 else b''.join(out))

    def fail(self) -> None:
        self.transport.write(BAD_REQUEST)
        self.transport.close()


async def start(loop: asyncio.AbstractEventLoop) -> str:
    server = await loop.create_server(Http, args.host, args.port, backlog=BACKLOG)
    return sockname(server)


if __name__ == '__main__':
    args = parse_args(__doc__, unix=False)
    serve(args, start)
