"""Split text into overlapping chunks measured in the model's own tokens (or in characters).

Pure Python: the tokenizer is passed in (a Hugging Face tokenizer, e.g. ``SentenceTransformer.tokenizer``), so
this is unit-testable without a database and without loading a model.
"""

from __future__ import annotations

from .errors import invalid

BY = ("tokens", "characters")


def validate(chunk_size: int | None, overlap: int | None, by: str = "tokens", max_tokens: int | None = None) -> None:
    """Raise a 22023 error naming the problem when the chunking settings cannot work."""
    if by not in BY:
        raise invalid(
            f'chunking by "{by}" is not supported' if by is not None else "chunk_by must not be NULL",
            hint="use by => 'tokens' or by => 'characters'",
        )
    if chunk_size is None:
        return
    if chunk_size <= 0:
        raise invalid(
            f"chunk_size must be positive, got {chunk_size}", hint="pass chunk_size => NULL to embed whole texts"
        )
    overlap = overlap or 0
    if overlap < 0 or overlap >= chunk_size:
        raise invalid(
            f"chunk overlap must be between 0 and chunk_size - 1 ({chunk_size - 1}), got {overlap}",
            hint=f"pass chunk_overlap => a number of {'tokens' if by == 'tokens' else 'characters'} below chunk_size",
        )
    if by == "tokens" and max_tokens and chunk_size > max_tokens - 2:
        raise invalid(
            f"chunk_size {chunk_size} tokens does not fit the model's window of {max_tokens} tokens",
            detail="the model adds 2 special tokens ([CLS], [SEP]) to every input",
            hint=f"use chunk_size <= {max_tokens - 2}",
        )


def chunk(text: str | None, chunk_size: int, overlap: int = 0, by: str = "tokens", tokenizer=None) -> list[str]:
    """Return the chunks of ``text`` in order. Chunks are slices of the original text (whitespace and case kept).

    by='tokens': windows of ``chunk_size`` tokens of ``tokenizer`` (without special tokens), each starting
    ``chunk_size - overlap`` tokens after the previous one; the last window ends at the last token.
    by='characters': the same over characters, cut back to the last whitespace when there is one in the window.
    """
    validate(chunk_size, overlap, by)
    if text is None:
        return []
    if not text.strip():
        return []
    step = chunk_size - (overlap or 0)
    if by == "characters":
        return _chunk_chars(text, chunk_size, step)
    if tokenizer is None:
        raise invalid(
            "token chunking needs the model's tokenizer", hint="pass the model's tokenizer, or chunk by 'characters'"
        )
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, truncation=False, verbose=False)
    offsets = [o for o in enc["offset_mapping"] if o[1] > o[0]]
    if not offsets:
        return [text]
    out = []
    n = len(offsets)
    start = 0
    while True:
        end = min(start + chunk_size, n)
        out.append(text[offsets[start][0] : offsets[end - 1][1]])
        if end >= n:
            break
        start += step
    return out


def _chunk_chars(text: str, size: int, step: int) -> list[str]:
    out = []
    start = 0
    n = len(text)
    while start < n:
        end = min(start + size, n)
        if end < n:
            cut = text.rfind(" ", start + max(1, size // 2), end)
            if cut > start:
                end = cut
        piece = text[start:end].strip()
        if piece:
            out.append(piece)
        if end >= n:
            break
        nxt = max(start + 1, end - (size - step))
        if nxt < end and not text[nxt - 1].isspace():  # do not start the overlap mid-word
            sp = text.find(" ", nxt, end)
            nxt = sp + 1 if sp != -1 else end
        start = nxt
    return out


def count_tokens(text: str, tokenizer) -> int:
    return len(tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"])
