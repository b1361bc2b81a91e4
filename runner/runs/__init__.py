"""Run history: the typed run record (record.py) and the run directories as a store (store.py).

`record.RunRecord` is the one reader and writer of run.json (with the run and scheduler states);
`store.py` lists, finds and diffs the run directories for `xrun runs`, which are the truth: there
is no database. The plan of a run is read back by `plan.PlanRecord`, its statement by
`attest.recorded.read_statement`.
"""
