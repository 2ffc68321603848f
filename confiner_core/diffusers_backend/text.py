"""Prompt embeddings computed here rather than with a pipeline's ``encode_prompt``.

Each expert has its own tokenizer and text encoder (ModelScope's is 1024 wide, SD 1.5's 768, SDXL concatenates
two and adds a pooled embedding); only experts loaded with the same encoder share its embeddings. The pipelines' ``clip_skip`` path is
broken with transformers >= 5.6, which removed ``CLIPTextModel.text_model`` (diffusers-notes §1), so the final layer
norm is looked up on either layout.

Every encoder remembers its last few prompts (:class:`RecentPrompts`): the experts of a chain that share one text
encoder (AnimateDiff and SD 1.5, the two transformers of a Wan 2.2 pair) encode each prompt once. Each prompt goes
through the encoder alone, as diffusers' pipelines encode a prompt and its negative: in a batch its embedding
changes in the last bits (the encoder's matrix products pick kernels by the batch's rows), so a prompt remembered
from an earlier call, its negative then encoded alone, gave one process another video for the same seed.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..errors import warn_doubtful
from ..sampling import host_to_device


def warn_if_truncated(tokenizer, prompts: list[str], max_length: int, reader) -> None:
    """A prompt longer than its text encoder reads is cut (as diffusers' pipelines cut it, saying so in their log):
    a :class:`~confiner_core.errors.ConFinerWarning` names the encoder and what it does not read. ``reader``: the
    text encoder."""
    room = max_length - tokenizer.num_special_tokens_to_add()
    for prompt in prompts:
        # (verbose=False: transformers' own "Token indices sequence length ..." came once per expert beside this)
        tokens = tokenizer(prompt, add_special_tokens=False, verbose=False).input_ids
        if len(tokens) > room:
            # decoded, as words (transformers 5's CLIP tokenizer leaves its word ends in convert_tokens_to_string:
            # 'd</w>word</w>...')
            lost = tokenizer.decode(tokens[room:]).strip()
            warn_doubtful(f"a prompt is {len(tokens) + max_length - room} tokens and {type(reader).__name__} reads "
                          f"{max_length}: the end is not read ({lost[:60]!r}{'…' if len(lost) > 60 else ''}); shorten "
                          f"it: {prompt[:40]!r}{'…' if len(prompt) > 40 else ''}")


def final_layer_norm(text_encoder) -> torch.nn.Module:
    """The CLIP final layer norm: on the model itself in transformers 5, under ``.text_model`` before."""
    return getattr(text_encoder, "text_model", text_encoder).final_layer_norm


class RecentPrompts:
    """A prompt encoder that keeps the conditionings of the ``keep`` prompts it used last (0: none):
    ``encoder(prompt)`` and ``encoder.encode_all(prompts)`` run the text encoder only for prompts it does not hold,
    one :meth:`encode` call each (an embedding is a function of its text alone). The prompts are the key: call
    :meth:`forget` after changing the encoder's weights (benchmarks call it before every timed run, so each run pays
    its text encoding as a new process would)."""

    keep = 8
    networks: list = []  # the text encoders speed settings apply to (CUDA graphs: the CLIP encoders)

    def encode(self, prompt: str):
        raise NotImplementedError

    def encode_all(self, prompts: list[str]) -> list:
        recent = self.__dict__.setdefault("_recent", {})
        new = list(dict.fromkeys(p for p in prompts if p not in recent))
        found = {p: recent.pop(p) for p in dict.fromkeys(prompts) if p in recent}
        found.update((prompt, self.encode(prompt)) for prompt in new)
        for prompt in dict.fromkeys(prompts):  # used now: the newest, in the order asked
            recent[prompt] = found[prompt]
        while len(recent) > max(self.keep, 0):
            recent.pop(next(iter(recent)))  # the one used longest ago
        return [found[p] for p in prompts]

    def __call__(self, prompt: str):
        return self.encode_all([prompt])[0]

    def forget(self) -> None:
        self.__dict__.get("_recent", {}).clear()


class PromptEncoder(RecentPrompts):
    """Tokenizer + text encoder: ``encoder(prompt)`` -> embeddings ``[1, L, D]`` as SD pipelines compute them
    (padded to the tokenizer's max length, truncated beyond it; ``clip_skip`` counts layers from the end)."""

    def __init__(self, tokenizer, text_encoder, clip_skip: int | None = None):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.clip_skip = clip_skip

    @property
    def networks(self) -> list:
        return [self.text_encoder]

    @property
    def width(self) -> int:
        """Width of the embeddings, which must equal the UNet's ``cross_attention_dim``."""
        return self.text_encoder.config.hidden_size

    def tokenize(self, prompts: str | list[str]) -> dict:
        return self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                              truncation=True, return_tensors="pt")

    @torch.no_grad()
    def encode(self, prompt: str) -> torch.Tensor:
        warn_if_truncated(self.tokenizer, [prompt], self.tokenizer.model_max_length, self.text_encoder)
        tokens = self.tokenize([prompt])
        device = self.text_encoder.device
        # SD pipelines pass the mask only to encoders trained with one (config.use_attention_mask)
        use_mask = getattr(self.text_encoder.config, "use_attention_mask", False)
        mask = host_to_device(tokens.attention_mask, device) if use_mask else None
        ids = host_to_device(tokens.input_ids, device)
        if self.clip_skip is None:
            embeds = self.text_encoder(ids, attention_mask=mask)[0]
        else:
            out = self.text_encoder(ids, attention_mask=mask, output_hidden_states=True)
            embeds = final_layer_norm(self.text_encoder)(out.hidden_states[-(self.clip_skip + 1)])
        return embeds


class SDXLConditioning(NamedTuple):
    """One SDXL prompt: ``embeds [1, L, D1 + D2]`` (both encoders' penultimate layers, concatenated) and
    ``pooled [1, P]`` (the second encoder's projected output)."""

    embeds: torch.Tensor
    pooled: torch.Tensor


class SDXLPromptEncoder(RecentPrompts):
    """SDXL's two CLIP encoders as ``StableDiffusionXLPipeline.encode_prompt`` uses them: every encoder's
    penultimate hidden states (``clip_skip`` more layers back), concatenated, and the pooled projection of the
    last encoder that has one. ``zero_empty`` (the pipeline's ``force_zeros_for_empty_prompt``): the empty
    prompt is all zeros, as SDXL's unconditional branch is when no negative prompt is given."""

    def __init__(self, tokenizers: list, text_encoders: list, zero_empty: bool = True, clip_skip: int | None = None):
        self.tokenizers, self.text_encoders = list(tokenizers), list(text_encoders)
        self.zero_empty = zero_empty
        self.clip_skip = clip_skip

    @property
    def networks(self) -> list:
        return list(self.text_encoders)

    @property
    def width(self) -> int:
        return sum(te.config.hidden_size for te in self.text_encoders)

    @property
    def pooled_width(self) -> int:
        return int(self.text_encoders[-1].config.projection_dim)

    @torch.no_grad()
    def encode(self, prompt: str) -> SDXLConditioning:
        hidden, pooled = [], None
        for tokenizer, text_encoder in zip(self.tokenizers, self.text_encoders):
            warn_if_truncated(tokenizer, [prompt], tokenizer.model_max_length, text_encoder)
            ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                            return_tensors="pt").input_ids
            ids = host_to_device(ids, text_encoder.device)
            out = text_encoder(ids, output_hidden_states=True)
            if out[0].ndim == 2:      # CLIPTextModelWithProjection: text_embeds first
                pooled = out[0]
            hidden.append(out.hidden_states[-(2 + (self.clip_skip or 0))])
        embeds = torch.cat(hidden, dim=-1)
        if self.zero_empty and prompt == "":
            return SDXLConditioning(torch.zeros_like(embeds), torch.zeros_like(pooled))
        return SDXLConditioning(embeds, pooled)
