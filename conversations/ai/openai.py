"""A responder backed by any OpenAI-compatible chat-completions endpoint."""

from __future__ import annotations

import logging
from typing import Any

import httpx

from .base import AIReply, AIRequest, Turn, last_user_index, setting
from .knowledge_base import DEFAULT_THRESHOLD, Match, default_specialist, retrieve

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4o-mini"
DEFAULT_TIMEOUT = 20.0

FALLBACK_TEXT = (
    "I'm sorry, I'm having trouble answering right now. Please try again in a moment, "
    "or ask to talk to a person."
)
GENERIC_PROMPT = "You are a friendly customer support assistant for {service}."
GUIDANCE = (
    "Answer the customer's latest message briefly and accurately, in plain text. Use the "
    "reference information below when it is relevant. If you do not know the answer, say so "
    "honestly and suggest the customer ask to talk to a person; never invent facts, prices or "
    "policies."
)
# Bounds the prompt on long conversations; the oldest turns matter least.
MAX_TURNS = 30


class BackendError(Exception):
    """The endpoint did not give a usable completion; `kind` says why."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class OpenAIResponder:
    """Ask a chat-completions model, with the specialist's instructions and top knowledge."""

    typing_indicator = True

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        model: str | None = None,
        timeout: float | None = None,
        *,
        knowledge_limit: int = 3,
        threshold: float | None = None,
    ) -> None:
        self.base_url = (base_url or setting("AI_BASE_URL", DEFAULT_BASE_URL)).rstrip("/")
        self._api_key = api_key if api_key is not None else setting("AI_API_KEY", "")
        self.model = model or setting("AI_MODEL", DEFAULT_MODEL)
        self.timeout = float(timeout or setting("AI_TIMEOUT_SECONDS", DEFAULT_TIMEOUT))
        self.knowledge_limit = knowledge_limit
        if threshold is None:
            threshold = setting("HANDOFF_KB_THRESHOLD", DEFAULT_THRESHOLD)
        self.threshold = float(threshold)

    def __repr__(self) -> str:
        # Deliberately without the API key.
        return f"OpenAIResponder(base_url={self.base_url!r}, model={self.model!r})"

    def reply(self, request: AIRequest) -> AIReply:
        """Return the model's answer, or a polite fallback on any failure; never raise."""
        try:
            if last_user_index(request.transcript) is None:
                return self._fallback(request, "no_question")
            matches = retrieve(request, limit=self.knowledge_limit)
            specialist = self.route(request, matches)
            payload = self.build_payload(request, specialist, matches)
            text, finish_reason = self._complete(payload)
        except BackendError as error:
            logger.warning("AI backend at %s failed: %s", self.base_url, error.kind)
            return self._fallback(request, error.kind)
        except Exception:
            logger.exception("AI backend at %s failed unexpectedly", self.base_url)
            return self._fallback(request, "unexpected")
        top_score = matches[0].score if matches else 0.0
        return AIReply(
            text=text,
            specialist=specialist,
            # The model always answers something; knowledge that backs it raises our trust.
            confidence=round(min(1.0, 0.5 + 0.5 * top_score), 4),
            non_answer=False,
            evidence={
                "rule": "llm_reply",
                "model": self.model,
                "entry_ids": [match.item.id for match in matches],
                "score": top_score,
                "finish_reason": finish_reason,
            },
        )

    def route(self, request: AIRequest, matches: list[Match]) -> str | None:
        """Return the specialist of a confident top match, else the current one."""
        if matches and matches[0].score >= self.threshold and matches[0].item.specialist:
            return matches[0].item.specialist
        return default_specialist(request)

    def build_payload(
        self, request: AIRequest, specialist: str | None, matches: list[Match]
    ) -> dict[str, Any]:
        """Return the chat-completions request body."""
        info = next((s for s in request.specialists if s.name == specialist), None)
        prompt = [
            (info.instructions.strip() if info and info.instructions.strip() else "")
            or GENERIC_PROMPT.format(service=request.service_name),
            GUIDANCE,
        ]
        if matches:
            references = "\n\n".join(
                f"Q: {match.item.question.strip()}\nA: {match.item.answer.strip()}"
                for match in matches
            )
            prompt.append(f"Reference information:\n{references}")
        transcript = request.transcript[: (last_user_index(request.transcript) or 0) + 1]
        notes = [turn.text for turn in transcript if turn.role == "system"]
        if notes:
            prompt.append("Notices shown to the customer so far:\n" + "\n".join(notes))
        messages = [{"role": "system", "content": "\n\n".join(prompt)}]
        messages += [_chat_message(turn) for turn in transcript if turn.role != "system"][
            -MAX_TURNS:
        ]
        return {"model": self.model, "messages": messages, "temperature": 0.2}

    def _complete(self, payload: dict[str, Any]) -> tuple[str, str | None]:
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        try:
            with httpx.Client(timeout=self.timeout) as client:
                response = client.post(
                    f"{self.base_url}/chat/completions", json=payload, headers=headers
                )
        except httpx.TimeoutException as error:
            raise BackendError("timeout") from error
        except httpx.ConnectError as error:
            raise BackendError("connection_error") from error
        except httpx.HTTPError as error:
            raise BackendError(type(error).__name__) from error
        if not response.is_success:
            raise BackendError(f"http_{response.status_code}")
        try:
            choice = response.json()["choices"][0]
            content = choice["message"]["content"]
        except ValueError as error:
            raise BackendError("bad_json") from error
        except (KeyError, IndexError, TypeError) as error:
            raise BackendError("bad_response") from error
        if not isinstance(content, str) or not content.strip():
            raise BackendError("empty_content")
        return content.strip(), choice.get("finish_reason")

    def _fallback(self, request: AIRequest, error: str) -> AIReply:
        return AIReply(
            text=FALLBACK_TEXT,
            specialist=default_specialist(request),
            confidence=0.0,
            non_answer=True,
            evidence={"rule": "backend_error", "error": error},
        )


def _chat_message(turn: Turn) -> dict[str, str]:
    """Map a transcript turn onto a chat role: humans and the AI both speak as the assistant."""
    return {"role": "user" if turn.role == "user" else "assistant", "content": turn.text}
