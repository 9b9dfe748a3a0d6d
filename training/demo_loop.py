"""The production loop on the demo task, against a running server: traffic, feedback, retrain, promote.

The support team adopts a rule the adapter never learned: a ticket about a suspected account break-in is
`account` / `urgent`, however calm its tone. The demo adapter follows the tone and gets these wrong. This script
sends a mix of ordinary tickets and such break-in tickets, rates every answer (thumbs up when right, thumbs down
with the correct JSON when wrong), runs `loradock retrain support-tickets`, shows the candidate's score on the
held-out tickets that had been wrong, and promotes it if its gates pass.

    python -m training.demo_loop --server http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from training.demo_task import _CUES, _GREETINGS, _NAMES, _SIGNOFFS, SYSTEM_PROMPT, answer, ticket

ADAPTER = "support-tickets"
BREAK_INS = [
    "I got an alert that someone signed in to my account from {place}, and it was not me.",
    "There are logins on my account from {place} that I do not recognise.",
    "Somebody changed my account password and recovery email without my permission.",
    "My account sent messages to all my contacts that I never wrote, I think it was hacked.",
    "I see API keys on my account that nobody on our team created.",
    "We noticed unknown admin users added to our account overnight.",
]
_PLACES = ["Brazil", "Vietnam", "an unknown device", "Romania", "a city I have never been to", "Nigeria"]
CALM = _CUES["low"] + _CUES["medium"]
"""Break-ins written in a calm tone, which the adapter reads as low or medium priority."""


def break_in_ticket(rng: random.Random) -> str:
    issue = rng.choice(BREAK_INS).format(place=rng.choice(_PLACES))
    parts = [rng.choice(_GREETINGS), issue, rng.choice(CALM), rng.choice(_SIGNOFFS).format(name=rng.choice(_NAMES))]
    return " ".join(part for part in parts if part)


def traffic(break_ins: int, ordinary: int, seed: int) -> list[tuple[list[dict[str, str]], str]]:
    """(messages, correct answer) pairs, shuffled: break-ins under the new rule, and ordinary tickets."""
    rng = random.Random(seed)
    items = [(break_in_ticket(rng), answer("account", "urgent")) for _ in range(break_ins)]
    for _ in range(ordinary):
        text, category, priority = ticket(rng)
        items.append((text, answer(category, priority)))
    rng.shuffle(items)
    return [
        ([{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": text}], truth)
        for text, truth in items
    ]


def ask(server: str, model: str, messages: list[dict[str, str]], headers: dict[str, str]) -> tuple[str, str]:
    """(completion id, answer) from the server's chat completions API."""
    body = {"model": model, "messages": messages, "temperature": 0, "max_tokens": 32}
    response = httpx.post(f"{server}/v1/chat/completions", json=body, headers=headers, timeout=300)
    response.raise_for_status()
    data = response.json()
    return data["id"], data["choices"][0]["message"]["content"]


def send_and_rate(
    server: str, items: list[tuple[list[dict[str, str]], str]], headers: dict[str, str] | None = None
) -> Counter[str]:
    """Ask the adapter every item (16 at a time) and post feedback on each answer; returns the counts."""
    headers = headers or {}
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda item: ask(server, ADAPTER, item[0], headers), items))
    counts: Counter[str] = Counter()
    for (completion_id, text), (_, truth) in zip(answers, items, strict=True):
        right = text.strip() == truth
        feedback: dict[str, Any] = {"completion_id": completion_id, "rating": "up" if right else "down"}
        if not right:
            feedback["correction"] = truth
            feedback["labels"] = ["wrong_answer"]
        response = httpx.post(f"{server}/v1/feedback", json=feedback, headers=headers, timeout=60)
        response.raise_for_status()
        counts["right" if right else "wrong (corrected)"] += 1
    return counts


def wait_ready(server: str, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{server}/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(1)
    raise SystemExit(f"{server} did not become ready in {timeout_s:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="http://127.0.0.1:8000")
    parser.add_argument("--break-ins", type=int, default=120)
    parser.add_argument("--ordinary", type=int, default=40)
    parser.add_argument("--skip-if-retrained", action="store_true", help="Do nothing if the adapter has a version 2.")
    args = parser.parse_args()
    loradock = str(Path(sys.executable).parent / "loradock")
    wait_ready(args.server)
    if args.skip_if_retrained:
        versions = httpx.get(f"{args.server}/v1/adapters/{ADAPTER}", timeout=30).json().get("versions", [])
        if len(versions) > 1:
            print(f"{ADAPTER} was already retrained from feedback; serving; dashboard: {args.server}/ui")  # noqa: T201
            return
    print(f"1/4 sending {args.break_ins + args.ordinary} tickets to {ADAPTER} and rating every answer")  # noqa: T201
    counts = send_and_rate(args.server, traffic(args.break_ins, args.ordinary, seed=7))
    print(f"    {dict(counts)}")  # noqa: T201
    print("2/4 retraining from the feedback (replay of the original data against forgetting)")  # noqa: T201
    subprocess.run([loradock, "retrain", ADAPTER], check=True)
    print("3/4 promoting the candidate if no metric got worse")  # noqa: T201
    promoted = subprocess.run([loradock, "promote", ADAPTER], check=False).returncode == 0
    print("4/4 " + ("prod now serves the retrained version" if promoted else "prod unchanged"))  # noqa: T201
    print(json.dumps({"feedback": dict(counts), "promoted": promoted}))  # noqa: T201
    print(f"drift of {ADAPTER}'s traffic against its training data (dashboard: {args.server}/ui):")  # noqa: T201
    subprocess.run([loradock, "drift", ADAPTER], check=False)


if __name__ == "__main__":
    main()
