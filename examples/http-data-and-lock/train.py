"""Counts the Iris classes fetched over HTTP, using a locked wheel (six) to show the lock works."""

import collections
import json

import six

rows = open("/data/iris.csv").read().splitlines()[1:]
counts = collections.Counter(row.rsplit(",", 1)[1] for row in rows)
with open("/outputs/counts.json", "w") as f:
    json.dump({"rows": len(rows), **{f"class_{k}": v for k, v in sorted(counts.items())}}, f, sort_keys=True)
print(f"six {six.__version__}: {len(rows)} rows, {dict(counts)}")
