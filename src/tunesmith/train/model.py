"""The model being trained: built (full, LoRA or QLoRA: the only place the methods differ before saving), then
wrapped for the loop (loss, sharding, precision, processes) and unwrapped again before it is saved.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tunesmith.config import ModelConfig, TrainingConfig
from tunesmith.errors import TrainingError
from tunesmith.modeling.frozen_prefix import FrozenPrefixCache, frozen_boundary, random_in_training, store_fits
from tunesmith.modeling.losses import CausalLMLoss
from tunesmith.modeling.packing import register_packed_attention
from tunesmith.models import apply_lora, decoder_layers, freeze_lower_layers, load_causal_lm, load_model
from tunesmith.train.bf16_weights import (
    TrainableCopies,
    bf16_trainable_copies,
    frozen_to_bf16,
    restore_frozen,
)
from tunesmith.train.distributed import Runtime
from tunesmith.train.sharding import full_state_dict, shard
from tunesmith.train.speed import SpeedChoices


def build_model(model_cfg: ModelConfig, training: TrainingConfig, speed: SpeedChoices):
    """The trainable model: full in fp32 master weights, or the base frozen under LoRA adapters (the base in
    `speed.lora_base_dtype`: bf16 on a GPU, fp32 on a CPU, which casts it itself, bf16_weights.py).

    Raises:
        TrainingError: QLoRA without CUDA and bitsandbytes.
        ModelError: the model cannot be loaded, or has only pickle weights without model.allow_pickle.
    """
    if training.method == "qlora":
        if not torch.cuda.is_available():
            raise TrainingError("training.method=qlora needs a CUDA GPU (4-bit weights); use method=lora on CPU")
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None:
            raise TrainingError("training.method=qlora needs bitsandbytes: `pip install bitsandbytes`")
        # accelerate has made this process's GPU the current one (its local rank)
        model = load_4bit(model_cfg, torch.cuda.current_device(), torch.cuda.is_bf16_supported())
    else:
        model = load_model(model_cfg, dtype=speed.lora_base_dtype if training.method == "lora" else torch.float32)
    model.config.use_cache = False
    if speed.packed_attention:
        # On CPU, attention per example of the packed rows (packing.packed_attention): 3x less attention time
        # than eager under a block-diagonal mask, which in turn beats sdpa's flash kernel, whose backward costs a
        # fixed ~10 ms per layer however short the examples (tests/modeling/test_packing.py checks all give the
        # same loss and gradients). Eager for attention that packed_attention does not implement.
        special = attention_is_special(model.config)
        model.set_attn_implementation("eager" if special else register_packed_attention())
    if training.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if training.method in ("lora", "qlora"):
        model = apply_lora(model, training)
    elif training.trainable_layers:
        freeze_lower_layers(model, training.trainable_layers)
    return model


def attention_is_special(config) -> bool:
    """Attention with logit soft-capping or a sliding window, which packed_attention does not implement."""
    return bool(getattr(config, "attn_logit_softcapping", None) or getattr(config, "sliding_window", None))


def qlora_device_map(local_rank: int) -> dict:
    """All of the 4-bit model on this process's own GPU: with several processes each loads its copy onto its
    local rank's GPU, not all onto GPU 0."""
    return {"": local_rank}


def qlora_compute_dtype(bf16_supported: bool) -> torch.dtype:
    """The dtype the 4-bit weights are dequantized to for each product: bf16, or fp16 on GPUs without bf16."""
    return torch.bfloat16 if bf16_supported else torch.float16


def load_4bit(model_cfg: ModelConfig, local_rank: int, bf16_supported: bool):
    """The base model in 4-bit NF4 on this process's GPU, ready for adapters (QLoRA); safetensors only unless
    model.allow_pickle, as every load (`models.load_causal_lm`)."""
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=qlora_compute_dtype(bf16_supported))
    model = load_causal_lm(model_cfg, quantization_config=quant, device_map=qlora_device_map(local_rank))
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


@dataclass
class Learner:
    """The model at work in the loop, and what updates it."""

    model: torch.nn.Module
    """The model as built (PEFT-wrapped under LoRA), fp32 masters: what checkpoints and the final save hold."""
    tokenizer: object
    """Saved with the model; its pad id pads the batches."""
    loss_model: torch.nn.Module
    """CausalLMLoss around the model: sharded by FSDP2 (`training.distributed`), or prepared by accelerate (DDP
    under several processes)."""
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    """fp16 loss scaling against underflow; a no-op for bf16 and fp32."""
    trainable: list[torch.nn.Parameter]
    copies: TrainableCopies | None
    """bf16 working copies of the trainable weights that run the forward (bf16 on CPU, one process), else None."""
    lora_hooks: list
    frozen_in_bf16: bool
    """The frozen base was cast to bf16 for the run; `unwrap_after_training` reloads it in fp32."""
    prefix_cache: FrozenPrefixCache | None = None
    """The frozen lower layers' kept output (`training.frozen_layer_cache`), else None."""


def loss_model_for(model, training: TrainingConfig, runtime: Runtime) -> CausalLMLoss:
    """The loss around the built model; under FSDP sharded in place (each decoder layer, then the loss as the
    root), so the optimizer, built next, holds the shards."""
    loss_model = CausalLMLoss(model)
    if runtime.sharded:
        shard(loss_model, training, runtime.device, runtime.world)
    return loss_model


def frozen_prefix_cache(loss_model: CausalLMLoss, training: TrainingConfig, runtime: Runtime,
                        train_lengths) -> FrozenPrefixCache | None:
    """The cache of the frozen lower layers' output, attached to `loss_model`, when `training.trainable_layers`
    freezes some, nothing random runs in them, the store fits (`store_fits`), and the model is not sharded (FSDP
    gathers layers in its own hooks); else None."""
    if not (training.trainable_layers and training.frozen_layer_cache) or runtime.sharded:
        return None
    base = loss_model.causal_lm()
    if random_in_training(base.config):
        return None
    layers = decoder_layers(base)
    boundary = frozen_boundary(layers, base.get_input_embeddings())
    width = int(base.config.hidden_size)
    if boundary == 0 or not store_fits(train_lengths, width):
        return None
    cache = FrozenPrefixCache(layers, boundary, train_lengths, width)
    loss_model.prefix_cache = cache
    return cache


def wrap_for_training(model, loss_model, optimizer, tokenizer, training: TrainingConfig,
                      runtime: Runtime, prefix_cache: FrozenPrefixCache | None = None) -> Learner:
    """The built (and possibly resumed) model, its loss model and the optimizer, made ready for the loop."""
    precision, speed = runtime.precision, runtime.speed
    lora_hooks = keep_lora_sums_fp32(model) if speed.fp32_lora_sums else []
    # bf16 on CPU: matrix weights are cast once (frozen: for the whole run; trainable: once per step) instead of
    # by autocast in every forward and backward; same numbers, ~10% less time (see bf16_weights.py). One process
    # only: DDP synchronizes the fp32 parameters' gradients through hooks the bf16 copies would bypass.
    frozen_in_bf16 = speed.bf16_weights and training.method == "lora" and frozen_to_bf16(model) > 0
    if not runtime.sharded:  # sharded, FSDP does what DDP would: accelerate has nothing to add
        loss_model, optimizer = runtime.accelerator.prepare(loss_model, optimizer)
    copies = bf16_trainable_copies(loss_model) if speed.bf16_weights and runtime.world == 1 else None
    loss_model.train()
    return Learner(model=model, tokenizer=tokenizer, loss_model=loss_model, optimizer=optimizer,
                   scaler=torch.amp.GradScaler(runtime.device.type, enabled=precision == "fp16"),
                   trainable=[p for p in model.parameters() if p.requires_grad], copies=copies,
                   lora_hooks=lora_hooks, frozen_in_bf16=frozen_in_bf16, prefix_cache=prefix_cache)


def unwrap_after_training(learner: Learner, model_cfg: ModelConfig) -> None:
    """Undo the training-time changes to the model (hooks, bf16 copies and base), so it saves as plain fp32."""
    for hook in learner.lora_hooks:
        hook.remove()
    if learner.copies:
        learner.copies.close()
    if learner.frozen_in_bf16:
        restore_frozen(learner.model, model_cfg)


def gathered_model(learner: Learner, model_cfg: ModelConfig, training: TrainingConfig, runtime: Runtime):
    """Under FSDP: the trained weights gathered into a plain model in the main process's CPU memory (None on the
    others), to save and merge as an unsharded run does; every process takes part in the gathering.

    The plain model is built as the run built its own (the base read from the model file), then given every
    trained weight: under LoRA the adapters, the base being frozen. The optimizer's state is dropped first.

    Raises:
        TrainingError: a trained weight has no place in the rebuilt model.
    """
    learner.optimizer.state.clear()  # training is over: the moments need not sit beside the gathered copy
    weights = full_state_dict(learner.model, trainable_only=True)
    if not runtime.is_main:
        return None
    plain = build_model(model_cfg, training, runtime.speed)
    result = plain.load_state_dict(weights, strict=False)
    missing = {name for name, p in plain.named_parameters() if p.requires_grad} - set(weights)
    if result.unexpected_keys or missing:
        raise TrainingError(f"gathering the sharded model: {sorted(result.unexpected_keys)[:3]} unexpected, "
                            f"{sorted(missing)[:3]} missing; this is a tunesmith bug, please report it")
    return plain  # on the CPU, where the weights were gathered: a GPU already holds its shards
