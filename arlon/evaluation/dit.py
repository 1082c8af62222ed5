"""How good a DiT is on its own, teacher-forced: an ORACLE diagnostic, never the basis of a claim.

Each held-out clip of the shapes world is encoded by the VAE; its first `reference` latent frames are
the clean reference and the rest is generated from noise in N Euler steps, guided (for ARLON) by the
fine VQ-VAE's reconstruction of the clip's own latent (`condition="fine"`: what a perfect AR would
give) or of codes the AR transformer samples, teacher-forced, after the clip's true codes
(`condition="ar"`: the AR's per-token errors without its drift over a long video). The generated
frames are decoded and judged against the clip's ground truth (object accuracy, colour, shape,
motion, count, identity) and by PSNR against the real frames. ARLON's condition here comes from the
clip's own latent while the baseline has only the text, so the comparison flatters ARLON: whole
generations (`arlon eval --suite`) decide the claims.

    report = teacher_forced(dit, vae, vq, text_encoder, steps=(1, 3, 5, 10, 30), use_condition=True)
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from arlon.diffusion.rectified_flow import guided, sample
from arlon.evaluation.heldout import HELDOUT_SEED
from arlon.frames import from_frames, psnr, to_frames
from arlon.world.metrics import Expected, mean_judged, score_video
from arlon.world.render import render_states
from arlon.world.simulate import random_episode

METRICS = ("object_accuracy", "colour", "shape", "background", "motion", "count", "identity")


def _clips(clips: int, num_frames: int, seed: int):
    """Held-out clips: (episode, frames (T, H, W, 3) uint8)."""
    for i in range(clips):
        episode = random_episode((seed, i), num_frames, events=False)
        yield episode, np.stack(list(render_states(episode.frames())))


@torch.inference_mode()
def teacher_forced(
    dit,
    vae,
    vq,
    text_encoder,
    steps: tuple[int, ...] = (1, 3, 5, 10, 30),
    use_condition: bool = True,
    condition: str = "fine",
    ar=None,
    clips: int = 64,
    num_frames: int = 33,
    reference: int = 2,
    guidance_scale: float = 1.0,
    batch_size: int = 16,
    seed: int = HELDOUT_SEED,
    progress: bool = True,
) -> dict:
    """Mean world metrics of the generated frames per number of steps: `{steps: {metric: value}}`.

    `use_condition=False` runs the model without the coarse latent (a baseline, or an ARLON model's
    backbone alone)."""
    data = list(_clips(clips, num_frames, seed))
    first = vae.video_frames(reference)  # video frames the reference latents decode to
    results = {s: {m: [] for m in (*METRICS, "psnr")} for s in steps}
    bar = tqdm(total=len(steps) * clips, desc="teacher-forced", unit="clip", disable=not progress)
    for start in range(0, clips, batch_size):
        batch = data[start : start + batch_size]
        latents = vae.encode(from_frames(np.stack([f for _, f in batch])))  # (B, C, T', h, w)
        text = text_encoder.encode([e.timeline[0][1] for e, _ in batch])
        cond = None
        if use_condition:
            codes = vq.encode(latents)  # (B, T', h, w)
            if condition == "ar":
                codes = ar_codes(ar, text, codes, reference, seed + start)
            cond = vq.decode_codes(codes, num_frames=latents.shape[2])
        b, t = latents.shape[0], latents.shape[2]
        frame_mask = (torch.arange(t) < reference)[None].expand(b, t)
        velocity = guided(dit, guidance_scale, condition=cond)
        generator = torch.Generator().manual_seed(seed + start)
        noise = torch.randn(latents.shape, generator=generator)
        for s in steps:
            out = sample(velocity, noise, s, text.states, text.mask, latents, frame_mask)
            frames = to_frames(vae.decode(out))  # (B, T, H, W, 3)
            for (episode, real), fake in zip(batch, frames, strict=True):
                truth = Expected.from_truth(episode.truth())
                n = num_frames - first
                expected = Expected(
                    truth.specs, [0], n, truth.height, truth.width, truth.hidden[first:]
                )
                summary = score_video(list(fake[first:]), expected).summary()
                for m in METRICS:
                    results[s][m].append(summary[m])
                results[s]["psnr"].append(psnr(real[first:], fake[first:]))
            bar.update(len(batch))
    bar.close()
    return {
        s: {m: mean_judged(v) for m, v in per_metric.items()} for s, per_metric in results.items()
    }


def ar_codes(ar, text, codes: torch.Tensor, keep: int, seed: int) -> torch.Tensor:
    """Codes `(B, t, h, w)` with every token frame from `keep` on drawn from the AR's teacher-forced
    distribution (temperature 1): each frame given the true frames before it, within the AR's
    context."""
    b, t = codes.shape[:2]
    context = ar.config.max_frames
    generator = torch.Generator().manual_seed(seed)
    out = codes.clone()
    for f in range(keep, t):
        first = max(0, f - context + 1)
        logits = ar(text.states, text.mask, codes[:, first : f + 1], first_frame=first)
        last = logits[:, -ar.tokens_per_frame :].float().softmax(-1)  # (B, h*w, K)
        drawn = torch.multinomial(last.flatten(0, 1), 1, generator=generator)
        out[:, f] = drawn.view(b, *codes.shape[2:])
    return out
