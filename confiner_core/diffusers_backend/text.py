"""Prompt embeddings computed here rather than with a pipeline's ``encode_prompt``.

Each expert owns its tokenizer and text encoder (ModelScope's is 1024 wide, SD 1.5's 768), so embeddings are
never shared between experts. The pipelines' ``clip_skip`` path is broken with transformers >= 5.6, which
removed ``CLIPTextModel.text_model`` (diffusers-notes §1), so the final layer norm is looked up on either layout.
"""

from __future__ import annotations

import torch


def final_layer_norm(text_encoder) -> torch.nn.Module:
    """The CLIP final layer norm: on the model itself in transformers 5, under ``.text_model`` before."""
    return getattr(text_encoder, "text_model", text_encoder).final_layer_norm


class PromptEncoder:
    """Tokenizer + text encoder: ``encoder(prompt)`` -> embeddings ``[1, L, D]`` as SD pipelines compute them
    (padded to the tokenizer's max length, truncated beyond it; ``clip_skip`` counts layers from the end)."""

    def __init__(self, tokenizer, text_encoder, clip_skip: int | None = None):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.clip_skip = clip_skip

    @property
    def width(self) -> int:
        """Width of the embeddings, which must equal the UNet's ``cross_attention_dim``."""
        return self.text_encoder.config.hidden_size

    def tokenize(self, prompt: str) -> dict:
        return self.tokenizer(prompt, padding="max_length", max_length=self.tokenizer.model_max_length,
                              truncation=True, return_tensors="pt")

    @torch.no_grad()
    def __call__(self, prompt: str) -> torch.Tensor:
        tokens = self.tokenize(prompt)
        device = self.text_encoder.device
        # SD pipelines pass the mask only to encoders trained with one (config.use_attention_mask)
        use_mask = getattr(self.text_encoder.config, "use_attention_mask", False)
        mask = tokens.attention_mask.to(device) if use_mask else None
        ids = tokens.input_ids.to(device)
        if self.clip_skip is None:
            return self.text_encoder(ids, attention_mask=mask)[0]
        out = self.text_encoder(ids, attention_mask=mask, output_hidden_states=True)
        return final_layer_norm(self.text_encoder)(out.hidden_states[-(self.clip_skip + 1)])
