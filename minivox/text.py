"""Text for speech: sentence splitting, the sentencepiece tokenizer, the TTS symbol set.

Sections, read top to bottom:

1. `split_sentences(text) -> list[str]`: sentence boundaries for streaming TTS.
2. `Tokenizer`: a sentencepiece (unigram or BPE) model trained in memory, with user-defined
   symbols such as `<EOU>` / `<EOB>` that always encode to one id; it serialises to bytes so
   it travels inside a checkpoint.
3. The TTS symbol set (FastPitch input): the characters of normalised text.

Normalisation (numbers as words, `normalize_text`) lives in `minivox.normalize`.
"""

from __future__ import annotations

import io
import re
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

from minivox.fileio import atomic_path
from minivox.normalize import fold_unicode

__all__ = [
    "split_sentences",
    "Tokenizer",
]

# =====================================================================================
# 1. Sentence splitting (for streaming TTS)
# =====================================================================================

_SENTENCE_END = re.compile(r"([.!?]+[\"')\]}]*)\s+(?=\S)")
# A period after these words does not end a sentence (titles and "e.g."-like abbreviations);
# "etc.", "Inc.", "Jr." may, and do when a capital follows.
_NO_SPLIT_AFTER = set(
    "mr mrs ms dr prof st mt sr gen col capt lt sgt rev hon gov sen rep fig vol vs e.g i.e cf approx ca pp".split()
)


def split_sentences(text: str) -> list[str]:
    """Split text into sentences, each stripped and non-empty; joining them with spaces gives
    the text with its whitespace collapsed.

    A sentence ends at "!" or "?" (with any closing quotes/brackets) before whitespace, at
    "." or "..." before whitespace and a character that is not a lowercase letter, and at
    every line break. A period does not end a sentence after a title or abbreviation ("Dr.",
    "e.g.", see _NO_SPLIT_AFTER), after a single capital ("J. Smith", "U.S. Army") or after a
    list number at the start of a line ("1. First"); "3.5" never splits (no space after ".").
    """
    sentences = []
    for line in text.splitlines():
        start = 0
        for match in _SENTENCE_END.finditer(line):
            if _ends_sentence(line, start, match):
                sentences.append(line[start : match.end(1)].strip())
                start = match.end()
        if line[start:].strip():
            sentences.append(line[start:].strip())
    return [s for s in sentences if s]


def _ends_sentence(line: str, start: int, match: re.Match) -> bool:
    """Does the punctuation `match` (in `line`, current sentence from `start`) end a sentence?"""
    punctuation = match.group(1)
    if "!" in punctuation or "?" in punctuation:
        return True
    if line[match.end()].islower():
        return False
    # the last few words only: looking at the whole sentence so far would be quadratic
    before = line[max(start, match.start() - 64) : match.start()].split()
    if not before:
        return False
    last_word = before[-1].lstrip("\"'([{")
    if last_word.lower() in _NO_SPLIT_AFTER or re.fullmatch(r"(?:[A-Z]\.)*[A-Z]", last_word):
        return False  # "Dr. Smith", "e.g. This", "J. Smith", "U.S. Army"
    if last_word.lower() == "no" and line[match.end()].isdigit():
        return False  # "No. 5"
    return not line[start : match.start()].strip().isdigit()  # "1. First item" at a line start


# =====================================================================================
# 2. Tokenizer (sentencepiece)
# =====================================================================================

MODEL_TYPES = ("unigram", "bpe")
_USER_DEFINED = 4  # sentencepiece ModelProto.SentencePiece.Type.USER_DEFINED


class Tokenizer:
    """A sentencepiece model (unigram or BPE) held as bytes, so it can live in a checkpoint.

    Ids are 0..vocab_size-1: 0 is `<unk>`, then the user-defined symbols in the order given
    (for ASR `<EOU>`, `<EOB>`), then the learned pieces. There are no bos/eos/pad ids unless
    asked for through `spm_options` (the RNNT blank is index vocab_size, outside this range).
    A user-defined symbol is always one id wherever it appears in the text ("yes<EOU>").

        tok = Tokenizer.train(transcripts, vocab_size=128)
        ids = tok.encode("hello world<EOU>")       # list[int]
        tok.decode(ids)                            # "hello world<EOU>"
        Tokenizer.from_bytes(tok.to_bytes())       # same model
    """

    def __init__(self, model: bytes):
        """Load a serialized sentencepiece ModelProto (what `to_bytes` returns)."""
        if not isinstance(model, (bytes, bytearray)) or not model:
            raise ValueError(f"Tokenizer expects serialized sentencepiece model bytes, got {type(model).__name__}")
        self._model = bytes(model)
        try:
            self._sp = spm.SentencePieceProcessor(model_proto=self._model)
        except RuntimeError as exc:
            raise ValueError(f"these {len(self._model)} bytes are not a sentencepiece model: {exc}") from None
        pieces = _read_pieces(self._model)
        assert len(pieces) == self._sp.get_piece_size(), (len(pieces), self._sp.get_piece_size())
        #: user-defined symbol -> its id, e.g. {"<EOU>": 1, "<EOB>": 2}
        self.user_symbol_ids: dict[str, int] = {p: i for i, (p, t) in enumerate(pieces) if t == _USER_DEFINED}

    # ---- training -------------------------------------------------------------------

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        model_type: str = "unigram",
        user_defined_symbols: Sequence[str] = ("<EOU>", "<EOB>"),
        character_coverage: float = 1.0,
        seed: int = 0,
        num_threads: int = 1,
        **spm_options,
    ) -> Tokenizer:
        """Train a tokenizer in memory on `texts` (one sentence or transcript per item).

        Args:
            texts: training text; empty and whitespace-only items are skipped.
            vocab_size: number of ids, including `<unk>` and the user-defined symbols.
            model_type: "unigram" or "bpe".
            user_defined_symbols: pieces that are always one id (never split, never merged).
            character_coverage: fraction of characters the model must cover (1.0 for the
                small alphabet of normalised text).
            seed: sentencepiece's random seed; with num_threads=1 training is deterministic.
            num_threads: trainer threads (1 keeps training reproducible).
            spm_options: any other sentencepiece trainer option (e.g. bos_id=1, eos_id=2,
                byte_fallback=True, max_sentence_length=8192).
        Raises:
            ValueError: no text, a vocabulary too large for the text, a bad option.
        """
        if model_type not in MODEL_TYPES:
            raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {model_type!r}")
        if isinstance(texts, str):
            raise ValueError("texts must be an iterable of strings, got one str (wrap it in a list)")
        symbols = list(user_defined_symbols)
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < len(symbols) + 2:
            raise ValueError(f"vocab_size must be an int >= {len(symbols) + 2} (<unk>, the {len(symbols)} "
                             f"user symbols and at least one piece), got {vocab_size!r}")  # fmt: skip
        lines = []
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"texts must be strings, item {i} is {type(text).__name__}")
            if text.strip():
                lines.append(text)
        if not lines:
            raise ValueError("cannot train a tokenizer on no text: every training line was empty")
        options = dict(
            vocab_size=vocab_size, model_type=model_type, user_defined_symbols=symbols,
            character_coverage=character_coverage, num_threads=num_threads,
            unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1, minloglevel=2,
        )  # fmt: skip
        options.update(spm_options)
        writer = io.BytesIO()
        spm.set_random_generator_seed(seed)
        try:
            spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=writer, **options)
        except RuntimeError as exc:
            raise ValueError(_explain_training_error(str(exc), vocab_size, len(lines))) from None
        return cls(writer.getvalue())

    @classmethod
    def train_from_files(cls, paths: Iterable[str | Path], vocab_size: int, **kwargs) -> Tokenizer:
        """Train on UTF-8 text files, one sentence per line; `kwargs` as in `train`."""
        lines = []
        for path in [paths] if isinstance(paths, (str, Path)) else paths:
            lines += Path(path).read_text(encoding="utf-8").splitlines()
        return cls.train(lines, vocab_size, **kwargs)

    # ---- use ------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids (pieces), including `<unk>` and the user-defined symbols."""
        return self._sp.get_piece_size()

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def unk_id(self) -> int:
        """Id of `<unk>`, the piece for characters the model never saw."""
        return self._sp.unk_id()

    def encode(self, text: str) -> list[int]:
        """Text -> ids (each in [0, vocab_size))."""
        if not isinstance(text, str):
            raise ValueError(f"encode expects a str, got {type(text).__name__}")
        return self._sp.encode(text)

    def encode_pieces(self, text: str) -> list[str]:
        """Text -> pieces (strings, "▁" marks a word start): for reading and debugging."""
        if not isinstance(text, str):
            raise ValueError(f"encode_pieces expects a str, got {type(text).__name__}")
        return self._sp.encode(text, out_type=str)

    def decode(self, ids: Iterable[int]) -> str:
        """Ids (ints, or a 1-D tensor/array of them) -> text."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token ids must be in [0, {self.vocab_size}), got {bad[:5]}")
        return self._sp.decode(ids)

    def piece_to_id(self, piece: str) -> int:
        """Id of a piece (e.g. "<EOU>", "▁the"); raises ValueError for a piece not in the vocabulary."""
        i = self._sp.piece_to_id(piece)
        if i == self.unk_id and piece != self._sp.id_to_piece(self.unk_id):
            raise ValueError(f"piece {piece!r} is not in the vocabulary of {self.vocab_size}")
        return i

    def id_to_piece(self, i: int) -> str:
        """Piece of an id in [0, vocab_size)."""
        if not 0 <= int(i) < self.vocab_size:
            raise ValueError(f"token id must be in [0, {self.vocab_size}), got {i}")
        return self._sp.id_to_piece(int(i))

    # ---- storage --------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The serialized sentencepiece model (store it in a checkpoint's "tokenizer" field)."""
        return self._model

    @classmethod
    def from_bytes(cls, model: bytes) -> Tokenizer:
        """Inverse of `to_bytes`."""
        return cls(model)

    def save(self, path: str | Path) -> Path:
        """Write the model to `path` (a standard sentencepiece .model file), atomically."""
        path = Path(path)
        with atomic_path(path) as tmp:
            tmp.write_bytes(self._model)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Read a sentencepiece .model file (ours or any other)."""
        return cls(Path(path).read_bytes())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tokenizer) and other._model == self._model

    def __hash__(self) -> int:
        return hash(self._model)

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, user_symbols={list(self.user_symbol_ids)})"


def _explain_training_error(message: str, vocab_size: int, n_lines: int) -> str:
    """Turn sentencepiece's RuntimeError text into a ValueError message saying what to change."""
    too_high = re.search(r"Vocabulary size too high \((\d+)\).*<= (\d+)", message)
    if too_high:
        return (f"vocab_size={vocab_size} is too large for this training text ({n_lines} lines): it supports "
                f"at most {too_high.group(2)} pieces; lower vocab_size or train on more text")  # fmt: skip
    unknown = re.search(r'unknown field name "([^"]+)"', message)
    if unknown:
        return f"unknown sentencepiece trainer option {unknown.group(1)!r}"
    return f"sentencepiece training failed on {n_lines} lines with vocab_size={vocab_size}: {message}"


def _read_pieces(model: bytes) -> list[tuple[str, int]]:
    """(piece, type) for every id of a serialized sentencepiece ModelProto.

    A minimal protobuf reader (the protobuf package is not a dependency): ModelProto field 1
    is the repeated SentencePiece message, whose field 1 is the piece (string) and field 3
    the type (varint; 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte).
    """
    pieces = []
    for field, value in _proto_fields(model):
        if field == 1:
            piece, kind = "", 1  # proto defaults
            for sub_field, sub_value in _proto_fields(value):
                if sub_field == 1:
                    piece = sub_value.decode("utf-8")
                elif sub_field == 3:
                    kind = sub_value
            pieces.append((piece, kind))
    return pieces


def _proto_fields(data: bytes):
    """Yield (field number, value) of a protobuf message: varints as int, length-delimited as
    bytes, fixed 32/64-bit fields as raw bytes."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        field, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, pos = _varint(data, pos)
        elif wire_type == 2:
            length, pos = _varint(data, pos)
            value, pos = data[pos : pos + length], pos + length
        elif wire_type in (1, 5):
            size = 8 if wire_type == 1 else 4
            value, pos = data[pos : pos + size], pos + size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type} at byte {pos}")
        yield field, value


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """Decode a protobuf varint at `pos`; returns (value, position after it)."""
    value, shift = 0, 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


# =====================================================================================
# 3. TTS symbol set (FastPitch input)
# =====================================================================================
# FastPitch reads characters of normalised text, not phonemes. Phonemes would need a
# pronunciation lexicon plus a letter-to-sound model for unknown words; the usual source is
# espeak-ng, an external program at run time, which minivox does not depend on. Characters
# cost the model some capacity (English spelling is irregular), but every normalised string
# is speakable and the aligner learns the mapping from audio.
#
# normalize_text leaves lowercase a-z, the apostrophe and single spaces, so that is the whole
# alphabet; id 0 is padding. A space is added at both ends of every utterance: the aligner
# gives the leading and trailing silence (and any pause) to space symbols instead of
# stretching the first and last letters.

TTS_PAD = "<pad>"  # id 0: padding, never inside an utterance
TTS_CHARACTERS = " 'abcdefghijklmnopqrstuvwxyz"  # ids 1..28, in this order
TTS_SYMBOLS: tuple[str, ...] = (TTS_PAD, *TTS_CHARACTERS)
TTS_PAD_ID = 0
_TTS_ID = {symbol: i for i, symbol in enumerate(TTS_SYMBOLS)}


def tts_symbol_ids(normalized: str) -> list[int]:
    """Symbol ids of already normalised text, with a space added at both ends: "hi" -> [1, 10, 11, 1].

    Raises ValueError naming the first character outside TTS_CHARACTERS (run normalize_text first).
    """
    for ch in normalized:
        if ch not in _TTS_ID or ch == TTS_PAD:
            raise ValueError(f"tts_symbol_ids: expected normalised text of {TTS_CHARACTERS!r}, got {ch!r} "
                             f"in {normalized[:60]!r}")
    return [_TTS_ID[ch] for ch in f" {normalized.strip()} "]


def unspeakable_characters(text: str) -> list[str]:
    """The distinct letters, digits and symbols of `text` that normalisation drops because they have
    no spoken form here (other scripts, emoji), in order of first appearance. Punctuation and
    whitespace are not listed: they are meant to be silent."""
    found: list[str] = []
    for ch in dict.fromkeys(text):
        if unicodedata.category(ch)[0] in "LNS" and not fold_unicode(ch).strip():
            found.append(ch)
    return found
