import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from roadwork.config import HeadConfig, LossConfig
from roadwork.data.records import Sample
from roadwork.features.metadata import NULL_INDEX, TEXT_DIM, MetadataBatch, MetadataVocab
from roadwork.losses import RoadworkLoss
from roadwork.model.attention import GatedAttentionStack, attention_mask
from roadwork.model.gafm import GatedAttentionFusion, MeanFusion
from roadwork.model.head import HeadEnsemble, MultiViewHead, ProbeHead, build_head
from roadwork.model.metadata import MetadataEncoder
from roadwork.model.pruning import ViewPruner
from roadwork.model.pyramid import InputProjection, MultiScalePyramid

D = 48  # feature_dim of the fake backbone
SMALL = dict(type="multiview", d_model=32, heads=4, attention_layers=2, gps_dim=16, category_dim=8, prune_k=4)


def _samples() -> list[Sample]:
    return [
        Sample("a.jpg", 1, 40.4, -79.9, "rain", "day", "urban", "cones on the left lane"),
        Sample("b.jpg", 0),
        Sample("c.jpg", 1, weather="fog", scene="highway"),
        Sample("d.jpg", 0, -33.9, 151.2, "clear", "night", None, "empty street"),
    ]


@pytest.fixture
def vocab() -> MetadataVocab:
    return MetadataVocab.from_samples(_samples())


def _meta(samples: list[Sample], vocab: MetadataVocab) -> MetadataBatch:
    texts = {s.description: torch.randn(TEXT_DIM) for s in samples if s.description}
    return MetadataBatch.from_samples(samples, vocab, texts)


def _batch(n_views: int = 6, valid=(6, 3, 1, 5)) -> tuple[torch.Tensor, torch.Tensor]:
    features = torch.randn(len(valid), n_views, D)
    mask = torch.arange(n_views) < torch.tensor(valid).unsqueeze(1)
    return features, mask


def _pad(features: torch.Tensor, mask: torch.Tensor, extra: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Append ``extra`` invalid views full of huge garbage, and garble the already padded ones."""
    garbage = torch.full((features.shape[0], extra, features.shape[2]), 1e30)
    features = torch.where(mask.unsqueeze(-1), features, torch.full_like(features, -1e30))
    return torch.cat([features, garbage], 1), torch.cat([mask, torch.zeros(mask.shape[0], extra, dtype=torch.bool)], 1)


def test_head_config_validates_ranges_and_names_the_field():
    assert HeadConfig().d_model == 512
    with pytest.raises(ValidationError, match="d_model"):
        HeadConfig(d_model=100, heads=8)
    with pytest.raises(ValidationError, match="gps_dim"):
        HeadConfig(gps_dim=130)
    with pytest.raises(ValidationError):
        HeadConfig(dropout=1.0)
    with pytest.raises(ValidationError):
        HeadConfig(prune_k=0)
    with pytest.raises(ValidationError):
        HeadConfig(d_modle=256)  # typo must not pass silently


def test_vocab_maps_null_and_unseen_to_null_index_and_round_trips(vocab):
    assert vocab.values["weather"] == ["clear", "fog", "rain"]
    assert vocab.sizes == {"weather": 4, "daytime": 3, "scene": 3}
    assert vocab.index("weather", "clear") != NULL_INDEX
    assert vocab.index("weather", "Rain ") == vocab.index("weather", "rain")
    for value in (None, "", "null", "NaN", "snow"):
        assert vocab.index("weather", value) == NULL_INDEX
    assert MetadataVocab.from_dict(vocab.to_dict()) == vocab
    with pytest.raises(ValueError, match="null_index"):
        MetadataVocab.from_dict({**vocab.to_dict(), "null_index": 7})


def test_metadata_batch_from_samples_and_row_indexing(vocab):
    samples = _samples()
    texts = {"cones on the left lane": torch.ones(TEXT_DIM), "empty street": torch.full((TEXT_DIM,), 2.0)}
    meta = MetadataBatch.from_samples(samples, vocab, texts)
    assert meta.gps_present.tolist() == [True, False, False, True]
    assert meta.gps[0].tolist() == pytest.approx([40.4, -79.9]) and meta.gps[1].tolist() == [0.0, 0.0]
    assert meta.weather.tolist() == [vocab.index("weather", w) for w in ("rain", None, "fog", "clear")]
    assert meta.scene[3].item() == NULL_INDEX
    assert meta.text_present.tolist() == [True, False, False, True] and meta.text[3, 0].item() == 2.0
    picked = meta[torch.tensor([3, 0])]
    assert len(picked) == 2 and picked.weather.tolist() == [meta.weather[3].item(), meta.weather[0].item()]
    joined = MetadataBatch.cat([meta[:2], meta[2:]])
    assert torch.equal(joined.text, meta.text) and torch.equal(joined.scene, meta.scene)
    assert MetadataBatch.from_samples(samples, vocab, None).text_present.sum() == 0
    with pytest.raises(KeyError, match="empty street"):
        MetadataBatch.from_samples(samples, vocab, {"cones on the left lane": torch.ones(TEXT_DIM)})


@pytest.mark.parametrize("kind", ["all-null", "all-present", "mixed"])
def test_metadata_encoder_is_finite_and_trains_null_embeddings(vocab, kind):
    full = Sample("x", 1, 52.5, 13.4, "rain", "day", "urban", "cones on the left lane")
    empty = Sample("y", 0)
    samples = {"all-null": [empty] * 3, "all-present": [full] * 3, "mixed": [full, empty, _samples()[2]]}[kind]
    encoder = MetadataEncoder(vocab, gps_dim=128, category_dim=64, text=True)
    out = encoder(_meta(samples, vocab))
    assert encoder.out_dim == 128 + 3 * 64 + 384 + 5 and out.shape == (3, encoder.out_dim)
    assert torch.isfinite(out).all()
    out.square().sum().backward()
    null_grads = [encoder.gps.null.grad, encoder.text_null.grad]
    null_grads += [e.weight.grad[NULL_INDEX] for e in encoder.categories.values()]
    if kind == "all-present":  # the NULL representations are used only for NULL values
        assert all(g is None or not g.any() for g in null_grads)
    else:
        assert all(g is not None and g.abs().sum() > 0 for g in null_grads)


def test_gps_encoding_separates_places_and_missing_from_zero(vocab):
    encoder = MetadataEncoder(vocab, gps_dim=128, category_dim=8, text=False).gps
    gps = torch.tensor([[40.44, -79.99], [40.45, -79.99], [0.0, 180.0], [0.0, -180.0], [0.0, 0.0], [0.0, 0.0]])
    present = torch.tensor([True, True, True, True, True, False])
    out = encoder(gps, present)
    assert (out[0] - out[1]).abs().max() > 0.1  # ~1 km apart is resolved
    assert torch.allclose(out[2], out[3], atol=1e-5)  # longitude wraps at the date line
    assert not torch.allclose(out[4], out[5])  # missing GPS is not (0, 0)


def test_attention_mask_hides_padding_and_never_leaves_a_query_without_keys():
    view_mask = torch.tensor([[True, True, False], [True, False, False]])
    mask = attention_mask(view_mask)[:, 0]
    assert not mask[:, :, 2].any() and not mask[1, :, 1].any()
    cross = attention_mask(view_mask, exclude_self=True)[:, 0]
    assert cross[0].tolist() == [[False, True, False], [True, False, False], [True, True, False]]
    assert cross[1, 0].tolist() == [True, False, False]  # single valid view falls back to itself
    assert cross.any(dim=-1).all()


def test_gated_attention_stack_ignores_padded_views_and_exposes_peft_names():
    stack = GatedAttentionStack(32, heads=4, layers=2, dropout=0.1).eval()
    names = {name.rsplit(".", 1)[-1] for name, module in stack.named_modules() if isinstance(module, nn.Linear)}
    assert {"qkv_proj", "out_proj"} <= names
    x = torch.randn(2, 5, 32)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    out = stack(x, mask)
    garbled = torch.where(mask.unsqueeze(-1), x, torch.full_like(x, 1e4))
    assert torch.allclose(stack(garbled, mask)[mask], out[mask], atol=1e-5)
    perturbed = x.clone()
    perturbed[0, 1] += 3.0  # a real view's output does depend on the other real views
    assert not torch.allclose(stack(perturbed, mask)[0, 0], out[0, 0])


def test_fusion_pools_only_valid_views_and_handles_a_single_view():
    x = torch.randn(3, 4, 32)
    mask = torch.tensor([[True] * 4, [True, True, False, False], [True, False, False, False]])
    garbled = torch.where(mask.unsqueeze(-1), x, torch.full_like(x, 1e4))
    gafm = GatedAttentionFusion(32, heads=4, dropout=0.1).eval()
    pooled = gafm(x, mask)
    assert pooled.shape == (3, 32) and torch.isfinite(pooled).all()
    assert torch.allclose(gafm(garbled, mask), pooled, atol=1e-5)
    mean = MeanFusion()(garbled, mask)
    assert torch.allclose(mean[1], x[1, :2].mean(0)) and torch.allclose(mean[2], x[2, 0])
    x.requires_grad_(True)
    gafm.train()(x, mask)[2].sum().backward()
    assert torch.isfinite(x.grad).all()


def test_projection_and_pyramid_shapes():
    x = InputProjection(D, 32)(torch.randn(2, 5, D) * 1000)
    assert x.shape == (2, 5, 32) and x.abs().max() < 50  # scale-normalised input
    y = MultiScalePyramid(32, dropout=0.0)(x)
    assert y.shape == (2, 5, 32)
    assert torch.allclose(y.mean(-1), torch.zeros(2, 5), atol=1e-5)  # ends in a LayerNorm


def test_pruner_keeps_k_valid_views_unchanged_and_always_the_global_view():
    pruner = ViewPruner(D, keep=4)
    pruner.scorer = nn.Linear(D, 1)  # score = mean feature, so padded garbage would win unmasked
    nn.init.constant_(pruner.scorer.weight, 1.0 / D)
    nn.init.zeros_(pruner.scorer.bias)
    features, mask = _batch(n_views=8, valid=(8, 3))
    features[0, 0] -= 10.0  # the global view scores lowest
    features[1, 3:] = 1e6
    kept, kept_mask, weights, scores = pruner(features, mask)
    assert kept.shape == (2, 4, D) and kept_mask.shape == (2, 4) and scores.shape == (2, 8)
    assert kept_mask[0].all() and kept_mask[1].sum() == 3
    assert torch.equal(kept[1, :3], features[1, :3])  # kept features are passed on unchanged
    assert torch.allclose(weights[1, :3], torch.sigmoid(scores[1, :3]))  # their pooling weights
    assert torch.isinf(scores[1, 3:]).all() and (scores[1, 3:] < 0).all()
    assert torch.equal(kept[0, 0], features[0, 0])  # global view kept whatever its score
    others = scores[0, 1:].topk(3).indices.sort().values + 1
    assert torch.equal(kept[0, 1:], features[0, others])


def test_pruning_scorer_learns_from_the_classification_loss(vocab):
    torch.manual_seed(0)
    head = build_head(HeadConfig(**SMALL), D, vocab)
    features, mask = _batch(n_views=10, valid=(10, 7, 2, 10))
    meta = _meta(_samples(), vocab)
    out = head(features, mask, meta)
    assert out.view_logits.shape == (4, 4, 2) and out.view_scores.shape == (4, 10)
    classification_only = RoadworkLoss(LossConfig(consistency_weight=0.0, weather_weight=0.0))
    classification_only(out, torch.tensor([1, 0, 1, 0]), meta.weather)["loss"].backward()
    # Gating raw features before the projection's LayerNorm gave gradients of about 1e-9.
    assert all(p.grad is not None and p.grad.abs().max() > 1e-6 for p in head.pruner.scorer.parameters())


def test_pruning_learns_to_keep_the_informative_view_among_distractors():
    """Only one view per photo (at a random position, marked by feature 0) carries the label; the
    others carry a misleading copy of the signal. With k=2 (global + one), the scorer must learn
    to keep the informative view, from the classification loss alone."""
    torch.manual_seed(0)
    n, views = 512, 6
    labels = torch.randint(0, 2, (n,))
    features = torch.randn(n, views, D)
    informative = torch.randint(1, views, (n,))
    features[:, :, 1] = 3.0 * (torch.randint(0, 2, (n, views)) * 2 - 1)          # distractors: random sign
    rows = torch.arange(n)
    features[rows, informative, 1] = 3.0 * (labels * 2 - 1).float()              # the truth
    features[rows, informative, 0] += 4.0                                          # what the scorer can see
    mask = torch.ones(n, views, dtype=torch.bool)
    vocab = MetadataVocab.from_samples([])
    head = build_head(HeadConfig(type="multiview", d_model=32, heads=4, attention_layers=0, pyramid=False,
                                 fusion="mean", metadata=False, prune_k=2), D, vocab)

    def kept_informative() -> float:
        with torch.no_grad():
            _, _, _, scores = head.pruner(features, mask)
            scores[:, 0] = float("-inf")
            return float((scores.argmax(dim=1) == informative).float().mean())

    before = kept_informative()
    loss = RoadworkLoss(LossConfig(consistency_weight=0.0, weather_weight=0.0, focal_gamma=0.0))
    optimizer = torch.optim.Adam(head.parameters(), lr=3e-3)
    for _ in range(300):
        batch = torch.randint(0, n, (64,))
        optimizer.zero_grad()
        loss(head(features[batch], mask[batch]), labels[batch], torch.zeros(64, dtype=torch.long))["loss"].backward()
        optimizer.step()
    assert before < 0.5 and kept_informative() > 0.9


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"fusion": "mean", "pyramid": False, "prune_k": None},
        {"attention_layers": 0, "text": False},
        {"metadata": False},
    ],
)
def test_head_outputs_ignore_padded_views(vocab, overrides):
    torch.manual_seed(0)
    head = build_head(HeadConfig(**{**SMALL, **overrides}), D, vocab).eval()
    features, mask = _batch(n_views=6, valid=(6, 3, 1, 5))
    meta = _meta(_samples(), vocab)
    with torch.no_grad():
        out = head(features, mask, meta)
        padded = head(*_pad(features, mask, extra=4), meta)
    assert torch.isfinite(padded.logits).all()
    assert torch.allclose(padded.logits, out.logits, atol=1e-5)
    assert torch.allclose(padded.view_logits[padded.view_mask], out.view_logits[out.view_mask], atol=1e-5)
    if out.weather_logits is not None:
        assert torch.allclose(padded.weather_logits, out.weather_logits, atol=1e-5)


def test_head_shapes_and_which_inputs_matter(vocab):
    torch.manual_seed(0)
    features, mask = _batch(n_views=6)
    samples = _samples()
    meta = _meta(samples, vocab)
    head = build_head(HeadConfig(**SMALL), D, vocab).eval()
    out = head(features, mask, meta)
    assert out.logits.shape == (4, 2) and out.weather_logits.shape == (4, len(vocab.values["weather"]))
    other_meta = _meta(samples[::-1], vocab)
    assert not torch.allclose(head(features, mask, other_meta).logits, out.logits)  # metadata is used
    assert out.pooled.shape == (4, 32) and torch.equal(head.classifier(out.pooled), out.logits)
    with pytest.raises(ValueError, match="MetadataBatch"):
        head(features, mask, None)
    with pytest.raises(ValueError, match="features"):
        head(features[..., :-1], mask, meta)

    no_text = build_head(HeadConfig(**SMALL, text=False), D, vocab).eval()
    shuffled_text = MetadataBatch(**{**vars(meta), "text": torch.randn(4, TEXT_DIM)})
    assert torch.equal(no_text(features, mask, meta).logits, no_text(features, mask, shuffled_text).logits)

    probe = build_head(HeadConfig(type="probe"), D, vocab)
    assert isinstance(probe, ProbeHead) and sum(p.numel() for p in probe.parameters()) == 2 * D + 1
    nn.init.normal_(probe.classifier.weight)
    base = probe(features, mask, meta)
    assert base.logits.shape == (4, 2) and base.view_logits is None and base.weather_logits is None
    assert torch.equal(base.logits[:, 0], torch.zeros(4)) and torch.equal(base.margin, base.logits[:, 1])
    assert torch.equal(probe.classifier(base.pooled).squeeze(-1), base.margin)
    lowered = features.clone()
    lowered[:, 1:] = torch.minimum(lowered[:, 1:], lowered[:, :1]) - 1.0   # no longer the max anywhere
    raised = features.clone()
    raised[:, 1] += 5.0
    assert torch.equal(probe(lowered, mask, meta).logits, probe(features[:, :1], mask[:, :1], meta).logits)
    assert not torch.allclose(probe(raised, mask, meta).logits, base.logits)  # the max over views counts
    with pytest.raises(ValueError, match="choice between heads"):
        build_head(HeadConfig(type="auto"), D, vocab)


def test_ensemble_serves_the_mean_margin(vocab):
    torch.manual_seed(0)
    features, mask = _batch(n_views=6)
    meta = _meta(_samples(), vocab)
    members = [build_head(HeadConfig(**SMALL), D, vocab).eval() for _ in range(3)]
    ensemble = HeadEnsemble(members).eval()
    with torch.no_grad():
        expected = torch.stack([m(features, mask, meta).margin for m in members]).mean(0)
        assert torch.allclose(ensemble(features, mask, meta).margin, expected, atol=1e-6)
        assert ensemble(features, mask, meta).pooled.shape == (4, 3 * 32)
        assert torch.equal(
            HeadEnsemble(members[:1])(features, mask, meta).logits, members[0](features, mask, meta).logits
        )


def test_weather_head_needs_two_weather_values():
    one = MetadataVocab({"weather": ["rain"], "daytime": [], "scene": []})
    assert MultiViewHead(HeadConfig(**SMALL), D, one).weather_head is None
    two = MetadataVocab({"weather": ["fog", "rain"], "daytime": [], "scene": []})
    assert MultiViewHead(HeadConfig(**SMALL), D, two).weather_head is not None


@pytest.fixture
def one_thread():
    # Tiny tensors: with two busy cores, OpenMP threads spin against each other (10x slower).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_full_head_overfits_sixteen_samples(vocab, one_thread):
    torch.manual_seed(0)
    features = torch.randn(16, 6, D)
    mask = torch.arange(6) < torch.randint(1, 7, (16, 1))
    labels = torch.arange(16) % 2
    samples = (_samples() * 4)[:16]
    meta = _meta(samples, vocab)
    head = build_head(HeadConfig(**SMALL, dropout=0.0), D, vocab)
    loss_fn = RoadworkLoss(LossConfig(label_smoothing=0.0))
    optimizer = torch.optim.AdamW(head.parameters(), lr=2e-3)
    for _ in range(80):
        optimizer.zero_grad()
        parts = loss_fn(head(features, mask, meta), labels, meta.weather)
        parts["loss"].backward()
        optimizer.step()
    assert parts["focal"].item() < 0.01
    assert torch.equal(head.eval()(features, mask, meta).logits.argmax(-1), labels)


def test_text_encoder_embeds_distinct_strings_once():
    from roadwork.model.text import TextEncoder

    encoder = TextEncoder()
    cones = "orange cones close the right lane"
    first = encoder.embed([cones, "a quiet beach at sunset", cones])
    assert len(first) == 2
    a, b = first.values()
    assert a.shape == b.shape == (TextEncoder.dim,) and not a.is_inference()
    assert math.isclose(a.norm().item(), 1.0, abs_tol=1e-3) and math.isclose(b.norm().item(), 1.0, abs_tol=1e-3)
    assert (a @ b).item() < 0.9
    assert encoder.embed([cones])[cones] is a


def test_view_logits_use_the_main_classifier_so_agreement_is_not_trivial():
    """With one view and mean fusion the pooled vector is that view's token: both logits must match."""
    from roadwork.data.records import Sample
    from roadwork.features.metadata import MetadataBatch, MetadataVocab
    from roadwork.model.head import build_head

    vocab = MetadataVocab({"weather": ["fog", "rain"], "daytime": [], "scene": []})
    head = build_head(
        HeadConfig(type="multiview", d_model=16, heads=2, attention_layers=1, fusion="mean", prune_k=None), 8, vocab
    ).eval()
    samples = [
        Sample(file_name="a", label=1, weather="rain", latitude=1.0, longitude=2.0),
        Sample(file_name="b", label=0),
    ]
    out = head(
        torch.randn(2, 1, 8), torch.ones(2, 1, dtype=torch.bool), MetadataBatch.from_samples(samples, vocab, None)
    )
    assert torch.allclose(out.view_logits[:, 0], out.logits, atol=1e-6)
    assert not any("view_classifier" in name for name, _ in head.named_parameters())


def test_hidden_rows_look_exactly_like_rows_without_metadata():
    from roadwork.data.records import Sample
    from roadwork.features.metadata import MetadataBatch, MetadataVocab

    vocab = MetadataVocab({"weather": ["rain"], "daytime": ["night"], "scene": ["urban"]})
    full = Sample(file_name="a", label=1, latitude=10.0, longitude=20.0, weather="rain", daytime="night",
                  scene="urban", description="cones")
    bare = Sample(file_name="b", label=1)
    text = {"cones": torch.ones(384)}
    batch = MetadataBatch.from_samples([full, full], vocab, text)
    hidden = batch.hidden(torch.tensor([False, True]))
    expected = MetadataBatch.from_samples([full, bare], vocab, text)
    for name in ("gps", "gps_present", "weather", "daytime", "scene", "text", "text_present"):
        assert torch.equal(getattr(hidden, name), getattr(expected, name)), name


def test_metadata_dropout_hides_inputs_and_keeps_the_weather_target(monkeypatch):
    from roadwork.config import OptimConfig
    from roadwork.data.records import Sample
    from roadwork.features.metadata import MetadataBatch, MetadataVocab
    from roadwork.features.table import Batch
    from roadwork.losses import RoadworkLoss
    from roadwork.train.module import RoadworkModule

    vocab = MetadataVocab({"weather": ["fog", "rain"], "daytime": [], "scene": []})
    samples = [Sample(file_name=str(i), label=i % 2, weather="rain", latitude=1.0, longitude=1.0) for i in range(64)]
    meta = MetadataBatch.from_samples(samples, vocab, None)
    batch = Batch(
        torch.randn(64, 2, 8),
        torch.ones(64, 2, dtype=torch.bool),
        meta,
        torch.tensor([s.label for s in samples]),
        meta.weather,
        torch.zeros(64, 0),
    )
    seen = []
    module = RoadworkModule(torch.nn.Identity(), RoadworkLoss(), OptimConfig(), metadata_dropout=0.5)
    monkeypatch.setattr(module, "_step", lambda b, stage: seen.append(b) or (None, torch.zeros(())))
    module.training_step(batch, 0)
    hidden_rows = ~seen[0].meta.gps_present
    assert 10 < int(hidden_rows.sum()) < 54  # about half of 64
    assert torch.equal(seen[0].weather, batch.weather)  # targets untouched
    assert torch.all(seen[0].meta.weather[hidden_rows] == 0)
    assert RoadworkModule(torch.nn.Identity(), RoadworkLoss(), OptimConfig()).metadata_dropout == 0.0


def test_presence_flags_mean_presence(vocab):
    samples = [Sample("a", 1, 40.0, 2.0, "rain", None, "urban", "cones"), Sample("b", 0),
               Sample("c", 1, None, None, "unseen-weather", "day", None, None)]
    encoder = MetadataEncoder(vocab, gps_dim=16, category_dim=4, text=True)
    flags = encoder(_meta(samples, vocab))[:, -5:]  # gps, weather, daytime, scene, text
    # An unseen category value is NULL for the model, so it is not "present" either.
    assert flags.tolist() == [[1, 1, 0, 1, 1], [0, 0, 0, 0, 0], [0, 0, 1, 0, 0]]


def test_image_only_table_is_the_table_of_photos_without_metadata(vocab):
    from roadwork.features.table import FeatureTable

    samples = _samples()
    bare = [Sample(s.file_name, s.label) for s in samples]
    texts = {s.description: torch.randn(TEXT_DIM) for s in samples if s.description}
    features = [torch.randn(3, D) for _ in samples]
    hidden = FeatureTable.build(samples, features, vocab, texts).image_only()
    expected = FeatureTable.build(bare, features, vocab, texts)
    for name in ("gps", "gps_present", "weather", "daytime", "scene", "text", "text_present"):
        assert torch.equal(getattr(hidden.meta, name), getattr(expected.meta, name)), name
    head = build_head(HeadConfig(**SMALL), D, vocab).eval()
    with torch.no_grad():
        a = head(hidden.features, hidden.view_mask, hidden.meta).logits
        b = head(expected.features, expected.view_mask, expected.meta).logits
    assert torch.equal(a, b)


def test_evidence_encoder_masks_null_fields_with_a_learned_value_and_flags():
    from roadwork.model.evidence import EvidenceEncoder

    encoder = EvidenceEncoder(2)
    with torch.no_grad():
        encoder.null.copy_(torch.tensor([7.0, -7.0]))
    out = encoder(torch.tensor([[0.25, float("nan")], [float("nan"), float("nan")]]))
    assert torch.equal(out, torch.tensor([[0.25, -7.0, 1.0, 0.0], [7.0, -7.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match=r"\[B,2\]"):
        encoder(torch.zeros(2, 3))


@pytest.mark.parametrize("kind", ["multiview", "probe"])
def test_heads_read_evidence_and_a_null_field_is_not_a_zero(vocab, kind):
    features, mask = _batch()
    config = HeadConfig(**{**SMALL, "type": kind, "metadata": False})
    head = build_head(config, D, vocab, evidence_fields=2).eval()
    if kind == "probe":
        with torch.no_grad():
            head.classifier.weight.normal_()
    meta = _meta(_samples(), vocab)
    with torch.no_grad():
        low = head(features, mask, meta, torch.zeros(4, 2)).margin
        high = head(features, mask, meta, torch.full((4, 2), 3.0)).margin
        null = head(features, mask, meta, torch.full((4, 2), float("nan"))).margin
    assert not torch.allclose(low, high)
    assert torch.isfinite(null).all() and not torch.allclose(null, low)   # the present flag tells NULL from 0
    with pytest.raises(ValueError, match="2 evidence fields"):
        head(features, mask, meta)


def test_image_only_serving_hides_metadata_but_keeps_the_image_evidence(vocab):
    from roadwork.features.table import FeatureTable, evidence_rows

    samples = _samples()
    evidence = evidence_rows([torch.tensor([0.9, 0.2]), None, torch.tensor([0.1, 0.0]), None], 4, 2)
    assert torch.isnan(evidence[1]).all() and torch.equal(evidence[0], torch.tensor([0.9, 0.2]))
    table = FeatureTable.build(samples, [torch.randn(3, D) for _ in samples], vocab, None, evidence=evidence)
    served = table.image_only()
    assert not served.meta.gps_present.any()
    assert torch.equal(served.evidence.nan_to_num(-1), evidence.nan_to_num(-1))
    batch = served.__getitems__([2, 0])
    assert torch.equal(batch.evidence, evidence[[2, 0]])
    with pytest.raises(ValueError, match="evidence has 3 rows"):
        FeatureTable.build(samples, [torch.randn(3, D) for _ in samples], vocab, None, evidence=evidence[:3])


def test_the_probe_learns_from_evidence_when_the_features_say_nothing(vocab):
    from roadwork.data.records import Sample
    from roadwork.features.table import FeatureTable, evidence_rows
    from roadwork.train.probe import fit_probe

    generator = torch.Generator().manual_seed(0)
    samples = [Sample(f"{i}.jpg", i % 2) for i in range(80)]
    labels = torch.tensor([s.label for s in samples], dtype=torch.float32)
    area = labels * 0.5 + 0.1 * torch.rand(80, generator=generator)   # the expert sees the roadwork
    evidence = evidence_rows([torch.tensor([a, float("nan")]) for a in area.tolist()], 80, 2)
    features = [torch.randn(2, D, generator=generator) for _ in samples]   # the backbone does not
    table = FeatureTable.build(samples, features, vocab, None, evidence=evidence)
    probe = fit_probe(table, np.arange(80) // 2, seed=0)
    margins = probe(table.features, table.view_mask, None, table.evidence).margin
    assert ((margins > 0).float() == labels).float().mean() > 0.95
