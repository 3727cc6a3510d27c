"""pytorch/examples' MNIST ``Net`` (``mnist/main.py``: two 3x3 convs, max-pool,
dropout 0.25/0.5, fc 128, log-softmax) trained as ``mnist/main.py`` trains it:
Adadelta lr 1.0, ``StepLR(step_size=1, gamma=0.7)``, batch 64, test batch 1000,
14 epochs (its README: about 99% test accuracy).

    python -m experiments.mnist_cnn [--framework torch] [--help]
"""

from experiments.tutorial import MNIST_LIKE, Tutorial, run_as_script

TUTORIAL = Tutorial(
    name="mnist_cnn", model="mnist_cnn", source="pytorch/examples mnist/main.py (Net)",
    datasets=MNIST_LIKE, optimizer="adadelta", lr=1.0, batch_size=64, test_batch_size=1000, epochs=14,
    gamma=0.7, reported="~99% test accuracy on MNIST after 14 epochs (pytorch/examples' README)")

if __name__ == "__main__":
    run_as_script(TUTORIAL)
