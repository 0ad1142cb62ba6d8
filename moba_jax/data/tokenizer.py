"""Byte-level tokenizer: every UTF-8 byte is a token, plus three special ids.

The vocabulary is fixed and needs no training or files, so every machine and
every run agrees on it::

        ids 0..255  the raw bytes of the UTF-8 encoded text
        256         PAD  fills the unused tail of the last packed row (never trained on)
        257         BOS  first token of every document
        258         EOS  last token of every document

Example::

        tok = ByteTokenizer()
        ids = tok.encode("héllo")      # int32 [6]: 'é' is two bytes
        tok.decode(ids)                # 'héllo'
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

PAD_ID = 256
BOS_ID = 257
EOS_ID = 258
VOCAB_SIZE = 259


class ByteTokenizer:
    """Maps text to UTF-8 byte ids and back; see the module docstring for ids."""

    vocab_size: int = VOCAB_SIZE
    pad_id: int = PAD_ID
    bos_id: int = BOS_ID
    eos_id: int = EOS_ID

    def encode(self, text: str | bytes, *, add_bos: bool = False,
               add_eos: bool = False) -> np.ndarray:
        """Returns int32 token ids [n] of `text` (str is UTF-8 encoded first).

        Specials are only added when asked for; the data pipeline adds BOS/EOS
        itself when it packs documents.
        """
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        ids = np.frombuffer(data, dtype=np.uint8).astype(np.int32)
        if add_bos or add_eos:
            parts = [np.array([BOS_ID], np.int32)] if add_bos else []
            parts.append(ids)
            if add_eos:
                parts.append(np.array([EOS_ID], np.int32))
            ids = np.concatenate(parts)
        return ids

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Returns the text of `ids`, dropping PAD/BOS/EOS.

        Byte sequences that are not valid UTF-8 (e.g. a model's sample cut in the
        middle of a multi-byte character) become U+FFFD instead of raising.
        """
        arr = np.asarray(ids).reshape(-1)
        if arr.size and (arr.min() < 0 or arr.max() >= VOCAB_SIZE):
            raise ValueError(
                    f"token ids must lie in [0, {VOCAB_SIZE}); got min={arr.min()}, "
                    f"max={arr.max()}")
        data = arr[arr < 256].astype(np.uint8).tobytes()
        return data.decode("utf-8", errors="replace")
