"""The run report: one self-contained HTML file of sections, from results files only.

Everything here reads what other stages wrote into the run folder: `config.yaml`, `data_stats.json`,
`prepared/` (manifest and token lengths), `metrics.jsonl`, `train_summary.json`, `eval/metrics.json`,
`eval/predictions.jsonl`, `eval/mc-*.json`. A missing file shows as "not computed", never as a failure, so the
report can be built at any point of a run. Charts are matplotlib PNGs (Agg) inlined as base64 `data:` URIs and
the styles are inline too: the file opens offline, from anywhere, and fetches nothing. Every piece of text
from the data is HTML-escaped. The charts are `report.charts`, the reading of the files `report.results`; the
terminal's runs table is `report.runs_table`.

Never imports torch: a report must be cheap to rebuild.
"""

from __future__ import annotations

import base64
import difflib
import html
import time
from pathlib import Path
from typing import Iterable, Sequence

import yaml

from tunesmith.report.charts import error_chart, length_chart, loss_chart, metric_charts
from tunesmith.report.results import (GRADES, METRIC_LABELS, UNKNOWN, fmt, ordered_models, read_config, read_json,
                                      token_lengths)
from tunesmith.runs import RunPaths, atomic_write_text, read_jsonl

__all__ = ["Markup", "build_report", "esc", "render_report", "table", "word_diff"]

WORST_SHOWN = 20
"""Examples in the "worst examples" section (all of them are in the last section)."""
WORST_BY = ("key_fact_recall", "rouge_l")
"""What "worst" means: the fewest key facts (ROUGE-L would rank right answers that skip the sign-off lowest);
ROUGE-L for results written before key-fact recall existed. Each example shows both."""
NOT_COMPUTED = '<p class="missing">not computed</p>'


# ---------------------------------------------------------------- HTML pieces

def esc(value) -> str:
    """Text for HTML, quotes included (safe inside attributes too).

    >>> esc('<script>alert("x")</script>')
    '&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;'
    """
    return html.escape("" if value is None else str(value), quote=True)


def table(header: Sequence[str], rows: Iterable[Sequence], cls: str = "") -> str:
    """An HTML table; cells are escaped unless they are already-built HTML (a `Markup`)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c if isinstance(c, Markup) else esc(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f'<table class="{esc(cls)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


class Markup(str):
    """A string that is already safe HTML (built here from escaped parts)."""


def image(png: bytes, alt: str) -> str:
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def word_diff(reference: str, output: str) -> Markup:
    """The output with words that differ from the reference marked: `<ins>` added, `<del>` missing.

    >>> str(word_diff("the cat sat", "the dog sat"))
    'the <del>cat</del> <ins>dog</ins> sat'
    """
    ref, out = reference.split(), output.split()
    parts = []
    for op, a0, a1, b0, b1 in difflib.SequenceMatcher(a=ref, b=out, autojunk=False).get_opcodes():
        if op == "equal":
            parts.append(esc(" ".join(out[b0:b1])))
            continue
        if a1 > a0:
            parts.append(f"<del>{esc(' '.join(ref[a0:a1]))}</del>")
        if b1 > b0:
            parts.append(f"<ins>{esc(' '.join(out[b0:b1]))}</ins>")
    return Markup(" ".join(parts) if parts else '<span class="missing">(empty)</span>')


def section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{body}</section>'


# ---------------------------------------------------------------- sections

def config_section(config: dict) -> str:
    if not config:
        return section("config", "Configuration", NOT_COMPUTED)
    text = yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
    return section("config", "Configuration", f'<pre class="config">{esc(text)}</pre>')


def data_section(stats: dict | None, manifest: dict | None, lengths: Sequence[int]) -> str:
    parts = []
    if manifest:
        counts = manifest.get("counts", {})
        parts.append(table(["records", "train", "test", "truncated", "dropped", "shape", "template", "max_length"],
                           [[fmt(counts.get("records")), fmt(counts.get("train")), fmt(counts.get("test")),
                             fmt(counts.get("truncated")), fmt(counts.get("dropped")), manifest.get("shape"),
                             manifest.get("template"), fmt(manifest.get("max_length"))]]))
        sources = manifest.get("sources") or []
        if len(sources) > 1:  # data.sources: what each file gave the mixed training set
            lengths_by_path = {s.get("path"): s.get("lengths") or {} for s in (stats or {}).get("sources") or []}
            parts.append("<h3>Sources</h3>" + table(
                ["file", "weight", "records", "train", "share of train", "test", "mean tokens"],
                [[s.get("path"), fmt(s.get("weight")), fmt(s.get("records")), fmt(s.get("train")),
                  percent(s.get("share")), fmt(s.get("test")),
                  fmt((lengths_by_path.get(s.get("path"), {}).get("total") or {}).get("mean"))] for s in sources]))
    if stats:
        lengths_table = stats.get("lengths") or {}
        parts.append("<h3>Token lengths</h3>" + table(
            ["part", "min", "median", "p95", "p99", "max", "mean"],
            [[part] + [fmt(s.get(k)) for k in ("min", "median", "p95", "p99", "max", "mean")]
             for part, s in lengths_table.items() if isinstance(s, dict)]))
        dup = stats.get("duplicates") or {}
        parts.append(table(["records", "exact duplicates", "near duplicates", "prompts with conflicting answers",
                            "records with baked-in templates"],
                           [[fmt(stats.get("num_records")), fmt(dup.get("exact")), fmt(dup.get("near")),
                             fmt(dup.get("conflicting_prompts")),
                             fmt((stats.get("baked_templates") or {}).get("records"))]]))
    chart = length_chart(lengths, (manifest or {}).get("max_length"))
    if chart:
        parts.append("<h3>Length histogram</h3>" + image(chart, "histogram of token lengths"))
    return section("data", "Data", "".join(parts) or NOT_COMPUTED)


def training_section(metrics: Sequence[dict], summary: dict | None) -> str:
    parts = []
    if summary:
        keys = ["method", "steps", "epochs", "learning_rate", "precision", "time_s", "tokens_per_s",
                "final_train_loss", "final_test_loss", "best_test_loss", "best_step", "stopped_early"]
        parts.append(table(["train_summary.json", ""], [[k, fmt(summary[k], 4)] for k in keys if k in summary]))
    chart = loss_chart(metrics)
    if chart:
        parts.append("<h3>Loss curves</h3>" + image(chart, "train and test loss"))
    return section("training", "Training", "".join(parts) or NOT_COMPUTED)


def percent(share) -> str:
    """A share 0-1 as a percentage for tables.

    >>> percent(0.25), percent(None)
    ('25.0%', '-')
    """
    return "-" if share is None else f"{100 * share:.1f}%"


def interval(stats: dict) -> Markup:
    return Markup(f'{esc(fmt(stats.get("mean")))} <span class="ci">[{esc(fmt(stats.get("low")))}, '
                  f'{esc(fmt(stats.get("high")))}]</span>')


def metrics_section(eval_metrics: dict | None) -> str:
    models = (eval_metrics or {}).get("models") or {}
    if not models:
        return section("metrics", "Metrics: base vs finetuned", NOT_COMPUTED)
    labels = ordered_models(models)
    scores = [[METRIC_LABELS[n]] + [interval(models[m].get("metrics", {}).get(n, {})) for m in labels]
              for n in METRIC_LABELS]
    # key-fact recall (METRIC_LABELS' first) leads: the loss and the wording metrics rise with the style alone
    rows = scores[:1] + [["test loss"] + [fmt(models[m].get("loss"), 4) for m in labels],
                         ["perplexity"] + [fmt(models[m].get("perplexity")) for m in labels]] + scores[1:]
    rows += [[f"corpus {k}"] + [fmt(models[m].get("corpus", {}).get(k)) for m in labels] for k in ("bleu", "chrf")]
    if any("judge" in models[m] for m in labels):
        rows += [[f"judged {grade} %"] + [percent(models[m].get("judge", {}).get(grade)) for m in labels]
                 for grade in GRADES]
    normalization, key_facts = eval_metrics.get("normalization"), eval_metrics.get("key_fact_recall")
    explained = (f" Key-fact recall is the {esc(key_facts)}: wording every answer shares (a sign-off) lifts ROUGE-L "
                 f"and BLEU but not it." if key_facts else "")
    judge = (eval_metrics.get("judge") or {}).get("name")
    judged = (f" Judged: each answer graded correct / partly / wrong against its reference by {esc(judge)} "
              f"(unknown: no usable verdict)." if judge else "")
    note = (f'<p class="note">{esc(eval_metrics.get("n"))} test examples from {esc(eval_metrics.get("source"))}. '
            f'Means over examples on a 0-100 scale with bootstrap 95% intervals in brackets.{explained}'
            f'{f" {esc(normalization)}." if normalization else ""}{judged}</p>')
    chart = metric_charts(models)
    body = note + table(["metric"] + labels, rows, "metrics") + (image(chart, "bar chart per metric") if chart else "")
    return section("metrics", "Metrics: base vs finetuned", body)


def errors_section(eval_metrics: dict | None) -> str:
    models = (eval_metrics or {}).get("models") or {}
    if not models:
        return section("errors", "Error categories", NOT_COMPUTED)
    labels = ordered_models(models)
    names = {"empty": "empty answer", "length": "hit max_new_tokens without ending",
             "repetitive": f"repetitive ({eval_metrics['repetitive']})" if eval_metrics.get("repetitive")
             else "repetitive"}
    rows = [[names.get(c, c)] + [f"{100 * models[m].get('errors', {}).get(c, 0.0):.1f}%" for m in labels]
            for c in names]
    chart = error_chart(models)
    return section("errors", "Error categories",
                   table(["category"] + labels, rows) + (image(chart, "error categories") if chart else ""))


def _example_rows(predictions: Sequence[dict], labels: Sequence[str]) -> list[list]:
    rows = []
    for p in predictions:
        key_words = p.get("key_words")
        keys = f'<div class="score">key words: {esc(", ".join(key_words))}</div>' if key_words else ""
        cells = [fmt(p.get("index")), Markup(f'<pre class="prompt">{esc(p.get("prompt"))}</pre>'),
                 Markup(f'<div class="text">{esc(p.get("reference"))}</div>{keys}')]
        for label in labels:
            answer = p.get(label) or {}
            scores = answer.get("metrics", {})
            shown = " · ".join(f"{METRIC_LABELS[n]} {esc(fmt(scores[n]))}" for n in WORST_BY if n in scores)
            cells.append(Markup(f'<div class="text">{word_diff(p.get("reference") or "", answer.get("output") or "")}'
                                f'</div><div class="score">{shown or "-"}</div>{verdict(answer.get("judge"))}'))
        rows.append(cells)
    return rows


def verdict(judged: dict | None) -> str:
    """The judge's grade of one answer and its reason (for `unknown`, the raw reply or failure), or nothing.

    >>> verdict({"grade": "partly", "reason": "right price, <wrong> size"})
    '<div class="judge grade-partly">judge: <b>partly</b> · right price, &lt;wrong&gt; size</div>'
    """
    if not judged:
        return ""
    grade, reason, raw = judged.get("grade", UNKNOWN), judged.get("reason", ""), judged.get("raw", "")
    detail = f" · {esc(reason)}" if reason else ""
    detail += f' <span class="raw">({esc(raw)})</span>' if raw else ""
    return f'<div class="judge grade-{esc(grade)}">judge: <b>{esc(grade)}</b>{detail}</div>'


def worst_metric(predictions: Sequence[dict], label: str) -> str:
    """What the worst examples are sorted by: key-fact recall, or ROUGE-L for results written before it existed.

    >>> worst_metric([{"finetuned": {"metrics": {"rouge_l": 50.0}}}], "finetuned")
    'rouge_l'
    """
    return next((n for n in WORST_BY if any(n in ((p.get(label) or {}).get("metrics") or {}) for p in predictions)),
                WORST_BY[0])


def examples_sections(predictions: Sequence[dict], eval_metrics: dict | None) -> str:
    labels = ordered_models((eval_metrics or {}).get("models") or {})
    if not predictions or not labels:
        return (section("worst", f"The {WORST_SHOWN} worst examples by {METRIC_LABELS[WORST_BY[0]]}", NOT_COMPUTED)
                + section("examples", "Every test example", NOT_COMPUTED))
    header = ["#", "prompt", "reference"] + [f"{label} (differences from the reference)" for label in labels]
    judged = labels[-1]
    by = worst_metric(predictions, judged)

    def badness(p: dict) -> tuple:
        scores = (p.get(judged) or {}).get("metrics") or {}
        return scores.get(by, 0.0), scores.get("rouge_l", 0.0), p.get("index", 0)  # ties: the least alike first

    worst = sorted(predictions, key=badness)[:WORST_SHOWN]
    legend = '<p class="note"><ins>added</ins> words are not in the reference; <del>missing</del> ones are.</p>'
    return (section("worst", f"The {WORST_SHOWN} worst examples by {METRIC_LABELS[by]} ({judged})",
                    legend + table(header, _example_rows(worst, labels), "examples"))
            + section("examples", "Every test example",
                      legend + table(header, _example_rows(predictions, labels), "examples")))


LEARNED = ("key_fact_recall", "exact_match_normalized", "token_f1", "rouge_l")
"""The test metrics the learned/kept panel shows: the facts first, the wording after."""


def is_compared(result: dict) -> bool:
    """A multiple-choice result with both base and finetuned scores: it belongs in the learned/kept panel."""
    return {"base", "finetuned"} <= set(result.get("models") or {})


def change(before, after, digits: int = 2, lower_is_better: bool = False) -> Markup:
    """after - before, signed and coloured by whether it is a gain (green) or a loss (red).

    >>> str(change(50.0, 47.5))
    '<span class="down">-2.50</span>'
    """
    if before is None or after is None:
        return Markup("-")
    delta = after - before
    better = delta < 0 if lower_is_better else delta > 0
    cls = "same" if delta == 0 else "up" if better else "down"
    return Markup(f'<span class="{cls}">{delta:+.{digits}f}</span>')


def learned_rows(models: dict) -> list[list]:
    """Test-set rows of the panel: key metrics, test loss and the judge's correct share, base -> finetuned."""
    base, tuned = models.get("base") or {}, models.get("finetuned") or {}
    rows = []
    for name in LEARNED:
        before, after = ((m.get("metrics", {}).get(name) or {}).get("mean") for m in (base, tuned))
        if after is not None:
            rows.append([METRIC_LABELS[name], fmt(before), fmt(after), change(before, after)])
    rows.append(["test loss", fmt(base.get("loss"), 4), fmt(tuned.get("loss"), 4),
                 change(base.get("loss"), tuned.get("loss"), 4, lower_is_better=True)])
    if "judge" in tuned:
        before, after = ((m.get("judge") or {}).get("correct") for m in (base, tuned))
        scaled = [None if v is None else 100 * v for v in (before, after)]
        rows.append(["judged correct %", percent(before), percent(after), change(*scaled, digits=1)])
    return rows


def kept_rows(results: Sequence[dict]) -> list[list]:
    """Benchmark rows of the panel: acc and acc_norm base -> finetuned, the change with its paired interval."""
    rows = []
    for result in results:
        models, name = result["models"], Path(str(result.get("source", ""))).name
        for metric in ("acc", "acc_norm"):
            before, after = (models[m].get(metric, {}).get("mean") for m in ("base", "finetuned"))
            delta = (result.get("change") or {}).get(metric) or {}
            ci = (f' <span class="ci">[{delta["low"]:+.3f}, {delta["high"]:+.3f}]</span>'
                  if "low" in delta else "")
            rows.append([f"{name} ({fmt(result.get('n'))} q)", metric, fmt(before, 3), fmt(after, 3),
                         Markup(change(before, after, 3) + ci)])
    return rows


def learned_kept_section(eval_metrics: dict | None, choices: Sequence[dict]) -> str:
    """What the finetune learned (the test set) beside what it kept (benchmarks the base model knew), base ->
    finetuned: gains on the test set bought by losses everywhere else show here at a glance."""
    models = (eval_metrics or {}).get("models") or {}
    compared = [r for r in choices if is_compared(r)]
    if not ({"base", "finetuned"} <= set(models) or compared):
        return ""
    learned = (table(["metric", "base", "finetuned", "change"], learned_rows(models))
               if {"base", "finetuned"} <= set(models) else NOT_COMPUTED)
    kept = (table(["benchmark", "metric", "base", "finetuned", "change [95%]"], kept_rows(compared)) if compared
            else '<p class="missing">no benchmark scored for both models: list multiple-choice files in '
                 'eval.benchmarks</p>')
    note = ('<p class="note">Learned: test-set means, 0-100 (test loss: lower is better). Kept: multiple-choice '
            'accuracy, 0-1, scored as lm-evaluation-harness does; the change\'s paired bootstrap 95% interval in '
            'brackets: one that holds 0 means no measurable forgetting.</p>')
    body = (f'<div class="panel"><div><h3>Learned: held-out test questions</h3>{learned}</div>'
            f'<div><h3>Kept: benchmarks</h3>{kept}</div></div>{note}')
    return section("learned-kept", "Learned and kept: base vs finetuned", body)


def choices_section(results: Sequence[dict]) -> str:
    rows = []
    for result in results:
        for label in ordered_models(result.get("models") or {}):
            model = result["models"][label]
            rows.append([Path(str(result.get("source", ""))).name, label, fmt(result.get("n")),
                         interval(model.get("acc", {})), interval(model.get("acc_norm", {}))])
    if not rows:
        return ""
    return section("choices", "Multiple choice (lm-evaluation-harness scoring)",
                   table(["benchmark", "model", "questions", "acc", "acc_norm"], rows))


STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1400px;padding:1rem 2rem;
color:#222;background:#fff}
h1{margin-bottom:.2rem}h2{border-bottom:2px solid #2a4d8f;padding-bottom:.2rem;margin-top:2.5rem}
nav a{margin-right:1rem}table{border-collapse:collapse;margin:.8rem 0;font-size:.9rem}
th,td{border:1px solid #ccc;padding:.3rem .5rem;text-align:left;vertical-align:top}th{background:#eef2f8}
table.examples td{max-width:28rem}pre{white-space:pre-wrap;word-break:break-word;background:#f6f6f6;padding:.5rem}
pre.prompt{max-height:10rem;overflow:auto;font-size:.8rem;margin:0}.text{white-space:pre-wrap}
ins{background:#d4f7d4;text-decoration:none}del{background:#fbd5d5}.ci{color:#666;font-size:.85em}
.score{color:#666;font-size:.8em;margin-top:.3rem}.missing{color:#999;font-style:italic}.note{color:#555}
img{max-width:100%;display:block;margin:.5rem 0}pre.config{columns:3 22rem;font-size:.85rem}
.panel{display:flex;flex-wrap:wrap;gap:2.5rem}.panel h3{margin-bottom:0}.up{color:#17702b}.down{color:#b42318}
.judge{font-size:.8em;margin-top:.2rem}.grade-correct b{color:#17702b}.grade-partly b{color:#a15c00}
.grade-wrong b{color:#b42318}.grade-unknown b{color:#666}.raw{color:#888}
"""


def render_report(paths: RunPaths) -> str:
    """The whole report of a run folder as one HTML string."""
    config = read_config(paths)
    eval_metrics = read_json(paths.eval_dir / "metrics.json")
    predictions = read_jsonl(paths.eval_dir / "predictions.jsonl")
    choices = [r for r in (read_json(p) for p in sorted(paths.eval_dir.glob("mc-*.json"))) if r]
    panel = learned_kept_section(eval_metrics, choices)
    listed = [r for r in choices if not is_compared(r)]  # the others are in the panel
    sections = [
        panel,
        config_section(config),
        data_section(read_json(paths.data_stats), read_json(paths.manifest), token_lengths(paths)),
        training_section(read_jsonl(paths.metrics), read_json(paths.train_summary)),
        metrics_section(eval_metrics),
        errors_section(eval_metrics),
        choices_section(listed),
        examples_sections(predictions, eval_metrics),
    ]
    links = ([("learned-kept", "Learned and kept")] if panel else []) + [
        ("config", "Configuration"), ("data", "Data"), ("training", "Training"), ("metrics", "Metrics"),
        ("errors", "Errors")] + ([("choices", "Multiple choice")] if listed else []) + [
        ("worst", "Worst examples"), ("examples", "All examples")]
    nav = "".join(f'<a href="#{a}">{esc(t)}</a>' for a, t in links)
    name = esc(paths.root.name)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>tunesmith report: {name}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>'
            f'<body><h1>tunesmith report: {name}</h1><p class="note">built {esc(time.strftime("%Y-%m-%d %H:%M"))}'
            f' from the files in {esc(paths.root)}</p><nav>{nav}</nav>{"".join(sections)}</body></html>\n')


def build_report(paths: RunPaths, out: str | Path | None = None) -> Path:
    """Write the report (atomically) to `out` or `<run>/report.html`; returns where it went."""
    return atomic_write_text(Path(out) if out else paths.report, render_report(paths))

