"""Optional trackers (MLflow) that finished runs are also logged to; a run never fails because a tracker did.

`interface.py` owns the Tracker ABC and `TrackedRun`, a finished run read back from its directory
(run.json, plan.json, the attestation); `mlflow.py` is the one tracker today; `track.py` sends runs
after their attestation is written and records each tracker's outcome in run.json.
"""
