"""The tutorials' own PyTorch programs, as they write them: the baselines of
``python -m experiments.tools.bench --end-to-end``.

Each is a whole program in the tutorial's style (a ``DataLoader`` loop with the
tutorial's running loss and accuracy, a test pass per epoch), read in its
modern form (``loss.item()`` for ``loss.data[0]``, no ``Variable``), with the
data read from the published files instead of ``torchvision`` (not installed
here; the same IDX bytes).
"""
