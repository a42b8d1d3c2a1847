"""The diffusion classifier's rule: shared noise, the right answer on a denoiser with a known optimum, pruning."""

import csv
import functools
import json
import math

import pytest
import torch
from safetensors.torch import load_file

import gclib
from gclib.classifier import check_classifier, supports
from gclib.data import ImageDataset
from gclib.diffusion import (
    NETWORKS,
    DiffusionClassifier,
    NoiseBank,
    TinyUNet,
    VPSchedule,
    classify,
    denoising_errors,
    denoising_loss,
    fit,
    negative_elbo,
    negative_elbo_from_errors,
    sample_times,
)
from gclib.errors import InputError

SCHEDULE = VPSchedule()


class PointMassDenoiser(torch.nn.Module):
    """The optimal eps-predictor when class y's data is the single image means[y]: eps = (x_t - a mu_y) / s."""

    def __init__(self, means):
        super().__init__()
        self.register_buffer("means", means)
        self.calls = []

    def forward(self, xt, t, y):
        self.calls.append((xt.clone(), t.clone(), y.clone()))
        a = SCHEDULE.abar(t).sqrt().view(-1, 1, 1, 1)
        return (xt - a * self.means[y]) / SCHEDULE.sigma(t).view(-1, 1, 1, 1)


def _means(c=4, shape=(1, 4, 4), seed=0):
    return torch.rand((c, *shape), generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_schedule_is_ddpm_linear_on_its_grid_and_variance_preserving():
    t = torch.arange(1, 1001, dtype=torch.float64) / 1000
    abar = SCHEDULE.abar(t)
    beta_discrete = 1 - abar / torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    assert abs(float(beta_discrete[0]) - 1e-4) < 2e-5 and abs(float(beta_discrete[-1]) - 0.02) < 1e-3
    torch.testing.assert_close(abar + SCHEDULE.sigma(t) ** 2, torch.ones_like(t))


def test_noise_bank_is_stratified_seeded_and_prefixes_spread_out():
    bank = NoiseBank.make(16, (1, 4, 4), seed=3)
    assert sorted(bank.t.tolist()) == pytest.approx(sorted(((torch.arange(16) + 0.5) / 16 * 0.999 + 1e-3).tolist()))
    assert torch.equal(bank.eps, NoiseBank.make(16, (1, 4, 4), seed=3).eps)
    first4 = bank.prefix(4).t
    assert float(first4.min()) < 0.25 and float(first4.max()) > 0.5  # a prefix covers the range


def test_the_same_noise_is_used_for_every_class():
    means = _means()
    model = PointMassDenoiser(means)
    x = means[:2].clone()
    bank = NoiseBank.make(5, (1, 4, 4))
    denoising_errors(model, x, torch.arange(4).repeat(2, 1), bank, SCHEDULE)
    xt, t, y = (torch.cat(v) for v in zip(*model.calls))
    xt = xt.view(2, 4, 5, -1)
    for c in range(1, 4):  # every class sees exactly the same x_t for an image and pair
        assert torch.equal(xt[:, c], xt[:, 0])
    assert torch.equal(y.view(2, 4, 5)[0, :, 0], torch.arange(4))


def test_classification_rule_finds_the_class_of_a_known_optimum():
    means = _means()
    clf = DiffusionClassifier(PointMassDenoiser(means), 4, (1, 4, 4), n_pairs=20)
    x = (means + 1) / 2  # the class means as [0, 1] images
    scores = clf.class_scores(x)
    assert torch.equal(scores.argmax(1), torch.arange(4))
    # For the true class the optimal denoiser's error is exactly 0.
    torch.testing.assert_close(scores.diagonal(), torch.zeros(4), atol=1e-5, rtol=0)
    assert torch.equal(clf.predict(x), torch.arange(4))
    assert torch.equal(clf.predict(x, stages=((20, 1),)), torch.arange(4))
    torch.testing.assert_close(clf(x).exp().sum(1), torch.ones(4))


def test_pruning_never_drops_the_true_best_class_and_saves_evaluations():
    # errors_fn gives class c the error |c - best| + noise/(pairs): the best class wins at every stage.
    best = torch.tensor([3, 7, 0])
    g = torch.Generator().manual_seed(0)
    offsets = torch.rand(3, 10, generator=g) * 0.4

    def errors_fn(classes, n_pairs):
        return (classes - best[:, None]).abs().float() + offsets.gather(1, classes) / n_pairs

    pred, evals, _ = classify(errors_fn, 3, 10, stages=((4, 5), (16, 2), (64, 1)))
    assert torch.equal(pred, best)
    full_pred, full_evals, _ = classify(errors_fn, 3, 10, stages=((64, 1),))
    assert torch.equal(full_pred, best)
    assert torch.equal(full_evals, torch.full((3,), 640))
    assert torch.equal(evals, torch.full((3,), 10 * 4 + 5 * 12 + 2 * 48))  # prefixes reused
    assert (evals < 0.35 * full_evals).all()  # 196 of 640


def test_interface_and_errors():
    clf = DiffusionClassifier(TinyUNet(1, 3, width=8, emb=16), 3, (1, 28, 28), n_pairs=4, elbo_pairs=8)
    check_classifier(clf)
    assert clf.score_kind == "surrogate" and clf.evaluations_per_image == 12
    assert clf.density_kind == "bound" and supports(clf, "density")
    x = torch.rand(2, 1, 28, 28)
    assert clf.class_scores(x).shape == (2, 3) and clf(x).shape == (2, 3)
    scores, se = clf.elbo(x)
    assert scores.shape == se.shape == (2, 3) and (se > 0).all()
    torch.testing.assert_close(clf.log_px(x), torch.logsumexp(scores - math.log(3), 1))
    assert clf.bits_per_dim(x).shape == (2,)
    with pytest.raises(Exception, match=r"\[0, 1\]"):
        clf.class_scores(x + 2)
    bound = DiffusionClassifier(TinyUNet(1, 3, width=8, emb=16), 3, (1, 28, 28), weighting="elbo", elbo_pairs=8)
    check_classifier(bound)
    assert bound.score_kind == "bound" and bound.evaluations_per_image == 24
    elbo = DiffusionClassifier(PointMassDenoiser(_means()), 4, (1, 4, 4), n_pairs=8, weighting="elbo", elbo_pairs=16)
    y = torch.rand(2, 1, 4, 4)
    assert math.isfinite(float(elbo.class_scores(y).sum()))
    torch.testing.assert_close(elbo.class_scores(y), elbo.elbo(y)[0])
    with pytest.raises(InputError, match="weighting"):
        DiffusionClassifier(TinyUNet(1, 3, width=8, emb=16), 3, (1, 28, 28), weighting="mse")
    with pytest.raises(InputError, match="t_min"):
        DiffusionClassifier(TinyUNet(1, 3, width=8, emb=16), 3, (1, 28, 28), elbo_t_min=0.0)


# -- training -------------------------------------------------------------------------------------------
def _tiny_model(weighting="uniform", seed=0):
    torch.manual_seed(seed)
    return DiffusionClassifier(TinyUNet(1, 3, width=8, emb=16), 3, (1, 8, 8), n_pairs=8, weighting=weighting,
                               stages=((4, 2), (8, 1)), elbo_pairs=16)


def _tiny_dataset(n=48):
    # Three classes of 8x8 images: a bright left half, right half or centre, plus noise.
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 3
    x = 0.2 * torch.rand(n, 1, 8, 8, generator=g)
    x[y == 0, :, :, :4] += 0.7
    x[y == 1, :, :, 4:] += 0.7
    x[y == 2, :, 2:6, 2:6] += 0.7
    return ImageDataset((x.clamp(0, 1) * 255).round().to(torch.uint8), y)


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_a_few_training_steps_lower_the_loss_on_a_fixed_batch():
    model = _tiny_model()
    x, y = _tiny_dataset(16).batch(slice(None))

    @torch.no_grad()
    def fixed_loss():  # the same t, eps and dropout draws every time
        return float(denoising_loss(model, x, y, torch.Generator().manual_seed(1), class_dropout=0.1))

    before = fixed_loss()
    opt = torch.optim.Adam(model.denoiser.parameters(), lr=3e-3)
    for step in range(30):
        loss = denoising_loss(model, x, y, torch.Generator().manual_seed(100 + step), class_dropout=0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = fixed_loss()
    assert before == pytest.approx(1.0, abs=0.2)  # the zero-initialised output predicts eps = 0 at first
    assert after < 0.5 * before, (before, after)  # measured 1.08 -> 0.16


def test_discrete_time_uses_ddpm_grid():
    model = _tiny_model()
    seen = []
    model.denoiser.register_forward_pre_hook(lambda m, args: seen.append(args[1]))
    x, y = _tiny_dataset(16).batch(slice(None))
    denoising_loss(model, x, y, torch.Generator().manual_seed(0), time="discrete")
    t = seen[0] * model.schedule.steps
    torch.testing.assert_close(t, t.round())
    assert float(t.min()) >= 1 and float(t.max()) <= model.schedule.steps


def test_log_snr_time_samples_the_elbo_weighting():
    """t ~ -d lambda/dt on [t_min, 1]: lambda(t) uniform over the ELBO bank's range, and the sample mean of any
    f(t) estimates the ELBO-weighted integral of f (here f(t) = t, by quadrature)."""
    from scipy import integrate, stats

    from gclib.diffusion import LOG_SNR_T_MIN, _log_snr_range

    t = sample_times(SCHEDULE, 20_000, torch.Generator().manual_seed(0), time="log-snr", dtype=torch.float64)
    lo, hi = _log_snr_range(SCHEDULE, LOG_SNR_T_MIN)
    assert float(t.min()) >= LOG_SNR_T_MIN and float(t.max()) <= 1.0
    lam = SCHEDULE.log_snr(t)
    assert stats.kstest(((lam - lo) / (hi - lo)).numpy(), "uniform").pvalue > 0.01

    def weight(s):
        s = torch.tensor(s, dtype=torch.float64)
        return float(SCHEDULE.beta(s) / SCHEDULE.sigma(s) ** 2) / (hi - lo)

    mass = integrate.quad(weight, LOG_SNR_T_MIN, 1, limit=200, points=[0.01, 0.1])[0]
    mean_t = integrate.quad(lambda s: s * weight(s), LOG_SNR_T_MIN, 1, limit=200, points=[0.01, 0.1])[0]
    assert mass == pytest.approx(1.0, abs=1e-6)  # the density integrates to one
    assert float(t.mean()) == pytest.approx(mean_t, abs=4 * float(t.std()) / len(t) ** 0.5)
    continuous = sample_times(SCHEDULE, 20_000, torch.Generator().manual_seed(0))
    assert float(continuous.mean()) == pytest.approx(0.5, abs=0.01)  # the default stays uniform in t


def test_fit_warm_starts_from_a_checkpoint_and_records_it(tmp_path):
    data = _tiny_dataset()
    kwargs = dict(batch_size=16, ema_decay=0.9, device="cpu", progress=False)
    fit(_tiny_model(), data, epochs=1, lr=1e-3, out=tmp_path / "a", **kwargs)
    source = gclib.load(tmp_path / "a" / "final", device="cpu")
    # One step at a negligible rate from another initialisation and another reading of the network (noise
    # banks, pruning stages): the run starts from the source's network weights and keeps its own reading.
    torch.manual_seed(7)
    model = DiffusionClassifier(TinyUNet(1, 3, width=8, emb=16), 3, (1, 8, 8), n_pairs=4, stages=((4, 1),),
                                elbo_pairs=8, seed=3)
    fit(model, data, epochs=1, lr=1e-12, time="log-snr", out=tmp_path / "b", max_steps=1,
        init_from=tmp_path / "a" / "final", **kwargs)
    for (k, a), b in zip(source.denoiser.state_dict().items(), model.denoiser.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=k)
    torch.manual_seed(8)
    resumed = DiffusionClassifier(TinyUNet(1, 3, width=8, emb=16), 3, (1, 8, 8), n_pairs=4, stages=((4, 1),),
                                  elbo_pairs=8, seed=3)
    fit(resumed, data, epochs=1, lr=1e-12, time="log-snr", out=tmp_path / "b", resume=True,
        init_from=tmp_path / "nowhere", **kwargs)  # resuming: the state holds the weights, init_from is not read
    final = gclib.load(tmp_path / "b" / "final")
    assert final.spec() == model.spec() != source.spec()
    info = final.manifest["info"]
    assert info["time"] == "log-snr" and info["init_from"]["path"] == str(tmp_path / "a" / "final")
    assert info["init_from"]["sha256"] == source.manifest["sha256"] and info["init_from"]["steps"] == 3
    wide = DiffusionClassifier(TinyUNet(1, 3, width=16, emb=16), 3, (1, 8, 8), n_pairs=8, elbo_pairs=16)
    with pytest.raises(gclib.ConfigError, match="width"):
        fit(wide, data, epochs=1, out=tmp_path / "c", init_from=tmp_path / "a" / "final", **kwargs)


def test_fit_cosine_schedule_decays_to_zero_and_fixes_the_epochs(tmp_path):
    data = _tiny_dataset()  # 3 steps an epoch
    kwargs = dict(batch_size=16, lr=1e-3, ema_decay=0.9, device="cpu", progress=False, lr_schedule="cosine")
    fit(_tiny_model(), data, epochs=2, out=tmp_path / "a", **kwargs)
    rows = _read_csv(tmp_path / "a" / "log.csv")
    # the rate of each epoch's last step (2 and 5 of 6): lr (1 + cos(pi k / 6)) / 2
    expected = [1e-3 * 0.5 * (1 + math.cos(math.pi * k / 6)) for k in (2, 5)]
    assert [float(r["lr"]) for r in rows] == pytest.approx(expected, rel=1e-9)
    assert float(rows[-1]["lr"]) < 0.07 * 1e-3  # the last of 6 steps: (1 - cos(pi / 6)) / 2 = 0.067
    assert gclib.load(tmp_path / "a" / "final").manifest["info"]["lr_schedule"] == "cosine"
    with pytest.raises(gclib.ConfigError, match="other epochs"):  # a longer cosine would change every step's rate
        fit(_tiny_model(), data, epochs=3, out=tmp_path / "a", resume=True, **kwargs)
    # An occupied run folder is refused before a warm start's source is read (it does not exist here).
    with pytest.raises(gclib.TrainingError, match="already holds"):
        fit(_tiny_model(), data, epochs=2, out=tmp_path / "a", init_from=tmp_path / "nowhere", **kwargs)
    constant = fit(_tiny_model(), data, epochs=1, batch_size=16, lr=1e-3, device="cpu", progress=False,
                   out=tmp_path / "b")
    assert constant[0]["lr"] == 1e-3
    assert "lr_schedule" not in gclib.load(tmp_path / "b" / "final").manifest["info"]  # as the shipped runs


def test_fit_writes_log_and_final_and_resumes_to_the_same_state(tmp_path):
    data = _tiny_dataset()  # 48 images, batch 16: 3 steps an epoch
    kwargs = dict(epochs=2, batch_size=16, lr=1e-3, ema_decay=0.9, device="cpu", progress=False)
    model = _tiny_model()
    history = fit(model, data, data, out=tmp_path / "a", **kwargs)
    rows = _read_csv(tmp_path / "a" / "log.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"] and [r["step"] for r in rows] == ["3", "6"]
    assert {"epoch", "step", "lr", "train_loss", "val_loss", "train_images_per_s"} <= set(rows[0])
    assert all(math.isfinite(float(r["val_loss"])) for r in rows) and len(history) == 2
    final = gclib.load(tmp_path / "a" / "final", device="cpu")
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(final.class_scores(x), model.class_scores(x))  # the model ends with the EMA weights
    with pytest.raises(gclib.TrainingError, match="already holds"):
        fit(_tiny_model(), data, out=tmp_path / "a", **kwargs)
    with pytest.raises(gclib.ConfigError, match="other lr"):
        fit(_tiny_model(), data, out=tmp_path / "a", resume=True, **{**kwargs, "lr": 1e-2})

    # Interrupted after 4 steps (inside epoch 2), then resumed by a fresh process's worth of objects.
    fit(_tiny_model(), data, data, out=tmp_path / "b", max_steps=4, **kwargs)
    assert json.loads((tmp_path / "b" / "last.json").read_text())["batch_in_epoch"] == 1
    fit(_tiny_model(seed=5), data, data, out=tmp_path / "b", resume=True, **kwargs)
    a_rows, b_rows = rows, _read_csv(tmp_path / "b" / "log.csv")
    for key in ("epoch", "step", "train_loss", "val_loss"):
        assert [r[key] for r in a_rows] == [r[key] for r in b_rows]
    last_a, last_b = (json.loads((tmp_path / run / "last.json").read_text()) for run in "ab")
    files = [("final.safetensors",) * 2, (last_a["model"], last_b["model"]), (last_a["optimizer"], last_b["optimizer"]),
             (last_a["extra"]["ema"]["file"], last_b["extra"]["ema"]["file"])]
    for name_a, name_b in files:
        wa, wb = load_file(str(tmp_path / "a" / name_a)), load_file(str(tmp_path / "b" / name_b))
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), name_a
    assert last_a["optimizer_scalars"] == last_b["optimizer_scalars"]


@pytest.mark.parametrize("bad, match", [
    ({"epochs": 0}, "epochs"), ({"batch_size": 1000}, "smaller than one batch"), ({"lr": -1.0}, "lr"),
    ({"ema_decay": 1.0}, "ema_decay"), ({"class_dropout": 1.5}, "class_dropout"), ({"time": "log"}, "time"),
    ({"max_steps": 0}, "max_steps"), ({"out": None}, "out"), ({"lr_schedule": "linear"}, "lr_schedule"),
])
def test_fit_bad_arguments_give_one_clear_error(tmp_path, bad, match):
    kwargs = {"epochs": 1, "batch_size": 16, "out": tmp_path / "run", "device": "cpu", "progress": False, **bad}
    with pytest.raises(gclib.ConfigError, match=match):
        fit(_tiny_model(), _tiny_dataset(), **kwargs)
    assert not (tmp_path / "run" / "last.json").exists()


class _PlainDenoiser(torch.nn.Module):
    """A denoiser without a null class (no unconditional embedding)."""

    def __init__(self, in_channels=1):
        super().__init__()
        self.config = {"in_channels": in_channels}
        self.conv = torch.nn.Conv2d(in_channels, in_channels, 3, padding=1)

    def forward(self, xt, t, y):
        return self.conv(xt)


def test_fit_without_a_null_class_trains_without_class_dropout(tmp_path, monkeypatch):
    monkeypatch.setitem(NETWORKS, "_PlainDenoiser", _PlainDenoiser)
    model = DiffusionClassifier(_PlainDenoiser(), 3, (1, 8, 8), n_pairs=2, elbo_pairs=2)
    with pytest.warns(UserWarning, match="without class dropout"):
        fit(model, _tiny_dataset(), epochs=1, batch_size=16, out=tmp_path, device="cpu", progress=False)
    assert gclib.load(tmp_path / "final").manifest["info"]["class_dropout"] == 0.0
    with pytest.raises(gclib.ConfigError, match="null_class"):
        denoising_loss(model, *_tiny_dataset(4).batch(slice(None)), class_dropout=0.1)
    monkeypatch.delitem(NETWORKS, "_PlainDenoiser")
    with pytest.raises(gclib.ConfigError, match="NETWORKS"):  # refused before training: it could not be saved
        fit(model, _tiny_dataset(), epochs=1, batch_size=16, out=tmp_path / "2", progress=False)


def test_fit_refuses_other_models_and_images_of_another_size(tmp_path):
    with pytest.raises(gclib.ConfigError, match="DiffusionClassifier"):
        fit(torch.nn.Linear(2, 2), _tiny_dataset(), epochs=1, out=tmp_path)
    wide = ImageDataset(torch.zeros(32, 1, 4, 4, dtype=torch.uint8), torch.zeros(32, dtype=torch.long))
    with pytest.raises(gclib.ConfigError, match=r"\(1, 8, 8\)"):
        fit(_tiny_model(), wide, epochs=1, batch_size=16, out=tmp_path)


# -- the ELBO ---------------------------------------------------------------------------------------------
def gaussian_eps(s):
    """The optimal noise predictor for data x ~ N(0, s^2 I): sqrt(1 - abar) x_t / (abar s^2 + 1 - abar)."""

    def eps(xt, t, y=None):
        shape = (-1,) + (1,) * (xt.dim() - 1)
        abar = SCHEDULE.abar(t).view(shape)
        return (1 - abar).sqrt() * xt / (abar * s**2 + 1 - abar)

    return eps


def _gaussian_case(s=0.5, n=16, shape=(1, 28, 28)):
    x = s * torch.randn(n, *shape, generator=torch.Generator().manual_seed(0))
    d = math.prod(shape)
    nll = 0.5 * d * math.log(2 * math.pi * s**2) + 0.5 * x.flatten(1).square().sum(1) / s**2
    return x, nll, d


@pytest.mark.parametrize("pairs", [1000, 100_000])
def test_elbo_of_the_optimal_denoiser_bounds_the_gaussian_nll_tightly(pairs):
    # The expectation over the noise (in closed form here) on the bank's log-SNR points: only the bound's own gap
    # remains (the decoder's, ~ sigma(t_min)^2 / (2 s^2) = 2.2e-4 nats/dim) and the strata's placement (T = 1000).
    s = 0.5
    x, nll, d = _gaussian_case(s)
    t = NoiseBank.log_snr_strata(pairs, (1,), SCHEDULE, seed=0).t.double()
    abar = SCHEDULE.abar(t)
    v = abar * s**2 + 1 - abar
    expected_error = (abar * s**2 / v) ** 2 + (1 - abar) * abar * x.double().flatten(1).square().mean(1, True) / v**2
    bound, _ = negative_elbo_from_errors(expected_error[:, None], x.double(), SCHEDULE)
    gap = (bound[:, 0] - nll) / d
    assert (gap >= 0).all() and (gap < 3e-4).all(), gap  # measured 1.2e-4 .. 1.7e-4 (T = 1000), 1.9e-4 .. 2.3e-4


def test_elbo_estimate_with_a_noise_bank_of_t_1000_pairs():
    s = 0.5
    x, nll, d = _gaussian_case(s)
    bank = NoiseBank.log_snr_strata(SCHEDULE.steps, x.shape[1:], SCHEDULE, seed=0)
    bound, se = negative_elbo(gaussian_eps(s), x, torch.zeros(len(x), 1, dtype=torch.long), bank, SCHEDULE)
    gap = (bound[:, 0] - nll) / d
    # Measured: gap 1.8e-3 nats/dim on average, 7.3e-3 at most; the standard error 9e-3 nats/dim per image (the noise
    # is shared by the images, so their gaps are correlated and their mean is no more precise).
    assert (gap.abs() < 3 * se[:, 0] / d).all()
    assert float(gap.abs().max()) < 0.01
    # The standard error is that of the noise: it matches the spread over banks of other seeds.
    one, nll_one = x[:1], nll[:1]
    estimates = torch.stack([negative_elbo(gaussian_eps(s), one, torch.zeros(1, 1, dtype=torch.long),
                                           NoiseBank.log_snr_strata(SCHEDULE.steps, x.shape[1:], SCHEDULE, seed=k),
                                           SCHEDULE)[0][0, 0] for k in range(1, 13)])
    assert 0.6 < float(estimates.std() / se[0, 0]) < 1.6
    assert abs(float(estimates.mean() - nll_one[0])) < 3 * float(se[0, 0])


def test_log_snr_bank_covers_t_min_to_one_stratified():
    bank = NoiseBank.log_snr_strata(50, (1, 2, 2), SCHEDULE, seed=3, t_min=1e-3)
    lam = SCHEDULE.log_snr(bank.t.double())
    lo, hi = SCHEDULE.log_snr(torch.tensor([1.0, 1e-3], dtype=torch.float64))
    stratum = ((hi - lam) / (hi - lo) * 50).floor()
    assert torch.equal(stratum, torch.arange(50, dtype=torch.float64))  # one point in each stratum, sorted by t
    t = torch.linspace(1e-3, 1, 7, dtype=torch.float64)
    torch.testing.assert_close(SCHEDULE.t_from_log_snr(SCHEDULE.log_snr(t)), t)
    assert torch.equal(bank.eps, NoiseBank.log_snr_strata(50, (1, 2, 2), SCHEDULE, seed=3).eps)


def test_command_line_trains_resumes_and_evaluates(tmp_path, capsys, fashion):
    from gclib.diffusion import main

    args = ["--width", "8", "--emb", "8", "--epochs", "1", "--batch-size", "16", "--train-subset", "64",
            "--n-pairs", "4", "--out", str(tmp_path / "run"), "--no-progress", "--device", "cpu"]
    assert main([*args, "--max-steps", "2"]) == 0
    assert (tmp_path / "run" / "last.json").exists()  # stopped inside the epoch: the state is saved
    assert main([*args, "--resume", "--eval-test", "6", "--eval-bpd", "1"]) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and "/6)" in out and "bits/dim (ELBO, an upper bound)" in out
    model = gclib.load(tmp_path / "run" / "final")
    assert model.family == "diffusion" and model.manifest["info"]["steps"] == 4
    assert main([*args]) == 2  # a fresh run into a folder that holds one: one clear error
    assert "resume" in capsys.readouterr().err
    warm = [*args[:-5], "--out", str(tmp_path / "warm"), "--no-progress", "--device", "cpu", "--max-steps", "1",
            "--time", "log-snr", "--init-from", str(tmp_path / "run" / "final")]
    assert main(warm) == 0
    info = gclib.load(tmp_path / "warm" / "final").manifest["info"]
    assert info["time"] == "log-snr" and info["init_from"]["steps"] == 4


def test_pruned_rule_does_only_the_work_it_counts_and_matches_the_error_matrix():
    from gclib.diffusion import classify_from_errors

    means = _means(c=5, seed=1)
    den = PointMassDenoiser(means)
    clf = DiffusionClassifier(den, 5, (1, 4, 4), n_pairs=12, stages=((3, 3), (6, 2), (12, 1)))
    x = ((means + 1) / 2 + 0.3 * torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    den.calls.clear()
    pred, evaluations = clf.predict_with_evaluations(x)
    assert sum(len(c[2]) for c in den.calls) == int(evaluations.sum())  # every counted evaluation, no more
    assert torch.equal(evaluations, torch.full((5,), 5 * 3 + 3 * 3 + 2 * 6))
    errors = clf.error_matrix(x)
    assert errors.shape == (5, 5, 12)
    p2, e2 = classify_from_errors(errors, clf.stages)
    assert torch.equal(p2, pred) and torch.equal(e2, evaluations)
    full, full_e = classify_from_errors(errors, ((12, 1),))
    assert torch.equal(full, clf.class_scores(x).argmax(1)) and torch.equal(full_e, torch.full((5,), 60))


def test_command_line_run_can_be_saved_and_loaded_as_a_module(tmp_path):
    """`python -m gclib.diffusion` (a fresh process, the module is __main__) writes a loadable final model."""
    import subprocess
    import sys

    run = tmp_path / "run"
    out = subprocess.run([sys.executable, "-m", "gclib.diffusion", "--width", "8", "--emb", "8", "--epochs", "1",
                          "--batch-size", "16", "--train-subset", "32", "--n-pairs", "4", "--out", str(run),
                          "--no-progress", "--device", "cpu"], check=False, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert gclib.load(run / "final").family == "diffusion"


def test_publish_verify_and_artifacts_of_a_diffusion_model(tmp_path, fashion):
    """zoo.publish ships a diffusion model with its per-image artifacts; verify recomputes a sample of them
    and catches an artifact that does not match; table_models gets a row for it."""
    from gclib import evals, zoo
    from gclib.errors import CheckpointError

    train, _, test = fashion
    test = test.subset(24, seed=3)
    torch.manual_seed(0)
    model = DiffusionClassifier(TinyUNet(1, 10, width=8, emb=8), 10, (1, 28, 28), n_pairs=6,
                                stages=((2, 3), (6, 1)), elbo_pairs=4)
    fit(model, train.subset(64, 0), None, epochs=1, batch_size=32, out=tmp_path / "run", progress=False)
    root = tmp_path / "ckpt"
    path = zoo.publish(tmp_path / "run", "tiny-diffusion", root=root, test=test)
    record = json.loads(path.read_text())["info"]["test"]
    assert record["n"] == record["errors_n"] == record["bits_per_dim_n"] == 24
    assert record["evaluations_per_image"] < record["unpruned_evaluations_per_image"] == 60
    assert record["bits_per_dim_kind"] == "upper bound (ELBO)"
    t, manifest = evals.load(evals.path_of("tiny-diffusion", "test", root=root))
    assert int((t["predictions"] == t["labels"]).sum()) == record["correct"]
    assert manifest["inputs"]["n"] == 24 and manifest["model_sha256"] == json.loads(path.read_text())["sha256"]
    result = zoo.verify("tiny-diffusion", root=root, test=test)
    assert zoo._mismatches(result) == [], result
    assert zoo.list_models(root=root, family="diffusion") == ["tiny-diffusion"]
    assert isinstance(zoo.get_model("tiny-diffusion", root=root), DiffusionClassifier)
    (row,) = zoo.table_rows(zoo.model_rows(root=root))
    assert row["model"].startswith("GC (diffusion") and row["n_test"] == 24 and row["paper_imagenet_top1_pct"] == ""
    # an artifact of other weights is refused; a tampered one fails verification
    with pytest.raises(CheckpointError, match="other weights"):
        evals.load(evals.path_of("tiny-diffusion", "test", root=root), model_sha256="0" * 64)
    t["predictions"] = (t["predictions"] + 1) % 10
    evals.save(evals.path_of("tiny-diffusion", "test", root=root), t, model_sha256=manifest["model_sha256"],
               inputs=manifest["inputs"])
    assert zoo._mismatches(zoo.verify("tiny-diffusion", root=root, test=test))


def test_elbo_weighted_scores_weight_each_pair_by_minus_dlambda_dt():
    """Errors equal to a_c sigma(t)^2 / beta(t) make every weighted pair equal to a_c: the class term is then
    exactly -D/2 (t range) a_c, and the ranking the reverse of a_c's, whatever the unweighted mean says."""
    from gclib.diffusion import NoiseBank, VPSchedule, elbo_weighted_scores

    schedule = VPSchedule()
    t = NoiseBank.make(16, (1, 2, 2), seed=0).t.double()
    a = torch.tensor([3.0, 1.0, 2.0], dtype=torch.float64)
    errors = a[None, :, None] * (schedule.sigma(t) ** 2 / schedule.beta(t))[None, None, :]  # [1, 3, 16]
    scores = elbo_weighted_scores(errors, t, schedule, dims=4)
    torch.testing.assert_close(scores, -0.5 * 4 * float(t.max() - t.min()) * a[None])
    assert scores.argmax(1).item() == 1 and scores.dtype == torch.float64
    with pytest.raises(gclib.InputError, match=r"\[B, C, N\]"):
        elbo_weighted_scores(errors[:, :, :5], t, schedule, dims=4)


def test_the_gradient_through_the_classifier_is_recomputed_batch_by_batch_and_exact(monkeypatch):
    """The attacks' gradient runs through C x pairs network evaluations: denoising_errors checkpoints each batch
    (torch.utils.checkpoint), and the gradient equals the one autograd gives when it keeps every activation."""
    import torch.utils.checkpoint as ckpt

    from gclib import diffusion

    model = _tiny_model().eval()
    with torch.no_grad():  # a fresh U-Net's output layer starts at zero: give the input something to move
        for p in model.denoiser.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.rand(3, 1, 8, 8)
    calls = []
    real = ckpt.checkpoint

    def counting(fn, *args, **kw):
        calls.append(len(args[0]))
        return real(fn, *args, **kw)

    def gradient():
        xx = x.clone().requires_grad_(True)
        loss = torch.nn.functional.nll_loss(model(xx), torch.tensor([0, 1, 2]))
        return torch.autograd.grad(loss, xx)[0]

    monkeypatch.setattr(ckpt, "checkpoint", counting)
    monkeypatch.setattr(diffusion, "denoising_errors", functools.partial(diffusion.denoising_errors, batch_size=16))
    remat = gradient()
    assert sum(calls) == 3 * 3 * 8 and max(calls) == 16  # every evaluation, in batches
    monkeypatch.setattr(ckpt, "checkpoint", lambda fn, *args, **kw: fn(*args))  # keep every activation
    kept = gradient()
    assert remat.abs().max() > 0 and torch.allclose(remat, kept, rtol=1e-5, atol=1e-7)
    calls.clear()
    with torch.no_grad():  # no gradient wanted: no checkpointing
        monkeypatch.setattr(ckpt, "checkpoint", counting)
        model(x)
    assert calls == []
