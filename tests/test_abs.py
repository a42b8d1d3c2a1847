"""ABS (gclib.abs): the bounds, the latent search, the decision on a known case, the interface, training, saving."""

import json
import math

import pytest
import torch

from gclib.abs import (
    VAE,
    ABSClassifier,
    ABSConfig,
    _edge_energy,
    _edge_laplacian,
    _edge_logdet,
    abs_logit_scale,
    fit,
    gaussian_kl,
    load,
    log_likelihood,
    prior_samples,
    save,
    ssim,
)
from gclib.classifier import CapabilityError, check_classifier, describe
from gclib.data import ImageDataset
from gclib.errors import CheckpointError, ConfigError, InputError, TrainingError

torch.set_num_threads(1)


def tiny(**over) -> ABSConfig:
    base = dict(num_classes=3, latent_dim=2, width=4, n_prior_samples=32, n_steps=5, n_bound_samples=4)
    base.update(over)
    return ABSConfig(**base)


def _images(n=4, seed=0):
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def _templates():
    a = torch.full((1, 28, 28), 0.05)
    b = a.clone()
    a[:, :, :14] = 0.95
    b[:, :, 14:] = 0.95
    return a, b


def _class_data(n_per_class=12, seed=0, classes=3):
    """uint8 images: class c is a bright band at rows 8c..8c+8 plus noise."""
    g = torch.Generator().manual_seed(seed)
    images, labels = [], []
    for c in range(classes):
        base = torch.zeros(n_per_class, 1, 28, 28)
        base[:, :, 8 * c:8 * c + 8] = 0.8
        images.append((base + 0.1 * torch.rand(base.shape, generator=g)).clamp(0, 1))
        labels.append(torch.full((n_per_class,), c))
    x = (torch.cat(images) * 255).round().to(torch.uint8)
    return ImageDataset(x, torch.cat(labels))


# -- likelihoods and bounds ---------------------------------------------------------------------------
def test_gaussian_kl_matches_monte_carlo():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.tensor([[0.7, -1.2, 0.1]]), torch.tensor([[-1.0, 0.5, -2.0]])
    z = mu + (0.5 * logvar).exp() * torch.randn(200_000, 3, generator=g)
    log_q = -0.5 * ((z - mu) ** 2 / logvar.exp() + logvar + math.log(2 * math.pi)).sum(1)
    log_p = -0.5 * (z**2 + math.log(2 * math.pi)).sum(1)
    mc = log_q - log_p
    se = float(mc.std()) / math.sqrt(len(mc))
    assert abs(float(mc.mean()) - float(gaussian_kl(mu, logvar))) < 4 * se


@pytest.mark.parametrize("similarity", ["mse", "bernoulli"])
def test_elbo_matches_monte_carlo_and_is_below_the_importance_weighted_bound(similarity):
    torch.manual_seed(0)
    vae = VAE(tiny(similarity=similarity))
    x = _images(3)
    with torch.no_grad():
        elbo, _, kl = vae.elbo(x, n_samples=1000, generator=torch.Generator().manual_seed(1))
        mu, logvar = vae.encoder(x)
        torch.testing.assert_close(kl, gaussian_kl(mu, logvar))
        # An independent MC estimate of the same bound: E_q[log p(x|z) + log p(z) - log q(z|x)].
        g = torch.Generator().manual_seed(2)
        z = mu + (0.5 * logvar).exp() * torch.randn(1000, *mu.shape, generator=g)
        ll = log_likelihood(x, vae.decoder(z.flatten(0, 1)).view(1000, *x.shape), vae.config)
        log_pz = -0.5 * (z**2 + math.log(2 * math.pi)).sum(-1)
        log_q = -0.5 * ((z - mu) ** 2 / logvar.exp() + logvar + math.log(2 * math.pi)).sum(-1)
        terms = ll + log_pz - log_q
        se = terms.std(0) / math.sqrt(len(terms)) + ll.std(0) / math.sqrt(len(ll))
        assert ((terms.mean(0) - elbo).abs() < 5 * se + 1e-3).all()
        iwae = vae.iwae(x, n_samples=500, generator=torch.Generator().manual_seed(3))
        assert (iwae >= elbo).all()


def test_gaussian_likelihood_is_the_normal_density():
    cfg = tiny(sigma=0.3)
    x, logits = _images(2), torch.randn(2, 1, 28, 28)
    expected = torch.distributions.Normal(torch.sigmoid(logits), 0.3).log_prob(x).sum((1, 2, 3))
    torch.testing.assert_close(log_likelihood(x, logits, cfg), expected)
    expected = -torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").sum((1, 2, 3))
    torch.testing.assert_close(log_likelihood(x, logits, tiny(similarity="bernoulli")), expected)


def test_edge_likelihood_is_a_normalised_gaussian():
    # Small grid: build the precision I + lambda G^T G explicitly and compare energy, Laplacian and log-det.
    c, h, w, lam = 1, 4, 5, 0.7
    basis = torch.eye(c * h * w, dtype=torch.float64).view(-1, c, h, w)
    lap = _edge_laplacian(basis).flatten(1)  # rows: G^T G e_i
    precision = torch.eye(c * h * w, dtype=torch.float64) + lam * lap
    torch.testing.assert_close(precision, precision.T)
    assert abs(_edge_logdet(c, h, w, lam) - float(torch.linalg.slogdet(precision)[1])) < 1e-9
    r = torch.randn(3, c, h, w, dtype=torch.float64)
    torch.testing.assert_close(r.flatten(1).square().sum(1) + lam * _edge_energy(r),
                               torch.einsum("bi,ij,bj->b", r.flatten(1), precision, r.flatten(1)))
    # And the 28x28 log-likelihood is that Gaussian's log-density.
    cfg = tiny(similarity="edge", edge_weight=0.5, sigma=0.2)
    x, logits = _images(1).double(), torch.randn(1, 1, 28, 28, dtype=torch.float64)
    r = (x - torch.sigmoid(logits)).flatten(1)
    d = r.shape[1]
    logdet = _edge_logdet(1, 28, 28, 0.5) - 2 * d * math.log(0.2)
    quad = (r.square().sum() + 0.5 * _edge_energy(x - torch.sigmoid(logits))) / 0.04
    expected = -0.5 * quad + 0.5 * logdet - 0.5 * d * math.log(2 * math.pi)
    torch.testing.assert_close(log_likelihood(x, logits, cfg), expected.reshape(1))


def test_ssim_is_one_for_identical_images_and_lower_otherwise():
    x = _images(2)
    torch.testing.assert_close(ssim(x, x), torch.ones(2))
    assert (ssim(x, x.flip(3)) < 0.9).all()


def test_prior_samples_drop_the_least_probable_and_are_seeded():
    z = prior_samples(90, 8, 0.1, torch.Generator().manual_seed(0))
    assert z.shape == (90, 8)
    torch.testing.assert_close(z, prior_samples(90, 8, 0.1, torch.Generator().manual_seed(0)))
    all_z = torch.randn(100, 8, generator=torch.Generator().manual_seed(0))
    assert float(z.norm(dim=1).max()) <= float(all_z.norm(dim=1).sort().values[89]) + 1e-6


# -- the latent search --------------------------------------------------------------------------------
@pytest.mark.parametrize("similarity", ["mse", "edge", "bernoulli"])
def test_initial_latents_are_the_best_prior_samples(similarity):
    model = ABSClassifier(tiny(similarity=similarity, n_prior_samples=40), seed=0).double()
    x = _images(3).double()
    with torch.no_grad():
        z0 = model.initial_latents(x)
        n = len(model.prior_z)
        all_z = model.prior_z[None, None].expand(3, 3, n, 2)
        logits = torch.stack([model.vaes[c].decoder(model.prior_z) for c in range(3)])  # [C, N, ...]
        losses = -log_likelihood(x[:, None, None], logits[None], model.config) + 0.5 * all_z.square().sum(-1)
        expected = model.prior_z[losses.argmin(2)]
    torch.testing.assert_close(z0, expected)


@pytest.mark.parametrize("similarity", ["mse", "ssim"])
def test_latent_search_never_increases_the_loss(similarity):
    model = ABSClassifier(tiny(similarity=similarity, n_steps=15, step_lr=0.3, latent_clip=1.5), seed=0)
    x = _images(3)
    found = model.infer(x)
    assert found.history.shape == (16, 3, 3)
    assert (found.history[1:] <= found.history[:-1]).all()
    with torch.no_grad():
        z0 = model.initial_latents(x)
        start = model.point_loss(x, model.decode(z0), z0)
        torch.testing.assert_close(found.history[0], start)
        assert (found.loss < start).any()  # the steps improve on the best prior sample somewhere
        torch.testing.assert_close(found.loss, model.point_loss(x, model.decode(found.z), found.z))
        torch.testing.assert_close(found.logits, model.decode(found.z))
    assert float(found.z.norm(dim=-1).max()) <= 1.5 + 1e-5 or float(z0.norm(dim=-1).max()) > 1.5


def test_the_encoder_start_is_the_better_of_the_two_with_both():
    model = ABSClassifier(tiny(start="both"), seed=0)
    x = _images(3)
    with torch.no_grad():
        z = model.initial_latents(x)
        mu = torch.stack([vae.encoder(x)[0] for vae in model.vaes], 1)
        prior = model.best_prior_samples(x)
        losses = [model.point_loss(x, model.decode(c), c) for c in (z, mu, prior)]
    torch.testing.assert_close(losses[0], torch.minimum(losses[1], losses[2]))
    torch.testing.assert_close(ABSClassifier(tiny(start="encoder"), seed=0).initial_latents(x), mu)
    assert model.evaluations_per_image == 3 * (5 + 1 + 4 + 3)
    found = model.infer(x)
    assert (found.history[1:] <= found.history[:-1]).all()


@pytest.mark.parametrize("score,start", [("bound", "prior"), ("abs", "prior"), ("bound", "both")])
def test_the_unrolled_search_keeps_the_scores_and_its_gradient_includes_dz_dx(score, start):
    cfg = tiny(n_prior_samples=16, n_steps=3, n_bound_samples=2, score=score, start=start)
    model = ABSClassifier(cfg, seed=0).double()
    unrolled = ABSClassifier(cfg.replace(unroll=True), seed=0).double()
    unrolled.load_state_dict(model.state_dict())
    g = torch.Generator().manual_seed(0)
    # inside the box, so that x +- h d stays in [0, 1]
    x = (0.25 + 0.5 * torch.rand(2, 1, 28, 28, generator=g, dtype=torch.float64)).requires_grad_(True)
    weights = torch.randn(2, 3, generator=g, dtype=torch.float64)  # a random linear functional of the scores
    constant, through = model.class_scores(x), unrolled.class_scores(x)
    torch.testing.assert_close(through, constant, rtol=0, atol=1e-8)  # the same path of z
    (g_constant,) = torch.autograd.grad((constant * weights).sum(), x)
    (g_through,) = torch.autograd.grad((through * weights).sum(), x)
    assert all(p.grad is None for p in unrolled.parameters())  # the weights are constants of the search

    def derivative(direction, h=1e-5):
        # central difference of the unrolled scores: the starting argmin and the best-step choice are
        # piecewise constant, so a small h in float64 stays on one piece
        with torch.no_grad():  # the values are those of the graph-building search (checked above)
            up, down = unrolled.class_scores(x + h * direction), unrolled.class_scores(x - h * direction)
        return float(((up - down) * weights).sum()) / (2 * h)

    random = torch.randn(x.shape, generator=g, dtype=torch.float64)
    random = random / random.norm()
    difference = (g_through - g_constant) / (g_through - g_constant).norm()
    for direction in (random, difference):
        fd = derivative(direction)
        assert abs(float((g_through * direction).sum()) - fd) <= 1e-6 * (1 + abs(fd))
    # along the difference the z*-constant gradient is clearly off: d z*/dx matters
    assert abs(float((g_constant * difference).sum()) - fd) > 1e-3 * (1 + abs(fd))
    with torch.no_grad():  # without a gradient to x the unrolled model runs the ordinary search
        assert torch.equal(unrolled.class_scores(x), model.class_scores(x))


def test_unroll_is_a_config_field_that_round_trips_and_defaults_to_off():
    cfg = tiny(unroll=True)
    assert ABSConfig.from_dict(cfg.to_dict()) == cfg and cfg.to_dict()["unroll"] is True
    old = {k: v for k, v in tiny().to_dict().items() if k != "unroll"}  # a manifest written before the field
    assert ABSConfig.from_dict(old).unroll is False
    with pytest.raises(ConfigError, match="unroll"):
        tiny(unroll="yes")


class TemplateDecoder(torch.nn.Module):
    """Decodes every z to one fixed image (plus a small z-dependent brightness change)."""

    def __init__(self, template):
        super().__init__()
        self.register_buffer("logit", torch.logit(template))

    def forward(self, z):
        return self.logit[None] + 0.1 * z[:, :1, None, None]


@pytest.mark.parametrize("score", ["bound", "abs"])
@pytest.mark.parametrize("similarity", ["mse", "edge", "bernoulli", "ssim"])
def test_two_templates_are_told_apart(similarity, score):
    model = ABSClassifier(tiny(num_classes=2, similarity=similarity, score=score), seed=0)
    for vae, template in zip(model.vaes, _templates()):
        vae.decoder = TemplateDecoder(template)
    a, b = _templates()
    g = torch.Generator().manual_seed(0)
    x = torch.stack([a, b, a, b]) + 0.1 * torch.randn(4, 1, 28, 28, generator=g)
    x = x.clamp(0, 1)
    assert model.predict(x).tolist() == [0, 1, 0, 1]
    posterior = model(x).exp()
    assert (posterior[[0, 2], 0] > 0.99).all() and (posterior[[1, 3], 1] > 0.99).all()


def test_posterior_sums_to_one_gradients_reach_the_input_and_the_interface_holds():
    model = ABSClassifier(tiny(logit_scale=0.01), seed=0)
    check_classifier(model)
    facts = describe(model)
    assert facts["family"] == "abs" and facts["score_kind"] == "bound" and facts["density_kind"] == "bound"
    assert model.evaluations_per_image == 3 * (5 + 1 + 4)
    x = _images(2).requires_grad_(True)
    logits = model(x)
    torch.testing.assert_close(logits.exp().sum(1), torch.ones(2))
    logits[:, 1].sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert not any(p.grad is not None for p in model.parameters())  # the search leaves the weights alone
    with torch.no_grad():
        scores = model.class_scores(x)
        log_px = model.log_px(x)
    torch.testing.assert_close(log_px, torch.logsumexp(scores - math.log(3), 1))
    torch.testing.assert_close(logits.detach(), torch.log_softmax(0.01 * scores, 1))
    with torch.inference_mode():  # the search still runs (it leaves inference mode for its own graph)
        torch.testing.assert_close(model.class_scores(x.detach()), scores)


def test_surrogate_scores_have_no_density():
    for cfg in (tiny(score="abs"), tiny(similarity="ssim")):
        model = ABSClassifier(cfg, seed=0)
        check_classifier(model)
        assert model.score_kind == "surrogate" and model.density_kind is None
        with pytest.raises(CapabilityError):
            model.log_px(_images(1))
    assert ABSClassifier(tiny(score="abs")).evaluations_per_image == 3 * 6


def test_the_bound_is_below_log_p_x_given_y_by_quadrature():
    # With a 2-d latent, log p(x|y) = log of the integral of p(x|z) p(z) dz on a fine grid. The score is a
    # bound in expectation over its fixed draws: average it over many draw sets.
    model = ABSClassifier(tiny(num_classes=2, sigma=0.3, n_bound_samples=4), seed=0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():  # a decoder that depends on z
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    model.posterior_std.fill_(0.5)
    x = _images(2)
    t = torch.linspace(-6, 6, 61)
    grid = torch.cartesian_prod(t, t)
    log_cell = 2 * math.log(float(t[1] - t[0]))
    with torch.no_grad():
        exact = []
        for vae in model.vaes:
            ll = log_likelihood(x[:, None], vae.decoder(grid)[None], model.config)  # [B, G]
            log_prior = -0.5 * (grid.square().sum(1) + 2 * math.log(2 * math.pi))
            exact.append(torch.logsumexp(ll + log_prior + log_cell, 1))
        exact = torch.stack(exact, 1)
        z = model.infer(x).z
        draws = []
        for _ in range(100):
            model.bound_eps.copy_(torch.randn(4, 2, generator=g))
            draws.append(model._bound(x, z))
        draws = torch.stack(draws)
    mean, se = draws.mean(0), draws.std(0) / 10
    assert (mean + 3 * se < exact).all()
    assert (mean > exact - 20).all()  # and not vacuous


def test_the_prior_cache_follows_weight_changes():
    model = ABSClassifier(tiny(), seed=0)
    other = ABSClassifier(tiny(), seed=1)
    first = model._prior_bank()[0].clone()
    assert model._prior_bank()[0] is model._prior_bank()[0]  # cached
    with torch.no_grad():
        for p in model.vaes.parameters():
            p.add_(0.5 * torch.randn_like(p))
    perturbed = model._prior_bank()[0].clone()
    assert not torch.equal(first, perturbed)
    model.load_state_dict(other.state_dict())
    torch.testing.assert_close(model._prior_bank()[0], other._prior_bank()[0])


def test_bad_arguments_raise_one_clear_error():
    for bad in (dict(latent_dim=0), dict(similarity="l1"), dict(score="elbo"), dict(start="encoders"), dict(sigma=0.0),
                dict(fraction_to_dismiss=1.0), dict(n_steps=-1), dict(latent_clip=-1.0), dict(num_classes=1),
                dict(n_prior_samples=2.5), dict(logit_scale=float("nan"))):
        with pytest.raises(ConfigError):
            tiny(**bad)
    with pytest.raises(ConfigError, match="unknown ABSConfig fields"):
        ABSConfig.from_dict({"latent": 3})
    with pytest.raises(ConfigError):
        ABSClassifier({"latent_dim": 8})
    with pytest.raises(ConfigError):
        abs_logit_scale(tiny(similarity="edge"))
    model = ABSClassifier(tiny(), seed=0)
    for x in (torch.rand(1, 3, 28, 28), torch.rand(1, 1, 32, 32), torch.rand(1, 28, 28), torch.rand(1, 1, 28, 28) * 3,
              torch.zeros(1, 1, 28, 28, dtype=torch.uint8), torch.zeros(0, 1, 28, 28)):
        with pytest.raises(InputError):
            model(x)
    with pytest.raises(InputError):
        model.sample([5])
    train = _class_data(4)
    for kwargs in (dict(epochs=0), dict(batch_size=0), dict(lr=-1.0), dict(beta_kl=-1.0), dict(batch_size=100),
                   dict(schedule="linear")):
        with pytest.raises(ConfigError):
            fit(model, train, **{"epochs": 1, "batch_size": 4, "progress": False, **kwargs})


def test_abs_logit_scale_matches_abs_on_the_squared_error():
    cfg = tiny(sigma=0.1)
    scale = abs_logit_scale(cfg, 440.0)
    # Two reconstructions whose squared errors differ by delta: ABS's logit gap is 440 delta / D.
    delta = 3.0
    assert math.isclose(scale * delta / (2 * 0.1**2), 440 * delta / 784)


def test_sample_decodes_the_class_decoder():
    model = ABSClassifier(tiny(), seed=0)
    s = model.sample([0, 2, 2], temperature=0.0)
    assert s.shape == (3, 1, 28, 28) and 0 <= float(s.min()) and float(s.max()) <= 1
    torch.testing.assert_close(s[1], torch.sigmoid(model.vaes[2].decoder(torch.zeros(1, 2)))[0])


# -- training and saving ------------------------------------------------------------------------------------
def _loss(model, data):
    x, y = data.tensors()
    with torch.no_grad():
        elbo = model.amortised_elbo(x, torch.Generator().manual_seed(0))
    return -float(elbo.gather(1, y[:, None]).mean())


def test_a_few_steps_lower_the_loss_and_write_the_run(tmp_path):
    data = _class_data(12)
    model = ABSClassifier(tiny(), seed=0)
    before = _loss(model, data)
    history = fit(model, data, data, epochs=3, batch_size=12, lr=1e-2, out=tmp_path / "run", progress=False,
                  device="cpu", schedule="constant")
    assert _loss(model, data) < before - 50
    assert [row["epoch"] for row in history] == [1, 2, 3] and "val_accuracy_amortised" in history[-1]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    run = tmp_path / "run"
    assert (run / "log.csv").is_file() and (run / "last.json").is_file() and (run / "final.json").is_file()
    assert len(list(run.glob("state-*.safetensors"))) == 2  # the newest model + optimizer state only
    assert not torch.equal(model.posterior_std, torch.ones(3, 2))  # calibrated on the training set
    with pytest.raises(TrainingError):
        fit(model, data, epochs=3, batch_size=12, out=run, progress=False, device="cpu")


def test_resumed_training_ends_with_the_same_weights(tmp_path):
    data = _class_data(8)
    straight = ABSClassifier(tiny(), seed=0)
    fit(straight, data, epochs=2, batch_size=8, lr=1e-2, out=tmp_path / "a", progress=False, device="cpu")
    resumed = ABSClassifier(tiny(), seed=0)
    fit(resumed, data, epochs=2, batch_size=8, lr=1e-2, out=tmp_path / "b", progress=False, device="cpu",
        max_steps=4)
    record = json.loads((tmp_path / "b" / "last.json").read_text())
    assert record["step"] == 4 and record["epoch"] == 1 and record["batch_in_epoch"] == 1
    again = ABSClassifier(tiny(), seed=0)
    fit(again, data, epochs=2, batch_size=8, lr=1e-2, out=tmp_path / "b", progress=False, device="cpu", resume=True)
    for (name, a), (_, b) in zip(straight.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    with pytest.raises(CheckpointError):
        fit(ABSClassifier(tiny(latent_dim=3)), data, epochs=2, batch_size=8, out=tmp_path / "b", progress=False,
            device="cpu", resume=True)


def test_save_load_round_trip_gives_identical_scores(tmp_path):
    model = ABSClassifier(tiny(), seed=0)
    model.posterior_std.fill_(0.3)
    path = save(model, tmp_path / "m", note="test")
    loaded = load(tmp_path / "m", device="cpu")
    assert loaded.config == model.config and loaded.manifest["info"]["note"] == "test"
    x = _images(2)
    with torch.no_grad():
        assert torch.equal(loaded.class_scores(x), model.class_scores(x))
    weights = tmp_path / "m.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(CheckpointError, match="sha256"):
        load(path)
    with pytest.raises(CheckpointError):
        load(tmp_path / "missing")


def test_publish_verify_and_artifacts_of_an_abs_model(tmp_path, fashion, monkeypatch):
    """zoo.publish ships an ABS model with its per-image artifacts; verify recomputes a sample and catches a
    tampered artifact; gclib.load, get_model, list_models and table_models know the family."""
    import gclib
    from gclib import evals, zoo

    train, _, test = fashion
    test = test.subset(16, seed=3)
    for name, value in (("ABS_TEST_N", 16), ("ABS_BPD_N", 4), ("ABS_SSIM_N", 3), ("ABS_OOD_N", 3), ("ABS_CHECK_N", 2)):
        monkeypatch.setattr(zoo, name, value)
    model = ABSClassifier(ABSConfig(width=4, n_prior_samples=32, n_steps=2, n_bound_samples=2), seed=0)
    fit(model, train.subset(64, 0), None, epochs=1, batch_size=32, out=tmp_path / "run", progress=False, device="cpu")
    assert isinstance(gclib.load(tmp_path / "run" / "final"), ABSClassifier)
    root = tmp_path / "ckpt"
    path = zoo.publish(tmp_path / "run", "tiny-abs", root=root, test=test)
    manifest = json.loads(path.read_text())
    record = manifest["info"]["test"]
    assert (record["n"], record["bits_per_dim_n"], record["ssim"]["n"], record["ood_n"]) == (16, 4, 3, 3)
    assert record["evaluations_per_image"] == 10 * (2 + 1 + 2) and record["bits_per_dim_kind"].startswith("upper")
    assert list(record["accuracy_by_step"]) == ["0", "1", "2"]
    t, art = evals.load(evals.path_of("tiny-abs", "abs-test", root=root), model_sha256=manifest["sha256"])
    assert int((t["predictions"] == t["labels"]).sum()) == record["correct"]
    assert t["reconstruction_mse"].shape == (16, 10) and (t["reconstruction_mse"] >= 0).all()
    ood, _ = evals.load(evals.path_of("tiny-abs", "abs-ood", root=root))
    assert ood["digits.scores"].shape == (3, 10)
    result = zoo.verify("tiny-abs", root=root, test=test)
    assert zoo._mismatches(result) == [] and result["measured"]["checked"] == 2, result
    assert zoo.list_models(root=root, family="abs") == ["tiny-abs"]
    assert isinstance(zoo.get_model("tiny-abs", root=root), ABSClassifier)
    (row,) = zoo.table_rows(zoo.model_rows(root=root))
    assert row["model"].startswith("GC (ABS") and row["n_test"] == 16 and row["evaluations_per_image"] == 50
    t["scores"] = t["scores"].flip(1).contiguous()  # a tampered artifact (stored with the right hashes) fails verification
    evals.save(evals.path_of("tiny-abs", "abs-test", root=root), t, model_sha256=art["model_sha256"],
               inputs=art["inputs"])
    assert zoo._mismatches(zoo.verify("tiny-abs", root=root, test=test))


def test_command_line_trains_resumes_and_evaluates(tmp_path, capsys):
    from gclib.abs import main

    args = ["--width", "4", "--latent-dim", "2", "--epochs", "1", "--train-subset", "256", "--max-steps", "2",
            "--out", str(tmp_path / "run"), "--no-progress", "--device", "cpu"]
    assert main(args) == 0
    assert main(args) == 2 and "already holds a training run" in capsys.readouterr().err
    assert main([*args, "--resume", "--eval-test", "3"]) == 0
    assert "test accuracy (ABS's rule)" in capsys.readouterr().out
    assert load(tmp_path / "run" / "final").config.latent_dim == 2
