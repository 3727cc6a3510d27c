"""The CIFAR-10 ``Net`` of "Deep Learning Deep Dive" as its author's code
(github.com/luspr/deep-learning-deep-dive) trains it: four 3x3 convs, a global
average pool, Linear 64-32, dropout 0.5, Linear 32-10; cross-entropy, Adam
lr 1e-3, batch 16 (train and test), 10 epochs, ``Normalize((0.1307,), (0.3081,))``
(MNIST's constants, on all three channels, as written). The tutorial reports
61.2% test accuracy, measured without ``net.eval()``, so with dropout active:
the run reports that number as well as the eval-mode accuracy.

CIFAR-10 comes from ``--data-dir``: a folder holding ``cifar-10-batches-py``
(or the binary batches), or an image-folder tree ``train/<class>/*.jpg`` (as
the offline JPEG copy, unpacked or its ``.tar.gz``); with network and no
``--data-dir``, the published archive is downloaded and checked.

    python -m experiments.cifar10_cnn --data-dir ../shared/data/cifar10-jpeg [--framework torch] [--help]
"""

from experiments.tutorial import Tutorial, run_as_script

TUTORIAL = Tutorial(
    name="cifar10_cnn", model="cifar_cnn", source='"Deep Learning Deep Dive" (CIFAR-10 Net, the author\'s code)',
    datasets=("cifar10",), optimizer="adam", lr=1e-3, batch_size=16, test_batch_size=16, epochs=10,
    reported="61.2% test accuracy on CIFAR-10 after 10 epochs (dropout active at test)",
    normalization=((0.1307,), (0.3081,)), test_dropout=True)

if __name__ == "__main__":
    run_as_script(TUTORIAL)
