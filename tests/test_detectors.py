"""Table tests for the pure escalation detectors (no database, no settings)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from conversations.ai.knowledge_base import NON_ANSWER_TEXT
from conversations.ai.openai import FALLBACK_TEXT
from conversations.demo_data import SERVICES
from escalation.detectors import (
    Detection,
    detect_human_request,
    detect_keywords,
    detect_negative_sentiment,
    detect_non_answer,
    detect_repeated_failures,
    sentiment_score,
)

# --------------------------------------------------------------------------------------------
# Sentiment
# --------------------------------------------------------------------------------------------

VERY_NEGATIVE = (-1.0, -0.5)
NEGATIVE = (-0.5, -0.05)
NEUTRAL = (-0.1, 0.1)
POSITIVE = (0.5, 1.0)


@pytest.mark.parametrize(
    ("message", "band"),
    [
        (
            "This is the third time I've asked and you still haven't fixed it, absolutely useless!",
            VERY_NEGATIVE,
        ),
        ("You people are incompetent and I'm furious. Worst service ever.", VERY_NEGATIVE),
        ("I hate this app. It keeps crashing and I lost my work.", VERY_NEGATIVE),
        ("Terrible. Just terrible. Fix it.", VERY_NEGATIVE),
        ("I'm disappointed, the export is missing half my data.", VERY_NEGATIVE),
        ("This is a scam, I want my money back NOW", VERY_NEGATIVE),
        ("This is frustrating.", NEGATIVE),
        ("that\u2019s annoying", NEGATIVE),
        ("I'm unhappy with this", NEGATIVE),
        ("This is ridiculous. I've been charged twice and nobody is helping me!!", NEGATIVE),
        ("thanks, that worked perfectly", POSITIVE),
        ("Great, thank you so much for the quick help!", POSITIVE),
        ("I love the new dashboard, it's really easy to use.", POSITIVE),
        ("Awesome, that fixed it :)", POSITIVE),
        ("Perfect, exactly what I needed. Cheers!", POSITIVE),
        ("How do I export my invoices to CSV?", NEUTRAL),
        ("What time zone are your invoices in?", NEUTRAL),
        ("Where can I find my VAT number?", NEUTRAL),
        ("My card was declined", NEUTRAL),
        ("", NEUTRAL),
        ("   ", NEUTRAL),
    ],
)
def test_sentiment_score_places_a_customer_message_in_the_expected_band(message, band):
    low, high = band
    assert low <= sentiment_score(message) <= high


def test_sentiment_score_reads_curly_apostrophes_like_plain_ones():
    assert sentiment_score("I don\u2019t like this at all") == sentiment_score(
        "I don't like this at all"
    )
    assert sentiment_score("I don\u2019t like this at all") < 0


def test_sentiment_score_of_empty_text_is_exactly_zero():
    assert sentiment_score("") == 0.0


@pytest.mark.parametrize(
    ("scores", "kwargs", "matched", "rule"),
    [
        # Two mildly negative messages cross only when their mean does.
        ([-0.45, -0.55], {}, True, "vader_window"),
        ([-0.40, -0.44], {}, False, "vader_window"),
        ([-0.5, -0.5], {}, True, "vader_window"),
        # One furious message counts at once (<= -0.75 with the default threshold)…
        ([0.6, -0.8], {}, True, "vader_single"),
        ([-0.9], {}, True, "vader_window"),
        # …but a merely very negative one after a calm one does not.
        ([0.3, -0.7], {}, False, "vader_window"),
        # A positive message after an angry one pulls the mean back.
        ([-0.9, 0.6], {}, False, "vader_window"),
        ([-0.6, -0.7, 0.8], {}, False, "vader_window"),
        # Only the last `window` messages count.
        ([-0.9, -0.9, 0.0, 0.0], {}, False, "vader_window"),
        ([0.9, 0.9, -0.6, -0.6], {}, True, "vader_window"),
        ([0.9, -0.6, -0.6], {"window": 3}, False, "vader_window"),
        ([-0.7, -0.6, -0.5], {"window": 3}, True, "vader_window"),
        # Window 1: each message on its own.
        ([-0.9, -0.5], {"window": 1}, True, "vader_window"),
        ([-0.9, -0.49], {"window": 1}, False, "vader_window"),
        # Fewer scores than the window: use what there is.
        ([-0.6], {"window": 5}, True, "vader_window"),
        ([-0.3], {"window": 5}, False, "vader_window"),
        ([], {}, False, "vader_window"),
        # Custom thresholds, and the single-message cut-off floored at -1.
        ([-0.3, -0.3], {"threshold": -0.25}, True, "vader_window"),
        ([0.5, -0.95], {"threshold": -0.9}, False, "vader_window"),
        ([0.5, -1.0], {"threshold": -0.9}, True, "vader_single"),
        # A window below 1 counts as 1.
        ([0.2, -0.6], {"window": 0}, True, "vader_window"),
    ],
)
def test_negative_sentiment_crosses_the_threshold_over_the_window(scores, kwargs, matched, rule):
    result = detect_negative_sentiment(scores, **kwargs)
    assert (result.matched, result.rule) == (matched, rule)


def test_negative_sentiment_evidence_names_scores_mean_threshold_and_window():
    result = detect_negative_sentiment([0.1, -0.4, -0.8], threshold=-0.5, window=2)
    assert result.matched
    assert result.evidence["scores"] == [-0.4, -0.8]
    assert result.evidence["mean"] == pytest.approx(-0.6)
    assert result.evidence["threshold"] == -0.5
    assert result.evidence["window"] == 2
    json.dumps(result.evidence)


def test_scored_messages_flow_through_the_window_rule():
    scores = [
        sentiment_score("Hi, how do I add a user?"),
        sentiment_score("That didn't work."),
        sentiment_score(
            "This is the third time I've asked and you still haven't fixed it, absolutely useless!"
        ),
        sentiment_score("You people are incompetent and I'm furious. Worst service ever."),
    ]
    assert not detect_negative_sentiment(scores[:2]).matched
    assert detect_negative_sentiment(scores).matched


# --------------------------------------------------------------------------------------------
# Explicit requests for a human
# --------------------------------------------------------------------------------------------

HUMAN_REQUESTS = [
    "Can I talk to a human?",
    "I want to speak with a person please",
    "Let me chat with an agent",
    "talk to a representative",
    "I'd like to speak to a real person",
    "I\u2019d like to speak to a real person",
    "can I talk to someone",
    "Can I speak to somebody about my bill?",
    "I need to talk to an operator",
    "Could I speak with your support staff?",
    "I'd like to talk to a member of staff",
    "Can I talk with your team?",
    "human please",
    "Human, please!",
    "get me a human",
    "Get me a real person now",
    "connect me to an agent",
    "Please transfer me to an agent",
    "Can you connect me with a live agent?",
    "Put me through to a person",
    "I want a real person",
    "I need a human",
    "is there a human?",
    "Is there a real person here?",
    "Is anyone there?",
    "Hello? Is there somebody I can talk to?",
    "customer service representative",
    "I'd like a customer service representative",
    "live agent",
    "Live chat with a person please",
    "stop, I want a person",
    "Operator!",
    "OPERATOR",
    "Representative.",
    "representative",
    "escalate this",
    "Please escalate this to a manager",
    "Let me speak to your manager",
    "I want to speak to your supervisor",
    "this bot is useless, get me a person",
    "This bot is useless. Get me a person!",
    "I don\u2019t want a bot, I want a human",
    "Can I talk to a humen",
    "talk to human",
    "talk 2 a human pls",
    "Why won't you let me talk to a human?",
    "I don't know how to reach a human here",
    "No, I want a human",
    "Can I be transferred to an agent?",
    "real person please",
    "agent please",
    "A human being, please",
    "Can I have a human?",
    "I want to talk to customer service",
    "I asked for a human 10 minutes ago!",
    "gimme a human",
    "Can someone from your team help me?",
    "I need a person who can actually help",
    "speak with a human agent",
    "I'd prefer a real person",
    "Can you have someone call me?",
    "Is there a way to talk to someone?",
    "Are there any humans here?",
    "Can a real person look at my account please",
    "Ugh. Agent!",
    "Human.",
]


@pytest.mark.parametrize("message", HUMAN_REQUESTS)
def test_an_explicit_request_for_a_human_is_detected(message):
    result = detect_human_request(message)
    assert result.matched, result
    assert result.rule == f"phrase:{result.evidence['rule']}"
    assert result.evidence["phrase"]
    assert result.evidence["phrase"].lower() in message.lower()


NOT_HUMAN_REQUESTS = [
    # Negated requests.
    "I don't need a human",
    "no need for an agent",
    "I don't want to talk to a person",
    "no human please, the bot is fine",
    "you don't have to get an agent",
    "I never asked for a human",
    "not a human, just tell me the price",
    "Can I do this without talking to a person?",
    "I don't want to be transferred to a human",
    "Please don't transfer me to an agent",
    "I'd rather not talk to a person",
    "No need to connect me to anyone, thanks",
    "I do not wish to speak with an agent",
    # Questions about the bot.
    "are you a human?",
    "Are you a real person?",
    "is this a real person or a bot?",
    "You sound like a human!",
    # False friends.
    "Where do I find human resources settings?",
    "I need to talk to human resources",
    "That's very humane of you",
    "What are your agent commission rates?",
    "I'm a real estate agent",
    "my travel agent booked it",
    "someone charged my card",
    "I talked to someone yesterday",
    "Is there a person limit on the Pro plan?",
    "Can I give someone read-only access?",
    "I want a person on my team to see invoices",
    "How do I add an employee?",
    "The user agent string is wrong",
    "Does the Pro plan include an account manager?",
    "I need support with invoices",
    "Do you offer live chat support?",
    "How do I reset my password?",
    "I spoke to an agent last week and they promised a refund",
    "Your agent said I would get a refund",
    "The person who set up our account left",
    "How do I add a person to my account?",
    "Do you have human support on weekends?",
    "Is there an agent portal?",
    "We need people to approve invoices",
    "",
]


@pytest.mark.parametrize("message", NOT_HUMAN_REQUESTS)
def test_negations_questions_and_false_friends_are_not_human_requests(message):
    assert not detect_human_request(message).matched


@pytest.mark.parametrize(
    ("message", "negation"),
    [
        ("I don't need a human", "don't"),
        ("I never asked for a human", "never"),
        ("no human please, the bot is fine", "no"),
        ("Can I do this without talking to a person?", "without"),
        ("I don\u2019t want to talk to a person", "don't"),
    ],
)
def test_a_negated_request_reports_the_negation(message, negation):
    result = detect_human_request(message)
    assert (result.matched, result.rule) == (False, "negated")
    assert result.evidence["negation"].lower() == negation


def test_a_negated_request_later_followed_by_a_real_one_matches():
    result = detect_human_request("I don't need a bot. I need a human.")
    assert result.matched
    assert result.evidence["phrase"] == "need a human"


@pytest.mark.parametrize(
    ("message", "phrase"),
    [
        ("Can I TALK to a Real Person?", "TALK to a Real Person"),
        ("I don\u2019t want a bot, I want a HUMAN!", "want a HUMAN"),
        ("OPERATOR!!!", "OPERATOR!!!"),
    ],
)
def test_the_evidence_phrase_keeps_the_customers_own_spelling(message, phrase):
    assert detect_human_request(message).evidence["phrase"] == phrase


# --------------------------------------------------------------------------------------------
# Admin-defined keywords
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "phrases", "expected"),
    [
        ("Cancel!", ["cancel"], "Cancel"),
        ("I want to cancel my account", ["cancel"], "cancel"),
        ("please CANCEL MY ACCOUNT now", ["cancel my account"], "CANCEL MY ACCOUNT"),
        ("cancel   my\taccount", ["cancel my account"], "cancel   my\taccount"),
        ("cancel\nmy account", ["  cancel  my   account "], "cancel\nmy account"),
        ("What is your cancellation policy?", ["cancel"], None),
        ("I want a refund.", ["refund"], "refund"),
        ("Has my payment been refunded?", ["refund"], None),
        ("(refund)", ["refund"], "refund"),
        ("I'm a C++ developer", ["c++"], "C++"),
        ("Is it written in C?", ["c++"], None),
        ("They charged me $100 twice", ["$100"], "$100"),
        ("They charged me $1000 twice", ["$100"], None),
        ("Is a.b the same?", ["a.b"], "a.b"),
        ("Is axb the same?", ["a.b"], None),
        ("(lawyer)", ["(lawyer)"], "(lawyer)"),
        ("I'll contact my lawyer", ["lawyer"], "lawyer"),
        ("My lawyers will hear about this", ["lawyer"], None),
        ("anything", ["", "   "], None),
        ("", ["cancel"], None),
        ("Ich möchte eine Rückerstattung", ["rückerstattung"], "Rückerstattung"),
        ("RÜCKERSTATTUNG sofort!", ["rückerstattung"], "RÜCKERSTATTUNG"),
        ("Rückerstattungsantrag", ["rückerstattung"], None),
        ("Je veux être remboursé", ["remboursé"], "remboursé"),
        ("I can\u2019t log in", ["can't log in"], "can\u2019t log in"),
        ("chargeback incoming", ["", "lawsuit", "chargeback"], "chargeback"),
        ("unsubscribe", ["sub"], None),
    ],
)
def test_keywords_match_whole_phrases_case_insensitively(text, phrases, expected):
    result = detect_keywords(text, phrases)
    if expected is None:
        assert not result.matched
    else:
        assert result.matched
        start, end = result.evidence["span"]
        assert text[start:end] == result.evidence["match"] == expected


def test_keyword_evidence_names_the_admin_phrase_and_span():
    result = detect_keywords("Sue you? I will SUE!", ["lawsuit", "sue"])
    assert result.matched
    assert result.evidence == {"phrase": "sue", "match": "Sue", "span": [0, 3]}
    json.dumps(result.evidence)


def test_keywords_report_the_first_phrase_in_admin_order():
    result = detect_keywords("cancel or refund", ["refund", "cancel"])
    assert result.evidence["phrase"] == "refund"


def test_keywords_accept_any_sequence_of_phrases():
    assert detect_keywords("cancel", ("cancel",)).matched
    assert detect_keywords("cancel", ["cancel"]).matched
    assert not detect_keywords("cancel", []).matched


# --------------------------------------------------------------------------------------------
# Non-answers from the AI
# --------------------------------------------------------------------------------------------

NON_ANSWERS = [
    NON_ANSWER_TEXT,
    FALLBACK_TEXT,
    "I'm sorry, I don't have an answer to that. You can rephrase your question, or ask to talk "
    "to a person.",
    "I'm sorry, I'm having trouble answering right now. Please try again in a moment, or ask to "
    "talk to a person.",
    "I don't know.",
    "I'm not sure about that.",
    "I\u2019m sorry, but I don\u2019t have any information about that.",
    "Unfortunately I don't have information on your specific order. Please contact our support "
    "team.",
    "I can't help with that.",
    "I'm unable to answer that question.",
    "I couldn't find anything about that in our help articles.",
    "Sorry, I don't understand. Could you rephrase your question?",
    "Could you rephrase that? I want to make sure I understand.",
    "Please contact support for help with this.",
    "For that, you'll need to reach out to our support team. They will be able to help you "
    "further.",
    "I'd recommend contacting customer service about this.",
    "As an AI language model, I cannot access your account details.",
    "I'm afraid that's outside the scope of what I can help with. Is there anything else I can "
    "help you with?",
    "I can only answer questions about Ledgerly accounts, billing and the app.",
    "I apologize, but I'm not able to look up individual transactions. Please contact our "
    "billing team.",
    "Hmm, I'm not sure I understand what you mean. Can you give me more details?",
    "Sorry, I didn't catch that.",
    "That's a great question! Unfortunately, I don't have the details on that. A member of our "
    "team can help.",
    "I don't have access to your invoices, so I can't check that for you.",
    "I'm sorry, I wasn't able to find an answer to your question. Would you like me to connect "
    "you with a person?",
    "I'm not certain. You may want to contact our support team for accurate information.",
    "Sorry, something went wrong on my side. Please try again later.",
    "I have no information about that, sorry!",
    "I'm sorry, I can't assist with requests like that.",
    "Good question. I honestly don't know the answer to that one, but our team will be happy to "
    "help.",
    "That information isn't available to me. Please reach out to support@ledgerly.app.",
    "I don't have details about custom Enterprise contracts. I'd suggest reaching out to our "
    "sales team, who can give you accurate pricing.",
    "Let me connect you with a member of our team who can help with that.",
    "I'm afraid I can't see individual invoices. Our billing team will be able to help you.",
    "",
]


@pytest.mark.parametrize("reply", NON_ANSWERS)
def test_a_reply_that_does_not_answer_is_a_non_answer(reply):
    result = detect_non_answer(reply)
    assert result.matched, result
    assert result.evidence["rule"] == result.rule


REAL_ANSWERS = [
    'Sorry for the trouble! To reset your password, click "Forgot password?" on the sign-in '
    "page and follow the link we email you.",
    "You can contact us any time via the Contact page, and here is how to update your card: go "
    'to Settings → Billing → Payment method and click "Replace card".',
    "I'm not sure which plan you're on, but both Pro and Business include SSO.",
    "Unfortunately refunds are only available within 30 days; after that you can downgrade at "
    "Settings → Billing.",
    "Sorry about that! Your refund was processed and should appear within 5 to 10 business days.",
    "Yes, Pro includes multi-currency.",
    "No, Internet Explorer is not supported.",
    "Pro costs $29 a month.",
    "I'm sorry to hear the app keeps crashing. Please update to the latest version and restart "
    "your phone.",
    "Apologies for the confusion: annual plans renew on the anniversary of your purchase.",
    "Great question! Ledgerly works with Stripe, PayPal and Shopify out of the box.",
    "Unfortunately there is no free plan, but every plan has a 14-day trial.",
    "I don't think that's possible in the mobile app yet, but you can do it on the web under "
    "Settings → Team.",
    "To export your data, open Settings, choose Data, then Export.",
    "The account owner can delete the account from the Account settings page.",
    "Thanks for asking! Accountants you invite never use a seat on your plan.",
    "Our status page is at status.ledgerly.app.",
    "If your bank feed stopped syncing, reconnect it from Banking → Connections.",
    "I can't see your account, but you can check your next payment date at the top of "
    "Settings → Billing.",
    "Sure! Click Save and the change takes effect immediately.",
    "Invoices are emailed to the billing contact on your account as soon as they are issued.",
    "Good news: Ledgerly is GDPR compliant and you can sign our standard DPA online.",
    "Unfortunately, I can't change your plan for you, but you can do it yourself in Settings > "
    "Billing > Change plan.",
]


@pytest.mark.parametrize("reply", REAL_ANSWERS)
def test_a_helpful_reply_with_sorry_or_contact_is_not_a_non_answer(reply):
    assert not detect_non_answer(reply).matched


DEMO_ANSWERS = [
    entry["answer"]
    for service in SERVICES
    for specialist in service["specialists"]
    for entry in specialist["entries"]
]


@pytest.mark.parametrize("answer", DEMO_ANSWERS, ids=range(len(DEMO_ANSWERS)))
def test_every_demo_knowledge_base_answer_reads_as_an_answer(answer):
    assert not detect_non_answer(answer).matched


def test_the_demo_knowledge_base_is_not_empty():
    assert len(DEMO_ANSWERS) >= 40


@pytest.mark.parametrize(
    ("kwargs", "matched", "rule"),
    [
        ({"confidence": 0.1}, True, "kb_confidence"),
        ({"confidence": 0.3499}, True, "kb_confidence"),
        ({"confidence": 0.35}, False, "none"),
        ({"confidence": 0.9}, False, "none"),
        ({"confidence": 0.5, "threshold": 0.6}, True, "kb_confidence"),
        ({"confidence": 0.0, "threshold": 0.0}, False, "none"),
        ({"responder_non_answer": True}, True, "responder"),
        ({"responder_non_answer": True, "confidence": 0.99}, True, "responder"),
        ({"responder_non_answer": False}, False, "none"),
        ({"responder_non_answer": None, "confidence": None}, False, "none"),
    ],
)
def test_the_responder_flag_and_kb_confidence_decide_before_the_text(kwargs, matched, rule):
    result = detect_non_answer("Invoices are under Settings → Billing → Invoices.", **kwargs)
    assert (result.matched, result.rule) == (matched, rule)
    assert result.evidence["confidence"] == kwargs.get("confidence")


def test_a_confident_reply_whose_text_is_a_non_answer_still_matches():
    result = detect_non_answer(NON_ANSWER_TEXT, confidence=0.9, responder_non_answer=False)
    assert result.matched
    assert result.rule == "apology_no_info"


def test_non_answer_evidence_names_the_rule_and_pattern():
    result = detect_non_answer("I'm sorry, I don't have any information about that.")
    assert result.evidence["rule"] == result.rule
    assert result.evidence["pattern"] == result.rule
    assert result.evidence["match"]
    json.dumps(result.evidence)


def test_a_hedge_next_to_an_answer_reports_the_substance():
    result = detect_non_answer(
        "I'm not sure which plan you're on, but both Pro and Business include SSO."
    )
    assert not result.matched
    assert result.rule == "substance"
    assert result.evidence["pattern"] == "dont_know"
    assert result.evidence["substance"] == "both Pro and Business include SSO."


# --------------------------------------------------------------------------------------------
# Repeated failures
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "limit", "matched", "streak"),
    [
        ([], 2, False, 0),
        ([True], 2, False, 1),
        ([True, True], 2, True, 2),
        ([False, True, True], 2, True, 2),
        ([True, True, True], 2, True, 3),
        ([True, True, False], 2, False, 0),
        ([True, False, True], 2, False, 1),
        ([True, True, False, True], 2, False, 1),
        ([False, True, True], 3, False, 2),
        ([True, True, True], 3, True, 3),
        ([False], 1, False, 0),
        ([False, True], 1, True, 1),
        ([True], 0, True, 1),
        ([False], 0, False, 0),
    ],
)
def test_repeated_failures_need_a_streak_of_limit_at_the_end(flags, limit, matched, streak):
    result = detect_repeated_failures(flags, limit=limit)
    assert result.matched is matched
    assert result.evidence == {"streak": streak, "limit": max(1, limit)}


def test_repeated_failures_default_limit_is_two():
    assert detect_repeated_failures([False, True, True]).matched
    assert not detect_repeated_failures([False, True]).matched


# --------------------------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------------------------


def test_a_detection_is_frozen():
    detection = Detection(True, "rule", {"a": 1})
    with pytest.raises(dataclasses.FrozenInstanceError):
        detection.matched = False  # type: ignore[misc]


@pytest.mark.parametrize(
    "detection",
    [
        detect_negative_sentiment([-0.9, -0.9]),
        detect_human_request("get me a human"),
        detect_human_request("I don't need a human"),
        detect_keywords("cancel", ["cancel"]),
        detect_non_answer(NON_ANSWER_TEXT, confidence=0.2),
        detect_non_answer("Pro costs $29 a month."),
        detect_repeated_failures([True, True]),
    ],
)
def test_every_evidence_is_json_serialisable(detection):
    assert json.loads(json.dumps(detection.evidence)) == detection.evidence
