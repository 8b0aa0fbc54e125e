"""Sentence corpora from text that the OS and PyPI package managers ship, plus templated requests.

    minivox data text --config configs/data_llm.toml [text.max_words=25 ...]

writes `{out_dir}/sentences.jsonl`, one `{"text": ..., "source": ...}` per line: cleaned, deduplicated
(case and punctuation folded), length-filtered English sentences, each tagged with where it came from.
Used as LLM pretraining text and as sentences for the speech synthesis recipes.

Sources (name: package -> where the text lives after install -> how it is read here):

    wordnet     apt wordnet-base   /usr/share/wordnet/data.{noun,verb,adj,adv}: every synset line ends
                                   in "| gloss"; the gloss's double-quoted parts are example sentences.
    fortunes    apt fortunes, fortunes-min   /usr/share/games/fortunes/<topic>: plain text, entries
                                   separated by lines holding "%", attributions on lines starting "--".
    chatterbot  pip chatterbot-corpus   chatterbot_corpus/data/english/*.yml: lists of conversations,
                                   read by the small YAML-subset reader below (PyYAML not needed).
    kjv         apt bible-kjv bible-kjv-text   /usr/lib/bible.data is in the package's own compressed
                                   format; the `bible` program of bible-kjv prints it as text.
    web         apt sword-text-web  /usr/share/sword/modules/texts/ztext/engWEB2015eb/: SWORD zText,
                                   {ot,nt}.bzs (block index: offset, size, raw size as uint32),
                                   {ot,nt}.bzv (verse index: block uint32, start uint32, size uint16),
                                   {ot,nt}.bzz (zlib blocks) holding OSIS XML verses.
    templates   built here: everyday assistant requests with times, dates, numbers, names, places.

A source whose files are missing is skipped with a message, never an error.
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import struct
import subprocess
import sys
import unicodedata
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

SOURCES = ("wordnet", "fortunes", "chatterbot", "kjv", "web", "templates")
INSTALL_HINTS = {  # shown when a source is missing
    "wordnet": "apt-get install wordnet-base",
    "fortunes": "apt-get install fortunes fortunes-min",
    "chatterbot": "pip install chatterbot-corpus",
    "kjv": "apt-get install bible-kjv bible-kjv-text",
    "web": "apt-get install sword-text-web",
}


@dataclass
class TextCorpusConfig:
    """`[text]` of configs/data_llm.toml."""

    sources: list[str] = field(default_factory=lambda: list(SOURCES))  # which of SOURCES to read, in this order
    min_words: int = 3  # shorter lines are fragments ("Amen.") that teach little
    max_words: int = 30  # longer ones are mostly run-on verses; 30 words ~ 10 s of speech
    max_per_source: int = 0  # keep at most this many sentences per source (random sample, 0 = all)
    num_templates: int = 20000  # templated everyday requests to generate
    wordnet_dir: str = "/usr/share/wordnet"
    fortunes_dir: str = "/usr/share/games/fortunes"
    # fortune topics not read: pictures, and topics with crude or offensive jokes
    fortunes_exclude: list[str] = field(default_factory=lambda: ["ascii-art", "ethnic", "men-women", "drugs", "translate-me"])
    chatterbot_dir: str = ""  # "" = data/english of the installed chatterbot_corpus package
    bible_program: str = "bible"  # from apt bible-kjv
    sword_dir: str = "/usr/share/sword/modules/texts/ztext/engWEB2015eb"


# ----------------------------------------------------------------------------------------------
# 1. Cleaning


ASCII_FOLD = str.maketrans({
    "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": " - ",
    "\u2026": "...", "\u00a0": " ", "\t": " ",
})
ALLOWED = re.compile(r"[A-Za-z0-9 .,;:!?'\"()%$&-]+")  # anything else (code, markup, other scripts) rejects the line
CODE_LIKE = re.compile(r"https?:|www\.|@|\.(com|org|net)\b|\(\)|--|\$\w")
TERMINAL = ".!?"


def clean_sentence(text: str, min_words: int = 3, max_words: int = 30) -> str | None:
    """One sentence tidied for training, or None when it should not be used.

    Folds typographic quotes/dashes to ASCII, collapses whitespace, drops wrapping quotes,
    capitalises the first letter and ends it with a full stop if it has no final punctuation.
    Rejects: characters outside plain English text, URLs/e-mail/code, no lowercase letter
    (headings, SHOUTING), unbalanced parentheses or quotes, and a word count outside
    [min_words, max_words].
    """
    text = unicodedata.normalize("NFKC", text).translate(ASCII_FOLD)
    text = " ".join(text.split())
    while len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'" and text.count(text[0]) == 2:
        text = text[1:-1].strip()
    if not text or not ALLOWED.fullmatch(text) or CODE_LIKE.search(text):
        return None
    if not re.search(r"[a-z]", text) or text.count("(") != text.count(")") or text.count('"') % 2:
        return None
    if not (min_words <= len(text.split()) <= max_words):
        return None
    text = text[0].upper() + text[1:]
    if text[-1] not in TERMINAL and not (text[-1] in "\"')" and text[-2:-1] in tuple(TERMINAL)):
        text = text.rstrip(",;:-") + "."
    return text


def dedup_key(text: str) -> str:
    """Case-, space- and punctuation-folded form: two sentences with the same key are duplicates."""
    return re.sub(r"[^a-z0-9]+", "", text.lower())


def sentences_of(text: str) -> list[str]:
    """Split running text (a fortune, a verse) into sentences with minivox.text.split_sentences."""
    from minivox.text import split_sentences

    return split_sentences(" ".join(text.split()))


# ----------------------------------------------------------------------------------------------
# 2. WordNet (also the dictionary behind the `define_word` tool of minivox.data.dialogues)

WORDNET_POS = {"noun": "n", "verb": "v", "adj": "a", "adv": "r"}  # file suffix -> synset type letter
WORDNET_POS_NAMES = {"noun": "noun", "verb": "verb", "adj": "adjective", "adv": "adverb"}
QUOTED = re.compile(r'"([^"]+)"')


def parse_wordnet_gloss(gloss: str) -> tuple[str, list[str]]:
    """Split a WordNet gloss 'definition; "example one"; "example two"' into (definition, examples)."""
    examples = [q.strip() for q in QUOTED.findall(gloss)]
    definition = gloss.split('"', 1)[0].strip().rstrip(";").strip()
    return definition, examples


class WordNet:
    """Read-only access to the WordNet 3.0 database files (wndb(5WN)) in `root`.

    `lookup(word)` finds the word's most frequent sense (the first synset offset in its index line;
    an offset is the byte position of the synset's line in data.<pos>). Index files are read lazily.
    """

    def __init__(self, root: str | Path = "/usr/share/wordnet"):
        self.root = Path(root)
        self._index: dict[str, dict[str, tuple[int, int]]] | None = None  # pos -> lemma -> (offset, tag count)

    def available(self) -> bool:
        """True when the WordNet data and index files are all present."""
        return all((self.root / f"{kind}.{pos}").is_file() for pos in WORDNET_POS for kind in ("data", "index"))

    def _load_index(self) -> dict[str, dict[str, tuple[int, int]]]:
        if self._index is None:
            self._index = {}
            for pos in WORDNET_POS:
                table = {}
                with open(self.root / f"index.{pos}", encoding="latin-1") as f:
                    for line in f:
                        if line.startswith("  "):  # license header lines start with two spaces
                            continue
                        fields = line.split()
                        # lemma pos synset_cnt p_cnt [ptr_symbol x p_cnt] sense_cnt tagsense_cnt offsets...
                        p_cnt = int(fields[3])
                        tag_count = int(fields[5 + p_cnt])
                        table[fields[0]] = (int(fields[6 + p_cnt]), tag_count)
                self._index[pos] = table
        return self._index

    def _synset_line(self, pos: str, offset: int) -> str:
        with open(self.root / f"data.{pos}", "rb") as f:
            f.seek(offset)
            return f.readline().decode("latin-1")

    def lookup(self, word: str) -> dict | None:
        """{"word", "part_of_speech", "definition", "examples"} of the most frequent sense, or None.

        Among parts of speech the one whose first sense is most often tagged in the SemCor counts wins.
        """
        lemma = "_".join(word.lower().split())
        found = [(entry[1], pos, entry[0]) for pos, table in self._load_index().items() if (entry := table.get(lemma))]
        if not found:
            return None
        _, pos, offset = max(found, key=lambda f: (f[0], -list(WORDNET_POS).index(f[1])))
        definition, examples = parse_wordnet_gloss(self._synset_line(pos, offset).split(" | ", 1)[1])
        return {"word": word.lower(), "part_of_speech": WORDNET_POS_NAMES[pos], "definition": definition, "examples": examples}

    def common_words(self, min_tag_count: int = 5) -> list[str]:
        """Single-word alphabetic lemmas (>= 4 letters) whose first sense is tagged >= min_tag_count times."""
        words = {lemma for table in self._load_index().values() for lemma, (_, count) in table.items()
                 if count >= min_tag_count and lemma.isalpha() and len(lemma) >= 4}
        return sorted(words)

    def iter_examples(self) -> Iterator[str]:
        """Every example sentence of every synset, in file order."""
        for pos in WORDNET_POS:
            with open(self.root / f"data.{pos}", encoding="latin-1") as f:
                for line in f:
                    if not line.startswith("  ") and " | " in line:
                        yield from parse_wordnet_gloss(line.split(" | ", 1)[1])[1]


# ----------------------------------------------------------------------------------------------
# 3. Fortunes, chatterbot corpus, bibles


def iter_fortunes(root: str | Path, exclude: Iterable[str] = ()) -> Iterator[str]:
    """Entries of the fortune files in `root` (not its subfolders, not the .dat indexes), attributions removed."""
    for path in sorted(Path(root).iterdir()):
        if not path.is_file() or path.suffix in (".dat", ".u8") or path.name in set(exclude):
            continue
        entry: list[str] = []
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines() + ["%"]:
            if line.strip() == "%":
                if entry:
                    yield "\n".join(entry)
                entry = []
            elif not line.strip().startswith("--"):  # "    -- Mark Twain"
                entry.append(line)


def parse_yaml_conversations(text: str) -> list[list[str]]:
    """The `conversations:` list of a chatterbot-corpus file, without PyYAML (checked against PyYAML on
    every English file of chatterbot-corpus 1.3.3: identical except where a file has a "- " typo).

    Handles the subset those files use: "- - first" opens a conversation, "  - next" continues it,
    deeper-indented lines continue the current item (folded with a space, or kept as lines after "|"),
    and single/double-quoted scalars (with '' and backslash escapes).
    """
    conversations: list[list[str]] = []
    items: list[list[str]] = []  # raw lines of each item of the current conversation
    block: list[bool] = []  # whether each item is a "|" block scalar
    in_conversations = False
    for line in text.splitlines():
        in_block = bool(items) and block[-1] and (not line.strip() or line.startswith("    "))
        if in_block:
            items[-1].append(line[4:])
            continue
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line.startswith(" ") and not line.startswith("-"):
            in_conversations = line.startswith("conversations:")
            continue
        if not in_conversations:
            continue
        if line.startswith("- ") or line.startswith("  - "):
            if line.startswith("- ") and items:  # "- - first" opens a conversation ("- first", a typo, too)
                conversations.append([_yaml_scalar(i, b) for i, b in zip(items, block)])
                items, block = [], []
            value = line[4:].strip() if line.startswith(("- - ", "  - ")) else line[2:].strip()
            block.append(value in ("|", "|-", ">"))
            items.append([] if block[-1] else [value])
        elif items:  # continuation of a folded plain or quoted scalar
            items[-1].append(line.strip())
    if items:
        conversations.append([_yaml_scalar(i, b) for i, b in zip(items, block)])
    return conversations


def _yaml_scalar(lines: list[str], is_block: bool) -> str:
    if is_block:
        return "\n".join(lines).strip("\n")
    text = " ".join(part for part in lines if part)
    if len(text) >= 2 and text[0] == text[-1] == "'":
        return text[1:-1].replace("''", "'")
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1].encode("latin-1", "backslashreplace").decode("unicode_escape")
    return text


def chatterbot_dir(configured: str = "") -> Path | None:
    """Folder of the English chatterbot-corpus YAML files, or None when the package is not installed."""
    if configured:
        return Path(configured) if Path(configured).is_dir() else None
    try:
        import chatterbot_corpus
    except ImportError:
        return None
    path = Path(chatterbot_corpus.__file__).parent / "data" / "english"
    return path if path.is_dir() else None


def read_chatterbot(root: str | Path) -> dict[str, list[list[str]]]:
    """{category (file stem): [conversation: [utterance, ...]]} from a chatterbot-corpus folder."""
    return {path.stem: parse_yaml_conversations(path.read_text(encoding="utf-8"))
            for path in sorted(Path(root).glob("*.yml"))}


VERSE_LINE = re.compile(r"^\s+\d+ (.*)$")  # `bible` prints "  12 And God said, ..." under a "Book N" heading


def iter_kjv(program: str = "bible") -> Iterator[str]:
    """KJV verses, through the `bible` program of Debian's bible-kjv (line width set very wide)."""
    out = subprocess.run([program, "-l100000", "Genesis1:1-Revelation22:21"], stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        if match := VERSE_LINE.match(line):
            yield match.group(1)


SWORD_BLOCK = struct.Struct("<III")  # .bzs entry: offset in .bzz, compressed size, uncompressed size
SWORD_VERSE = struct.Struct("<IIH")  # .bzv entry: block number, start in the block, size
OSIS_NOTE = re.compile(r"<note\b.*?</note>", re.S)  # footnotes: dropped with their text
XML_TAG = re.compile(r"<[^>]*>")
MAX_VERSE_CHARS = 1500  # longer entries are the module's preface and glossary, not verses (Esther 8:9 is ~500)


def iter_sword_ztext(module_dir: str | Path) -> Iterator[str]:
    """Verses of a SWORD zText module (ZIP-compressed, OSIS markup) as plain text, OT then NT."""
    module_dir = Path(module_dir)
    for testament in ("ot", "nt"):
        if not (module_dir / f"{testament}.bzz").is_file():
            continue
        index = (module_dir / f"{testament}.bzs").read_bytes()
        verses = (module_dir / f"{testament}.bzv").read_bytes()
        data = (module_dir / f"{testament}.bzz").read_bytes()
        blocks = [SWORD_BLOCK.unpack_from(index, i) for i in range(0, len(index), SWORD_BLOCK.size)]
        cache: dict[int, bytes] = {}
        for i in range(0, len(verses), SWORD_VERSE.size):
            block, start, size = SWORD_VERSE.unpack_from(verses, i)
            if size == 0:  # book and chapter headings have empty entries
                continue
            if block not in cache:
                offset, compressed, _ = blocks[block]
                cache = {block: zlib.decompress(data[offset:offset + compressed])}  # verses come block by block
            osis = cache[block][start:start + size].decode("utf-8", errors="replace")
            text = XML_TAG.sub("", OSIS_NOTE.sub(" ", osis))
            if len(text) <= MAX_VERSE_CHARS:
                yield text


# ----------------------------------------------------------------------------------------------
# 4. Templated everyday requests

NAMES = ["Anna", "Ben", "Carlos", "Diana", "Emma", "Farid", "Grace", "Hiro", "Isabel", "Jack", "Kofi", "Laura",
         "Mateo", "Nina", "Omar", "Priya", "Quinn", "Rosa", "Sam", "Tara", "Uma", "Victor", "Wei", "Yusuf",
         "Zoe", "Liam", "Olivia", "Noah", "Ava", "Elena", "Marco", "Sofia", "David", "Maria", "James", "Aisha",
         "Lucas", "Mia", "Ethan", "Chloe", "Daniel", "Hannah", "Leo", "Sara", "Paul", "Julia", "Ivan", "Mei"]
CITIES = ["Paris", "London", "Tokyo", "Berlin", "Madrid", "Rome", "Toronto", "Chicago", "Boston", "Seattle",
          "Sydney", "Dublin", "Lisbon", "Vienna", "Prague", "Oslo", "Cairo", "Nairobi", "Lima", "Denver", "Austin",
          "Mexico City", "New York", "San Francisco", "Los Angeles", "Amsterdam", "Stockholm", "Helsinki",
          "Mumbai", "Singapore", "Seoul", "Bangkok", "Istanbul", "Athens", "Warsaw", "Montreal", "Vancouver"]
PLACES = CITIES + ["the airport", "the office", "the station", "the library", "the beach", "the park", "downtown"]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
ITEMS = ["apples", "eggs", "bananas", "tomatoes", "bottles of water", "loaves of bread", "cans of beans", "onions"]
TASKS = ["call the dentist", "water the plants", "take my medicine", "pick up the kids", "pay the rent",
         "buy milk", "send the report", "book the tickets", "walk the dog", "check the oven"]
GENRES = ["jazz", "classical", "rock", "pop", "folk", "blues", "country", "reggae"]
REQUEST_TEMPLATES = [
    "Set an alarm for {time}.", "Wake me up at {time} tomorrow.", "Remind me to {task} at {time}.",
    "Remind me to {task} on {date}.", "What's the weather like in {place} on {weekday}?",
    "What time is it in {place}?", "How long does it take to drive to {place}?", "Call {name} at {time}.",
    "Send a message to {name} saying I'll be {small} minutes late.", "Add {small} {item} to my shopping list.",
    "Book a table for {small} at {time} on {weekday}.", "What's {number} plus {number2}?",
    "What is {number} times {small}?", "Set a timer for {small} minutes.", "Play some {genre} music.",
    "Is {name} free on {date}?", "Schedule a meeting with {name} on {weekday} at {time}.",
    "How far is {place} from {place2}?", "Find a flight from {place} to {place2} on {date}.",
    "Turn the volume up to {small}.", "What day of the week is {date}?", "Text {name} that I'm at {place}.",
    "Navigate to {place}.", "How many days until {date}?", "Convert {number} dollars to euros.",
    "What was the score of the game on {weekday}?", "Move my {time} meeting to {time2}.",
    "Tell {name} I'll meet them at {place} at {time}.", "Pay {name} {number} dollars.",
    "My flight to {place} leaves at {time} on {date}.", "It's {name}'s birthday on {date}.",
]


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def random_time(rng: random.Random) -> str:
    """A clock time in one of the ways people write it: "7:30 am", "noon", "half past six", "18:45"."""
    hour, minute = rng.randrange(24), rng.choice([0, 0, 5, 10, 15, 20, 30, 30, 40, 45, 50])
    style = rng.randrange(4)
    if style == 0:
        return f"{(hour - 1) % 12 + 1}:{minute:02d} {'am' if hour < 12 else 'pm'}"
    if style == 1:
        return f"{hour:02d}:{minute:02d}"
    if style == 2:
        return rng.choice(["noon", "midnight", f"{(hour - 1) % 12 + 1} o'clock"])
    return f"{rng.choice(['half past', 'quarter past', 'quarter to'])} {(hour - 1) % 12 + 1}"


def random_date(rng: random.Random) -> str:
    """A date written one of several everyday ways ("march 5th", "the 5th of march", ...)."""
    month, day = rng.choice(MONTHS), rng.randint(1, 28)
    return rng.choice([f"{month} {_ordinal(day)}", f"the {_ordinal(day)} of {month}", f"{month} {day}",
                       rng.choice(WEEKDAYS), "tomorrow", f"next {rng.choice(WEEKDAYS)}"])


def templated_requests(count: int, seed: int = 0) -> Iterator[str]:
    """`count` everyday assistant requests filled with random times, dates, numbers, names, places."""
    rng = random.Random(f"templates/{seed}")
    for _ in range(count):
        place, place2 = rng.sample(PLACES, 2)
        slots = {"time": random_time(rng), "time2": random_time(rng), "date": random_date(rng), "place": place,
                 "place2": place2, "name": rng.choice(NAMES), "weekday": rng.choice(WEEKDAYS),
                 "task": rng.choice(TASKS), "item": rng.choice(ITEMS), "genre": rng.choice(GENRES),
                 "small": rng.randint(2, 12), "number": rng.randint(2, 999), "number2": rng.randint(2, 999)}
        yield rng.choice(REQUEST_TEMPLATES).format(**slots)


# ----------------------------------------------------------------------------------------------
# 5. Assembly


def source_texts(name: str, cfg: TextCorpusConfig, seed: int = 0) -> Iterator[str] | None:
    """Raw texts of one source (each may hold several sentences), or None when it is not installed."""
    if name == "wordnet":
        wordnet = WordNet(cfg.wordnet_dir)
        return wordnet.iter_examples() if wordnet.available() else None
    if name == "fortunes":
        return iter_fortunes(cfg.fortunes_dir, cfg.fortunes_exclude) if Path(cfg.fortunes_dir).is_dir() else None
    if name == "chatterbot":
        root = chatterbot_dir(cfg.chatterbot_dir)
        if root is None:
            return None
        return (u for convs in read_chatterbot(root).values() for conv in convs for u in conv)
    if name == "kjv":
        return iter_kjv(cfg.bible_program) if shutil.which(cfg.bible_program) else None
    if name == "web":
        return iter_sword_ztext(cfg.sword_dir) if (Path(cfg.sword_dir) / "nt.bzz").is_file() else None
    if name == "templates":
        return templated_requests(cfg.num_templates, seed)
    raise ValueError(f"unknown text source {name!r}; expected one of {SOURCES}")


def build_sentences(cfg: TextCorpusConfig, seed: int = 0, log=print) -> list[dict]:
    """All sources, cleaned and deduplicated across sources (first source wins): [{"text", "source"}]."""
    seen: set[str] = set()
    rows: list[dict] = []
    for name in cfg.sources:
        texts = source_texts(name, cfg, seed)
        if texts is None:
            log(f"text source '{name}' not found, skipped (install: {INSTALL_HINTS.get(name, '?')})")
            continue
        kept = []
        for raw in texts:
            for sentence in (sentences_of(raw) if name != "templates" else [raw]):
                text = clean_sentence(sentence, cfg.min_words, cfg.max_words)
                if text is not None and (key := dedup_key(text)) not in seen:
                    seen.add(key)
                    kept.append(text)
        if cfg.max_per_source and len(kept) > cfg.max_per_source:
            kept = random.Random(f"{name}/{seed}").sample(kept, cfg.max_per_source)
        rows += [{"text": text, "source": name} for text in kept]
        log(f"text source '{name}': {len(kept)} sentences")
    return rows


def run_text(args: argparse.Namespace) -> int:
    """`minivox data text`: build {out_dir}/sentences.jsonl from the [text] section of the recipe."""
    from minivox.config import load_config
    from minivox.data.dialogues import LLMDataConfig
    from minivox.data.manifest import write_manifest

    cfg = load_config(LLMDataConfig, args.config, args.overrides)
    rows = build_sentences(cfg.text, cfg.seed, log=lambda m: print(m, file=sys.stderr))
    out = Path(cfg.out_dir) / "sentences.jsonl"
    write_manifest(out, rows, required=("text", "source"))
    words = sum(len(row["text"].split()) for row in rows)
    print(f"wrote {len(rows)} sentences ({words} words) to {out}")
    return 0


def register(subparsers) -> None:
    """Add `text` to the `minivox data` subcommands."""
    p = subparsers.add_parser("text", help="sentence corpus from packaged text (WordNet, fortunes, chatterbot, bibles) + templates")
    p.add_argument("--config", default="configs/data_llm.toml", help="recipe TOML (its [text] section and out_dir)")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. text.max_words=25 out_dir=/tmp/llm")
    p.set_defaults(func=run_text)
