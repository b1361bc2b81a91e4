"""`python -m runner.cli …`: how Slurm job scripts run `xrun node-run` on a compute node."""

import sys

from runner.cli import main

sys.exit(main())
