"""Write a small deterministic image-like dataset into images/ (for `dvc add images`)."""

import random
from pathlib import Path

rng = random.Random(7)
for label in ("cats", "dogs"):
    folder = Path("images") / label
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(20):
        (folder / f"{i:03}.txt").write_text(" ".join(str(rng.random() + (label == "dogs")) for _ in range(16)) + "\n")
