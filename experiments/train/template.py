"""Tuner template: render(knobs) -> the complete source of model.py.

The knobs are the model's and the optimiser's settings (learning rate, width, depth,
optimiser, schedule, initialisation, batch size); the code below them is the same for
every rendering, so the offline tuner searches settings while a language model may change
anything in the file. SEED is the shipped model.py (a plain, untuned baseline).
"""

from __future__ import annotations

SEED = {"learning_rate": 0.001, "width": 64, "depth": 1, "optimizer": "sgd",
        "schedule": "constant", "init": "normal", "batch_size": 64}

HEAD = '''"""The editable model of the train experiment: network, initialisation, optimiser.

harness.py (read-only) owns the data, the split and the time budget. It builds
`Model(n_in, n_classes, rng)`, calls `step(x, y, progress)` on random training batches of
`batch_size` rows until the budget is spent (`progress` runs from 0 to 1 over the
budget), then scores `logits(x)` on the validation split: lower loss is better. numpy
only, one CPU core.
"""

import numpy as np

LEARNING_RATE = {learning_rate!r}
WIDTH = {width!r}  # hidden units per layer
DEPTH = {depth!r}  # hidden layers
OPTIMIZER = {optimizer!r}  # "sgd", "momentum" or "adam"
SCHEDULE = {schedule!r}  # "constant", "cosine" or "warmup_cosine"
INIT = {init!r}  # "normal" (std 0.1), "xavier" or "he"
BATCH_SIZE = {batch_size!r}
'''

BODY = '''

def init_weight(rng, fan_in, fan_out):
    if INIT == "he":
        scale = np.sqrt(2.0 / fan_in)
    elif INIT == "xavier":
        scale = np.sqrt(2.0 / (fan_in + fan_out))
    else:
        scale = 0.1
    return (rng.normal(size=(fan_in, fan_out)) * scale).astype(np.float32)


def learning_rate(progress):
    if SCHEDULE == "cosine":
        return LEARNING_RATE * 0.5 * (1.0 + np.cos(np.pi * progress))
    if SCHEDULE == "warmup_cosine":
        if progress < 0.05:
            return LEARNING_RATE * progress / 0.05
        return LEARNING_RATE * 0.5 * (1.0 + np.cos(np.pi * (progress - 0.05) / 0.95))
    return LEARNING_RATE


class Model:
    def __init__(self, n_in, n_classes, rng):
        self.batch_size = BATCH_SIZE
        sizes = [n_in] + [WIDTH] * DEPTH + [n_classes]
        self.params = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
            self.params += [init_weight(rng, fan_in, fan_out), np.zeros(fan_out, np.float32)]
        self.m = [np.zeros_like(p) for p in self.params]
        self.v = [np.zeros_like(p) for p in self.params]
        self.t = 0

    def forward(self, x):
        acts = [x]
        h = x
        for i in range(0, len(self.params) - 2, 2):
            h = np.maximum(h @ self.params[i] + self.params[i + 1], 0.0)
            acts.append(h)
        return h @ self.params[-2] + self.params[-1], acts

    def logits(self, x):
        return self.forward(x.astype(np.float32))[0]

    def step(self, x, y, progress):
        out, acts = self.forward(x)
        out = out - out.max(axis=1, keepdims=True)
        p = np.exp(out)
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(len(y)), y] -= 1.0
        grad = p / len(y)
        grads = [None] * len(self.params)
        for i in range(len(self.params) - 2, -1, -2):
            grads[i] = acts[i // 2].T @ grad
            grads[i + 1] = grad.sum(axis=0)
            if i:
                grad = (grad @ self.params[i].T) * (acts[i // 2] > 0)
        self.update(grads, learning_rate(progress))

    def update(self, grads, lr):
        self.t += 1
        for i, g in enumerate(grads):
            if OPTIMIZER == "adam":
                self.m[i] = 0.9 * self.m[i] + 0.1 * g
                self.v[i] = 0.999 * self.v[i] + 0.001 * g * g
                m_hat = self.m[i] / (1 - 0.9 ** self.t)
                v_hat = self.v[i] / (1 - 0.999 ** self.t)
                self.params[i] -= lr * m_hat / (np.sqrt(v_hat) + 1e-8)
            elif OPTIMIZER == "momentum":
                self.m[i] = 0.9 * self.m[i] + g
                self.params[i] -= lr * self.m[i]
            else:
                self.params[i] -= lr * g
'''


def render(knobs: dict) -> str:
    return HEAD.format(**knobs) + BODY


if __name__ == "__main__":  # regenerate the shipped seed: python3 template.py > model.py
    print(render(SEED), end="")
