"""Tokenizer models the tiny test models share, built offline: no diffusers or transformers import here, so a
ComfyUI worker can build its tiny UMT5 file with it (``comfy_support/tiny_modern_files.py``) as cheaply as
``tiny_modern.py`` builds the diffusers folders.

Nothing is downloaded: the UMT5 tokenizer is a SentencePiece unigram model trained on a fixed word list with
``num_threads=1``, so it is the same on every machine.
"""

from __future__ import annotations

import functools
import io

WORDS = ("a the cat dog fox bird runs walks jumps flies on over under in with and of to grass field river sky "
         "forest city street night day sunset red blue green golden white black small big slow fast camera video "
         "image photo cinematic detailed blurry ugly low quality").split()


@functools.lru_cache(maxsize=None)
def umt5_spiece_model() -> bytes:
    """A SentencePiece unigram model (the ``spiece.model`` bytes ComfyUI's UMT5 tokenizer reads) over WORDS plus
    every printable ASCII character, so no prompt of plain text meets ``<unk>``."""
    import sentencepiece as spm

    chars = "".join(chr(c) for c in range(33, 127))
    sentences = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))] + [" ".join(chars)] * 4
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_writer=model, vocab_size=256,
                                   model_type="unigram", num_threads=1, character_coverage=1.0,
                                   hard_vocab_limit=False, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   minloglevel=2)
    return model.getvalue()
