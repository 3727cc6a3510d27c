"""'A Neural Net in PyTorch' as the tutorial writes it: SimpleNeuralNet(784, 100, 10),
SGD lr 0.01, batch 64, 10 epochs, a train loop with running loss and accuracy, a test pass.

    python -m experiments.as_written.mnist_mlp --data-dir ../shared/data/mnist
"""

import argparse
import gzip
import pathlib

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from torch.utils.data import DataLoader, TensorDataset


def read_idx(path: pathlib.Path) -> np.ndarray:
    """An IDX file (gzipped or not) as torchvision's MNIST reads it."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def mnist(data_dir: pathlib.Path, prefix: str) -> TensorDataset:
    """``datasets.MNIST(transform=Compose([ToTensor(), Normalize((0.1307,), (0.3081,))]))``
    as tensors: (N, 1, 28, 28) floats, labels."""
    def find(name):
        for candidate in (data_dir / f"{name}.gz", data_dir / name):
            if candidate.exists():
                return candidate
        raise SystemExit(f"error: {name}(.gz) not found in {data_dir}")

    images = read_idx(find(f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(find(f"{prefix}-labels-idx1-ubyte"))
    x = (torch.from_numpy(images).float().div(255) - 0.1307) / 0.3081
    x = x.unsqueeze(1)
    return TensorDataset(x, torch.from_numpy(labels.astype(np.int64)))


class SimpleNeuralNet(nn.Module):
    def __init__(self, n_in, n_hidden, n_out):
        super().__init__()
        self.linear1 = nn.Linear(n_in, n_hidden)
        self.linear2 = nn.Linear(n_hidden, n_out)

    def forward(self, x):
        x = x.view(x.size(0), -1)
        x = F.relu(self.linear1(x))
        return F.log_softmax(self.linear2(x), dim=-1)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--epochs", type=int, default=10)
    args = p.parse_args()
    trn_set = mnist(pathlib.Path(args.data_dir), "train")
    tst_set = mnist(pathlib.Path(args.data_dir), "t10k")
    trn_loader = DataLoader(trn_set, batch_size=64, shuffle=True)
    tst_loader = DataLoader(tst_set, batch_size=1000)
    net = SimpleNeuralNet(784, 100, 10)
    optimizer = optim.SGD(net.parameters(), lr=0.01)
    for epoch in range(args.epochs):
        running_loss = 0.
        corrects = 0
        print(f'Epoch {epoch+1}:')
        for inputs, labels in trn_loader:
            optimizer.zero_grad()
            outputs = net(inputs)
            _, preds = torch.max(outputs.data, 1)
            loss = F.nll_loss(outputs, labels)
            running_loss += loss.item() * inputs.size(0)
            corrects += torch.sum(labels.data == preds)
            loss.backward()
            optimizer.step()
        print(f'Loss: {running_loss/len(trn_set)}  Accuracy: {100.*corrects/len(trn_set)}')
        with torch.no_grad():
            correct = sum(int((net(x).argmax(1) == y).sum()) for x, y in tst_loader)
        print(f'Test accuracy: {100. * correct / len(tst_set):.2f}%')


if __name__ == "__main__":
    main()
