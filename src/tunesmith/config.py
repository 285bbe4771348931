"""The one typed configuration for every stage: schema, YAML loading, `--set` overrides, validation, saving.

Defaults live only here. Each stage receives its own section (`config.training`, `config.tokenization`...),
never the whole config, so what a stage depends on is visible in its signature. No torch import here:
`tunesmith --help` and config checks stay fast.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tunesmith.errors import ConfigError

DEFAULT_MODEL = "smollm2-135m-instruct"


class Section(BaseModel):
    """Base for config sections: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)


class ModelConfig(Section):
    name: str = DEFAULT_MODEL
    """Model alias (smollm2-135m-instruct), local Hugging Face folder, or hub name."""
    trust_remote_code: bool = False
    """Run code shipped with the model; off unless you trust its source."""
    allow_pickle: bool = False
    """Allow pickle `.bin` weights; safetensors only unless you opt in."""


Shape = Literal["auto", "alpaca", "qa", "prompt_completion", "input_output", "messages", "sharegpt", "text"]


class DataConfig(Section):
    path: str | None = None
    """Training data: .jsonl, .json, .csv, .parquet, or a folder saved by `datasets`."""
    test_path: str | None = None
    """Optional separate test file; when set, `split` is not used."""
    shape: Shape = "auto"
    """Record shape; `auto` detects it from all records."""
    prompt_key: str | None = None
    """Column holding the instruction/question/prompt (overrides the shape's default)."""
    input_key: str | None = None
    """Column holding extra input/context appended to the prompt (alpaca `input`)."""
    response_key: str | None = None
    """Column holding the answer/output/completion."""
    system_key: str | None = None
    """Column holding a per-record system prompt."""
    messages_key: str | None = None
    """Column holding a chat conversation (list of role/content messages)."""
    text_key: str | None = None
    """Column holding plain text (trained on every token)."""
    on_error: Literal["auto", "fail", "skip"] = "auto"
    """Invalid records: `auto` skips up to 1% of the file (kept in rejected.jsonl); `fail` stops; `skip` drops all."""
    strip_template: bool | Literal["auto"] = "auto"
    """Remove a template baked into the prompts (`### Question:`, `<|im_start|>`...); `auto`: when most carry one."""
    max_record_bytes: int = Field(default=1_000_000, gt=0)
    """Records larger than this (in UTF-8 bytes) are rejected as invalid."""


class TemplateConfig(Section):
    name: Literal["auto", "alpaca", "qa", "chat", "none", "jinja"] = "auto"
    """Prompt template; `auto` uses the tokenizer's chat template when it has one, else alpaca."""
    system_prompt: str | None = None
    """System prompt for the `chat` template (a record's own system message wins)."""
    jinja: str | None = None
    """For `jinja`: template text or path to a file; gets `prompt`, `input`, `system`; renders the prompt only."""


class TokenizationConfig(Section):
    max_length: int | Literal["auto"] = "auto"
    """Longest tokenized example; `auto` = the data's p99 total length capped by the model's context."""
    padding_side: Literal["right", "left"] = "right"
    """Where padding goes in training batches."""
    truncation_side: Literal["left", "right"] = "left"
    """Which end of the prompt is cut when an example is too long (left keeps the response)."""
    train_on: Literal["responses", "all"] = "responses"
    """Loss on response tokens only, or on every token."""


class SplitConfig(Section):
    test_size: float | int = 0.1
    """Fraction (0 < x < 1) or count (>= 1) of examples held out for testing."""
    seed: int = 42
    """Seed of the deterministic split."""


class TrainingConfig(Section):
    method: Literal["full", "lora", "qlora"] = "lora"
    """Full finetuning, LoRA adapters, or QLoRA (4-bit base; needs a GPU and bitsandbytes)."""
    learning_rate: float | None = Field(default=None, gt=0)
    """Peak learning rate; empty picks 2e-5 for full and 2e-4 for (q)lora."""
    lr_scheduler: Literal["linear", "cosine", "constant"] = "cosine"
    """Learning-rate schedule after warmup."""
    warmup_ratio: float = Field(default=0.05, ge=0, lt=1)
    """Share of steps spent warming up linearly (ignored when warmup_steps is set)."""
    warmup_steps: int | None = Field(default=None, ge=0)
    """Number of warmup steps."""
    epochs: float = Field(default=3.0, gt=0)
    """Passes over the training split (ignored when max_steps is set)."""
    max_steps: int | None = Field(default=None, gt=0)
    """Stop after this many optimizer steps."""
    batch_size: int = Field(default=8, gt=0)
    """Examples per optimizer step per process, before accumulation."""
    gradient_accumulation_steps: int = Field(default=1, gt=0)
    """Micro-batches per optimizer step; the loss is normalized over all their response tokens."""
    optimizer: Literal["adamw", "adafactor"] = "adamw"
    """Optimizer."""
    weight_decay: float = Field(default=0.0, ge=0)
    """AdamW weight decay (not applied to biases and norms)."""
    max_grad_norm: float | None = Field(default=1.0, gt=0)
    """Gradient clipping norm; empty disables clipping."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    seed: int = 42
    """Seed for initialization, data order and dropout."""
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """`auto` = bf16 where the hardware runs it fast, else fp32 (fp16 on GPUs without bf16)."""
    packing: bool = True
    """Pack several examples into one row (attention kept inside each example) so no compute goes to padding."""
    lora_r: int = Field(default=16, gt=0)
    """LoRA rank."""
    lora_alpha: float = Field(default=32, gt=0)
    """LoRA scaling numerator (scale = alpha / r)."""
    lora_dropout: float = Field(default=0.0, ge=0, lt=1)
    """Dropout on the LoRA input. 0 by default, as in PEFT and LLaMA-Factory: drawing a fresh mask for every
    adapted layer was 23% of a LoRA step on a 2-core CPU (bench/README.md)."""
    lora_target_modules: list[str] | Literal["all-linear"] = "all-linear"
    """Module names to adapt, or every linear layer but the output head."""
    merge_lora: bool = False
    """Also save a merged full model next to the adapter."""
    log_every_steps: int = Field(default=1, gt=0)
    """Write a metrics line every N optimizer steps."""
    eval_every_steps: int | None = Field(default=None, gt=0)
    """Compute test loss every N steps (and always at the end)."""
    save_every_steps: int | None = Field(default=None, gt=0)
    """Write a resumable checkpoint every N steps."""
    keep_checkpoints: int = Field(default=2, gt=0)
    """How many periodic checkpoints to keep (the best one is kept too)."""
    early_stopping_patience: int | None = Field(default=None, gt=0)
    """Stop when test loss has not improved for this many evaluations."""
    num_threads: int | None = Field(default=None, gt=0)
    """CPU threads for torch; empty uses all cores."""


class EvalConfig(Section):
    max_new_tokens: int = Field(default=128, gt=0)
    """Longest generated answer."""
    batch_size: int = Field(default=8, gt=0)
    """Prompts generated together."""
    limit: int | None = Field(default=None, gt=0)
    """Evaluate at most this many test examples."""
    compare_base: bool = True
    """Also evaluate the base model for a side-by-side comparison."""
    do_sample: bool = False
    """Sample instead of greedy decoding."""
    temperature: float = Field(default=1.0, gt=0)
    """Sampling temperature (with do_sample)."""
    top_p: float = Field(default=1.0, gt=0, le=1)
    """Nucleus sampling (with do_sample)."""
    bootstrap_samples: int = Field(default=1000, ge=0)
    """Resamples for the 95% intervals of the metric means."""
    seed: int = 0
    """Seed for sampling and the bootstrap."""


class OutputConfig(Section):
    runs_dir: str = "runs"
    """Folder holding one sub-folder per run."""
    name: str | None = None
    """Run name; empty derives one from the data file and time."""
    report_to: list[Literal["tensorboard", "mlflow", "trackio"]] = []
    """Trackers that also get the metrics, config and final figures (each needs `pip install 'tunesmith[NAME]'`)."""
    tracking_project: str = "tunesmith"
    """MLflow experiment and trackio project the run is logged under (the run keeps its folder name)."""
    mlflow_tracking_uri: str | None = None
    """MLflow tracking server or store; empty writes a file store to `<runs_dir>/mlruns`."""

    @model_validator(mode="before")
    @classmethod
    def _report_to_list(cls, data):
        """`--set output.report_to=tensorboard,mlflow` names the list without YAML brackets."""
        if isinstance(data, dict) and isinstance(data.get("report_to"), str):
            return {**data, "report_to": [name.strip() for name in data["report_to"].split(",") if name.strip()]}
        return data


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


class ExportConfig(Section):
    """`tunesmith export`: a run's model as a plain Hugging Face folder."""

    dtype: Literal["bf16", "fp32"] = "fp32"
    """Precision of the exported weights."""
    merge: bool = False
    """Merge LoRA adapters into the base weights (a standalone model)."""
    gguf: bool = False
    """Also write a GGUF file for llama.cpp (llama models)."""


def validate_section(cls: type[Section], raw: dict, source: str) -> Section:
    """Validate a dict into one config section (for commands that take flags, not a config file).

    Raises:
        ConfigError: listing every invalid key and value at once.
    """
    try:
        return cls.model_validate(raw)
    except ValidationError as e:
        raise _format_validation_error(e, source) from None


class Config(Section):
    """Everything a run needs; saved as `config.yaml` in its run folder."""

    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    template: TemplateConfig = TemplateConfig()
    tokenization: TokenizationConfig = TokenizationConfig()
    split: SplitConfig = SplitConfig()
    training: TrainingConfig = TrainingConfig()
    eval: EvalConfig = EvalConfig()
    output: OutputConfig = OutputConfig()

    @model_validator(mode="after")
    def _check_cross_fields(self) -> Config:
        problems = cross_field_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self


def cross_field_problems(config: Config) -> list[str]:
    """Every problem that spans several keys, collected so the user fixes them in one go."""
    problems = []
    size = config.split.test_size
    if isinstance(size, float) and not 0 < size < 1:
        problems.append(f"split.test_size={size!r}: a fraction must be between 0 and 1 (or give a count >= 1)")
    if isinstance(size, int) and size < 0:
        problems.append(f"split.test_size={size!r}: a count must be >= 0")
    if config.template.name == "jinja" and not config.template.jinja:
        problems.append("template.name=jinja needs template.jinja (template text or a file path)")
    if config.template.jinja and config.template.name != "jinja":
        problems.append(f"template.jinja is set but template.name={config.template.name!r}; set template.name=jinja")
    if isinstance(config.tokenization.max_length, int) and config.tokenization.max_length < 8:
        problems.append(f"tokenization.max_length={config.tokenization.max_length}: must be >= 8 or 'auto'")
    return problems


def learning_rate(training: TrainingConfig) -> float:
    """The configured learning rate, or the method's usual default."""
    if training.learning_rate is not None:
        return training.learning_rate
    return 2e-5 if training.method == "full" else 2e-4


def _format_validation_error(error: ValidationError, source: str) -> ConfigError:
    problems = []
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            problems.append(f"{source}: unknown key {key!r} (check the spelling; `tunesmith config show` lists keys)")
        elif key:
            problems.append(f"{source}: {key}={item.get('input')!r}: {message}")
        else:
            problems.append(f"{source}: {message}")
    return ConfigError(problems)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`training.learning_rate=2e-5` -> (["training", "learning_rate"], 2e-05); values are read as YAML.

    Raises:
        ConfigError: the text has no `=` or an empty key.
    """
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. training.learning_rate=2e-5")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    # YAML reads 2e-5 as a string (no dot); numbers people type should stay numbers.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value.lower() for c in ".e") else value
        except ValueError:
            pass
    return [p for p in key.strip().split(".")], value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Return a copy of a raw config dict with `--set` overrides applied (validation comes later)."""
    result = json.loads(json.dumps(raw))
    for text in overrides:
        keys, value = parse_override(text)
        node = result
        for k in keys[:-1]:
            child = node.get(k)
            if child is None:
                child = node[k] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {text!r}: {k!r} is a value, not a section")
            node = child
        node[keys[-1]] = value
    return result


def read_yaml(path: str | Path) -> dict:
    """Read a YAML config file into a dict.

    Raises:
        ConfigError: the file is missing, not YAML, or not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (model, data, training, ...)")
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict | None = None) -> Config:
    """Build a validated Config from an optional YAML file, a base dict and `--set` overrides.

    Relative data paths in a file are resolved against the file's folder, so a config works from any cwd.

    Raises:
        ConfigError: listing every invalid key and value at once.
    """
    raw = dict(base or {})
    source = "config"
    if path is not None:
        source = str(path)
        raw = _deep_merge(raw, read_yaml(path))
        data = raw.get("data")
        if isinstance(data, dict):
            for key in ("path", "test_path"):
                if isinstance(data.get(key), str) and not Path(data[key]).is_absolute():
                    candidate = Path(path).parent / data[key]
                    data[key] = str(candidate) if candidate.exists() else data[key]
    raw = apply_overrides(raw, overrides or [])
    return config_from_dict(raw, source)


def config_from_dict(raw: dict, source: str = "config") -> Config:
    """Validate a raw dict into a Config.

    Raises:
        ConfigError: listing every invalid key and value at once.
    """
    return validate_section(Config, raw, source)


def _deep_merge(base: dict, top: dict) -> dict:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def config_to_yaml(config: Config) -> str:
    """The config as YAML text, every key written out so a run can be repeated exactly."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def config_hash(section: BaseModel | dict) -> str:
    """A stable short hash of a config section, used to know when prepared data can be reused."""
    data = section.model_dump(mode="json") if isinstance(section, BaseModel) else section
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
