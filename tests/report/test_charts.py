"""Every chart is a PNG drawn without a display; missing data gives no chart rather than an empty one."""

from __future__ import annotations

import io

import pytest

from tunesmith.report.charts import error_chart, length_chart, loss_chart, metric_charts

PNG = b"\x89PNG\r\n\x1a\n"


def size(png: bytes) -> tuple[int, int]:
    from PIL import Image

    return Image.open(io.BytesIO(png)).size


class TestLengthChart:
    def test_report_histogram_of_prepared_examples(self):
        png = length_chart([10, 20, 20, 30], 64)
        assert png[:8] == PNG and size(png) == (800, 350)

    def test_inspect_histogram_before_truncation(self, monkeypatch):
        from matplotlib.axes import Axes

        labels, draw_line = [], Axes.axvline

        def recording_axvline(axes, *args, **kwargs):
            labels.append(kwargs["label"])
            return draw_line(axes, *args, **kwargs)

        monkeypatch.setattr(Axes, "axvline", recording_axvline)
        png = length_chart([10, 20, 20, 30, 400], 64, truncated=False)
        assert png[:8] == PNG and size(png) == (700, 400)
        assert labels == ["max_length = 64 (1 of 5 longer)"]  # how many truncation would cut

    def test_no_lengths_no_chart(self):
        assert length_chart([], 64) is None


def test_loss_chart():
    assert loss_chart([{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5, "test_loss": 1.7}])[:8] == PNG
    assert loss_chart([{"step": 1, "lr": 1e-4}]) is None


@pytest.mark.parametrize("draw", [metric_charts, error_chart])
def test_model_charts_draw_each_model_and_skip_missing_results(draw):
    models = {"finetuned": {"metrics": {"rouge_l": {"mean": 60.0, "low": 55.0, "high": 65.0}},
                            "errors": {"empty": 0.04}},
              "base": {"metrics": {"rouge_l": {"mean": 20.0}}, "errors": {"empty": 0.1}}}
    assert draw(models)[:8] == PNG
    assert draw({"base": {}}) is None
