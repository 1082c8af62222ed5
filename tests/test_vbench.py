"""VBench dimensions on synthetic videos built to have or lack each property."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    ViTConfig,
    ViTModel,
)

from arlon.errors import ArlonError
from arlon.evaluation.vbench import (
    clip_spans,
    consistency,
    dynamic_degree,
    dynamic_thresholds,
    flow_scores,
    load_backbone,
    motion_smoothness,
    score_video,
    subject_consistency,
    temporal_flickering,
)

RED, GREEN, BLUE, YELLOW = (220, 40, 40), (40, 220, 40), (40, 40, 220), (220, 220, 40)


def shapes_video(xs, size=64, colours=None, shapes=None):
    """One object per frame at x = `xs[t]` on a grey background: `(T, size, size, 3)` uint8."""
    side = size // 4
    video = np.full((len(xs), size, size, 3), 90, np.uint8)
    yy, xx = np.mgrid[:size, :size]
    top = size // 2 - side // 2
    for t, x in enumerate(xs):
        if shapes is not None and shapes[t] == "circle":
            r = side / 2
            mask = (xx - x - r) ** 2 + (yy - top - r) ** 2 <= r * r
        else:
            mask = (xx >= x) & (xx < x + side) & (yy >= top) & (yy < top + side)
        video[t][mask] = RED if colours is None else colours[t]
    return video


def steady(num_frames=16, step=2, size=64):
    return shapes_video([4 + step * t for t in range(num_frames)], size)


def static(num_frames=16, size=64):
    return shapes_video([20] * num_frames, size)


# ------------------------------------------------------------------------------------------------
# Dynamic degree
# ------------------------------------------------------------------------------------------------


def test_dynamic_degree_moving_vs_static():
    moving = steady(step=3)
    assert flow_scores(moving) == pytest.approx(np.full(15, 3.0), abs=0.2)
    assert dynamic_degree(moving) == 1.0
    assert flow_scores(static()) == pytest.approx(np.zeros(15), abs=1e-3)
    assert dynamic_degree(static()) == 0.0
    # the list-of-frames form reads the same
    assert dynamic_degree(list(moving)) == 1.0


def test_dynamic_threshold_scales_with_resolution():
    assert dynamic_thresholds(256, 512, 16) == (6.0, 4)
    assert dynamic_thresholds(64, 64, 16) == (1.5, 4)
    assert dynamic_thresholds(32, 48, 32) == (0.75, 8)
    # one pixel a frame: a large move at 32 px, below the threshold at 64 px
    assert dynamic_degree(steady(step=1, size=32)) == 1.0
    assert dynamic_degree(steady(step=1, size=64)) == 0.0
    # at 16 fps every other frame is kept (~8 fps): two pixels per kept pair
    assert dynamic_degree(steady(num_frames=32, step=1), fps=16) == 1.0


def test_dynamic_degree_needs_enough_moving_pairs():
    # 16 frames need round(4 * 16 / 16) = 4 moving pairs: 3 moves are not enough, 4 are
    xs = [10] * 16
    for t in range(1, 4):
        xs[t:] = [x + 4 for x in xs[t:]]
    assert dynamic_degree(shapes_video(xs)) == 0.0
    xs[4:] = [x + 4 for x in xs[4:]]
    assert dynamic_degree(shapes_video(xs)) == 1.0


# ------------------------------------------------------------------------------------------------
# Motion smoothness and temporal flickering
# ------------------------------------------------------------------------------------------------


def test_motion_smoothness_prefers_steady_motion():
    smooth = steady()
    jumpy = smooth.copy()
    jumpy[1::2] = shapes_video([4 + 2 * t + 6 for t in range(1, 16, 2)])
    assert motion_smoothness(static()) == 1.0
    assert motion_smoothness(smooth) > 0.999
    assert motion_smoothness(jumpy) < motion_smoothness(smooth) - 0.01


def test_temporal_flickering_matches_brightness_change():
    video = static()
    assert temporal_flickering(video) == 1.0
    flicker = video.copy()
    flicker[1::2] += 20  # every pixel changes by 20 at every frame step
    assert temporal_flickering(flicker) == pytest.approx((255 - 20) / 255)


# ------------------------------------------------------------------------------------------------
# Consistency
# ------------------------------------------------------------------------------------------------


def test_consistency_formula():
    e0, e1 = np.eye(2)
    # frame 1 vs first and previous: (0 + 0) / 2; frame 2: (1 + 0) / 2; negatives count as 0
    assert consistency(np.stack([e0, e1, e0])) == pytest.approx(0.25)
    assert consistency(np.stack([e0, -e0])) == 0.0
    assert consistency(np.stack([e1] * 5)) == pytest.approx(1.0)


def test_subject_consistency_drops_when_the_object_changes():
    same = static()
    changing = shapes_video(
        [20] * 16,
        colours=[(RED, GREEN, BLUE, YELLOW)[t // 4] for t in range(16)],
        shapes=["square" if t // 4 % 2 == 0 else "circle" for t in range(16)],
    )
    assert subject_consistency(same) == pytest.approx(1.0)
    assert subject_consistency(changing) < 0.95
    # the default backbone looks at shapes and colours, not places: moving does not count
    assert subject_consistency(steady()) > 0.98


# ------------------------------------------------------------------------------------------------
# Long videos
# ------------------------------------------------------------------------------------------------


def test_clip_spans():
    assert clip_spans(32, 16) == [(0, 16), (16, 32)]
    assert clip_spans(40, 16) == [(0, 16), (16, 32), (24, 40)]
    assert clip_spans(10, 16) == [(0, 10)]


def test_long_video_is_the_mean_over_clips():
    video = np.concatenate([static(), steady(step=3), steady(step=2)[::-1]])  # 48 frames
    report = score_video(video)
    assert report["backbone"] == "thumbnail-16"
    assert report["dynamic_degree"] == pytest.approx(2 / 3)
    clips = [video[i : i + 16] for i in (0, 16, 32)]
    assert report["temporal_flickering"] == pytest.approx(
        np.mean([temporal_flickering(c) for c in clips])
    )
    assert report["subject_consistency"] == pytest.approx(
        np.mean([subject_consistency(c) for c in clips])
    )
    assert set(score_video(video[:10], names=["motion_smoothness"])) == {
        "motion_smoothness",
        "backbone",
    }


# ------------------------------------------------------------------------------------------------
# Backbones and errors
# ------------------------------------------------------------------------------------------------


IMAGENET = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
OPENAI_CLIP = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def tiny_model(saved):
    """A random tiny ViT of 32 px as `save_pretrained` writes it (DINO-like, CLIP vision or whole
    CLIP), with what it should embed a frame to, and the normalisation its backbone applies."""
    vision = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2)
    vision.update(num_attention_heads=2, intermediate_size=64)
    if saved == "vit":
        model = ViTModel(ViTConfig(**vision))
        return model, lambda x: model(pixel_values=x).last_hidden_state[:, 0], IMAGENET
    if saved == "clip-vision":
        model = CLIPVisionModelWithProjection(CLIPVisionConfig(**vision, projection_dim=16))
        return model, lambda x: model(pixel_values=x).image_embeds, OPENAI_CLIP
    text = dict(vision, vocab_size=100, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    for key in ("image_size", "patch_size"):
        text.pop(key)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    return (
        model,
        lambda x: model.visual_projection(model.vision_model(pixel_values=x).pooler_output),
        OPENAI_CLIP,
    )


@pytest.mark.parametrize(
    ("kind", "saved", "dim"),
    [("dino", "vit", 32), ("clip", "clip-vision", 16), ("clip", "clip", 16)],
)
def test_pretrained_backbone_from_a_local_folder(tmp_path, kind, saved, dim):
    torch.manual_seed(0)
    model, embed, (mean, std) = tiny_model(saved)
    model.eval().save_pretrained(tmp_path / "tiny")

    backbone = load_backbone(kind, tmp_path / "tiny")
    assert backbone.name == f"{kind}:tiny"
    features = backbone(steady(num_frames=5, size=48))  # resized and cropped to 32 px
    assert features.shape == (5, dim)
    assert np.linalg.norm(features, axis=1) == pytest.approx(np.ones(5), abs=1e-5)

    # at the model's own size, the features are the saved model's output on normalised pixels
    frames = steady(num_frames=3, size=32)
    pixels = torch.from_numpy(frames).permute(0, 3, 1, 2) / 255 - torch.tensor(mean)[:, None, None]
    with torch.no_grad():
        expected = F.normalize(embed(pixels / torch.tensor(std)[:, None, None]), dim=-1)
    assert backbone(frames) == pytest.approx(expected.numpy(), abs=1e-5)

    report = score_video(static(num_frames=4), ["subject_consistency"], backbone=backbone)
    assert report == {"subject_consistency": pytest.approx(1.0), "backbone": f"{kind}:tiny"}


def test_bad_names_and_folders_say_how_to_fix(tmp_path):
    with pytest.raises(ArlonError, match="choose from dynamic_degree, motion_smoothness"):
        score_video(static(), names=["sharpness"])
    with pytest.raises(ArlonError, match="choose one of thumbnail, dino, clip"):
        load_backbone("resnet")
    with pytest.raises(ArlonError, match="--backbone-path DIR.*facebook/dino-vitb16"):
        load_backbone("dino")
    with pytest.raises(ArlonError, match="is not a folder.*--backbone-path"):
        load_backbone("clip", tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArlonError, match="saved by transformers' save_pretrained"):
        load_backbone("dino", tmp_path / "empty")
    with pytest.raises(ArlonError, match=r"uint8 frames \(T, H, W, 3\)"):
        temporal_flickering(np.zeros((4, 8, 8, 3), np.float32))
