import pytest
import torch

from harness.errors import UnlearnBenchError
from harness.learn import masks


def _scores(seed: int, ties: bool = False, negative: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {"a": torch.rand(37, 11, generator=g), "b": torch.rand(5, generator=g), "c": torch.rand(64, 3, generator=g)}
    if ties:
        out = {k: (v * 4).round() / 4 for k, v in out.items()}
    if negative:
        out = {k: v - 0.5 for k, v in out.items()}
    return out


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("negative", [False, True])
@pytest.mark.parametrize("ratio", [0.01, 0.1, 0.5, 0.8, 0.95, 1.0])
@pytest.mark.parametrize("chunk", [16, 1 << 22])  # chunks that split every tensor, and whole tensors
def test_top_fraction_matches_a_global_sort(ties, negative, ratio, chunk, monkeypatch):
    monkeypatch.setattr(masks, "CHUNK", chunk)
    scores = _scores(1, ties, negative)
    flat = torch.cat([s.flatten() for s in scores.values()])
    k = round(ratio * flat.numel())
    mask = masks.top_fraction(scores, ratio)
    chosen = torch.cat([m.flatten() for m in mask.values()])
    assert int(chosen.sum()) == k  # exact ratio
    kth = torch.sort(flat, descending=True).values[k - 1]
    assert bool((flat[chosen] >= kth).all())  # everything chosen is at least the k-th largest
    assert bool((flat[~chosen] <= kth).all())  # everything left out is at most the k-th largest
    reference = torch.zeros_like(flat, dtype=torch.bool)  # ties broken in parameter order: a stable sort
    reference[torch.argsort(flat, descending=True, stable=True)[:k]] = True
    assert torch.equal(chosen, reference)


def test_kth_largest_key_matches_sort():
    scores = _scores(3)
    flat = torch.cat([s.flatten() for s in scores.values()])
    for k in (1, 7, 100, flat.numel()):
        key, above = masks.kth_largest_key(scores, k)
        value = torch.sort(flat, descending=True).values[k - 1]
        assert key == int(masks._order_keys(value.reshape(1))[0])
        assert above == int((flat > value).sum())


def test_order_keys_preserve_float_order():
    x = torch.tensor([-3.0, -1e-30, -0.0, 0.0, 1e-30, 2.0, float("inf")])
    keys = masks._order_keys(x)
    assert bool((keys[1:] >= keys[:-1]).all())


def test_bad_scores_and_ratios():
    with pytest.raises(UnlearnBenchError, match="NaN or inf"):
        masks.top_fraction({"w": torch.tensor([1.0, float("nan")])}, 0.5)
    for ratio in (0.0, 1.5, -0.1):
        with pytest.raises(UnlearnBenchError, match=r"ratio must be in \(0, 1\]"):
            masks.top_fraction({"w": torch.ones(4)}, ratio)


def test_save_load_round_trip(tmp_path):
    mask = masks.top_fraction(_scores(2), 0.3)
    masks.save(mask, tmp_path, {"method": "x", "ratio": 0.3})
    loaded, meta = masks.load(tmp_path)
    assert set(loaded) == set(mask) and all(torch.equal(loaded[k], mask[k]) for k in mask)
    assert meta["method"] == "x" and meta["digest"] == masks.mask_digest(mask)
    assert meta["density"] == pytest.approx(0.3, abs=1e-3)
