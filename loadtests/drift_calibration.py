"""Benchmark: how often drift raises a false alarm on in-distribution traffic, and how soon it alerts on a shift.

    python -m loadtests.drift_calibration [--windows 100] [--window 200] [--out bench-results]

The reference is the demo task's training prompts (support tickets, seed 0). In-distribution traffic is held-out
tickets from the same generator (another seed): the share of windows whose status is not `ok` is the false-alarm
rate. Shifted traffic replaces a full window's requests one by one with another domain (cooking questions),
another language (German tickets) or much longer prompts (eight tickets in one): the detection delay is the
number of shifted requests in the window when it first reads `alert`, evaluated every --step requests as the
server does. Answers stay in-distribution, so only the prompt tests can fire. Prints a table, writes JSON and a
chart.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from adapters.drift.checks import DriftDetector, Observation
from adapters.drift.features import Embedder, Features
from adapters.drift.profile import build_profile, chat_reference
from adapters.drift.reports import Status, worst
from training.demo_task import generate

SHIFTS = ("another domain", "another language", "much longer prompts")


def cooking_questions(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    dishes = ["lasagne", "risotto", "pancakes", "curry", "sourdough", "minestrone", "apple pie", "ratatouille"]
    swaps = ["butter", "olive oil", "honey", "yoghurt", "oat milk", "brown sugar"]
    return [
        f"How long should I bake the {rng.choice(dishes)} at {rng.randint(150, 250)} degrees, "
        f"and can I use {rng.choice(swaps)} instead of {rng.choice(swaps)}?"
        for _ in range(count)
    ]


def german_tickets(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    issues = [
        "meine Bestellung {ref} ist nach zwei Wochen immer noch nicht angekommen.",
        "mir wurde das Abonnement diesen Monat zweimal berechnet.",
        "ich kann mein Passwort nicht zurücksetzen, die E-Mail kommt nie an.",
        "der Export im Dashboard stürzt jedes Mal ab.",
        "könnten Sie bitte einen Dunkelmodus für den Editor einbauen?",
        "die Rechnung {ref} zeigt einen falschen Betrag.",
    ]
    cues = ["Es ist dringend!", "Keine Eile.", "Bitte bald erledigen.", "Alles steht still, bitte sofort helfen!"]
    names = ["Anna", "Jonas", "Lena", "Felix", "Mia"]
    return [
        f"Hallo, {rng.choice(issues).format(ref=f'#{rng.randint(10000, 99999)}')} {rng.choice(cues)} "
        f"Viele Grüße, {rng.choice(names)}"
        for _ in range(count)
    ]


def long_prompts(count: int, seed: int = 0) -> list[str]:
    pool = tickets(count * 8, seed)
    return [" ".join(pool[i * 8 : (i + 1) * 8]) for i in range(count)]


def tickets(count: int, seed: int) -> list[str]:
    return [row["messages"][1]["content"] for row in generate(count, seed)]


def shifted(kind: str, count: int, seed: int = 0) -> list[str]:
    return {"another domain": cooking_questions, "another language": german_tickets}.get(kind, long_prompts)(
        count, seed
    )


@dataclass
class Calibration:
    windows: int
    window: int
    statuses: dict[str, int]
    flagged_by_test: dict[str, int]
    false_alarm_rate: float
    detection_delay: dict[str, int | None]
    """Shifted requests in the window when it first alerted (None: never, within a whole window)."""
    seconds_per_evaluation: float
    delays_curve: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    """Per shift: (shifted requests, status severity) at each evaluation, for the chart."""


def calibrate(windows: int = 100, window: int = 200, step: int = 5, seed: int = 0) -> Calibration:
    embedder = Embedder()
    prompts, answers = chat_reference(generate(1000, seed=0))
    detector = DriftDetector(build_profile(prompts[:700], answers[:700], embedder, "training-data"))
    held_prompts, held_answers = chat_reference(generate(3000, seed=1))
    answer_lengths = [ids.size for ids in embedder.tokens([answer.text for answer in held_answers])]

    def observations(texts: list[str]) -> list[Observation]:
        features: list[Features] = embedder.features(texts)
        return [
            Observation(0.0, feature, answer_lengths[i % len(answer_lengths)], "stop", False, False, text)
            for i, (feature, text) in enumerate(zip(features, texts, strict=True))
        ]

    pool = observations(held_prompts)
    rng = np.random.default_rng(seed)
    statuses: Counter[str] = Counter()
    flagged: Counter[str] = Counter()
    started = time.perf_counter()
    for _ in range(windows):
        checks, _ = detector.check([pool[i] for i in rng.choice(len(pool), window, replace=False)])
        statuses[worst([check.status for check in checks]).value] += 1
        flagged.update(check.test for check in checks if check.status in (Status.WARN, Status.ALERT))
    per_evaluation = (time.perf_counter() - started) / windows

    delays: dict[str, int | None] = {}
    curves: dict[str, list[tuple[int, int]]] = {}
    for kind in SHIFTS:
        base = [pool[i] for i in rng.choice(len(pool), window, replace=False)]
        incoming = observations(shifted(kind, window, seed))
        delays[kind], curves[kind] = None, []
        for count in range(0, window + 1, step):
            checks, _ = detector.check(base[count:] + incoming[:count])
            status = worst([check.status for check in checks])
            curves[kind].append((count, {"ok": 0, "warn": 1, "alert": 2}.get(status.value, -1)))
            if status == Status.ALERT:
                delays[kind] = count
                break
    ok = statuses.get(Status.OK.value, 0)
    return Calibration(windows, window, dict(statuses), dict(flagged), 1 - ok / windows, delays, per_evaluation, curves)


def plot(result: Calibration, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    labels = ["ok", "warn", "alert"]
    left.bar(labels, [result.statuses.get(label, 0) for label in labels], color=["#2ca02c", "#ff7f0e", "#d62728"])
    left.set_title(f"{result.windows} in-distribution windows of {result.window}")
    left.set_ylabel("windows")
    for kind, curve in result.delays_curve.items():
        right.step([c for c, _ in curve], [s for _, s in curve], where="post", label=kind, marker=".")
    right.set_yticks([0, 1, 2], ["ok", "warn", "alert"])
    right.set_xlabel("shifted requests in the window")
    right.set_title("Detection of shifted traffic")
    right.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=100)
    parser.add_argument("--window", type=int, default=200)
    parser.add_argument("--step", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args()
    result = calibrate(args.windows, args.window, args.step)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "drift_calibration.json").write_text(json.dumps(asdict(result), indent=2))
    chart = plot(result, args.out / "drift_calibration.png")
    print(f"in-distribution windows: {result.windows} of {result.window} requests -> {result.statuses}")
    print(f"false-alarm rate (not ok): {result.false_alarm_rate:.1%}; tests that fired: {result.flagged_by_test}")
    for kind, delay in result.detection_delay.items():
        print(f"{kind}: alert after {delay if delay is not None else 'never'} shifted requests of {result.window}")
    print(f"one evaluation of a {result.window}-request window: {result.seconds_per_evaluation * 1000:.0f} ms")
    print(f"chart: {chart}")


if __name__ == "__main__":
    main()
