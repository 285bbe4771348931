"""The Python API: one function per user action, plus the `Tuner` facade; the CLI calls only these.

Each function resolves the config once and hands each stage only its own section.
"""

from __future__ import annotations
