"""Sentences from a streamed LLM reply, for the TTS to speak while the LLM goes on."""

from __future__ import annotations


class SentenceAggregator:
    """Cuts streamed LLM text into sentences for the TTS as soon as each one is complete.

    Sentence ends are `minivox.text.split_sentences`'s (so "Dr. Smith" and "3.5" stay whole): a
    sentence is complete once the next one has begun. To start speaking sooner, the first piece
    of a reply may also end at a comma followed by a space once it has `first_clause_words` words."""

    def __init__(self, first_clause_words: int = 4):
        self.buffer = ""
        self.first_clause_words = first_clause_words
        self.emitted = 0

    def push(self, text: str) -> list[str]:
        from minivox.text import split_sentences

        self.buffer += text
        trailing = " " if self.buffer[-1:].isspace() else ""
        sentences, out = split_sentences(self.buffer), []
        if self.emitted == 0 and sentences:  # the first clause, inside the first sentence
            first = sentences[0]
            commas = [i for i in range(len(first) - 1) if first[i:i + 2] == ", "]
            comma = next((i for i in commas if len(first[:i].split()) >= self.first_clause_words), None)
            if comma is not None:
                out.append(first[:comma + 1])
                sentences[0] = first[comma + 2:]
        if len(sentences) > 1:  # all but the last are complete
            out += sentences[:-1]
        if out:
            self.buffer = sentences[-1] + trailing
        self.emitted += len(out)
        return out

    def flush(self) -> str:
        piece, self.buffer = self.buffer.strip(), ""
        return piece
