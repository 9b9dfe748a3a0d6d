"""Task metrics comparing generated answers with references.

Exact match always; per-field accuracy when answers are JSON objects (the demo task's format); accuracy,
macro-F1 and a confusion matrix when examples carry labels; ROUGE-L (Google's `rouge-score`) and BLEU
(`sacrebleu`) for free text.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any


def task_metrics(predictions: list[str], references: list[str], labels: list[str] | None = None) -> dict[str, Any]:
    """Every metric that applies to these answers; `main` names the one reports lead with."""
    if len(predictions) != len(references):
        raise ValueError("predictions and references differ in length")
    if not references:
        return {"count": 0}
    cleaned = [prediction.strip() for prediction in predictions]
    result: dict[str, Any] = {
        "count": len(references),
        "exact_match": sum(p == r.strip() for p, r in zip(cleaned, references, strict=True)) / len(references),
    }
    result["main"] = "exact_match"
    fields = json_field_accuracy(cleaned, references)
    if fields is not None:
        result["json_fields"] = fields
        result["json_all_fields"] = fields.pop("_all")
        result["main"] = "json_all_fields"
    if labels is not None:
        result |= classification_metrics(cleaned, labels)
        result["main"] = "accuracy"
    elif fields is None:
        result |= text_similarity(cleaned, references)
        result["main"] = "rouge_l"
    return result


def json_field_accuracy(predictions: list[str], references: list[str]) -> dict[str, float] | None:
    """Accuracy of each field of JSON-object answers (an unparsable prediction gets every field wrong)."""
    parsed_refs = [_json_object(reference) for reference in references]
    if any(ref is None for ref in parsed_refs):
        return None
    keys = sorted({key for ref in parsed_refs if ref is not None for key in ref})
    correct: Counter[str] = Counter()
    for prediction, reference in zip(predictions, parsed_refs, strict=True):
        guess = _json_object(prediction) or {}
        assert reference is not None
        hits = [guess.get(key) == reference.get(key) for key in keys]
        correct.update(key for key, hit in zip(keys, hits, strict=True) if hit)
        correct["_all"] += all(hits)
    return {key: correct[key] / len(references) for key in [*keys, "_all"]}


def classification_metrics(predictions: list[str], labels: list[str]) -> dict[str, Any]:
    """Accuracy, macro-F1 over the reference classes, and the confusion matrix (rows: truth, columns: guess)."""
    classes = sorted(set(labels))
    accuracy = sum(p == label for p, label in zip(predictions, labels, strict=True)) / len(labels)
    f1s = []
    for cls in classes:
        tp = sum(p == cls and label == cls for p, label in zip(predictions, labels, strict=True))
        fp = sum(p == cls and label != cls for p, label in zip(predictions, labels, strict=True))
        fn = sum(p != cls and label == cls for p, label in zip(predictions, labels, strict=True))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1s.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    columns = [*classes, "(other)"]
    matrix = [[0] * len(columns) for _ in classes]
    for prediction, label in zip(predictions, labels, strict=True):
        column = columns.index(prediction) if prediction in classes else len(classes)
        matrix[classes.index(label)][column] += 1
    return {"accuracy": accuracy, "macro_f1": sum(f1s) / len(f1s), "confusion": {"labels": columns, "matrix": matrix}}


def text_similarity(predictions: list[str], references: list[str]) -> dict[str, float]:
    from rouge_score import rouge_scorer
    from sacrebleu.metrics import BLEU

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rouge = [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references, strict=True)]
    bleu = BLEU(effective_order=True).corpus_score(predictions, [references]).score / 100
    return {"rouge_l": sum(rouge) / len(rouge), "bleu": bleu}


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return None
    return value if isinstance(value, dict) else None
