"""The schema of a run: one typed section per stage, and the cross-field checks of the whole.

Defaults live only here. Each stage receives its own section (`config.training`, `config.tokenization`...),
never the whole config, so what a stage depends on is visible in its signature.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


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


class SourceConfig(Section):
    """One of several training files (`data.sources`); shape and keys left empty are taken from `data`."""

    path: str
    """Training data: .jsonl, .json, .csv, .parquet, or a folder saved by `datasets`."""
    test_path: str | None = None
    """Optional separate test file of this source; when set, `split` is not applied to this source."""
    weight: float | None = Field(default=None, gt=0)
    """Share of the mixed training set (relative to the other weights); empty keeps every record."""
    max_records: int | None = Field(default=None, gt=0)
    """Use at most this many records of the source (a seeded sample, in file order)."""
    shape: Shape | None = None
    """Record shape of this file; empty uses `data.shape`."""
    prompt_key: str | None = None
    """Column holding the prompt in this file; empty uses `data.prompt_key`."""
    input_key: str | None = None
    """Column holding extra input in this file; empty uses `data.input_key`."""
    response_key: str | None = None
    """Column holding the answer in this file; empty uses `data.response_key`."""
    system_key: str | None = None
    """Column holding a system prompt in this file; empty uses `data.system_key`."""
    messages_key: str | None = None
    """Column holding a conversation in this file; empty uses `data.messages_key`."""
    text_key: str | None = None
    """Column holding plain text in this file; empty uses `data.text_key`."""


class DataConfig(Section):
    path: str | None = None
    """Training data: .jsonl, .json, .csv, .parquet, or a folder saved by `datasets`."""
    sources: list[SourceConfig] = []
    """Several training files mixed by weight, instead of `data.path` (each `path`, `weight` or `max_records`)."""
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
    """Peak learning rate; empty picks 2e-5 for full, 1e-3 for LoRA on models under 1B parameters (2e-4 above),
    and 2e-4 for QLoRA."""
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
    time_budget: float | None = Field(default=None, gt=0)
    """Training time (90s, 10m, 1h; stored in seconds): the first steps are timed, then the run's steps are set so
    its learning-rate schedule ends at the budget (replaces epochs; not with max_steps)."""
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
    @field_validator("time_budget", mode="before")
    @classmethod
    def _duration(cls, value):
        """`10m` and friends to seconds, so the rest of tunesmith sees one unit."""
        return duration_seconds(value) if isinstance(value, str) else value

    trainable_layers: int | None = Field(default=None, gt=0)
    """Train only the last N decoder layers: full finetuning freezes the rest (the embeddings and the output layer
    too), LoRA adapts only those layers. The backward then stops at the lowest trained layer, so a step costs
    less (LLaMA-Factory's freeze tuning). None: every layer."""
    frozen_layer_cache: bool = True
    """With `trainable_layers`: keep the frozen lower layers' output for each training token the first time it is
    seen, so later epochs skip those layers (their output cannot change); off when it would take over 2 GiB or the
    model has dropout. Changes no result; false computes them every step."""
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
    distributed: Literal["auto", "ddp", "fsdp"] = "auto"
    """With several processes: `ddp` (a full copy of the model per process), `fsdp` (PyTorch FSDP2: weights,
    gradients and optimizer state sharded across processes, each decoder layer gathered only while it runs), or
    `auto` = fsdp when the training state (16 bytes per trainable parameter: weights, gradients, AdamW
    moments; the frozen weights as stored) would take over half of one device's memory (a GPU's, or the RAM
    divided by the processes on the machine), else ddp. One process trains unsharded either way."""
    fsdp_reshard_after_forward: bool = True
    """fsdp: free each layer's gathered weights after its forward and gather them again for the backward (less
    memory, more communication); false keeps them until the backward."""
    fsdp_cpu_offload: bool = False
    """fsdp on GPUs: keep the sharded weights, gradients and optimizer state in CPU memory (the optimizer steps on
    the CPU); no effect when training on a CPU."""


class JudgeConfig(Section):
    """The LLM judge of `tunesmith eval --judge-url`: any OpenAI-compatible endpoint (`tunesmith serve` too).

    Requests are retried and bounded as the generators' are (`TeacherConfig`); grades are cached by
    prompt + reference + answer + judge, so a rerun asks only about new answers.
    """

    url: str
    """An OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 (a bare host gets /v1 appended)."""
    model: str | None = None
    """Model name sent to the endpoint; empty uses the first model its /models lists."""
    key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the endpoint's API key; when it is unset no key is sent."""
    concurrency: int = Field(default=4, gt=0, le=256)
    """Requests in flight at once."""
    max_retries: int = Field(default=3, ge=0, le=20)
    """Retries of a request after a 429, a 5xx, a timeout or a lost connection; then the grade is `unknown`."""
    timeout_s: float = Field(default=60.0, gt=0)
    """Seconds one request may take."""
    max_tokens: int = Field(default=128, gt=0)
    """Longest verdict (grade and reason) the judge may write."""

    @model_validator(mode="before")
    @classmethod
    def _url_alone(cls, data):
        """`--set eval.judge=http://...` names the endpoint alone."""
        return {"url": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _http_url(self) -> JudgeConfig:
        if not re.match(r"https?://[^/:]+", self.url):
            raise ValueError(f"eval.judge.url={self.url!r}: expected http://HOST[:PORT][/v1] or https://...")
        return self


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
    benchmarks: list[str] = []
    """Multiple-choice files (as `eval --mc` reads them) scored for base and finetuned: what the finetune kept."""
    judge: JudgeConfig | None = None
    """An LLM that grades each test answer correct / partly / wrong against its reference (`url`, `model`)."""


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
    if config.data.sources and (config.data.path or config.data.test_path):
        problems.append("data.path/data.test_path and data.sources are both set: give one file as data.path, or "
                        "several as data.sources (each with its own test_path)")
    weighted = [s.weight is not None for s in config.data.sources]
    if any(weighted) and not all(weighted):
        problems.append("data.sources: give every source a weight, or none (no weights keeps every record)")
    if config.training.time_budget is not None and config.training.max_steps is not None:
        problems.append("training.time_budget and training.max_steps are both set: the budget decides the number "
                        "of steps; unset one of them")
    if isinstance(config.tokenization.max_length, int) and config.tokenization.max_length < 8:
        problems.append(f"tokenization.max_length={config.tokenization.max_length}: must be >= 8 or 'auto'")
    return problems


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600}


def duration_seconds(text: str) -> float:
    """A duration such as `90s`, `10m`, `1.5h` or `1h30m` (a bare number is seconds) in seconds.

    >>> duration_seconds("10m"), duration_seconds("1h30m"), duration_seconds("90")
    (600.0, 5400.0, 90.0)

    Raises:
        ValueError: not a duration (pydantic reports it with the key).
    """
    cleaned = text.strip().lower().replace(" ", "")
    if re.fullmatch(r"\d+(\.\d+)?", cleaned):
        return float(cleaned)
    parts = re.findall(r"(\d+(?:\.\d+)?)([smh])", cleaned)
    if not parts or "".join(number + unit for number, unit in parts) != cleaned:
        raise ValueError(f"{text!r} is not a duration; write it as 90s, 10m, 1h or 1h30m")
    return float(sum(float(number) * DURATION_UNITS[unit] for number, unit in parts))


SMALL_MODEL_PARAMS = 1_000_000_000
"""Below this many parameters LoRA's default rate is `SMALL_LORA_LR`, above it the usual 2e-4."""
SMALL_LORA_LR = 1e-3
"""LoRA's default rate for small models. The usual 2e-4 is a 7B model's (QLoRA's paper; LoRA's best rate is ~10x
full finetuning's, "LoRA Without Regret"), and the best rate grows as models get narrower. Measured on
SmolLM2-135M, documentation-style answers, 9 minutes on 2 CPU cores (bench/README.md): 2e-4 learned the style but
no facts (key-fact recall 3.7 -> 3.5); 1e-3 took it to 15.6 and ROUGE-L 9.6 -> 28.9."""


def learning_rate(training: TrainingConfig, model_params: int | None = None) -> float:
    """The configured learning rate, or the method's default: 2e-5 for full, 2e-4 for QLoRA (the large models it
    exists for), for LoRA `SMALL_LORA_LR` when the model has under `SMALL_MODEL_PARAMS` parameters (when known)
    and 2e-4 otherwise.

    >>> learning_rate(TrainingConfig()), learning_rate(TrainingConfig(), 135_000_000)
    (0.0002, 0.001)
    """
    if training.learning_rate is not None:
        return training.learning_rate
    if training.method == "full":
        return 2e-5
    if training.method == "lora" and model_params is not None and model_params < SMALL_MODEL_PARAMS:
        return SMALL_LORA_LR
    return 2e-4
