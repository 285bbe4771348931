"""`data inspect`: what a data file would look like to training, before a run folder exists.

It lives in prepare, not data, because token lengths need the model's tokenizer and the template; it measures
them with `tokenize_for_model`, the same step the prepare pipeline runs, so the truncation it predicts at the
resolved `max_length` is the truncation `prepare` would apply. The statistics themselves are numbers from
`tunesmith.data.stats`; drawing the histogram is left to the caller (`report.charts.length_chart`), so this stage
never plots.
"""

from __future__ import annotations

from tunesmith.config import DataConfig, ModelConfig, TemplateConfig, TokenizationConfig
from tunesmith.data import load_records
from tunesmith.data.stats import DataInspection, compute_stats

__all__ = ["inspect_data"]


def inspect_data(path: str, data: DataConfig, model: ModelConfig, template: TemplateConfig,
                 tokenization: TokenizationConfig) -> DataInspection:
    """Load a data file and describe it: shape, token lengths with the model's tokenizer and template,
    truncation at max_length, duplicates, baked-in templates; `total_lengths` feeds the histogram.

    Raises:
        DataError: the file is unreadable or (with `on_error: fail`) has invalid records, all listed.
        ModelError: the tokenizer cannot be loaded.
    """
    from tunesmith.prepare.tokenization import tokenize_for_model

    loaded = load_records(path, data)
    measured = tokenize_for_model(loaded.records, model, template, tokenization)
    lengths = measured.lengths
    source = (f"given (tokenization.max_length={tokenization.max_length})" if tokenization.max_length != "auto"
              else f"auto: p99 of total lengths, capped by the model's context of {measured.model_context}")
    stats = compute_stats(loaded.records, lengths, measured.max_length, tokenization.truncation_side)
    return DataInspection(file=loaded.file, shape=loaded.shape, reason=loaded.reason,
                          skipped=[str(p) for p in loaded.skipped], model=model.name, template=measured.template,
                          max_length_source=source, stats=stats, total_lengths=[p + r for p, r in lengths])
