"""The schema of a run: one typed section per stage, and the cross-field checks of the whole.

Defaults live only here. Each stage receives its own section (`config.training`, `config.tokenization`...),
never the whole config, so what a stage depends on is visible in its signature.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


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
