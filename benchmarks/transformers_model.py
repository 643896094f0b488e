"""The seed's way, as a `Model`: Hugging Face transformers `generate`, batch 1, the whole prompt every turn.

Used by `agent_workload.py --transformers MODEL_DIR` on the GPU machine: the model is built from
QwQ-32B's config.json with random weights, directly on the GPU.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence

from qwq_agent.agent.chat_format import render
from qwq_agent.agent.messages import Message, ToolSpec
from qwq_agent.protocols import Completion, ModelEvent, SamplingParams, TextDelta, Usage


class _FirstToken:
    """A generate() streamer that notes when the first new token arrives (the prompt comes first)."""

    def __init__(self) -> None:
        self.calls = 0
        self.first: float | None = None

    def put(self, value) -> None:
        self.calls += 1
        if self.calls == 2 and self.first is None:
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


class TransformersModel:
    def __init__(self, model_dir: str) -> None:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        started = time.perf_counter()
        config = AutoConfig.from_pretrained(model_dir)
        torch.manual_seed(0)
        with torch.device("cuda"):
            try:
                self.model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
            except TypeError:  # transformers < 4.56 names it torch_dtype
                self.model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.bfloat16)
        self.model.eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.load_s = time.perf_counter() - started
        self.name = "transformers-generate-batch1"
        self._lock = asyncio.Lock()  # batch 1: one generate at a time
        print(f"transformers model built in {self.load_s:.1f} s", flush=True)

    async def stream(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolSpec],
        params: SamplingParams,
        *,
        prefix: str = "",
    ) -> AsyncIterator[ModelEvent]:
        prompt = render(list(messages), list(tools)) + prefix
        async with self._lock:
            text, usage = await asyncio.to_thread(self._generate, prompt, params)
        yield TextDelta(text=text)
        yield Completion(text=text, prompt=prompt, usage=usage)

    def _generate(self, prompt: str, params: SamplingParams) -> tuple[str, Usage]:
        import torch

        ids = self.tokenizer(prompt, return_tensors="pt").input_ids.to("cuda")
        streamer = _FirstToken()
        started = time.perf_counter()
        with torch.no_grad():
            out = self.model.generate(
                ids,
                max_new_tokens=params.max_new_tokens,
                min_new_tokens=params.max_new_tokens if params.ignore_eos else None,
                do_sample=True,
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=params.top_k,
                streamer=streamer,
            )
        torch.cuda.synchronize()
        ended = time.perf_counter()
        new = out[0, ids.shape[1] :]
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        usage = Usage(
            prompt_tokens=int(ids.shape[1]),
            cached_tokens=0,
            completion_tokens=int(new.shape[0]),
            finish_reason="length",
            ttft_s=(streamer.first or ended) - started,
            latency_s=ended - started,
        )
        return text, usage

    async def aclose(self) -> None:
        pass
