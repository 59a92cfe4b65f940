"""The offline knowledge-base responder on the demo knowledge base."""

from __future__ import annotations

import pytest

from conversations.ai import (
    AIRequest,
    KnowledgeBaseResponder,
    KnowledgeItem,
    SpecialistInfo,
    Turn,
    get_responder,
)
from conversations.ai.knowledge_base import NON_ANSWER_TEXT, build_index, tokenize
from conversations.demo_data import SERVICES


def demo_knowledge(slug: str) -> tuple[tuple[SpecialistInfo, ...], tuple[KnowledgeItem, ...]]:
    """Convert one demo service into the responder's dataclasses, as the adapter does."""
    service = next(s for s in SERVICES if s["slug"] == slug)
    specialists = []
    items = []
    for spec in service["specialists"]:
        specialists.append(SpecialistInfo(spec["name"], spec["description"], spec["instructions"]))
        for entry in spec["entries"]:
            item_id = len(items) + 1
            items.append(KnowledgeItem(item_id, spec["name"], entry["question"], entry["answer"]))
    return tuple(specialists), tuple(items)


def make_request(
    slug: str, *messages: str, current: str | None = None, turns: tuple[Turn, ...] = ()
) -> AIRequest:
    """Build a request whose transcript is `turns` followed by the customer's `messages`."""
    specialists, items = demo_knowledge(slug)
    transcript = turns + tuple(Turn("user", text) for text in messages)
    return AIRequest(slug.title(), specialists, current, items, transcript)


def entry_starting(slug: str, first_phrasing: str) -> KnowledgeItem:
    """Return the demo entry whose first phrasing is `first_phrasing`."""
    _, items = demo_knowledge(slug)
    return next(item for item in items if item.question.splitlines()[0] == first_phrasing)


@pytest.fixture
def responder() -> KnowledgeBaseResponder:
    return KnowledgeBaseResponder()


ANSWERABLE = [
    (
        "support",
        "I can't remember my password, how can I get a new one?",
        "How do I reset my password?",
    ),
    (
        "support",
        "Where do I switch on 2FA for extra security?",
        "How do I turn on two-factor authentication?",
    ),
    (
        "support",
        "I got a new phone and my authenticator codes are gone",
        "I lost my phone and can't get my 2FA code",
    ),
    ("support", "It says my account is locked, what now?", "I can't log in to my account"),
    ("support", "the app crashes every time I open it on my iPad", "The mobile app keeps crashing"),
    ("support", "Does Ledgerly run on Firefox?", "Which browsers do you support?"),
    ("support", "Can I export everything to Excel?", "How do I export my data?"),
    (
        "support",
        "How do I bring my customer list in from a CSV file?",
        "How do I import data from a spreadsheet?",
    ),
    ("support", "My bank transactions aren't showing up anymore", "My bank feed is not syncing"),
    ("support", "Can I hook up my Shopify store?", "Which integrations do you have?"),
    (
        "support",
        "Where do I generate an API token for our developers?",
        "How do I create an API key?",
    ),
    ("support", "Is the service down right now?", "Is Ledgerly down?"),
    (
        "support",
        "How can I give my bookkeeper access to my account?",
        "How do I invite a colleague, my accountant or bookkeeper?",
    ),
    (
        "support",
        "my clients say they never got the invoice I emailed",
        "My customers are not receiving the invoice emails",
    ),
    (
        "support",
        "I need to update the email address I sign in with",
        "How do I change my email address?",
    ),
    ("support", "Please erase my account and everything in it", "How do I delete my account?"),
    ("support", "How do I take a picture of a receipt?", "How do I upload receipts?"),
    ("support", "Everything is loading really slowly today", "Ledgerly is very slow"),
    (
        "support",
        "Where can I download past invoices for my subscription?",
        "Where can I find my invoices?",
    ),
    ("support", "I'd like a refund please", "Can I get a refund?"),
    ("support", "Can I upgrade us to the Business plan?", "How do I upgrade or downgrade my plan?"),
    ("support", "Can I pay with PayPal?", "Which payment methods do you accept?"),
    (
        "support",
        "My credit card has expired, where do I enter the new one?",
        "How do I update my credit card?",
    ),
    ("support", "Why was my payment declined?", "My payment failed"),
    (
        "support",
        "We're an EU company, can you apply the reverse charge for VAT?",
        "How do I add my VAT number to invoices?",
    ),
    ("support", "I want to cancel my subscription", "How do I cancel my subscription?"),
    ("support", "You charged my card twice this month!", "I was charged twice"),
    (
        "support",
        "Can I get billed once a year instead?",
        "Can I switch from monthly to annual billing?",
    ),
    ("support", "Can I pay in British pounds instead of dollars?", "Can I pay in euros or pounds?"),
    ("support", "When will the next payment be taken?", "When will I be charged?"),
    ("sales", "How much is Ledgerly per month?", "What plans do you offer?"),
    ("sales", "What features come with Pro?", "What is included in the Pro plan?"),
    ("sales", "Is there a trial period?", "Do you have a free trial?"),
    (
        "sales",
        "We're a charity, do you give discounts?",
        "Do you offer discounts for non-profits or charities?",
    ),
    ("sales", "Do you support SAML SSO?", "Do you support single sign-on with Okta or Azure AD?"),
    ("sales", "I'd love to see a demo of the product", "Can I book a demo?"),
    ("sales", "Can your team help us migrate from Xero?", "Do you help with onboarding and setup?"),
    ("sales", "Is our data kept in Europe?", "Where is my data stored?"),
    ("sales", "Do you have SOC 2?", "Is Ledgerly secure?"),
    ("sales", "Will you sign a DPA with us?", "Are you GDPR compliant?"),
    ("sales", "How much does an extra user cost?", "How many users can I have on each plan?"),
    ("sales", "Can I run payroll for my staff?", "Does Ledgerly do payroll?"),
    (
        "sales",
        "I'm an accountant, do you have a partner program?",
        "Do you have a partner program for accountants?",
    ),
    ("sales", "How do I become a reseller?", "Can I resell Ledgerly?"),
    ("sales", "Do you pay commission for referrals?", "Do you have an affiliate program?"),
    (
        "sales",
        "We want to build an integration and list it in your marketplace",
        "How can I list my app in your integration marketplace?",
    ),
]

UNANSWERABLE = [
    "what's the weather in Paris",
    "can you write me a poem about cats",
    "asdfgh",
    "Who won the World Cup in 2018?",
    "What's the capital of Australia?",
    "Recommend a good pizza place nearby",
    "How do I bake sourdough bread?",
    "Tell me a joke",
    "What is the meaning of life?",
    "Can you book me a flight to London?",
    "How tall is Mount Everest?",
    "Which team will win the match tonight?",
]


@pytest.mark.parametrize(("slug", "question", "expected"), ANSWERABLE)
def test_customer_questions_get_the_matching_entry(
    responder: KnowledgeBaseResponder, slug: str, question: str, expected: str
) -> None:
    entry = entry_starting(slug, expected)

    reply = responder.reply(make_request(slug, question))

    assert reply.non_answer is False, reply.evidence
    assert reply.evidence["entry_id"] == entry.id, reply.evidence
    assert reply.text == entry.answer
    assert reply.specialist == entry.specialist
    assert reply.confidence >= responder.threshold


@pytest.mark.parametrize("slug", ["support", "sales"])
@pytest.mark.parametrize("question", UNANSWERABLE)
def test_off_topic_questions_get_an_honest_non_answer(
    responder: KnowledgeBaseResponder, slug: str, question: str
) -> None:
    reply = responder.reply(make_request(slug, question))

    assert reply.non_answer is True, reply.evidence
    assert reply.text == NON_ANSWER_TEXT
    assert reply.evidence["rule"] == "kb_below_threshold"
    assert reply.confidence < responder.threshold


@pytest.mark.parametrize(
    ("slug", "messages", "expected"),
    [
        (
            "sales",
            ("Tell me about the Pro plan", "how much is it?"),
            "What is included in the Pro plan?",
        ),
        (
            "sales",
            ("What does the Business plan include?", "and what does it cost?"),
            "What does the Business plan include?",
        ),
        (
            "sales",
            ("Do you have a free trial?", "What about the Starter plan?"),
            "What do I get with the Starter plan?",
        ),
        (
            "support",
            ("My bank feed stopped syncing yesterday", "How do I fix it?"),
            "My bank feed is not syncing",
        ),
        (
            "support",
            ("I was charged twice", "How do I reset my password?"),
            "How do I reset my password?",
        ),
    ],
)
def test_follow_up_questions_use_recent_context(
    responder: KnowledgeBaseResponder, slug: str, messages: tuple[str, ...], expected: str
) -> None:
    entry = entry_starting(slug, expected)

    reply = responder.reply(make_request(slug, *messages))

    assert reply.non_answer is False, reply.evidence
    assert reply.evidence["entry_id"] == entry.id, reply.evidence


def test_the_question_outweighs_the_context(responder: KnowledgeBaseResponder) -> None:
    pro = entry_starting("sales", "What is included in the Pro plan?")
    trial = entry_starting("sales", "Do you have a free trial?")
    request = make_request("sales", "Tell me about the Pro plan", "Is there a free trial?")

    reply = responder.reply(request)

    assert reply.evidence["entry_id"] == trial.id != pro.id


def test_context_does_not_turn_gibberish_into_an_answer(
    responder: KnowledgeBaseResponder,
) -> None:
    reply = responder.reply(make_request("sales", "Tell me about the Pro plan", "asdfgh"))

    assert reply.non_answer is True


@pytest.mark.parametrize(
    ("slug", "first", "second"),
    [
        ("support", "How do I invite a colleague?", "What's the weather like tomorrow?"),
        ("support", "How do I add my VAT number to invoices?", "Do you ship to Antarctica?"),
        ("sales", "What plans do you offer?", "Can you recommend a good pizza place nearby?"),
    ],
)
def test_a_new_off_topic_question_does_not_get_the_previous_answer_again(
    responder: KnowledgeBaseResponder, slug: str, first: str, second: str
) -> None:
    reply = responder.reply(make_request(slug, first, second))

    assert reply.non_answer is True
    assert reply.evidence["rule"] in {"kb_context_only", "kb_below_threshold"}


def test_only_recent_customer_turns_count_as_context(responder: KnowledgeBaseResponder) -> None:
    turns = (
        Turn("user", "Tell me about the Pro plan"),
        Turn("ai", "Pro costs $29/month."),
        Turn("user", "ok"),
        Turn("ai", "Great!"),
        Turn("user", "hmm"),
        Turn("ai", "Anything else?"),
        Turn("user", "well"),
        Turn("ai", "Take your time."),
    )

    reply = responder.reply(make_request("sales", "how much is it?", turns=turns))

    assert (
        reply.evidence["entry_id"]
        != entry_starting("sales", "What is included in the Pro plan?").id
    )


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("hi", "greeting"),
        ("Hello!", "greeting"),
        ("Good morning", "greeting"),
        ("hey there", "greeting"),
        ("thanks!", "thanks"),
        ("Thank you so much", "thanks"),
        ("ok, thanks", "thanks"),
        ("bye", "goodbye"),
        ("ok great", "ack"),
        ("Thanks, that helps!", "thanks"),
        ("Great, thank you. That worked", "thanks"),
        ("ok that makes sense", "ack"),
    ],
)
def test_small_talk_gets_a_friendly_reply_not_a_non_answer(
    responder: KnowledgeBaseResponder, message: str, kind: str
) -> None:
    reply = responder.reply(make_request("support", message, current="Billing"))

    assert reply.non_answer is False
    assert reply.evidence == {"rule": "smalltalk", "kind": kind}
    assert reply.specialist is None
    assert reply.text


def test_a_greeting_with_a_question_is_answered(responder: KnowledgeBaseResponder) -> None:
    reply = responder.reply(make_request("support", "Hi! How can I reset my password?"))

    assert reply.evidence["entry_id"] == entry_starting("support", "How do I reset my password?").id


def test_a_non_answer_keeps_the_current_specialist(responder: KnowledgeBaseResponder) -> None:
    reply = responder.reply(make_request("support", "Tell me a joke", current="Billing"))

    assert reply.non_answer is True
    assert reply.specialist == "Billing"


def test_a_non_answer_without_a_current_specialist_picks_the_first(
    responder: KnowledgeBaseResponder,
) -> None:
    reply = responder.reply(make_request("support", "Tell me a joke"))

    assert reply.specialist == "Tech Support"


def test_an_answer_reroutes_to_the_entrys_specialist(responder: KnowledgeBaseResponder) -> None:
    reply = responder.reply(make_request("support", "I want a refund", current="Tech Support"))

    assert reply.specialist == "Billing"


def test_a_transcript_without_a_customer_message_is_a_non_answer(
    responder: KnowledgeBaseResponder,
) -> None:
    request = make_request("support", turns=(Turn("ai", "Hi! How can I help?"),))

    reply = responder.reply(request)

    assert reply.non_answer is True
    assert reply.evidence == {"rule": "no_question"}


def test_an_empty_knowledge_base_gives_a_non_answer(responder: KnowledgeBaseResponder) -> None:
    request = AIRequest("Support", (), None, (), (Turn("user", "How do I reset my password?"),))

    reply = responder.reply(request)

    assert reply.non_answer is True
    assert reply.specialist is None


def test_the_threshold_is_a_constructor_argument() -> None:
    request = make_request("support", "Tell me about exporting data and invoices and refunds")

    assert KnowledgeBaseResponder(threshold=0.0).reply(request).non_answer is False
    assert KnowledgeBaseResponder(threshold=1.01).reply(request).non_answer is True


def test_the_threshold_defaults_to_the_setting(settings) -> None:
    settings.HANDOFF_KB_THRESHOLD = 0.77

    assert KnowledgeBaseResponder().threshold == 0.77


def test_get_responder_reads_the_backend_setting(settings) -> None:
    from django.core.exceptions import ImproperlyConfigured

    from conversations.ai import OpenAIResponder

    settings.HANDOFF_AI_BACKEND = "openai"
    assert isinstance(get_responder(), OpenAIResponder)
    settings.HANDOFF_AI_BACKEND = "knowledge_base"
    assert isinstance(get_responder(), KnowledgeBaseResponder)
    assert isinstance(get_responder("openai"), OpenAIResponder)
    with pytest.raises(ImproperlyConfigured):
        get_responder("telepathy")


def test_evidence_is_json_serialisable(responder: KnowledgeBaseResponder) -> None:
    import json

    for question in ("How do I reset my password?", "asdfgh", "thanks"):
        json.dumps(responder.reply(make_request("support", question)).evidence)


def test_tokenize_lowercases_drops_stop_words_and_stems() -> None:
    assert tokenize("How do I reset my Passwords?") == ["reset", "password"]
    assert tokenize("invoices invoicing invoiced") == ["invoic"] * 3
    assert tokenize("Two-factor login") == ["2fa", "log"]


def test_the_index_is_cached_per_knowledge_tuple() -> None:
    _, items = demo_knowledge("support")

    assert build_index(items) is build_index(tuple(items))
    assert build_index(items[:-1]) is not build_index(items)


def test_the_demo_knowledge_base_is_substantial() -> None:
    names = {s["slug"]: [sp["name"] for sp in s["specialists"]] for s in SERVICES}
    assert names["support"] == ["Tech Support", "Billing"]
    assert "Sales" in names["sales"]
    entries = [e for s in SERVICES for sp in s["specialists"] for e in sp["entries"]]
    assert len(entries) >= 36
    for service in SERVICES:
        assert service["mode"] == "human_supported"
        for spec in service["specialists"]:
            assert spec["description"] and spec["instructions"] and spec["entries"]
    for entry in entries:
        assert 2 <= len(entry["question"].splitlines()) <= 4
        assert entry["answer"].strip()


def _scored_one_by_one(index, items, question: str, context=(), limit: int = 3):
    """What the index must find: every item's phrasings, questions and answer scored
    against the question one by one (cosine of TF-IDF vectors), the best `limit` above 0."""
    import math
    from collections import Counter

    from conversations.ai.knowledge_base import ANSWER_FACTOR, QUESTIONS_FACTOR

    def vector(tokens):
        counts = Counter(tokens)
        return {t: (1 + math.log(n)) * index.idf(t) for t, n in counts.items()}

    query = index.query_vector(question, context)
    query_norm = math.sqrt(sum(w * w for w in query.values()))

    def cosine(doc):
        doc_norm = math.sqrt(sum(w * w for w in doc.values()))
        if not query_norm or not doc_norm:
            return 0.0
        return sum(w * doc.get(t, 0.0) for t, w in query.items()) / (query_norm * doc_norm)

    scored = []
    for item in items:
        phrasings = [tokenize(line) for line in item.question.splitlines() if line.strip()]
        every = [t for tokens in phrasings for t in tokens]
        best = max((cosine(vector(tokens)) for tokens in phrasings), default=0.0)
        score = max(
            best,
            QUESTIONS_FACTOR * cosine(vector(every)),
            ANSWER_FACTOR * cosine(vector(tokenize(item.answer) + every)),
        )
        scored.append((item, round(score, 4)))
    scored.sort(key=lambda pair: pair[1], reverse=True)
    return [(item.id, score) for item, score in scored[:limit] if score > 0]


@pytest.mark.parametrize("slug", sorted({service["slug"] for service in SERVICES}))
def test_the_index_finds_what_scoring_every_entry_finds(slug):
    """The index scores only entries that share a word with the question; the matches and
    their order are those of scoring every phrasing, question and answer of every entry."""
    _, items = demo_knowledge(slug)
    index = build_index(items)
    questions = [line for item in items for line in item.question.splitlines() if line.strip()]
    questions += [item.answer for item in items]
    questions += ["my invoice is wrong and the app crashes", "zebra quantum", "hello", ""]
    for number, question in enumerate(questions):
        context = (questions[number - 1],) if number % 3 == 0 else ()
        for limit in (1, 3, len(items)):
            found = [(m.item.id, m.score) for m in index.search(question, context, limit)]
            assert found == _scored_one_by_one(index, items, question, context, limit), question
    assert any(index.search(q) for q in questions)
