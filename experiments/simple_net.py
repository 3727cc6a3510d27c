"""``SimpleNet`` of "Deep Learning Deep Dive": 784-128-64-10, ReLU after every
layer, cross-entropy, Adam lr 1e-3, batch 64, 10 epochs.

    python -m experiments.simple_net [--framework torch] [--help]
"""

from experiments.tutorial import MNIST_LIKE, Tutorial, run_as_script

TUTORIAL = Tutorial(
    name="simple_net", model="simple_net", source='"Deep Learning Deep Dive" (SimpleNet)',
    datasets=MNIST_LIKE, optimizer="adam", lr=1e-3, batch_size=64, test_batch_size=1000, epochs=10)

if __name__ == "__main__":
    run_as_script(TUTORIAL)
