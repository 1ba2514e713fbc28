"""The slim CLIP trainer: `torchrun trainer/train.py` (see trainer/train.py)."""
