"""A fake OpenAI-compatible LLM: a real HTTP server on 127.0.0.1 answering from a script.

The script is a function ``(request_body, call_index) -> Action``: a reply (valid or invalid JSON, after
an optional delay), an HTTP status (429 with Retry-After, 500, 401 ...), or a dropped connection.
``smart_reply`` plays a well-behaved LLM: it reads the prompt and answers the JSON each of our
templates asks for, built from the passage, so runs are deterministic and checkable.

``response_format`` is checked as a server would: its shape in the two dialects (``json_schema`` as
OpenAI/vLLM take it, ``json_object`` with a ``schema`` as llama-cpp-python's server takes it), the
schema itself (a valid JSON Schema), and which dialects this server accepts (``accepts``); a bad one
gets the 400/422 a real server sends. Every request's ``response_format`` is recorded, and every 200
reply is validated against the schema it was asked under (``schema_violations``), so a test sees
whether the schemas we send accept the answers we expect.
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
    finish_reason: str = "stop"  # "length": cut off by max_tokens


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


def schema_of(body: dict) -> dict | None:
    """The JSON schema a request asks its answer to follow (either dialect), or None."""
    rf = body.get("response_format")
    if not rf:
        return None
    if rf.get("type") == "json_schema":
        return rf["json_schema"]["schema"]
    return rf.get("schema")


def constrained_reply(body: dict, n: int) -> Action:
    """A small model's behaviour: chatter unless decoding is constrained by a schema."""
    if schema_of(body) is None:
        return Reply("Sure! Here is a query about the passage: what is it about")
    return smart_reply(body, n)


def response_format_error(rf: object, accepts: frozenset[str]) -> str | None:
    """Why a server would refuse ``rf`` (None: it is fine)."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    if not isinstance(rf, dict) or rf.get("type") not in {"text", "json_object", "json_schema"}:
        return f"response_format.type must be text, json_object or json_schema, got {rf!r}"
    kind = rf["type"]
    if kind != "text" and kind not in accepts:
        return f"response_format.type {kind!r} is not supported by this server"
    if kind == "json_schema":
        spec = rf.get("json_schema")
        if not isinstance(spec, dict) or set(spec) - {"name", "schema", "strict", "description"}:
            return f"response_format.json_schema must be {{name, schema}}, got {spec!r}"
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", str(spec.get("name", ""))):
            return (
                f"response_format.json_schema.name must match [A-Za-z0-9_-]{{1,64}}, got {spec.get('name')!r}"
            )
        schema = spec.get("schema")
    elif kind == "json_object":
        if set(rf) - {"type", "schema"}:
            return f"response_format json_object takes type and schema only, got {sorted(rf)}"
        schema = rf.get("schema", {})
    else:
        return None
    if not isinstance(schema, dict):
        return f"response_format schema must be an object, got {schema!r}"
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as e:
        return f"response_format schema is not a valid JSON Schema: {e.message}"
    return None


class FakeLLM:
    """``with FakeLLM(script) as llm: ... llm.url ...``; counts requests and the peak concurrency."""

    def __init__(
        self,
        script: Script = smart_reply,
        model: str = "fake-llm",
        accepts: frozenset[str] = frozenset({"json_schema", "json_object"}),
        rejected_status: int = 400,
    ) -> None:
        self.script = script
        self.model = model
        self.accepts = accepts
        # a refused response_format: llama-cpp-python 0.3.36 answers 500 (its validation error, wrapped)
        self.rejected_status = rejected_status
        self.bodies: list[dict] = []
        self.response_formats: list[dict | None] = []
        self.schema_violations: list[str] = []
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
                rf = body.get("response_format")
                with fake._lock:
                    fake.response_formats.append(rf)
                if rf is not None and (why := response_format_error(rf, fake.accepts)):
                    self._send(fake.rejected_status, {"error": {"message": why, "param": "response_format"}})
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
                    fake._check_against_schema(body, action.content)
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
                                    "finish_reason": action.finish_reason,
                                    "message": {"role": "assistant", "content": action.content},
                                }
                            ],
                            # words stand in for tokens
                            "usage": {
                                "prompt_tokens": len(prompt_of(body).split()),
                                "completion_tokens": len(action.content.split()),
                                "total_tokens": len(prompt_of(body).split()) + len(action.content.split()),
                            },
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

    def _check_against_schema(self, body: dict, content: str) -> None:
        from jsonschema import Draft202012Validator

        schema = schema_of(body)
        if schema is None:
            return
        try:
            errors = [e.message for e in Draft202012Validator(schema).iter_errors(json.loads(content))]
        except json.JSONDecodeError as e:
            errors = [f"not JSON: {e.msg}"]
        with self._lock:
            self.schema_violations.extend(errors)

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
