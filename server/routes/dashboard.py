"""GET /ui: the read-only ops dashboard (admin key when auth is on; browsers are asked for it as a password)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from server.auth import BrowserAdmin
from server.dashboard.page import render_dashboard
from server.state import State

router = APIRouter(tags=["dashboard"])


@router.get("/ui", response_class=HTMLResponse)
async def dashboard(state: State, _admin: BrowserAdmin) -> HTMLResponse:
    page = await asyncio.to_thread(render_dashboard, state)
    return HTMLResponse(page, headers={"Cache-Control": "no-store"})
