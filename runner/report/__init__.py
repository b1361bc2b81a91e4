"""Renderers of typed results: text for people (text.py), JSON for machines (json.py), the HTML report (html.py)."""
