"""Pure escalation detectors: sentiment, human requests, keywords and non-answers.

Every function here is plain Python with no database access, so callers (signal handlers,
background tasks) decide what to do with a `Detection`; its `evidence` is JSON-serialisable
and stored on the attention flag as-is.
"""

from __future__ import annotations

import re
import threading
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer


@dataclass(frozen=True)
class Detection:
    """The outcome of one detector: whether it matched, which rule decided, and why."""

    matched: bool
    rule: str
    evidence: dict[str, Any] = field(default_factory=dict)


# Curly quotes and look-alikes map to a plain apostrophe one character for one character, so
# spans found in the translated text are valid in the original.
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'", "\u00b4": "'"})


def _plain(text: str) -> str:
    """Return `text` with every apostrophe look-alike replaced by "'" (same length)."""
    return text.translate(_APOSTROPHES)


# --------------------------------------------------------------------------------------------
# Sentiment
# --------------------------------------------------------------------------------------------

_analyzer: SentimentIntensityAnalyzer | None = None
_analyzer_lock = threading.Lock()


def _get_analyzer() -> SentimentIntensityAnalyzer:
    """Return the shared VADER analyzer, creating it on first use."""
    global _analyzer
    # Loading the lexicon takes ~50 ms; do it once, and only in processes that score text.
    if _analyzer is None:
        with _analyzer_lock:
            if _analyzer is None:
                from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

                _analyzer = SentimentIntensityAnalyzer()
    return _analyzer


# VADER's cost grows with the square of the words a text expands to, and each emoji expands
# to its description: 4,000 emoji take seconds, 1,000 a quarter of one. The mood of a message
# is plain long before this many characters.
SENTIMENT_MAX_CHARS = 1000


def sentiment_score(text: str) -> float:
    """Return the VADER compound score (-1..1) of one customer message (its first 1,000 chars)."""
    if not text or not text.strip():
        return 0.0
    # polarity_scores only reads the shared lexicon, so concurrent calls are safe; VADER's
    # negation list spells contractions with a plain apostrophe ("don't"), hence _plain.
    text = _plain(text[:SENTIMENT_MAX_CHARS])
    return float(_get_analyzer().polarity_scores(text)["compound"])


# How much further below the threshold a single message must be to count on its own.
SINGLE_MESSAGE_MARGIN = 0.25


# The rule. `scores` are the compound scores of the customer's messages, oldest first; `recent`
# is the last `window` of them (all of them when there are fewer; a window below 1 counts as 1):
# - "vader_window": mean(recent) <= threshold, so one bad moment among calm ones does not flag;
# - "vader_single": the newest score <= max(threshold - 0.25, -1.0), so one furious message
#   counts at once, even right after a calm one.
# No scores never match.
def detect_negative_sentiment(
    scores: Sequence[float], *, threshold: float = -0.5, window: int = 2
) -> Detection:
    """Decide whether the customer's recent sentiment crosses `threshold`."""
    window = max(1, int(window))
    recent = [float(s) for s in scores[-window:]]
    cutoff = max(threshold - SINGLE_MESSAGE_MARGIN, -1.0)
    if not recent:
        return Detection(
            False,
            "vader_window",
            {"scores": [], "mean": None, "threshold": threshold, "window": window},
        )
    mean = round(sum(recent) / len(recent), 4)
    evidence: dict[str, Any] = {
        "scores": recent,
        "mean": mean,
        "threshold": threshold,
        "window": window,
        "single_cutoff": cutoff,
    }
    if mean <= threshold:
        return Detection(True, "vader_window", evidence)
    if recent[-1] <= cutoff:
        return Detection(True, "vader_single", evidence)
    return Detection(False, "vader_window", evidence)


# --------------------------------------------------------------------------------------------
# Explicit requests for a human
# --------------------------------------------------------------------------------------------

# "human resources", "human error"… are not people to talk to; "humane" fails the \b.
_HUMAN = (
    r"(?:h(?:u|oo)m(?:a|e)n|humna|huamn)(?:s|\s+beings?)?\b"
    r"(?!\s+(?:resources|rights|error|nature|race|trafficking|body|capital))"
)
_REP = r"(?:representatives?|representitives?|representives?|reps?)"
# The people a customer asks for by role, with or without a department in front.
_PERSON = (
    rf"(?:{_HUMAN}|persons?|"
    rf"(?:(?:customer\s+(?:service|support|care)|support|sales|billing)\s+)?(?:agents?|{_REP})|"
    r"operators?|(?:staff|team)\s+members?|"
    r"members?\s+of\s+(?:staff|(?:your|the)\s+(?:support\s+|sales\s+|billing\s+)?(?:team|staff))|"
    r"some(?:one|body)\s+(?:from|on|in|at)\s+(?:your|the)\s+(?:\w+\s+)?team)"
)
_BOSS = r"(?:managers?|supervisors?|boss|superiors?)"
# Whoever one can be talked to or put through to: people, bosses, departments, "someone".
_CONTACT = (
    rf"(?:{_PERSON}|{_BOSS}|people|some\s?(?:one|body)|any\s?(?:one|body)|"
    r"(?:(?:customer|tech(?:nical)?)\s+)?(?:support|service|care)(?:\s+(?:team|desk|line))?|"
    r"(?:sales|billing)(?:\s+team)?|(?:your|the)\s+team|help\s?desk)"
)
_DET = r"(?:(?:a|an|the|some|any|your|ur|one\s+of\s+(?:your|the))\s+)?"
_ADJ = r"(?:(?:real|actual|live|proper|human|living|genuine|flesh[- ]and[- ]blood)\s+)*"
_TALK = (
    r"(?:(?:talk(?:ing)?|tlak|speak(?:ing)?|chat(?:ting)?|communicate|communicating|converse|"
    r"get(?:ting)?\s+in\s+touch)\s+(?:to|with|w/|wit|2)|"
    r"reach(?:ing)?(?:\s+out\s+to)?|contact(?:ing)?)"
)
_NOUN = rf"{_DET}{_ADJ}(?P<noun>{{}})(?!')"

_HUMAN_RULES: tuple[tuple[str, str], ...] = (
    ("talk_to_human", rf"\b{_TALK}\s+" + _NOUN.format(_CONTACT)),
    (
        "connect_to_human",
        r"\b(?:(?:connect|transfer|put|pass|forward|redirect|hand|route|switch|send|escalate)\s+"
        r"(?:me|us|this(?:\s+(?:chat|conversation|case|ticket))?|"
        r"my\s+(?:chat|case|call|ticket|question|issue))\s+(?:(?:through|over|on|back)\s+)?|"
        r"(?:be|get)\s+(?:transferred|connected|put\s+through|passed(?:\s+on)?|"
        r"handed\s+over|forwarded|redirected|escalated)\s+)"
        r"(?:to|with)\s+" + _NOUN.format(_CONTACT),
    ),
    (
        "get_me_human",
        r"\b(?:(?:get|give|gimme|find|bring|fetch|send)\s+(?:me\s+)?|"
        r"(?:can|could|may)\s+(?:i|we)\s+(?:please\s+)?have\s+)"
        + _NOUN.format(rf"{_PERSON}|{_BOSS}"),
    ),
    (
        "get_me_someone",
        r"\b(?:get|give|gimme|find|bring|fetch|send)\s+me\s+(?P<noun>some\s?(?:one|body))\b",
    ),
    (
        "want_human",
        r"\b(?:want|wanna|need|require|prefer|demand|request(?:ing)?|"
        r"ask(?:ing|ed)?\s+for|looking\s+for|would\s+like|'d\s+like)\s+"
        r"(?:to\s+(?:have|get)\s+)?" + _NOUN.format(_PERSON),
    ),
    (
        "is_there_human",
        rf"\b(?:is|are)\s+there\s+(?:(?:a|an|any|some)\s+)?{_ADJ}"
        rf"(?P<noun>{_PERSON}|people|some\s?(?:one|body)|any\s?(?:one|body))\b",
    ),
    (
        "anyone_there",
        r"\b(?P<noun>(?:any|some)\s?(?:one|body))\s+(?:there|here|real|alive|around|"
        r"available|online)\b",
    ),
    ("human_please", rf"\b{_ADJ}(?P<noun>{_PERSON})\s*,?\s*(?:please|pls|plz|asap)\b"),
    # "Operator!" / "Agent now!" at the start of a sentence; mid-sentence "agent!" is too vague.
    ("human_shout", rf"(?:^|[.!?;:,])\s*{_ADJ}(?P<noun>{_PERSON})\s*(?:now\s*)?!+"),
    # The whole message is just the request: "representative", "Real person please".
    (
        "bare_request",
        r"^\W*(?:(?:hi|hello|hey|ok|okay|so|um+|please|pls)\W+)*"
        + _NOUN.format(
            rf"{_PERSON}|customer\s+(?:service|support|care)|live\s+(?:chat|support)|"
            r"some\s?(?:one|body)|any\s?(?:one|body)"
        )
        + r"(?:\W+(?:please|pls|plz|now|asap|here|again))*\W*$",
    ),
    (
        "live_agent",
        rf"\blive\s+(?P<noun>agents?|persons?|{_HUMAN}|operators?|{_REP}|"
        rf"chat\s+with\s+{_DET}{_ADJ}{_CONTACT})",
    ),
    (
        "person_help",
        rf"\b(?:can|could|would|will|may)\s+{_DET}{_ADJ}(?P<noun>{_PERSON})\s+(?:please\s+)?"
        r"(?:help|assist|look\s+(?:at|into)|call|contact|get\s+back|take\s+over|check|review)\b",
    ),
    (
        "callback",
        rf"\b(?:have|get|can|could)\s+{_DET}(?P<noun>some(?:one|body)|{_PERSON})\s+"
        r"(?:to\s+)?(?:call|phone|ring|email)\s+me\b",
    ),
    (
        "escalate",
        r"\b(?P<noun>escalat(?:e|ing|ion))(?:\s+(?:this|it|that|my\s+\w+|the\s+\w+|to\s+\w+)\b|"
        r"\s*(?:please|pls|now)\b|\s*!+|\s*\.?\s*$)",
    ),
)

_HUMAN_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern, re.IGNORECASE)) for name, pattern in _HUMAN_RULES
)

# Words that turn "agent"/"person" into someone else's ("travel agent", "real estate agent").
_NOT_OUR_PERSON_BEFORE = re.compile(
    r"\b(?:estate|travel|insurance|booking|secret|sports|shipping|customs|press|talent|literary|"
    r"leasing|letting|rental|free|double|undercover|fbi|cia|user|our|my|his|her|their|i'm|im)"
    r"\s*$",
    re.IGNORECASE,
)
# Words that turn the noun into a modifier ("agent commission", "person limit").
_NOT_OUR_PERSON_AFTER = re.compile(
    r"^\s*(?:commissions?|rates?|fees?|limits?|caps?|seats?|prices?|pricing|counts?|roles?|"
    r"permissions?|access|ids?|fields?|types?|names?|portal|api|errors?|licen[cs]es?|plans?|"
    r"lists?|mode|view|dashboard|reports?|features?|accounts?|string|header)\b|"
    # "a person on my team", "someone in our company": a colleague, not one of our people.
    r"^\s*(?:(?:on|in|from|at|of)\s+(?:my|our)|to\s+be\s+able)\b",
    re.IGNORECASE,
)
_NEGATORS = re.compile(
    r"\b(?:don't|dont|do\s+not|doesn't|doesnt|does\s+not|didn't|didnt|did\s+not|won't|wont|"
    r"will\s+not|wouldn't|wouldnt|would\s+not|shouldn't|shouldnt|should\s+not|needn't|never|"
    r"not|without|no\s+(?:need|reason|longer)|nor|neither)\b|\bno\s*$",
    re.IGNORECASE,
)
# "Why won't you let me talk to a human?" and "I don't know how to reach a person" are requests.
_RHETORICAL = re.compile(r"\bwhy\b|\b(?:don't|dont|do\s+not)\s+know\s+how\b", re.IGNORECASE)
# A negation only reaches back to the start of its clause, and no further than a few words.
_CLAUSE_BREAK = re.compile(r"[.!?;:,()\n]|\b(?:but|so|just|instead)\b", re.IGNORECASE)
NEGATION_WORDS = 6


def _negation_before(text: str, start: int) -> str | None:
    """Return the negating words in the clause just before `start`, if any."""
    before = text[:start]
    breaks = list(_CLAUSE_BREAK.finditer(before))
    clause = before[breaks[-1].end() :] if breaks else before
    window = " ".join(clause.split()[-NEGATION_WORDS:])
    if _RHETORICAL.search(window):
        return None
    found = _NEGATORS.search(window)
    return found.group(0).strip() if found else None


def _is_someone_else(text: str, match: re.Match[str]) -> bool:
    """Tell whether the matched person is a false friend ("travel agent", "agent fees")."""
    if "noun" not in match.re.groupindex or match.start("noun") < 0:
        return False
    return bool(
        _NOT_OUR_PERSON_BEFORE.search(text[: match.start("noun")])
        or _NOT_OUR_PERSON_AFTER.match(text[match.end("noun") :])
    )


# Named regex rules find the request; a match is dropped when the person is someone else's
# ("my travel agent", "agent commission") and set aside when a negation precedes it in the same
# clause ("I don't need a human"). Any one non-negated match decides (rule "phrase:<name>");
# otherwise the first negated one is reported (rule "negated"), or nothing (rule "none").
def detect_human_request(text: str) -> Detection:
    """Detect an explicit request, in words, to talk to a human."""
    plain = _plain(text or "")
    negated: Detection | None = None
    for name, pattern in _HUMAN_PATTERNS:
        for match in pattern.finditer(plain):
            if _is_someone_else(plain, match):
                continue
            phrase = text[match.start() : match.end()].strip(" \t\n.,;:")
            negator = _negation_before(plain, match.start())
            if negator is None:
                return Detection(True, f"phrase:{name}", {"phrase": phrase, "rule": name})
            if negated is None:
                negated = Detection(
                    False, "negated", {"phrase": phrase, "rule": name, "negation": negator}
                )
    return negated or Detection(False, "none", {})


# --------------------------------------------------------------------------------------------
# Admin-defined keywords
# --------------------------------------------------------------------------------------------

_APOSTROPHE_CLASS = "['\u2019\u2018\u02bc]"


def _phrase_pattern(phrase: str) -> str:
    """Return the regex source matching `phrase` as a whole phrase, literally."""
    words = []
    for word in phrase.split():
        escaped = "".join(
            _APOSTROPHE_CLASS if ch in "'\u2019\u2018\u02bc" else re.escape(ch) for ch in word
        )
        words.append(escaped)
    # (?<!\w)/(?!\w) are Unicode-aware word edges that also work next to "+" or "$".
    return r"(?<!\w)" + r"\s+".join(words) + r"(?!\w)"


@lru_cache(maxsize=256)
def _compile_phrases(phrases: tuple[str, ...]) -> tuple[tuple[str, re.Pattern[str]], ...]:
    """Compile the non-blank `phrases`, in order, once per distinct tuple."""
    compiled = []
    for phrase in phrases:
        normal = unicodedata.normalize("NFC", phrase or "").strip()
        if normal:
            compiled.append((phrase, re.compile(_phrase_pattern(normal), re.IGNORECASE)))
    return tuple(compiled)


def detect_keywords(text: str, phrases: Sequence[str]) -> Detection:
    """Detect the first admin phrase (in the order given) that occurs in `text` as whole words."""
    if not text:
        return Detection(False, "keyword", {})
    for phrase, pattern in _compile_phrases(tuple(phrases)):
        match = pattern.search(text)
        if match:
            return Detection(
                True,
                "keyword",
                {"phrase": phrase, "match": match.group(0), "span": [match.start(), match.end()]},
            )
    return Detection(False, "keyword", {})


# --------------------------------------------------------------------------------------------
# Non-answers from the AI
# --------------------------------------------------------------------------------------------

DEFAULT_CONFIDENCE_THRESHOLD = 0.35

_I = r"(?:i|i'm|i\s+am|i've|i'd)"
_CANT = (
    r"(?:can't|cant|cannot|can\s+not|am\s+unable\s+to|'m\s+unable\s+to|am\s+not\s+able\s+to|"
    r"'m\s+not\s+able\s+to|unable\s+to|couldn't|could\s+not|wasn't\s+able\s+to|was\s+unable\s+to)"
)

# Phrases that say the reply does not answer. Names are reported as evidence.
_NON_ANSWER_RULES: tuple[tuple[str, str], ...] = (
    (
        "apology_no_info",
        r"\b(?:sorry|apologi[sz]e|unfortunately)\b[^.!?]{0,40}?\b(?:don't|do\s+not|dont|have\s+no|"
        r"haven't|can't|cannot|couldn't|could\s+not|unable|not\s+able|no\s+information)\b",
    ),
    (
        "no_answer",
        r"\bi\s+(?:don't|do\s+not|dont)\s+have\s+(?:an?\s+|any\s+|the\s+|a\s+good\s+|"
        r"enough\s+|specific\s+|that\s+|this\s+|more\s+)?(?:answer|information|info|details|data|"
        r"knowledge|access|visibility|record|way\s+to)\b|"
        r"\bi\s+have\s+no\s+(?:information|info|details|data|knowledge|answer|access|record|idea)\b|"
        r"\b(?:no|not\s+any)\s+(?:information|info|details|answer)\s+(?:about|on|for|regarding)\b|"
        r"\b(?:isn't|is\s+not|aren't|are\s+not)\s+(?:available|accessible|visible)\s+to\s+me\b",
    ),
    (
        "dont_know",
        r"\bi\s+(?:(?:honestly|really|just|simply)\s+)?(?:don't|do\s+not|dont)\s+"
        r"(?:(?:really|actually)\s+)?know\b|"
        r"\b(?:i'm|i\s+am)\s+(?:(?:honestly|really|just)\s+)?(?:not\s+(?:sure|certain)|unsure|"
        r"uncertain|afraid\s+i\s+(?:don't|can't|cannot))\b|"
        r"\bnot\s+(?:sure|certain)\s+(?:about|what|how|which|whether|if|i)\b",
    ),
    (
        "cannot_help",
        rf"\b{_I}?\s*{_CANT}\s+(?:help|assist|answer|respond|provide|give|find|locate|access|see|"
        r"view|look\s+up|check|process|do\s+that|support|verify|retrieve)\b",
    ),
    (
        "could_not_find",
        r"\bi\s+(?:couldn't|could\s+not|can't|cannot|wasn't\s+able\s+to|was\s+unable\s+to|"
        r"didn't|did\s+not)\s+(?:find|locate)\b|"
        r"\b(?:no|nothing)\s+(?:results?|matches|matching\s+\w+|relevant\s+\w+)\b|"
        r"\bnothing\s+(?:about|on|regarding)\s+(?:that|this)\b",
    ),
    (
        "dont_understand",
        r"\bi\s+(?:don't|do\s+not|dont|didn't|did\s+not)\s+(?:quite\s+)?(?:understand|follow|"
        r"get|catch)\b|\bnot\s+sure\s+(?:i|what\s+you)\s+(?:understand|mean|follow)\b",
    ),
    (
        "rephrase",
        r"\b(?:rephrase|reword|rephrasing|say\s+(?:that|it)\s+(?:again|differently|another\s+way)|"
        r"clarify\s+(?:what|your\s+question)|more\s+(?:details|context)\s+about\s+your\s+question)\b",
    ),
    (
        "trouble",
        r"\bhaving\s+(?:some\s+)?(?:trouble|difficulty|difficulties|issues|problems)\s+"
        r"(?:answering|responding|understanding|finding|connecting|right\s+now)\b|"
        r"\bsomething\s+went\s+wrong\b|\btechnical\s+(?:difficulties|issues|problems)\b",
    ),
    (
        "out_of_scope",
        r"\b(?:outside|beyond)\s+(?:of\s+)?(?:my|the)\s+(?:scope|knowledge|expertise|area)\b|"
        r"\b(?:i\s+can|i'm\s+able\s+to|i\s+am\s+able\s+to)\s+only\s+(?:help|answer|assist)\b|"
        r"\bi\s+(?:can\s+)?only\s+(?:help|answer|assist)\s+(?:with\s+)?(?:questions|topics)\b|"
        r"\bnot\s+(?:something|a\s+topic|a\s+question)\s+i\s+can\s+(?:help|answer|assist)\b",
    ),
    (
        "as_an_ai",
        r"\bas\s+an?\s+(?:ai|artificial\s+intelligence|language\s+model|virtual\s+assistant|bot)"
        r"(?:\s+(?:language\s+model|model|assistant))?\b",
    ),
    (
        "deflect",
        r"\b(?:please\s+|you(?:\s+(?:can|could|may|might|should|(?:will\s+)?need\s+to|"
        r"(?:may|might)\s+want\s+to)|'ll\s+(?:need|want|have)\s+to|'d\s+(?:need|have)\s+to)\s+|"
        r"(?:i'd|i\s+would)\s+(?:recommend|suggest|advise)\s+|(?:best|better)\s+to\s+|"
        r"recommend\s+|suggest\s+|try\s+)"
        r"(?:contact(?:ing)?|reach(?:ing)?\s+out\s+to|get(?:ting)?\s+in\s+touch\s+with|"
        r"call(?:ing)?|email(?:ing)?|speak(?:ing)?\s+(?:to|with)|talk(?:ing)?\s+(?:to|with)|"
        r"ask(?:ing)?)\s+"
        r"(?:us\b|our\s+|the\s+|your\s+|a\s+)?(?:\w+\s+)?(?:support|customer\s+(?:service|support|"
        r"care)|help\s?desk|team|administrator|admin|account\s+manager|human|person|agent|"
        r"representative|member\s+of)\b|\bcontact\s+us\b",
    ),
    (
        "offer_human",
        r"\bask\s+to\s+(?:talk|speak|chat)\s+(?:to|with)\b|"
        r"\b(?:connect|transfer|put)\s+you\s+(?:through\s+)?(?:to|with)\b|"
        r"\b(?:a\s+member\s+of\s+our|one\s+of\s+our|our)\s+(?:\w+\s+)?(?:team|agents?|colleagues?|"
        r"staff)\s+(?:can|will|could|would|is\s+better)\b",
    ),
)
_NON_ANSWER_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern, re.IGNORECASE)) for name, pattern in _NON_ANSWER_RULES
)
# Any of them: one search tells most clauses (an answer's) apart from those to look into.
_ANY_NON_ANSWER = re.compile(
    "|".join(f"(?:{pattern})" for _, pattern in _NON_ANSWER_RULES), re.IGNORECASE
)

# Pleasantries: neither a non-answer nor substance, whatever their length.
_FILLER = re.compile(
    r"\banything\s+else\b|\blet\s+(?:me|us)\s+know\b|\bfeel\s+free\b|"
    r"\b(?:happy|glad|here)\s+to\s+help\b|\bhope\s+(?:this|that)\s+helps\b|"
    r"\bthank(?:s|\s+you)\b|\b(?:apologi[sz]e|sorry)\s+(?:for|about)\b|"
    r"\b(?:will|would|'ll|should)\s+be\s+(?:able|happy|glad)\s+to\b|\btry\s+again\b|"
    r"\bin\s+the\s+meantime\b|\bmake\s+sure\s+i\b|\bgood\s+question\b|\bgreat\s+question\b",
    re.IGNORECASE,
)
# Signs of a real answer in a clause that is not itself a non-answer.
_SUBSTANCE = re.compile(
    r"→|->|\w\s+>\s+\w|\d|"  # menu paths, amounts, durations, versions
    r"\b[a-z0-9-]+\.(?:app|com|io|org|net|dev)\b|"  # a page to open
    r"^\W*(?:yes|yep|no|nope|sure|of\s+course|absolutely)\b|"
    r"\b(?:click|tap|go\s+to|open|select|choose|enter|type|press|navigate|visit|head\s+to|"
    r"sign\s+in|log\s+in|update|download|upload|scan|install|reinstall|restart|enable|disable|"
    r"turn\s+(?:on|off)|add|remove|switch|use|clear|export|import|book|apply|pick|copy|save|"
    r"toggle)\b",
    re.IGNORECASE,
)
# A plain statement this long, with no non-answer or filler phrase, informs.
SUBSTANCE_WORDS = 5
_CLAUSES = re.compile(
    r"(?<=[.!?…])\s+|\n+|;\s*|:\s+|,?\s+\b(?:but|however|although|though|that\s+said)\b,?\s*",
    re.IGNORECASE,
)


def _substance(clause: str) -> bool:
    """Tell whether a clause without non-answer phrases carries information."""
    stripped = clause.strip()
    # A clarifying question back to the customer is not an answer.
    if not stripped or stripped.endswith("?") or _FILLER.search(stripped):
        return False
    return bool(_SUBSTANCE.search(stripped)) or len(stripped.split()) >= SUBSTANCE_WORDS


# The rule, in order:
# 1. the responder's own flag says it did not answer (rule "responder");
# 2. the knowledge-base confidence is below `threshold` (rule "kb_confidence");
# 3. the text: split into clauses (sentences, and the parts around "but", "however", ";" and
#    ":"), it is a non-answer when at least one clause has a non-answer phrase (apology for not
#    knowing, "I don't know", "I can't help", "could you rephrase", "please contact support"…;
#    rule = that phrase's name) and no other clause carries substance: a menu path, a number, a
#    domain, an instruction verb, a leading yes/no, or five words or more that are neither a
#    pleasantry nor a question back to the customer (else rule "substance"). An empty reply
#    answers nothing (rule "empty"); a reply with no non-answer phrase answers (rule "none").
def detect_non_answer(
    text: str,
    *,
    confidence: float | None = None,
    responder_non_answer: bool | None = None,
    threshold: float = DEFAULT_CONFIDENCE_THRESHOLD,
) -> Detection:
    """Decide whether an AI reply fails to answer the customer."""
    base = {"confidence": confidence}
    if responder_non_answer:
        return Detection(True, "responder", {"rule": "responder", "pattern": None, **base})
    if confidence is not None and confidence < threshold:
        return Detection(
            True,
            "kb_confidence",
            {"rule": "kb_confidence", "pattern": None, "threshold": threshold, **base},
        )
    plain = _plain(text or "").strip()
    if not plain:
        return Detection(True, "empty", {"rule": "empty", "pattern": None, **base})
    first: tuple[str, str] | None = None
    informative: str | None = None
    for clause in _CLAUSES.split(plain):
        hit = _ANY_NON_ANSWER.search(clause) and next(
            (name, m.group(0)) for name, p in _NON_ANSWER_PATTERNS if (m := p.search(clause))
        )
        if hit is not None:
            first = first or hit
        elif informative is None and _substance(clause):
            informative = clause.strip()
    if first is None:
        return Detection(False, "none", {"rule": "none", "pattern": None, **base})
    name, matched = first
    evidence = {"rule": name, "pattern": name, "match": matched, **base}
    if informative is not None:
        # A hedge or apology next to a real answer ("I'm not sure which plan you're on, but
        # both include SSO") still answers.
        return Detection(
            False, "substance", {**evidence, "rule": "substance", "substance": informative}
        )
    return Detection(True, name, evidence)


# --------------------------------------------------------------------------------------------
# Repeated failures
# --------------------------------------------------------------------------------------------


def detect_repeated_failures(non_answer_flags: Sequence[bool], *, limit: int = 2) -> Detection:
    """Detect a streak of at least `limit` non-answers ending at the latest AI reply."""
    # A limit of 0 would flag every conversation; the smallest meaningful streak is one.
    limit = max(1, int(limit))
    streak = 0
    for flag in reversed(non_answer_flags):
        if not flag:
            break
        streak += 1
    return Detection(streak >= limit, "streak", {"streak": streak, "limit": limit})
