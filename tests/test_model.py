"""The Gaussian-mixture head, the public model API, sampling and the three named configs."""

import dataclasses
import math

import pytest
import torch

import gclib
from gclib.configs import ModelConfig, get_config
from gclib.model import GaussianMixtureHead

from .conftest import randomize, tiny_config


def test_logits_equal_log_softmax_of_explicit_gaussian_densities():
    torch.manual_seed(0)
    model = randomize(gclib.GenerativeClassifier(tiny_config()).double(), scale=0.3)
    x = torch.rand(5, 1, 4, 4, dtype=torch.float64)
    z, log_det = model._encode(x)
    means = model.class_means  # [C, D]
    explicit = torch.stack([
        torch.distributions.MultivariateNormal(means[c], torch.eye(16, dtype=torch.float64)).log_prob(z)
        for c in range(3)
    ], dim=1) + log_det[:, None]
    torch.testing.assert_close(model.class_log_likelihoods(x), explicit)
    torch.testing.assert_close(model(x), torch.log_softmax(explicit - math.log(3), dim=1))
    torch.testing.assert_close(model.log_px(x), torch.logsumexp(explicit - math.log(3), dim=1))
    assert torch.equal(model.predict(x), explicit.argmax(1))


def test_low_rank_means_are_used_and_never_materialised_in_the_density():
    head = GaussianMixtureHead(n_dims=50, num_classes=4, n_fc_dims=8, low_rank=3).double()
    with torch.no_grad():
        head.mu_coeff.normal_()
    z = torch.randn(6, 50, dtype=torch.float64)
    means = head.means()
    assert means.shape == (4, 50) and means[:, 8:].abs().sum() > 0
    expected = -0.5 * ((z[:, None] - means[None]) ** 2).sum(-1) - 25 * math.log(2 * math.pi)
    torch.testing.assert_close(head.log_density(z), expected)


def test_class_means_start_as_scaled_one_hot_blocks():
    head = GaussianMixtureHead(n_dims=100, num_classes=4, n_fc_dims=8, low_rank=0, mu_init=3.0)
    expected = torch.zeros(4, 8)
    for y in range(4):
        expected[y, 2 * y: 2 * y + 2] = 3.0 / math.sqrt(2)
    torch.testing.assert_close(head.mu_fc.data, expected)


def test_class_likelihoods_integrate_to_one_on_a_2d_toy_flow():
    cfg = ModelConfig(name="toy2d", in_channels=2, image_size=1, num_classes=2, entry_downsamples=0,
                      stage_blocks=(3,), stage_strides=(1,), stage_widths=(8,), n_fc_dims=2, low_rank=0,
                      mu_init=1.0, data_mean=(0.0, 0.0), data_std=(1.0, 1.0))
    torch.manual_seed(0)
    model = randomize(gclib.GenerativeClassifier(cfg).double(), scale=0.3)
    model.check_inputs = False  # the grid leaves [0, 1]
    grid = torch.linspace(-9, 9, 361, dtype=torch.float64)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    x = torch.stack([xx, yy], dim=-1).reshape(-1, 2, 1, 1)
    with torch.no_grad():
        density = model.class_log_likelihoods(x).exp()
    cell = float(grid[1] - grid[0]) ** 2
    mass = density.sum(0) * cell
    torch.testing.assert_close(mass, torch.ones(2, dtype=torch.float64), atol=2e-3, rtol=0)


def test_public_api_shapes_and_units(fashion):
    model = gclib.GenerativeClassifier.from_config("fashion-mnist-small", seed=0)
    x, _ = fashion[2][:4]
    assert model.class_log_likelihoods(x).shape == (4, 10)
    assert model(x).shape == (4, 10)
    torch.testing.assert_close(model(x).exp().sum(1), torch.ones(4))
    assert model.log_px(x).shape == (4,)
    for how in ("seeded", "centre", "none"):
        point = gclib.model.evaluation_point(x, how)
        expected = -(model.log_px(point) - 784 * math.log(256)) / (784 * math.log(2))
        torch.testing.assert_close(model.bits_per_dim(x, how), expected)
    assert torch.equal(gclib.model.evaluation_point(x, "none"), x)
    assert model.predict(x).dtype == torch.int64
    assert model.encode(x).shape == (4, 784)


def test_sampling_gives_images_of_the_requested_classes():
    model = gclib.GenerativeClassifier.from_config("fashion-mnist-small", seed=0)
    g = torch.Generator().manual_seed(0)
    samples = model.sample([0, 3, 9], temperature=0.8, generator=g)
    assert samples.shape == (3, 1, 28, 28)
    mean_images = model.sample([0, 3, 9], temperature=0.0)
    # temperature 0 decodes the class means themselves (they may lie outside [0, 1]: use the raw flow)
    torch.testing.assert_close(model.flow(mean_images)[0], model.class_means[[0, 3, 9]], atol=1e-4, rtol=0)
    with pytest.raises(gclib.InputError):
        model.sample([10])


def test_seeded_construction_is_reproducible():
    a = gclib.GenerativeClassifier.from_config("fashion-mnist-small", seed=3).state_dict()
    b = gclib.GenerativeClassifier.from_config("fashion-mnist-small", seed=3).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


# Trainable parameters of the invertible ResNet-50 backbone (subnets + global affines), recorded so that an
# accidental change of the architecture shows up here.
IMAGENET_BACKBONE_PARAMS = 20_377_648


def test_imagenet_config_parameter_count_and_latent_split():
    cfg = get_config("imagenet").model
    assert cfg.latent_shape == (3072, 7, 7)
    assert cfg.n_dims == 3 * 224 * 224 == 150528
    assert cfg.n_fc_dims == 3072 and cfg.n_dims - cfg.n_fc_dims == 147456 and cfg.low_rank == 128
    assert cfg.stage_blocks == (3, 4, 6, 3) and cfg.stage_strides == (1, 2, 2, 2)
    with torch.device("meta"):  # count without allocating 150 MB of weights
        model = gclib.GenerativeClassifier(cfg)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    head = 1000 * 3072 + 1000 * 128 + 128 * 147456
    assert n_params - sum(p.numel() for p in model.head.parameters()) == IMAGENET_BACKBONE_PARAMS
    assert sum(p.numel() for p in model.head.parameters()) == head




def test_imagenet_architecture_runs_forward_and_inverse_on_cpu():
    # The paper's architecture with the image size and widths reduced so that it runs in seconds.
    cfg = dataclasses.replace(get_config("imagenet").model, image_size=64, stage_widths=(8, 8, 8, 8), num_classes=5)
    model = randomize(gclib.GenerativeClassifier.from_config(cfg, seed=0), scale=0.01)
    assert cfg.latent_shape == (3072, 2, 2) and cfg.n_fc_dims == 3072
    x = torch.rand(2, 3, 64, 64)
    z = model.encode(x)
    assert z.shape == (2, 3 * 64 * 64)
    assert (model.inverse(z) - x).abs().max() <= 1e-4
    assert model(x).shape == (2, 5)
    assert torch.isfinite(model.log_px(x)).all()


def test_evaluation_points_lie_in_the_training_cells_and_do_not_depend_on_the_batch(fashion):
    x, _ = fashion[2][:64]
    cells = torch.round(x * 255)
    for how in ("seeded", "centre"):
        point = gclib.model.evaluation_point(x, how)
        assert ((point * 256 >= cells) & (point * 256 <= cells + 1)).all()  # in [k, k+1] / 256 (float32)
    seeded = gclib.model.evaluation_point(x)
    torch.testing.assert_close(gclib.model.evaluation_point(x[10:20]), seeded[10:20], rtol=0, atol=0)
    torch.testing.assert_close(gclib.model.evaluation_point(x.flip(0)), seeded.flip(0), rtol=0, atol=0)
    assert not torch.equal(gclib.model.evaluation_point(x, seed=1), seeded)
    # Different images get different noise (no shared field): compare the fractional parts.
    frac = seeded * 256 - cells
    assert (frac[0] - frac[1]).abs().mean() > 0.2
    with pytest.raises(gclib.errors.InputError, match="dequantization"):
        gclib.model.evaluation_point(x, "random")


def test_bits_per_dim_of_the_test_set_is_the_manifest_figure(fashion):
    # What a user computes with model.bits_per_dim on the test images, in batches of their choice, is the
    # number in the shipped manifest (and so in the book's table_models).
    model = gclib.pretrained("fashion-mnist", beta=8, device="cpu")
    x, _ = fashion[2].tensors()
    with torch.no_grad():
        bpd = torch.cat([model.bits_per_dim(b) for b in x.split(128)]).double().mean()
    assert round(float(bpd), 3) == round(model.manifest["info"]["test"]["bits_per_dim"], 3)
