"""The four nets in PyTorch, as the tutorials write them (needs ``torch``).

These are the references funcnets is checked against: same module names, same
layers, same default init. Inputs are NCHW, as PyTorch expects.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MnistMLP(nn.Module):
    """"A Neural Net in PyTorch": 784-100-10, ReLU, log-softmax."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 100)
        self.fc2 = nn.Linear(100, 10)

    def forward(self, x):
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return F.log_softmax(self.fc2(x), dim=1)


class SimpleNet(nn.Module):
    """"Deep Learning Deep Dive"'s SimpleNet: 784-128-64-10, ReLU after every layer."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 128)
        self.fc2 = nn.Linear(128, 64)
        self.fc3 = nn.Linear(64, 10)

    def forward(self, x):
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return F.relu(self.fc3(x))


class MnistCNN(nn.Module):
    """pytorch/examples ``mnist/main.py``'s ``Net``."""

    def __init__(self, dropout=(0.25, 0.5)):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(dropout[0])
        self.dropout2 = nn.Dropout(dropout[1])
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = self.dropout2(x)
        x = self.fc2(x)
        return F.log_softmax(x, dim=1)


class CifarCNN(nn.Module):
    """"Deep Learning Deep Dive"'s CIFAR-10 CNN, reconstructed exactly as
    `funcnets.models.cifar_cnn` documents."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3)
        self.conv2 = nn.Conv2d(64, 128, 3)
        self.conv3 = nn.Conv2d(128, 128, 3)
        self.conv4 = nn.Conv2d(128, 64, 3)
        self.fc1 = nn.Linear(64, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.conv3(x))
        x = F.max_pool2d(F.relu(self.conv4(x)), 2)
        x = x.view(x.size(0), 64)
        x = F.relu(self.fc1(x))
        return self.fc2(x)


_BUILDERS = {"mnist_mlp": MnistMLP, "simple_net": SimpleNet, "mnist_cnn": MnistCNN,
             "cifar_cnn": CifarCNN}


def build(name: str, **options) -> nn.Module:
    """The PyTorch twin of ``funcnets.models.get(name, **options)``."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(_BUILDERS)}")
    return _BUILDERS[name](**options)


def loss_fn(name: str):
    """The tutorial's loss: NLL after ``log_softmax``, else cross-entropy."""
    return F.nll_loss if name in ("mnist_mlp", "mnist_cnn") else F.cross_entropy
