"""gclib.perception: the cue-conflict construction keeps one image's silhouette and the other's texture,
spectrum swaps and phase scrambling keep the power spectra they should, the filters' cut-offs are what
they say, kappa against a hand-worked case and model-vs-human's formula, a silhouette-only model has
shape bias 1, the distortions' ranges and errors, and the consistency matrix and clustering."""

import math

import numpy as np
import pytest
import torch

from gclib import perception as P
from gclib import robust
from gclib.errors import InputError


@pytest.fixture(scope="module")
def images(fashion):
    _, _, test = fashion
    return test.subset(64, 0).tensors()


def _amplitude(x):
    return torch.fft.fft2(x.double()).abs()


def test_patch_cue_conflict_keeps_the_silhouette_of_one_image_and_the_texture_of_the_other():
    # shape: a 16x16 square aligned with the 8x8 tiles; texture: random bright pixels everywhere
    shape = torch.zeros(1, 1, 28, 28)
    shape[..., 8:24, 8:24] = 0.5
    g = torch.Generator().manual_seed(0)
    texture = P.to_grid(0.3 + 0.7 * torch.rand(1, 1, 28, 28, generator=g))
    out = P.cue_conflict(shape, texture, "patch")
    mask = P.silhouette(shape)
    assert torch.equal(P.silhouette(out), mask)  # the silhouette is the shape image's
    assert (out[~mask] == 0).all()
    patch = P.texture_patch(texture)
    inside = out[mask.expand_as(out)].sort().values
    assert torch.equal(inside, patch.flatten().repeat(4).sort().values)  # 4 tiles: the texture's own pixels


def test_texture_patch_takes_the_window_with_most_foreground():
    x = torch.zeros(1, 1, 28, 28)
    x[..., 2:10, 15:23] = 0.9  # the only 8x8 window that is all foreground
    x[..., 20:24, 2:6] = 0.9
    assert (P.texture_patch(x) == 0.9).all()
    with pytest.raises(InputError, match="patch size"):
        P.texture_patch(x, size=40)


def test_spectrum_swap_has_the_texture_amplitude_and_the_shape_phase(images):
    x, _ = images
    a, b = x[:8], x[8:16]
    out = P.swap_spectrum(a, b)
    assert out.dtype == torch.float64
    torch.testing.assert_close(_amplitude(out), _amplitude(b), atol=1e-9, rtol=1e-9)
    f_out, f_a = torch.fft.fft2(out), torch.fft.fft2(a.double())
    strong = (f_out.abs() > 1e-6) & (f_a.abs() > 1e-6)
    diff = torch.angle(f_out[strong] / f_a[strong])
    assert diff.abs().max() < 1e-6  # same phase wherever both have energy


def test_controls_carry_one_cue_each(images):
    x, _ = images
    sil = P.silhouette_only(x)
    assert torch.equal(P.silhouette(sil), P.silhouette(x))
    per_image_values = [v.unique() for v in sil.flatten(1)]
    assert all(len(v) <= 2 for v in per_image_values)  # background and one fill value
    tex = P.texture_only(x)
    assert tex.shape == x.shape
    torch.testing.assert_close(tex[..., :8, :8], P.to_grid(P.texture_patch(x)))
    torch.testing.assert_close(tex[..., 8:16, 8:16], tex[..., :8, :8])


def test_pairing_always_takes_another_class_and_is_seeded():
    y = torch.tensor([0, 0, 1, 2, 2, 2, 1, 0])
    p = P.pair_other_class(y, seed=3)
    assert (y[p] != y).all()
    assert torch.equal(p, P.pair_other_class(y, seed=3))
    with pytest.raises(InputError, match="two classes"):
        P.pair_other_class(torch.zeros(5))


def test_shape_bias_of_a_silhouette_only_model_is_one():
    # Ten classes with ten different silhouettes (rectangles of different sizes and places).
    masks = torch.zeros(10, 1, 28, 28)
    for k in range(10):
        masks[k, :, 2 + k: 12 + k, 3 + 2 * (k % 5): 15 + 2 * (k % 5)] = 1
    g = torch.Generator().manual_seed(1)
    shape_y = torch.arange(10).repeat(3)
    texture_y = (shape_y + 1 + torch.randint(0, 9, (30,), generator=g)) % 10
    bright = lambda n: 0.3 + 0.7 * torch.rand(n, 1, 28, 28, generator=g)
    shape_x = P.to_grid(masks[shape_y] * bright(30))
    texture_x = P.to_grid(masks[texture_y] * bright(30))
    out = P.cue_conflict(shape_x, texture_x, "patch", size=8)

    def silhouette_model(x):  # the class whose silhouette overlaps most (intersection over union)
        m = P.silhouette(x).float().flatten(1)
        ref = masks.flatten(1)
        iou = (m @ ref.T) / (m.sum(1, keepdim=True) + ref.sum(1) - m @ ref.T)
        return iou.argmax(1)

    result = P.shape_bias(silhouette_model(out), shape_y, texture_y)
    assert result["shape_bias"] == 1.0 and result["n_texture"] == 0 and result["cue_share"] == 1.0
    # and a model that reads the texture image's silhouette instead has shape bias 0
    result = P.shape_bias(silhouette_model(texture_x), shape_y, texture_y)
    assert result["shape_bias"] == 0.0


def test_shape_bias_counts_and_errors():
    r = P.shape_bias([0, 1, 2, 5], [0, 3, 2, 4], [1, 1, 2, 7])
    # the third image has equal cues (left out); of the rest: one shape, one texture, one neither
    assert (r["n"], r["n_shape"], r["n_texture"]) == (3, 1, 1)
    assert r["shape_bias"] == 0.5 and math.isclose(r["se"], 0.5 / math.sqrt(2))
    with pytest.raises(InputError, match="one entry per image"):
        P.shape_bias([0, 1], [0], [1])
    with pytest.raises(InputError, match="no cue-conflict"):
        P.shape_bias([0], [1], [1])


@pytest.mark.parametrize("cutoff", [1, 2.5, 4, 7, 10])
def test_filter_cutoffs_are_what_they_say(images, cutoff):
    x, _ = images
    total = P.band_energy(x, -1, math.inf)
    low, high = P.lowpass(x, cutoff), P.highpass(x, cutoff)
    assert (P.band_energy(low, cutoff, math.inf) < 1e-9 * total).all()  # nothing above the cut-off
    torch.testing.assert_close(P.band_energy(low, -1, cutoff), P.band_energy(x, -1, cutoff))
    assert (P.band_energy(high, 0, cutoff) < 1e-9 * total).all()  # nothing in (0, cut-off]
    torch.testing.assert_close(P.band_energy(high, cutoff, math.inf), P.band_energy(x, cutoff, math.inf))
    mean = x.double().mean((-2, -1), keepdim=True)
    torch.testing.assert_close(low + high - mean, x.double(), atol=1e-10, rtol=0)  # the bands add up
    hyb = P.hybrid(x[:8], x[8:16], cutoff)
    torch.testing.assert_close(P.lowpass(hyb, cutoff), P.lowpass(x[:8], cutoff), atol=1e-10, rtol=0)
    torch.testing.assert_close(hyb - P.lowpass(hyb, cutoff), P.highpass(x[8:16], cutoff) - x[8:16].double().mean(
        (-2, -1), keepdim=True), atol=1e-10, rtol=0)


def test_phase_scrambling_keeps_the_power_spectrum(images):
    x, _ = images
    for degrees in (30, 90, 180):
        out = P.phase_scramble(x, degrees, seed=2)
        torch.testing.assert_close(_amplitude(out), _amplitude(x), atol=1e-9, rtol=1e-9)
        assert not torch.allclose(out, x.double(), atol=1e-3)
    torch.testing.assert_close(P.phase_scramble(x, 0), x.double(), atol=1e-12, rtol=0)
    # the same seed: the same noise, stronger
    torch.testing.assert_close(P.phase_scramble(x, 90, 5), P.phase_scramble(x, 90, 5))


def test_power_equalisation_gives_every_image_the_mean_spectrum(images):
    x, _ = images
    out = P.power_equalise(x, 1.0)
    mean = _amplitude(x).mean(0, keepdim=True)
    torch.testing.assert_close(_amplitude(out), mean.expand_as(out), atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(P.power_equalise(x, 0.0), x.double(), atol=1e-12, rtol=0)


def test_distortions_give_grid_images_and_identity_at_no_strength(images):
    x, _ = images
    for name, strengths in P.DISTORTIONS.items():
        assert len(strengths) >= 4
        for s in strengths:
            out = P.distort(x, name, s, seed=1)
            assert out.shape == x.shape and out.dtype == torch.float32
            assert out.min() >= 0 and out.max() <= 1
            assert torch.equal(out, torch.round(out * 255) / 255)
        # the first strength of every distortion is the image unchanged
        torch.testing.assert_close(P.distort(x, name, strengths[0]), x, atol=1 / 255 + 1e-6, rtol=0)
    rot = P.distort(x, "rotation", 90)
    assert torch.equal(rot, torch.rot90(x, 1, (-2, -1)))
    with pytest.raises(InputError, match="unknown distortion"):
        P.distort(x, "blur", 1)
    with pytest.raises(InputError, match="multiple of 90"):
        P.distort(x, "rotation", 45)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        P.distort(x * 2, "contrast", 0.5)


def test_kappa_hand_worked_and_model_vs_human_formula():
    a = np.array([1, 1, 1, 1, 0, 0, 1, 0, 1, 1], bool)  # 7/10 right
    b = np.array([1, 1, 0, 1, 0, 1, 1, 0, 1, 0], bool)  # 6/10 right
    # observed agreement: positions 0,1,3,4,6,7,8 -> 7/10; expected 0.7*0.6 + 0.3*0.4 = 0.54
    # kappa = (0.7 - 0.54) / (1 - 0.54) = 0.16 / 0.46
    k = P.kappa_matrix(np.stack([a, b])[:, None, :])
    assert math.isclose(k[0, 0, 1], 0.16 / 0.46) and math.isclose(k[0, 1, 0], 0.16 / 0.46)
    assert math.isclose(k[0, 0, 0], 1.0)

    def model_vs_human(c1, c2):  # modelvshuman/plotting/analyses: expected, observed, kappa
        p1, p2 = c1.mean(), c2.mean()
        expected = p1 * p2 + (1 - p1) * (1 - p2)
        observed = (c1 == c2).mean()
        return (observed - expected) / (1.0 - expected)

    rng = np.random.default_rng(0)
    c = rng.random((4, 3, 50)) < np.array([0.5, 0.7, 0.8, 0.6])[:, None, None]
    km = P.kappa_matrix(c)
    for i in range(4):
        for j in range(4):
            for cond in range(3):
                assert math.isclose(km[cond, i, j], model_vs_human(c[i, cond], c[j, cond]), abs_tol=1e-12)
                assert math.isclose(km[cond, i, j], robust.error_consistency(c[i, cond], c[j, cond])["kappa"],
                                    abs_tol=1e-12)


def test_consistency_matrix_intervals_and_clustering():
    rng = np.random.default_rng(1)
    base = rng.random((2, 6, 120)) < 0.65  # two independent "families", three near-copies each
    models = []
    for fam in range(2):
        for _ in range(3):
            flip = rng.random((6, 120)) < 0.05
            models.append(base[fam] ^ flip)
    correct = np.stack(models)
    ec = P.consistency_matrix(correct, n_bootstrap=50, seed=0)
    k = ec["kappa"]
    assert k.shape == (6, 6) and np.allclose(np.diag(k), 1)
    assert (k[:3, :3] > 0.6).all() and (k[3:, 3:] > 0.6).all() and (np.abs(k[:3, 3:]) < 0.3).all()
    assert (ec["low"] <= k + 1e-12).all() and (k <= ec["high"] + 1e-12).all()
    order, _ = P.cluster_order(k)
    assert sorted(order) == list(range(6)) and set(order[:3]) in ({0, 1, 2}, {3, 4, 5})
    assert list(P.consistency_conditions(np.array([[0.4, 0.6, 0.9], [0.6, 0.7, 0.95]]))) == [True, True, False]
    with pytest.raises(InputError, match="models, conditions"):
        P.consistency_matrix(correct[0])
