"""Rectified flow for video latents: the training target, the timestep distribution, the sampler.

Sign convention (once, for the whole project): time runs from data to noise,

    x_t = (1 - t) * x_0 + t * noise,      t in [0, 1]      (t = sigma = timestep / 1000)

and the model predicts the velocity `v = dx_t/dt = noise - x_0`. diffusers'
`FlowMatchEulerDiscreteScheduler` uses the same convention: its sigmas fall from 1 to 0 and one Euler
step is `x <- x + (sigma_next - sigma) * v`, so a model output can be handed to `scheduler.step`
as it is.

Training timesteps are logit-normal (SD3, Esser et al. 2024, arxiv.org/abs/2403.03206) and then
shifted towards noise for larger videos (Open-Sora v1.2): `t <- s t / (1 + (s - 1) t)` with
`s = sqrt(pixels / base_pixels) * sqrt(frames / base_frames)`; sampling shifts its sigmas the same way.

Reference frames (`frame_mask` True) are clean data: the model sees them at timestep 0, the loss
leaves them out, and the sampler puts them back after every step, so they stay exactly as given.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from arlon.errors import ArlonError

NUM_TRAIN_TIMESTEPS = 1000

# velocity(x, timestep (B,), text_states | None, text_mask | None, frame_mask=...) -> v
Denoiser = Callable[..., torch.Tensor]


def resolution_shift(
    frames: int, height: int, width: int, base: tuple[int, int, int] = (1, 1, 1)
) -> float:
    """Open-Sora v1.2's timestep shift for a latent of `frames` x `height` x `width`, relative to a
    `base` (frames, height, width) at which the shift is 1."""
    space = math.sqrt(height * width / (base[1] * base[2]))
    return space * math.sqrt(frames / base[0])


def shift_timesteps(t: torch.Tensor, shift: float) -> torch.Tensor:
    return shift * t / (1 + (shift - 1) * t)


def sample_timesteps(
    batch_size: int, shift: float = 1.0, generator: torch.Generator | None = None, device=None
) -> torch.Tensor:
    """Training timesteps `(B,)` in (0, 1): logit-normal (mean 0, std 1), then shifted."""
    t = torch.sigmoid(torch.randn(batch_size, generator=generator, device=device))
    return shift_timesteps(t, shift)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """`x_t` for latents `(B, C, T, H, W)` at times `t` `(B,)` in [0, 1]."""
    t = t.view(-1, 1, 1, 1, 1).to(x0.dtype)
    return (1 - t) * x0 + t * noise


def flow_loss(
    model: Callable[..., torch.Tensor],
    x0: torch.Tensor,
    frame_mask: torch.Tensor | None = None,
    shift: float = 1.0,
    **model_kwargs,
) -> torch.Tensor:
    """Mean squared error of the predicted velocity on latents `(B, C, T, H, W)`, over the frames
    that are not references (`frame_mask` `(B, T)` True = reference, kept clean)."""
    b, t_len = x0.shape[0], x0.shape[2]
    t = sample_timesteps(b, shift, device=x0.device)
    noise = torch.randn_like(x0)
    xt = add_noise(x0, noise, t)
    if frame_mask is not None:
        xt = torch.where(frame_mask[:, None, :, None, None], x0, xt)
    v = model(xt, t * NUM_TRAIN_TIMESTEPS, frame_mask=frame_mask, **model_kwargs).float()
    error = (v - (noise - x0)).pow(2).mean(dim=(1, 3, 4))  # (B, T)
    weights = torch.ones(b, t_len, device=x0.device)
    if frame_mask is not None:
        weights = weights * ~frame_mask
    return (error * weights).sum() / weights.sum().clamp_min(1)


def scheduler(shift: float = 1.0) -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, shift=shift)


def guided(model, guidance_scale: float, **kwargs) -> Denoiser:
    """The model as a denoiser of one latent, with classifier-free guidance on the text when
    `guidance_scale` != 1: `null + scale * (text - null)`, both in one batch of two."""

    def velocity(x, timestep, text_states, text_mask, **extra):
        extra = {**kwargs, **extra}
        if guidance_scale == 1 or text_states is None:
            return model(x, timestep, text_states, text_mask, **extra)
        b = x.shape[0]
        both = {k: torch.cat([v, v]) if torch.is_tensor(v) else v for k, v in extra.items()}
        drop = torch.arange(2 * b, device=x.device) >= b  # the second half: the null caption
        out = model(
            torch.cat([x, x]),
            torch.cat([timestep, timestep]),
            torch.cat([text_states, text_states]),
            torch.cat([text_mask, text_mask]),
            drop_caption=drop,
            **both,
        )
        text, null = out[:b], out[b:]
        return null + guidance_scale * (text - null)

    return velocity


def strength_steps(num_inference_steps: int, strength: float) -> int:
    """How many of its `num_inference_steps` Euler steps a sampling at `strength` runs: the last
    `steps - int(steps * (1 - strength))` of the schedule, as diffusers' img2img pipelines (one at
    least; all of them at strength 1)."""
    return num_inference_steps - int(num_inference_steps - num_inference_steps * strength)


def check_strength(strength: float, num_inference_steps: int, whose: str = "the") -> None:
    """A one-line error unless `strength` lies in (0, 1] and, below 1, leaves out a step at least
    (one that keeps them all starts from pure noise: the latent it was given is thrown away).
    `whose` names it in the message ("the model's")."""
    if not 0 < strength <= 1:
        raise ArlonError(f"{whose} strength must lie in (0, 1], got {strength}")
    if strength < 1 and strength_steps(num_inference_steps, strength) == num_inference_steps:
        raise ArlonError(
            f"{whose} strength {strength:g} keeps all {num_inference_steps} steps, from pure "
            "noise: lower it or take more steps"
        )


@torch.no_grad()
def sample(
    velocity: Denoiser,
    noise: torch.Tensor,
    num_inference_steps: int,
    text_states: torch.Tensor | None = None,
    text_mask: torch.Tensor | None = None,
    reference: torch.Tensor | None = None,
    frame_mask: torch.Tensor | None = None,
    sched: FlowMatchEulerDiscreteScheduler | None = None,
    callback: Callable[[int, torch.Tensor], None] | None = None,
    start: torch.Tensor | None = None,
    strength: float = 1.0,
) -> torch.Tensor:
    """Denoise `noise` `(B, C, T, H, W)` from t = 1 to 0 in `num_inference_steps` Euler steps of
    `sched` (default: diffusers' `FlowMatchEulerDiscreteScheduler` without shift). Frames where
    `frame_mask` `(B, T)` is True are set to `reference` (same shape as `noise`) before every step
    and at the end: they stay exact.

    `strength` < 1 runs only the schedule's last `strength_steps` steps, from `start` (a clean
    latent of `noise`'s shape) noised to the first of their times, as diffusers' img2img pipelines
    (5 steps at strength 0.6: 3 steps from t = 0.5): the result keeps `start`'s layout and redraws
    its detail."""
    if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise ArlonError(
            f"the number of steps must be a positive integer, got {num_inference_steps}"
        )
    check_strength(strength, num_inference_steps)
    if strength < 1 and (start is None or start.shape != noise.shape):
        raise ArlonError("a strength below 1 needs a latent to start from, of the noise's shape")
    if frame_mask is not None:
        if frame_mask.shape != (noise.shape[0], noise.shape[2]):
            raise ArlonError(
                f"the reference mask covers {frame_mask.shape[-1]} frames, the segment "
                f"{noise.shape[2]}"
            )
        if reference is None:
            raise ArlonError("a reference mask needs the reference latent")
    sched = sched or scheduler()
    sched.set_timesteps(num_inference_steps, device=noise.device)
    timesteps, x = sched.timesteps, noise
    if strength < 1:
        first = num_inference_steps - strength_steps(num_inference_steps, strength)
        timesteps = timesteps[first:]
        sched.set_begin_index(first)
        x = sched.scale_noise(start.to(noise.dtype), timesteps[:1], noise)
    keep = None if frame_mask is None else frame_mask[:, None, :, None, None]
    for i, t in enumerate(timesteps):
        if keep is not None:
            x = torch.where(keep, reference.to(x.dtype), x)
        timestep = t.expand(x.shape[0])
        v = velocity(x, timestep, text_states, text_mask, frame_mask=frame_mask)
        x = sched.step(v.float(), t, x.float()).prev_sample
        if callback is not None:
            callback(i, x)
    if keep is not None:
        x = torch.where(keep, reference.to(x.dtype), x)
    return x
