"""`data inspect`: what a data file would look like to training, before a run folder exists.

It lives in prepare, not data, because token lengths need the model's tokenizer and the template; it measures
them with `tokenize_for_model`, the same step the prepare pipeline runs, so the truncation it predicts at the
resolved `max_length` is the truncation `prepare` would apply. It strips a baked-in template as `prepare` does and
never stops at invalid records: they come back grouped by kind beside the statistics of the valid ones, with what
training would do with them under `data.on_error`. The statistics themselves are numbers from
`tunesmith.data.stats`; drawing the histogram is left to the caller (`report.charts.length_chart`), so this stage
never plots.
"""

from __future__ import annotations

from tunesmith.config import DataConfig, ModelConfig, TemplateConfig, TokenizationConfig
from tunesmith.data.stats import DataInspection, compute_stats
from tunesmith.data.strip import strip_templates
from tunesmith.data.validate import group_problems, on_error_outcome, read_records

__all__ = ["inspect_data"]


def inspect_data(path: str, data: DataConfig, model: ModelConfig, template: TemplateConfig,
                 tokenization: TokenizationConfig) -> DataInspection:
    """Load a data file and describe it all at once: the invalid records grouped by kind (and what training would
    do with them under `data.on_error`), the baked-in template stripped as `prepare` would, and for the valid
    records shape, token lengths with the model's tokenizer and template, truncation at max_length, duplicates;
    `total_lengths` feeds the histogram.

    Invalid records never stop the report (`is_clean` says whether they would stop training).

    Raises:
        DataError: the file is unreadable, its shape unknown, or no record in it is valid.
        ModelError: the tokenizer cannot be loaded.
    """
    from tunesmith.prepare.pipeline import strip_setting
    from tunesmith.prepare.tokenization import tokenize_for_model

    loaded = read_records(path, data)
    records, stripped = strip_templates(loaded.records, strip_setting(data.strip_template, template.name))
    measured = tokenize_for_model(records, model, template, tokenization)
    lengths = measured.lengths
    source = (f"given (tokenization.max_length={tokenization.max_length})" if tokenization.max_length != "auto"
              else f"auto: p99 of total lengths, capped by the model's context of {measured.model_context}")
    stats = compute_stats(records, lengths, measured.max_length, tokenization.truncation_side)
    invalid = len(loaded.skipped)
    return DataInspection(file=loaded.file, shape=loaded.shape, reason=loaded.reason,
                          skipped=[str(p) for p in loaded.skipped], model=model.name, template=measured.template,
                          max_length_source=source, stats=stats, total_lengths=[p + r for p, r in lengths],
                          records_read=loaded.total, invalid=group_problems(loaded.skipped), on_error=data.on_error,
                          invalid_outcome=on_error_outcome(data.on_error, invalid, loaded.total),
                          stripped=stripped)
