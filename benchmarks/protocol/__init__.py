"""The quality benchmark behind `python scripts/benchmark.py quality` (scripts/quality.py is its command).

- `settings`: per task its data, model families, warm start, continuation and the methods with their grids;
- `protocol`: `Benchmark`, the warm starts cached by their settings, the grids on validation and the seeds on test;
- `statistics`: the paired bootstrap over the task's own per-example statistics, and the verdicts;
- `report`: the results JSON, the markdown report with its plots, and the README's headline table.

Scoring is the tasks' (`hf_seqobj.tasks`): nothing here depends on which task is benchmarked beyond its settings.
"""
