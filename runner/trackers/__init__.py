"""Optional trackers (MLflow) that finished runs are also logged to; a run never fails because a tracker did."""
