"""The fixed harness of the train experiment: data, split, time budget, reporting.

Read-only to the model (the contract lists it under `readonly`; a run that changes it
fails with kind `integrity`). It makes its own data (no download), trains model.py's
`Model` on one CPU core, then scores the held-out split itself: validation loss is the
mean cross-entropy, in nats, of the logits the model gives for inputs it never trained on.

The time budget is RATCHET_TRIAL_SECONDS (default 30) for the whole run, as the loop
enforces it (`trial_seconds` in experiment.json: SIGTERM at the budget). Training stops
at the budget minus a reserve for scoring (a quarter of it, at most 3 s), counted from
the start of this process, so start-up and data come out of the training time, never out
of the result. A SIGTERM ends training at once; the run still scores and reports.

Every trial gets the same budget and the same data, so trials are comparable: what a
candidate can change is how much it learns per second. Run it by hand:

    RATCHET_TRIAL_SECONDS=5 python3 harness.py
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import time

STARTED = time.monotonic()  # the budget counts from here (before numpy and the data)
STOP: list[int] = []  # set by SIGTERM (the budget is up): stop training, score, report
signal.signal(signal.SIGTERM, lambda signum, frame: STOP.append(signum))  # before numpy
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # one core: set before numpy loads its BLAS

import numpy as np  # noqa: E402  (after the thread settings above)

N_IN, N_HIDDEN_TEACHER, N_CLASSES = 32, 64, 10
N_TRAIN, N_VAL = 100_000, 10_000
DATA_SEED = 20240607
DEFAULT_SECONDS = 30.0


def reserve_seconds(budget: float) -> float:
    """The end of the budget kept for scoring and reporting."""
    return min(3.0, 0.25 * budget)


def budget_seconds() -> float:
    """The trial's training budget: RATCHET_TRIAL_SECONDS, else 30 s."""
    text = os.environ.get("RATCHET_TRIAL_SECONDS", "").strip()
    try:
        value = float(text) if text else DEFAULT_SECONDS
    except ValueError:
        sys.exit(f"RATCHET_TRIAL_SECONDS={text!r} is not a number")
    if not 0 < value < 86_400:
        sys.exit(f"RATCHET_TRIAL_SECONDS={text!r} is out of range")
    return value


def make_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A fixed classification task: a random teacher network (two tanh layers) labels
    correlated Gaussian inputs, sampling its softmax, so even the teacher's own loss is not
    zero (it is printed: the floor no student can beat on average)."""
    rng = np.random.default_rng(DATA_SEED)
    n, f32 = N_TRAIN + N_VAL, np.float32
    mix = (rng.normal(size=(N_IN, N_IN)) / np.sqrt(N_IN)).astype(f32)
    x = rng.standard_normal((n, N_IN), dtype=f32) @ mix
    w1 = (rng.normal(size=(N_IN, N_HIDDEN_TEACHER)) * (2.5 / np.sqrt(N_IN))).astype(f32)
    w2 = (rng.normal(size=(N_HIDDEN_TEACHER, N_HIDDEN_TEACHER))
          * (2.0 / np.sqrt(N_HIDDEN_TEACHER))).astype(f32)
    w3 = (rng.normal(size=(N_HIDDEN_TEACHER, N_CLASSES))
          * (8.0 / np.sqrt(N_HIDDEN_TEACHER))).astype(f32)
    logits = np.tanh(np.tanh(x @ w1) @ w2) @ w3
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    y = (p.cumsum(axis=1) > rng.random((n, 1), dtype=f32)).argmax(axis=1)
    bayes = float(-np.log(p[np.arange(n), y])[N_TRAIN:].mean())
    print(f"data: {N_TRAIN} train, {N_VAL} validation rows; teacher's own loss {bayes:.4f}",
          flush=True)
    return x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]


def cross_entropy(logits: np.ndarray, y: np.ndarray) -> float:
    z = logits - logits.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(y)), y].mean())


def main() -> int:
    budget = budget_seconds()
    x_train, y_train, x_val, y_val = make_data()
    import model  # the editable file: imported after the data exists, never before

    net = model.Model(N_IN, N_CLASSES, np.random.default_rng(0))
    batch = int(getattr(net, "batch_size", 128))
    if not 1 <= batch <= N_TRAIN:
        sys.exit(f"batch_size {batch} is out of range 1..{N_TRAIN}")
    order = np.random.default_rng(1)
    start = time.monotonic()
    train_budget = max(0.0, STARTED + budget - reserve_seconds(budget) - start)
    steps = 0
    while not STOP and (elapsed := time.monotonic() - start) < train_budget:
        idx = order.integers(0, N_TRAIN, size=batch)
        net.step(x_train[idx], y_train[idx], elapsed / train_budget)
        steps += 1
    train_seconds = time.monotonic() - start
    logits = np.concatenate([np.asarray(net.logits(x_val[i:i + 2000]), dtype=np.float64)
                             for i in range(0, N_VAL, 2000)])
    if logits.shape != (N_VAL, N_CLASSES) or not np.isfinite(logits).all():
        print(f"bad logits: shape {logits.shape}, finite {np.isfinite(logits).all()}")
        return 1
    val_loss = cross_entropy(logits, y_val)
    accuracy = float((logits.argmax(axis=1) == y_val).mean())
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"val_loss": round(val_loss, 6), "val_accuracy": round(accuracy, 4),
                      "steps": steps, "train_seconds": round(train_seconds, 3),
                      "budget_seconds": budget, "train_budget_seconds": round(train_budget, 3),
                      "stopped_early": bool(STOP), "peak_memory_mb": round(peak_mb, 1)}))
    fd = os.environ.get("RATCHET_RESULT_FD")  # the loop's result channel (if any)
    if fd:
        os.write(int(fd), f"{val_loss!r}\n".encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
