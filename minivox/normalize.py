"""Text normalisation for speech: written text -> what a speaker would say.

Sections, read top to bottom:

1. Numbers as words: `number_to_words`, `ordinal_to_words`, `year_to_words`, `digits_to_words`.
2. `normalize_text(text) -> str`: what a speaker would say, as lowercase words of [a-z']
   separated by single spaces. This is the transcript form the ASR trains on and the TTS
   reads. It is a short list of ordered rules (`RULES`), each a documented function.

Used for ASR transcripts (`minivox.data.loaders`, `minivox.data.synth`), spoken-style user turns
in the LLM dialogues (`minivox.data.dialogues`) and the TTS input (`minivox.tts`,
`train/fastpitch.py`); `minivox.text` builds its TTS symbol set on its output.

Decisions a reader should know (also in the README):

- Numbers are read in American style without "and": 123 -> "one hundred twenty three".
- Four-digit numbers 1100-2099 are read as years ("nineteen eighty four", "two thousand
  five", "twenty twenty four") when they stand in a year context: after a word such as "in",
  "since", "the", a month; before "AD"/"BC"; in a range with another year; or with no word
  after them ("It was 1984."). Otherwise they are cardinals ("2024 people" -> "two thousand
  twenty four people"), as are numbers with a comma ("1,984").
- All-caps words are initialisms spelled letter by letter ("FBI" -> "f b i", "USA" -> "u s
  a", "HTML" -> "h t m l") unless they can be read as a word: four or more letters, with a
  vowel, no three consonants or three vowels in a row, and any two-consonant cluster at the
  start or end is an English onset or coda ("NASA", "NATO", "COVID", "SCUBA" stay words).
  Text that is mostly upper case is shouting, not initialisms, and is simply lowercased.
- Apostrophes survive only inside words ("don't", "o'clock"); quotes and other punctuation
  become spaces; accents are folded (NFKD, "café" -> "cafe"); characters with no spoken
  form (other scripts, emoji, control characters) are dropped.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

__all__ = [
    "number_to_words",
    "ordinal_to_words",
    "year_to_words",
    "digits_to_words",
    "normalize_text",
    "RULES",
]

# =====================================================================================
# 1. Numbers as words
# =====================================================================================

ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()  # index = tens digit
# Short-scale names of 1000**k; numbers from 1000**len(SCALES) = 10**36 on have no name here.
SCALES = (
    "_ thousand million billion trillion quadrillion quintillion sextillion septillion "
    "octillion nonillion decillion"
).split()
MAX_NUMBER = 1000 ** len(SCALES) - 1  # the largest integer number_to_words spells
_IRREGULAR_ORDINALS = {
    "zero": "zeroth", "one": "first", "two": "second", "three": "third", "five": "fifth",
    "eight": "eighth", "nine": "ninth", "twelve": "twelfth",
}  # fmt: skip


def number_to_words(n: int) -> str:
    """Spell an integer as words: 1234 -> "one thousand two hundred thirty four", -5 -> "minus five".

    American style, no "and". |n| must be at most MAX_NUMBER (10**36 - 1).
    """
    if isinstance(n, bool) or not isinstance(n, int):
        raise ValueError(f"number_to_words expects an int, got {type(n).__name__} {n!r}")
    if n < 0:
        return "minus " + number_to_words(-n)
    if n > MAX_NUMBER:
        raise ValueError(f"number_to_words spells |n| <= {MAX_NUMBER} (10**36 - 1), got {n}")
    if n == 0:
        return "zero"
    words = []
    for k in range(len(SCALES) - 1, -1, -1):
        group = (n // 1000**k) % 1000  # the three digits that multiply 1000**k
        if group:
            words.append(_below_thousand(group))
            if k:
                words.append(SCALES[k])
    return " ".join(words)


def _below_thousand(n: int) -> str:
    """Spell 1 <= n <= 999."""
    hundreds, rest = divmod(n, 100)
    words = [ONES[hundreds], "hundred"] if hundreds else []
    if rest >= 20:
        tens, ones = divmod(rest, 10)
        words += [TENS[tens]] + ([ONES[ones]] if ones else [])
    elif rest:
        words.append(ONES[rest])
    return " ".join(words)


def ordinal_to_words(n: int) -> str:
    """Spell an ordinal: 1 -> "first", 22 -> "twenty second", 103 -> "one hundred third"."""
    words = number_to_words(n).split()
    last = words[-1]
    if last in _IRREGULAR_ORDINALS:
        words[-1] = _IRREGULAR_ORDINALS[last]
    elif last.endswith("y"):
        words[-1] = last[:-1] + "ieth"  # twenty -> twentieth
    else:
        words[-1] = last + "th"  # four -> fourth, hundred -> hundredth, million -> millionth
    return " ".join(words)


def year_to_words(n: int) -> str:
    """Read a year 1000 <= n <= 9999 the way people say it.

    1984 -> "nineteen eighty four", 1905 -> "nineteen oh five", 1900 -> "nineteen hundred",
    2024 -> "twenty twenty four", 2005 -> "two thousand five", 2000 -> "two thousand".
    """
    if isinstance(n, bool) or not isinstance(n, int) or not 1000 <= n <= 9999:
        raise ValueError(f"year_to_words expects an int in [1000, 9999], got {n!r}")
    century, rest = divmod(n, 100)
    if n % 1000 < 10:  # 2000-2009, 1000-1009: "two thousand five"
        return number_to_words(n)
    if rest == 0:
        return number_to_words(century) + " hundred"
    if rest < 10:
        return number_to_words(century) + " oh " + ONES[rest]
    return number_to_words(century) + " " + number_to_words(rest)


def digits_to_words(digits: str) -> str:
    """Read a string of ASCII digits one by one: "007" -> "zero zero seven"."""
    if not digits.isascii() or not digits.isdigit():
        raise ValueError(f"digits_to_words expects ASCII digits, got {digits!r}")
    return " ".join(ONES[int(d)] for d in digits)


def _plural(words: str) -> str:
    """Plural of the last word of a spelled number: "nineteen ninety" -> "nineteen nineties"."""
    head, _, last = words.rpartition(" ")
    if last.endswith("y"):
        last = last[:-1] + "ies"
    elif last.endswith(("x", "s")):
        last += "es"
    else:
        last += "s"
    return f"{head} {last}" if head else last


LONGEST_CARDINAL = 15  # digits; 999 trillion is the largest amount anyone reads out whole


def _cardinal(digits: str) -> str:
    """Read a run of digits (commas allowed as thousands separators) as words.

    "1,234" -> one thousand two hundred thirty four; a leading zero ("007") or more than
    LONGEST_CARDINAL digits (an account number, not a quantity) is read digit by digit.
    """
    digits = digits.replace(",", "")
    if digits == "0":
        return "zero"
    if digits.startswith("0") or len(digits) > LONGEST_CARDINAL:
        return digits_to_words(digits)
    return number_to_words(int(digits))


def _decimal(text: str) -> str:
    """Read "3.14" -> "three point one four", "1,000.5" -> "one thousand point five", ".5" -> "point five"."""
    whole, _, fraction = text.partition(".")
    words = [_cardinal(whole)] if whole else []
    if fraction:
        words += ["point", digits_to_words(fraction)]
    return " ".join(words)


# =====================================================================================
# 2. normalize_text: ordered rules
# =====================================================================================
# Every rule is a function str -> str. The first folds the text to ASCII (plus the few
# symbols later rules read); number rules run before word rules, so by the time word rules
# run every digit is already a word; the last rule lowercases and keeps only [a-z' ].
# Replacements are padded with spaces and the last rule collapses them.
#
# Idempotence (normalize(normalize(x)) == normalize(x)) follows from one design choice:
# a rule may only fire on digits, symbols, periods or capitals (which normalised text does
# not contain), except the few lowercase abbreviations in _WORD_ABBREVIATIONS, whose
# expansions are not themselves abbreviations. The tests check it with hypothesis.

_NUM = r"\d+(?:,\d{3}(?!\d))*(?:\.\d+)?"  # 12 | 1,234 | 3.5 | 1,234.56  (one number)
_INT = r"\d+(?:,\d{3}(?!\d))*"

# Characters folded before NFKD (which leaves them alone); everything still non-ASCII after
# NFKD, except the symbols in _KEPT_SYMBOLS, becomes a space.
_FOLD = str.maketrans({
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'", "\u02bc": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"', "\u00ab": '"',
    "\u00bb": '"', "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2212": "-",
    "\u2014": ", ", "\u2015": ", ", "\u2044": "/", "\u2215": "/", "_": " ",
    "ß": "ss", "æ": "ae", "Æ": "AE", "œ": "oe", "Œ": "OE", "ø": "o", "Ø": "O", "ł": "l",
    "Ł": "L", "đ": "d", "Đ": "D", "ð": "d", "Ð": "D", "þ": "th", "Þ": "Th", "ı": "i",
})  # fmt: skip
_KEPT_SYMBOLS = "£€¥¢°×÷"


def fold_unicode(text: str) -> str:
    """Fold to ASCII: curly quotes -> ' and ", dashes -> "-" (an em dash is a pause: ", "),
    NFKD with accents dropped ("café" -> "cafe", "½" -> "1/2", "℃" -> "°C", "²" -> "2"),
    ß/æ/ø/... spelled in Latin letters, "_" -> space; anything else non-ASCII (other
    scripts, emoji, controls) -> space, except the currency and maths symbols later rules read.
    """
    text = unicodedata.normalize("NFKD", text.translate(_FOLD)).translate(_FOLD)
    out = []
    for ch in text:
        if unicodedata.category(ch) == "Mn":  # combining accent: dropped, the letter stays
            continue
        if (ch.isascii() and (ch.isprintable() or ch.isspace())) or ch in _KEPT_SYMBOLS:
            out.append(ch)
        else:
            out.append(" ")
    return "".join(out)


_URL = re.compile(r"\b(?:https?://|www\.)[^\s\"'<>]*[A-Za-z0-9/]", re.IGNORECASE)
# The look-behinds start a match only at the start of a token: without them every position
# inside a long token would be tried and the rule would take quadratic time.
_EMAIL = re.compile(r"(?<![A-Za-z0-9.+-])[A-Za-z0-9.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_TOP_LEVEL_DOMAINS = "com|org|net|edu|gov|io|ai|dev|app"  # bare "name.com" is read as an address
_DOMAIN = re.compile(r"(?<![A-Za-z0-9.-])[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.(?:" + _TOP_LEVEL_DOMAINS + r")\b", re.I)
_URL_SYMBOLS = {".": " dot ", "@": " at ", "/": " slash ", "-": " dash ", "+": " plus ", ":": " ", "?": " ",
                "=": " equals ", "&": " and ", "#": " ", "%": " percent "}  # fmt: skip


def expand_urls(text: str) -> str:
    """Read web addresses and e-mail addresses: "bob@mail.com" -> "bob at mail dot com",
    "https://www.x.org/a" -> "www dot x dot org slash a" (the scheme is not read)."""

    def read(match: re.Match) -> str:
        address = re.sub(r"^https?://", "", match.group(0), flags=re.IGNORECASE)
        for symbol, spoken in _URL_SYMBOLS.items():
            address = address.replace(symbol, spoken)
        return f" {address} "

    for pattern in (_URL, _EMAIL, _DOMAIN):
        text = pattern.sub(read, text)
    return text


_MONTHS = "january february march april may june july august september october november december".split()
_ISO_DATE = re.compile(r"\b(\d{4})-(\d{2})-(\d{2})\b")


def expand_iso_dates(text: str) -> str:
    """Read ISO dates: "2024-03-15" -> "march fifteenth twenty twenty four"."""

    def read(match: re.Match) -> str:
        year, month, day = (int(g) for g in match.groups())
        if not (1 <= month <= 12 and 1 <= day <= 31 and year >= 1000):
            return match.group(0)
        return f" {_MONTHS[month - 1]} {ordinal_to_words(day)} {year_to_words(year)} "

    return _ISO_DATE.sub(read, text)


_AM_PM = r"(?:\s*([AaPp])\.?\s?[Mm]\b\.?)"  # am, pm, a.m., P.M., p m
_CLOCK = re.compile(r"(?<![\d:])(\d{1,2}):(\d{2})(?::(\d{2}))?(?![\d:])" + _AM_PM + "?")
_HOUR_AM_PM = re.compile(r"(?<![\d:.,])(\d{1,2})" + _AM_PM)


def expand_times(text: str) -> str:
    """Read clock times: "3:30 pm" -> "three thirty p m", "10:05" -> "ten oh five", "7:00" ->
    "seven o'clock", "7:00 pm" / "7pm" -> "seven p m", "19:00" -> "nineteen hundred",
    "10:30:15" -> "ten thirty and fifteen seconds". Invalid times (25:00, 3:75) are left
    for the number rules."""

    def clock(match: re.Match) -> str:
        hour_text, minutes_text, seconds_text, meridian = match.groups()
        hour, minutes, seconds = int(hour_text), int(minutes_text), int(seconds_text or 0)
        if hour > 24 or minutes > 59 or seconds > 59 or (meridian and not 1 <= hour <= 12):
            return match.group(0)
        words = [number_to_words(hour)]
        if minutes == 0 and not meridian:
            # 24-hour style ("19:00", "07:00") says "hundred"; "7:00" is seven o'clock
            words.append("hundred" if hour > 12 or hour_text.startswith("0") else "o'clock")
        elif 0 < minutes < 10:
            words += ["oh", ONES[minutes]]
        elif minutes:
            words.append(number_to_words(minutes))
        if meridian:
            words += [meridian.lower(), "m"]
        if seconds:
            words += ["and", number_to_words(seconds), "second" if seconds == 1 else "seconds"]
        return " " + " ".join(words) + " "

    def hour_only(match: re.Match) -> str:
        hour, meridian = int(match.group(1)), match.group(2)
        if not 1 <= hour <= 12:
            return match.group(0)
        return f" {number_to_words(hour)} {meridian.lower()} m "

    return _HOUR_AM_PM.sub(hour_only, _CLOCK.sub(clock, text))


# symbol -> (one unit, many units, one subunit, many subunits); yen has no subunit in use
_CURRENCIES = {
    "$": ("dollar", "dollars", "cent", "cents"),
    "£": ("pound", "pounds", "penny", "pence"),
    "€": ("euro", "euros", "cent", "cents"),
    "¥": ("yen", "yen", None, None),
}
_MAGNITUDES = {
    "thousand": "thousand", "k": "thousand", "million": "million", "m": "million", "mn": "million",
    "billion": "billion", "bn": "billion", "b": "billion", "trillion": "trillion", "tn": "trillion",
}  # fmt: skip
_CURRENCY_BEFORE = re.compile(
    r"(-)?([$£€¥])\s?(" + _NUM + r"|\.\d+)(?:\s?(thousand|million|billion|trillion)\b|(k|K|m|M|mn|bn|B|tn)\b)?"
)
_CURRENCY_AFTER = re.compile(r"(?<![\d.,])(-)?(" + _NUM + r")\s?([€£¥¢])")


def expand_currency(text: str) -> str:
    """Read money: "$5.50" -> "five dollars fifty cents", "$1" -> "one dollar", "$0.99" ->
    "ninety nine cents", "£3" -> "three pounds", "5€" -> "five euros", "50¢" -> "fifty cents",
    "$2.5m" -> "two point five million dollars", "-$5" -> "minus five dollars"."""

    def amount(sign: str | None, number: str, symbol: str, magnitude: str | None) -> str:
        if symbol == "¢":
            words = f"{_decimal(number)} {'cent' if number == '1' else 'cents'}"
            return f" {'minus ' if sign else ''}{words} "
        one, many, sub_one, sub_many = _CURRENCIES[symbol]
        whole, _, fraction = number.partition(".")
        whole = whole.replace(",", "") or "0"
        if magnitude:  # "$2.5 million": the decimal is read as a number, then the unit
            words = f"{_decimal(number)} {_MAGNITUDES[magnitude.lower()]} {many}"
        elif fraction and (len(fraction) > 2 or sub_one is None):  # "$1.005": point reading
            words = f"{_decimal(number)} {many}"
        else:
            cents = int(fraction.ljust(2, "0")) if fraction else 0  # "$5.5" is five fifty
            parts = []
            if int(whole) or not cents:
                parts.append(f"{_cardinal(whole)} {one if whole == '1' else many}")
            if cents:
                parts.append(f"{number_to_words(cents)} {sub_one if cents == 1 else sub_many}")
            words = " ".join(parts)
        return f" {'minus ' if sign else ''}{words} "

    text = _CURRENCY_BEFORE.sub(lambda m: amount(m[1], m[3], m[2], m[4] or m[5]), text)
    return _CURRENCY_AFTER.sub(lambda m: amount(m[1], m[2], m[3], None), text)


_PERCENT = re.compile(r"(?<![\d.,])(" + _NUM + r"|\.\d+)\s?%")


def expand_percent(text: str) -> str:
    """Read percentages: "50%" -> "fifty percent", "3.5 %" -> "three point five percent"."""
    return _PERCENT.sub(lambda m: f" {_decimal(m[1])} percent ", text)


_ORDINAL = re.compile(r"\b(" + _INT + r")(st|nd|rd|th)\b", re.IGNORECASE)


def expand_ordinals(text: str) -> str:
    """Read ordinals: "1st" -> "first", "22nd" -> "twenty second", "103rd" -> "one hundred third"."""

    def read(match: re.Match) -> str:
        digits = match[1].replace(",", "")
        if len(digits) > LONGEST_CARDINAL:  # no ordinal reading: leave it to the number rule
            return f" {digits} "
        return f" {ordinal_to_words(int(digits))} "

    return _ORDINAL.sub(read, text)


_DECADE = re.compile(r"(?<![\d,.])'?(\d?\d?[1-9]0|\d\d00)'?s\b")


def expand_decades(text: str) -> str:
    """Read decades: "1990s" -> "nineteen nineties", "the '80s" -> "the eighties", "1900s" ->
    "nineteen hundreds"."""

    def read(match: re.Match) -> str:
        digits = match.group(1)
        if len(digits) == 4 and 1000 <= int(digits):
            return f" {_plural(year_to_words(int(digits)))} "
        if len(digits) == 2:
            return f" {_plural(number_to_words(int(digits)))} "
        return match.group(0)  # "100s", "0s": left for the number rules

    return _DECADE.sub(read, text)


_FRACTION = re.compile(r"(?<![\d/.,])(?:(\d+)\s+)?(\d+)/(\d+)(?![\d/])")
_FRACTION_DENOMINATORS = set(range(2, 11)) | {12, 16, 32, 64, 100}  # read as fractions


def expand_fractions(text: str) -> str:
    """Read simple fractions: "1/2" -> "one half", "3/4" -> "three quarters", "2 1/3" -> "two and
    one third". Only proper fractions with a small denominator; "24/7" and "9/11" are numbers."""

    def read(match: re.Match) -> str:
        whole, numerator, denominator = match[1], int(match[2]), int(match[3])
        if not (0 < numerator < denominator and denominator in _FRACTION_DENOMINATORS):
            return match.group(0)
        if denominator == 2:
            name = "half" if numerator == 1 else "halves"
        elif denominator == 4:
            name = "quarter" if numerator == 1 else "quarters"
        else:
            name = ordinal_to_words(denominator) + ("" if numerator == 1 else "s")
        words = f"{number_to_words(numerator)} {name}"
        return f" {_cardinal(whole)} and {words} " if whole else f" {words} "

    return _FRACTION.sub(read, text)


# unit -> (singular, plural). Case matters ("m" metre, "M" no unit; "mL" and "ml" both litres).
_UNITS = {
    "km/h": ("kilometer per hour", "kilometers per hour"), "kph": ("kilometer per hour", "kilometers per hour"),
    "mph": ("mile per hour", "miles per hour"), "m/s": ("meter per second", "meters per second"),
    "km": ("kilometer", "kilometers"), "m": ("meter", "meters"), "cm": ("centimeter", "centimeters"),
    "mm": ("millimeter", "millimeters"), "mi": ("mile", "miles"), "ft": ("foot", "feet"),
    "yd": ("yard", "yards"), "kg": ("kilogram", "kilograms"), "g": ("gram", "grams"),
    "mg": ("milligram", "milligrams"), "lb": ("pound", "pounds"), "lbs": ("pound", "pounds"),
    "oz": ("ounce", "ounces"), "l": ("liter", "liters"), "L": ("liter", "liters"),
    "ml": ("milliliter", "milliliters"), "mL": ("milliliter", "milliliters"),
    "ms": ("millisecond", "milliseconds"), "sec": ("second", "seconds"), "min": ("minute", "minutes"),
    "h": ("hour", "hours"), "hr": ("hour", "hours"), "hrs": ("hour", "hours"),
    "Hz": ("hertz", "hertz"), "kHz": ("kilohertz", "kilohertz"), "MHz": ("megahertz", "megahertz"),
    "GHz": ("gigahertz", "gigahertz"), "kB": ("kilobyte", "kilobytes"), "KB": ("kilobyte", "kilobytes"),
    "MB": ("megabyte", "megabytes"), "GB": ("gigabyte", "gigabytes"), "TB": ("terabyte", "terabytes"),
    "W": ("watt", "watts"), "kW": ("kilowatt", "kilowatts"), "kWh": ("kilowatt hour", "kilowatt hours"),
    "V": ("volt", "volts"), "°C": ("degree celsius", "degrees celsius"),
    "°F": ("degree fahrenheit", "degrees fahrenheit"), "°": ("degree", "degrees"),
}  # fmt: skip
_UNIT = re.compile(
    r"(?<![\d.,])(" + _NUM + r"|\.\d+)\s?("
    + "|".join(re.escape(u) for u in sorted(_UNITS, key=len, reverse=True))
    + r")(?![A-Za-z0-9/])"
)


def expand_units(text: str) -> str:
    """Read a number followed by a unit: "5 km" -> "five kilometers", "1 kg" -> "one kilogram",
    "20°C" -> "twenty degrees celsius", "2.5GB" -> "two point five gigabytes"."""

    def read(match: re.Match) -> str:
        number, unit = match.groups()
        singular, plural = _UNITS[unit]
        return f" {_decimal(number)} {singular if number == '1' else plural} "

    return _UNIT.sub(read, text.replace("° C", "°C").replace("° F", "°F"))


_PHONE = re.compile(r"(?<![\d-])(?:\(\d{3}\)\s?|\d{3}[-.\s])?\d{3}-\d{4}(?![\d-])")


def expand_phone_numbers(text: str) -> str:
    """Read phone numbers digit by digit: "555-1234", "(555) 123-4567", "555 123-4567"."""
    return _PHONE.sub(lambda m: " " + digits_to_words(re.sub(r"\D", "", m.group(0))) + " ", text)


_EQUATION_AHEAD = r"(?=\d[\d\s.+\-*/x×÷()]{0,60}=)"  # the rest of the expression has an "="
_MINUS_IN_EQUATION = re.compile(r"(?<=\d)\s*-\s*" + _EQUATION_AHEAD)
_RANGE = re.compile(r"(?<=\d)\s*-\s*(?=[$£€¥]?\d)")  # 5-10, $5-$10
_NEGATIVE = re.compile(r"(?<![A-Za-z0-9.])-(?=\.?\d)")
_BY = re.compile(r"(?<=\d)\s*x\s*(?=\d)")  # 3x4, 3 x 4 (dimensions)
_TIMES = re.compile(r"(?<=\d)\s*x\b")  # 2x faster


def expand_arithmetic(text: str) -> str:
    """Read signs next to numbers: "5-10" -> "5 to 10" (a range), "7 - 2 = 5" -> "7 minus 2
    = 5" (a "-" inside an equation), "-3" -> "minus 3", "3x4" -> "3 by 4", "2x" -> "2 times".
    ("-$5" keeps its sign for `expand_currency`.)"""
    text = _MINUS_IN_EQUATION.sub(" minus ", text)
    text = _RANGE.sub(" to ", text)
    text = _NEGATIVE.sub(" minus ", text)
    text = _BY.sub(" by ", text)
    return _TIMES.sub(" times ", text)


_YEAR = re.compile(r"(?<![\d.,])(1[1-9]\d\d|20\d\d)(?![\d,]|\.\d)")
_YEAR_BEFORE = re.compile(
    r"\b(?:in|since|from|until|till|by|during|before|after|circa|ca|c\.|year|the|of|early|late|mid|"
    r"around|spring|summer|autumn|fall|winter|" + "|".join(_MONTHS) + r"|(?:1[1-9]|20)\d\d\s+(?:to|and|or|through))"
    r"[\s,.-]*$",
    re.IGNORECASE,
)
_YEAR_AFTER = re.compile(r"^\s*(?:A\.?D\b|B\.?C\b|BCE\b|CE\b|(?:to|and|or|through)\s+(?:1[1-9]|20)\d\d\b)")
_CONTEXT = 40  # characters either side that the year and "St."/"Dr." rules look at
_NO_WORD_AFTER = re.compile(r"^\s*(?:$|[^\sA-Za-z0-9])")


def expand_years(text: str) -> str:
    """Read 1100-2099 as a year in a year context (see the module docstring): "in 1984" ->
    "in nineteen eighty four", "in 2005" -> "in two thousand five", "1990 to 2010" ->
    "nineteen ninety to twenty ten". Other four-digit numbers are left for the cardinal rule."""

    def read(match: re.Match) -> str:
        before = text[max(0, match.start() - _CONTEXT) : match.start()]
        after = text[match.end() : match.end() + _CONTEXT]
        if _YEAR_BEFORE.search(before) or _YEAR_AFTER.match(after) or _NO_WORD_AFTER.match(after):
            return f" {year_to_words(int(match.group(1)))} "
        return match.group(0)

    return _YEAR.sub(read, text)


_NUMBER = re.compile(r"(" + _NUM + r"|\.\d+)")


def expand_numbers(text: str) -> str:
    """Read every remaining number: "1,234" -> "one thousand two hundred thirty four", "3.5" ->
    "three point five", "007" -> "zero zero seven", "mp3" -> "mp three"."""
    return _NUMBER.sub(lambda m: f" {_decimal(m.group(1))} ", text)


# Abbreviations read before the number rules because they need the digit after them.
_NUMBER_SIGNS = re.compile(r"(?:\b(?:No|no|NO)\.|#)\s?(?=\d)")


def expand_number_signs(text: str) -> str:
    """Read "No. 5" / "#1" as "number 5" / "number 1"."""
    return _NUMBER_SIGNS.sub(" number ", text)


# abbreviation (regex) -> reading. The period is part of the abbreviation; the first four
# also match without it because "mr", "mrs", "vs", "etc" are never words of their own
# (these four are the only word rules that can fire on normalised text: see idempotence).
_WORD_ABBREVIATIONS = {
    r"\bmrs\b\.?": "missus", r"\bmr\b\.?": "mister", r"\bvs\b\.?": "versus", r"\betc\b\.?": "et cetera",
}  # fmt: skip
_ABBREVIATIONS = {
    r"\bMs\.?(?=\s+[A-Z])|\bMs\.": "miss", r"\bProf\.|\bProf\b(?=\s+[A-Z])": "professor",
    r"(?i:\be\.g\b\.?)": "for example", r"(?i:\bi\.e\b\.?)": "that is", r"\bcf\.": "compare",
    r"\bapprox\.": "approximately",
    r"\bJr\.": "junior", r"\bSr\.": "senior", r"\bMt\.": "mount", r"\bAve\.": "avenue", r"\bBlvd\.": "boulevard",
    r"\bRd\.": "road", r"\bInc\.": "incorporated", r"\bLtd\.": "limited", r"\bCorp\.": "corporation",
    r"\bDept\.": "department", r"\bGov\.": "governor", r"\bSen\.": "senator", r"\bRep\.": "representative",
    r"\bGen\.": "general", r"\bCapt\.": "captain", r"\bLt\.": "lieutenant", r"\bSgt\.": "sergeant",
    r"\bFig\.": "figure", r"\bVol\.": "volume", r"\bPhD\b\.?": "p h d", r"\bSept\.": "september",
}  # fmt: skip
_ABBREVIATION_PATTERNS = [(re.compile(p, re.IGNORECASE), w) for p, w in _WORD_ABBREVIATIONS.items()] + [
    (re.compile(p), w) for p, w in _ABBREVIATIONS.items()
]
# "St." / "Dr.": a title before a capitalised word ("St. Louis", "Dr. Smith"), a place after
# one ("Main St.", "Elm Dr. is closed"), else a title. Without a period only before a capital.
_SAINT_OR_STREET = re.compile(r"\b(?:(St|Dr)\b(?=\s+[A-Z])|([Ss][Tt]|[Dd][Rr])\.)")
_PLACE_OR_TITLE = {"st": ("street", "saint"), "dr": ("drive", "doctor")}


def expand_abbreviations(text: str) -> str:
    """Read common abbreviations: "Dr. Smith" -> "doctor smith", "Elm Dr." -> "elm drive",
    "St. Louis" -> "saint louis", "Main St." -> "main street", "Mr."/"Mrs."/"Ms." -> "mister",
    "missus", "miss"; "etc." -> "et cetera", "e.g." -> "for example", "vs." -> "versus", ..."""

    def saint_or_street(match: re.Match) -> str:
        place, title = _PLACE_OR_TITLE[(match[1] or match[2]).lower()]
        before = match.string[max(0, match.start() - _CONTEXT) : match.start()]
        after = match.string[match.end() : match.end() + _CONTEXT]
        after_name = re.search(r"\b[A-Z][a-z]+\s+$", before)
        before_name = re.match(r"\s+[A-Z]", after)
        return f" {place} " if after_name and not before_name else f" {title} "

    def padded(words: str) -> Callable[[re.Match], str]:
        # spaces around the reading, except before a possessive "'s" ("Mr.'s" -> "mister's")
        return lambda m: f" {words}" + ("" if m.string.startswith("'", m.end()) else " ")

    text = _SAINT_OR_STREET.sub(saint_or_street, text)
    for pattern, words in _ABBREVIATION_PATTERNS:
        text = pattern.sub(padded(words), text)
    return text


_SYMBOLS = {"&": " and ", "+": " plus ", "=": " equals ", "@": " at ", "%": " percent ", "°": " degrees ",
            "×": " times ", "÷": " divided by ", "£": " pounds ", "€": " euros ", "$": " dollars ",
            "¥": " yen ", "¢": " cents "}  # fmt: skip


def expand_symbols(text: str) -> str:
    """Read the symbols that have a spoken form: "&" -> "and", "+" -> "plus", "=" -> "equals",
    "@" -> "at", a lone "%" -> "percent", ... (other punctuation is dropped by `clean`)."""
    for symbol, words in _SYMBOLS.items():
        text = text.replace(symbol, words)
    return text


_DOTTED_LETTERS = re.compile(r"(?<![A-Za-z.])(?:[A-Za-z]\.){2,}|(?<![A-Za-z.])[A-Za-z](?:\.[A-Za-z])+\b")
_ALL_CAPS = re.compile(r"(?<![A-Za-z'])([A-Z]{2,})('?s)?(?![A-Za-z'])")
_VOWELS = set("AEIOU")
_ONSETS = set("BL BR CH CL CR DR FL FR GL GR PH PL PR SC SH SK SL SM SN SP ST SW TH TR TW WH".split())
_CODAS = set(
    "CH CK CT DS FT LD LF LK LL LM LP LT MP ND NG NK NS NT PS PT RB RD RK RM RN RS RT SH SK SP SS ST TH TS".split()
)


def is_pronounceable(word: str) -> bool:
    """Can an all-caps word be read as a word ("NASA") rather than spelled ("FBI")? See the
    module docstring for the rule."""
    if len(word) < 4 or not _VOWELS & set(word):
        return False
    runs = re.findall(r"[AEIOU]+|[^AEIOU]+", word)  # alternating vowel / consonant runs
    if any(len(run) >= 3 for run in runs):
        return False
    first, last = runs[0], runs[-1]
    if first[0] not in _VOWELS and len(first) == 2 and first not in _ONSETS:
        return False
    return not (last[0] not in _VOWELS and len(last) == 2 and last not in _CODAS)


def expand_initialisms(text: str) -> str:
    """Spell initialisms: "U.S.A." -> "U S A", "FBI" -> "F B I", "CDs" -> "C D's"; all-caps
    words that can be read ("NASA", see `is_pronounceable`) are left as words."""
    text = _DOTTED_LETTERS.sub(lambda m: " " + " ".join(re.findall(r"[A-Za-z]", m.group(0))) + " ", text)

    def spell(match: re.Match) -> str:
        word, plural = match.group(1), match.group(2)
        if is_pronounceable(word):
            return match.group(0)
        return " " + " ".join(word) + ("'s" if plural else "") + " "

    return _ALL_CAPS.sub(spell, text)


def clean(text: str) -> str:
    """Lowercase, keep apostrophes only between letters, turn everything else that is not
    a-z into spaces, collapse runs of spaces."""
    text = re.sub(r"[^a-z']+", " ", text.lower())
    text = re.sub(r"(?<![a-z])'|'(?![a-z])", " ", text)
    return " ".join(text.split())


# The rules in the order they run. The order matters: URLs before anything reads their dots;
# dates and phone numbers before "-" is read as "to"/"minus"; signs before the rules that read
# signed quantities ("-5°C"); times and money before bare numbers; every number rule before
# the word rules; initialisms after abbreviations (so "MR." is "mister"); clean last.
RULES: tuple[Callable[[str], str], ...] = (
    fold_unicode,
    expand_urls,
    expand_iso_dates,
    expand_phone_numbers,
    expand_arithmetic,
    expand_times,
    expand_currency,
    expand_percent,
    expand_ordinals,
    expand_decades,
    expand_fractions,
    expand_units,
    expand_number_signs,
    expand_years,
    expand_numbers,
    expand_abbreviations,
    expand_symbols,
    expand_initialisms,
    clean,
)
_SHOUTING_MIN_WORDS = 3  # at least this many all-caps words, and more than half the words


def is_shouting(text: str) -> bool:
    """True when most words of two or more letters are in capitals: then capitals are emphasis,
    not initialisms ("THIS IS THE FBI" -> "this is the fbi")."""
    words = re.findall(r"[A-Za-z]{2,}", text)
    caps = sum(word.isupper() for word in words)
    return caps >= _SHOUTING_MIN_WORDS and caps * 2 > len(words)


def normalize_text(text: str) -> str:
    """Normalise text to what a speaker would say: lowercase words of [a-z'] joined by single
    spaces, "" if nothing is speakable.

    >>> normalize_text("Dr. Smith paid $5.50 at 3:30 pm on the 22nd, in 2024!")
    'doctor smith paid five dollars fifty cents at three thirty p m on the twenty second in twenty twenty four'

    Runs RULES in order (see each rule's docstring); never raises on any str.
    """
    if not isinstance(text, str):
        raise ValueError(f"normalize_text expects a str, got {type(text).__name__}")
    shouting = is_shouting(text)
    for rule in RULES:
        if rule is expand_initialisms and shouting:
            continue
        text = rule(text)
    return text
