"""A fake OpenAI-compatible LLM: a real HTTP server on 127.0.0.1 answering from a script.

The script is a function ``(request_body, call_index) -> Action``: a reply (valid or invalid JSON, after
an optional delay), an HTTP status (429 with Retry-After, 500, 401 ...), or a dropped connection.
``smart_reply`` plays a well-behaved LLM: it reads the prompt and answers the JSON each of our
templates asks for, built from the passage, so runs are deterministic and checkable.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Reply:
    content: str
    delay: float = 0.0


@dataclass
class Status:
    code: int
    headers: dict = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Drop:
    delay: float = 0.0


Action = Reply | Status | Drop
Script = Callable[[dict, int], Action]


def prompt_of(body: dict) -> str:
    return body["messages"][-1]["content"]


def _between(text: str, start: str, end: str) -> str:
    return text.rsplit(start, 1)[1].split(end, 1)[0]


def passage_of(prompt: str) -> str:
    if prompt.startswith("Given a **Passage** and **Character**"):
        return _between(prompt, "**Passage**:\n", "\n**Character**:")
    return _between(prompt, "**Passage**\n", "\n**Requir")


def kind_of(prompt: str) -> str:
    if prompt.startswith("Given a **Passage** and **Character**"):
        return "configuration"
    if prompt.startswith("Given a **Character**, **Passage**, and **Requirement**"):
        return "query"
    if "faithful translation" in prompt:
        return "bitext"
    if '"S1"' in prompt.split("\n", 1)[0]:
        return "sts"
    return "classification"


def smart_answer(prompt: str) -> dict:
    """The answer a well-behaved LLM would give, derived from the passage."""
    kind = kind_of(prompt)
    passage = passage_of(prompt)
    words = re.findall(r"\w+", passage)
    if kind == "configuration":
        first = _between(prompt, "**Character**:\n", "\n").removeprefix("- ")
        return {"Character": first, "Question_Type": "summary", "Difficulty": "university"}
    if kind == "query":
        n = int(re.search(r"should be (\d+) words", prompt.rsplit("**Requirment**", 1)[1]).group(1))
        return {"Query": " ".join(words[:n])}
    if kind == "bitext":
        sent = " ".join(words[:8])
        return {"Source": sent, "Target": "[translated] " + sent}
    if kind == "sts":
        return {
            "S1": " ".join(words[:8]),
            "S2": " ".join(reversed(words[:8])),
            "S3": "something else entirely",
        }
    return {
        "Task": "Classify the topic of a text",
        "Labels": ["science", "sport", "politics"],
        "Text": " ".join(words[:10]),
        "Label": "science",
    }


def smart_reply(body: dict, n: int) -> Action:
    return Reply(json.dumps(smart_answer(prompt_of(body))))


class FakeLLM:
    """``with FakeLLM(script) as llm: ... llm.url ...``; counts requests and the peak concurrency."""

    def __init__(self, script: Script = smart_reply, model: str = "fake-llm") -> None:
        self.script = script
        self.model = model
        self.bodies: list[dict] = []
        self.in_flight = 0
        self.peak_in_flight = 0
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                return None

            def _send(self, code: int, payload: dict, headers: dict | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, str(v))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                with fake._lock:
                    n = len(fake.bodies)
                    fake.bodies.append(body)
                    fake.in_flight += 1
                    fake.peak_in_flight = max(fake.peak_in_flight, fake.in_flight)
                try:
                    action = fake.script(body, n)
                    if action.delay:
                        time.sleep(action.delay)
                    if isinstance(action, Drop):
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    if isinstance(action, Status):
                        self._send(
                            action.code, {"error": {"message": f"scripted {action.code}"}}, action.headers
                        )
                        return
                    self._send(
                        200,
                        {
                            "id": f"chatcmpl-{n}",
                            "object": "chat.completion",
                            "created": 0,
                            "model": body["model"],
                            "choices": [
                                {
                                    "index": 0,
                                    "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": action.content},
                                }
                            ],
                            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                        },
                    )
                except (BrokenPipeError, ConnectionResetError, OSError):
                    self.close_connection = True  # the client gave up (a timeout): nothing to answer
                finally:
                    with fake._lock:
                        fake.in_flight -= 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def calls(self) -> int:
        with self._lock:
            return len(self.bodies)

    def __enter__(self) -> FakeLLM:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=10)
