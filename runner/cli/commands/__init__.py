"""One module per command or small group of commands: parse the arguments into the library's options,
call the library, hand the typed result to a renderer (runner/report/text.py or runner/report/json.py).
The dispatcher in runner/cli/__init__.py imports only the module of the command that runs."""
