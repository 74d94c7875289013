"""The `openai` backend against ChatCompletionsDouble, a local HTTP test double of a
chat-completions server (`vllm serve` speaks the same API), on a real loopback socket.

The double "sees" like Qwen2.5-VL: it decodes the data-URL image, applies smart_resize as the
server's processor would, finds the green object and answers with its box in those resized
pixels, in Qwen's fenced-JSON style. Scripted replies cover errors, junk and delays.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np
import pytest

from protocol import deadline
from services.vlm.backends import make_backend
from services.vlm.coords import smart_resize
from services.vlm.errors import AnswerParseError, UpstreamError, UpstreamTimeout

MODEL_ID = "Qwen/Qwen2.5-VL-7B-Instruct"
TRUE_BOX = [320, 120, 480, 360]  # where scene() puts the green cup, original pixels


def scene(h: int = 480, w: int = 640) -> np.ndarray:
    img = np.full((h, w, 3), 190, np.uint8)  # (H, W, 3) uint8 RGB, grey table
    x0, y0, x1, y1 = TRUE_BOX
    img[y0:y1, x0:x1] = (20, 170, 30)  # green cup
    img[300:400, 60:200] = (200, 30, 30)  # red mug
    return img


class ChatCompletionsDouble:
    """Test double of an OpenAI-compatible server: GET /v1/models, POST /v1/chat/completions."""

    def __init__(self, models: list[str] | None = None):
        self.models = [MODEL_ID] if models is None else models
        self.requests: list[dict] = []  # {path, headers, body} in arrival order
        self.script: deque[dict] = deque()  # scripted chat replies, then the default
        self.in_flight = 0
        self.max_in_flight = 0
        self.delay = 0.0  # seconds every chat reply waits (unless scripted)
        self._lock = threading.Lock()
        double = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):
                double._record(self, None)
                if self.path != "/v1/models":
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                self._send(200, {"object": "list", "data": [{"id": m} for m in double.models]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                double._record(self, body)
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                with double._lock:
                    step = double.script.popleft() if double.script else {}
                    double.in_flight += 1
                    double.max_in_flight = max(double.max_in_flight, double.in_flight)
                try:
                    time.sleep(step.get("delay", double.delay))
                    if step.get("drop"):
                        return  # close the connection without a reply
                    if "raw" in step:
                        return self._send(step.get("status", 200), step["raw"])
                    if "status" in step and step["status"] != 200:
                        return self._send(step["status"], step.get("body", {}))
                    if "body" in step:
                        return self._send(200, step["body"])
                    text = step["answer"] if "answer" in step else double.see(body)
                    self._send(200, completion(text, step.get("finish_reason", "stop")))
                finally:
                    with double._lock:
                        double.in_flight -= 1

            def _send(self, status, payload):
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout tests)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def _record(self, handler, body) -> None:
        with self._lock:
            self.requests.append(
                {"path": handler.path, "headers": dict(handler.headers), "body": body}
            )

    def chat_requests(self) -> list[dict]:
        return [r["body"] for r in self.requests if r["path"] == "/v1/chat/completions"]

    @staticmethod
    def sent_image(body: dict) -> np.ndarray | None:
        """The RGB image of a chat request, decoded from its data URL."""
        for part in body["messages"][-1]["content"]:
            if part["type"] == "image_url":
                b64 = part["image_url"]["url"].split(",", 1)[1]
                bgr = cv2.imdecode(np.frombuffer(base64.b64decode(b64), np.uint8), cv2.IMREAD_COLOR)
                return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        return None

    def see(self, body: dict) -> str:
        """Answer like Qwen2.5-VL: the green object's box in smart-resized pixels."""
        img = self.sent_image(body)
        if img is None:
            return "I need an image."
        h, w = img.shape[:2]
        mh, mw = smart_resize(h, w)  # the server's processor resizes what it receives
        green = (img[..., 1] > 120) & (img[..., 0] < 90) & (img[..., 2] < 90)
        ys, xs = np.nonzero(green)
        sx, sy = mw / w, mh / h
        box = [
            round(xs.min() * sx),
            round(ys.min() * sy),
            round((xs.max() + 1) * sx),
            round((ys.max() + 1) * sy),
        ]
        return (
            "The green cup stands on the right side of the table.\n```json\n[\n"
            f'\t{{"bbox_2d": {box}, "label": "green cup", '
            f'"description": "a green cup on the right of the table"}}\n]\n```'
        )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def completion(text: str, finish_reason: str = "stop") -> dict:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "model": MODEL_ID,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish_reason,
            }
        ],
        "usage": {"prompt_tokens": 400, "completion_tokens": 40, "total_tokens": 440},
    }


@pytest.fixture
def double():
    d = ChatCompletionsDouble()
    yield d
    d.close()


def backend(double, **opts):
    b = make_backend("openai", {"base_url": double.base_url, "retry_backoff": 0.01, **opts})
    b.setup()
    return b


def test_bbox_round_trip_and_the_request_sent(double, monkeypatch):
    monkeypatch.setenv("VLM_TEST_KEY", "sk-test-123")
    b = backend(double, api_key_env="VLM_TEST_KEY", max_tokens=300)
    assert b.model == MODEL_ID  # discovered from GET /v1/models
    out = b.bbox(scene(), "the green cup on the right")
    assert out["box"] == pytest.approx(TRUE_BOX, abs=1.5)
    assert out["label"] == "green cup" and "```json" in out["raw"]
    assert out["model_size"] == [476, 644]
    (req,) = double.chat_requests()
    assert req["model"] == MODEL_ID and req["max_tokens"] == 300 and req["temperature"] == 0.0
    content = req["messages"][-1]["content"]
    assert content[0]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert double.sent_image(req).shape == (476, 644, 3)  # pre-resized by smart_resize
    assert '"the green cup on the right"' in content[1]["text"] and "644x476" in content[1]["text"]
    chat = [r for r in double.requests if r["path"] == "/v1/chat/completions"][0]
    assert chat["headers"]["Authorization"] == "Bearer sk-test-123"
    b.close()


def test_server_side_resize_when_not_pre_resized(double):
    b = backend(
        double,
        model="my-model",
        pre_resize=False,
        image_format="png",
        token_limit_field="max_completion_tokens",
        extra_body={"top_k": 1},
    )
    out = b.bbox(scene(), "the green cup")
    assert out["box"] == pytest.approx(TRUE_BOX, abs=1.5)
    (req,) = double.chat_requests()
    assert double.sent_image(req).shape == (480, 640, 3)
    assert req["messages"][-1]["content"][0]["image_url"]["url"].startswith("data:image/png;")
    assert req["model"] == "my-model" and req["max_completion_tokens"] == 1024 and req["top_k"] == 1
    assert "max_tokens" not in req
    assert not [r for r in double.requests if r["path"] == "/v1/models"]  # model given: no lookup


def test_requests_are_in_flight_together(double):
    double.delay = 0.3
    b = backend(double, model="m", concurrency=8)
    img = scene()
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(b.bbox(img, "the green cup")))
        for _ in range(8)
    ]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8 and double.max_in_flight >= 4
    assert time.monotonic() - t0 < 8 * 0.3  # not one after the other


def test_plan_tasks_parse_qwen_style_answers(double):
    b = backend(double, model="m")
    double.script.extend(
        [
            {"answer": "The request names a colour and an object.\nANSWER: Type I"},
            {"answer": '```json\n["the green cup on the right", "the red mug on the left",]\n```'},
            {
                "answer": '```json\n{"analysis": {"priority": "rightmost"}, "target": "the green cup on the right"}\n```'
            },
            {
                "answer": "The fingers are closed around the cup, lifted off the table.\nANSWER: True"
            },
        ]
    )
    out = b.plan("classify_user_prompt", None, "grab the green cup")
    assert out["result"] == "I" and out["task"] == "classify_user_prompt"
    assert [p["type"] for p in double.chat_requests()[0]["messages"][-1]["content"]] == ["text"]
    out = b.plan("decompose_user_prompt", scene(), "take the cup and the mug")
    assert out["result"] == ["the green cup on the right", "the red mug on the left"]
    assert (
        b.plan("generate_instruction", scene(), None)["result"]["target"]
        == "the green cup on the right"
    )
    assert b.plan("check_grasp_success", scene(), None)["result"] is True
    out = b.plan("mark_bounding_box", scene(), "the green cup")  # default: the double sees
    assert out["result"]["bbox_2d"] == pytest.approx(TRUE_BOX, abs=1.5)


def test_unparseable_answers_are_errors_with_the_raw_text(double):
    b = backend(double, model="m")
    double.script.append({"answer": "I'm sorry, I can't see a green cup here."})
    with pytest.raises(AnswerParseError, match="can't see a green cup") as ei:
        b.bbox(scene(), "the green cup")
    assert ei.value.raw == "I'm sorry, I can't see a green cup here."
    double.script.append({"answer": '```json\n{"bbox_2d": [331, 1', "finish_reason": "length"})
    with pytest.raises(AnswerParseError, match="raise the backend option max_tokens"):
        b.bbox(scene(), "the green cup")
    double.script.append({"answer": '```json\n{"bbox_2d": [500, 300, 400, 200]}\n```'})
    with pytest.raises(Exception, match="inverted"):
        b.bbox(scene(), "the green cup")
    double.script.append({"answer": "It might be true, it might be false."})
    with pytest.raises(AnswerParseError, match="both True and False"):
        b.plan("check_grasp_success", scene(), None)


@pytest.mark.parametrize(
    "step, match",
    [
        ({"raw": b"<html>Bad gateway</html>"}, "not JSON"),
        ({"body": {"object": "error", "message": "oops"}}, "malformed reply, no choices"),
        ({"body": {"choices": [{"message": {"content": None}}]}}, "content is not text"),
    ],
)
def test_malformed_replies(double, step, match):
    b = backend(double, model="m", retries=0)
    double.script.append(step)
    with pytest.raises(UpstreamError, match=match):
        b.bbox(scene(), "the green cup")


def test_timeout_is_retried_then_reported(double):
    b = backend(double, model="m", timeout=0.2, retries=1)
    double.script.extend([{"delay": 0.6}, {"delay": 0.6}])
    with pytest.raises(UpstreamTimeout, match="timeout=0.2s") as ei:
        b.bbox(scene(), "the green cup")
    assert ei.value.code == "timeout" and len(double.chat_requests()) == 2


def test_a_slow_server_is_given_up_at_the_callers_deadline_not_after_the_retries(double):
    # timeout 25 s x (1 + 3 retries) + back-off would be ~100 s; the caller waits 3 s
    b = backend(double, model="m", timeout=25, retries=3, retry_backoff=0.5)
    double.delay = 20.0
    t0 = time.monotonic()
    with deadline.scope(t0 + 3.0), pytest.raises(UpstreamTimeout) as ei:
        b.bbox(scene(), "the green cup")
    took = time.monotonic() - t0
    assert 2.5 < took < 3.3, took  # each attempt's timeout was capped by the time left
    assert "caller's deadline" in str(ei.value) and ei.value.code == "timeout"
    assert len(double.chat_requests()) == 1  # no attempt started that could not finish


def test_no_back_off_is_slept_that_the_deadline_cannot_hold(double):
    b = backend(double, model="m", timeout=25, retries=3, retry_backoff=5.0)
    double.script.append({"status": 503, "body": {"error": {"message": "warming up"}}})
    t0 = time.monotonic()
    with deadline.scope(t0 + 3.0), pytest.raises(UpstreamTimeout) as ei:
        b.bbox(scene(), "the green cup")
    assert time.monotonic() - t0 < 1.0  # the 5 s back-off would outlast the 3 s deadline
    msg = str(ei.value)
    assert "stopped at the caller's deadline before retry 1 of 4" in msg and "HTTP 503" in msg
    assert len(double.chat_requests()) == 1


def test_without_a_deadline_the_options_rule_alone(double):
    b = backend(double, model="m", timeout=0.3, retries=1)
    double.script.extend([{"delay": 0.8}, {"delay": 0.8}])
    assert deadline.current() is None
    with pytest.raises(UpstreamTimeout, match="timeout=0.3s"):
        b.bbox(scene(), "the green cup")
    assert len(double.chat_requests()) == 2


def test_http_errors(double):
    b = backend(double, model="m", retries=2)
    double.script.extend(
        [{"status": 500, "body": {"error": {"message": "engine hiccup"}}}, {"drop": True}]
    )
    assert b.bbox(scene(), "the green cup")["box"] == pytest.approx(TRUE_BOX, abs=1.5)
    assert len(double.chat_requests()) == 3  # 500, dropped connection, then the answer

    double.script.append({"status": 400, "body": {"object": "error", "message": "image too large"}})
    with pytest.raises(UpstreamError, match="HTTP 400: image too large") as ei:
        b.bbox(scene(), "the green cup")
    assert ei.value.status == 400 and len(double.chat_requests()) == 4  # not retried

    double.script.append({"status": 401, "body": {"error": {"message": "invalid key"}}})
    with pytest.raises(UpstreamError, match=r"\$OPENAI_API_KEY"):
        b.bbox(scene(), "the green cup")

    double.script.extend([{"status": 503, "body": {}}] * 3)
    with pytest.raises(UpstreamError, match="HTTP 503") as ei:
        b.bbox(scene(), "the green cup")
    assert ei.value.code == "internal" and len(double.chat_requests()) == 8
    assert "retries are used up" in str(ei.value)


def test_unreachable_server_and_empty_model_list():
    d = ChatCompletionsDouble(models=[])
    with pytest.raises(UpstreamError, match="lists no models .*; set the option model"):
        make_backend("openai", {"base_url": d.base_url}).setup()
    url = d.base_url
    d.close()
    b = make_backend("openai", {"base_url": url, "model": "m", "retries": 1, "retry_backoff": 0.01})
    b.setup()
    with pytest.raises(UpstreamError, match="cannot reach .* is the server running"):
        b.bbox(scene(), "the green cup")


def test_missing_api_key_env_is_refused_at_setup(double, monkeypatch):
    monkeypatch.delenv("VLM_NO_SUCH_KEY", raising=False)
    with pytest.raises(ValueError, match="VLM_NO_SUCH_KEY is not set"):
        backend(double, model="m", api_key_env="VLM_NO_SUCH_KEY")
