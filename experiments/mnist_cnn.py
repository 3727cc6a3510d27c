"""The pytorch/examples MNIST CNN (``mnist/main.py``'s ``Net``: two 3x3 convs,
max-pool, dropout 0.25/0.5, fc 128, log-softmax) trained as "Mastering PyTorch"
(chapter 1) trains its MNIST CNN: Adadelta lr 0.5, batch 32, test batch 500,
2 epochs, constant lr. ``--gamma 0.7`` adds pytorch/examples' StepLR;
``--lr 1.0 --batch-size 64 --test-batch-size 1000 --epochs 14 --gamma 0.7`` is
pytorch/examples' own setup.

    python -m experiments.mnist_cnn [--framework torch] [--help]
"""

from experiments.tutorial import MNIST_LIKE, Tutorial, main

TUTORIAL = Tutorial(
    name="mnist_cnn", model="mnist_cnn",
    source='pytorch/examples mnist/main.py Net, trained as in "Mastering PyTorch" ch. 1',
    datasets=MNIST_LIKE, optimizer="adadelta", lr=0.5, batch_size=32, test_batch_size=500, epochs=2)

if __name__ == "__main__":
    main(TUTORIAL)
