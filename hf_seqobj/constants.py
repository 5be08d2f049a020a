"""Constants shared by the whole package."""

IGNORE_INDEX = -100
"""The label of positions without a target (what `torch.nn.CrossEntropyLoss` and the Transformers models ignore)."""
