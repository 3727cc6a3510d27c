"""What a run reports: the JSON-lines metrics file that `funcnets.fit` writes
(and the PyTorch references write alike), and the per-epoch line.

Metrics go to a JSON-lines file, one record per chunk::

    {"kind": "step", "step": 300, "epoch": 0, "loss": 0.41, "accuracy": 0.88, "lr": 0.01, "seconds": 1.9}

(loss and accuracy are means over the steps since the previous record; the ragged
last batch of an epoch gets its own record; ``step_losses=True`` adds
``"losses"``, the list of each step's loss) and one per epoch::

    {"kind": "epoch", "step": 938, "epoch": 0, "loss": ..., "accuracy": ...,
     "test_loss": ..., "test_accuracy": ..., "lr": ..., "seconds": ..., "train_seconds": ...}

(the epoch's loss and accuracy are means over its training steps, as the
tutorials print them; ``seconds`` is the whole epoch, ``train_seconds`` its
training steps alone, without evaluation and checkpoints). `MetricsLog` writes
these files, for funcnets and for the PyTorch references alike.
"""

from __future__ import annotations

import json
import os
import pathlib


class MetricsLog:
    """A JSON-lines metrics file (the format in the module doc), one record per `write`.

    A fresh log (``resume_step=None``) replaces any old file; a resumed one keeps
    the records up to ``resume_step`` (the checkpoint's step) and appends after them.
    ``MetricsLog(None)`` writes nothing.
    """

    def __init__(self, path: str | os.PathLike | None, *, resume_step: int | None = None):
        self.path = pathlib.Path(path) if path is not None else None
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None or not self.path.exists():
            self.path.write_text("")
            return
        kept = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= resume_step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, entry: dict) -> None:
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps(entry) + "\n")


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a metrics file, in order."""
    return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines() if line.strip()]


def epoch_line(entry: dict, epochs: int) -> str:
    """The tutorial-style line for an epoch record:
    ``Epoch 3/10 - Training loss: 0.4012 - Test loss: 0.4321, Test accuracy: 84.52% (2.1s)``."""
    line = f"Epoch {entry['epoch'] + 1}/{epochs} - Training loss: {entry['loss']:.4f}"
    if "test_loss" in entry:
        line += f" - Test loss: {entry['test_loss']:.4f}, Test accuracy: {100 * entry['test_accuracy']:.2f}%"
    return line + f" ({entry['seconds']:.1f}s)"
