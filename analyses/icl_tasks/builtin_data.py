"""Built-in ICL task data, authored for this project (no copied datasets).

Small on purpose: enough items for a 2/3 : 1/3 demonstration-pool / test split and for label
words that a tiny model's tokenizer can spell. Classification sets have natural label words and,
for label-memo tasks, a keyword, a synonym and (where one exists) an antonym of each label.
Function tasks map a word to a word; those whose outputs are also inputs compose (m-fold).

Owns: the built-in tasks' words and pairs. Must not: import anything (plain data), or change
lightly: the data is fingerprinted into every ``icl`` cell key that uses it, and pico's training
mixture (``ckptlab/pico/icl_mixture.py``) reads it.
"""

from __future__ import annotations

# word -> category
CATEGORY_WORDS: dict[str, list[str]] = {
    "animal": ["cat", "dog", "horse", "mouse", "tiger", "sheep", "rabbit", "wolf", "bear", "goat"],
    "color": ["red", "blue", "green", "yellow", "purple", "orange", "black", "white", "pink"],
    "food": ["bread", "cheese", "apple", "rice", "soup", "butter", "honey", "salad", "pasta"],
    "body": ["hand", "foot", "knee", "nose", "elbow", "finger", "shoulder", "ankle", "chin"],
    "weather": ["rain", "snow", "storm", "fog", "wind", "hail", "thunder", "frost", "drizzle"],
    "tool": ["hammer", "saw", "drill", "wrench", "chisel", "shovel", "rake", "pliers", "axe"],
}

# short phrase -> sentiment
SENTIMENT_PHRASES: dict[str, list[str]] = {
    "positive": [
        "a wonderful day",
        "the meal was delicious",
        "I loved every minute",
        "a brilliant idea",
        "the staff were kind",
        "what a lovely garden",
        "this works perfectly",
        "a joyful song",
        "the view is beautiful",
        "great value for money",
        "she did an excellent job",
        "a charming little town",
        "the best film this year",
        "we had a fantastic time",
        "clean rooms and friendly people",
        "a gentle and warm story",
        "the fix was quick and easy",
        "an inspiring speech",
        "I am so happy with it",
        "a delightful surprise",
        "smooth and reliable",
        "the kids adored it",
        "a superb performance",
        "fresh and tasty",
    ],
    "negative": [
        "a terrible day",
        "the meal was awful",
        "I hated every minute",
        "a stupid idea",
        "the staff were rude",
        "what an ugly building",
        "this never works",
        "a boring song",
        "the view is depressing",
        "a waste of money",
        "she did a poor job",
        "a dirty noisy town",
        "the worst film this year",
        "we had a miserable time",
        "broken beds and angry people",
        "a dull and cold story",
        "the fix was slow and painful",
        "a tedious speech",
        "I am so sad about it",
        "a nasty shock",
        "slow and unreliable",
        "the kids hated it",
        "a weak performance",
        "stale and bland",
    ],
}

# Label-memo maps: label word -> keyword / synonym / antonym.
LABEL_MEMO: dict[str, dict[str, dict[str, str]]] = {
    "category": {
        "keyword": {
            "animal": "cat",
            "color": "red",
            "food": "bread",
            "body": "hand",
            "weather": "rain",
            "tool": "hammer",
        },
        "synonym": {
            "animal": "creature",
            "color": "hue",
            "food": "meal",
            "body": "figure",
            "weather": "climate",
            "tool": "device",
        },
    },
    "sentiment": {
        "keyword": {"positive": "great", "negative": "awful"},
        "synonym": {"positive": "good", "negative": "bad"},
        "antonym": {"positive": "negative", "negative": "positive"},
    },
}

COUNTRY_CAPITAL: dict[str, str] = {
    "France": "Paris",
    "Germany": "Berlin",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Portugal": "Lisbon",
    "Austria": "Vienna",
    "Greece": "Athens",
    "Poland": "Warsaw",
    "Norway": "Oslo",
    "Sweden": "Stockholm",
    "Finland": "Helsinki",
    "Denmark": "Copenhagen",
    "Ireland": "Dublin",
    "Hungary": "Budapest",
    "Egypt": "Cairo",
    "Kenya": "Nairobi",
    "Japan": "Tokyo",
    "China": "Beijing",
    "India": "Delhi",
    "Thailand": "Bangkok",
    "Russia": "Moscow",
    "Turkey": "Ankara",
    "Iran": "Tehran",
    "Peru": "Lima",
    "Chile": "Santiago",
    "Cuba": "Havana",
    "Canada": "Ottawa",
    "Mexico": "Mexico City",
    "Argentina": "Buenos Aires",
    "Colombia": "Bogota",
}

# Synonym chains: each word's "synonym" is the next word of its chain, so an m-fold
# composition maps chain[i] to chain[i + m] (m distinct steps, never back to the start).
SYNONYM_CHAINS: list[list[str]] = [
    ["small", "little", "tiny", "minute", "miniature"],
    ["big", "large", "huge", "enormous", "gigantic"],
    ["fast", "quick", "rapid", "swift", "speedy"],
    ["happy", "glad", "cheerful", "joyful", "merry"],
    ["sad", "unhappy", "gloomy", "miserable", "sorrowful"],
    ["smart", "clever", "bright", "brilliant", "wise"],
    ["begin", "start", "commence", "initiate", "launch"],
    ["end", "finish", "stop", "cease", "halt"],
    ["angry", "mad", "furious", "irate", "livid"],
    ["easy", "simple", "plain", "basic", "elementary"],
    ["hard", "difficult", "tough", "demanding", "arduous"],
    ["old", "aged", "ancient", "antique", "archaic"],
    ["rich", "wealthy", "affluent", "prosperous", "opulent"],
    ["calm", "quiet", "peaceful", "serene", "tranquil"],
]

ANTONYM_PAIRS: list[tuple[str, str]] = [
    ("hot", "cold"),
    ("up", "down"),
    ("in", "out"),
    ("big", "small"),
    ("fast", "slow"),
    ("happy", "sad"),
    ("light", "dark"),
    ("open", "closed"),
    ("early", "late"),
    ("high", "low"),
    ("rich", "poor"),
    ("old", "young"),
    ("strong", "weak"),
    ("hard", "soft"),
    ("wet", "dry"),
    ("full", "empty"),
    ("near", "far"),
    ("loud", "quiet"),
    ("clean", "dirty"),
    ("true", "false"),
    ("win", "lose"),
    ("buy", "sell"),
    ("first", "last"),
    ("left", "right"),
]

NUMBER_MAX = 99  # next_number: n -> n + 1 for n in 0..NUMBER_MAX - 1


def uppercase_words() -> list[str]:
    """Every lowercase single word of the built-in sets, in a stable order."""
    words = [w for ws in CATEGORY_WORDS.values() for w in ws]
    words += [w for chain in SYNONYM_CHAINS for w in chain]
    words += [w for pair in ANTONYM_PAIRS for w in pair]
    return sorted(set(words))
