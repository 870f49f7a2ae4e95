"""Hierarchical heads: shapes, masking, attribution, losses, overfitting tiny problems, configs."""

from __future__ import annotations

import json

import pytest
import torch

from longdoc.errors import ConfigError
from longdoc.heads import (
    POOLINGS,
    DocumentHead,
    HeadConfig,
    HeadOutput,
    MultiTaskHead,
    masked_softmax,
    predict_probs,
)

D = 16


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a busy 2-core machine the OpenMP threads
    fight other processes (seconds instead of milliseconds); restore the setting for the other test files."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_head(pooling: str, **kw) -> DocumentHead:
    torch.manual_seed(0)
    cfg = HeadConfig(pooling=pooling, hidden_size=D, transformer_heads=2, max_windows=8, **kw)
    return DocumentHead(cfg).eval()


def ragged(B: int = 4, W: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    windows = torch.randn(B, W, D, generator=g)
    lengths = torch.tensor([W, 1, 3, 0][:B] + [2] * max(0, B - 4))
    mask = torch.arange(W)[None, :] < lengths[:, None]  # (B, W)
    return windows, mask


@pytest.mark.parametrize("pooling", POOLINGS)
def test_shapes_and_weights(pooling):
    head = make_head(pooling, num_labels=3)
    windows, mask = ragged()
    out = head(windows, mask)
    assert isinstance(out, HeadOutput)
    assert out.logits.shape == (4, 3)
    assert out.window_weights.shape == (4, 6)
    assert out.loss is None
    w = out.window_weights
    assert torch.isfinite(out.logits).all() and torch.isfinite(w).all()
    assert (w >= 0).all()
    assert torch.all(w[~mask] == 0)
    sums = w.sum(dim=1)
    has = mask.any(dim=1)
    torch.testing.assert_close(sums[has], torch.ones(int(has.sum())))
    assert torch.all(sums[~has] == 0)


@pytest.mark.parametrize("pooling", POOLINGS)
def test_padding_windows_do_not_change_output(pooling):
    head = make_head(pooling, num_labels=3)
    windows, mask = ragged()
    ref = head(windows, mask)
    garbage = torch.randn(4, 5, D) * 100
    garbage[0, 0, 0] = float("nan")
    padded = torch.cat([windows, garbage], dim=1)  # (4, 11, D), more windows than max_windows too
    # Also scramble what already sat in the padding.
    padded[:, :6][~mask] = 55.0
    mask2 = torch.cat([mask, torch.zeros(4, 5, dtype=torch.bool)], dim=1)
    out = head(padded, mask2)
    torch.testing.assert_close(out.logits, ref.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.window_weights[:, :6], ref.window_weights, atol=1e-6, rtol=1e-5)
    assert torch.all(out.window_weights[:, 6:] == 0)
    # Inference mode may take torch's fused transformer fast path: same answer, no NaN for empty documents.
    with torch.inference_mode():
        fast = head(padded, mask2)
    torch.testing.assert_close(fast.logits, ref.logits.detach(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pooling", POOLINGS)
def test_zero_window_documents_no_nan_in_train_mode_with_grad(pooling):
    head = make_head(pooling, num_labels=2, dropout=0.0).train()
    windows = torch.randn(3, 4, D, requires_grad=True)
    mask = torch.zeros(3, 4, dtype=torch.bool)
    mask[1, :2] = True
    out = head(windows, mask, labels=torch.tensor([0, 1, 0]))
    assert torch.isfinite(out.logits).all()
    # An empty document pools to the zero vector: its logits are the classifier bias.
    torch.testing.assert_close(out.logits[0], head.classifier.bias.detach())
    out.loss.backward()
    for p in head.parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all()
    assert torch.isfinite(windows.grad).all()


def test_mean_and_max_attribution():
    windows = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [5.0, 5.0]]])  # (1, 3, 2), last is padding
    mask = torch.tensor([[True, True, False]])
    mean = DocumentHead(HeadConfig(pooling="mean", hidden_size=2, dropout=0.0)).eval()
    torch.testing.assert_close(mean(windows, mask).window_weights, torch.tensor([[0.5, 0.5, 0.0]]))
    mx = DocumentHead(HeadConfig(pooling="max", hidden_size=2, dropout=0.0)).eval()
    torch.testing.assert_close(mx(windows, mask).window_weights, torch.tensor([[0.5, 0.5, 0.0]]))
    windows2 = torch.tensor([[[3.0, 4.0], [0.0, 2.0]]])
    torch.testing.assert_close(
        mx(windows2, torch.ones(1, 2, dtype=torch.bool)).window_weights, torch.tensor([[1.0, 0.0]])
    )
    # max pooled vector, checked through the linear layer
    pooled, _ = mx.pool(windows, mask)
    torch.testing.assert_close(pooled, torch.tensor([[1.0, 2.0]]))


def test_masked_softmax_all_masked_row():
    w = masked_softmax(torch.randn(2, 3), torch.tensor([[True, False, True], [False, False, False]]))
    assert torch.all(w[1] == 0) and w[0, 1] == 0
    torch.testing.assert_close(w[0].sum(), torch.tensor(1.0))


def marker_problem(n: int = 32, W: int = 6, seed: int = 0):
    """Label 1 iff some real window carries a strong marker direction; lengths ragged."""
    g = torch.Generator().manual_seed(seed)
    windows = torch.randn(n, W, D, generator=g) * 0.5
    lengths = torch.randint(1, W + 1, (n,), generator=g)
    mask = torch.arange(W)[None, :] < lengths[:, None]
    labels = torch.arange(n) % 2
    for i in range(n):
        if labels[i] == 1:
            j = int(torch.randint(0, int(lengths[i]), (1,), generator=g))
            windows[i, j, 0] += 4.0
    return windows, mask, labels


def mean_problem(n: int = 32, W: int = 6, seed: int = 0):
    """Label 1 iff the windows are shifted along one direction: separable by the mean."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    windows = torch.randn(n, W, D, generator=g) * 0.5
    windows[:, :, 1] += (labels.float() * 2 - 1)[:, None] * 1.0
    lengths = torch.randint(1, W + 1, (n,), generator=g)
    mask = torch.arange(W)[None, :] < lengths[:, None]
    return windows, mask, labels


def train(head: DocumentHead, windows, mask, labels, steps: int) -> float:
    torch.manual_seed(0)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    head.train()
    for _ in range(steps):
        out = head(windows, mask, labels=labels)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    head.eval()
    with torch.no_grad():
        pred = head(windows, mask).logits.argmax(-1)
    return float((pred == labels).float().mean())


@pytest.mark.parametrize("pooling,steps", [("max", 200), ("attention", 200), ("lead_attention", 200),
                                           ("transformer", 150)])
def test_overfits_marker_problem(pooling, steps):
    head = make_head(pooling, num_labels=2, dropout=0.0)
    windows, mask, labels = marker_problem()
    assert train(head, windows, mask, labels, steps) == 1.0


def test_lead_attention_sees_the_first_window_on_its_own():
    head = make_head("lead_attention", num_labels=3, dropout=0.0).eval()
    windows, mask = ragged()
    out = head(windows, mask)
    pooled, _ = head.pool(windows, mask)
    attended, attention = head.attention(windows, mask)  # identity input scaling: the head's own inputs
    torch.testing.assert_close(pooled, torch.cat([windows[:, 0] * mask[:, :1], attended], dim=-1))
    # attribution: the first window gets the lead half's share of the logits, the rest follows attention
    W = head.classifier.weight
    lead_norm = (windows[:, 0] * mask[:, :1]) @ W[:, :D].T
    rest_norm = attended @ W[:, D:].T
    share = lead_norm.norm(dim=-1) / (lead_norm.norm(dim=-1) + rest_norm.norm(dim=-1)).clamp_min(1e-30)
    expected = (1 - share)[:, None] * attention
    expected[:, 0] += share * mask.any(dim=1)
    torch.testing.assert_close(out.window_weights, expected)
    # a head that reads only the lead half puts all of the attribution on the first window
    with torch.no_grad():
        head.classifier.weight[:, D:] = 0.0
    only_lead = head(windows, mask).window_weights
    has = mask.any(dim=1)
    torch.testing.assert_close(only_lead[has, 0], torch.ones(int(has.sum())))
    # a batch without a single window still pools (to zeros)
    empty = head(torch.zeros(2, 0, D), torch.zeros(2, 0, dtype=torch.bool))
    torch.testing.assert_close(empty.logits, head.classifier.bias.detach().expand(2, 3))


def test_mean_overfits_mean_separable_problem():
    head = make_head("mean", num_labels=2, dropout=0.0)
    windows, mask, labels = mean_problem()
    assert train(head, windows, mask, labels, 150) == 1.0


def test_attention_weights_find_marker_window():
    head = make_head("attention", num_labels=2, dropout=0.0)
    windows, mask, labels = marker_problem()
    train(head, windows, mask, labels, 200)
    with torch.no_grad():
        w = head(windows, mask).window_weights
    marked = windows[..., 0] > 2.5  # (n, W)
    pos = labels == 1
    # In positive docs with more than one window, the marker window gets the largest weight.
    multi = pos & (mask.sum(1) > 1)
    top = w.argmax(dim=1)
    assert marked[multi, top[multi]].float().mean() >= 0.9


def test_loss_only_with_labels_and_kind():
    single = make_head("attention", num_labels=3, dropout=0.0)
    windows, mask = ragged()
    assert single(windows, mask).loss is None
    labels = torch.tensor([0, 2, 1, 0])
    out = single(windows, mask, labels=labels)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, labels))
    cw = torch.tensor([1.0, 2.0, 0.5])
    out = single(windows, mask, labels=labels, class_weights=cw)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, labels, weight=cw))

    multi = make_head("attention", num_labels=3, multi_label=True, dropout=0.0)
    y = torch.tensor([[1, 0, 1], [0, 0, 0], [1, 1, 1], [0, 1, 0]])
    out = multi(windows, mask, labels=y)
    torch.testing.assert_close(
        out.loss, torch.nn.functional.binary_cross_entropy_with_logits(out.logits, y.float())
    )
    pw = torch.tensor([2.0, 1.0, 3.0])
    out = multi(windows, mask, labels=y, class_weights=pw)
    torch.testing.assert_close(
        out.loss, torch.nn.functional.binary_cross_entropy_with_logits(out.logits, y.float(), pos_weight=pw)
    )
    with pytest.raises(ValueError, match="multi-label labels"):
        multi(windows, mask, labels=labels)
    with pytest.raises(ValueError, match="single-label labels"):
        single(windows, mask, labels=y)


def test_input_shape_errors():
    head = make_head("mean")
    with pytest.raises(ValueError, match="windows must have shape"):
        head(torch.randn(2, 3, D + 1), torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask must have shape"):
        head(torch.randn(2, 3, D), torch.ones(2, 4, dtype=torch.bool))


def test_multitask_head():
    torch.manual_seed(0)
    head = MultiTaskHead(
        {
            "topic": HeadConfig(pooling="attention", hidden_size=D, num_labels=3, dropout=0.0),
            "tags": HeadConfig(pooling="max", hidden_size=D, num_labels=4, multi_label=True, dropout=0.0),
        }
    ).eval()
    windows, mask = ragged()
    out = head(windows, mask)
    assert set(out.tasks) == {"topic", "tags"} and out.loss is None
    assert out["topic"].logits.shape == (4, 3) and out["tags"].logits.shape == (4, 4)
    labels = {"topic": torch.tensor([0, 1, 2, 0]), "tags": torch.randint(0, 2, (4, 4)).float()}
    out = head(windows, mask, labels=labels)
    torch.testing.assert_close(out.loss, out["topic"].loss + out["tags"].loss)
    partial = head(windows, mask, labels={"tags": labels["tags"]})
    torch.testing.assert_close(partial.loss, partial["tags"].loss)
    assert partial["topic"].loss is None
    out.loss.backward()
    assert all(p.grad is not None for n, p in head.named_parameters() if "classifier" in n)
    with pytest.raises(ValueError, match="unknown tasks"):
        head(windows, mask, labels={"nope": labels["tags"]})
    assert head.configs["tags"].multi_label
    with pytest.raises(ConfigError, match="hidden_size"):
        MultiTaskHead({"a": HeadConfig(hidden_size=8), "b": HeadConfig(hidden_size=16)})
    with pytest.raises(ConfigError, match="task name"):
        MultiTaskHead({"a.b": HeadConfig(hidden_size=8)})


def test_predict_probs():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    torch.testing.assert_close(predict_probs(logits, False), torch.softmax(logits, -1))
    torch.testing.assert_close(predict_probs(logits, True, temperature=2.0), torch.sigmoid(logits / 2))
    with pytest.raises(ConfigError, match="temperature"):
        predict_probs(logits, False, temperature=0.0)


def test_config_json_round_trip_and_errors():
    cfg = HeadConfig(
        pooling="transformer", hidden_size=32, num_labels=5, multi_label=True, transformer_heads=4
    )
    again = HeadConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert HeadConfig.from_dict({}) == HeadConfig()
    with pytest.raises(ConfigError, match=r"pooling='sum'.*\['mean', 'max', 'attention', 'lead_attention', 'transformer'\]"):
        HeadConfig(pooling="sum")
    with pytest.raises(ConfigError, match="unknown HeadConfig keys \\['poolng'\\]"):
        HeadConfig.from_dict({"poolng": "mean"})
    with pytest.raises(ConfigError, match="num_labels"):
        HeadConfig(num_labels=1)
    HeadConfig(num_labels=1, multi_label=True)
    with pytest.raises(ConfigError, match="dropout"):
        HeadConfig(dropout=1.0)
    with pytest.raises(ConfigError, match="hidden_size"):
        HeadConfig(hidden_size=0)
    with pytest.raises(ConfigError, match="transformer_heads=5 does not divide hidden_size=32"):
        HeadConfig(pooling="transformer", hidden_size=32, transformer_heads=5)
    assert issubclass(ConfigError, ValueError)
