"""Tests use one torch thread: tiny models run no slower, and results do not depend on the machine."""

import torch

torch.set_num_threads(1)
