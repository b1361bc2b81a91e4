"""Renderers of typed results; html.py writes the self-contained HTML report of runs (`xrun report`)."""
