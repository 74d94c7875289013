"""`vllm` backend: an in-process vllm.LLM on this (CUDA) host, with the same prompts as `openai`.

Usage:
    b = VllmBackend.from_options({"model": "Qwen/Qwen2.5-VL-3B-Instruct"})
    b.setup()                        # imports vllm and loads the model (minutes)
    b.bbox(rgb, "the green cup")

Requests arriving on several service worker threads are joined by a MicroBatcher into one
LLM.chat call (a GPU batch). vllm is imported only in setup(), so this module imports
anywhere; without vllm setup() raises ImportError naming the install command.
"""

from __future__ import annotations

import logging
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

from protocol import deadline
from protocol.deadline import DeadlineExceeded

from ..batching import MicroBatcher
from ..errors import OptionError, UpstreamError, UpstreamTimeout
from . import parse_options
from .chat import ChatBackend, ChatOptions, Completion

log = logging.getLogger(__name__)

REPLY_RESERVE_S = 0.2  # of the caller's deadline, kept for the reply to travel back

INSTALL_HINT = (
    "the vllm backend needs the vllm package on a CUDA host: run "
    "`make env SERVICE=vlm BACKEND=vllm` (pip install -r services/vlm/requirements-vllm.txt), "
    "or use backend openai against a `vllm serve` server"
)


@dataclass(frozen=True)
class VllmOptions(ChatOptions):
    model: str = "Qwen/Qwen2.5-VL-3B-Instruct"  # HF id or local path of the checkpoint
    dtype: str = "auto"  # weights dtype (auto: the checkpoint's, bfloat16 for Qwen2.5-VL)
    max_model_len: int = 8192  # context tokens: prompt + image tokens + answer
    gpu_memory_utilization: float = 0.85  # fraction of GPU memory vLLM may take
    tensor_parallel_size: int = 1  # GPUs per model
    seed: int = 0  # sampling seed (answers are greedy at temperature 0 anyway)
    max_batch: int = 16  # requests joined into one LLM.chat call
    batch_wait_ms: float = 5.0  # how long the batcher waits for more requests
    trust_remote_code: bool = False  # needed only by checkpoints with custom code
    engine_kwargs: dict | None = None  # extra vllm.LLM(...) arguments, passed as is


def llm_kwargs(opts: VllmOptions) -> dict:
    """Arguments of vllm.LLM(...) for these options."""
    kw: dict = {
        "model": opts.model,
        "dtype": opts.dtype,
        "max_model_len": opts.max_model_len,
        "gpu_memory_utilization": opts.gpu_memory_utilization,
        "tensor_parallel_size": opts.tensor_parallel_size,
        "seed": opts.seed,
        "trust_remote_code": opts.trust_remote_code,
        "limit_mm_per_prompt": {"image": 1},
    }
    if opts.coords == "resized":
        # the processor must resize exactly as coords.smart_resize assumes
        kw["mm_processor_kwargs"] = {"min_pixels": opts.min_pixels, "max_pixels": opts.max_pixels}
    kw.update(opts.engine_kwargs or {})
    return kw


def sampling_kwargs(opts: VllmOptions) -> dict:
    """Arguments of vllm.SamplingParams(...) for these options."""
    return {"temperature": opts.temperature, "max_tokens": opts.max_tokens, "seed": opts.seed}


class VllmBackend(ChatBackend):
    name = "vllm"

    def __init__(self, opts: VllmOptions):
        super().__init__(opts)
        if not 0 < opts.gpu_memory_utilization <= 1:
            raise OptionError(
                f"option 'gpu_memory_utilization': must be in (0, 1], got {opts.gpu_memory_utilization}"
            )
        if opts.max_batch < 1 or opts.batch_wait_ms < 0:
            raise OptionError("options 'max_batch' (>= 1) and 'batch_wait_ms' (>= 0) out of range")
        self.opts: VllmOptions = opts
        self._llm = None
        self._sampling = None
        self._batcher: MicroBatcher | None = None

    @classmethod
    def from_options(cls, options: dict) -> VllmBackend:
        return cls(parse_options(VllmOptions, options, "vllm"))

    def setup(self) -> None:
        try:
            import vllm
        except ImportError as e:
            raise ImportError(f"{INSTALL_HINT} ({e})") from None
        kw = llm_kwargs(self.opts)
        log.info("vllm backend: loading %s with %s", self.opts.model, kw)
        self._llm = vllm.LLM(**kw)
        self._sampling = vllm.SamplingParams(**sampling_kwargs(self.opts))
        self._batcher = MicroBatcher(
            self._run_batch, self.opts.max_batch, self.opts.batch_wait_ms / 1000.0, "vllm-batcher"
        )

    def _run_batch(self, conversations: list[list]) -> list[Completion]:
        outs = self._llm.chat(conversations, sampling_params=self._sampling, use_tqdm=False)
        return [Completion(o.outputs[0].text, o.outputs[0].finish_reason) for o in outs]

    def complete(self, messages: list) -> Completion:
        if self._batcher is None:
            raise UpstreamError("the vllm backend is not set up; call setup() first")
        fut = self._batcher.submit(messages, deadline=deadline.current())
        left = deadline.left()  # the caller's deadline (protocol/deadline.py), None = none
        try:
            return fut.result(timeout=None if left is None else max(left - REPLY_RESERVE_S, 0))
        except DeadlineExceeded as e:
            raise UpstreamTimeout(f"vllm {self.opts.model}: not run: {e}") from None
        except FutureTimeout:
            raise UpstreamTimeout(
                f"vllm {self.opts.model}: no answer within the caller's deadline ({left:.2f}s "
                "left when queued); the generation finishes on the GPU and its answer is "
                "dropped - give the call a longer timeout (services.yaml vlm timeout_s)"
            ) from None

    def info(self) -> dict:
        return {**super().info(), "model": self.opts.model}

    def close(self) -> None:
        if self._batcher is not None:
            self._batcher.close()
            self._batcher = None
        self._llm = None
