"""The tutorial nets in PyTorch, as the tutorials write them (needs ``torch``).

These are the references funcnets is checked against: the tutorials' own
attribute names and nesting (so a ``state_dict`` saved by a tutorial's code
loads into them and into `funcnets.interop.params_from_torch`), the same
layers, the same default init. Inputs are NCHW, as PyTorch expects.

=================  ==========================  ==========================================
funcnets model     class here                  the tutorial's code
=================  ==========================  ==========================================
``mnist_mlp``      `SimpleNeuralNet`           "A Neural Net in PyTorch"
``simple_net``     `SimpleNet`                 "Deep Learning Deep Dive"
``mnist_cnn``      `MnistNet`                  pytorch/examples ``mnist/main.py`` ``Net``
``mastering_cnn``  `ConvNet`                   "Mastering PyTorch" ch. 1 ``mnist_pytorch.ipynb``
``cifar_cnn``      `CifarNet`                  "Deep Learning Deep Dive" (luspr/deep-learning-deep-dive ``Net``)
=================  ==========================  ==========================================

Modern readings: ``x.view(x.size(0), -1)`` is written ``torch.flatten(x, 1)``;
`SimpleNet`, whose tutorial flattens the images before the call, flattens
inside (a no-op on flat input).
"""

from __future__ import annotations

import warnings
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


class SimpleNeuralNet(nn.Module):
    """"A Neural Net in PyTorch": ``linear1`` (784 -> 100), ReLU, ``linear2`` (100 -> 10), log-softmax."""

    def __init__(self, n_in: int = 784, n_hidden: int = 100, n_out: int = 10):
        super().__init__()
        self.linear1 = nn.Linear(n_in, n_hidden)
        self.linear2 = nn.Linear(n_hidden, n_out)

    def forward(self, x):
        x = torch.flatten(x, 1)
        x = F.relu(self.linear1(x))
        return F.log_softmax(self.linear2(x), dim=-1)


class SimpleNet(nn.Module):
    """"Deep Learning Deep Dive"'s SimpleNet: 784-128-64-10, ReLU after every layer."""

    def __init__(self, input_size: int = 784, output_size: int = 10):
        super().__init__()
        self.fc1 = nn.Linear(input_size, 128)
        self.fc2 = nn.Linear(128, 64)
        self.fc3 = nn.Linear(64, output_size)

    def forward(self, x):
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return F.relu(self.fc3(x))


class MnistNet(nn.Module):
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


class ConvNet(nn.Module):
    """"Mastering PyTorch" chapter 1's ``ConvNet`` (``Chapter01/mnist_pytorch.ipynb``)."""

    def __init__(self, dropout=(0.10, 0.25)):
        super().__init__()
        self.cn1 = nn.Conv2d(1, 16, 3, 1)
        self.cn2 = nn.Conv2d(16, 32, 3, 1)
        self.dp1 = nn.Dropout2d(dropout[0])
        self.dp2 = nn.Dropout2d(dropout[1])
        self.fc1 = nn.Linear(4608, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = F.relu(self.cn1(x))
        x = F.relu(self.cn2(x))
        x = F.max_pool2d(x, 2)
        x = self.dp1(x)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        with warnings.catch_warnings():  # 2-D input: element-wise dropout, as the book's torch ran it
            warnings.filterwarnings("ignore", message=".*2-D input to dropout2d")
            x = self.dp2(x)
        x = self.fc2(x)
        return F.log_softmax(x, dim=1)


class CifarNet(nn.Module):
    """"Deep Learning Deep Dive"'s CIFAR-10 ``Net(output_dim)``, as its author's code writes it."""

    def __init__(self, output_dim: int = 10, dropout: float = 0.5):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(3, 64, 3), nn.ReLU(),
            nn.Conv2d(64, 128, 3), nn.ReLU(),
            nn.Conv2d(128, 128, 3), nn.ReLU(),
            nn.Conv2d(128, 64, 3), nn.AdaptiveAvgPool2d(1))
        self.fc = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Dropout(dropout), nn.Linear(32, output_dim))

    def forward(self, x):
        x = self.conv(x)
        x = x.view(x.shape[0], 64)
        return self.fc(x)


_BUILDERS = {"mnist_mlp": SimpleNeuralNet, "simple_net": SimpleNet, "mnist_cnn": MnistNet,
             "mastering_cnn": ConvNet, "cifar_cnn": CifarNet}


def build(name: str, **options) -> nn.Module:
    """The PyTorch twin of ``funcnets.models.get(name, **options)``."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(_BUILDERS)}")
    return _BUILDERS[name](**options)


def twin(model) -> nn.Module:
    """The PyTorch twin of a funcnets `Model`: a tutorial net's class built with
    the same constructor arguments (``model.options``), or for a
    `funcnets.models.sequential` net the ``nn.Sequential`` of the same entries."""
    if model.name in _BUILDERS and model.options:   # a tutorial net: its tutorial's class
        return build(model.name, **dict(model.options))
    if model.sequence is not None:
        return _sequential_module(model.sequence)
    if model.init_fn is not None:
        raise ValueError(f"{model.name} is a model of one's own (from_flax/from_functions): it has no PyTorch twin")
    return build(model.name, **dict(model.options))


def _sequential_module(entries) -> nn.Sequential:
    """``nn.Sequential`` of ``(name, spec)`` entries; consecutive dotted names with one
    prefix (``conv.0``, ``conv.1``, ...) become a nested ``nn.Sequential`` (``conv``)."""
    children: OrderedDict[str, nn.Module] = OrderedDict()
    i = 0
    while i < len(entries):
        name, spec = entries[i]
        if "." not in name:
            children[name] = _module(spec)
            i += 1
            continue
        prefix = name.split(".", 1)[0]
        group = []
        while i < len(entries) and entries[i][0].split(".", 1)[0] == prefix and "." in entries[i][0]:
            group.append((entries[i][0].split(".", 1)[1], entries[i][1]))
            i += 1
        if prefix in children:
            raise ValueError(f"layer group {prefix!r} is split by other layers; keep its layers together")
        children[prefix] = _sequential_module(group)
    return nn.Sequential(children)


class MinPool2d(nn.Module):
    """Min-pooling, which ``torch.nn`` has no layer for, as PyTorch users write it:
    ``-F.max_pool2d(-x, kernel_size, stride, padding)`` (twin of `funcnets.layers.MinPool2d`)."""

    def __init__(self, kernel_size: int, stride: int | None = None, padding: int = 0):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x):
        return -F.max_pool2d(-x, self.kernel_size, self.stride, self.padding)


class Last(nn.Module):
    """``x[:, -1]``: the last step of a batch-first sequence (twin of `funcnets.layers.Last`)."""

    def forward(self, x):
        return x[:, -1]


def _output_only(base):
    """``base`` (``nn.RNN``/``nn.LSTM``/``nn.GRU``) giving only its first output, the
    sequence of hidden states, so that it composes in an ``nn.Sequential``; its
    ``state_dict`` names are ``base``'s."""

    class OutputOnly(base):
        def forward(self, x):
            return super().forward(x)[0]

    OutputOnly.__name__ = OutputOnly.__qualname__ = f"{base.__name__}Output"
    return OutputOnly


RNNOutput, LSTMOutput, GRUOutput = _output_only(nn.RNN), _output_only(nn.LSTM), _output_only(nn.GRU)


def _module(spec) -> nn.Module:
    """The ``torch.nn`` module of one `funcnets.layers` spec."""
    from funcnets import layers

    if isinstance(spec, layers.Linear):
        return nn.Linear(spec.in_features, spec.out_features)
    if isinstance(spec, layers.Conv2d):
        return nn.Conv2d(spec.in_channels, spec.out_channels, spec.kernel_size, spec.stride, spec.padding)
    if isinstance(spec, layers.ConvTranspose2d):
        return nn.ConvTranspose2d(spec.in_channels, spec.out_channels, spec.kernel_size, spec.stride, spec.padding,
                                  spec.output_padding)
    recurrent = {layers.RNN: RNNOutput, layers.LSTM: LSTMOutput, layers.GRU: GRUOutput}
    if type(spec) in recurrent:
        return recurrent[type(spec)](**spec._asdict())
    simple = {layers.ReLU: nn.ReLU, layers.Sigmoid: nn.Sigmoid, layers.Tanh: nn.Tanh, layers.SiLU: nn.SiLU,
              layers.Flatten: nn.Flatten, layers.GlobalAvgPool2d: lambda: nn.AdaptiveAvgPool2d(1),
              layers.LogSoftmax: lambda: nn.LogSoftmax(dim=1), layers.Last: Last}
    if type(spec) in simple:
        return simple[type(spec)]()
    with_arguments = {layers.LeakyReLU: nn.LeakyReLU, layers.GELU: nn.GELU, layers.ELU: nn.ELU,
                      layers.Softmax: nn.Softmax, layers.MaxPool2d: nn.MaxPool2d, layers.AvgPool2d: nn.AvgPool2d,
                      layers.MinPool2d: MinPool2d, layers.AdaptiveAvgPool2d: nn.AdaptiveAvgPool2d,
                      layers.Dropout: nn.Dropout, layers.Dropout2d: nn.Dropout2d}
    if type(spec) in with_arguments:
        return with_arguments[type(spec)](*spec)
    norms = {layers.BatchNorm1d: nn.BatchNorm1d, layers.BatchNorm2d: nn.BatchNorm2d, layers.LayerNorm: nn.LayerNorm,
             layers.GroupNorm: nn.GroupNorm}
    if type(spec) in norms:
        return norms[type(spec)](**spec._asdict())
    raise TypeError(f"no torch.nn module for {spec!r}")


def loss_for(model):
    """The loss a funcnets `Model` trains with, in PyTorch: NLL after log-softmax, else cross-entropy."""
    return F.nll_loss if model.outputs == "log_probs" else F.cross_entropy


def nchw(images):
    """NHWC image batches as PyTorch lays them out (NCHW); flat ``(B, features)`` rows unchanged."""
    import numpy as np

    images = np.asarray(images)
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2) if images.ndim == 4 else images)


def loss_fn(name: str):
    """The tutorial's loss: NLL after ``log_softmax``, else cross-entropy."""
    return F.nll_loss if name in ("mnist_mlp", "mnist_cnn", "mastering_cnn") else F.cross_entropy
