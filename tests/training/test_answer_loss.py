"""The answer-only SFT loss equals the model's own loss (and gradient) while projecting far fewer positions."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM

from tests.helpers import toy_llama
from training.answer_loss import IGNORE, answer_loss


@pytest.fixture
def model() -> LlamaForCausalLM:
    return toy_llama()


def batch() -> dict[str, torch.Tensor]:
    """Two chats of different lengths, right-padded, with labels only on each one's answer."""
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(1, 97, (2, 12), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 9:] = 0
    labels = torch.full_like(input_ids, IGNORE)
    labels[0, 8:12] = input_ids[0, 8:12]
    labels[1, 6:9] = input_ids[1, 6:9]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def test_equals_the_models_own_loss_and_gradient(model: LlamaForCausalLM) -> None:
    inputs = batch()
    expected = model(**inputs).loss
    expected.backward()
    expected_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    loss, metrics = answer_loss(model, inputs, None)
    loss.backward()
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    for found, wanted in zip((p.grad for p in model.parameters()), expected_grads, strict=True):
        torch.testing.assert_close(found, wanted, rtol=1e-4, atol=1e-6)
    assert 0 <= metrics["mean_token_accuracy"] <= 1 and metrics["entropy"] > 0


def test_divides_by_the_items_of_the_whole_accumulated_batch(model: LlamaForCausalLM) -> None:
    inputs = batch()
    per_token, _ = answer_loss(model, inputs, None)
    spread, _ = answer_loss(model, inputs, torch.tensor(14))  # 7 labelled tokens here, 14 over two micro-batches
    assert float(spread) == pytest.approx(float(per_token) / 2, rel=1e-5)


def test_projects_only_positions_that_carry_a_label(model: LlamaForCausalLM) -> None:
    seen: list[torch.Tensor] = []
    model.lm_head.register_forward_hook(lambda _module, args, _out: seen.append(args[0]))
    answer_loss(model, batch(), None)
    assert seen[0].shape[:2] == (2, 6)  # positions 5..10 predict some row's label, of 12


def test_packed_batches_keep_their_position_ids(model: LlamaForCausalLM) -> None:
    """Padding-free packing (TRL's `packing`) sends position_ids instead of an attention mask: they must reach the
    model, or the packed examples would be scored as one long sequence."""
    inputs = batch()
    packed = {
        "input_ids": inputs["input_ids"][:1],
        "labels": inputs["labels"][:1],
        "position_ids": torch.tensor([[0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5]]),
    }
    expected = model(**packed, use_cache=False).loss  # as in training: without a cache, packing is detected
    loss, _ = answer_loss(model, packed, None)
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    unpacked, _ = answer_loss(model, {key: packed[key] for key in ("input_ids", "labels")}, None)
    assert float(unpacked) != pytest.approx(float(expected), rel=1e-5)


def shared_prompt_batch(rows: int = 4, prompt: int = 10) -> dict[str, torch.Tensor]:
    """Chats that open with one system prompt, then differ: right-padded, labels on each one's answer."""
    generator = torch.Generator().manual_seed(2)
    input_ids = torch.randint(1, 97, (rows, 20), generator=generator)
    input_ids[:, :prompt] = input_ids[0, :prompt]
    attention_mask = torch.ones_like(input_ids)
    labels = torch.full_like(input_ids, IGNORE)
    for row in range(rows):
        end = 20 - row
        attention_mask[row, end:] = 0
        labels[row, end - 4 : end] = input_ids[row, end - 4 : end]
    positions = torch.arange(20).expand(rows, 20) * attention_mask
    return {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": positions, "labels": labels}


def loss_and_grads(model: LlamaForCausalLM, inputs: dict[str, torch.Tensor]) -> tuple[float, list[torch.Tensor]]:
    model.zero_grad()
    loss, _ = answer_loss(model, inputs, None)
    loss.backward()
    return float(loss), [p.grad.clone() for p in model.parameters() if p.grad is not None]


def test_a_shared_system_prompt_runs_once_with_the_same_loss_and_gradient(
    model: LlamaForCausalLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training import answer_loss as module

    inputs = shared_prompt_batch()
    assert module.shared_prefix_length({k: v for k, v in inputs.items() if k != "labels"}, 12) == 10
    widths: list[int] = []
    model.model.layers[0].register_forward_hook(lambda _m, args, _out: widths.append(args[0].shape[:2]))
    shared_loss, shared_grads = loss_and_grads(model, inputs)
    assert widths == [(1, 10), (4, 10)]  # the prompt once, then each row's own 10 positions

    monkeypatch.setattr(module, "shared_prefix_length", lambda *_: 0)
    plain_loss, plain_grads = loss_and_grads(model, inputs)
    assert shared_loss == pytest.approx(plain_loss, rel=1e-5)
    expected = model(**inputs).loss
    assert shared_loss == pytest.approx(float(expected), rel=1e-5)
    for found, wanted in zip(shared_grads, plain_grads, strict=True):
        torch.testing.assert_close(found, wanted, rtol=1e-4, atol=1e-6)


def test_prefixes_that_cannot_be_shared_are_not() -> None:
    from training.shared_prefix import MIN_SHARED_TOKENS, shared_prefix_length

    inputs = {k: v for k, v in shared_prompt_batch().items() if k != "labels"}
    assert shared_prefix_length(inputs, first_scored=MIN_SHARED_TOKENS - 1) == 0  # a scored position inside it
    assert shared_prefix_length({"input_ids": inputs["input_ids"][:1]}, 12) == 0  # one row: nothing to share
    assert shared_prefix_length({**inputs, "token_type_ids": inputs["input_ids"]}, 12) == 0  # inputs it cannot split
    restarted = inputs["position_ids"].clone()
    restarted[:, 9:] -= 9  # packed rows: a second example starts inside the prompt
    assert shared_prefix_length({**inputs, "position_ids": restarted}, 12) == 9
    short = inputs["input_ids"][:, :10]
    assert shared_prefix_length({"input_ids": short}, 12) == 9  # every row keeps a token of its own


def test_evaluation_loss_is_the_mean_over_every_supervised_token_of_every_batch(model: LlamaForCausalLM) -> None:
    """`loradock train`'s test-split loss scores through `answer_logits` too: per token over all examples, equal to
    the model's own per-example losses weighted by their supervised tokens, whatever the batching."""
    from training.data.tokenize import Encoded
    from training.evaluate import mean_loss

    inputs = shared_prompt_batch(rows=5)
    examples = [
        Encoded(ids[mask.bool()].tolist(), labels[mask.bool()].tolist())
        for ids, mask, labels in zip(inputs["input_ids"], inputs["attention_mask"], inputs["labels"], strict=True)
    ]
    weighted = [
        (float(model(input_ids=torch.tensor([e.input_ids]), labels=torch.tensor([e.labels])).loss), e.supervised)
        for e in examples
    ]
    expected = sum(loss * tokens for loss, tokens in weighted) / sum(tokens for _, tokens in weighted)
    projected: list[int] = []
    model.lm_head.register_forward_hook(lambda _module, args, _out: projected.append(args[0].shape[1]))
    for batch_size in (1, 3, 8):
        # float32 through another path (prefix once, padded rows, answer positions only): 1.7e-5 apart on AVX-512
        assert mean_loss(model, examples, batch_size=batch_size) == pytest.approx(expected, rel=1e-4)
    assert max(projected) <= 8  # the answers' positions (4 per row, shifted by row), not all 20
