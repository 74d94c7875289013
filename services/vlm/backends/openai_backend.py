"""`openai` backend: any OpenAI-compatible chat-completions server (vllm serve, SGLang, a cloud API).

Usage:
    b = OpenAIBackend.from_options({"base_url": "http://127.0.0.1:8000/v1", "concurrency": 8})
    b.setup()                      # no model given: asks GET /models and takes the first
    b.bbox(rgb, "the green cup")   # POST /chat/completions with the image as a data URL

Several requests may be in flight at once (one httpx.Client shared by the service's worker
threads, `concurrency` connections) so the server can batch them. Connect errors, timeouts,
HTTP 429 and 5xx are retried `retries` times with doubling back-off; other HTTP errors are not.
All of it stays inside the caller's deadline (protocol/deadline.py): each attempt's timeouts are
capped by the time left, and no attempt or back-off starts that cannot end before it.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Literal

from protocol import deadline

from ..errors import OptionError, UpstreamError, UpstreamTimeout, excerpt
from . import parse_options
from .chat import ChatBackend, ChatOptions, Completion

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
REPLY_RESERVE_S = 0.2  # of the caller's deadline, kept for the reply to travel back
MIN_ATTEMPT_S = 0.05  # an HTTP attempt is not started with less of the deadline left
INSTALL_HINT = (
    "make env SERVICE=vlm BACKEND=openai (pip install -r services/vlm/requirements-openai.txt)"
)


@dataclass(frozen=True)
class OpenAIOptions(ChatOptions):
    base_url: str = "http://127.0.0.1:8000/v1"  # `vllm serve` default address, with /v1
    model: str | None = None  # None: the first model listed by GET {base_url}/models
    api_key_env: str = "OPENAI_API_KEY"  # env var holding the key; unset -> no Authorization
    # keep timeout * (retries + 1) under the mesh client's timeout_s for vlm (60 s by default),
    # or the client gives up and resends while this request still holds the model server
    timeout: float = 25.0  # seconds to wait for one answer
    connect_timeout: float = 5.0  # seconds to open a connection
    retries: int = 1  # extra attempts after connect errors, timeouts, HTTP 429/5xx
    retry_backoff: float = 0.5  # seconds before the first retry, doubled each time
    token_limit_field: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"  # newer APIs
    extra_body: dict | None = None  # merged into every request, e.g. {"top_k": 1}


class OpenAIBackend(ChatBackend):
    name = "openai"

    def __init__(self, opts: OpenAIOptions, *, key_required: bool = False):
        super().__init__(opts)
        if not opts.base_url.startswith(("http://", "https://")):
            raise OptionError(
                f"option 'base_url': {opts.base_url!r} must start with http:// or https:// "
                f"(e.g. http://127.0.0.1:8000/v1)"
            )
        for name in ("timeout", "connect_timeout"):
            if getattr(opts, name) <= 0:
                raise OptionError(
                    f"option {name!r}: must be > 0 seconds, got {getattr(opts, name)}"
                )
        if opts.retries < 0 or opts.retry_backoff < 0:
            raise OptionError("options 'retries' and 'retry_backoff': must be >= 0")
        self.opts: OpenAIOptions = opts
        self.model = opts.model
        self._key_required = key_required
        self._client = None
        self._httpx = None

    @classmethod
    def from_options(cls, options: dict) -> OpenAIBackend:
        opts = parse_options(OpenAIOptions, options, "openai")
        return cls(opts, key_required="api_key_env" in options)

    def setup(self) -> None:
        try:
            import httpx
        except ImportError:
            raise ImportError(f"the openai backend needs httpx: {INSTALL_HINT}") from None
        self._httpx = httpx
        headers = {"Accept": "application/json"}
        key = os.environ.get(self.opts.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        elif self._key_required:
            raise OptionError(
                f"option 'api_key_env': environment variable {self.opts.api_key_env} is not set; "
                f"export it with the API key"
            )
        n = self.opts.concurrency
        self._client = httpx.Client(
            base_url=self.opts.base_url.rstrip("/") + "/",
            headers=headers,
            timeout=httpx.Timeout(self.opts.timeout, connect=self.opts.connect_timeout),
            limits=httpx.Limits(max_connections=n, max_keepalive_connections=n),
        )
        if self.model is None:
            self.model = self._discover_model()
        log.info(
            "openai backend: %s model=%s coords=%s concurrency=%d",
            self.opts.base_url,
            self.model,
            self.conv.coords,
            n,
        )

    def _discover_model(self) -> str:
        data = self._request("GET", "models")
        models = data.get("data") if isinstance(data, dict) else None
        ids = [m.get("id") for m in models or [] if isinstance(m, dict)]
        if not ids or not isinstance(ids[0], str):
            raise UpstreamError(
                f"{self._url('models')} lists no models ({excerpt(str(data), 300)}); "
                f"set the option model"
            )
        return ids[0]

    def _url(self, path: str) -> str:
        return self.opts.base_url.rstrip("/") + "/" + path

    def request_body(self, messages: list) -> dict:
        """The chat-completions JSON for `messages` (public for tests and debugging)."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            self.opts.token_limit_field: self.opts.max_tokens,
            "temperature": self.opts.temperature,
        }
        body.update(self.opts.extra_body or {})
        return body

    def complete(self, messages: list) -> Completion:
        data = self._request("POST", "chat/completions", self.request_body(messages))
        return _completion(data, self._url("chat/completions"))

    def _request(self, method: str, path: str, payload: dict | None = None) -> Any:
        if self._client is None:
            raise UpstreamError("the openai backend is not set up; call setup() first")
        httpx = self._httpx
        url = self._url(path)
        delay = self.opts.retry_backoff
        err: UpstreamError | None = None
        for attempt in range(self.opts.retries + 1):
            if attempt:
                left = _budget()
                if left is not None and delay + MIN_ATTEMPT_S > left:
                    raise self._deadline_error(url, err, attempt, left, f"retry {attempt}")
                log.warning(
                    "%s %s: %s; retry %d/%d in %.2fs",
                    method,
                    url,
                    err,
                    attempt,
                    self.opts.retries,
                    delay,
                )
                time.sleep(delay)
                delay *= 2
            left = _budget()
            if left is not None and left < MIN_ATTEMPT_S:
                raise self._deadline_error(url, err, attempt, left, f"attempt {attempt + 1}")
            try:
                r = self._client.request(method, path, json=payload, timeout=self._timeout(left))
            except httpx.TimeoutException as e:
                if left is not None and left < max(self.opts.timeout, self.opts.connect_timeout):
                    err = UpstreamTimeout(
                        f"{url}: no answer within the caller's deadline ({left:.2f}s were left "
                        f"of it for attempt {attempt + 1}; the backend's own timeout="
                        f"{self.opts.timeout}s) ({type(e).__name__})"
                    )
                else:
                    err = UpstreamTimeout(
                        f"{url}: no answer within timeout={self.opts.timeout}s "
                        f"(connect_timeout={self.opts.connect_timeout}s) after "
                        f"{attempt + 1} attempt(s) ({type(e).__name__}); raise the option timeout"
                    )
                continue
            except httpx.TransportError as e:
                err = UpstreamError(
                    f"cannot reach {url}: {e or type(e).__name__}; is the server running? "
                    f"(option base_url={self.opts.base_url})"
                )
                continue
            if r.status_code == 200:
                try:
                    return r.json()
                except ValueError:
                    raise UpstreamError(
                        f"{url} answered HTTP 200 with a body that is not JSON: "
                        f"{excerpt(r.text, 500)!r}"
                    ) from None
            err = _http_error(url, r, self.opts.api_key_env)
            if r.status_code not in RETRY_STATUS:
                raise err
        raise err or UpstreamError(f"{url}: no attempt was made (retries={self.opts.retries})")

    def _timeout(self, left: float | None) -> Any:
        """This attempt's httpx timeouts: the options', capped by the caller's time left."""
        if left is None:
            return self._httpx.Timeout(self.opts.timeout, connect=self.opts.connect_timeout)
        return self._httpx.Timeout(
            min(self.opts.timeout, left), connect=min(self.opts.connect_timeout, left)
        )

    def _deadline_error(
        self, url: str, err: UpstreamError | None, attempt: int, left: float, step: str
    ) -> UpstreamTimeout:
        """The caller's deadline leaves no time for `step`: stop now, naming the deadline."""
        why = f" after: {err}" if err is not None else ""
        return UpstreamTimeout(
            f"{url}: stopped at the caller's deadline before {step} of "
            f"{self.opts.retries + 1} ({max(left, 0.0):.2f}s left){why}; give the call a longer "
            f"timeout (services.yaml vlm timeout_s) or lower the backend options timeout/retries"
        )

    def info(self) -> dict:
        return {**super().info(), "base_url": self.opts.base_url, "model": self.model}

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _budget() -> float | None:
    """Seconds this request may still spend on the model server (None: no caller deadline)."""
    t = deadline.left()
    return None if t is None else t - REPLY_RESERVE_S


def _http_error(url: str, r: Any, key_env: str) -> UpstreamError:
    """An UpstreamError for a non-200 reply, with the server's own message and a fix."""
    detail = r.text
    try:
        body = r.json()
        if isinstance(body, dict):
            e = body.get("error", body)
            detail = (
                (e.get("message") if isinstance(e, dict) else e) or body.get("detail") or detail
            )
    except ValueError:
        pass
    hint = {
        401: f" Check the API key in ${key_env} (option api_key_env).",
        403: f" Check the API key in ${key_env} (option api_key_env).",
        404: " Check base_url (it usually ends in /v1) and the option model.",
    }.get(r.status_code, "")
    if r.status_code in RETRY_STATUS:
        hint = " The model server is overloaded or failing; retries are used up (option retries)."
    # reported as `internal`, not `overloaded`: the mesh client would retry an `overloaded`
    # reply many times, multiplying the load on a model server that already refuses work
    return UpstreamError(
        f"{url} answered HTTP {r.status_code}: {excerpt(str(detail), 500)}.{hint}",
        status=r.status_code,
    )


def _completion(data: Any, url: str) -> Completion:
    """The first choice's text; UpstreamError when the reply is not a chat completion."""
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise UpstreamError(f"{url}: malformed reply, no choices[0]: {excerpt(str(data), 500)!r}")
    msg = choices[0].get("message")
    content = msg.get("content") if isinstance(msg, dict) else None
    if isinstance(content, list):  # some servers return content parts
        content = "".join(
            p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
        )
    if not isinstance(content, str):
        raise UpstreamError(
            f"{url}: malformed reply, choices[0].message.content is not text: "
            f"{excerpt(str(choices[0]), 500)!r}"
        )
    finish = choices[0].get("finish_reason")
    return Completion(content, finish if isinstance(finish, str) else None)
