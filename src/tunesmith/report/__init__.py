"""Report: the run's self-contained HTML report and every chart, drawn from result files only (never torch).

results (reading a run's files, metric names, number formats), charts (every PNG), html (the report page) and
runs_table (`runs list` / `runs compare` in the terminal).
"""
