"""backpack_core: a BackPACK-style engine of backprop extensions for ``torch.nn`` models."""
