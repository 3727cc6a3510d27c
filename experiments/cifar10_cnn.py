"""The CIFAR-10 CNN of "Deep Learning Deep Dive" (reconstructed as
`funcnets.models.cifar_cnn` documents), cross-entropy, Adam lr 1e-3, batch 16,
10 epochs (the tutorial reports 61.2% test accuracy).

CIFAR-10 cannot be downloaded on machines without network: pass
``--data-dir`` holding ``cifar-10-batches-py`` (or the binary batches), or a
prepared TFDS copy.

    python -m experiments.cifar10_cnn --data-dir ~/data [--framework torch] [--help]
"""

from experiments.tutorial import Tutorial, main

TUTORIAL = Tutorial(
    name="cifar10_cnn", model="cifar_cnn", source='"Deep Learning Deep Dive" (CIFAR-10 CNN)',
    datasets=("cifar10",), optimizer="adam", lr=1e-3, batch_size=16, test_batch_size=1000, epochs=10,
    reported="61.2% test accuracy on CIFAR-10 after 10 epochs")

if __name__ == "__main__":
    main(TUTORIAL)
