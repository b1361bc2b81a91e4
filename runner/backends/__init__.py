"""Where the run stage executes: an interface (interface.py) and one file per backend."""
