"""The demo task loradock ships: support tickets in, `{"category": ..., "priority": ...}` out.

The data is generated here (no downloads): each ticket combines an issue from one category with an urgency cue
for one priority, inside varied greetings, details and sign-offs. The base model has never seen the label set or
the answer format, so it scores near zero; a small LoRA learns both within minutes on two CPU cores.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

CATEGORIES = ("billing", "bug", "account", "shipping", "feature_request")
PRIORITIES = ("low", "medium", "high", "urgent")
SYSTEM_PROMPT = (
    "Classify the ticket. Reply with JSON: category (billing, bug, account, shipping, feature_request), "
    "priority (low, medium, high, urgent)."
)

_ISSUES = {
    "billing": [
        "I was charged twice for my {plan} subscription this month.",
        "My invoice {ref} shows the wrong amount of {amount}.",
        "The card on file was billed {amount} but I cancelled last week.",
        "Why did my {plan} plan renew at a higher price than advertised?",
        "I need a corrected invoice for {ref}, the VAT number is missing.",
        "There is an unexpected charge of {amount} on my statement from you.",
    ],
    "bug": [
        "The export button in {feature} throws an error and nothing downloads.",
        "Since the last update {feature} crashes whenever I open a report.",
        "Charts in {feature} show blank panels on every browser we tried.",
        "Saving a draft in {feature} loses all the text I typed.",
        "The search in {feature} returns results from the wrong workspace.",
        "{feature} keeps logging me out every few minutes.",
    ],
    "account": [
        "I cannot reset my password, the reset email never arrives.",
        "Please change the owner of workspace {ref} to my colleague.",
        "How do I enable two-factor authentication for my team?",
        "My account {ref} is locked after too many login attempts.",
        "I want to merge my two accounts into the one with {email}.",
        "Please delete the user {email} from our organisation.",
    ],
    "shipping": [
        "My order {ref} still has not arrived after two weeks.",
        "The tracking for order {ref} has not updated since it left the warehouse.",
        "The package for {ref} arrived damaged and the box was open.",
        "I received the wrong item in order {ref}.",
        "Can you change the delivery address for order {ref}?",
        "The courier marked {ref} as delivered but nothing came.",
    ],
    "feature_request": [
        "It would be great if {feature} could export to spreadsheet files.",
        "Could you add a dark mode to {feature}?",
        "Please consider adding keyboard shortcuts to {feature}.",
        "We would love an API endpoint for {feature} data.",
        "Can {feature} support scheduling reports every Monday?",
        "Please let us tag items with custom colours in {feature}.",
    ],
}
_CUES = {
    "low": [
        "No rush at all, whenever you get a chance.",
        "This is not urgent, just letting you know.",
        "Low priority for us, reply when convenient.",
        "Nothing is blocked, it is a minor thing.",
    ],
    "medium": [
        "It would be good to get this sorted this week.",
        "Please look into it when you can in the next few days.",
        "It is a bit annoying, so a fix soon would help.",
        "We can work around it for now.",
    ],
    "high": [
        "This is affecting many of our customers, please prioritise it.",
        "Several people on my team are stuck, we need help today.",
        "This is costing us sales, please handle it quickly.",
        "Our managers are asking about it, please respond soon.",
    ],
    "urgent": [
        "URGENT: production is down and everyone is blocked right now!",
        "This is critical, we cannot operate at all, please help immediately!",
        "Emergency: our launch is today and this stops everything, ASAP!",
        "Everything is on fire, we need someone on this right now!",
    ],
}
_CONTEXT = [
    "We have been customers for three years.",
    "I am writing on behalf of our finance team.",
    "We use your product across two offices.",
    "I already tried logging out and back in.",
    "My colleague reported the same thing yesterday.",
    "We are on the annual contract.",
    "I checked the help centre but found nothing.",
    "This started on Tuesday afternoon.",
    "Screenshots are available if you need them.",
    "Our IT admin is copied on this message.",
    "We rely on this for our weekly reporting.",
    "I am using the latest version of Chrome.",
    "The same happens on my phone.",
    "Our account manager suggested I write here.",
]
_GREETINGS = ["Hi,", "Hello team,", "Hey there,", "Good morning,", "Dear support,", ""]
_SIGNOFFS = ["Thanks, {name}", "Best, {name}", "Regards, {name}", "- {name}", "Cheers", ""]
_NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivo", "Jules", "Kiri", "Lena"]
_FEATURES = ["the dashboard", "the reports page", "the mobile app", "the editor", "the calendar", "the analytics tab"]
_PLANS = ["Pro", "Team", "Business", "Starter"]


def ticket(rng: random.Random) -> tuple[str, str, str]:
    """One ticket text and its (category, priority)."""
    category = rng.choice(CATEGORIES)
    priority = rng.choice(PRIORITIES)
    issue = rng.choice(_ISSUES[category]).format(
        plan=rng.choice(_PLANS),
        ref=f"#{rng.randint(10000, 99999)}",
        amount=f"${rng.randint(5, 900)}.{rng.randint(0, 99):02d}",
        feature=rng.choice(_FEATURES),
        email=f"{rng.choice(_NAMES).lower()}@example.com",
    )
    issue = issue[0].upper() + issue[1:]
    body = [issue, rng.choice(_CUES[priority]), *rng.sample(_CONTEXT, rng.randint(0, 2))]
    rng.shuffle(body)
    parts = [rng.choice(_GREETINGS), *body, rng.choice(_SIGNOFFS).format(name=rng.choice(_NAMES))]
    return " ".join(part for part in parts if part), category, priority


def answer(category: str, priority: str) -> str:
    return json.dumps({"category": category, "priority": priority})


def generate(count: int, seed: int = 0) -> list[dict[str, Any]]:
    """`count` chat examples in OpenAI's fine-tuning format."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        text, category, priority = ticket(rng)
        rows.append(
            {
                "messages": [
                    {"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": text},
                    {"role": "assistant", "content": answer(category, priority)},
                ]
            }
        )
    return rows


def write_dataset(path: Path, count: int = 1000, seed: int = 0) -> Path:
    """The demo dataset as JSONL (what `make demo` trains on)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as stream:
        for row in generate(count, seed):
            stream.write(json.dumps(row) + "\n")
    return path


DEMO_TICKET = "Hi, I was charged twice for my Pro subscription this month. Please fix it today, this is urgent!"


def example_requests(models: tuple[str, ...] = ("SmolLM2-135M-Instruct", "support-tickets")) -> str:
    """curl commands asking the base and the demo adapter the same ticket (what `make demo` prints)."""
    lines = []
    for model in models:
        body = {
            "model": model,
            "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": DEMO_TICKET}],
            "temperature": 0,
        }
        lines.append(
            "curl -s http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\\n"
            f"  -d '{json.dumps(body)}'"
        )
    return "\n\n".join(lines)


if __name__ == "__main__":
    print(example_requests())  # noqa: T201 - `make demo` prints these for the user
