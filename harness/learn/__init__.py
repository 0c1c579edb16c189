"""How weights change: the training loop and its settings, masks and the update plan, attribution gradients, batches,
adapters, FSDP, memory estimates, the built-in optimizers, offset unlearning, SPUNGE and refusal data.
"""
