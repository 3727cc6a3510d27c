"""The MNIST ``ConvNet`` of "Mastering PyTorch", chapter 1 (the book's
``Chapter01/mnist_pytorch.ipynb``): conv 1-16, conv 16-32, max-pool,
Dropout2d 0.10, fc 4608-64, Dropout2d 0.25, fc 64-10, log-softmax; NLL,
Adadelta lr 0.5, batch 32 (shuffled), test batch 500, 2 epochs,
``Normalize((0.1302,), (0.3069,))``. The book reports 98.28% test accuracy
after epoch 1 and 98.50% after epoch 2 (test loss 0.0537, 0.0489).

    python -m experiments.mastering_cnn [--framework torch] [--help]
"""

from experiments.tutorial import MNIST_LIKE, Tutorial, run_as_script

TUTORIAL = Tutorial(
    name="mastering_cnn", model="mastering_cnn", source='"Mastering PyTorch" ch. 1 (ConvNet)',
    datasets=MNIST_LIKE, optimizer="adadelta", lr=0.5, batch_size=32, test_batch_size=500, epochs=2,
    reported="98.50% test accuracy on MNIST after 2 epochs (98.28% after 1)",
    normalization=((0.1302,), (0.3069,)))

if __name__ == "__main__":
    run_as_script(TUTORIAL)
