"""A tiny OpenAI-compatible chat-completions server the test controls.

It answers at once by default. `hold()` makes it keep the next requests open until the test
answers them, which is how a test knows a Celery task is mid-flight, deterministically.
"""

from __future__ import annotations

import json
import queue
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Never wait forever: a held request that the test forgot is answered with an error.
HOLD_LIMIT_SECONDS = 60


@dataclass
class HeldRequest:
    """One request the server is holding open until `answer` is called."""

    body: dict
    status: int = 200
    text: str = ""
    released: threading.Event = field(default_factory=threading.Event)

    @property
    def question(self) -> str:
        users = [m["content"] for m in self.body.get("messages", []) if m["role"] == "user"]
        return users[-1] if users else ""

    def answer(self, text: str = "", *, status: int = 200) -> None:
        self.text, self.status = text, status
        self.released.set()


class FakeAI:
    """Serve `POST /v1/chat/completions` on a loopback port in a background thread."""

    def __init__(self) -> None:
        self.holding = False
        self.held: queue.Queue[HeldRequest] = queue.Queue()
        self.questions: list[str] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                request = HeldRequest(body=body)
                with fake._lock:
                    fake.questions.append(request.question)
                    holding = fake.holding
                if holding:
                    fake.held.put(request)
                    if not request.released.wait(HOLD_LIMIT_SECONDS):
                        request.answer(status=503)
                else:
                    request.answer(f"Happy to help with: {request.question[:60]}")
                fake._respond(self, request)

            def log_message(self, format: str, *args) -> None:
                pass  # quiet: pytest shows the test's own output

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def start(self) -> FakeAI:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.release_all()
        self.server.shutdown()
        self.server.server_close()

    def hold(self, on: bool = True) -> None:
        with self._lock:
            self.holding = on

    def next_held(self, timeout: float) -> HeldRequest:
        """The next request that arrived while holding (blocks up to `timeout` seconds)."""
        return self.held.get(timeout=timeout)

    def release_all(self) -> None:
        self.hold(False)
        while True:
            try:
                self.held.get_nowait().answer(status=503)
            except queue.Empty:
                return

    @staticmethod
    def _respond(handler: BaseHTTPRequestHandler, request: HeldRequest) -> None:
        if request.status == 200:
            payload = {
                "id": "chatcmpl-test",
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": request.text},
                        "finish_reason": "stop",
                    }
                ],
            }
        else:
            payload = {"error": {"message": "unavailable", "type": "server_error"}}
        data = json.dumps(payload).encode()
        try:
            handler.send_response(request.status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
        except OSError:
            pass  # the worker that asked was killed meanwhile
