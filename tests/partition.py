"""A network partition between one process and Redis: a TCP proxy that, while cut,
accepts connections and forwards nothing (bytes wait in the socket buffers, as a partition
holds back what TCP retransmits), then forwards everything again when healed."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections.abc import Iterator


class Partition:
    """Listens on a loopback port and forwards to `target` unless cut."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, name="partition-accept", daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/1"

    def cut(self) -> None:
        self._flowing.clear()

    def heal(self) -> None:
        self._flowing.set()

    def close(self) -> None:
        self._closed.set()
        self._flowing.set()
        for sock in (self._listener, *self._sockets):
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        self._flowing.wait()  # a connection made during the cut gets nowhere until healed
        if self._closed.is_set():
            client.close()
            return
        server = socket.create_connection(("127.0.0.1", self.target_port))
        self._sockets += [client, server]
        peer = {client: server, server: client}
        try:
            while not self._closed.is_set():
                self._flowing.wait()
                ready, _, _ = select.select(list(peer), [], [], 0.2)
                if not self._flowing.is_set():
                    continue  # cut while waiting: leave the bytes where they are
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peer[sock].sendall(data)
        except OSError:
            return
        finally:
            client.close()
            server.close()


@contextlib.contextmanager
def partition(target_port: int) -> Iterator[Partition]:
    proxy = Partition(target_port)
    try:
        yield proxy
    finally:
        proxy.close()
