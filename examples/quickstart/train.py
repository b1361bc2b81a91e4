"""Multinomial logistic regression on Iris in plain numpy: small, real, and bit-reproducible.

Reads /data/iris.csv, trains with full-batch gradient descent on a seeded shuffle/split, writes
/outputs/model.npy (weights) and /outputs/metrics.json. Same seed → identical bytes.
"""

import argparse
import json
import os
import random

import numpy as np


def load(path):
    rows = np.loadtxt(path, delimiter=",", skiprows=1)
    return rows[:, :4], rows[:, 4].astype(int)


def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--lr", type=float, default=0.1)
    args = parser.parse_args()

    x, y = load(os.environ.get("IRIS", "/data/iris.csv"))
    # sitecustomize seeded `random` and numpy from XRUN_SEED; the split below depends on it.
    order = np.random.permutation(len(y))
    noise = random.random()  # proves `random` is seeded too
    x, y = x[order], y[order]
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    split = int(0.8 * len(y))
    xtr, ytr, xte, yte = x[:split], y[:split], x[split:], y[split:]

    w = np.random.normal(scale=0.01, size=(4, 3))
    b = np.zeros(3)
    onehot = np.eye(3)[ytr]
    for _ in range(args.epochs):
        p = softmax(xtr @ w + b)
        grad = p - onehot
        w -= args.lr * xtr.T @ grad / len(ytr)
        b -= args.lr * grad.mean(axis=0)

    loss = float(-np.log(softmax(xtr @ w + b)[np.arange(len(ytr)), ytr]).mean())
    acc = float((softmax(xte @ w + b).argmax(axis=1) == yte).mean())
    np.save("/outputs/model.npy", np.concatenate([w, b[None, :]]))
    with open("/outputs/metrics.json", "w") as f:
        json.dump({"train_loss": loss, "test_accuracy": acc, "epochs": args.epochs, "split_noise": noise},
                  f, indent=2, sort_keys=True)
    print(f"trained {args.epochs} epochs: train_loss={loss:.4f} test_accuracy={acc:.3f}")


if __name__ == "__main__":
    main()
