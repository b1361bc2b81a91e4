"""Renderers of typed results: text for people (text.py), JSON for machines (json.py), the HTML report (html.py).

A renderer takes what the library returns and computes nothing a command needs: the CLI's command
modules call the library, then one renderer. `views.py` holds the results a command composes from
several library calls. JSON keys go through runner/wire.py, so every `--json` object is camelCase.
"""
