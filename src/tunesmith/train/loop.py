"""Training: one loop for full finetuning and LoRA, read top to bottom.

setup (processes, precision, seed) → data (prepared splits, deterministic order) → model (full, or wrapped in
LoRA: the only difference between methods) → optimizer → resume → loop (accumulate, clip, step, log, evaluate,
checkpoint) → save the final model.

Choices that make this trainer better than a generic one:
- The loss of an optimizer step is the sum of token losses over ALL its micro-batches (and processes) divided by
  their total count of loss-bearing tokens, so batch 8 × accumulation 1 and 2 × 4 give the same update.
- Examples are packed into rows (see packing.py), so almost no compute goes to padding.
- The output layer runs only at loss-bearing positions, in chunks, so memory never scales with
  sequence × vocabulary.
- In bf16, matrix weights are cast once per step (LoRA's frozen base once per run), not in every forward and
  backward as plain autocast does: the same numbers, less time (bf16_weights.py).
- The learning rate is a pure function of the step, and the data order a pure function of seed and epoch, so a
  resumed run continues exactly where it stopped; checkpoints are written atomically with a `latest` pointer
  written last.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tunesmith.train.bf16_weights import bf16_trainable_copies, frozen_to_bf16, restore_frozen
from tunesmith.config import ModelConfig, TemplateConfig, TrainingConfig, learning_rate
from tunesmith.errors import TrainingError
from tunesmith.evaluate.test_loss import test_batches, test_loss
from tunesmith.modeling.batches import make_batch
from tunesmith.modeling.losses import CausalLMLoss
from tunesmith.modeling.precision import autocast_for
from tunesmith.models import apply_lora, default_device, load_model, load_tokenizer, resolve_model_path, \
    resolve_precision
from tunesmith.modeling.packing import MIN_ROW_TOKENS, register_packed_attention
from tunesmith.runs import (RUN_INFO_FILE, RunPaths, append_jsonl, atomic_dir, atomic_write_bytes,
                            atomic_write_json, atomic_write_text, read_jsonl)
from tunesmith.prepare.tokenization import IGNORE_INDEX

__all__ = ["TrainResult", "train", "lr_at", "step_examples", "CausalLMLoss"]

LATEST = "latest"


@dataclass(frozen=True)
class TrainResult:
    """Where the trained model is and how training went (the same facts as `train_summary.json`)."""

    model_dir: Path
    merged_dir: Path | None
    steps: int
    final_train_loss: float | None
    final_test_loss: float | None
    best_test_loss: float | None
    summary: dict = field(default_factory=dict)
    model: object = field(default=None, repr=False, compare=False)
    """The trained model in memory (merged when `merge_lora`), so callers can use it without reloading."""


# ----------------------------------------------------------------------------------------------------------------
# pure pieces: schedule and data order


def warmup_steps(training: TrainingConfig, total_steps: int) -> int:
    """Explicit `warmup_steps`, else `warmup_ratio` of the run (rounded up so a small ratio still warms up)."""
    if training.warmup_steps is not None:
        return training.warmup_steps
    return math.ceil(training.warmup_ratio * total_steps)


def lr_at(step: int, peak: float, total_steps: int, warmup: int, schedule: str) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warmup, then linear/cosine decay to 0 or constant.

    A pure function of the step, so resuming needs no scheduler state.

    >>> [round(lr_at(s, 1.0, 4, 2, "linear"), 3) for s in range(4)]
    [0.5, 1.0, 0.667, 0.333]
    """
    if step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "constant":
        return peak
    progress = (step - warmup) / max(1, total_steps - warmup)
    if schedule == "linear":
        return peak * (1.0 - progress)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled example order of one epoch, the same in every process and every resumed run."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def steps_per_epoch(num_examples: int, examples_per_step: int, world_size: int) -> int:
    """Optimizer steps in one epoch; a last partial step is kept when every process gets an example of it."""
    full, rest = divmod(num_examples, examples_per_step)
    return full + (1 if rest >= world_size else 0)


def step_examples(step: int, num_examples: int, training: TrainingConfig, rank: int = 0,
                  world_size: int = 1) -> list[list[int]]:
    """Example indices of each micro-batch this process runs at optimizer step `step`.

    The step's examples are cut into one contiguous shard per process, and each shard into the same number of
    micro-batches in every process (fewer than `gradient_accumulation_steps` only for a short last step).

    >>> from tunesmith.config import TrainingConfig
    >>> len(step_examples(0, 8, TrainingConfig(batch_size=2, gradient_accumulation_steps=4, seed=0)))
    4
    """
    per_step = training.batch_size * training.gradient_accumulation_steps * world_size
    epoch, index = divmod(step, steps_per_epoch(num_examples, per_step, world_size))
    chosen = epoch_order(num_examples, training.seed, epoch)[index * per_step:(index + 1) * per_step]
    shard = np.array_split(chosen, world_size)[rank]
    micro = min(training.gradient_accumulation_steps, len(chosen) // world_size)
    return [part.tolist() for part in np.array_split(shard, micro)]


# ----------------------------------------------------------------------------------------------------------------
# setup helpers


def build_optimizer(model: torch.nn.Module, training: TrainingConfig, peak_lr: float) -> torch.optim.Optimizer:
    """AdamW without weight decay on biases and norms (1-D parameters), or Adafactor."""
    params = [p for p in model.parameters() if p.requires_grad]
    if training.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=peak_lr, scale_parameter=False, relative_step=False, warmup_init=False,
                         weight_decay=training.weight_decay)
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": training.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    # The fused kernel updates all parameters in one pass: 4x faster than the default loop for 135M fp32
    # parameters on a 2-core CPU (0.11 s vs 0.45 s a step), and it runs on CPU and CUDA alike.
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=peak_lr, betas=(0.9, 0.999), eps=1e-8,
                             fused=fused)


def build_model(model_cfg: ModelConfig, training: TrainingConfig):
    """The trainable model in fp32 master weights: full, or the base frozen under LoRA adapters.

    Raises:
        TrainingError: QLoRA without CUDA and bitsandbytes.
    """
    if training.method == "qlora":
        if not torch.cuda.is_available():
            raise TrainingError("training.method=qlora needs a CUDA GPU (4-bit weights); use method=lora on CPU")
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None:
            raise TrainingError("training.method=qlora needs bitsandbytes: `pip install bitsandbytes`")
        model = _load_4bit(model_cfg)
    else:
        model = load_model(model_cfg, dtype=torch.float32)
    model.config.use_cache = False
    if default_device().type == "cpu" and training.method != "qlora":
        # On CPU, attention per example of the packed rows (packing.packed_attention): 3x less attention time
        # than eager under a block-diagonal mask, which in turn beats sdpa's flash kernel, whose backward costs a
        # fixed ~10 ms per layer however short the examples (tests/test_packing.py checks all give the same loss
        # and gradients). Eager for attention that packed_attention does not implement.
        special = attention_is_special(model.config)
        model.set_attn_implementation("eager" if special else register_packed_attention())
    if training.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if training.method in ("lora", "qlora"):
        model = apply_lora(model, training)
    return model


def attention_is_special(config) -> bool:
    """Attention with logit soft-capping or a sliding window, which packed_attention does not implement."""
    return bool(getattr(config, "attn_logit_softcapping", None) or getattr(config, "sliding_window", None))


def _load_4bit(model_cfg: ModelConfig):
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(model_cfg.name), quantization_config=quant,
                                                 trust_remote_code=model_cfg.trust_remote_code, device_map={"": 0})
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def keep_lora_sums_fp32(model) -> list:
    """Under bf16 autocast a frozen layer's output is a bf16 number, and adding a LoRA update smaller than half
    its last bit gives back the same number: early, small adapters would be invisible. Returning the base output
    as fp32 makes PEFT add the update in fp32. Returns the hook handles (removed after training).
    """
    from peft.tuners.lora import LoraLayer

    return [module.base_layer.register_forward_hook(lambda _module, _inputs, output: output.float())
            for module in model.modules()
            if isinstance(module, LoraLayer) and isinstance(module.base_layer, torch.nn.Linear)]


def uses_cpu() -> bool:
    """Without a GPU accelerate must be told so, or under torchrun it runs each process alone instead of gloo.

    Every accelerate state in a process must agree on this (the first one made wins), so all use this function.
    """
    return default_device().type == "cpu"


def process_state():
    """accelerate's view of the processes of this run (rank, world size, main process)."""
    from accelerate import PartialState

    return PartialState(cpu=uses_cpu())


@contextlib.contextmanager
def writing(what: str, keep_note: str):
    """Turn a failed write (disk full, permissions) into a TrainingError that says what survived."""
    try:
        yield
    except OSError as e:
        raise TrainingError(f"could not write {what}: {e.strerror or e}; {keep_note}") from None


# ----------------------------------------------------------------------------------------------------------------
# checkpoints


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters training changes (all of a full model, the adapters of LoRA), ready for safetensors."""
    return {name: p.detach().to("cpu").contiguous() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: torch.nn.Module, folder: Path) -> None:
    from safetensors.torch import load_file

    state = load_file(str(folder / "trainable.safetensors"))
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise TrainingError(f"{folder}: checkpoint does not match this model (unexpected "
                            f"{result.unexpected_keys[:3]}); was training.method or model.name changed?")


def latest_checkpoint(paths: RunPaths) -> Path | None:
    """The last complete checkpoint: the `latest` pointer is written only after its folder is whole."""
    pointer = paths.checkpoints / LATEST
    if not pointer.is_file():
        return None
    folder = paths.checkpoints / pointer.read_text(encoding="utf-8").strip()
    return folder if (folder / "trainer_state.json").is_file() else None


def rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state().tolist()}
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state["numpy"] = [kind, keys.tolist(), pos, has_gauss, gauss]
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def save_checkpoint(paths: RunPaths, step: int, model, optimizer, state: dict, rng_states: list[dict],
                    keep: int) -> Path:
    """Write `checkpoints/step-N/` whole, then point `latest` at it, then drop checkpoints beyond `keep`.

    Raises:
        TrainingError: the disk is full or not writable; the previous checkpoint is untouched.
    """
    from safetensors.torch import save_file

    previous = latest_checkpoint(paths)
    keep_note = f"the previous checkpoint {previous} is intact" if previous else "no checkpoint was written"
    folder = paths.checkpoints / f"step-{step}"
    with writing(f"checkpoint {folder}", keep_note):
        with atomic_dir(folder) as tmp:
            save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
            buffer = io.BytesIO()
            torch.save(optimizer.state_dict(), buffer)
            atomic_write_bytes(tmp / "optimizer.pt", buffer.getvalue())
            atomic_write_json(tmp / "trainer_state.json", {**state, "rng": rng_states})
            if paths.metrics.is_file():
                shutil.copyfile(paths.metrics, tmp / "metrics.jsonl")
        atomic_write_text(paths.checkpoints / LATEST, folder.name)
    periodic = sorted((p for p in paths.checkpoints.glob("step-*") if p.is_dir()),
                      key=lambda p: int(p.name.split("-")[1]))
    for old in periodic[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return folder


# ----------------------------------------------------------------------------------------------------------------
# progress: metrics, plot, evaluation


def write_loss_plot(paths: RunPaths, metrics: list[dict]) -> None:
    """`loss.png`: the report's loss chart (train loss per step, test loss per evaluation), replaced atomically."""
    from tunesmith.report.charts import loss_chart

    png = loss_chart(metrics)
    if png is not None:
        atomic_write_bytes(paths.loss_plot, png)


def evaluate_loss(loss_model, examples: list[dict], training: TrainingConfig, max_row_tokens: int, pad_token_id: int,
                  precision: str, accelerator, forward=None) -> float | None:
    """Test loss now: each process takes every world_size-th test example; the sums are added over processes.

    `forward` runs the model (default: `loss_model` itself; bf16 copies of its weights during bf16 training)."""
    mine = examples[accelerator.process_index::accelerator.num_processes]
    loss_model.eval()
    result = test_loss(forward or loss_model,
                       test_batches(mine, training.batch_size, training.packing, max_row_tokens, pad_token_id),
                       accelerator.device, precision, reduce=lambda t: accelerator.reduce(t, reduction="sum"))
    loss_model.train()
    return result.loss if result is not None else None


def count_loss_tokens(batch: dict) -> int:
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def accumulate_gradients(loss_model, batches: list[dict], accelerator, precision: str, real_tokens: int = 0,
                         scale=lambda loss: loss, forward=None) -> tuple[float, int, int]:
    """Backward over one optimizer step's micro-batches; returns (summed loss, loss tokens, real tokens), global.

    `real_tokens` is this process's count of non-padding tokens, only summed over processes for reporting.
    `forward` runs the model (default: `loss_model` itself; bf16 copies of its weights during bf16 training).

    Each micro-batch's summed token loss is divided by the loss-bearing tokens of the WHOLE step (every
    micro-batch, every process) before its backward, so the gradients add up to that of one big batch.
    """
    world, device = accelerator.num_processes, accelerator.device
    counts = torch.tensor([sum(count_loss_tokens(b) for b in batches), real_tokens], dtype=torch.float64,
                          device=device)
    loss_tokens, real_tokens = accelerator.reduce(counts, reduction="sum").tolist()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    forward = forward or loss_model
    for i, batch in enumerate(batches):
        batch = {k: v.to(device) for k, v in batch.items()}
        # Processes synchronize gradients only after the last micro-batch; DDP then AVERAGES them over processes,
        # which the factor world_size turns back into the global token mean.
        sync = contextlib.nullcontext() if i == len(batches) - 1 else accelerator.no_sync(loss_model)
        with sync:
            with autocast_for(precision, device):
                summed = forward(**batch)
            accelerator.backward(scale(summed * world / max(loss_tokens, 1)))
        loss_sum += summed.detach().double()
    total = accelerator.reduce(loss_sum, reduction="sum").item()
    return total, int(loss_tokens), int(real_tokens)


# ----------------------------------------------------------------------------------------------------------------
# the run


def run_info(paths: RunPaths, model_cfg: ModelConfig, training: TrainingConfig, manifest: dict) -> dict:
    """What `tunesmith.json` records: base model, method and the template exactly as training rendered it."""
    from tunesmith.config import load_config
    from tunesmith.prepare.templates import jinja_source

    template = load_config(paths.config).template if paths.config.is_file() else TemplateConfig()
    resolved = {"name": manifest.template}
    if template.name == "jinja":
        resolved["jinja"] = jinja_source(template)[1]
    template = template.model_copy(update=resolved)
    return {"base_model": model_cfg.name, "base_model_path": resolve_model_path(model_cfg.name),
            "model": model_cfg.model_dump(mode="json"), "method": training.method,
            "template": template.model_dump(mode="json"), "max_length": manifest.max_length,
            "train_on": manifest.train_on}


def train(paths: RunPaths, model_cfg: ModelConfig, training: TrainingConfig, resume: bool = False) -> TrainResult:
    """Train on the run's prepared data and save the model to `paths.model` (and `paths.merged_model`).

    Raises:
        RunError: the run has no prepared data.
        TrainingError: non-finite loss (naming the step), a failed write, nothing to resume, QLoRA without a GPU.
        ModelError: the model cannot be loaded.
    """
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    from tunesmith.prepare.pipeline import load_prepared

    # --- setup: processes, threads, precision, seed
    accelerator = Accelerator(cpu=uses_cpu())
    is_main, rank, world = accelerator.is_main_process, accelerator.process_index, accelerator.num_processes
    device = accelerator.device
    if training.num_threads:
        torch.set_num_threads(training.num_threads)
    precision = resolve_precision(training.precision, device)
    random.seed(training.seed)
    np.random.seed(training.seed)
    torch.manual_seed(training.seed)

    # --- data: the prepared splits, a fixed number of steps
    train_set, test_set, manifest = load_prepared(paths)
    train_examples = [{"input_ids": i, "labels": l} for i, l in zip(train_set["input_ids"], train_set["labels"])]
    test_examples = [{"input_ids": i, "labels": l} for i, l in zip(test_set["input_ids"], test_set["labels"])]
    if len(train_examples) < world:
        raise TrainingError(f"{len(train_examples)} training examples cannot feed {world} processes")
    per_step = training.batch_size * training.gradient_accumulation_steps * world
    epoch_steps = steps_per_epoch(len(train_examples), per_step, world)
    total_steps = training.max_steps or max(1, math.ceil(training.epochs * epoch_steps))
    warmup = warmup_steps(training, total_steps)
    peak_lr = learning_rate(training)
    max_row_tokens = max(MIN_ROW_TOKENS, manifest.max_length,
                         max(len(e["input_ids"]) for e in train_examples))

    # --- model and optimizer: full and LoRA differ only in build_model
    tokenizer = load_tokenizer(model_cfg)
    model = build_model(model_cfg, training).to(device)
    optimizer = build_optimizer(model, training, peak_lr)

    # --- resume, or start clean
    state = {"step": 0, "train_loss": None, "tokens_seen": 0, "loss_tokens": 0, "elapsed_s": 0.0, "eval_s": 0.0,
             "best_test_loss": None, "best_step": None, "evals_without_improvement": 0, "world_size": world}
    if resume:
        checkpoint = latest_checkpoint(paths)
        if checkpoint is None:
            raise TrainingError(f"--resume: no complete checkpoint in {paths.checkpoints}; train without --resume "
                                f"(set training.save_every_steps to get checkpoints)")
        load_trainable_state(model, checkpoint)
        optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", map_location=device, weights_only=True))
        saved = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
        rng_states = saved.pop("rng")
        state.update(saved)
        if world != state["world_size"]:
            raise TrainingError(f"{checkpoint}: saved with {state['world_size']} processes; resume with the same "
                                f"--nproc so the data order continues exactly")
        set_rng_state(rng_states[rank])
        if is_main:
            with writing(f"metrics {paths.metrics}", "the checkpoint is intact"):
                atomic_write_text(paths.metrics, (checkpoint / "metrics.jsonl").read_text(encoding="utf-8")
                                  if (checkpoint / "metrics.jsonl").is_file() else "")
    elif is_main:
        shutil.rmtree(paths.checkpoints, ignore_errors=True)
        paths.metrics.unlink(missing_ok=True)
    accelerator.wait_for_everyone()
    lora_hooks = keep_lora_sums_fp32(model) if precision != "fp32" and training.method != "full" else []
    # bf16: matrix weights are cast once (frozen: for the whole run; trainable: once per step) instead of by
    # autocast in every forward and backward; same numbers, ~10% less time (see bf16_weights.py). One process
    # only: DDP synchronizes the fp32 parameters' gradients through hooks the bf16 copies would bypass.
    frozen_in_bf16 = precision == "bf16" and training.method == "lora" and frozen_to_bf16(model) > 0
    loss_model, optimizer = accelerator.prepare(CausalLMLoss(model), optimizer)
    copies = bf16_trainable_copies(loss_model) if precision == "bf16" and world == 1 else None
    loss_model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    # fp16 (GPUs without bf16) needs loss scaling against underflow; for bf16/fp32 the scaler is a no-op.
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    final_steps = {total_steps}  # at the last step the model in memory is the one to keep; no copy needed

    def checkpoint_note() -> str:
        last = latest_checkpoint(paths)
        return f"last good checkpoint: {last}" if last else "no checkpoint was written"

    def evaluate(step: int) -> float | None:
        """Test loss now; an improvement mid-run saves `checkpoints/best` so the best weights survive.

        Its time is kept out of tokens/s, which should say how fast training runs, not how often it is tested."""
        nonlocal window_start
        eval_start = time.perf_counter()
        loss = evaluate_loss(loss_model, test_examples, training, max_row_tokens, tokenizer.pad_token_id, precision,
                             accelerator, copies)
        spent = time.perf_counter() - eval_start
        state["eval_s"] += spent
        window_start += spent
        if loss is None:
            return None
        if state["best_test_loss"] is None or loss < state["best_test_loss"]:
            state.update(best_test_loss=loss, best_step=step, evals_without_improvement=0)
            if is_main and step not in final_steps:
                from safetensors.torch import save_file

                with writing(f"best checkpoint in {paths.checkpoints}", checkpoint_note()):
                    with atomic_dir(paths.checkpoints / "best") as tmp:
                        save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
                        atomic_write_json(tmp / "best.json", {"step": step, "test_loss": loss})
        else:
            state["evals_without_improvement"] += 1
        return loss

    # --- the loop
    metrics = read_jsonl(paths.metrics)
    progress = tqdm(total=total_steps, initial=state["step"], desc="train", unit="step", disable=not is_main,
                    dynamic_ncols=True)
    started, window_tokens, window_start = time.perf_counter() - state["elapsed_s"], 0, time.perf_counter()
    last_test_loss, stopped_early = None, False
    for step in range(state["step"], total_steps):
        lr = lr_at(step, peak_lr, total_steps, warmup, training.lr_scheduler)
        for group in optimizer.param_groups:
            group["lr"] = lr
        parts = [[train_examples[i] for i in part]
                 for part in step_examples(step, len(train_examples), training, rank, world)]
        batches = [make_batch(part, training.packing, max_row_tokens, tokenizer.pad_token_id) for part in parts]
        local_tokens = sum(len(e["input_ids"]) for part in parts for e in part)
        loss_sum, loss_tokens, real_tokens = accumulate_gradients(loss_model, batches, accelerator, precision,
                                                                  local_tokens, scaler.scale, copies)
        train_loss = state["train_loss"] = loss_sum / max(loss_tokens, 1)
        if not math.isfinite(train_loss):
            progress.close()
            raise TrainingError(f"loss became {train_loss} at step {step + 1}; stopped before updating the weights "
                                f"({checkpoint_note()}); lower training.learning_rate or use precision=fp32")
        scaler.unscale_(optimizer)
        if training.max_grad_norm:
            grad_norm = float(accelerator.clip_grad_norm_(trainable, training.max_grad_norm))
        else:
            grad_norm = float(torch.linalg.vector_norm(torch.stack(
                [torch.linalg.vector_norm(p.grad) for p in trainable if p.grad is not None])))
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if copies:
            copies.refresh()

        done = step + 1
        state.update(step=done, tokens_seen=state["tokens_seen"] + real_tokens,
                     loss_tokens=state["loss_tokens"] + loss_tokens)
        window_tokens += real_tokens
        test_now = None
        if training.eval_every_steps and done % training.eval_every_steps == 0 and done < total_steps:
            test_now = last_test_loss = evaluate(done)
        if done % training.log_every_steps == 0 or test_now is not None or done == total_steps:
            now = time.perf_counter()
            line = {"step": done, "epoch": round(done / epoch_steps, 4), "loss": train_loss, "lr": lr,
                    "grad_norm": grad_norm, "tokens_seen": state["tokens_seen"], "loss_tokens": state["loss_tokens"],
                    "tokens_per_s": round(window_tokens / max(now - window_start, 1e-9), 1)}
            if test_now is not None:
                line["test_loss"] = test_now
            metrics.append(line)
            window_tokens, window_start = 0, now
            if is_main:
                with writing(f"metrics {paths.metrics}", checkpoint_note()):
                    append_jsonl(paths.metrics, line)
                    if test_now is not None:
                        write_loss_plot(paths, metrics)
        progress.set_postfix(loss=f"{train_loss:.4f}", lr=f"{lr:.2e}",
                             tok_s=f"{state['tokens_seen'] / max(time.perf_counter() - started - state['eval_s'], 1e-9):.0f}")
        progress.update(1)
        patience = training.early_stopping_patience
        if test_now is not None and patience and state["evals_without_improvement"] >= patience:
            stopped_early = True
        if training.save_every_steps and (done % training.save_every_steps == 0 or stopped_early):
            state["elapsed_s"] = time.perf_counter() - started
            rng_states = [rng_state()] if world == 1 else _gather_objects(rng_state(), accelerator)
            if is_main:
                save_checkpoint(paths, done, model, optimizer, state, rng_states, training.keep_checkpoints)
            accelerator.wait_for_everyone()
        if stopped_early:
            break
    progress.close()

    # --- final evaluation, best weights, artifacts
    final_step = state["step"]
    final_steps.add(final_step)
    if metrics and metrics[-1]["step"] == final_step and "test_loss" in metrics[-1]:
        last_test_loss = metrics[-1]["test_loss"]  # evaluated already (early stop, or resumed after the end)
    else:
        last_test_loss = evaluate(final_step) if test_examples else None
        if last_test_loss is not None:
            metrics.append({"step": final_step, "epoch": round(final_step / epoch_steps, 4),
                            "test_loss": last_test_loss})
            if is_main:
                with writing(f"metrics {paths.metrics}", checkpoint_note()):
                    append_jsonl(paths.metrics, metrics[-1])
    model_step = final_step
    best_file = paths.checkpoints / "best" / "best.json"
    if state["best_step"] not in (None, final_step) and best_file.is_file() and \
            json.loads(best_file.read_text(encoding="utf-8"))["step"] == state["best_step"]:
        load_trainable_state(model, best_file.parent)
        model_step = state["best_step"]
    elif is_main:
        shutil.rmtree(best_file.parent, ignore_errors=True)  # stale: the final weights are the best
    for hook in lora_hooks:
        hook.remove()
    if copies:
        copies.close()
    if frozen_in_bf16:
        restore_frozen(model, model_cfg)
    elapsed = time.perf_counter() - started
    summary = {
        "method": training.method, "precision": precision, "processes": world, "steps": final_step,
        "total_steps": total_steps, "epochs": round(final_step / epoch_steps, 4), "stopped_early": stopped_early,
        "model_step": model_step, "time_s": round(elapsed, 2), "train_time_s": round(elapsed - state["eval_s"], 2),
        "tokens_seen": state["tokens_seen"], "loss_tokens": state["loss_tokens"],
        "tokens_per_s": round(state["tokens_seen"] / max(elapsed - state["eval_s"], 1e-9), 1),
        "final_train_loss": state["train_loss"], "final_test_loss": last_test_loss,
        "best_test_loss": state["best_test_loss"], "best_step": state["best_step"],
        "learning_rate": peak_lr, "packing": training.packing,
    }
    merged_dir = None
    if is_main:
        with writing(f"the model to {paths.model}", checkpoint_note()):
            write_loss_plot(paths, metrics)
            model, merged_dir = save_model(paths, model, tokenizer, run_info(paths, model_cfg, training, manifest),
                                           merge=training.merge_lora and training.method != "full")
            atomic_write_json(paths.train_summary, summary)
    accelerator.wait_for_everyone()
    return TrainResult(paths.model, merged_dir, final_step, state["train_loss"], last_test_loss,
                       state["best_test_loss"], summary, model.eval())


def _gather_objects(obj, accelerator) -> list:
    from accelerate.utils import gather_object

    return gather_object([obj])


def save_model(paths: RunPaths, model, tokenizer, info: dict, merge: bool):
    """The final model as a plain HF folder (full weights, or the LoRA adapter) with tokenizer and tunesmith.json.

    With `merge`, the adapter is also folded into the base weights and saved to `paths.merged_model`.
    Returns (the model now in memory, the merged folder or None).
    """
    with atomic_dir(paths.model) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / RUN_INFO_FILE, info)
    if not merge:
        return model, None
    merged = model.merge_and_unload()
    with atomic_dir(paths.merged_model) as tmp:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / RUN_INFO_FILE, {**info, "method": "full", "merged_from": info["method"]})
    return merged, paths.merged_model
