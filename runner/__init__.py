"""xrun: declarative, hermetic, attested ML experiment runner.

One module per pipeline stage, the data flowing one way: `manifest.py` → `plan.py` → `context.py`
(the RunContext built once per run) → `fetch/` and `build/` → the run stage (`backends/` on the
container `engine/`) → `outputs.py` → `provenance.py` + `attest/`; `stages.py` holds the typed results
the stages hand on and `pipeline.py` runs them in order; `reproduce.py` and `submit.py` are callers
of the pipeline. `runs/` (run.json and the run store), `trackers/`, `report/` (renderers) and `cli/`
(parse, call, render) sit on top; `errors.py`, `wire.py`, `rundir.py` and the other small modules
at the bottom. A module imports only modules below it: tests/test_layout.py fails on any cycle.
"""

__version__ = "0.1.0"
