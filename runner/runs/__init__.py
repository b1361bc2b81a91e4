"""Run history: the typed run record (record.py) and the run directories as a store (store.py)."""
