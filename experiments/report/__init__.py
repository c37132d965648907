"""Reports of simulate runs: summary numbers, Markdown, PNG plots (matplotlib optional)."""

from .markdown import render
from .plots import have_matplotlib, write_plots
from .summary import spread, summarize, summarize_algorithm, wins

__all__ = ["have_matplotlib", "render", "spread", "summarize", "summarize_algorithm", "wins",
           "write_plots"]
