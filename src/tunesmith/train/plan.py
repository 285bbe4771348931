"""How much memory training takes on each device, from the model's config alone: no weights are loaded.

The arithmetic follows what tunesmith's training holds, part by part, per process:
- weights: full finetuning keeps fp32 masters; on a CPU in bf16 one process adds bf16 working copies of the matrix
  weights (bf16_weights.py). LoRA's frozen base is fp32 on a CPU (cast to bf16 in place under bf16, embeddings
  kept fp32, a tied output layer given a bf16 copy of its own), bf16 on a GPU under bf16 (speed.py). QLoRA's
  base is NF4 with double quantization (~0.52 byte a weight) and, after peft's `prepare_model_for_kbit_training`,
  fp32 embeddings, norms and output layer. Adapters are fp32: rank x (inputs + outputs) per targeted layer.
- gradients: fp32, of the trainable parameters only. Freed at every step, they are made while the backward
  frees the activations, so the peak holds the larger of the two, unless they persist (the CPU's persistent
  buffers, gradient accumulation, DDP's buckets).
  DDP adds its reducer's buckets, a second fp32 copy of them; FSDP keeps a shard, plus one layer's unsharded
  gradients while it reduce-scatters them.
- optimizer: AdamW's two fp32 moments (8 bytes a trainable parameter); Adafactor without momentum: one row and one
  column of fp32 statistics a matrix.
- activations: what each decoder layer saves for its backward, per token (hidden-size and MLP-width tensors in
  the compute dtype, the fp32 residual stream and norms), at batch_size x max_length tokens a micro-batch (the
  packed upper bound); with activation checkpointing only each layer's input, plus one layer's full set while
  it is recomputed. The fused loss never builds the full logits: one chunk of answer rows x vocabulary in the
  compute dtype, an fp32 softmax block, and (when the output layer trains) its fp32 weight gradient, made in
  the forward.
- FSDP (FSDP2, one unit per decoder layer): masters, gradients and moments divided by the processes, plus the
  gathered layer in use and the next one prefetched, and the root's embeddings and output layer unsharded.
- runtime: the process itself (Python, torch, transformers, tokenizer, data) on a CPU; the CUDA context on a GPU.

Figures are upper bounds for one micro-batch of the longest examples; `bench/plan_check.py` compares them with
the peak RSS of real training steps (bench/README.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from tunesmith.errors import ConfigError

GiB = 2 ** 30

ADAPTABLE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""The linear layers of a decoder layer (Llama, Qwen2, Mistral, SmolLM...), what `all-linear` adapts."""

NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)
"""4 bits a weight, an 8-bit absmax per block of 64, and double quantization's fp32 constant per 256 blocks."""

HEAD_CHUNK_ROWS = 1024
"""Answer rows of the fused loss sent through the output layer at once (modeling.losses.HEAD_CHUNK_ROWS)."""

CPU_SOFTMAX_ROWS = 64
"""Rows taken to fp32 at once for the fused loss's softmax on a CPU (modeling.losses.SOFTMAX_ROWS)."""

RUNTIME_BYTES = {"cpu": int(0.5 * GiB), "cuda": int(1.0 * GiB)}
"""What a training process holds besides the model: on a CPU Python, torch, transformers, peft, accelerate, the
tokenizer and the prepared data (0.44 GiB measured before the model loads, bench/README.md); on a GPU the CUDA context and
kernels (about 0.5-1 GB)."""

METHODS = ("full", "lora", "qlora")
STRATEGIES = ("ddp", "fsdp")


@dataclass(frozen=True)
class ModelShape:
    """The dimensions of a decoder-only model that decide its memory."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tied_embeddings: bool
    attention_bias: bool = False

    @classmethod
    def from_config(cls, config) -> "ModelShape":
        """The shape of a transformers config (LlamaConfig, Qwen2Config, ... or the one AutoConfig reads).

        Raises:
            ConfigError: the config lacks the sizes of a decoder-only transformer.
        """
        missing = [key for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                   "vocab_size") if not isinstance(getattr(config, key, None), int)]
        if missing:
            raise ConfigError(f"model config ({getattr(config, 'model_type', '?')}) has no {', '.join(missing)}: "
                              f"`tunesmith plan` knows decoder-only transformers (Llama, Qwen2, Mistral, SmolLM)")
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        bias = bool(getattr(config, "attention_bias", False)) or getattr(config, "model_type", "") == "qwen2"
        return cls(hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
                   num_layers=config.num_hidden_layers, num_heads=heads,
                   num_kv_heads=getattr(config, "num_key_value_heads", None) or heads, head_dim=head_dim,
                   vocab_size=config.vocab_size, tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
                   attention_bias=bias)

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(inputs, outputs) of each linear layer of one decoder layer."""
        h, q, kv, i = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim, \
            self.intermediate_size
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @property
    def layer_matrix_params(self) -> int:
        return sum(a * b for a, b in self.linear_shapes().values())

    @property
    def layer_other_params(self) -> int:
        """Norms (two a layer) and attention biases."""
        bias = (self.num_heads + 2 * self.num_kv_heads) * self.head_dim if self.attention_bias else 0
        return 2 * self.hidden_size + bias

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def head_params(self) -> int:
        """The output layer's own weights (none when tied to the embeddings)."""
        return 0 if self.tied_embeddings else self.vocab_size * self.hidden_size

    @property
    def total_params(self) -> int:
        layers = self.num_layers * (self.layer_matrix_params + self.layer_other_params)
        return self.embedding_params + self.head_params + layers + self.hidden_size


def lora_params(shape: ModelShape, rank: int, targets: list[str] | str) -> int:
    """Adapter parameters: rank x (inputs + outputs) for every targeted linear layer of every decoder layer.

    >>> lora_params(ModelShape(64, 128, 2, 4, 2, 16, 1000, True), 8, ["q_proj"])
    2048
    """
    return shape.num_layers * sum(rank * sum(shape.linear_shapes()[n]) for n in adapted_layers(targets))


def adapted_layers(targets: list[str] | str) -> list[str]:
    """The linear layers of a decoder layer that `lora_target_modules` adapts.

    >>> adapted_layers(["q_proj", "v_proj"]), len(adapted_layers("all-linear"))
    (['q_proj', 'v_proj'], 7)
    """
    return list(ADAPTABLE) if targets == "all-linear" else [t for t in ADAPTABLE if any(
        t == name or t.endswith(f".{name}") or re.fullmatch(name, t) for name in targets)]


def lora_heap_holes(shape: ModelShape, work: Workload) -> int:
    """What glibc's heap keeps of LoRA's freed temporaries on a CPU: each adapted layer's base output, freed at
    once when PEFT adds the update, is left as a hole between the saved activations that the rest of the
    forward cannot reuse, one output-sized fp32 block per adapted layer and token (in the compute dtype).

    Measured (bench/README.md, `tunesmith plan`): 135M LoRA, demo config, peak RSS 2.40 GiB against 2.00 GiB of
    live tensors; with glibc told to return blocks of 1 MB and up (MALLOC_MMAP_THRESHOLD_=1048576) 2.09 GiB.
    Under FSDP on a CPU tunesmith sets that threshold itself (sharding.py), so there are no such holes.
    """
    outputs = sum(shape.linear_shapes()[n][1] for n in adapted_layers(work.lora_target_modules))
    return work.compute_bytes * work.tokens * outputs * shape.num_layers


@dataclass(frozen=True)
class Workload:
    """What the config trains: method-independent settings that decide memory."""

    batch_size: int
    """Examples a micro-batch, per process."""
    max_length: int
    """Tokens of the longest example."""
    answer_tokens: int
    """Loss-bearing tokens of the longest answer (per example)."""
    precision: str
    """fp32, bf16 or fp16, resolved for the device."""
    device: str
    """cpu or cuda."""
    lora_r: int = 16
    lora_target_modules: list[str] | str = "all-linear"
    optimizer: str = "adamw"
    accumulation_steps: int = 1
    """Micro-batches a step: above 1 the gradients of the first live through the forwards of the next."""
    micro_batch_tokens: int | None = None
    """Tokens of the largest micro-batch expected (`micro_batch_tokens`); empty: batch_size x max_length."""

    @property
    def tokens(self) -> int:
        return self.micro_batch_tokens or self.batch_size * self.max_length

    @property
    def compute_bytes(self) -> int:
        return 4 if self.precision == "fp32" else 2


@dataclass(frozen=True)
class Setup:
    """One way to train: method, how processes share the model, activation checkpointing, and processes."""

    method: str
    strategy: str
    checkpointing: bool
    processes: int


@dataclass(frozen=True)
class Estimate:
    """Bytes per device, by part."""

    setup: Setup
    weights: int
    gradients: int
    optimizer: int
    activations: int
    runtime: int
    transient_gradients: int = 0
    """The part of `gradients` made during the backward and freed at the step (`zero_grad(set_to_none=True)`):
    it reuses the memory the backward frees of the activations, so the peak holds the larger of the two."""

    @property
    def total(self) -> int:
        persistent = self.gradients - self.transient_gradients
        return (self.weights + persistent + max(self.transient_gradients, self.activations) + self.optimizer
                + self.runtime)


def activation_bytes_per_token_layer(shape: ModelShape, compute_bytes: int, attention_span: int) -> int:
    """What one decoder layer saves for its backward, per token.

    4 x MLP width + 5 x hidden + q + 8 x kv-width values (the products' inputs, q/k/v around the rotary
    embedding and GQA's repeated k/v, the MLP's gate, up, activation and product, the residual halves), counted
    against the saved tensors of a real forward (SmolLM2-135M shapes, bench/README.md): in fp32 4 bytes each;
    under autocast 2 bytes each plus the norms' fp32 values (14 bytes a hidden unit). Eager and packed attention
    (the CPU path) also keep each head's softmax probabilities over `attention_span` keys, in fp32 (plus a bf16
    copy under autocast); flash and memory-efficient attention on a GPU keep none (`attention_span` 0).
    """
    h, i = shape.hidden_size, shape.intermediate_size
    q, kv = shape.num_heads * shape.head_dim, shape.num_kv_heads * shape.head_dim
    values = 4 * i + 5 * h + q + 8 * kv
    if compute_bytes == 4:
        return 4 * values + 4 * shape.num_heads * attention_span
    return 2 * values + 14 * h + (4 + compute_bytes) * shape.num_heads * attention_span


def estimate(shape: ModelShape, work: Workload, setup: Setup) -> Estimate:
    """Peak bytes on each device of `setup` training `shape` on `work` (see the module docstring for the parts)."""
    n, fsdp, method = setup.processes, setup.strategy == "fsdp", setup.method
    on_cpu, bf16ish = work.device == "cpu", work.precision != "fp32"
    compute = work.compute_bytes
    layer_matrices = shape.num_layers * shape.layer_matrix_params
    small = shape.num_layers * shape.layer_other_params + shape.hidden_size  # norms, biases
    embed, head = shape.embedding_params, shape.head_params
    head_weights = embed if shape.tied_embeddings else head  # what the output layer multiplies by

    if method == "full":
        trainable = shape.total_params
        masters = 4 * trainable
        # bf16 on one CPU process: working copies (bf16_weights.py); elsewhere autocast keeps its own casts of the
        # matrix weights from the forward until the backward is done, the same size
        copies = 2 * (layer_matrices + head_weights) if bf16ish and not fsdp else 0
        frozen = 0
    else:
        trainable = lora_params(shape, work.lora_r, work.lora_target_modules)
        masters = 4 * trainable
        copies = 0
        if method == "qlora":
            frozen = NF4_BYTES * layer_matrices + 4 * (embed + head + small)
        elif on_cpu:
            matrix_bytes = 2 if work.precision == "bf16" else 4
            tied_copy = 2 * embed if shape.tied_embeddings and work.precision == "bf16" else 0
            frozen = matrix_bytes * (layer_matrices + head) + 4 * (embed + small) + tied_copy
        else:
            base = 2 if work.precision == "bf16" else 4
            frozen = base * (layer_matrices + embed + head + small)

    unit = shape.layer_matrix_params + shape.layer_other_params  # one FSDP unit: a decoder layer
    if fsdp:
        gathered_dtype = compute if method == "full" else (2 if bf16ish else 4)
        gathered = 2 * gathered_dtype * unit + gathered_dtype * (embed + head)  # in use + prefetched; the root
        weights = (masters + frozen) / n + copies + gathered
        unit_grads = 4 * unit if method == "full" else 4 * trainable / max(shape.num_layers, 1)
        gradients = 4 * trainable / n + unit_grads
        own = gradients
    else:
        weights = masters + frozen + copies
        own = 4 * trainable
        gradients = own * (2 if n > 1 else 1)  # DDP's buckets: a second copy, kept for the whole run
    # persistent fp32 buffers (bf16 copies on one CPU process) and accumulated micro-batches keep the gradients
    # through the forward; otherwise they are made as the backward frees the activations
    persistent = (method == "full" and on_cpu and work.precision == "bf16" and n == 1 and not fsdp) \
        or work.accumulation_steps > 1
    transient = 0 if persistent else own

    if work.optimizer == "adafactor":
        states = optimizer_bytes_adafactor(shape, trainable, method)
    else:
        states = 8 * trainable
    optimizer = states / n if fsdp else states

    activations = activation_estimate(shape, work, setup)
    if method != "full" and on_cpu and not fsdp and not setup.checkpointing:
        activations += lora_heap_holes(shape, work)
    return Estimate(setup, int(weights), int(gradients), int(optimizer), int(activations),
                    RUNTIME_BYTES[work.device], int(transient))


def optimizer_bytes_adafactor(shape: ModelShape, trainable: int, method: str) -> int:
    """Adafactor without momentum: a row and a column of fp32 statistics per matrix, a full one per vector."""
    if method != "full":
        return 4 * trainable // 8  # adapters are (rank x width) matrices: rank + width per matrix, ~1/8 of them
    rows_cols = sum(a + b for a, b in shape.linear_shapes().values()) * shape.num_layers
    heads = (shape.vocab_size + shape.hidden_size) * (1 if shape.tied_embeddings else 2)
    return 4 * (rows_cols + heads + shape.num_layers * shape.layer_other_params + shape.hidden_size)


def activation_estimate(shape: ModelShape, work: Workload, setup: Setup) -> int:
    """Saved activations of one micro-batch, plus the fused loss's working set."""
    tokens = work.tokens
    span = work.max_length if work.device == "cpu" else 0  # CPU: per-example eager attention; GPU: sdpa
    per_layer = activation_bytes_per_token_layer(shape, work.compute_bytes, span)
    if setup.checkpointing:
        saved = 4 * shape.hidden_size * tokens * shape.num_layers + per_layer * tokens  # inputs + one recomputed
    else:
        saved = per_layer * tokens * shape.num_layers
    answer_rows = min(work.batch_size * work.answer_tokens, HEAD_CHUNK_ROWS)
    softmax_rows = CPU_SOFTMAX_ROWS if work.device == "cpu" else answer_rows
    loss = (work.compute_bytes * answer_rows * shape.vocab_size + 4 * softmax_rows * shape.vocab_size
            + 4 * tokens * shape.hidden_size)  # logits chunk, fp32 block, the final norm's output
    if setup.method == "full":
        loss += 4 * shape.vocab_size * shape.hidden_size  # the output layer's gradient, made in the forward
    return saved + loss


def micro_batch_tokens(lengths: list[int], batch_size: int, max_length: int) -> int:
    """Tokens of the largest packed micro-batch a run is likely to meet: batch_size examples of the mean length
    plus three standard deviations of such a sum, at most batch_size x max_length (the bound without data).

    >>> micro_batch_tokens([100] * 50, 8, 128)
    800
    >>> micro_batch_tokens([], 8, 128)
    1024
    """
    capped = [min(n, max_length) for n in lengths]
    if not capped:
        return batch_size * max_length
    mean = sum(capped) / len(capped)
    std = (sum((n - mean) ** 2 for n in capped) / len(capped)) ** 0.5
    return min(batch_size * max_length, round(batch_size * mean + 3 * std * batch_size ** 0.5))


def setups(processes: int, device: str) -> list[Setup]:
    """Every setup the table shows for `processes` devices: full, LoRA and QLoRA (GPU only; DDP only, since
    4-bit weights do not shard) x DDP and FSDP x with and without activation checkpointing."""
    rows = []
    for method in METHODS:
        if method == "qlora" and device != "cuda":
            continue
        for strategy in STRATEGIES:
            if method == "qlora" and strategy == "fsdp":
                continue
            for checkpointing in (False, True):
                rows.append(Setup(method, strategy, checkpointing, processes))
    return rows


@dataclass(frozen=True)
class MemoryPlan:
    """The table of `tunesmith plan`: each setup's estimate at the devices given, and the smallest that fits."""

    shape: ModelShape
    work: Workload
    device_bytes: int
    processes: int
    estimates: list[Estimate]
    smallest: dict[str, Estimate | None]
    """Per method: the setup on the fewest devices (DDP before FSDP, no checkpointing before checkpointing) that
    fits within `processes` devices, or None."""

    def fits(self, estimate: Estimate) -> bool:
        return estimate.total <= self.device_bytes


def plan_memory(shape: ModelShape, work: Workload, device_bytes: int, processes: int) -> MemoryPlan:
    """Estimates for every setup on `processes` devices of `device_bytes` each, and per method the smallest setup
    that fits on at most that many."""
    estimates = [estimate(shape, work, s) for s in setups(processes, work.device)]
    smallest = {}
    for method in sorted({e.setup.method for e in estimates}, key=METHODS.index):
        smallest[method] = None
        for n in range(1, processes + 1):
            fitting = [e for e in (estimate(shape, work, replace(s, processes=n))
                                   for s in setups(n, work.device) if s.method == method)
                       if e.total <= device_bytes]
            if fitting:
                smallest[method] = fitting[0]
                break
    return MemoryPlan(shape, work, device_bytes, processes, estimates, smallest)


def parse_memory(text: str, flag: str = "--gpu-memory") -> int:
    """Bytes of a size such as `80GB`, `24 GiB`, `512MB` or `80` (GB); GB counts 2^30 bytes, as makers' cards
    hold (an "80 GB" GPU has 80 GiB).

    >>> parse_memory("24GB") == 24 * 2 ** 30
    True

    Raises:
        ConfigError: not a positive size, naming the flag.
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(?:(t|g|m)(?:i?b)?)?\s*", text.lower())
    if not match or float(match.group(1)) <= 0:
        raise ConfigError(f"{flag} {text!r}: give a size such as 80GB, 24GiB or 512MB")
    unit = {"t": 2 ** 40, "g": GiB, "m": 2 ** 20, None: GiB}[match.group(2)]
    return int(float(match.group(1)) * unit)
