"""The daemon's HTTP side: `/metrics`, `/healthz`, `/readyz`, `/report.json` and a landing page.

Built on the standard library's `ThreadingHTTPServer` rather than prometheus-client's WSGI app:
the daemon needs four routes besides `/metrics`, one thread per scrape so a slow client never
blocks Prometheus, and no extra dependency; the exposition itself is still prometheus-client's
(`choose_encoder` picks the text or OpenMetrics format from the Accept header).

Port 9847 is the default, from the exporter range of Prometheus's default port allocations
(https://github.com/prometheus/prometheus/wiki/Default-port-allocations, 9100-9999; docs/serve.md).

>>> from fa4doctor.serve.state import DaemonState
>>> server = make_server("127.0.0.1", 0, state=DaemonState, collector=None)
>>> server.server_address[1] > 0
True
>>> server.server_close()
"""

from __future__ import annotations

import json
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

DEFAULT_PORT = 9847

LANDING = """<!doctype html>
<html><head><meta charset="utf-8"><title>fa4doctor</title></head>
<body><h1>fa4doctor node daemon</h1>
<p>Does FlashAttention-4 really work on this GPU node?</p>
<ul>
<li><a href="/metrics">/metrics</a>: Prometheus metrics</li>
<li><a href="/report.json">/report.json</a>: the latest <code>fa4doctor check --json</code></li>
<li><a href="/healthz">/healthz</a>: the daemon is alive</li>
<li><a href="/readyz">/readyz</a>: the first probe cycle has finished, and the probe is not failing</li>
</ul></body></html>
"""


class _Handler(BaseHTTPRequestHandler):
    server: "DaemonHTTPServer"
    timeout = 30  # a client that stalls mid-request frees its thread (socket timeout)
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as two writes: never wait on an ACK
    _head = False  # this request is a HEAD: headers only (RFC 9110 9.3.2)

    def do_GET(self) -> None:  # noqa: N802  (http.server's naming)
        self._head = False
        self._route()

    def do_HEAD(self) -> None:  # noqa: N802  some probes and load balancers check /healthz with HEAD
        self._head = True
        self._route()

    def _route(self) -> None:
        path = self.path.split("?", 1)[0]
        route = {"/": self._landing, "/metrics": self._metrics, "/healthz": self._healthz,
                 "/readyz": self._readyz, "/report.json": self._report}.get(path)
        if route is None:
            self._send(404, "text/plain; charset=utf-8", b"not found: try / for the list of routes\n")
            return
        try:
            route()
        except Exception as exc:  # noqa: BLE001  one bad request never stops the server
            self._send(500, "text/plain; charset=utf-8", f"internal error: {type(exc).__name__}\n".encode())

    def _landing(self) -> None:
        self._send(200, "text/html; charset=utf-8", LANDING.encode())

    def _metrics(self) -> None:
        encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
        self._send(200, content_type, self.server.exposition(encoder, content_type))

    def _healthz(self) -> None:
        self._send(200, "text/plain; charset=utf-8", b"ok\n")

    def _readyz(self) -> None:
        state = self.server.state()
        if state.ready:
            self._send(200, "text/plain; charset=utf-8", b"ready\n")
        elif getattr(state, "probe_cycles", 0):
            why = f"the last {state.probe_failures_in_a_row} probe cycles failed: /report.json is stale\n"
            self._send(503, "text/plain; charset=utf-8", why.encode())
        else:
            self._send(503, "text/plain; charset=utf-8", b"waiting for the first probe cycle\n")

    def _report(self) -> None:
        check = self.server.state().check
        if check is None:
            body = {"error": "no probe report yet", "ready": self.server.state().ready}
            self._send(503, "application/json", json.dumps(body).encode())
        else:
            self._send(200, "application/json", json.dumps(check, indent=1).encode())

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not self._head:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # one line per scrape would drown the daemon's own log


class DaemonHTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # in-flight scrapes never block shutdown
    allow_reuse_address = True
    # listen() backlog: socketserver's default of 5 made 50 clients connecting at once wait for
    # SYN retransmits (p99 1.2 s, issue 13). 128 admits that many at once: a Prometheus HA pair,
    # kubelet probes and a hundred ad-hoc scrapers. Linux caps it at net.core.somaxconn (4096
    # since 5.4); a thread per accepted connection serves them.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], state: Callable[[], Any], collector: Any):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)
        self.state = state
        self.collector = collector
        self.registry = CollectorRegistry(auto_describe=False)
        if collector is not None:
            self.registry.register(collector)

    def exposition(self, encoder: Callable[[Any], bytes], content_type: str) -> bytes:
        """The collector's cached exposition when it has one (collector.py), else the registry's."""
        if hasattr(self.collector, "exposition"):
            return self.collector.exposition(encoder, content_type)
        return encoder(self.registry)


def make_server(host: str, port: int, *, state: Callable[[], Any], collector: Any) -> DaemonHTTPServer:
    """Bind (port 0 picks a free one) without serving yet; call `serve_forever()` in a thread."""
    return DaemonHTTPServer((host, port), state, collector)
