"""The MNIST MLP of "A Neural Net in PyTorch": 784-100-10, ReLU, log-softmax, NLL,
SGD lr 0.01, batch 64, 10 epochs (the tutorial reports 96% test accuracy).

    python -m experiments.mnist_mlp                      # funcnets, --dataset auto
    python -m experiments.mnist_mlp --framework torch    # the PyTorch reference, same batches
    python -m experiments.mnist_mlp --n-hidden 200       # "I've picked 100 but you can try something else"
    python -m experiments.mnist_mlp --help
"""

from experiments.tutorial import MNIST_LIKE, Tutorial, run_as_script

TUTORIAL = Tutorial(
    name="mnist_mlp", model="mnist_mlp", source='"A Neural Net in PyTorch" (MNIST MLP)',
    datasets=MNIST_LIKE, optimizer="sgd", lr=0.01, batch_size=64, test_batch_size=1000, epochs=10,
    reported="96% test accuracy on MNIST after 10 epochs (96.23% train)",
    model_flags=(("n_hidden", 100, "neurons in the hidden layer, SimpleNeuralNet's n_hidden"),))

if __name__ == "__main__":
    run_as_script(TUTORIAL)
