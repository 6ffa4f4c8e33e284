"""A loop created before fork() keeps working in the child and in the parent."""

from __future__ import annotations

import os
import socket

import pytest


@pytest.mark.skipif(not hasattr(os, 'fork'), reason='needs fork()')
def test_fork_child_and_parent_loops_both_work(loop):
    parent_sock, parent_peer = socket.socketpair()
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 1
            try:
                # The child registers fds of its own; they must not disturb the parent.
                child_sock, child_peer = socket.socketpair()
                got = []

                def on_read():
                    got.append(child_sock.recv(16))
                    loop.stop()

                loop.add_reader(child_sock.fileno(), on_read)
                child_peer.send(b'child')
                loop.call_later(5, loop.stop)
                loop.run_forever()
                code = 0 if got == [b'child'] else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0

        got = []

        def on_parent_read():
            got.append(parent_sock.recv(16))
            loop.stop()

        loop.add_reader(parent_sock.fileno(), on_parent_read)
        parent_peer.send(b'parent')
        loop.call_later(5, loop.stop)
        loop.run_forever()
        assert got == [b'parent']
        assert loop.remove_reader(parent_sock.fileno())
    finally:
        parent_sock.close()
        parent_peer.close()
