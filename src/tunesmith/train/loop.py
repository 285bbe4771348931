"""Training: one loop for full finetuning and LoRA, read top to bottom in phases.

`train` lists them: setup (processes, precision, seed) → data (prepared splits) and the step plan → model (full,
or wrapped in LoRA: model.py, the only place the methods differ) → optimizer → resume or start clean → loop of
step / evaluate / log / checkpoint → finish (final test loss, best weights, save the model). The state that
changes is one TrainState, handed to each phase that changes it.

Choices that make this trainer better than a generic one:
- The loss of an optimizer step is the sum of token losses over ALL its micro-batches (and processes) divided by
  their total count of loss-bearing tokens, so batch 8 × accumulation 1 and 2 × 4 give the same update.
- Examples are packed into rows (modeling/packing.py), so almost no compute goes to padding.
- The output layer runs only at loss-bearing positions, in chunks, so memory never scales with
  sequence × vocabulary.
- In bf16 on a CPU, matrix weights are cast once per step (LoRA's frozen base once per run), not in every
  forward and backward as plain autocast does: the same numbers, less time (bf16_weights.py). Such choices are
  made by device in one place (speed.py): on a GPU they would only cost memory.
- The learning rate is a pure function of the step, and the data order a pure function of seed and epoch
  (schedule.py), so a resumed run continues exactly where it stopped; checkpoints are written atomically with a
  `latest` pointer written last (checkpoints.py).
"""

from __future__ import annotations

import math
import random
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from tunesmith.config import ModelConfig, TemplateConfig, TrainingConfig
from tunesmith.errors import TrainingError
from tunesmith.modeling.batches import make_batch
from tunesmith.modeling.packing import MIN_ROW_TOKENS
from tunesmith.models import load_tokenizer, resolve_precision
from tunesmith.prepare.manifest import Manifest
from tunesmith.runs import RunPaths, append_jsonl, atomic_write_json, atomic_write_text, read_jsonl
from tunesmith.train.artifacts import run_info, save_model, train_summary
from tunesmith.train.budget import (BudgetDecision, RunMark, StepTimer, correction_times, corrected,
                                    decide_steps, measured_rates)
from tunesmith.train.checkpoints import (
    best_checkpoint,
    checkpoint_note,
    drop_best,
    latest_checkpoint,
    load_checkpoint,
    load_trainable_state,
    rng_state,
    save_best,
    save_checkpoint,
    set_rng_state,
    writing,
)
from tunesmith.train.distributed import (
    Runtime,
    accumulate_gradients,
    evaluate_loss,
    gather_objects,
    make_accelerator,
    with_distribution,
)
from tunesmith.train.fingerprint import resume_notes, run_fingerprint
from tunesmith.train.model import (
    Learner,
    build_model,
    frozen_prefix_cache,
    gathered_model,
    loss_model_for,
    unwrap_after_training,
    wrap_for_training,
)
from tunesmith.train.optim import apply_gradients, build_optimizer, set_learning_rate
from tunesmith.train.schedule import StepPlan, plan_steps, step_examples, warmup_steps, with_default_learning_rate
from tunesmith.train.speed import speed_choices
from tunesmith.train.state import Clock, TrainResult, TrainState
from tunesmith.train.stopping import RunStatus, StopSignal

__all__ = ["TrainResult", "train"]

LogCallback = Callable[[dict], None]
"""Called on the main process with each metrics line right after `metrics.jsonl` has it (the API feeds the
trackers of `output.report_to` with it)."""

MetricsCallback = Callable[[RunPaths, list[dict]], None]
"""Called on the main process with the metrics so far, after each line with a test loss and at the end (the API
draws the loss plot with it; training itself draws nothing)."""


@dataclass(frozen=True)
class TrainData:
    """The prepared splits as the loop takes them, and the widest row a batch of them may pack into."""

    train: Sequence[dict]
    """Examples as `{"input_ids", "labels"}`, read from the prepared Arrow files when indexed."""
    test: Sequence[dict]
    manifest: Manifest
    max_row_tokens: int


@dataclass(frozen=True)
class Run:
    """What stays fixed while training runs: where it writes, its settings, processes, data and step plan."""

    paths: RunPaths
    training: TrainingConfig
    runtime: Runtime
    data: TrainData
    plan: StepPlan
    on_metrics: MetricsCallback | None = None
    status: RunStatus | None = None
    """`<run>/status.json`, refreshed with each metrics line."""
    on_log: LogCallback | None = None
    fingerprint: dict | None = None
    padding_side: str = "right"
    """`tokenization.padding_side`: where unpacked training batches are padded."""
    """The settings that decide the run's course (fingerprint.py): saved with each checkpoint, checked on resume."""


def train(paths: RunPaths, model_cfg: ModelConfig, training: TrainingConfig, template: TemplateConfig,
          resume: bool = False, on_metrics: MetricsCallback | None = None,
          on_log: LogCallback | None = None, padding_side: str = "right") -> TrainResult:
    """Train on the run's prepared data and save the model to `paths.model` (and `paths.merged_model`).

    `template` is the run's template section, recorded (resolved) in the saved model's `tunesmith.json`.
    `on_metrics(paths, metrics)` is called on the main process after each metrics line with a test loss, and
    once at the end; `on_log(line)` after every metrics line. `padding_side` is `tokenization.padding_side`, for
    unpacked batches. SIGTERM or SIGINT stops after the current step
    with a checkpoint (`TrainResult.stopped`); `<run>/status.json` says how the run stands throughout.

    Raises:
        RunError: the run has no prepared data.
        TrainingError: non-finite loss (naming the step), a failed write, nothing to resume, QLoRA without a GPU.
        ModelError: the model cannot be loaded.
    """
    training = with_default_learning_rate(training, model_cfg)
    runtime = setup(training)
    data = load_data(paths, runtime.world)
    plan = plan_steps(training, len(data.train), runtime.world)
    run = Run(paths, training, runtime, data, plan, on_metrics, RunStatus(paths, runtime.is_main, plan.total_steps),
              on_log, run_fingerprint(model_cfg, training, data.manifest, runtime.world, runtime.precision, plan),
              padding_side=padding_side)

    with StopSignal() as stop, run.status.failing_on_error():
        tokenizer = load_tokenizer(model_cfg)
        model = build_model(model_cfg, training, runtime.speed).to(runtime.device)
        run = replace(run, runtime=with_distribution(runtime, training, model))  # ddp or fsdp, now it is known
        loss_model = loss_model_for(model, training, run.runtime)  # sharded first: the optimizer holds the shards
        optimizer = build_optimizer(model, training, run.plan.peak_lr)
        state = resume_or_start(run, model, optimizer, resume)
        prefix_cache = frozen_prefix_cache(loss_model, training, run.runtime, data.train.lengths())
        learner = wrap_for_training(model, loss_model, optimizer, tokenizer, training, run.runtime, prefix_cache)

        metrics = read_jsonl(paths.metrics)
        clock = Clock.start(state.elapsed_s)
        run.status.running(state.step)
        run, outcome = run_all_steps(run, learner, state, clock, metrics, stop)
        if outcome == "stopped":
            run.status.write("stopped", state.step)
            return TrainResult(paths.model, None, state.step, state.train_loss, None, state.best_test_loss,
                               model=learner.model, stopped=True)
        result = finish(run, learner, state, clock, metrics, outcome == "early", model_cfg, template)
    run.status.write("finished", result.steps)
    return result


# ----------------------------------------------------------------------------------------------------------------
# setup and resume


def setup(training: TrainingConfig) -> Runtime:
    """Start (or join) the run's processes; fix threads, precision and the seeds."""
    accelerator = make_accelerator()
    if training.num_threads:
        torch.set_num_threads(training.num_threads)
    random.seed(training.seed)
    np.random.seed(training.seed)
    torch.manual_seed(training.seed)
    precision = resolve_precision(training.precision, accelerator.device)
    return Runtime(accelerator=accelerator, rank=accelerator.process_index, world=accelerator.num_processes,
                   is_main=accelerator.is_main_process, device=accelerator.device, precision=precision,
                   speed=speed_choices(accelerator.device.type, training.method, precision))


def load_data(paths: RunPaths, world_size: int) -> TrainData:
    """The run's prepared train and test examples and their manifest.

    Raises:
        RunError: the run has no prepared data.
        TrainingError: fewer training examples than processes.
    """
    from tunesmith.prepare.pipeline import PreparedExamples, load_prepared

    train_set, test_set, manifest = load_prepared(paths)
    # indexed in the memory-mapped Arrow files at each step, never copied into this process
    train_examples, test_examples = PreparedExamples(train_set), PreparedExamples(test_set)
    if len(train_examples) < world_size:
        raise TrainingError(f"{len(train_examples)} training examples cannot feed {world_size} processes")
    max_row_tokens = max(MIN_ROW_TOKENS, manifest.max_length, int(train_examples.lengths().max()))
    return TrainData(train_examples, test_examples, manifest, max_row_tokens)


def resume_or_start(run: Run, model, optimizer, resume: bool) -> TrainState:
    """The latest checkpoint loaded into model and optimizer (and the RNGs, and the metrics file), or a clean
    start: old checkpoints and metrics of this run removed.

    Raises:
        TrainingError: `resume` without a complete checkpoint, or one saved with settings that change the run's
            course (fingerprint.py; the number of processes alone for checkpoints without a fingerprint).
    """
    paths, runtime = run.paths, run.runtime
    state = TrainState(world_size=runtime.world)
    if resume:
        checkpoint = latest_checkpoint(paths)
        if checkpoint is None:
            raise TrainingError(f"--resume: no complete checkpoint in {paths.checkpoints}; train without --resume "
                                f"(set training.save_every_steps to get checkpoints)")
        state, rng_states = load_checkpoint(checkpoint, model, optimizer, runtime.device, runtime.world,
                                            fingerprint=run.fingerprint)
        set_rng_state(rng_states[runtime.rank])
        if runtime.is_main:
            for note in resume_notes(checkpoint, run.fingerprint, state.step):
                warnings.warn(note, stacklevel=2)
            saved_metrics = checkpoint / "metrics.jsonl"
            with writing(f"metrics {paths.metrics}", "the checkpoint is intact"):
                atomic_write_text(paths.metrics,
                                  saved_metrics.read_text(encoding="utf-8") if saved_metrics.is_file() else "")
    elif runtime.is_main:
        shutil.rmtree(paths.checkpoints, ignore_errors=True)
        paths.metrics.unlink(missing_ok=True)
    runtime.accelerator.wait_for_everyone()
    return state


# ----------------------------------------------------------------------------------------------------------------
# the loop


def run_all_steps(run: Run, learner: Learner, state: TrainState, clock: Clock, metrics: list[dict],
                  stop: StopSignal) -> tuple[Run, str]:
    """The run's steps (`run_steps`), and the run with the length it had in the end.

    With `training.time_budget` the first steps run under the configured plan while timed; then the number of
    steps is set so that the schedule ends at the budget (budget.py), checked again at a quarter, half and three
    quarters of the budget against the time measured since, and the rest runs under that plan. A resume with the
    same budget keeps the length decided before (`state.budget`), and the checks not yet passed.
    """
    budget_s = run.training.time_budget
    if budget_s is None:
        return run, run_steps(run, learner, state, clock, metrics, stop)
    if state.budget is not None and state.budget["budget_s"] == budget_s:
        decision = BudgetDecision.from_json(state.budget)
    else:
        if state.budget is not None and run.runtime.is_main:
            warnings.warn(f"training.time_budget is now {budget_s:g} s (the run was planned for "
                          f"{state.budget['budget_s']:g} s): timing the next steps to fit the budget left",
                          stacklevel=2)
        timer = StepTimer(budget_s)

        def timed_enough(now: TrainState) -> bool:
            return agreed(run, timer.tick(now.step, now.tokens_seen, now.eval_s))

        outcome = run_steps(run, learner, state, clock, metrics, stop, until=timed_enough)
        if outcome in ("early", "stopped") or timer.timed_steps == 0:
            return run, outcome
        decision = decide_budget(run, state, clock, timer.seconds_per_token(), timer.timed_steps,
                                 probe_evaluation(run, learner, state, clock, metrics))
        state.budget = decision.to_json()
        if run.runtime.is_main:
            tqdm_write(decision.why())
    run = with_length(run, decision.total_steps)
    for check_at_s in correction_times(budget_s, clock.elapsed()):
        start = run_mark(state, clock)
        outcome = run_steps(run, learner, state, clock, metrics, stop,
                            until=lambda now, at=check_at_s, run=run: agreed(run, clock.elapsed() >= at))
        if outcome != "measured":
            return run, outcome
        s_per_token, eval_s = measured_rates(start, run_mark(state, clock), run.training.eval_every_steps)
        new = decide_budget(run, state, clock, s_per_token, state.step - start.step,
                            eval_s if eval_s is not None else decision.eval_s)
        change = corrected(decision, new, state.step)
        if change is not None:
            if run.runtime.is_main:
                tqdm_write(f"time_budget: at step {state.step} the steps since took {new.step_s:.2f} s each "
                           f"(predicted {decision.step_s:.2f}): the run now takes {change.total_steps} steps, "
                           f"not {decision.total_steps}, to end at the budget")
            decision = change
            state.budget = decision.to_json()
            run = with_length(run, decision.total_steps)
    return run, run_steps(run, learner, state, clock, metrics, stop)


def agreed(run: Run, value):
    """The main process's value, for every process (rank 0 decides when the steps were timed enough, and the
    budget's length)."""
    return gather_objects(value)[0] if run.runtime.world > 1 else value


def run_mark(state: TrainState, clock: Clock) -> RunMark:
    return RunMark(elapsed_s=clock.elapsed(), eval_s=state.eval_s, tokens_seen=state.tokens_seen, step=state.step)


def probe_evaluation(run: Run, learner: Learner, state: TrainState, clock: Clock, metrics: list[dict]) -> float | None:
    """One test-loss evaluation at the end of the probe, logged as a line of its own; returns its seconds (None
    without test examples).

    Timed rather than predicted: on a small model an evaluation's fixed costs (the best copy written, batches
    built) outweigh its forward passes, and a third of a training token's time per test token (the estimate
    without a measure) took a 20 s budget to 34 s with an evaluation every 10 steps.
    """
    if not run.data.test:
        return None
    before = state.eval_s
    loss = evaluate(run, learner, state, clock, state.step, save_best_copy=True)
    if loss is None:
        return None
    log_metrics(run, metrics, {"step": state.step, "epoch": run.plan.epochs(state.step), "test_loss": loss})
    return state.eval_s - before


def decide_budget(run: Run, state: TrainState, clock: Clock, s_per_token: float, measured_steps: int,
                  eval_s: float | None) -> BudgetDecision:
    """The length the budget holds, from the measured seconds per training token and per evaluation (`eval_s`,
    None: predicted); the main process's decision, for every process."""
    test_lengths = run.data.test.lengths()
    decision = decide_steps(run.training.time_budget, clock.elapsed(), state.step, s_per_token,
                            tokens_per_step(run), int(test_lengths.sum()) if len(test_lengths) else 0,
                            run.training.eval_every_steps, run.plan.epoch_steps, measured_steps, eval_s)
    return agreed(run, decision)


def tokens_per_step(run: Run) -> float:
    """An average step's tokens (all processes): an epoch's over its steps."""
    return float(run.data.train.lengths().sum()) / run.plan.epoch_steps


def with_length(run: Run, total_steps: int) -> Run:
    """The run with `total_steps` steps: its warmup and schedule follow the new length, and so do the
    checkpoints' fingerprint and the status file."""
    plan = replace(run.plan, total_steps=total_steps, warmup_steps=warmup_steps(run.training, total_steps))
    if run.fingerprint is not None:
        run.fingerprint["schedule"].update(total_steps=plan.total_steps, warmup_steps=plan.warmup_steps)
    if run.status is not None:
        run.status.total_steps = total_steps
    return replace(run, plan=plan)


def tqdm_write(text: str) -> None:
    """A line above the progress bar."""
    from tqdm.auto import tqdm

    tqdm.write(text)


def run_steps(run: Run, learner: Learner, state: TrainState, clock: Clock, metrics: list[dict],
              stop: StopSignal, until: Callable[[TrainState], bool] | None = None) -> str:
    """Optimizer steps from `state.step` to the plan's end: step, evaluate, log, checkpoint; returns "done", or
    "early" (early stopping) or "stopped" (a stop signal: the step finished and checkpointed), or "measured"
    when `until(state)`, asked after each step, says so (the time budget's probe)."""
    from tqdm.auto import tqdm

    training, total_steps = run.training, run.plan.total_steps
    with tqdm(total=total_steps, initial=state.step, desc="train", unit="step", disable=not run.runtime.is_main,
              dynamic_ncols=True) as progress:
        for step in range(state.step, total_steps):
            lr, grad_norm = train_step(run, learner, step, state, clock)
            done = state.step
            test_now = None
            if training.eval_every_steps and done % training.eval_every_steps == 0 and done < total_steps:
                test_now = evaluate(run, learner, state, clock, done, save_best_copy=True)
            if done % training.log_every_steps == 0 or test_now is not None or done == total_steps:
                line = {"step": done, "epoch": run.plan.epochs(done), "loss": state.train_loss, "lr": lr,
                        "grad_norm": grad_norm, "tokens_seen": state.tokens_seen, "loss_tokens": state.loss_tokens,
                        "tokens_per_s": clock.close_window()}
                if test_now is not None:
                    line["test_loss"] = test_now
                log_metrics(run, metrics, line)
            tokens_per_s = state.tokens_seen / max(clock.elapsed() - state.eval_s, 1e-9)
            progress.set_postfix(loss=f"{state.train_loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:.0f}")
            progress.update(1)
            patience = training.early_stopping_patience
            stopped_early = bool(test_now is not None and patience and state.evals_without_improvement >= patience)
            saved = bool(training.save_every_steps and (done % training.save_every_steps == 0 or stopped_early))
            if saved:
                checkpoint(run, learner, state, clock)
            if stopped_early:
                return "early"
            if done < total_steps and stop.agreed(run.runtime):
                if not saved:
                    checkpoint(run, learner, state, clock)
                return "stopped"
            if until is not None and until(state):
                return "measured"
    return "done"


def train_step(run: Run, learner: Learner, step: int, state: TrainState, clock: Clock) -> tuple[float, float]:
    """Optimizer step `step` (0-based): this process's micro-batches forward and backward, one update.

    Returns (learning rate, gradient norm); `state` counts the step, its loss and tokens.

    Raises:
        TrainingError: the loss is not finite (the weights are left as they were).
    """
    training, runtime, data = run.training, run.runtime, run.data
    lr = run.plan.lr(step)
    set_learning_rate(learner.optimizer, lr)
    indices = step_examples(step, len(data.train), training, runtime.rank, runtime.world)
    parts = [[data.train[i] for i in part] for part in indices]
    pad_id = learner.tokenizer.pad_token_id
    batches = [make_batch(part, training.packing, data.max_row_tokens, pad_id, run.padding_side) for part in parts]
    if learner.prefix_cache is not None:
        for batch, part in zip(batches, indices):
            batch["cache_index"] = learner.prefix_cache.batch_index(part, training.packing, data.max_row_tokens,
                                                                    run.padding_side)
    local_tokens = sum(len(e["input_ids"]) for part in parts for e in part)
    loss_sum, loss_tokens, real_tokens = accumulate_gradients(learner.loss_model, batches, runtime.accelerator,
                                                              runtime.precision, local_tokens, learner.scaler.scale,
                                                              learner.copies)
    train_loss = state.train_loss = loss_sum / max(loss_tokens, 1)
    if not math.isfinite(train_loss):
        raise TrainingError(f"loss became {train_loss} at step {step + 1}; stopped before updating the weights "
                            f"({checkpoint_note(run.paths)}); lower training.learning_rate or use precision=fp32")
    grad_norm = apply_gradients(learner.optimizer, learner.scaler, learner.trainable, training.max_grad_norm,
                                runtime.accelerator)
    if learner.copies:
        learner.copies.refresh()
    state.step = step + 1
    state.tokens_seen += real_tokens
    state.loss_tokens += loss_tokens
    clock.window_tokens += real_tokens
    return lr, grad_norm


def evaluate(run: Run, learner: Learner, state: TrainState, clock: Clock, step: int,
             save_best_copy: bool) -> float | None:
    """Test loss now (None without test examples); a new best is counted in `state`, and with `save_best_copy`
    (mid-run, when the weights in memory will change again) saved to `checkpoints/best` so it survives.

    Its time is kept out of tokens/s, which should say how fast training runs, not how often it is tested.
    """
    runtime = run.runtime
    started = time.perf_counter()
    loss = evaluate_loss(learner.loss_model, run.data.test, run.training, run.data.max_row_tokens,
                         learner.tokenizer.pad_token_id, runtime.precision, runtime.accelerator, learner.copies)
    if loss is not None and (state.best_test_loss is None or loss < state.best_test_loss):
        state.best_test_loss, state.best_step, state.evals_without_improvement = loss, step, 0
        if save_best_copy and (runtime.is_main or runtime.sharded):  # sharded weights are gathered by all
            save_best(run.paths, learner.model, step, loss, is_main=runtime.is_main)
    elif loss is not None:
        state.evals_without_improvement += 1
    # the best copy's writing counts as the evaluation's, not training's
    spent = time.perf_counter() - started
    state.eval_s += spent
    clock.skip(spent)
    return loss


def log_metrics(run: Run, metrics: list[dict], line: dict) -> None:
    """Add a line to the metrics (in memory in every process, `metrics.jsonl` on the main one); after a line
    with a test loss, hand the metrics to the `on_metrics` callback."""
    metrics.append(line)
    if run.runtime.is_main:
        with writing(f"metrics {run.paths.metrics}", checkpoint_note(run.paths)):
            append_jsonl(run.paths.metrics, line)
            if run.on_log is not None:
                run.on_log(line)
            if run.status is not None:
                run.status.write("running", line["step"])
            if "test_loss" in line and run.on_metrics is not None:
                run.on_metrics(run.paths, metrics)


def checkpoint(run: Run, learner: Learner, state: TrainState, clock: Clock) -> None:
    """Save `checkpoints/step-N/` (main process; each process its shards when sharded), with every process's RNG
    state; all processes wait for it."""
    runtime = run.runtime
    state.elapsed_s = clock.elapsed()
    rng_states = [rng_state()] if runtime.world == 1 else gather_objects(rng_state())
    if runtime.is_main or runtime.sharded:
        save_checkpoint(run.paths, state.step, learner.model, learner.optimizer, state, rng_states,
                        run.training.keep_checkpoints, fingerprint=run.fingerprint, is_main=runtime.is_main)
    runtime.accelerator.wait_for_everyone()


# ----------------------------------------------------------------------------------------------------------------
# finish


def finish(run: Run, learner: Learner, state: TrainState, clock: Clock, metrics: list[dict], stopped_early: bool,
           model_cfg: ModelConfig, template: TemplateConfig) -> TrainResult:
    """Final test loss, the best weights back in the model, the model and `train_summary.json` saved."""
    paths, runtime, training = run.paths, run.runtime, run.training
    final_test_loss = final_evaluation(run, learner, state, clock, metrics)
    model_step = keep_best_weights(run, learner.model, state)
    unwrap_after_training(learner, model_cfg)
    summary = train_summary(training, runtime.precision, runtime.world, run.plan, state, clock.elapsed(),
                            stopped_early, model_step, final_test_loss, sharded=runtime.sharded)
    if state.budget is not None:
        summary["time_budget"] = state.budget
    if learner.prefix_cache is not None:
        summary["frozen_layer_cache"] = learner.prefix_cache.summary()
    # sharded: gathered once into a plain model on the main process, saved as an unsharded run saves its own
    model = gathered_model(learner, model_cfg, training, runtime) if runtime.sharded else learner.model
    merged_dir = None
    if runtime.is_main:
        with writing(f"the model to {paths.model}", checkpoint_note(paths)):
            if run.on_metrics is not None:
                run.on_metrics(paths, metrics)
            model, merged_dir = save_model(paths, model, learner.tokenizer,
                                           run_info(model_cfg, training, template, run.data.manifest),
                                           merge=training.merge_lora and training.method != "full")
            atomic_write_json(paths.train_summary, summary)
    runtime.accelerator.wait_for_everyone()
    return TrainResult(paths.model, merged_dir, state.step, state.train_loss, final_test_loss,
                       state.best_test_loss, summary, model.eval() if model is not None else None)


def final_evaluation(run: Run, learner: Learner, state: TrainState, clock: Clock, metrics: list[dict]) -> float | None:
    """The test loss of the final weights, evaluated now unless the last metrics line has it already (early stop,
    or a run resumed after its end); a new evaluation is logged as a line of its own."""
    final_step = state.step
    if metrics and metrics[-1]["step"] == final_step and "test_loss" in metrics[-1]:
        return metrics[-1]["test_loss"]
    if not run.data.test:
        return None
    # the weights in memory are the ones saved at the end: no best copy needed
    loss = evaluate(run, learner, state, clock, final_step, save_best_copy=False)
    if loss is not None:
        metrics.append({"step": final_step, "epoch": run.plan.epochs(final_step), "test_loss": loss})
        if run.runtime.is_main:
            with writing(f"metrics {run.paths.metrics}", checkpoint_note(run.paths)):
                append_jsonl(run.paths.metrics, metrics[-1])
                if run.on_log is not None:
                    run.on_log(metrics[-1])
    return loss


def keep_best_weights(run: Run, model, state: TrainState) -> int:
    """Load the best test loss's weights when they are not the final ones; returns the step of the weights kept.

    A `checkpoints/best` that is not of the best step (the final weights are the best) is stale and removed.
    """
    final_step = state.step
    best = best_checkpoint(run.paths, state.best_step) if state.best_step not in (None, final_step) else None
    if best is not None:
        load_trainable_state(model, best)
        return state.best_step
    if run.runtime.is_main:
        drop_best(run.paths)
    return final_step
