"""minivox.normalize and minivox.text: number words (round trip through a parser written
here), normalisation (hand-written tricky cases + hypothesis properties), sentence splitting,
the tokenizer."""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minivox.normalize import (
    MAX_NUMBER,
    RULES,
    digits_to_words,
    normalize_text,
    number_to_words,
    ordinal_to_words,
    year_to_words,
)
from minivox.text import Tokenizer, _read_pieces, split_sentences

# ---------------------------------------------------------------------------------------
# A small words -> number parser, written independently of number_to_words, to check it.
# ---------------------------------------------------------------------------------------

SMALL = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen".split())}  # fmt: skip
SMALL.update({w: 10 * i for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), 2)})
SCALE = {"thousand": 10**3, "million": 10**6, "billion": 10**9, "trillion": 10**12}
ORDINAL_WORDS = {"first": "one", "second": "two", "third": "three", "fifth": "five", "eighth": "eight",
                 "ninth": "nine", "twelfth": "twelve"}  # fmt: skip


def words_to_number(text: str) -> int:
    """Parse "two million three hundred four" -> 2000304 (American style, no "and")."""
    words = text.split()
    sign = 1
    if words and words[0] == "minus":
        sign, words = -1, words[1:]
    total, group = 0, 0
    for word in words:
        if word in SMALL:
            group += SMALL[word]
        elif word == "hundred":
            group *= 100
        elif word in SCALE:
            total += group * SCALE[word]
            group = 0
        else:
            raise ValueError(f"not a number word: {word!r}")
    return sign * (total + group)


def ordinal_words_to_number(text: str) -> int:
    """Parse "twenty second" -> 22 by turning the last word back into its cardinal."""
    *head, last = text.split()
    if last in ORDINAL_WORDS:
        last = ORDINAL_WORDS[last]
    elif last.endswith("ieth"):
        last = last[: -len("ieth")] + "y"
    else:
        assert last.endswith("th"), text
        last = last[: -len("th")]
    return words_to_number(" ".join([*head, last]))


def year_words_to_number(text: str) -> int:
    """Parse a spoken year: "nineteen eighty four", "nineteen oh five", "nineteen hundred",
    "twenty one ten", "two thousand five" (the last is an ordinary cardinal)."""
    words = text.split()
    if "thousand" in words:
        return words_to_number(text)
    if words[-1] == "hundred":
        century, rest = words[:-1], 0
    elif words[-2] == "oh":
        century, rest = words[:-2], SMALL[words[-1]]
    elif SMALL[words[-1]] < 10:  # "... eighty four": the last two words are the rest
        century, rest = words[:-2], words_to_number(" ".join(words[-2:]))
    else:  # "... ten", "... ninety"
        century, rest = words[:-1], SMALL[words[-1]]
    return words_to_number(" ".join(century)) * 100 + rest


# ---------------------------------------------------------------------------------------
# Numbers as words
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, words",
    [
        (0, "zero"), (7, "seven"), (13, "thirteen"), (20, "twenty"), (21, "twenty one"), (40, "forty"),
        (99, "ninety nine"), (100, "one hundred"), (101, "one hundred one"), (110, "one hundred ten"),
        (999, "nine hundred ninety nine"), (1000, "one thousand"), (1001, "one thousand one"),
        (1010, "one thousand ten"), (12345, "twelve thousand three hundred forty five"),
        (1_000_000, "one million"), (1_000_001, "one million one"), (10**9, "one billion"),
        (2_000_300_004, "two billion three hundred thousand four"), (10**12, "one trillion"),
        (-5, "minus five"), (10**33, "one decillion"),
    ],
)  # fmt: skip
def test_number_to_words_by_hand(n, words):
    assert number_to_words(n) == words


@given(st.integers(0, 10**12))
@settings(max_examples=300, deadline=None)
def test_number_to_words_round_trips_through_a_parser(n):
    words = number_to_words(n)
    assert words_to_number(words) == n, words
    assert re.fullmatch(r"[a-z]+( [a-z]+)*", words), words


@given(st.integers(0, 10**12))
@settings(max_examples=200, deadline=None)
def test_ordinal_to_words_round_trips_through_a_parser(n):
    assert ordinal_words_to_number(ordinal_to_words(n)) == n, ordinal_to_words(n)


@pytest.mark.parametrize(
    "n, words",
    [(1, "first"), (2, "second"), (3, "third"), (5, "fifth"), (8, "eighth"), (9, "ninth"), (12, "twelfth"),
     (20, "twentieth"), (22, "twenty second"), (103, "one hundred third"), (1000, "one thousandth"), (0, "zeroth")],
)  # fmt: skip
def test_ordinal_to_words_by_hand(n, words):
    assert ordinal_to_words(n) == words


@pytest.mark.parametrize(
    "n, words",
    [(1984, "nineteen eighty four"), (1905, "nineteen oh five"), (1900, "nineteen hundred"),
     (2000, "two thousand"), (2005, "two thousand five"), (2010, "twenty ten"), (2024, "twenty twenty four"),
     (1100, "eleven hundred"), (1066, "ten sixty six"), (2099, "twenty ninety nine")],
)  # fmt: skip
def test_year_to_words_by_hand(n, words):
    assert year_to_words(n) == words


def test_every_year_round_trips_through_a_parser():
    for year in range(1000, 10000):
        assert year_words_to_number(year_to_words(year)) == year, (year, year_to_words(year))


def test_number_words_reject_bad_input():
    with pytest.raises(ValueError, match="10\\*\\*36"):
        number_to_words(MAX_NUMBER + 1)
    assert number_to_words(MAX_NUMBER).startswith("nine hundred ninety nine decillion")
    for bad in (1.5, "3", True):
        with pytest.raises(ValueError, match="expects an int"):
            number_to_words(bad)
    with pytest.raises(ValueError, match="1000, 9999"):
        year_to_words(999)
    with pytest.raises(ValueError, match="ASCII digits"):
        digits_to_words("12a")


# ---------------------------------------------------------------------------------------
# normalize_text: tricky cases written out by hand
# ---------------------------------------------------------------------------------------

CASES = [
    # cardinals, decimals, negatives, commas, large and odd digit strings
    ("I have 3 cats", "i have three cats"),
    ("3.5", "three point five"),
    ("It is 3.14 exactly.", "it is three point one four exactly"),
    ("-7 and -0.5", "minus seven and minus zero point five"),
    ("1,234 people", "one thousand two hundred thirty four people"),
    ("1,000,000", "one million"),
    ("about 25000000000 stars", "about twenty five billion stars"),
    ("agent 007", "agent zero zero seven"),
    ("card 1234567890123456", "card one two three four five six seven eight nine zero one two three four five six"),
    ("version 1.2.3", "version one point two point three"),
    (".5 of it", "point five of it"),
    ("mp3 and 3D and COVID-19", "mp three and three d and covid nineteen"),
    # ordinals
    ("the 1st, 2nd, 3rd and 4th", "the first second third and fourth"),
    ("22nd and 103rd", "twenty second and one hundred third"),
    ("the 1,000th visitor", "the one thousandth visitor"),
    # years vs cardinals
    ("1984", "nineteen eighty four"),
    ("It was 1984.", "it was nineteen eighty four"),
    ("in 2005", "in two thousand five"),
    ("in 2024", "in twenty twenty four"),
    ("since 1905", "since nineteen oh five"),
    ("the 1984 election", "the nineteen eighty four election"),
    ("born May 1990", "born may nineteen ninety"),
    ("from 1990-2010", "from nineteen ninety to twenty ten"),
    ("1990 to 2015", "nineteen ninety to twenty fifteen"),
    ("44 BC and 1100 AD", "forty four b c and eleven hundred a d"),
    ("2024 people came", "two thousand twenty four people came"),
    ("1,984 people", "one thousand nine hundred eighty four people"),
    ("in 1050", "in one thousand fifty"),
    ("the 1990s and the '80s", "the nineteen nineties and the eighties"),
    ("the 1900s and 2000s", "the nineteen hundreds and two thousands"),
    ("on 2024-03-15", "on march fifteenth twenty twenty four"),
    # currency
    ("$5.50", "five dollars fifty cents"),
    ("$1", "one dollar"),
    ("$1.01", "one dollar one cent"),
    ("$0.99", "ninety nine cents"),
    ("$5.5", "five dollars fifty cents"),
    ("$5.00", "five dollars"),
    ("$1,250,000", "one million two hundred fifty thousand dollars"),
    ("$2.5 million", "two point five million dollars"),
    ("$3bn", "three billion dollars"),
    ("£3", "three pounds"),
    ("£1.50", "one pound fifty pence"),
    ("€20", "twenty euros"),
    ("5€", "five euros"),
    ("¥500", "five hundred yen"),
    ("5 cents and 50¢", "five cents and fifty cents"),
    ("-$5", "minus five dollars"),
    ("$5-$10", "five dollars to ten dollars"),
    ("$1.005", "one point zero zero five dollars"),
    # percentages
    ("50%", "fifty percent"),
    ("3.5 % more", "three point five percent more"),
    ("5-10%", "five to ten percent"),
    # times
    ("3:30 pm", "three thirty p m"),
    ("10:05", "ten oh five"),
    ("7:00", "seven o'clock"),
    ("7:00 P.M.", "seven p m"),
    ("at 7pm", "at seven p m"),
    ("6 a.m. sharp", "six a m sharp"),
    ("19:00", "nineteen hundred"),
    ("12:45 am", "twelve forty five a m"),
    ("10:30:15", "ten thirty and fifteen seconds"),
    ("25:99", "twenty five ninety nine"),
    # abbreviations
    ("Dr. Smith", "doctor smith"),
    ("Elm Dr. is closed", "elm drive is closed"),
    ("St. Louis", "saint louis"),
    ("on Main St.", "on main street"),
    ("Mr. and Mrs. Jones", "mister and missus jones"),
    ("Ms. Lee", "miss lee"),
    ("Prof. Xu, Jr.", "professor xu junior"),
    ("apples, pears, etc.", "apples pears et cetera"),
    ("fruit, e.g. apples, i.e. food", "fruit for example apples that is food"),
    ("A vs. B and C vs D", "a versus b and c versus d"),
    ("Mr.'s hat", "mister's hat"),
    ("No. 5 and #1", "number five and number one"),
    ("a PhD", "a p h d"),
    # units
    ("5 km", "five kilometers"),
    ("1 kg", "one kilogram"),
    ("2.5GB", "two point five gigabytes"),
    ("20°C", "twenty degrees celsius"),
    ("-5 °C", "minus five degrees celsius"),
    ("1°", "one degree"),
    ("60 mph", "sixty miles per hour"),
    ("100 km/h", "one hundred kilometers per hour"),
    ("5 ms", "five milliseconds"),
    ("10 minutes", "ten minutes"),
    # symbols, ranges, maths
    ("Tom & Jerry", "tom and jerry"),
    ("2 + 2 = 4", "two plus two equals four"),
    ("7 - 2 = 5", "seven minus two equals five"),
    ("pages 5-10", "pages five to ten"),
    ("a 3x4 grid, 2x faster", "a three by four grid two times faster"),
    ("email me@example.com", "email me at example dot com"),
    ("see www.example.org/docs", "see www dot example dot org slash docs"),
    ("call 555-1234", "call five five five one two three four"),
    ("call (555) 123-4567", "call five five five one two three four five six seven"),
    ("1/2 and 3/4 and 2 1/3", "one half and three quarters and two and one third"),
    ("24/7 and 9/11", "twenty four seven and nine eleven"),
    # initialisms
    ("the FBI and the CIA", "the f b i and the c i a"),
    ("the USA and the U.S.A.", "the u s a and the u s a"),
    ("NASA and NATO", "nasa and nato"),
    ("write HTML", "write h t m l"),
    ("my CDs and the FBI's", "my c d's and the f b i's"),
    ("it's OK", "it's o k"),
    ("the IEEE and SCUBA", "the i e e e and scuba"),
    ("THIS IS THE FBI", "this is the fbi"),
    ("DON'T STOP ME NOW", "don't stop me now"),
    # apostrophes, quotes, punctuation
    ("don't", "don't"),
    ("'quoted' words", "quoted words"),
    ("the students' books", "the students books"),
    ("rock 'n' roll", "rock n roll"),
    ("Hello, world!!! How... are you?", "hello world how are you"),
    ("well-known (sort of) [x]", "well known sort of x"),
    # unicode
    ("café naïve Zoë", "cafe naive zoe"),
    ("Straße", "strasse"),
    ("“smart” ‘quotes’ don’t", "smart quotes don't"),
    ("pages 5–10", "pages five to ten"),
    ("wait—what", "wait what"),
    ("½ cup", "one half cup"),
    ("25 ℃", "twenty five degrees celsius"),
    ("x²", "x two"),
    ("日本語 and emoji 😀", "and emoji"),
    ("tab\there\nnewline", "tab here newline"),
    ("", ""),
    ("!!! ... ???", ""),
]


@pytest.mark.parametrize("text, expected", CASES)
def test_normalize_text_by_hand(text, expected):
    assert normalize_text(text) == expected


def test_normalize_text_worked_example():
    text = "Dr. Smith paid $5.50 at 3:30 pm on the 22nd -- 50% off, in 2024!"
    assert normalize_text(text) == (
        "doctor smith paid five dollars fifty cents at three thirty p m on the twenty second "
        "fifty percent off in twenty twenty four"
    )


def test_normalize_text_rejects_non_strings():
    with pytest.raises(ValueError, match="expects a str, got bytes"):
        normalize_text(b"hello")


def test_every_rule_is_documented():
    assert all(rule.__doc__ and rule.__doc__.strip() for rule in RULES)


# ---------------------------------------------------------------------------------------
# normalize_text: properties
# ---------------------------------------------------------------------------------------

NORMALISED = re.compile(r"(?:[a-z']+(?: [a-z']+)*)?")  # words of [a-z'], single spaces, no ends
# Fragments that make the rules fire, glued in random orders, beside arbitrary unicode.
FRAGMENTS = list("0123456789 .,:-/$£€¥¢%°×+=@&#'\"xXmMsSaApPkKgG()!?") + [
    "Mr", "mr", "Dr", "St", "etc", "vs", "e.g.", "km", "kg", "°C", "am", "pm", "th", "st", "nd", "NASA",
    "FBI", "No", "AD", "in ", "the ", "1984", "2024", "1,234", "3.5", "'s", "_", "é", "—", "–", "½",
    "9" * 40, "1" * 16, "2000s", "1st", ":00", ":30", "www.", ".com", "Main ", " Smith", "\n",
]  # fmt: skip
TEXTS = st.one_of(st.text(), st.lists(st.sampled_from(FRAGMENTS), max_size=16).map("".join))


@given(TEXTS)
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_normalize_text_output_charset_and_idempotence(text):
    out = normalize_text(text)  # never raises
    assert NORMALISED.fullmatch(out), (text, out)
    assert normalize_text(out) == out, (text, out)


@given(st.lists(st.sampled_from(["don't", "it's", "o'clock", "hello", "world", "a", "the"]), max_size=8))
def test_normalised_text_is_a_fixed_point(words):
    text = " ".join(words)
    assert normalize_text(text) == text


# ---------------------------------------------------------------------------------------
# split_sentences
# ---------------------------------------------------------------------------------------

SPLITS = [
    ("Hello there. How are you? I am fine!", ["Hello there.", "How are you?", "I am fine!"]),
    ("Dr. Smith paid $3.50. He left.", ["Dr. Smith paid $3.50.", "He left."]),
    ("Mr. and Mrs. Jones arrived (late). They sat.", ["Mr. and Mrs. Jones arrived (late).", "They sat."]),
    ("I like fruit, e.g. apples. And pears.", ["I like fruit, e.g. apples.", "And pears."]),
    ('He said "Stop." Then he left.', ['He said "Stop."', "Then he left."]),
    ("J. R. R. Tolkien wrote it. The U.S. Army came.", ["J. R. R. Tolkien wrote it.", "The U.S. Army came."]),
    ("Pi is 3.14159 or so. Yes.", ["Pi is 3.14159 or so.", "Yes."]),
    ("Wait... What?! No way.", ["Wait...", "What?!", "No way."]),
    ("Lists:\n1. First item\n2. Second item", ["Lists:", "1. First item", "2. Second item"]),
    ("apples, etc. Then more.", ["apples, etc.", "Then more."]),
    ("a lowercase. continuation", ["a lowercase. continuation"]),
    ("Really? yes", ["Really?", "yes"]),
    ("I said no. Then I left.", ["I said no.", "Then I left."]),
    ("See No. 5 for details.", ["See No. 5 for details."]),
    ("no punctuation at all", ["no punctuation at all"]),
    ("", []),
    ("  \n \n", []),
]


@pytest.mark.parametrize("text, expected", SPLITS)
def test_split_sentences_by_hand(text, expected):
    assert split_sentences(text) == expected


SENTENCE_FRAGMENTS = FRAGMENTS + ["Dr.", "A.", " The", ". ", "! ", "No. ", "\r\n"]


@given(st.one_of(st.text(), st.lists(st.sampled_from(SENTENCE_FRAGMENTS), max_size=20).map("".join)))
@settings(max_examples=300, deadline=None)
def test_split_sentences_loses_nothing(text):
    sentences = split_sentences(text)
    assert all(s and s == s.strip() for s in sentences)
    assert " ".join(" ".join(s.split()) for s in sentences) == " ".join(text.split())


# ---------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------

WORDS = ("hello world the a cat dog sat on mat turn left right please stop start play music what time is it "
         "weather today tomorrow call mom set an alarm for seven thirty what's don't o'clock quick brown fox "
         "jumps over lazy zebra xylophone queen kitchen light volume up down next song joke tell me about "
         "remind buy milk eggs bread jazz quiet").split()  # fmt: skip


def make_corpus(n_lines: int = 300, seed: int = 0) -> list[str]:
    """Normalised transcripts ending in <EOU> (with <EOB> on some), as ASR training sees them."""
    rng = random.Random(seed)
    lines = []
    for i in range(n_lines):
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9)))
        raw = f"{words} at {i % 12 + 1}:{(i * 7) % 60:02d} pm for ${i}.{i % 100:02d}" if i % 3 == 0 else words
        lines.append(normalize_text(raw) + ("<EOB>" if i % 5 == 0 else "") + "<EOU>")
    return lines


@pytest.fixture(scope="module")
def corpus():
    return make_corpus()


@pytest.fixture(scope="module", params=["unigram", "bpe"])
def tokenizer(request, corpus):
    return Tokenizer.train(corpus, vocab_size=96, model_type=request.param)


def test_user_symbols_come_first_and_are_single_tokens(tokenizer):
    assert tokenizer.user_symbol_ids == {"<EOU>": 1, "<EOB>": 2}
    eou, eob = tokenizer.user_symbol_ids["<EOU>"], tokenizer.user_symbol_ids["<EOB>"]
    for text, expected in [("play music<EOU>", [eou]), ("stop <EOB> now<EOU>", [eob, eou]),
                           ("<EOU><EOU>", [eou, eou]), ("x<EOB><EOU>y", [eob, eou])]:  # fmt: skip
        ids = tokenizer.encode(text)
        assert [i for i in ids if i in (eou, eob)] == expected, (text, tokenizer.encode_pieces(text))
        assert tokenizer.decode(ids) == text
    assert tokenizer.piece_to_id("<EOU>") == eou and tokenizer.id_to_piece(eob) == "<EOB>"


def test_encode_decode_round_trips_normalised_text(tokenizer, corpus):
    held_out = [normalize_text(s) for s in ["Set an alarm for 7:30 am, please!", "What's the weather in 2024?",
                                            "Call Mom at 555-1234.", "hello world"]]  # fmt: skip
    for text in corpus[:50] + held_out:
        ids = tokenizer.encode(text)
        assert all(0 <= i < tokenizer.vocab_size for i in ids)
        assert tokenizer.decode(ids) == text
    assert tokenizer.vocab_size == len(tokenizer) == 96


def test_to_bytes_from_bytes_and_save_load_give_identical_encodings(tokenizer, corpus, tmp_path):
    again = Tokenizer.from_bytes(tokenizer.to_bytes())
    loaded = Tokenizer.load(tokenizer.save(tmp_path / "sub" / "tok.model"))
    assert again == tokenizer == loaded
    for text in corpus[:50]:
        assert again.encode(text) == loaded.encode(text) == tokenizer.encode(text)
    assert loaded.user_symbol_ids == tokenizer.user_symbol_ids


def test_training_is_deterministic(corpus):
    for model_type in ("unigram", "bpe"):
        first = Tokenizer.train(corpus, vocab_size=80, model_type=model_type)
        second = Tokenizer.train(list(corpus), vocab_size=80, model_type=model_type)
        assert first.to_bytes() == second.to_bytes(), model_type


def test_train_from_files_matches_train(corpus, tmp_path):
    half = len(corpus) // 2
    (tmp_path / "a.txt").write_text("\n".join(corpus[:half]) + "\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("\n".join(corpus[half:]) + "\n\n", encoding="utf-8")
    from_files = Tokenizer.train_from_files([tmp_path / "a.txt", str(tmp_path / "b.txt")], vocab_size=80)
    assert from_files == Tokenizer.train(corpus, vocab_size=80)


def test_piece_table_reader_agrees_with_sentencepiece(tokenizer):
    pieces = _read_pieces(tokenizer.to_bytes())
    assert [p for p, _ in pieces] == [tokenizer.id_to_piece(i) for i in range(tokenizer.vocab_size)]
    assert pieces[0] == ("<unk>", 2)  # type 2 = UNKNOWN


def test_custom_symbols_and_options(corpus):
    tok = Tokenizer.train([c.replace("<EOB>", "") for c in corpus], vocab_size=90, user_defined_symbols=("<SPK1>",),
                          bos_id=1, eos_id=2)  # fmt: skip
    assert tok.user_symbol_ids == {"<SPK1>": 3}
    assert tok.id_to_piece(1) == "<s>" and tok.id_to_piece(2) == "</s>"
    assert tok.encode("<SPK1>") [-1] == 3


def test_tokenizer_errors_are_value_errors(tokenizer, corpus):
    with pytest.raises(ValueError, match=r"vocab_size=5000 is too large .* at most \d+ pieces"):
        Tokenizer.train(corpus[:20], vocab_size=5000)
    with pytest.raises(ValueError, match="every training line was empty"):
        Tokenizer.train(["", "  ", "\n"], vocab_size=64)
    with pytest.raises(ValueError, match="every training line was empty"):
        Tokenizer.train([], vocab_size=64)
    with pytest.raises(ValueError, match="model_type must be one of"):
        Tokenizer.train(corpus, vocab_size=64, model_type="word")
    with pytest.raises(ValueError, match="vocab_size must be an int >= 4"):
        Tokenizer.train(corpus, vocab_size=3)
    with pytest.raises(ValueError, match="one str"):
        Tokenizer.train("hello world", vocab_size=64)
    with pytest.raises(ValueError, match="item 1 is int"):
        Tokenizer.train(["a", 5], vocab_size=64)
    with pytest.raises(ValueError, match="unknown sentencepiece trainer option 'no_such_option'"):
        Tokenizer.train(corpus, vocab_size=64, no_such_option=1)
    with pytest.raises(ValueError, match="not a sentencepiece model"):
        Tokenizer.from_bytes(b"certainly not a model")
    with pytest.raises(ValueError, match=r"in \[0, 96\), got \[96\]"):
        tokenizer.decode([0, 96])
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tokenizer.piece_to_id("<NOPE>")
    with pytest.raises(ValueError, match=r"in \[0, 96\), got -1"):
        tokenizer.id_to_piece(-1)
