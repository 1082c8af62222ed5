"""Evaluation: how good each stage and the whole system are, measured without pretrained judges.

- `heldout`: the shapes-world seeds no training data uses;
- `recon`: reconstruction quality of any video autoencoder (our VAE, a pretrained one, either with
  the latent VQ-VAE round trip): PSNR, SSIM and detector attribute accuracy on held-out shapes-world
  clips; PSNR and SSIM on real footage;
- `ar`: the AR transformer's coarse videos, judged by the world metrics;
- `dit`: DiTs teacher-forced (an oracle diagnostic) per number of steps;
- `generation`: whole generations of the pipeline (prompts and timelines), by the world metrics;
- `suite`, `suite_report`, `claims`: suites of prompts in three modes (ARLON, AR-only, the baseline),
  their reports, and the paper's claims checked on them; `vbench`: VBench-style dimensions;
- `bench`: speed and memory.
"""
