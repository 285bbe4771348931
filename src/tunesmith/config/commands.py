"""Settings of the commands that are not part of a run: generators, serve, generate, chat, export."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator


from tunesmith.config.schema import Section


class TeacherConfig(Section):
    """The LLM that writes generated data (`tunesmith generate self-instruct|from-docs`); not part of a run."""

    url: str | None = None
    """OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 (a bare host gets /v1 appended)."""
    model: str | None = None
    """Model name sent to the endpoint; empty uses the first model its /models lists."""
    key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the endpoint's API key; when it is unset no key is sent."""
    local: str | None = None
    """Run this model in-process instead of calling an endpoint: a run folder, model folder or alias."""
    concurrency: int = Field(default=4, gt=0, le=256)
    """Requests in flight at once (prompts per batch for a local teacher)."""
    max_retries: int = Field(default=4, ge=0, le=20)
    """Retries of a request after a 429, a 5xx, a timeout or a lost connection; then it counts as failed."""
    timeout_s: float = Field(default=120.0, gt=0)
    """Seconds one request may take."""
    backoff_s: float = Field(default=1.0, ge=0)
    """Delay before the first retry; it doubles on each retry (with random jitter), up to 60 s."""
    max_tokens: int = Field(default=1024, gt=0)
    """Longest answer the teacher may write per request (≤ serve.max_tokens; a lower stated maximum is adopted)."""
    temperature: float = Field(default=0.7, ge=0, le=2)
    """Sampling temperature of the teacher (some variety is what self-instruct needs)."""

    @model_validator(mode="after")
    def _one_teacher(self) -> TeacherConfig:
        if bool(self.url) == bool(self.local):
            raise ValueError("give exactly one teacher: an endpoint URL (--teacher-url) or a local model "
                             "(--teacher-local)")
        if self.url and not re.match(r"https?://[^/:]+", self.url):
            raise ValueError(f"teacher.url={self.url!r}: expected http://HOST[:PORT][/v1] or https://...")
        return self


class SelfInstructConfig(Section):
    """Alpaca-style self-instruct: new instruction/input/output triples from a few seed tasks."""

    num_examples: int = Field(default=500, gt=0)
    """How many examples the output file should hold (existing lines count, so a rerun resumes)."""
    tasks_per_request: int = Field(default=8, gt=0, le=50)
    """New tasks asked for in each request."""
    seed_examples: int = Field(default=3, ge=1)
    """Seed tasks shown to the teacher in each request."""
    generated_examples: int = Field(default=1, ge=0)
    """Earlier generated tasks shown as well, once there are some."""
    min_instruction_words: int = Field(default=3, ge=1)
    """Shorter instructions are dropped."""
    max_instruction_words: int = Field(default=150, ge=1)
    """Longer instructions are dropped."""
    similarity_threshold: float = Field(default=0.7, gt=0, le=1)
    """ROUGE-L F1 against any kept instruction at or above which a new one is a near-duplicate."""
    max_requests: int | None = Field(default=None, gt=0)
    """Stop after this many requests; empty allows 4x what a perfect teacher would need."""
    seed: int = 0
    """Seed for choosing which tasks each request shows."""


class FromDocsConfig(Section):
    """Question/answer pairs written by the teacher from chunks of the user's documents."""

    per_chunk: int = Field(default=3, gt=0, le=50)
    """Pairs asked for per chunk."""
    chunk_tokens: int = Field(default=512, ge=32)
    """Budget of one chunk, estimated as characters / 4 (the teacher's tokenizer is not known here)."""
    grade: bool = False
    """Ask the teacher, in a second request, whether each pair is grounded in its chunk; keep only those."""
    similarity_threshold: float = Field(default=0.7, gt=0, le=1)
    """ROUGE-L F1 against any kept question at or above which a new one is a near-duplicate."""


class ServeConfig(Section):
    """Limits of `tunesmith serve`: every request is bounded so one client cannot exhaust the server."""

    host: str = "127.0.0.1"
    """Address to listen on; loopback only unless you mean to expose the model to your network."""
    port: int = Field(default=8000, ge=0, le=65535)
    """TCP port (0 picks a free one)."""
    batch_size: int = Field(default=8, gt=0)
    """Waiting answers generated together in one batch."""
    max_queue: int = Field(default=256, gt=0)
    """Requests waiting beyond this are refused with 429."""
    max_body_bytes: int = Field(default=1_000_000, gt=0)
    """Largest request body; larger ones get 413."""
    max_tokens: int = Field(default=1024, gt=0)
    """Largest `max_tokens` a request may ask for."""
    default_max_tokens: int = Field(default=256, gt=0)
    """Answer length when a request does not say (capped by the context left after the prompt)."""
    max_n: int = Field(default=8, gt=0)
    """Most answers (`n`) one request may ask for."""
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """Precision the served model runs in; `auto` = bf16 where the hardware runs it fast, else fp32."""


class DecodingConfig(Section):
    """How answers are decoded: greedy unless a temperature is given, so the same prompt gives the same answer."""

    max_new_tokens: int = Field(default=128, gt=0)
    """Longest answer in tokens."""
    temperature: float = Field(default=0.0, ge=0)
    """0 decodes greedily; above 0 samples at that temperature."""
    top_p: float = Field(default=1.0, gt=0, le=1)
    """Nucleus sampling when sampling."""
    seed: int | None = None
    """Seed for sampling, for repeatable samples."""
    stop: list[str] = []
    """Stop the answer before any of these texts."""
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """Precision the model runs in; `auto` = bf16 where the hardware runs it fast, else fp32."""


class GenerateConfig(DecodingConfig):
    """`tunesmith generate` and `Tuner.generate`: answer prompts in batches."""

    batch_size: int = Field(default=8, gt=0)
    """Prompts generated together."""


class ChatConfig(DecodingConfig):
    """`tunesmith chat`: one conversation in the terminal, answers streamed."""

    max_new_tokens: int = Field(default=256, gt=0)
    """Longest answer in tokens."""


GGUFQuant = Literal["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k_s", "q3_k_m",
                    "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k"]
"""GGUF weight types `tunesmith export --quant` writes (beyond q8_0 through llama.cpp's quantizer)."""


class ExportConfig(Section):
    """`tunesmith export`: a run's model as a plain Hugging Face folder, and GGUF for llama.cpp/Ollama."""

    dtype: Literal["bf16", "fp32"] = "fp32"
    """Precision of the exported weights."""
    merge: bool = False
    """Merge LoRA adapters into the base weights (a standalone model)."""
    gguf: bool = False
    """Also write a GGUF file for llama.cpp (llama, mistral, qwen2, qwen3, gemma, phi3; a LoRA adapter as a GGUF
    adapter beside its base)."""
    quant: GGUFQuant | None = None
    """GGUF weight type (implies --gguf); default f32, or bf16 with --dtype bf16."""
    ollama: bool = False
    """Also write an Ollama Modelfile (template, stop tokens, system prompt) beside the GGUF (implies --gguf)."""
    verify: int = Field(default=0, ge=0)
    """Answer this many held-out test prompts through the GGUF in llama.cpp and through the run, and compare their
    tokens (implies --gguf; 0 = off)."""
    verify_max_new_tokens: int = Field(default=256, ge=1)
    """Longest answer --verify generates; every answer must stop before it."""

    @property
    def writes_gguf(self) -> bool:
        return self.gguf or self.ollama or self.verify > 0 or self.quant is not None
