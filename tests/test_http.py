"""HTTP under ASGI: each request's sync code in one hop, on a few long-lived threads."""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest
from asgiref.sync import SyncToAsync
from django.http import HttpResponse, JsonResponse
from django.urls import path

from handoff.http import RequestHandler


def thread_name(request):
    return JsonResponse({"thread": threading.current_thread().name})


def page(request):
    return HttpResponse("<p>hello</p>")


def broken(request):
    raise RuntimeError("a view that fails")


urlpatterns = [
    path("thread/", thread_name),
    path("page/", page),
    path("broken/", broken),
]


@pytest.fixture
def handler(settings) -> RequestHandler:
    settings.ROOT_URLCONF = __name__
    settings.HANDOFF_HTTP_THREADS = 3
    return RequestHandler()


def client(handler: RequestHandler) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=handler, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


async def test_requests_share_a_few_long_lived_threads(handler):
    async with client(handler) as http:
        answers = await asyncio.gather(*(http.get("/thread/") for _ in range(12)))
    threads = {answer.json()["thread"] for answer in answers}
    assert all(answer.status_code == 200 for answer in answers)
    assert threads <= {"http-0_0", "http-1_0", "http-2_0"}


async def test_a_request_hops_to_its_thread_a_constant_few_times(handler, monkeypatch):
    """Not once per middleware: the event loop also carries every socket."""
    hops = []
    original = SyncToAsync.__call__

    async def counted(self, *args, **kwargs):
        hops.append(getattr(self.func, "__qualname__", repr(self.func)))
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(SyncToAsync, "__call__", counted)
    async with client(handler) as http:
        answer = await http.get("/page/")
    assert answer.status_code == 200
    # The request's signals, its middleware chain and view (one call), the response's close.
    assert len(hops) <= 3, hops


async def test_middleware_still_wraps_every_response(handler):
    async with client(handler) as http:
        answer = await http.get("/page/")
    assert answer.headers["X-Frame-Options"] == "DENY"
    assert "Content-Security-Policy" in answer.headers


async def test_a_failing_view_answers_500_and_gives_its_thread_back(handler, settings):
    settings.HANDOFF_HTTP_THREADS = 1
    one_thread = RequestHandler()
    async with client(one_thread) as http:
        failed = await http.get("/broken/")
        missing = await http.get("/nowhere/")
        after = await http.get("/thread/")
    assert (failed.status_code, missing.status_code, after.status_code) == (500, 404, 200)
    assert after.json()["thread"] == "http-0_0"


def test_one_handler_serves_requests_from_one_event_loop_after_another(handler, settings):
    """The server has one loop; tests and the development server may start several."""
    settings.HANDOFF_HTTP_THREADS = 1
    one_thread = RequestHandler()

    async def burst() -> set[int]:
        async with client(one_thread) as http:
            answers = await asyncio.gather(*(http.get("/thread/") for _ in range(3)))
        return {answer.status_code for answer in answers}

    assert asyncio.run(burst()) == {200}
    assert asyncio.run(burst()) == {200}
