"""The offline responder: TF-IDF retrieval over the knowledge base, with recent context."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from .base import AIReply, AIRequest, KnowledgeItem, Turn, last_user_index, setting

# Tuned on the demo knowledge base: see tests/test_ai_knowledge_base.py.
DEFAULT_THRESHOLD = 0.38

NON_ANSWER_TEXT = (
    "I'm sorry, I don't have an answer to that. You can rephrase your question, "
    "or ask to talk to a person."
)

# Weights of the customer's earlier messages, most recent first; the question itself weighs 1.
# A question of at least this many content words must match on its own, at least
# CONTEXT_ONLY_FACTOR × the threshold, before recent context may decide the answer.
FOLLOW_UP_TOKENS = 3
CONTEXT_ONLY_FACTOR = 0.5
REFERS_BACK = re.compile(
    r"\b(it|its|that|this|these|those|they|them|one|ones)\b"
    r"|^\s*(and|but|also|what about|how about)\b",
    re.IGNORECASE,
)
CONTEXT_WEIGHTS = (0.5, 0.25)
# How many turns before the question are searched for those earlier customer messages.
CONTEXT_TURNS = 6

# A phrasing is the best evidence; all phrasings together, then the answer text, count for less.
QUESTIONS_FACTOR = 0.85
ANSWER_FACTOR = 0.6


def _words(*lines: str) -> frozenset[str]:
    """Return the set of space-separated words in `lines`."""
    return frozenset(" ".join(lines).split())


STOP_WORDS = _words(
    "a about above after again all also am an and any anything are as at be because been before",
    "being below between both but by can cannot could did do does doing done during each either",
    "else ever every few for from further get gets getting got had has have having he her here",
    "hers him his how i if in into is it its itself just let lets like may me might mine more",
    "most must my myself need needs no nor not now of off on once only or other our ours out",
    "over own please re same she should so some someone something such than that the their",
    "theirs them then there these they this those through to too under until up us very via",
    "want wants was we were what when where whether which while who whom whose why will with",
    "would yet you your yours yourself hi hello hey thanks thank ok okay pls plz im ive id dont",
    "doesnt didnt cant wont isnt arent wasnt tell know help way use using possible still say",
    "says said saying got give gives giving take takes taking come comes go goes going make",
    "makes see look looking seem seems really right now today anymore thing things stuff one",
    "ones yes kind lot actually maybe everything file files old many good best able",
)

# Two-word expressions that mean one thing, rewritten before splitting into words.
PHRASES = {
    "log in": "login",
    "log on": "login",
    "sign in": "login",
    "sign on": "login",
    "two factor": "2fa",
    "two step": "2fa",
    "2 step": "2fa",
    "2 factor": "2fa",
    "turn on": "enable",
    "switch on": "enable",
    "set up": "setup",
    "setting up": "setup",
    "end up": "",
    "ends up": "",
    "hook up": "connect",
    "link up": "connect",
    "how much": "price",
    "money back": "refund",
    "credit card": "card",
    "debit card": "card",
    "non profit": "nonprofit",
    "not working": "broken",
    "doesnt work": "broken",
    "does not work": "broken",
    "stopped working": "broken",
    "wont work": "broken",
}
_PHRASES_RE = re.compile(r"\b(" + "|".join(re.escape(p) for p in PHRASES) + r")\b")

# Map spelling variants and common synonyms onto one term before stemming.
SYNONYMS = {
    "login": "log",
    "logon": "log",
    "logging": "log",
    "signin": "log",
    "pwd": "password",
    "passcode": "password",
    "passphrase": "password",
    "twofactor": "2fa",
    "2step": "2fa",
    "mfa": "2fa",
    "otp": "2fa",
    "cost": "price",
    "costs": "price",
    "pricing": "price",
    "prices": "price",
    "priced": "price",
    "fee": "price",
    "fees": "price",
    "expensive": "price",
    "cheaper": "cheap",
    "reimburse": "refund",
    "reimbursement": "refund",
    "cancellation": "cancel",
    "cancelling": "cancel",
    "canceling": "cancel",
    "cancelled": "cancel",
    "canceled": "cancel",
    "unsubscribe": "cancel",
    "terminate": "cancel",
    "receipts": "receipt",
    "crashes": "crash",
    "crashing": "crash",
    "crashed": "crash",
    "freezes": "crash",
    "freezing": "crash",
    "frozen": "crash",
    "tax": "vat",
    "taxes": "vat",
    "gst": "vat",
    "nonprofits": "nonprofit",
    "charity": "nonprofit",
    "charities": "nonprofit",
    "ngo": "nonprofit",
    "ngos": "nonprofit",
    "student": "education",
    "students": "education",
    "school": "education",
    "schools": "education",
    "university": "education",
    "teacher": "education",
    "teachers": "education",
    "academic": "education",
    "saml": "sso",
    "okta": "sso",
    "outage": "down",
    "downtime": "down",
    "backup": "export",
    "backups": "export",
    "walkthrough": "demo",
    "picture": "photo",
    "pictures": "photo",
    "pic": "photo",
    "photograph": "photo",
    "run": "work",
    "runs": "work",
    "hook": "connect",
    "connection": "connect",
    "connections": "connect",
    "reconnect": "connect",
    "mail": "email",
    "emails": "email",
    "seat": "user",
    "seats": "user",
    "users": "user",
    "yearly": "annual",
    "annually": "annual",
    "year": "annual",
    "monthly": "month",
    "iphone": "mobile",
    "android": "mobile",
    "ios": "mobile",
    "phone": "mobile",
    "apps": "app",
    "ipad": "mobile",
    "europe": "eu",
    "european": "eu",
}

_WORD_RE = re.compile(r"[a-z0-9]+")
_JOINERS_RE = re.compile(r"(?<=[a-z0-9])['’](?=[a-z0-9])")

GREETING_WORDS = _words(
    "hi hello hey heya hiya howdy yo greetings morning afternoon evening hallo hola"
)
THANKS_WORDS = _words("thanks thank thx ty cheers appreciate appreciated")
GOODBYE_WORDS = _words("bye goodbye cya later farewell")
ACK_WORDS = _words("ok okay k cool great perfect awesome nice alright sure got")
# Words that may accompany small talk without turning it into a question.
FILLER_WORDS = _words(
    "there good very much so a lot you all it that s for the your help again guys team everyone",
    "see bot assistant just oh well thats sounds wonderful excellent lovely fine",
    "helps helped helpful worked works is was this now makes sense solved sorted",
)
SMALLTALK_REPLIES = {
    "greeting": "Hello! How can I help you today?",
    "thanks": "You're welcome! Is there anything else I can help you with?",
    "goodbye": "Thanks for chatting with us. Have a great day!",
    "ack": "Great! Let me know if there's anything else I can help you with.",
}


# (suffix, replacement, shortest stem left), tried in order; the first that fits is used.
_SUFFIXES = (
    ("ingly", "", 3),
    ("edly", "", 3),
    ("ation", "at", 4),  # "integration" meets "integrate"
    ("ing", "", 3),
    ("ity", "", 4),  # "security" meets "secure"
    ("ied", "y", 3),
    ("ed", "", 3),
    ("ly", "", 4),
)


def _stem(word: str) -> str:
    """Strip common English suffixes so that "invoices" and "invoicing" meet."""
    if len(word) <= 3 or word.isdigit():
        return word
    if word.endswith("ies") and len(word) > 4:
        word = word[:-3] + "y"
    elif word.endswith(("sses", "shes", "ches", "xes")):
        word = word[:-2]
    elif word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    for suffix, replacement, shortest in _SUFFIXES:
        stem = word[: -len(suffix)]
        if word.endswith(suffix) and len(stem) >= shortest and any(c in "aeiouy" for c in stem):
            word = stem + replacement
            # "stopped" → "stopp" → "stop", but keep "bill", "pass", "buzz".
            if not replacement and word[-1] == word[-2] and word[-1] not in "lsz":
                word = word[:-1]
            break
    if word.endswith("e") and len(word) > 3:
        word = word[:-1]
    return word


def tokenize(text: str) -> list[str]:
    """Return the stemmed content words of `text`, in order."""
    words = " ".join(_WORD_RE.findall(_JOINERS_RE.sub("", text.lower())))
    tokens = []
    for word in _PHRASES_RE.sub(lambda m: PHRASES[m.group(1)], words).split():
        if word in STOP_WORDS or (len(word) == 1 and not word.isdigit()):
            continue
        stem = _stem(SYNONYMS.get(word, word))
        if stem not in STOP_WORDS:
            tokens.append(stem)
    return tokens


def smalltalk_kind(text: str) -> str | None:
    """Return "greeting", "thanks", "goodbye" or "ack" when `text` is only small talk."""
    words = _WORD_RE.findall(_JOINERS_RE.sub("", text.lower()))
    if not words or len(words) > 8:
        return None
    known = GREETING_WORDS | THANKS_WORDS | GOODBYE_WORDS | ACK_WORDS | FILLER_WORDS
    if any(word not in known for word in words):
        return None
    for kind, vocabulary in (
        ("thanks", THANKS_WORDS),
        ("goodbye", GOODBYE_WORDS),
        ("greeting", GREETING_WORDS),
        ("ack", ACK_WORDS),
    ):
        if any(word in vocabulary for word in words):
            return kind
    return None


Vector = dict[str, float]


def _norm(vector: Vector) -> float:
    return math.sqrt(sum(weight * weight for weight in vector.values()))


@dataclass(frozen=True)
class Match:
    """A knowledge item and its 0..1 similarity to the customer's question."""

    item: KnowledgeItem
    score: float


class KnowledgeIndex:
    """TF-IDF vectors of every phrasing and answer, scored by cosine similarity."""

    def __init__(self, items: Iterable[KnowledgeItem]) -> None:
        self.items = tuple(items)
        question_tokens = [
            [tokenize(line) for line in item.question.splitlines() if line.strip()]
            for item in self.items
        ]
        answer_tokens = [tokenize(item.answer) for item in self.items]
        document_frequency: Counter[str] = Counter()
        for phrasings, answer in zip(question_tokens, answer_tokens, strict=True):
            document_frequency.update({t for tokens in phrasings for t in tokens} | set(answer))
        count = len(self.items)
        self._idf = {
            term: math.log((count + 1) / (df + 1)) + 1 for term, df in document_frequency.items()
        }
        # A word the knowledge base never uses weighs like the rarest word: it is what the
        # customer is asking about, and no entry covers it.
        self._unknown_idf = math.log(count + 1) + 1
        # Every vector scored for an item: each phrasing (weighs 1), all its phrasings
        # together (QUESTIONS_FACTOR) and its answer with them (ANSWER_FACTOR). `search`
        # scores only the vectors that share a term with the question, found through
        # `_postings`: the others' cosine is 0, and an item scoring 0 is never a match.
        self._slots: list[tuple[int, float, float]] = []  # (item, factor, norm)
        self._postings: dict[str, list[tuple[int, float]]] = {}  # term -> (slot, weight)
        for position, (phrasings, answer) in enumerate(
            zip(question_tokens, answer_tokens, strict=True)
        ):
            every_phrasing = [t for tokens in phrasings for t in tokens]
            for tokens in phrasings:
                self._add_slot(position, 1.0, tokens)
            self._add_slot(position, QUESTIONS_FACTOR, every_phrasing)
            self._add_slot(position, ANSWER_FACTOR, answer + every_phrasing)

    def _add_slot(self, item: int, factor: float, tokens: Sequence[str]) -> None:
        vector, norm = self._vector(tokens)
        slot = len(self._slots)
        self._slots.append((item, factor, norm))
        for term, weight in vector.items():
            self._postings.setdefault(term, []).append((slot, weight))

    def knows(self, term: str) -> bool:
        """Whether any entry uses this stemmed term."""
        return term in self._idf

    def idf(self, term: str) -> float:
        """Return the inverse document frequency of a stemmed term."""
        return self._idf.get(term, self._unknown_idf)

    def _vector(self, tokens: Sequence[str]) -> tuple[Vector, float]:
        counts = Counter(tokens)
        vector = {term: (1 + math.log(n)) * self.idf(term) for term, n in counts.items()}
        return vector, _norm(vector)

    def query_vector(self, question: str, context: Sequence[str] = ()) -> Vector:
        """Weigh the question's terms by 1 and earlier messages' by CONTEXT_WEIGHTS."""
        weights: Counter[str] = Counter()
        texts = [(question, 1.0), *zip(context, CONTEXT_WEIGHTS, strict=False)]
        for text, weight in texts:
            for term in set(tokenize(text)):
                weights[term] += weight
        return {term: weight * self.idf(term) for term, weight in weights.items()}

    def search(self, question: str, context: Sequence[str] = (), limit: int = 3) -> list[Match]:
        """Return the best `limit` items for `question`, given earlier messages (newest first)."""
        query = self.query_vector(question, context)
        query_norm = _norm(query)
        if not query_norm:
            return []
        dots: dict[int, float] = {}
        for term, weight in query.items():
            for slot, doc_weight in self._postings.get(term, ()):
                dots[slot] = dots.get(slot, 0.0) + weight * doc_weight
        scores: dict[int, float] = {}
        for slot, dot in dots.items():
            item, factor, norm = self._slots[slot]
            score = factor * (dot / (query_norm * norm))
            scores[item] = max(scores.get(item, 0.0), score)
        matches = [Match(self.items[item], round(scores[item], 4)) for item in sorted(scores)]
        matches.sort(key=lambda match: match.score, reverse=True)
        return [match for match in matches[:limit] if match.score > 0]


@lru_cache(maxsize=32)
def build_index(items: tuple[KnowledgeItem, ...]) -> KnowledgeIndex:
    """Return the index of `items`, cached since the same knowledge serves many replies."""
    return KnowledgeIndex(items)


def customer_messages(transcript: tuple[Turn, ...]) -> tuple[str, list[str]] | None:
    """Return the last customer message and the earlier recent ones (newest first)."""
    index = last_user_index(transcript)
    if index is None:
        return None
    recent = transcript[max(0, index - CONTEXT_TURNS) : index]
    context = [turn.text for turn in reversed(recent) if turn.role == "user"]
    return transcript[index].text, context[: len(CONTEXT_WEIGHTS)]


def retrieve(request: AIRequest, limit: int = 3) -> list[Match]:
    """Return the knowledge items that best answer the request's last customer message."""
    messages = customer_messages(request.transcript)
    if messages is None or not request.knowledge:
        return []
    question, context = messages
    return build_index(request.knowledge).search(question, context, limit=limit)


def default_specialist(request: AIRequest) -> str | None:
    """Return the current specialist, or the service's first one when none is set."""
    if request.current_specialist:
        return request.current_specialist
    return request.specialists[0].name if request.specialists else None


class KnowledgeBaseResponder:
    """Answer with the best-matching knowledge entry, or admit not knowing."""

    typing_indicator = False  # the answer is ready in milliseconds

    def __init__(self, threshold: float | None = None) -> None:
        if threshold is None:
            threshold = setting("HANDOFF_KB_THRESHOLD", DEFAULT_THRESHOLD)
        self.threshold = float(threshold)

    def reply(self, request: AIRequest) -> AIReply:
        """Return the answer of the best entry above the threshold, or an honest non-answer."""
        messages = customer_messages(request.transcript)
        if messages is None:
            return self._non_answer(request, {"rule": "no_question"})
        kind = smalltalk_kind(messages[0])
        if kind is not None:
            return AIReply(
                text=SMALLTALK_REPLIES[kind],
                specialist=None,
                confidence=1.0,
                non_answer=False,
                evidence={"rule": "smalltalk", "kind": kind},
            )
        matches = retrieve(request, limit=2)
        best = matches[0] if matches else None
        evidence = {
            "entry_id": best.item.id if best else None,
            "score": best.score if best else 0.0,
            "threshold": self.threshold,
        }
        if best is None or best.score < self.threshold:
            return self._non_answer(request, {"rule": "kb_below_threshold", **evidence})
        if self._carried_by_context(request, messages[0], best):
            # A full new question that matches nothing on its own must not get the previous
            # topic's answer again just because the earlier messages still point there.
            return self._non_answer(request, {"rule": "kb_context_only", **evidence})
        if len(matches) > 1:
            evidence["runner_up_id"] = matches[1].item.id
            evidence["runner_up_score"] = matches[1].score
        return AIReply(
            text=best.item.answer,
            specialist=best.item.specialist or default_specialist(request),
            confidence=best.score,
            non_answer=False,
            evidence={"rule": "kb_match", **evidence},
        )

    def _carried_by_context(self, request: AIRequest, question: str, best: Match) -> bool:
        """True when the match comes from earlier messages, not from this full question."""
        alone = build_index(request.knowledge).search(question, (), limit=len(request.knowledge))
        score = next((m.score for m in alone if m.item.id == best.item.id), 0.0)
        if score >= self.threshold * CONTEXT_ONLY_FACTOR:
            return False
        tokens = tokenize(question)
        if len(tokens) >= FOLLOW_UP_TOKENS:
            return True
        # A short follow-up ("how do I fix it?", "what about Starter?") points back and leans
        # on context by design; a short new topic ("do you ship to Antarctica?") does not
        # point back, and is in words the knowledge base never uses.
        if REFERS_BACK.search(question):
            return False
        index = build_index(request.knowledge)
        unknown = [token for token in tokens if not index.knows(token)]
        return bool(unknown) and len(unknown) * 2 >= len(tokens)

    def _non_answer(self, request: AIRequest, evidence: dict) -> AIReply:
        return AIReply(
            text=NON_ANSWER_TEXT,
            specialist=default_specialist(request),
            confidence=float(evidence.get("score", 0.0)),
            non_answer=True,
            evidence=evidence,
        )
