"""ChatTTS text tokenizer through the `tokenizers` library (no transformers).

The published `asset/tokenizer/tokenizer.json` switches on truncation (256) and fixed padding (256). Upstream
reads it through transformers' BertTokenizerFast, which ignores both; the raw library applies them, which would
cut long prompts and pad every prompt. Both are switched off here after loading.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer


class TextTokenizer:
    def __init__(self, folder: Path | None, num_text_tokens: int, json_text: str | None = None) -> None:
        """From `folder`/tokenizer.json, or from that file's text (`json_text`: a CPU stage gets it shipped)."""
        path = "tokenizer.json (text)" if json_text is not None else Path(folder) / "tokenizer.json"
        self._tokenizer = Tokenizer.from_str(json_text) if json_text is not None else Tokenizer.from_file(str(path))
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        size = self._tokenizer.get_vocab_size(with_added_tokens=True)
        self.vocab_size = size
        if size != num_text_tokens:
            raise ValueError(f"{path}: vocabulary has {size} tokens; the model's text embedding has {num_text_tokens}")
        self.spk_emb_id = self.token_id("[spk_emb]")
        self.break_0_id = self.token_id("[break_0]")
        self.eos_id = self.token_id("[Ebreak]")

    def token_id(self, token: str) -> int:
        found = self._tokenizer.token_to_id(token)
        if found is None:
            raise ValueError(f"tokenizer has no {token!r} token; is this a ChatTTS tokenizer?")
        return found

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tokenizer.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        """Token ids -> text as upstream's tokenizer decodes them (special tokens kept verbatim, WordPiece joined)."""
        return self._tokenizer.decode(ids, skip_special_tokens=False)

    def count(self, text: str) -> int:
        return len(self.encode(text))
