"""Report: the run's self-contained HTML report and every chart, drawn from result files only (never torch)."""
