"""A faulty network between a client and the S3 stand-in: an HTTP proxy on loopback that fails the first attempt of
every distinct request, in turn with each fault a real S3 endpoint shows under load, and forwards every retry.

- `throttled`: 503 SlowDown, S3's answer to too many requests;
- `server error`: 500 InternalError;
- `stalled`: no answer until the client's read timeout has passed, then the connection closed;
- `reset`: the connection closed with no answer.

A request is the same request when its method, path and query (less the signature's parameters) are; `faults`
counts what was injected by (fault, method), `forwarded` what reached the stand-in.
"""

from __future__ import annotations

import http.client
import itertools
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

FAULTS = ("throttled", "server error", "stalled", "reset")
ERRORS = {
    "throttled": (503, "SlowDown", "Please reduce your request rate."),
    "server error": (500, "InternalError", "We encountered an internal error. Please try again."),
}
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "trailer", "upgrade"}


class FaultyS3Proxy:
    """The proxy in front of the stand-in at `upstream` (http://host:port); `stall_seconds` longer than the client's
    read timeout. Use as a context manager; `endpoint` is its URL."""

    def __init__(self, upstream: str, stall_seconds: float) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.stall_seconds = stall_seconds
        self.faults: Counter[tuple[str, str]] = Counter()
        self.forwarded: Counter[str] = Counter()
        self._seen: set[tuple[str, str, tuple]] = set()
        self._next_fault = itertools.cycle(FAULTS)
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FaultyS3Proxy:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def fault_for(self, method: str, target: str) -> str | None:
        """The fault to inject into this request: one for the first attempt of each distinct request, None after."""
        parts = urlsplit(target)
        query = tuple(
            sorted((k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if "amz" not in k.lower())
        )
        key = (method, parts.path, query)
        with self._lock:
            if key in self._seen:
                self.forwarded[method] += 1
                return None
            self._seen.add(key)
            fault = next(self._next_fault)
            self.faults[(fault, method)] += 1
            return fault

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while size := int(self.rfile.readline().split(b";")[0], 16):
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    while self.rfile.readline() not in (b"\r\n", b""):  # trailers
                        pass
                    return b"".join(chunks)
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _handle(self) -> None:
                body = self._body()  # read in full first, as a real endpoint would before failing a write
                fault = proxy.fault_for(self.command, self.path)
                if fault in ERRORS:
                    status, code, message = ERRORS[fault]
                    xml = f"<Error><Code>{code}</Code><Message>{message}</Message></Error>".encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(xml)))
                    self.end_headers()
                    self.wfile.write(xml)
                    return
                if fault is not None:  # stalled or reset: no answer at all
                    if fault == "stalled":
                        time.sleep(proxy.stall_seconds)
                    self.close_connection = True
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                headers["Content-Length"] = str(len(body))
                connection = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    connection.request(self.command, self.path, body=body, headers=headers)
                    answer = connection.getresponse()
                    data = answer.read()
                finally:
                    connection.close()
                self.send_response(answer.status, answer.reason)
                for key, value in answer.getheaders():
                    if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
                        self.send_header(key, value)
                # A HEAD's Content-Length is the object's size, not its (empty) body's.
                length = answer.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(data))
                self.send_header("Content-Length", length)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        return Handler
