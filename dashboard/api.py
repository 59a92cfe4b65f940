"""The agents' REST API (SPEC §6): thin views over the state machine and the card projection.

Every view validates its input, calls one service or read, and answers JSON. Every error,
whoever raises it, leaves through `exception_handler` as `{"code": …, "detail": …}`.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.db.models import Count, Q, QuerySet
from django.http import Http404
from django.utils.cache import patch_cache_control
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework import exceptions, status
from rest_framework.authentication import SessionAuthentication, TokenAuthentication
from rest_framework.pagination import PageNumberPagination
from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.utils.urls import replace_query_param
from rest_framework.views import APIView, set_rollback
from rest_framework.views import exception_handler as drf_exception_handler

from conversations import services
from conversations.models import Conversation, Service, Status
from conversations.selectors import messages_after
from dashboard import cards
from dashboard.serializers import (
    AfterSeqSerializer,
    CardPageSerializer,
    CardSerializer,
    ConversationDetailSerializer,
    ConversationFilterSerializer,
    CountersSerializer,
    ErrorSerializer,
    FlagSerializer,
    MessageSerializer,
    ModeSerializer,
    SendMessageSerializer,
    ServiceSerializer,
    TranscriptSerializer,
    VisitorSerializer,
)
from escalation.models import Flag

TRANSCRIPT_PAGE = 200
NO_SUCH_CONVERSATION = "No such conversation."
NO_SUCH_SERVICE = "No such service."

# DRF's own exceptions, renamed where the contract (SPEC §9) has its own word.
CODES: dict[type[exceptions.APIException], str] = {
    exceptions.ValidationError: "invalid",
    exceptions.ParseError: "bad_json",
    exceptions.AuthenticationFailed: "authentication_failed",
    exceptions.NotAuthenticated: "not_authenticated",
    exceptions.PermissionDenied: "permission_denied",
    exceptions.NotFound: "not_found",
    exceptions.MethodNotAllowed: "method_not_allowed",
    exceptions.NotAcceptable: "not_acceptable",
    exceptions.UnsupportedMediaType: "unsupported_media_type",
    exceptions.Throttled: "rate_limited",
}


# --- Errors --------------------------------------------------------------------------------


def _summary(errors: Any, prefix: str = "") -> list[str]:
    """Flatten DRF's nested validation messages into `field: message` lines."""
    if isinstance(errors, dict):
        lines = []
        for key, value in errors.items():
            name = "" if key in ("non_field_errors", "detail") else str(key)
            lines += _summary(value, f"{prefix}.{name}" if prefix and name else prefix or name)
        return lines
    if isinstance(errors, list):
        return [line for item in errors for line in _summary(item, prefix)]
    return [f"{prefix}: {errors}" if prefix else str(errors)]


def _code_for(exc: exceptions.APIException) -> str:
    for klass in type(exc).__mro__:
        if klass in CODES:
            return CODES[klass]
    return exc.default_code if isinstance(exc.default_code, str) else "error"


def exception_handler(exc: Exception, context: dict) -> Response | None:
    """Answer every API error as `{"code", "detail"}` with the contract's status (SPEC §9)."""
    if isinstance(exc, services.HandoffError):
        data: dict[str, Any] = {"code": exc.code, "detail": exc.detail}
        if isinstance(exc, services.AlreadyClaimed):
            data["claimed_by"] = exc.holder
        set_rollback()
        return Response(data, status=exc.status)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    # DRF's handler adds WWW-Authenticate and Retry-After and rolls back the atomic block.
    response = drf_exception_handler(exc, context)
    if response is None or not isinstance(exc, exceptions.APIException):
        return response  # not an API error: Django answers 500 and logs it
    if isinstance(exc, exceptions.ValidationError):
        errors = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        lines = _summary(errors)
        response.data = {
            "code": "invalid",
            "detail": "; ".join(lines) or "Invalid input.",
            "errors": errors,
        }
    else:
        response.data = {"code": _code_for(exc), "detail": str(exc.detail)}
    return response


ERRORS = {
    400: OpenApiResponse(ErrorSerializer, description="`invalid` input or `bad_json`."),
    401: OpenApiResponse(ErrorSerializer, description="`not_authenticated`."),
    403: OpenApiResponse(ErrorSerializer, description="`permission_denied`: not an agent."),
}
NOT_FOUND = {404: OpenApiResponse(ErrorSerializer, description="`not_found`.")}
CONFLICT = {
    409: OpenApiResponse(
        ErrorSerializer,
        description="`already_claimed` (with `claimed_by`), `mode_disallows` or `closed`.",
    )
}
ID_PARAMETER = OpenApiParameter(
    "conversation_id", OpenApiTypes.UUID, OpenApiParameter.PATH, description="Conversation id."
)


# --- Access --------------------------------------------------------------------------------


class IsAgent(BasePermission):
    """Staff or members of the `Agents` group."""

    message = "Only support agents can use this API."

    def has_permission(self, request: Request, view: APIView) -> bool:
        return services.is_agent(request.user)


class IsAdminOrReadOnly(BasePermission):
    """Reads for every agent; changes for admins (those who may change services)."""

    message = "Only admins can change service modes."

    def has_permission(self, request: Request, view: APIView) -> bool:
        return request.method in SAFE_METHODS or services.is_admin(request.user)


class NoStoreMixin:
    """`Cache-Control: private, no-store` on every response, errors included."""

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        patch_cache_control(response, private=True, no_store=True)
        return response


class AgentAPIView(NoStoreMixin, APIView):
    """Token or session auth, agents only, never stored by a shared cache."""

    # Token first: an anonymous request gets 401 with `WWW-Authenticate: Token`, not 403.
    authentication_classes = [TokenAuthentication, SessionAuthentication]
    permission_classes = [IsAgent]


class SchemaView(NoStoreMixin, SpectacularAPIView):
    """The OpenAPI 3 document of this API."""


class DocsView(NoStoreMixin, SpectacularSwaggerView):
    """Swagger UI over the schema, its assets served from this host (SPECTACULAR_SETTINGS)."""

    url_name = "dashboard:schema"


# --- Reads ---------------------------------------------------------------------------------


def _conversation(conversation_id: str) -> Conversation:
    """The conversation named in the URL; malformed ids are as unknown as missing ones."""
    try:
        pk = uuid.UUID(str(conversation_id))
    except ValueError:
        raise exceptions.NotFound(NO_SUCH_CONVERSATION) from None
    conversation = Conversation.objects.select_related("service", "visitor").filter(pk=pk).first()
    if conversation is None:
        raise exceptions.NotFound(NO_SUCH_CONVERSATION)
    return conversation


def _card(conversation: Conversation) -> cards.Card:
    card = cards.card(conversation.pk)
    if card is None:  # deleted between the action and this read
        raise exceptions.NotFound(NO_SUCH_CONVERSATION)
    return card


def _services() -> QuerySet[Service]:
    return Service.objects.annotate(
        conversations_open=Count("conversations", filter=Q(conversations__status=Status.OPEN))
    ).order_by("name")


def _service(slug: str) -> Service:
    service = _services().filter(slug=slug).first()
    if service is None:
        raise exceptions.NotFound(NO_SUCH_SERVICE)
    return service


def _conversation_list(filters: dict) -> QuerySet[Conversation]:
    """Conversations matching the filters, needs-attention first, then most recently active."""
    queryset = cards.with_needs_attention(Conversation.objects.filter(status=filters["status"]))
    if "service" in filters:
        queryset = queryset.filter(service__slug=filters["service"])
    if "needs_attention" in filters:
        queryset = queryset.filter(needs_attention=filters["needs_attention"])
    return queryset.order_by("-needs_attention", "-last_activity_at", "pk")


def _flags(conversation: Conversation) -> QuerySet[Flag]:
    return (
        Flag.objects.filter(conversation=conversation)
        .select_related("conversation", "message")
        .order_by("created_at", "pk")
    )


class CardPagination(PageNumberPagination):
    page_size = 50


# --- Services ------------------------------------------------------------------------------


class ServiceListView(AgentAPIView):
    @extend_schema(
        operation_id="services_list",
        summary="Services with their mode",
        responses={200: ServiceSerializer(many=True), **ERRORS},
    )
    def get(self, request: Request) -> Response:
        return Response(ServiceSerializer(_services(), many=True).data)


class ServiceDetailView(AgentAPIView):
    permission_classes = [IsAgent, IsAdminOrReadOnly]

    @extend_schema(
        operation_id="services_retrieve",
        summary="One service",
        responses={200: ServiceSerializer, **ERRORS, **NOT_FOUND},
    )
    def get(self, request: Request, slug: str) -> Response:
        return Response(ServiceSerializer(_service(slug)).data)

    @extend_schema(
        operation_id="services_set_mode",
        summary="Set one service's mode (admins)",
        request=ModeSerializer,
        responses={200: ServiceSerializer, **ERRORS, **NOT_FOUND},
    )
    def patch(self, request: Request, slug: str) -> Response:
        service = _service(slug)
        body = ModeSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        services.service_set_mode(
            service=service, mode=body.validated_data["mode"], user=request.user
        )
        return Response(ServiceSerializer(_service(slug)).data)


class ServicesSetModeView(AgentAPIView):
    permission_classes = [IsAgent, IsAdminOrReadOnly]

    @extend_schema(
        operation_id="services_set_mode_all",
        summary="Set every service's mode (admins)",
        request=ModeSerializer,
        responses={200: ServiceSerializer(many=True), **ERRORS},
    )
    def post(self, request: Request) -> Response:
        body = ModeSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        services.services_set_mode(mode=body.validated_data["mode"], user=request.user)
        return Response(ServiceSerializer(_services(), many=True).data)


# --- Conversations -------------------------------------------------------------------------


class ConversationListView(AgentAPIView):
    @extend_schema(
        operation_id="conversations_list",
        summary="Conversation cards, needs-attention first",
        parameters=[
            OpenApiParameter("status", str, enum=list(Status.values), default=Status.OPEN),
            OpenApiParameter("service", str, description="A service's slug."),
            OpenApiParameter("needs_attention", bool),
            OpenApiParameter("page", int, description="Page number (50 cards a page)."),
        ],
        responses={200: CardPageSerializer, **ERRORS, **NOT_FOUND},
    )
    def get(self, request: Request) -> Response:
        query = ConversationFilterSerializer(data=request.query_params.dict())
        query.is_valid(raise_exception=True)
        if (
            "service" in query.validated_data
            and not Service.objects.filter(slug=query.validated_data["service"]).exists()
        ):
            raise exceptions.ValidationError({"service": ["No service has this slug."]})
        paginator = CardPagination()
        # Page the ids, then project that page into cards: a constant number of queries.
        ids = paginator.paginate_queryset(
            _conversation_list(query.validated_data).values_list("pk", flat=True), request, self
        )
        by_id = {c["id"]: c for c in cards.cards(Conversation.objects.filter(pk__in=ids))}
        page = [by_id[str(pk)] for pk in ids if str(pk) in by_id]
        return paginator.get_paginated_response(page)


class ConversationDetailView(AgentAPIView):
    @extend_schema(
        operation_id="conversations_retrieve",
        summary="A card with the visitor's profile and every flag",
        parameters=[ID_PARAMETER],
        responses={200: ConversationDetailSerializer, **ERRORS, **NOT_FOUND},
    )
    def get(self, request: Request, conversation_id: str) -> Response:
        conversation = _conversation(conversation_id)
        return Response(
            {
                **_card(conversation),
                "visitor": VisitorSerializer(conversation.visitor).data,
                "flags": FlagSerializer(_flags(conversation), many=True).data,
                "mode": conversation.service.mode,
            }
        )


class ConversationMessagesView(AgentAPIView):
    @extend_schema(
        operation_id="conversations_messages_list",
        summary="The transcript after a seq, 200 messages a page",
        parameters=[
            ID_PARAMETER,
            OpenApiParameter("after_seq", int, description="Only messages after this seq."),
        ],
        responses={200: TranscriptSerializer, **ERRORS, **NOT_FOUND},
    )
    def get(self, request: Request, conversation_id: str) -> Response:
        conversation = _conversation(conversation_id)
        query = AfterSeqSerializer(data=request.query_params.dict())
        query.is_valid(raise_exception=True)
        after_seq = query.validated_data["after_seq"]
        rows = list(
            messages_after(conversation=conversation, after_seq=after_seq)[: TRANSCRIPT_PAGE + 1]
        )
        next_url = None
        if len(rows) > TRANSCRIPT_PAGE:
            rows = rows[:TRANSCRIPT_PAGE]
            next_url = replace_query_param(request.build_absolute_uri(), "after_seq", rows[-1].seq)
        return Response({"results": [cards.message_payload(m) for m in rows], "next": next_url})

    @extend_schema(
        operation_id="conversations_messages_create",
        summary="Reply as the agent holding the conversation",
        parameters=[ID_PARAMETER],
        request=SendMessageSerializer,
        responses={
            201: MessageSerializer,
            **ERRORS,
            403: OpenApiResponse(ErrorSerializer, description="`not_claimer` or not an agent."),
            **NOT_FOUND,
            409: OpenApiResponse(ErrorSerializer, description="`closed`."),
            413: OpenApiResponse(ErrorSerializer, description="`too_long`: over 4,000 chars."),
        },
    )
    def post(self, request: Request, conversation_id: str) -> Response:
        conversation = _conversation(conversation_id)
        body = SendMessageSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        message = services.conversation_send_as_agent(
            conversation=conversation, agent=request.user, text=body.validated_data["text"]
        )
        return Response(cards.message_payload(message), status=status.HTTP_201_CREATED)


def _action_schema(operation_id: str, summary: str):
    return extend_schema(
        operation_id=operation_id,
        summary=summary,
        parameters=[ID_PARAMETER],
        request=None,
        responses={200: CardSerializer, **ERRORS, **NOT_FOUND, **CONFLICT},
    )


class TakeOverView(AgentAPIView):
    @_action_schema("conversations_take_over", "Take the conversation over (the AI pauses)")
    def post(self, request: Request, conversation_id: str) -> Response:
        conversation = _conversation(conversation_id)
        services.conversation_take_over(conversation=conversation, agent=request.user)
        return Response(_card(conversation))


class ResumeAIView(AgentAPIView):
    @_action_schema("conversations_resume_ai", "Hand the conversation back to the AI")
    def post(self, request: Request, conversation_id: str) -> Response:
        conversation = _conversation(conversation_id)
        services.conversation_resume_ai(conversation=conversation, user=request.user)
        return Response(_card(conversation))


class ReleaseView(AgentAPIView):
    @_action_schema("conversations_release", "Give up the claim; it waits for a colleague")
    def post(self, request: Request, conversation_id: str) -> Response:
        conversation = _conversation(conversation_id)
        services.conversation_release(conversation=conversation, user=request.user)
        return Response(_card(conversation))


class CloseView(AgentAPIView):
    @_action_schema("conversations_close", "Close the conversation")
    def post(self, request: Request, conversation_id: str) -> Response:
        conversation = _conversation(conversation_id)
        services.conversation_close(conversation=conversation, user=request.user)
        return Response(_card(conversation))


# --- Stats ---------------------------------------------------------------------------------


class StatsView(AgentAPIView):
    @extend_schema(
        operation_id="stats_retrieve",
        summary="The console's three counters",
        responses={200: CountersSerializer, **ERRORS},
    )
    def get(self, request: Request) -> Response:
        return Response(cards.counters())
