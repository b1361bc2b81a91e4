"""`xrun node-run RUN_DIR`: what a Slurm job script runs on its compute node, once per sweep member.

Its own module, importing only the node side (runner/node.py): every member of a sweep pays this
command's start-up, so it loads no submitting, collecting or reporting code.
"""

from __future__ import annotations

import argparse
import sys

from runner.node import node_run as run_on_node


def node_run(args: argparse.Namespace) -> int:
    """Run a directory prepared by `xrun submit` (on a compute node); the submitter signs."""
    summary = run_on_node(args.run_dir)
    print(f"xrun: run {summary.run_id} succeeded on this node; the statement awaits signing by the submitter "
          "(xrun collect)", file=sys.stderr)
    return 0
