"""Many fast commands at once on one pooled SSH connection: none fails and the connection
survives. (An EOF sent after a finished command's channel was closed made sshd drop the
whole connection; commands without stdin now get /dev/null instead of our EOF.)"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from vclvirt.node.ssh import SSHTransport


def test_fast_commands_from_many_threads_keep_one_connection(inventory: Any) -> None:
    """400 `echo` commands from 8 threads: every answer right, one connection for all."""
    transport = SSHTransport(inventory.host("node-a"), connect_timeout=10)
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(lambda i: transport.run(["echo", str(i)]).text, range(400)))
        assert answers == [f"{i}\n" for i in range(400)]
        assert transport.connections_opened == 1
    finally:
        transport.close()


def test_a_command_reading_stdin_gets_end_of_file_at_once(inventory: Any) -> None:
    """Without stdin a command that reads it sees end of file and finishes (no hang)."""
    transport = SSHTransport(inventory.host("node-a"), connect_timeout=10)
    try:
        assert transport.run(["sh", "-c", "cat; echo done"], timeout=20).text == "done\n"
        assert transport.run(["cat"], stdin=b"given\n").text == "given\n"
    finally:
        transport.close()
