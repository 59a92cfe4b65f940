"""The conversation state machine under generated histories, on PostgreSQL (SPEC §3).

Hypothesis drives random interleavings of everything that can happen to conversations:
customers writing (several visitors on two services), the AI answering on time and late
(under an epoch from before a pause), agents taking over, sending, resuming, releasing and
closing, customers ending chats, idleness, waits running out, mode changes, requests for a
human and attention flags. Side effects run as in production: on-commit callbacks after each
transaction (a transactional test database), Celery eagerly, the escalation app subscribed.

After every step the database must satisfy the contract, and the audit trail must explain
it: replaying every `AuditEvent` in order rebuilds each conversation's claim, pause, status,
messages and specialist, and at the moment each AI message was posted the replayed
conversation was neither paused, nor closed, nor in a Human Only service.
"""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.db import connection
from django.utils import timezone
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    MultipleResults,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)

from conversations import services, tasks
from conversations.models import (
    AuditAction,
    AuditEvent,
    Conversation,
    KnowledgeEntry,
    Message,
    Mode,
    Role,
    Service,
    Specialist,
    Status,
    Visitor,
)
from dashboard import cards
from escalation import services as escalation
from escalation.models import EscalationPolicy, Flag, Reason
from tests.conftest import make_agent, make_service

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.postgres]

User = get_user_model()

TEXTS = [
    "How do I reset my password?",  # answered by Tech Support
    "Can I have my money back?",  # answered by Billing: the specialist changes
    "What is the weather like on Mars tomorrow?",  # a non-answer; two in a row hand off
    "I want to talk to a human",  # a request in words: flag and hand off
    "This is awful, I hate this terrible useless service",  # negative sentiment
    "I want to cancel my account",  # an admin keyword of the support service
    "thanks",
]
# Human-Supported AI is where agents and the AI meet: drawn twice as often as the others.
MODES = st.sampled_from([Mode.HUMAN_SUPPORTED, Mode.AI_ONLY, Mode.HUMAN_SUPPORTED, Mode.HUMAN_ONLY])
VISITOR = st.integers(min_value=0, max_value=7)  # an index into the visitors so far
# The three agents and the admin, by index into `ConversationMachine.users`; "holder" is
# whoever holds the conversation (the first agent when nobody does), so that the holder's
# actions are tried as often as everyone else's.
ADMIN = 3
TAKERS = [0, 1, 2, ADMIN]
ACTORS = ["holder", "holder", 0, 1, 2, ADMIN]

# The AI is slow: reply tasks the state machine enqueues wait here (customer message id ->
# the epoch the task carries) until a rule runs them, so a pause can come in between.
REPLY_TASKS: dict[int, int] = {}
# What the rules did, over every example: printed with -s, and a guard against a vacuous run.
OUTCOMES: Counter[str] = Counter()

# Where the state machine may legitimately refuse: the domain errors it raises.
ERRORS = (
    services.AlreadyClaimed,
    services.ConversationClosed,
    services.ModeDisallows,
    services.NotClaimer,
)


@dataclass(frozen=True)
class Question:
    """A customer message and the AI epoch when it was stored: a reply may come much later."""

    conversation_id: uuid.UUID
    message_id: int
    seq: int
    epoch: int
    enqueued: bool


@dataclass
class Replayed:
    """A conversation as its audit trail tells it."""

    service_id: int
    roles: list[str] = field(default_factory=list)  # of messages posted, in seq order
    status: str = Status.OPEN
    paused: bool = False
    claimer: int | None = None
    specialist: str | None = None


def reset_tables() -> None:
    """Start each Hypothesis example from empty tables (they share one test's database)."""
    for model in (
        AuditEvent,
        Flag,
        Message,
        Conversation,
        Visitor,
        EscalationPolicy,
        KnowledgeEntry,
        Specialist,
        Service,
    ):
        model.objects.all().delete()
    User.objects.all().delete()
    Group.objects.all().delete()


def outcome(call, **kwargs) -> object:
    """The result of a state-machine call, or the domain error it refused with."""
    try:
        return call(**kwargs)
    except ERRORS as error:
        return error


def expect(result: object, error: type[Exception] | None, what: str) -> None:
    OUTCOMES[f"{what}: {error.__name__ if error else 'done'}"] += 1
    if error is None:
        assert not isinstance(result, Exception), f"{what}: refused with {result!r}"
    else:
        assert isinstance(result, error), f"{what}: expected {error.__name__}, got {result!r}"


def replay_audit_trail(initial_modes: dict[int, str], default_specialist: str) -> dict:
    """Rebuild every conversation from the audit trail alone, checking each step is legal."""
    modes = dict(initial_modes)
    replayed: dict[uuid.UUID, Replayed] = {}
    rows = AuditEvent.objects.order_by("pk").values_list(
        "pk", "action", "actor_id", "service_id", "conversation_id", "detail"
    )
    for pk, action, actor_id, service_id, conversation_id, detail in rows:
        where = f"audit #{pk} {action} {detail}"
        if action == AuditAction.MODE_CHANGED:
            assert detail["previous"] == modes[service_id], where
            modes[service_id] = mode = detail["mode"]
            for c in replayed.values():
                if c.service_id != service_id or c.status != Status.OPEN:
                    continue
                if mode == Mode.AI_ONLY and (c.paused or c.claimer):
                    c.paused, c.claimer = False, None
                elif mode == Mode.HUMAN_ONLY:
                    c.paused = True
            continue
        assert conversation_id is not None, where
        if action == AuditAction.CONVERSATION_STARTED:
            assert conversation_id not in replayed, where
            replayed[conversation_id] = Replayed(
                service_id=service_id,
                paused=modes[service_id] == Mode.HUMAN_ONLY,
                specialist=default_specialist,
            )
            continue
        c = replayed[conversation_id]
        mode = modes[c.service_id]
        if action == AuditAction.MESSAGE_POSTED:
            assert c.status == Status.OPEN, f"a message in a closed conversation: {where}"
            assert detail["seq"] == len(c.roles) + 1, f"seq gap: {where}"
            c.roles.append(detail["role"])
            if detail["role"] == Role.AI:
                assert not c.paused, f"the AI spoke while paused: {where}"
                assert mode != Mode.HUMAN_ONLY, f"the AI spoke in Human Only: {where}"
            if detail["role"] == Role.HUMAN:
                assert actor_id is not None and actor_id == c.claimer, f"not the claimer: {where}"
        elif action == AuditAction.TAKEN_OVER:
            assert c.status == Status.OPEN and mode != Mode.AI_ONLY, where
            assert c.claimer is None, f"a second claimer: {where}"
            c.claimer, c.paused = actor_id, True
        elif action == AuditAction.AI_RESUMED:
            assert c.status == Status.OPEN and mode != Mode.HUMAN_ONLY, where
            c.claimer, c.paused = None, False
        elif action == AuditAction.RELEASED:
            assert c.status == Status.OPEN and c.claimer is not None and c.paused, where
            c.claimer = None
        elif action == AuditAction.HANDED_OFF:
            assert c.status == Status.OPEN and not c.paused and mode != Mode.AI_ONLY, where
            c.paused = True
        elif action == AuditAction.WAIT_EXPIRED:
            assert c.status == Status.OPEN and c.paused and c.claimer is None, where
            assert mode == Mode.HUMAN_SUPPORTED, where
            c.paused = False
        elif action == AuditAction.CLOSED:
            assert c.status == Status.OPEN, where
            c.status, c.paused = Status.CLOSED, False
        elif action == AuditAction.SPECIALIST_CHANGED:
            assert detail["previous"] == c.specialist, where
            c.specialist = detail["specialist"]
    return replayed


class ConversationMachine(RuleBasedStateMachine):
    """Every way a conversation changes, interleaved at random, with the contract checked."""

    # Customer messages, and through them their conversations (open or closed by now).
    questions = Bundle("questions")

    @initialize(target=questions, support_mode=MODES, sales_mode=MODES)
    def setup(self, support_mode: str, sales_mode: str) -> MultipleResults[Question]:
        reset_tables()
        REPLY_TASKS.clear()
        self.services = [
            make_service(slug="support", name="Support", mode=support_mode),
            make_service(slug="sales", name="Sales", mode=sales_mode),
        ]
        for service in self.services:
            EscalationPolicy.objects.create(service=service, keywords="cancel my account")
        self.initial_modes = {s.pk: s.mode for s in self.services}
        self.users = [
            make_agent(User, "alice", "Alice"),
            make_agent(User, "bob", "Bob"),
            make_agent(User, "carol", "Carol"),
        ]
        admin = User.objects.create_user(username="ada", password="pw", first_name="Ada")
        admin.is_staff = True
        admin.save()
        admin.user_permissions.add(Permission.objects.get(codename="change_service"))
        self.users.append(User.objects.get(pk=admin.pk))  # fresh: no cached permissions
        # A customer of each service has already written.
        self.visitors = [
            services.visitor_identify(service=service, token=None)[0] for service in self.services
        ]
        return multiple(*(self.write(v, "How do I reset my password?") for v in self.visitors))

    # --- Helpers ----------------------------------------------------------------------------

    def user(self, who: int | str, conversation: Conversation):
        if who == "holder":
            return conversation.claimed_by if conversation.claimed_by_id else self.users[0]
        return self.users[who]

    def visitor(self, index: int) -> Visitor:
        return self.visitors[index % len(self.visitors)]

    def conversation(self, question: Question) -> Conversation:
        """The open conversation of whoever asked `question`, else the closed one it was in."""
        asked_in = Conversation.objects.select_related("service", "claimed_by").get(
            pk=question.conversation_id
        )
        if asked_in.status == Status.OPEN:
            return asked_in
        current = services.open_conversation_for(visitor=asked_in.visitor)
        return current or asked_in

    # --- Customers --------------------------------------------------------------------------

    @rule(service=st.sampled_from([0, 1]))
    def a_visitor_arrives(self, service: int) -> None:
        visitor, token = services.visitor_identify(service=self.services[service], token=None)
        assert services.visitor_from_token(service=self.services[service], token=token) == visitor
        self.visitors.append(visitor)

    @rule(target=questions, visitor=VISITOR, text=st.sampled_from(TEXTS))
    def the_customer_writes(self, visitor: int, text: str) -> Question:
        return self.write(self.visitor(visitor), text)

    def write(self, visitor: Visitor, text: str) -> Question:
        before = services.open_conversation_for(visitor=visitor)
        if before is None:
            answers = Service.objects.get(pk=visitor.service_id).mode != Mode.HUMAN_ONLY
        else:
            answers = services.ai_should_answer(before)
        client_id = str(uuid.uuid4())
        posted = services.conversation_post_customer_message(
            visitor=visitor, text=text, client_id=client_id
        )
        assert posted.created
        message = posted.message
        assert (message.role, message.text, message.client_id) == (Role.USER, text, client_id)
        again = services.conversation_post_customer_message(
            visitor=visitor, text=text, client_id=client_id
        )
        assert (again.created, again.message.pk) == (False, message.pk)
        # Every customer message gets its task (the slow checks run there even when the AI
        # may not answer); `enqueued` records whether the AI was to answer it.
        assert message.pk in REPLY_TASKS, "a customer message without its task"
        epoch = REPLY_TASKS[message.pk]  # as posted: a screen may have paused it since
        return Question(message.conversation_id, message.pk, message.seq, epoch, answers)

    def reply_may_land(self, question: Question) -> bool:
        """What the contract says of a reply to `question` generated under its epoch."""
        conversation = Conversation.objects.select_related("service").get(
            pk=question.conversation_id
        )
        latest_user = (
            conversation.messages.filter(role=Role.USER).order_by("-seq").values("seq").first()
        )
        return (
            services.ai_should_answer(conversation)
            and conversation.ai_epoch == question.epoch
            and latest_user["seq"] == question.seq
            and not conversation.messages.filter(seq__gt=question.seq, role=Role.AI).exists()
        )

    @rule(question=questions)
    def the_ai_reply_task_runs(self, question: Question) -> None:
        """The real Celery task for `question`, run whenever the worker gets to it.

        Its first step scores the customer's mood (which may hand the conversation off);
        running that step here first lets the contract be read after it. It is idempotent, so
        the task's own run of it changes nothing more.
        """
        escalation.message_score_sentiment(
            message=escalation.message_with_policy(question.message_id)
        )
        may_land = self.reply_may_land(question)
        seq = tasks.generate_ai_reply(
            str(question.conversation_id), question.message_id, question.epoch
        )
        assert (seq is not None) == may_land, (question, seq)
        OUTCOMES[f"reply task: {'posted' if seq else 'dropped'}"] += 1

    @rule(question=questions)
    def a_reply_generated_before_a_pause_commits_after_it(self, question: Question) -> None:
        """The task passed its checks, the AI took its time, and the reply commits now."""
        if not question.enqueued:
            return
        may_land = self.reply_may_land(question)
        reply = services.conversation_post_ai_message(
            conversation_id=question.conversation_id,
            reply_to=Message.objects.get(pk=question.message_id),
            epoch=question.epoch,
            text="Here is a late answer.",
            specialist=None,
        )
        assert (reply is not None) == may_land, (question, reply)
        OUTCOMES[f"late reply: {'posted' if reply else 'dropped'}"] += 1

    @rule(
        visitor=VISITOR,
        pause=st.sampled_from(["take_over", "hand_off", "ask_for_a_person", "human_only"]),
        unpause=st.sampled_from(["resume", "wait_expires", "ai_only", None]),
    )
    def a_reply_races_a_pause(self, visitor: int, pause: str, unpause: str | None) -> None:
        """The race the AI epoch exists for: asked, paused (and maybe resumed), then answered.

        The reply was generated before the pause; it must be dropped even if the AI is back
        by the time it commits: the AI never talks over a human nor answers the backlog.
        """
        customer = self.visitor(visitor)
        question = self.write(customer, "How do I reset my password?")
        if not question.enqueued:
            return  # the AI was not going to answer this one anyway
        conversation = self.conversation(question)
        admin = self.users[ADMIN]
        if pause == "take_over":
            outcome(services.conversation_take_over, conversation=conversation, agent=admin)
        elif pause == "hand_off":
            services.conversation_hand_off(conversation=conversation, reason=Reason.KEYWORD)
        elif pause == "ask_for_a_person":
            services.conversation_request_human(visitor=customer, source="button")
        else:
            services.service_set_mode(service=conversation.service, mode=pause, user=admin)
        conversation = self.conversation(question)
        if unpause == "resume":
            outcome(services.conversation_resume_ai, conversation=conversation, user=admin)
        elif unpause == "wait_expires":
            later = timezone.now() + timedelta(seconds=conversation.service.handoff_wait_seconds)
            services.conversations_expire_waits(now=later + timedelta(seconds=1))
        elif unpause == "ai_only":
            services.service_set_mode(service=conversation.service, mode=unpause, user=admin)
        self.a_reply_generated_before_a_pause_commits_after_it(question)

    @rule(visitor=VISITOR)
    def the_customer_asks_for_a_person(self, visitor: int) -> None:
        visitor = self.visitor(visitor)
        conversation = services.conversation_request_human(visitor=visitor, source="button")
        conversation.refresh_from_db()
        if conversation.service.mode == Mode.AI_ONLY:
            last = conversation.messages.order_by("-seq").first()
            assert (last.role, last.text) == (Role.SYSTEM, services.TEXT_NO_HUMANS)
        else:
            assert conversation.ai_paused

    @rule(visitor=VISITOR, value=st.sampled_from(["up", "down"]), pick=st.integers(0, 5))
    def the_customer_rates_an_ai_message(self, visitor: int, value: str, pick: int) -> None:
        visitor = self.visitor(visitor)
        conversation = services.open_conversation_for(visitor=visitor)
        if conversation is None:
            return
        seqs = list(
            conversation.messages.filter(role=Role.AI).order_by("seq").values_list("seq", flat=True)
        )
        if not seqs:
            with pytest.raises(services.BadSeq):
                services.message_give_feedback(visitor=visitor, seq=1, value=value)
            return
        message = services.message_give_feedback(
            visitor=visitor, seq=seqs[pick % len(seqs)], value=value
        )
        assert message.feedback == value

    @rule(visitor=VISITOR)
    def the_customer_ends_the_chat(self, visitor: int) -> None:
        visitor = self.visitor(visitor)
        was_open = services.open_conversation_for(visitor=visitor)
        closed = services.conversation_end_by_customer(visitor=visitor)
        assert (closed is None) == (was_open is None)
        if closed is not None:
            assert Conversation.objects.get(pk=closed.pk).status == Status.CLOSED

    # --- Agents and admins ------------------------------------------------------------------

    @rule(question=questions, who=st.sampled_from(TAKERS))
    def an_agent_takes_over(self, question: Question, who: int) -> None:
        self.take_over(self.conversation(question), who)

    @rule(question=questions, who=st.sampled_from(ACTORS))
    def an_agent_sends(self, question: Question, who: int | str) -> None:
        self.send(self.conversation(question), who)

    @rule(question=questions, who=st.sampled_from(ACTORS))
    def an_agent_resumes_the_ai(self, question: Question, who: int | str) -> None:
        self.resume(self.conversation(question), who)

    @rule(question=questions, who=st.sampled_from(ACTORS))
    def an_agent_releases(self, question: Question, who: int | str) -> None:
        self.release(self.conversation(question), who)

    @rule(question=questions, who=st.sampled_from(ACTORS))
    def an_agent_closes(self, question: Question, who: int | str) -> None:
        self.close(self.conversation(question), who)

    @rule(
        pick=st.integers(min_value=0, max_value=9),
        who=st.sampled_from(TAKERS),
        then=st.lists(
            st.sampled_from(["send", "resume", "release", "take_over", "close"]), max_size=5
        ),
    )
    def an_agent_works_a_waiting_conversation(self, pick: int, who: int, then: list) -> None:
        """Take over an open conversation agents may hold, reply, then act on it in turn."""
        candidates = list(
            Conversation.objects.filter(status=Status.OPEN)
            .exclude(service__mode=Mode.AI_ONLY)
            .order_by("started_at")
            .values_list("pk", flat=True)
        )
        if not candidates:
            return
        pk = candidates[pick % len(candidates)]
        self.take_over(self.fresh(pk), who)
        self.send(self.fresh(pk), "holder")
        for action in then:
            if action == "take_over":  # a colleague tries
                self.take_over(self.fresh(pk), (who + 1) % len(TAKERS))
            else:
                getattr(self, action)(self.fresh(pk), "holder")

    def fresh(self, pk: uuid.UUID) -> Conversation:
        return Conversation.objects.select_related("service", "claimed_by").get(pk=pk)

    def take_over(self, conversation: Conversation, who: int) -> None:
        agent = self.users[who]
        if conversation.service.mode == Mode.AI_ONLY:
            error = services.ModeDisallows
        elif conversation.status != Status.OPEN:
            error = services.ConversationClosed
        elif conversation.claimed_by_id not in (None, agent.pk):
            error = services.AlreadyClaimed
        else:
            error = None
        result = outcome(services.conversation_take_over, conversation=conversation, agent=agent)
        expect(result, error, "take over")
        if error is None:
            conversation.refresh_from_db()
            assert (conversation.claimed_by_id, conversation.ai_paused) == (agent.pk, True)
            assert not cards.unacknowledged_flags().filter(conversation=conversation).exists()

    def send(self, conversation: Conversation, who: int | str) -> None:
        agent = self.user(who, conversation)
        if conversation.status != Status.OPEN:
            error = services.ConversationClosed
        elif conversation.claimed_by_id != agent.pk:
            error = services.NotClaimer
        else:
            error = None
        result = outcome(
            services.conversation_send_as_agent,
            conversation=conversation,
            agent=agent,
            text="<b>Hello</b> from a person",
        )
        expect(result, error, "send")
        if error is None:
            assert (result.role, result.author_id) == (Role.HUMAN, agent.pk)

    def holder_error(self, conversation: Conversation, user) -> type[Exception] | None:
        if conversation.status != Status.OPEN:
            return services.ConversationClosed
        if conversation.claimed_by_id == user.pk or user.pk == self.users[ADMIN].pk:
            return None
        if conversation.claimed_by_id:
            return services.AlreadyClaimed
        return services.NotClaimer

    def resume(self, conversation: Conversation, who: int | str) -> None:
        user = self.user(who, conversation)
        error = self.holder_error(conversation, user)
        if error is None and conversation.service.mode == Mode.HUMAN_ONLY:
            error = services.ModeDisallows
        result = outcome(services.conversation_resume_ai, conversation=conversation, user=user)
        expect(result, error, "resume")
        if error is None:
            conversation.refresh_from_db()
            assert (conversation.claimed_by_id, conversation.ai_paused) == (None, False)

    def release(self, conversation: Conversation, who: int | str) -> None:
        user = self.user(who, conversation)
        was_paused = conversation.ai_paused
        error = self.holder_error(conversation, user)
        result = outcome(services.conversation_release, conversation=conversation, user=user)
        expect(result, error, "release")
        if error is None:
            conversation.refresh_from_db()
            assert conversation.claimed_by_id is None
            assert conversation.ai_paused == was_paused

    def close(self, conversation: Conversation, who: int | str) -> None:
        user = self.user(who, conversation)
        error = self.holder_error(conversation, user)
        result = outcome(services.conversation_close, conversation=conversation, user=user)
        expect(result, error, "close")
        if error is None:
            assert Conversation.objects.get(pk=conversation.pk).status == Status.CLOSED

    @rule(service=st.sampled_from([0, 1]), mode=MODES)
    def an_admin_sets_a_services_mode(self, service: int, mode: str) -> None:
        updated = services.service_set_mode(
            service=self.services[service], mode=mode, user=self.users[ADMIN]
        )
        assert Service.objects.get(pk=updated.pk).mode == mode

    @rule(mode=MODES)
    def an_admin_sets_every_services_mode(self, mode: str) -> None:
        services.services_set_mode(mode=mode, user=self.users[ADMIN])
        assert set(Service.objects.values_list("mode", flat=True)) == {mode}

    # --- Escalation and time ----------------------------------------------------------------

    @rule(question=questions, reason=st.sampled_from(list(Reason)), on_message=st.booleans())
    def a_flag_is_raised(self, question: Question, reason: str, on_message: bool) -> None:
        conversation = self.conversation(question)
        message = conversation.messages.order_by("-seq").first() if on_message else None
        flag = escalation.flag_raise(
            conversation_id=conversation.pk,
            reason=reason,
            message=message,
            evidence={"rule": "stateful"},
        )
        if conversation.status != Status.OPEN or conversation.claimed_by_id:
            assert flag is None, "a flag was raised on a closed or claimed conversation"

    @rule(question=questions, reason=st.sampled_from([Reason.KEYWORD, Reason.NON_ANSWER]))
    def the_conversation_is_handed_off(self, question: Question, reason: str) -> None:
        conversation = self.conversation(question)
        expected = (
            conversation.status == Status.OPEN
            and not conversation.ai_paused
            and conversation.service.mode == Mode.HUMAN_SUPPORTED
        )
        assert services.conversation_hand_off(conversation=conversation, reason=reason) == expected

    @rule(question=questions, sweep=st.booleans())
    def the_wait_for_a_human_runs_out(self, question: Question, sweep: bool) -> None:
        conversation = self.conversation(question)
        wait = conversation.service.handoff_wait_seconds
        later = timezone.now() + timedelta(seconds=wait + 1)
        expected = (
            conversation.status == Status.OPEN
            and conversation.service.mode == Mode.HUMAN_SUPPORTED
            and conversation.ai_paused
            and conversation.claimed_by_id is None
            and conversation.waiting_since is not None
        )
        if sweep:
            services.conversations_expire_waits(now=later)
        else:
            result = services.conversation_expire_wait(conversation_id=conversation.pk, now=later)
            assert result == expected
        conversation.refresh_from_db()
        if expected:
            assert not conversation.ai_paused
            assert conversation.messages.filter(text=services.TEXT_WAIT_EXPIRED).exists()

    @rule(visitor=VISITOR)
    def the_conversation_goes_idle(self, visitor: int) -> None:
        visitor = self.visitor(visitor)
        conversation = services.open_conversation_for(visitor=visitor)
        if conversation is None:
            return
        idle = timedelta(minutes=django_settings.CONVERSATION_IDLE_MINUTES, seconds=1)
        Conversation.objects.filter(pk=conversation.pk).update(
            last_activity_at=timezone.now() - idle
        )
        open_before = set(
            Conversation.objects.filter(status=Status.OPEN).values_list("pk", flat=True)
        )
        assert services.conversations_close_idle(now=timezone.now()) == 1
        open_after = set(
            Conversation.objects.filter(status=Status.OPEN).values_list("pk", flat=True)
        )
        assert open_before - open_after == {conversation.pk}

    # --- Invariants -------------------------------------------------------------------------

    @invariant()
    def the_contract_holds(self) -> None:
        OUTCOMES["steps"] += 1
        conversations = list(
            Conversation.objects.select_related("service", "specialist").order_by("started_at")
        )
        transcripts: dict[uuid.UUID, list[tuple[int, str, object]]] = defaultdict(list)
        for conversation_id, seq, role, created_at in Message.objects.order_by(
            "conversation_id", "seq"
        ).values_list("conversation_id", "seq", "role", "created_at"):
            transcripts[conversation_id].append((seq, role, created_at))
        for c in conversations:
            where = f"conversation {c.pk} ({c.status}, {c.service.mode})"
            transcript = transcripts[c.pk]
            assert [seq for seq, _, _ in transcript] == list(range(1, len(transcript) + 1)), where
            assert c.message_count == len(transcript), where
            times = [t for _, _, t in transcript]
            assert times == sorted(times), f"seq not in commit order: {where}"
            if c.status == Status.OPEN:
                if c.claimed_by_id:
                    assert c.ai_paused, f"claimed but not paused: {where}"
                    assert c.service.mode != Mode.AI_ONLY, f"claimed in AI Only: {where}"
                if c.service.mode == Mode.HUMAN_ONLY:
                    assert c.ai_paused, f"the AI may answer in Human Only: {where}"
                waiting = c.ai_paused and not c.claimed_by_id
                assert (c.waiting_since is not None) == waiting, f"waiting_since: {where}"
            else:
                assert c.closed_at is not None and c.waiting_since is None, where
        open_ = [c for c in conversations if c.status == Status.OPEN]
        open_by_visitor = {(c.visitor_id, c.service_id) for c in open_}
        assert len(open_by_visitor) == len(open_), "two open conversations for one visitor"

        # Counters equal a recount from the tables.
        flagged: dict[uuid.UUID, list] = defaultdict(list)
        for conversation_id, created_at in Flag.objects.values_list(
            "conversation_id", "created_at"
        ):
            flagged[conversation_id].append(created_at)
        attention = {
            c.pk
            for c in open_
            if any(
                c.attention_acknowledged_at is None or at > c.attention_acknowledged_at
                for at in flagged[c.pk]
            )
        }
        assert cards.counters() == {
            "active": len(open_),
            "needs_attention": len(attention),
            "paused": len([c for c in open_ if c.ai_paused]),
        }
        # A conversation a human holds has no unacknowledged flag (taking over acknowledged
        # them, and none is raised while it is held).
        held = {c.pk for c in open_ if c.claimed_by_id}
        assert not cards.unacknowledged_flags().filter(conversation_id__in=held).exists()
        assert not attention & held

        # The audit trail explains every conversation and every message exactly.
        replayed = replay_audit_trail(self.initial_modes, default_specialist="Tech Support")
        assert set(replayed) == {c.pk for c in conversations}, "a conversation without audit"
        for c in conversations:
            r = replayed[c.pk]
            assert (c.status, c.ai_paused, c.claimed_by_id) == (r.status, r.paused, r.claimer), (
                f"the audit trail does not explain conversation {c.pk}: {r}"
            )
            assert [role for _, role, _ in transcripts[c.pk]] == r.roles, c.pk
            assert (c.specialist.name if c.specialist_id else None) == r.specialist, c.pk


@pytest.mark.timeout(600)  # a failure is shrunk to a short history: that takes minutes
def test_generated_histories_keep_every_guarantee_of_the_state_machine(
    transactional_db, monkeypatch
):
    if connection.vendor != "postgresql":
        pytest.skip("row locks and commit order are proven on PostgreSQL")
    dispatch = tasks.dispatch

    def dispatch_except_replies(task, *args) -> None:
        if task is tasks.generate_ai_reply:
            _, message_id, epoch = args
            REPLY_TASKS[message_id] = epoch
        else:
            dispatch(task, *args)

    monkeypatch.setattr(tasks, "dispatch", dispatch_except_replies)
    OUTCOMES.clear()
    run_state_machine_as_test(
        ConversationMachine,
        settings=settings(
            max_examples=40,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
    print(sorted(OUTCOMES.items()))
    # Not a vacuous run: the paths that matter were taken (each is seen dozens of times).
    for path in ("take over: done", "send: done", "late reply: dropped"):
        assert OUTCOMES[path], (path, OUTCOMES)


def test_a_visitor_held_across_a_mode_change_starts_its_next_conversation_in_the_new_mode(
    transactional_db, admin
):
    # A widget socket keeps its visitor (and the service it was loaded with) for hours.
    service = make_service(mode=Mode.AI_ONLY)
    visitor, _ = services.visitor_identify(service=service, token=None)
    services.conversation_post_customer_message(visitor=visitor, text="hi", client_id="1")
    services.conversation_end_by_customer(visitor=visitor)
    services.service_set_mode(service=service, mode=Mode.HUMAN_ONLY, user=admin)

    posted = services.conversation_post_customer_message(
        visitor=visitor, text="How do I reset my password?", client_id="2"
    )
    conversation = Conversation.objects.get(pk=posted.message.conversation_id)
    assert conversation.ai_paused and conversation.waiting_since is not None
    assert list(conversation.messages.values_list("role", flat=True)) == [Role.USER]
