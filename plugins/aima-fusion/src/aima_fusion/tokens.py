"""Prompt sizes in tokens: counted with the served model's tokenizer when one is configured, else estimated.

The estimate takes ASCII text at `chars_per_token` characters a token (English and JSON run at about 3.5-4 with
Llama 3's tokenizer) and every other character as a whole token (scripts outside Latin often take one or more),
then adds a margin. It errs on the large side: a prompt split once too often costs one request, one too long fails.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from aima.inference import Message

if TYPE_CHECKING:
    from tokenizers import Tokenizer

#: Tokens of the chat template around each message (Llama 3: header, role, end of turn).
MESSAGE_OVERHEAD = 8


class TokenCounter(Protocol):
    def count(self, text: str) -> int:
        """Tokens of `text`, margin included."""
        ...


class EstimatedTokens:
    def __init__(self, chars_per_token: float, margin: float) -> None:
        self.chars_per_token = chars_per_token
        self.margin = margin

    def count(self, text: str) -> int:
        ascii_chars = len(text.encode("ascii", "ignore"))
        raw = ascii_chars / self.chars_per_token + (len(text) - ascii_chars)
        return math.ceil(round(raw * (1 + self.margin), 6))  # 100 * 1.1 is 110.00000000000001


class TokenizerTokens:
    """Counts with a tokenizer.json (the `tokenizers` package), loaded once."""

    def __init__(self, path: Path, margin: float) -> None:
        from tokenizers import Tokenizer

        self._tokenizer: Tokenizer = Tokenizer.from_file(str(path))
        self.margin = margin

    def count(self, text: str) -> int:
        tokens = len(self._tokenizer.encode(text, add_special_tokens=False).ids)
        return math.ceil(tokens * (1 + self.margin / 4))  # exact counts need only room for the template


def prompt_tokens(counter: TokenCounter, messages: Sequence[Message]) -> int:
    return sum(counter.count(m.text) + MESSAGE_OVERHEAD for m in messages)
