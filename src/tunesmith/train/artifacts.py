"""What a finished training leaves in the run folder: the model (and merged model), its `tunesmith.json`, and the
facts of `train_summary.json`."""

from __future__ import annotations

from tunesmith.config import ModelConfig, TemplateConfig, TrainingConfig
from tunesmith.models import resolve_model_path
from tunesmith.prepare.manifest import Manifest
from tunesmith.prepare.templates import jinja_source
from tunesmith.runs import RUN_INFO_FILE, RunPaths, atomic_dir, atomic_write_json
from tunesmith.train.schedule import StepPlan
from tunesmith.train.state import TrainState


def run_info(model_cfg: ModelConfig, training: TrainingConfig, template: TemplateConfig, manifest: Manifest) -> dict:
    """What `tunesmith.json` records: base model, method and the template exactly as training rendered it.

    The template is the run's section with `auto` replaced by the name preparation resolved, and a Jinja file's
    text in place of its path, so the saved model renders prompts the same wherever it goes. `stripped_template`
    names the baked-in form removed from the training prompts (None when none was), so a user prompt pasted in
    that form is stripped the same way before the model sees it (`tunesmith.use.generation.Generator.render`).
    """
    resolved = {"name": manifest.template}
    if template.name == "jinja":
        resolved["jinja"] = jinja_source(template)[1]
    template = template.model_copy(update=resolved)
    return {"base_model": model_cfg.name, "base_model_path": resolve_model_path(model_cfg.name),
            "model": model_cfg.model_dump(mode="json"), "method": training.method,
            "template": template.model_dump(mode="json"), "max_length": manifest.max_length,
            "train_on": manifest.train_on,
            "stripped_template": manifest.stripped_template.form if manifest.stripped_template else None}


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


def train_summary(training: TrainingConfig, precision: str, world_size: int, plan: StepPlan, state: TrainState,
                  elapsed_s: float, stopped_early: bool, model_step: int, final_test_loss: float | None,
                  sharded: bool = False) -> dict:
    """`train_summary.json`: how long, how fast, how far the run went, and which step's weights were saved.

    Training time and tokens/s leave out the test-loss evaluations; `sharded`: FSDP sharded the model.
    """
    train_s = elapsed_s - state.eval_s
    return {
        "method": training.method, "precision": precision, "processes": world_size, "sharded": sharded,
        "steps": state.step,
        "total_steps": plan.total_steps, "epochs": plan.epochs(state.step), "stopped_early": stopped_early,
        "model_step": model_step, "time_s": round(elapsed_s, 2), "train_time_s": round(train_s, 2),
        "tokens_seen": state.tokens_seen, "loss_tokens": state.loss_tokens,
        "tokens_per_s": round(state.tokens_seen / max(train_s, 1e-9), 1),
        "final_train_loss": state.train_loss, "final_test_loss": final_test_loss,
        "best_test_loss": state.best_test_loss, "best_step": state.best_step,
        "learning_rate": plan.peak_lr, "packing": training.packing,
    }
