"""The tools that measure funcnets, apart from the tutorial scripts: ``bench``
(steps and epochs against PyTorch), ``end_to_end`` (whole scripts, Enter to
result), ``profile_step`` (one step, op by op), ``reference_curves`` (record or
check PyTorch's golden loss curves for the parity suite)."""
