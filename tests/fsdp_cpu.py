"""`python tests/fsdp_cpu.py ARGS...`: the `arlon` command, routed to FSDP on CPU processes.

Accelerate (1.x) turns an FSDP config into FSDP only on GPUs and other accelerators; on CPU
processes it quietly runs DDP instead. Torch's FSDP2 runs on gloo, so for tests/test_fsdp.py this
entry point routes a multi-CPU run to FSDP as accelerate routes a multi-GPU one; from there on,
accelerate's own FSDP2 preparation (sharding, mixed precision, activation checkpointing) runs
unchanged.
"""

import os
import sys

from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

_init = AcceleratorState.__init__


def _init_routing_cpu_to_fsdp(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    wants_fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if wants_fsdp and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = FullyShardedDataParallelPlugin()  # read from the config's environment
        if self._mixed_precision != "no":
            self.fsdp_plugin.set_mixed_precision(self._mixed_precision)


AcceleratorState.__init__ = _init_routing_cpu_to_fsdp

if __name__ == "__main__":
    from arlon.cli import main

    sys.exit(main(sys.argv[1:]))
