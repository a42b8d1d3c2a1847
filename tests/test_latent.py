"""gclib.latent: the class-carrying subspace, counterfactuals, per-dim evidence, prototypes, and their checks."""

import math

import pytest
import torch

import gclib
from gclib import latent
from gclib.errors import InputError
from gclib.modules import DCTPooling

from .conftest import randomize


@pytest.fixture(scope="module")
def seeded():
    """A small seeded GC whose blocks and low-rank means are moved off their (identity, zero) init."""
    torch.manual_seed(0)
    return randomize(gclib.GenerativeClassifier.from_config("fashion-mnist-small", seed=0), scale=0.05).eval()


@pytest.fixture(scope="module")
def shipped():
    return gclib.pretrained("fashion-mnist", beta="8", device="cpu")


@pytest.fixture(scope="module")
def images(fashion):
    x, y = fashion[2].subset(40, 0).tensors()
    return x, y


def test_class_subspace_spans_the_mean_differences(seeded):
    space = latent.class_subspace(seeded)
    c = seeded.num_classes
    assert space.n_dims == c - 1 and space.basis.shape == (c - 1, seeded.n_dims)
    torch.testing.assert_close(space.basis @ space.basis.T, torch.eye(c - 1, dtype=torch.float64))
    torch.testing.assert_close(space.center + space.means @ space.basis, space.full_means)
    # the low-rank part of the means is used: the subspace reaches beyond the n_fc_dims DC terms
    assert float(space.basis[:, seeded.head.n_fc_dims:].abs().max()) > 1e-3


def test_counterfactual_at_step_zero_decodes_to_the_input(shipped, images):
    x, _ = images
    z = latent.latents(shipped, x[:5])
    cf = latent.counterfactuals(shipped, z, steps=[0.0, 1.0], batch_size=4)  # batching must not matter
    assert cf["images"].shape == (5, 2, 1, 28, 28)
    assert float((cf["images"][:, 0] - x[:5]).abs().max()) <= 1e-4
    assert torch.equal(cf["prediction"][:, 0], shipped.predict(x[:5]))
    assert (cf["t_cf"] >= cf["t_flip"]).all() and (cf["t_cf"] <= 1).all()


def test_at_the_target_mean_the_target_wins(seeded, shipped, images):
    x, _ = images
    for model in (seeded, shipped):
        space = latent.class_subspace(model)
        z = latent.latents(model, x)
        target = torch.arange(len(x)) % model.num_classes  # every class, not just the runner-up
        z1 = latent.move(space, z, target, 1.0)
        assert torch.equal(latent.class_scores(space, z1).argmax(1), target)
        # only the class-carrying part moved: the rest of z is untouched
        torch.testing.assert_close(space.residual(z1), space.residual(z))
        torch.testing.assert_close(space.coords(z1), space.means[target])
    # decoded and encoded again by the (seeded) model itself, the image is classified as the target
    space = latent.class_subspace(seeded)
    z = latent.latents(seeded, x)
    target = latent.top_two(latent.class_scores(space, z))[1]
    x1 = latent.decode(seeded, latent.move(space, z, target, 1.0))
    assert torch.equal(latent.predict_unchecked(seeded, x1, batch_size=7), target)


def test_flip_point_is_where_the_decision_changes(shipped, images):
    x, _ = images
    space = latent.class_subspace(shipped)
    z = latent.latents(shipped, x)
    source, target = latent.top_two(latent.class_scores(space, z))
    t, k = latent.flip_point(space, z, source, target)
    assert (t > 0).all() and (t <= 1).all() and (k != source).all()
    before = latent.class_scores(space, latent.move(space, z, target, t - 1e-6)).argmax(1)
    after = latent.class_scores(space, latent.move(space, z, target, t + 1e-6)).argmax(1)
    assert torch.equal(before, source) and torch.equal(after, k)
    t1 = latent.flip_point(space, z, source, target, margin=1.0)[0]
    scores = latent.class_scores(space, latent.move(space, z, target, t1))
    lead = scores.gather(1, k[:, None]).squeeze(1) - scores.gather(1, source[:, None]).squeeze(1)
    assert (t1 > t).all() and (lead.max() <= 1 + 1e-6)
    assert float((scores.max(1).values - scores.gather(1, source[:, None]).squeeze(1) - 1).abs().max()) < 1e-6


def test_evidence_sums_to_the_log_likelihood_ratio(shipped, images):
    x, _ = images
    space = latent.class_subspace(shipped)
    z = latent.latents(shipped, x)
    with torch.no_grad():
        cll = shipped.class_log_likelihoods(x).double()
    a, b = latent.top_two(cll)
    for a_, b_ in ((a, b), (b, torch.arange(len(x)) % 10)):  # the top two, and arbitrary pairs
        e = latent.evidence(space, z, a_, b_)
        assert e.shape == (len(x), shipped.n_dims)
        ratio = cll.gather(1, a_[:, None]).squeeze(1) - cll.gather(1, b_[:, None]).squeeze(1)
        torch.testing.assert_close(e.sum(1), ratio, rtol=1e-4, atol=1e-3)
    assert (latent.evidence(space, z, a, a) == 0).all()
    summary = latent.evidence_summary(latent.evidence(space, z, a, b), shipped.head.n_fc_dims)
    assert ((summary["fc_share"] > 0) & (summary["fc_share"] < 1)).all()
    assert (summary["cumulative"][:, -1] - 1).abs().max() < 1e-9 and (summary["half_dims"] >= 1).all()


def test_evidence_summary_on_a_hand_worked_case():
    e = torch.tensor([[3.0, -1.0, 0.5, 0.5]], dtype=torch.float64)  # |e| = 5: 3 in the first dim
    s = latent.evidence_summary(e, n_fc_dims=2)
    assert float(s["fc_share"][0]) == pytest.approx(0.8)
    assert int(s["half_dims"][0]) == 1
    torch.testing.assert_close(s["cumulative"][0], torch.tensor([0.6, 0.8, 0.9, 1.0], dtype=torch.float64))


def test_neutralizing_a_dim_removes_exactly_its_evidence(shipped, images):
    x, _ = images
    space = latent.class_subspace(shipped)
    z = latent.latents(shipped, x[:4])
    a, b = latent.top_two(latent.class_scores(space, z))
    e = latent.evidence(space, z, a, b)
    dims = e.abs().argsort(1, descending=True)[:, :2]
    changed = latent.neutralize_dims(shipped, space, z, a, b, dims)
    assert changed.shape == (4, 2, 1, 28, 28)
    with torch.no_grad(), latent._unchecked(shipped):
        z_changed = latent._as64(shipped.encode(changed[:, 0]))
    e_changed = latent.evidence(space, z_changed, a, b)
    gathered = e.gather(1, dims[:, :1]).squeeze(1)
    torch.testing.assert_close(e_changed.sum(1), e.sum(1) - gathered, rtol=1e-3, atol=2e-3)


def test_prototypes_shape_range_and_out_of_range_report(seeded):
    p = latent.prototypes(seeded, temperatures=(0.0, 0.5, 1.0), n_samples=2, seed=3)
    assert p["means"].shape == (10, 1, 28, 28) and p["samples"].shape == (3, 10, 2, 1, 28, 28)
    torch.testing.assert_close(p["samples"][0, :, 0], p["means"])  # T = 0 is the mean
    shown = latent.to_8bit(p["samples"])
    assert float(shown.min()) >= 0 and float(shown.max()) <= 1
    torch.testing.assert_close(shown, torch.round(shown * 255) / 255)
    again = latent.prototypes(seeded, temperatures=(1.0,), n_samples=2, seed=3)
    torch.testing.assert_close(again["samples"][0], p["samples"][2])  # the same noise for a seed
    r = latent.out_of_range(torch.tensor([-0.5, 0.2, 1.25, 0.0]))
    assert r == {"fraction": 0.5, "mean_excess": pytest.approx(0.1875), "max_excess": 0.5}
    r = latent.out_of_range(torch.tensor([0.5, float("nan")]))
    assert r["fraction"] == 0.5 and math.isinf(r["max_excess"])
    torch.testing.assert_close(latent.to_8bit(torch.tensor([float("nan"), -3.0, 7.0])), torch.tensor([128 / 255, 0, 1]))


def test_dim_labels_follow_the_dct_pooling(seeded):
    labels = latent.dim_labels(seeded)
    channels, height, width = seeded.config.latent_shape
    assert len(labels) == seeded.n_dims == channels * height * width
    assert labels[:channels] == [f"ch {c} DC" for c in range(channels)]
    assert labels[channels] == "ch 0 (0,1)" and labels[channels + 5] == "ch 5 (0,1)"
    pool = DCTPooling([(channels, height, width)])
    for d in (3, channels + 5):  # a unit latent in dim d lives in one channel only; the DC one is constant
        z = torch.zeros(1, channels * height * width)
        z[0, d] = 1
        (fmap,), _ = pool([z], rev=True)
        assert fmap[0].abs().sum((1, 2)).nonzero().flatten().tolist() == [d % channels]
        if d < channels:
            assert float(fmap[0, d].std()) < 1e-6


def test_class_fit_on_known_latents(seeded):
    space = latent.class_subspace(seeded)
    labels = torch.arange(200) % 10
    fit = latent.class_fit(space, space.full_means[labels], labels)
    assert fit["rms_class"] == pytest.approx(0, abs=1e-9) and fit["rms_rest"] == pytest.approx(0, abs=1e-9)
    assert fit["centroid_scale"] == pytest.approx(1.0)
    z = space.full_means[labels] + torch.randn(200, seeded.n_dims, generator=torch.Generator().manual_seed(0),
                                               dtype=torch.float64)
    fit = latent.class_fit(space, z, labels)
    assert fit["rms_class"] == pytest.approx(1, abs=0.1) and fit["rms_rest"] == pytest.approx(1, abs=0.02)
    assert float(latent.nearest_mean_distance(space, space.full_means).max()) < 1e-9


def test_latent_view_keeps_latent_units(seeded, images):
    x, _ = images
    space = latent.class_subspace(seeded)
    z = latent.latents(seeded, x)
    view = latent.latent_view(space, z, {"noise": latent.latents(seeded, torch.rand(5, 1, 28, 28))})
    assert view["points"].shape == (len(x), 2) and view["others"]["noise"].shape == (5, 2)
    assert view["means"].shape == (10, 2) and 0 < view["explained"] <= 1
    # an orthonormal projection: distances between means shrink or stay, never grow
    assert (torch.cdist(view["means"], view["means"]) <= torch.cdist(space.means, space.means) + 1e-9).all()


def test_pick_examples_takes_the_first_of_each_kind():
    picked = latent.pick_examples(torch.tensor([0, 1, 1, 2, 0, 3]), torch.tensor([0, 0, 1, 2, 1, 3]), k=2)
    assert picked == {"correct": [0, 2], "misclassified": [1, 4]}
    with pytest.raises(InputError, match="misclassified"):
        latent.pick_examples(torch.tensor([0, 1]), torch.tensor([0, 1]), k=1)


def test_bad_input_raises_input_error(seeded):
    space = latent.class_subspace(seeded)
    z = torch.zeros(3, seeded.n_dims, dtype=torch.float64)
    with pytest.raises(InputError, match="channel"):
        latent.latents(seeded, torch.rand(2, 3, 28, 28))
    with pytest.raises(InputError, match="range"):
        latent.latents(seeded, torch.rand(2, 1, 28, 28) * 255)
    with pytest.raises(InputError, match="non-empty"):
        latent.latents(seeded, torch.rand(0, 1, 28, 28))
    with pytest.raises(InputError, match="latents"):
        latent.decode(seeded, torch.zeros(2, 5))
    with pytest.raises(InputError, match="batch_size"):
        latent.decode(seeded, z, batch_size=0)
    with pytest.raises(InputError, match="0..9"):
        latent.move(space, z, torch.tensor([0, 1, 10]), 0.5)
    with pytest.raises(InputError, match="one class per latent"):
        latent.move(space, z, torch.tensor([0, 1]), 0.5)
    with pytest.raises(InputError, match="t must be"):
        latent.move(space, z, torch.tensor([0, 1, 2]), torch.tensor([0.5, float("nan"), 1.0]))
    with pytest.raises(InputError, match="steps"):
        latent.counterfactuals(seeded, z, steps=[])
    with pytest.raises(InputError, match="dims"):
        latent.neutralize_dims(seeded, space, z, torch.zeros(3), torch.ones(3), torch.full((3, 1), 10_000))
    with pytest.raises(InputError, match="temperatures"):
        latent.prototypes(seeded, temperatures=(-1.0,))
    with pytest.raises(InputError, match="n_samples"):
        latent.prototypes(seeded, n_samples=0)
    with pytest.raises(InputError, match="z has"):
        latent.counterfactual_stats(seeded, torch.rand(2, 1, 28, 28), z)


def test_prototype_panels_go_in_the_rows_asked_for(seeded):
    p = latent.prototypes(seeded, temperatures=(0.5,), n_samples=1, seed=0)
    fig = latent.plot_prototypes({"small β=1": p, "small β=8": p, "large β=1": p}, [str(i) for i in range(10)],
                                 rows=[0, 0, 1])
    grid = fig.axes[0].get_subplotspec().get_gridspec()
    assert (grid.nrows, grid.ncols) == (2, 2)
    titles = {ax.get_title(): ax.get_subplotspec().rowspan.start for ax in fig.axes if ax.get_title()}
    assert titles == {"small β=1": 0, "small β=8": 0, "large β=1": 1}
    assert sum(ax.axison for ax in fig.axes) == 3  # the empty slot is switched off
    with pytest.raises(InputError, match="row index"):
        latent.plot_prototypes({"a": p}, [str(i) for i in range(10)], rows=[0, 1])
