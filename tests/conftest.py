"""pytest set-up shared by every test module."""

import os

# No test may reach Weights & Biases; runs that log to it stay on this machine.
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
