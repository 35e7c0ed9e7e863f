"""Network faults on loopback, for tests: a TCP proxy that can cut or freeze its
connections, and black holes (a port that drops connection requests, one that
accepts and says nothing). Nothing leaves 127.0.0.1."""
import socket
import threading


class TcpProxy:
    """Forwards 127.0.0.1:port to the node; `cut()` drops every connection at once."""

    def __init__(self, upstream_port):
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.pairs = []
        self.frozen = set()   # ids of pairs whose traffic is dropped: a silent peer
        self.cuts = 0
        #: Set: each new connection falls silent once the broker opened it (after
        #: Connection.OpenOk), as a broker that hangs right after the handshake.
        self.freeze_once_open = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.pairs.append((client, upstream))
            watch = OpenOkWatch() if self.freeze_once_open else None
            for a, b, w in ((client, upstream, None), (upstream, client, watch)):
                threading.Thread(target=self._pump, args=(a, b, id(client), w),
                                 daemon=True).start()

    def _pump(self, source, sink, pair_id, watch=None):
        try:
            while data := source.recv(65536):
                if watch is not None and pair_id not in self.frozen:
                    opened_at = watch.feed(data)
                    if opened_at is not None:   # up to the OpenOk through, then silence
                        sink.sendall(data[:opened_at])
                        self.frozen.add(pair_id)
                        continue
                if pair_id not in self.frozen:
                    sink.sendall(data)
        except OSError:
            pass
        with self.lock:  # a closed connection is no longer one to cut or freeze
            self.pairs = [pair for pair in self.pairs if id(pair[0]) != pair_id]
            self.frozen.discard(pair_id)
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self):
        """Drop every connection, as a network failure would (no AMQP close)."""
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for pair in pairs:
            for s in pair:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self.cuts += 1
        return len(pairs)

    def freeze(self):
        """Keep every connection open but let nothing through, either way: the
        peer falls silent, as behind a dead router. Only heartbeats can tell."""
        with self.lock:
            self.frozen.update(id(client) for client, _ in self.pairs)
            return len(self.pairs)

    def close(self):
        self.listener.close()
        self.cut()


class OpenOkWatch:
    """Reads the broker's side of an AMQP connection frame by frame (type, channel,
    size, payload, 0xCE) until Connection.OpenOk (class 10, method 41)."""

    def __init__(self):
        self.buffer = b""
        self.seen = 0       # bytes of the stream before `buffer`

    def feed(self, data):
        """The offset in `data` just after the OpenOk frame, or None (not yet)."""
        start = self.seen + len(self.buffer)     # where `data` begins in the stream
        self.buffer += data
        while len(self.buffer) >= 7:
            size = int.from_bytes(self.buffer[3:7], "big")
            if len(self.buffer) < size + 8:
                break
            frame, self.buffer = self.buffer[:size + 8], self.buffer[size + 8:]
            self.seen += len(frame)
            if frame[0] == 1 and frame[7:11] == bytes([0, 10, 0, 41]):
                return self.seen - start
        return None


class BlackHole:
    """A port on 127.0.0.1 where a connection attempt gets no answer at all, as from
    a host that is gone: `drop` — the SYN is dropped (the listener's accept queue is
    full), connect() hangs; `silent` — the connection is accepted, and no AMQP
    handshake ever comes back."""

    def __init__(self, kind="drop"):
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=0 if kind == "drop" else 16)
        self.port = self.listener.getsockname()[1]
        self.kind = kind
        self.held = []
        if kind == "drop":
            # backlog 0 holds one connection; the kernel then drops further SYNs
            for _ in range(3):
                sock = socket.socket()
                sock.setblocking(False)
                sock.connect_ex(("127.0.0.1", self.port))
                self.held.append(sock)
        else:
            threading.Thread(target=self._hold, daemon=True).start()

    def _hold(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.held.append(conn)   # never read, never answered

    def close(self):
        self.listener.close()
        for sock in self.held:
            sock.close()
