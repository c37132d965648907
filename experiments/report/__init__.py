"""Reports of simulate runs: summary numbers, Markdown, PNG plots (matplotlib optional),
and the figures over the seeds of a multi-seed run."""

from .markdown import render
from .over_seeds import aggregate, render_seeds
from .plots import have_matplotlib, write_plots
from .seed_plots import write_seed_plots
from .summary import spread, summarize, summarize_algorithm, wins

__all__ = ["aggregate", "have_matplotlib", "render", "render_seeds", "spread", "summarize",
           "summarize_algorithm", "wins", "write_plots", "write_seed_plots"]
