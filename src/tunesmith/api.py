"""The Python API: one function per user action; the CLI (and the `Tuner` facade, tuner.py) call only these.

Each function resolves the config once and hands each stage only its own section.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from tunesmith.config import (ChatConfig, Config, DataConfig, ExportConfig, FromDocsConfig, GenerateConfig,
                                  JudgeConfig, ModelConfig, SelfInstructConfig, ServeConfig, TeacherConfig,
                                  TemplateConfig, TokenizationConfig)
    from tunesmith.data.stats import DataInspection
    from tunesmith.datagen.output import DatagenSummary
    from tunesmith.use.chat import ChatSession
    from tunesmith.use.export import ExportResult
    from tunesmith.use.serve import Server
    from tunesmith.prepare.pipeline import PrepareResult
    from tunesmith.train.loop import TrainResult


def show_config(config_path: str | None = None, overrides: list[str] | None = None) -> str:
    """The resolved config (file + overrides + defaults for every other key) as YAML.

    Raises:
        ConfigError: the file or an override is invalid.
    """
    from tunesmith.config import config_to_yaml, load_config

    return config_to_yaml(load_config(config_path, overrides))


def prepare_data(config_path: str | None = None, overrides: list[str] | None = None) -> PrepareResult:
    """Tokenize the configured data into the run folder's train/test splits (reused when inputs are unchanged).

    Raises:
        ConfigError: the config is invalid or has no data path.
        DataError: the data is invalid (every problem listed).
    """
    from tunesmith.config import load_config

    return _prepare(load_config(config_path, overrides))


def _prepare(config: Config, on_prepared: Callable[[PrepareResult], None] | None = None,
             fresh_start: bool = False) -> PrepareResult:
    """The config's run folder, created, with its data prepared: the one place the api hands prepare its sections.

    The data paths are checked before the folder is made, so a mistyped path leaves no empty run behind.
    `on_prepared` sees the result before anything else runs, so a command can show its warnings (skipped records,
    a stripped template: `PrepareResult.notes()`) before a long training starts. `fresh_start` (training without
    --resume follows) lets new data replace the run's checkpoints instead of being refused under them.
    """
    from tunesmith.prepare.pipeline import check_data_paths, prepare
    from tunesmith.runs import create_run

    check_data_paths(config.data)
    prepared = prepare(create_run(config), config.model, config.data, config.template, config.tokenization,
                       config.split, fresh_start=fresh_start)
    if on_prepared is not None:
        on_prepared(prepared)
    return prepared


def evaluate_run(target: str, model: str | None = None, data: str | None = None, limit: int | None = None,
                 mc: str | None = None, max_new_tokens: int | None = None, out: str | None = None,
                 precision: str | None = None, progress: bool = True, judge_url: str | None = None,
                 judge_model: str | None = None, benchmarks: list[str] | None = None) -> dict:
    """Evaluate a run (base and/or finetuned) or a plain model; returns what `eval/metrics.json` holds, plus
    `benchmarks` (the multiple-choice files of `eval.benchmarks`, or `benchmarks` when given, scored too).

    A run folder's results go to `<run>/eval/` (test split), `<run>/eval/data-<stem>/` (`data`) or
    `<run>/eval/mc-<stem>.json` (`mc`); a plain model's only to `out` when given. The models run in `precision`
    when given, else in the run's `training.precision`. A judge (`judge_url`, else the run's `eval.judge`)
    grades every answer; its verdicts are cached in `<run>/eval/judge_cache.jsonl` (or under TUNESMITH_HOME).

    Raises:
        RunError: no model or nothing to evaluate on; DataError: an invalid data or multiple-choice file;
        ConfigError: a judge URL that is not one, or an endpoint that lists no model.
    """
    from tunesmith.config import Config
    from tunesmith.evaluate import run as evaluation
    from tunesmith.runs import is_run_folder, locate_model, open_run, tunesmith_home

    _, info = locate_model(target)
    paths, config = open_run(target) if is_run_folder(target) else (None, Config())
    labels = evaluation.model_labels(model, is_trained=info is not None, compare_base=config.eval.compare_base)
    overrides = {"limit": limit, "max_new_tokens": max_new_tokens, "benchmarks": benchmarks,
                 "judge": _judge_config(config.eval.judge, judge_url, judge_model)}
    eval_config = config.eval.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    precision = precision or config.training.precision
    if mc is not None:
        out_file = Path(out) if out else (paths.eval_dir / f"mc-{Path(mc).stem}.json" if paths else None)
        return evaluation.evaluate_choices(target, labels, mc, eval_config, precision=precision, out_file=out_file,
                                           progress=progress)
    out_dir = Path(out) if out else None
    if out_dir is None and paths is not None:
        out_dir = paths.eval_dir if data is None else paths.eval_dir / f"data-{Path(data).stem}"
    judge_cache = (paths.eval_dir if paths else tunesmith_home()) / "judge_cache.jsonl"
    with _judge(eval_config.judge) as judge:  # an unreachable judge fails here, before any model is loaded
        return evaluation.evaluate(target, labels, eval_config, paths=paths, data=data, data_config=config.data,
                                   tokenization=config.tokenization, precision=precision, out_dir=out_dir,
                                   judge=judge, judge_cache=judge_cache, progress=progress)


def _judge_config(configured: JudgeConfig | None, url: str | None, model: str | None) -> JudgeConfig | None:
    """The judge of `eval.judge`, with `--judge-url` / `--judge-model` given on the command line taking over.

    Raises:
        ConfigError: `--judge-model` without any judge URL, or a URL that is not one.
    """
    from tunesmith.config import JudgeConfig, validate_section
    from tunesmith.errors import ConfigError

    if url is None and model is None:
        return configured
    if url is None and configured is None:
        raise ConfigError("--judge-model names the judge's model; give its endpoint with --judge-url URL too")
    given = {**(configured.model_dump() if configured else {}), **({"url": url} if url else {}),
             **({"model": model} if model else {})}
    return validate_section(JudgeConfig, given, "--judge-url")


@contextlib.contextmanager
def _judge(config: JudgeConfig | None):
    """The judge's client, or None: datagen's HTTP teacher (retries, timeouts, bounded answers) at temperature 0,
    so the same answer gets the same grade."""
    if config is None:
        yield None
        return
    from tunesmith.config import TeacherConfig

    with _teacher(TeacherConfig(**config.model_dump(), temperature=0.0)) as judge:
        yield judge


def generate_self_instruct(seeds: str, out: str, teacher: TeacherConfig, options: SelfInstructConfig,
                           progress: bool = True) -> DatagenSummary:
    """Grow `out` to `options.num_examples` alpaca records written by a teacher LLM from seed tasks (resumable).

    Raises:
        DataError: unreadable seeds or an `out` file this generator did not write.
        ConfigError: the teacher rejects the URL, key or model.
    """
    from tunesmith.datagen.self_instruct import self_instruct

    with _teacher(teacher) as t:
        return self_instruct(seeds, out, t, options, progress=progress)


def generate_qa_from_docs(docs: str, out: str, teacher: TeacherConfig, options: FromDocsConfig,
                          progress: bool = True) -> DatagenSummary:
    """Question/answer pairs written by a teacher LLM from every chunk of the documents under `docs` (resumable).

    Raises:
        DataError: no readable documents or an `out` file this generator did not write.
        ConfigError: the teacher rejects the URL, key or model.
    """
    from tunesmith.datagen.from_docs import qa_from_docs

    with _teacher(teacher) as t:
        return qa_from_docs(docs, out, t, options, progress=progress)


@contextlib.contextmanager
def _teacher(config: TeacherConfig):
    """The teacher a config names, its API key read here from the environment variable the config names."""
    from tunesmith.datagen.teachers import build_teacher

    teacher = build_teacher(config, api_key=os.environ.get(config.key_env) or None)
    try:
        yield teacher
    finally:
        teacher.close()


def generate_answers(target: str, prompts: list[str] | None = None, input_path: str | None = None,
                     output_path: str | None = None, settings: GenerateConfig | None = None,
                     which: str = "finetuned", progress: bool = True) -> list[dict]:
    """Answer prompts (given as text, or as a JSONL file) with a run's model and its template, batched.

    Each result row is the input row plus `output`, `finish_reason`, `prompt_tokens`, `completion_tokens`;
    with `output_path` they are also written there as JSONL (atomically).

    Raises:
        DataError: a bad prompts file; RunError/ModelError: the run or model cannot be loaded.
    """
    from tunesmith.config import GenerateConfig
    from tunesmith.data.prompts import as_prompt_record, read_prompts
    from tunesmith.runs import atomic_write_text
    from tunesmith.use.generation import GenerationOptions, load_for_inference

    settings = settings or GenerateConfig()
    rows = [({"prompt": p}, as_prompt_record(p)) for p in prompts or []]
    if input_path is not None:
        rows += read_prompts(input_path)
    generator = load_for_inference(target, which=which, precision=settings.precision)
    rendered = [generator.render(record) for _, record in rows]
    batch_size = settings.batch_size
    generations = generator.generate(rendered, GenerationOptions.from_config(settings), batch_size=batch_size,
                                     progress=progress and len(rows) > batch_size)
    results = [{**row, "output": g.text, "finish_reason": g.finish_reason, "prompt_tokens": g.num_prompt_tokens,
                "completion_tokens": g.num_tokens} for (row, _), g in zip(rows, generations)]
    if output_path is not None:
        atomic_write_text(output_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in results))
    return results


def open_chat(target: str, settings: ChatConfig | None = None, system: str | None = None,
              which: str = "finetuned") -> ChatSession:
    """A conversation with a run's model (or any model), ready for `ask`; the terminal loop is the CLI's.

    Raises:
        RunError/ModelError: the run or model cannot be loaded.
    """
    from tunesmith.config import ChatConfig
    from tunesmith.use.chat import ChatSession
    from tunesmith.use.generation import GenerationOptions, load_for_inference

    settings = settings or ChatConfig()
    generator = load_for_inference(target, which=which, precision=settings.precision)
    return ChatSession(generator, GenerationOptions.from_config(settings), system)


def open_server(target: str, limits: ServeConfig | None = None, api_key: str | None = None,
                which: str = "finetuned") -> Server:
    """A run's model behind an OpenAI-compatible HTTP API, loaded and ready: `.run()` serves until interrupted.

    Raises:
        RunError/ModelError: the run or model cannot be loaded.
    """
    from tunesmith.config import ServeConfig
    from tunesmith.use.generation import load_for_inference
    from tunesmith.use.serve import build_server

    limits = limits or ServeConfig()
    return build_server(load_for_inference(target, which=which, precision=limits.precision), limits, api_key)


def build_report(run: str, out: str | None = None) -> Path:
    """Write the run's self-contained HTML report (`<run>/report.html` unless `out`); returns its path.

    Raises:
        RunError: `run` is not a run folder.
    """
    from tunesmith.report.html import build_report as write_report
    from tunesmith.runs import open_run

    paths, _ = open_run(run)
    return write_report(paths, out)


def list_runs(runs_dir: str | None = None) -> tuple[list[str], list[list[str]]]:
    """(header, rows) describing every run under runs_dir (default `output.runs_dir`): data, model, method,
    settings, time, loss, metrics."""
    from tunesmith.config import OutputConfig
    from tunesmith.report.runs_table import find_runs, run_table

    return run_table(find_runs(runs_dir or OutputConfig().runs_dir))


def compare_runs(runs: list[str]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) comparing the given run folders side by side.

    Raises:
        RunError: one of them is not a run folder.
    """
    from tunesmith.report.runs_table import run_table
    from tunesmith.runs import open_run

    return run_table([open_run(run)[0] for run in runs])


def inspect_data(path: str, data: DataConfig | None = None, model: ModelConfig | None = None,
                 template: TemplateConfig | None = None, tokenization: TokenizationConfig | None = None,
                 plot: str | Path | None = None) -> DataInspection:
    """Load a data file and describe it all at once: invalid records grouped by kind (`is_clean` says whether they
    would stop training), the baked-in template stripped as `prepare` would, and of the valid records shape, token
    lengths with the model's tokenizer and template, truncation at max_length, duplicates; optionally a length
    histogram PNG.

    Raises:
        DataError: the file is unreadable, its shape unknown, or no record in it is valid.
        ModelError: the tokenizer cannot be loaded.
    """
    import dataclasses

    from tunesmith.config import DataConfig, ModelConfig, TemplateConfig, TokenizationConfig
    from tunesmith.prepare import inspect
    from tunesmith.report.charts import length_chart
    from tunesmith.runs import atomic_write_bytes

    result = inspect.inspect_data(path, data or DataConfig(), model or ModelConfig(), template or TemplateConfig(),
                                  tokenization or TokenizationConfig())
    if plot is None:
        return result
    cut = result.stats.truncation
    chart = length_chart(result.total_lengths, cut.max_length if cut else None, truncated=False)
    return dataclasses.replace(result, plot=str(atomic_write_bytes(plot, chart)))


def train_config(config: Config, resume: bool = False,
                 on_prepared: Callable[[PrepareResult], None] | None = None) -> tuple[PrepareResult, TrainResult]:
    """Prepare (or reuse) the config's data, then train; the shared core of `train`, `run` and `Tuner.train`.

    Raises:
        ConfigError, DataError, ModelError, TrainingError: what the stages raise, each naming what and where.
    """
    from tunesmith.train.loop import train
    from tunesmith.train.trackers import Trackers, check_installed

    check_installed(config.output.report_to)  # a missing tracker fails now, not after preparing and loading
    is_main = True
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Under accelerate launch / torchrun every process runs this; the first prepares, the others reuse it.
        from tunesmith.train.distributed import process_state

        with process_state().main_process_first():
            prepared = _prepare(config, on_prepared, fresh_start=not resume)
        is_main = process_state().is_main_process
    else:
        prepared = _prepare(config, on_prepared, fresh_start=not resume)
    # only the main process logs to trackers (the loop calls on_log there alone)
    trackers = (Trackers.open(config.output, prepared.paths, config.model_dump(mode="json"), resume=resume)
                if is_main else Trackers({}))
    status = "failed"
    try:
        trained = train(prepared.paths, config.model, config.training, config.template, resume=resume,
                        on_metrics=_write_loss_plot, on_log=trackers.log_line,
                        padding_side=config.tokenization.padding_side)
        trackers.log_summary(trained.summary)
        status = "stopped" if trained.stopped else "finished"
    finally:
        trackers.close(status)
    return prepared, trained


def _write_loss_plot(paths, metrics: list[dict]) -> None:
    """The run's `loss.png` (`paths`: its RunPaths): the report's loss chart (train loss per step, test loss per
    evaluation), replaced atomically; training calls it through `on_metrics`, as train may not import report."""
    from tunesmith.report.charts import loss_chart
    from tunesmith.runs import atomic_write_bytes

    png = loss_chart(metrics)
    if png is not None:
        atomic_write_bytes(paths.loss_plot, png)


def train_run(config_path: str, overrides: list[str] | None = None, resume: bool = False,
              on_prepared: Callable[[PrepareResult], None] | None = None) -> TrainResult:
    """`tunesmith train CONFIG`: prepare (or reuse) the data, then train; `resume` continues the latest checkpoint.

    Resuming without `output.name` continues this config's run, else the newest run of the same data and method
    whose checkpoint was trained with these settings (`max_steps`, `epochs` and the other keys of
    train/fingerprint.py that may change aside).

    Raises:
        ConfigError, DataError, ModelError, RunError, TrainingError: each naming what and where.
    """
    from tunesmith.config import load_config

    config = load_config(config_path, overrides)
    if resume and not config.output.name:
        config = config.model_copy(update={"output": config.output.model_copy(
            update={"name": _latest_resumable_run(config)})})
    return train_config(config, resume=resume, on_prepared=on_prepared)[1]


def _latest_resumable_run(config: Config) -> str:
    """This config's own run folder when its checkpoint fits the config, else the newest `<data>-<method>-*` run
    whose checkpoint does (so `--resume --set training.max_steps=N`, which changes the config and so the run's
    name, still continues the run, and a run of another model, batch size or seed is passed over).

    A checkpoint fits when its fingerprint (train/fingerprint.py) matches in every key the config tells before
    preparing; one without a fingerprint (older tunesmith) fits as before, and training checks it further.

    Raises:
        RunError: no such run has a checkpoint.
        TrainingError: some have, but none fits: the nearest is named with every key that differs.
    """
    from tunesmith.errors import RunError, TrainingError
    from tunesmith.runs import default_run_name
    from tunesmith.train.fingerprint import config_trajectory, differences, latest_fingerprint

    own = default_run_name(config)
    prefix = own.rsplit("-", 1)[0] + "-"
    runs = sorted((p for p in Path(config.output.runs_dir).glob(f"{prefix}*")
                   if (p / "checkpoints" / "latest").is_file()), key=lambda p: (p.name != own, -p.stat().st_mtime))
    if not runs:
        raise RunError(f"--resume: no run {prefix}* with a checkpoint in {config.output.runs_dir}/; "
                       f"name the run to continue with --set output.name=NAME")
    now = config_trajectory(config.model, config.data, config.template, config.tokenization, config.split,
                            config.training, world_size=int(os.environ.get("WORLD_SIZE", "1")))
    differing = {}
    for run in runs:
        saved = latest_fingerprint(run / "checkpoints")
        differing[run.name] = differences(saved["trajectory"], now) if saved else []
        if not differing[run.name]:
            return run.name
    nearest = min(differing, key=lambda name: len(differing[name]))  # ties: the own run, then the newest
    raise TrainingError(f"--resume: no run {prefix}* in {config.output.runs_dir}/ has a checkpoint trained with "
                        f"these settings; the nearest, {nearest}, differs in {'; '.join(differing[nearest])}: "
                        f"restore them, or train without --resume to start a new run")


@dataclass(frozen=True)
class PipelineResult:
    """What `tunesmith run` and `tunesmith demo` print: where things are and whether the finetune helped."""

    run: Path
    model: Path
    report: Path
    test_loss: float | None
    base_test_loss: float | None
    headline_metrics: dict[str, tuple[float | None, float]]
    """Metric name -> (base, finetuned) mean, for the metrics people look at first."""
    metrics: dict


HEADLINE_METRICS = ("key_fact_recall", "rouge_l", "token_f1", "exact_match_normalized")


def run_config(config: Config, resume: bool = False, progress: bool = True,
               on_prepared: Callable[[PrepareResult], None] | None = None) -> PipelineResult:
    """prepare -> train -> evaluate (base and finetuned on the test split) -> report, for one config."""
    prepared, trained = train_config(config, resume=resume, on_prepared=on_prepared)
    run = prepared.paths.root
    if trained.stopped:
        from tunesmith.errors import TrainingError

        raise TrainingError(f"training of {run} was stopped at step {trained.steps} (a checkpoint is written); "
                            f"nothing was evaluated: continue with `tunesmith run CONFIG --resume`")
    metrics = evaluate_run(str(run), progress=progress)
    report_path = build_report(str(run))
    models = metrics.get("models", {})
    tuned, base = models.get("finetuned", {}), models.get("base")
    headline = {name: ((base or {}).get("metrics", {}).get(name, {}).get("mean"),
                       tuned.get("metrics", {}).get(name, {}).get("mean"))
                for name in HEADLINE_METRICS if name in tuned.get("metrics", {})}
    return PipelineResult(run=run, model=trained.model_dir, report=report_path, test_loss=tuned.get("loss"),
                          base_test_loss=base.get("loss") if base else None, headline_metrics=headline,
                          metrics=metrics)


def run_pipeline(config_path: str, overrides: list[str] | None = None, resume: bool = False,
                 on_prepared: Callable[[PrepareResult], None] | None = None) -> PipelineResult:
    """`tunesmith run CONFIG`: the whole pipeline from one config file.

    Raises:
        ConfigError, DataError, ModelError, TrainingError, RunError: each naming what and where.
    """
    from tunesmith.config import load_config

    return run_config(load_config(config_path, overrides), resume=resume, on_prepared=on_prepared)


DEMO_CONFIG = Path(__file__).resolve().parents[2] / "examples" / "demo.yaml"


def demo(overrides: list[str] | None = None) -> PipelineResult:
    """`tunesmith demo`: the shipped example on the embedded default model, end to end.

    Raises:
        RunError: the example files are not there (tunesmith installed without its repository).
    """
    from tunesmith.errors import RunError

    if not DEMO_CONFIG.is_file():
        raise RunError(f"{DEMO_CONFIG}: the demo config ships with the tunesmith repository; run the demo from a "
                       f"clone (`make demo`)")
    return run_pipeline(str(DEMO_CONFIG), overrides)


def export(run: str, out: str, settings: ExportConfig | None = None) -> ExportResult:
    """Export a run's model as a plain Hugging Face folder (LoRA merged on request), optionally with a GGUF file.

    Raises:
        RunError: not a run with a trained model, or `out` would overwrite something that is not an export.
        ModelError: a GGUF export this model's architecture or tokenizer does not support.
    """
    from tunesmith.use.export import export_run

    return export_run(run, out, settings)


def plan_training(config_path: str, overrides: list[str] | None = None, gpus: int = 1, nodes: int = 1,
                  device_memory: int | None = None, device: str = "cuda"):
    """`tunesmith plan CONFIG`: memory per device of every way to train the config (full / LoRA / QLoRA x DDP /
    FSDP, with and without activation checkpointing) on `gpus` x `nodes` devices of `device_memory` bytes, from
    the model's config alone (no weights are loaded); the data's token lengths (and `max_length: auto`) are
    measured as `prepare` would, when the data file is there. `device="cpu"` plans processes on this machine (its memory unless given).

    Raises:
        ConfigError: a bad config, or counts below 1. ModelError: the model's config cannot be read.
        DataError: `max_length: auto` and the data cannot be read.
    """
    from tunesmith.config import load_config
    from tunesmith.errors import ConfigError
    from tunesmith.models import context_length, cpu_has_fast_bf16, load_model_config
    from tunesmith.train.plan import ModelShape, Workload, micro_batch_tokens, plan_memory

    if gpus < 1 or nodes < 1:
        raise ConfigError(f"--gpus {gpus} --nodes {nodes}: both must be >= 1")
    config = load_config(config_path, overrides)
    model_config = load_model_config(config.model)
    max_length, answer_tokens, lengths = config.tokenization.max_length, None, []
    data_path = config.data.path or (config.data.sources[0].path if config.data.sources else None)
    if data_path and Path(data_path).exists():
        inspected = inspect_data(data_path, config.data, config.model, config.template, config.tokenization)
        max_length, lengths = inspected.stats.truncation.max_length, inspected.total_lengths
        answer_tokens = min(inspected.stats.lengths["response"].p99, max_length)
    elif max_length == "auto":
        max_length = context_length(model_config)
    max_length = min(int(max_length), context_length(model_config))
    if config.tokenization.train_on == "all" or answer_tokens is None:
        answer_tokens = max_length
    precision = config.training.precision
    if precision == "auto":
        precision = "bf16" if device == "cuda" or cpu_has_fast_bf16() else "fp32"
    if device_memory is None:
        device_memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if device == "cpu" else 80 * 2 ** 30
    training = config.training
    work = Workload(batch_size=training.batch_size, max_length=max_length, answer_tokens=answer_tokens,
                    precision=precision, device=device, lora_r=training.lora_r,
                    lora_target_modules=training.lora_target_modules, optimizer=training.optimizer,
                    accumulation_steps=training.gradient_accumulation_steps,
                    micro_batch_tokens=micro_batch_tokens(lengths, training.batch_size, max_length))
    return plan_memory(ModelShape.from_config(model_config), work, device_memory, gpus * nodes)
