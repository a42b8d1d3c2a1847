"""gclib.attribution: completeness of the GC's attributions, and deletion/insertion on a model with known answers."""

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

import gclib
from gclib import attribution
from gclib.errors import InputError

from .conftest import randomize, tiny_config


class Linear(nn.Module):
    """Two classes on 1x2x2 images: logit_0 = w . x, logit_1 = 0, so the margin is w . x."""

    def __init__(self, w):
        super().__init__()
        self.fc = nn.Linear(4, 2, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.stack([torch.as_tensor(w, dtype=torch.float32), torch.zeros(4)]))

    def forward(self, x):
        return self.fc(x.flatten(1))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The models here are tiny (4 pixels to 16): thread start-up would dominate, so run them on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


W = [3.0, 2.0, 1.0, -1.0]  # with x = 1 and baseline 0 the exact attributions are W itself


@pytest.fixture(scope="module")
def linear():
    return Linear(W), torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), torch.tensor([0]), torch.tensor([1])


@pytest.fixture(scope="module")
def tiny_gc():
    return randomize(gclib.GenerativeClassifier.from_config(tiny_config(), seed=0), scale=0.1, seed=1).eval()


def test_gc_margin_is_the_log_likelihood_ratio_and_integrated_gradients_are_complete(tiny_gc):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 4, 4, generator=g)
    baseline = torch.full((1, 1, 4, 4), 0.5)
    top, runner = attribution.decision_pair(tiny_gc, x, batch_size=4)
    cll = tiny_gc.class_log_likelihoods(x).detach()
    assert torch.equal(top, cll.argmax(1))
    assert bool((cll.gather(1, runner[:, None]) <= cll.gather(1, top[:, None])).all())
    llr = cll.gather(1, top[:, None])[:, 0] - cll.gather(1, runner[:, None])[:, 0]
    f = attribution.margin(tiny_gc, x, top, runner)
    torch.testing.assert_close(f, llr, rtol=1e-5, atol=1e-4)
    logits = tiny_gc(x).detach()  # the GC's logits (log-posterior): their difference is the same ratio
    torch.testing.assert_close(f, logits.gather(1, top[:, None])[:, 0] - logits.gather(1, runner[:, None])[:, 0],
                               rtol=1e-4, atol=1e-3)
    errors = {}
    for steps in (4, 64):
        a, delta = attribution.attribute(tiny_gc, x, "integrated_gradients", baseline, top, runner, n_steps=steps,
                                         batch_size=4, return_delta=True)
        gap = attribution.completeness_gap(tiny_gc, x, a, baseline, top, runner)
        # completeness within captum's delta: the sum of attributions misses f(x) - f(b) by exactly the delta
        torch.testing.assert_close(gap.float(), delta, rtol=1e-3, atol=1e-4)
        errors[steps] = float((gap.abs() / (f - attribution.margin(tiny_gc, baseline.expand_as(x), top, runner))
                               .abs().double()).max())
    assert errors[64] < 1e-3 and errors[64] < errors[4]


def test_captum_methods_are_exact_on_a_linear_model(linear):
    model, x, b, top, runner = linear
    expected = torch.tensor(W).view(1, 1, 2, 2)
    for method in ("integrated_gradients", "input_x_gradient"):
        a = attribution.attribute(model, x, method, b, top, runner, n_steps=3)
        torch.testing.assert_close(a, expected)
    torch.testing.assert_close(attribution.attribute(model, x, "saliency", b, top, runner), expected.abs())


def test_deletion_and_insertion_on_a_linear_model_match_the_hand_computed_curves(linear):
    model, x, b, top, runner = linear
    exact = torch.tensor(W).view(1, 1, 2, 2)
    curves = attribution.perturbation_curves(model, x, exact, b, top, runner, steps=4)
    np.testing.assert_allclose(curves["fraction"], [0, 0.25, 0.5, 0.75, 1])
    # delete 3, then 2, then 1, then -1 from f(x) = 5; insert them in the same order onto f(b) = 0
    np.testing.assert_allclose(curves["deletion"], [[5, 2, 0, -1, 0]], atol=1e-6)
    np.testing.assert_allclose(curves["insertion"], [[0, 3, 5, 6, 5]], atol=1e-6)
    assert attribution.auc(curves["deletion"], curves["fraction"])[0] == pytest.approx(0.25 * (2.5 + 2 + 0 - 1 + 0))
    sig = [1 / (1 + math.exp(-v)) for v in (5, 2, 0, -1, 0)]
    prob_auc = 0.25 * (sig[0] / 2 + sig[1] + sig[2] + sig[3] + sig[4] / 2)
    assert attribution.auc(attribution.decision_probability(curves["deletion"]), curves["fraction"])[0] == \
        pytest.approx(prob_auc, abs=1e-9)


def test_exact_attributions_give_the_best_curves_and_the_reversed_order_the_worst(linear):
    model, x, b, top, runner = linear
    aucs = {}
    for perm in itertools.permutations(range(4)):  # every order of the four pixels
        a = -torch.tensor(perm, dtype=torch.float32).view(1, 1, 2, 2)  # pixel p is taken in place perm[p]
        c = attribution.perturbation_curves(model, x, a, b, top, runner, steps=4)
        d = attribution.auc(attribution.decision_probability(c["deletion"]), c["fraction"])[0]
        i = attribution.auc(attribution.decision_probability(c["insertion"]), c["fraction"])[0]
        aucs[perm] = (d, i)
    exact, reversed_ = (0, 1, 2, 3), (3, 2, 1, 0)  # W's order (3, 2, 1, -1) and its reverse
    deletions, insertions = [v[0] for v in aucs.values()], [v[1] for v in aucs.values()]
    assert aucs[exact][0] == min(deletions) and aucs[exact][0] < sorted(deletions)[1]  # the unique best
    assert aucs[reversed_][0] == pytest.approx(max(deletions))
    assert aucs[exact][1] == pytest.approx(max(insertions)) and aucs[reversed_][1] == pytest.approx(min(insertions))
    assert aucs[exact][0] < aucs[reversed_][0] and aucs[exact][1] > aucs[reversed_][1]


def test_output_shapes_and_orders(tiny_gc):
    x = torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    b = torch.zeros(1, 1, 4, 4)
    top, runner = attribution.decision_pair(tiny_gc, x)
    assert top.shape == runner.shape == (5,) and bool((top != runner).all())
    for method in attribution.METHODS:
        assert attribution.attribute(tiny_gc, x, method, b, top, runner, n_steps=2, batch_size=2).shape == x.shape
    a = attribution.random_attribution(x, seed=3)
    assert a.shape == x.shape and torch.equal(a, attribution.random_attribution(x, seed=3))
    order = attribution.pixel_order(a)
    assert order.shape == (5, 16) and bool((order.sort(1).values == torch.arange(16)).all())
    flat = a.flatten(1)
    assert bool((flat.gather(1, order).diff(dim=1) <= 0).all())  # decreasing attribution
    ties = attribution.pixel_order(torch.zeros(2, 1, 4, 4), seed=0)  # equal attributions: a seeded random order
    assert not torch.equal(ties[0], torch.arange(16)) and torch.equal(ties, attribution.pixel_order(
        torch.zeros(2, 1, 4, 4), seed=0))
    c = attribution.perturbation_curves(tiny_gc, x, a, b, top, runner, steps=3, batch_size=7)
    assert c["deletion"].shape == c["insertion"].shape == (5, 4) and c["fraction"].shape == (4,)
    f_x = attribution.margin(tiny_gc, x, top, runner).double().numpy()
    np.testing.assert_allclose(c["deletion"][:, 0], f_x, rtol=1e-6)
    np.testing.assert_allclose(c["insertion"][:, -1], f_x, rtol=1e-6)
    np.testing.assert_allclose(c["deletion"][:, -1], c["insertion"][:, 0], rtol=1e-6)


def test_faithfulness_study_is_the_methods_and_curves_put_together(tiny_gc):
    x = torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(4))
    b = torch.full((1, 1, 4, 4), 0.5)
    study = attribution.faithfulness_study(tiny_gc, x, b, n_steps=4, steps=4, batch_size=3, seed=2)
    top, runner = attribution.decision_pair(tiny_gc, x)
    assert torch.equal(study["top"], top) and torch.equal(study["runner"], runner)
    assert list(study["curves"]) == list(study["maps"]) == list(attribution.STUDY_METHODS)
    ig, delta = attribution.attribute(tiny_gc, x, "integrated_gradients", b, top, runner, n_steps=4, batch_size=3,
                                      return_delta=True)
    torch.testing.assert_close(study["maps"]["integrated_gradients"], ig)
    torch.testing.assert_close(study["delta"], delta)
    assert torch.equal(study["maps"]["random"], attribution.random_attribution(x, 2))
    for method in attribution.STUDY_METHODS:
        want = attribution.perturbation_curves(tiny_gc, x, study["maps"][method], b, top, runner, 4, 3, 2)
        np.testing.assert_allclose(study["curves"][method]["deletion"], want["deletion"], rtol=1e-6)
        np.testing.assert_allclose(study["sums"][method], study["maps"][method].double().flatten(1).sum(1).numpy())
    assert set(study["gaps"]) == set(attribution.COMPLETE_METHODS)
    np.testing.assert_allclose(study["gaps"]["integrated_gradients"], delta.double().numpy(), rtol=1e-3, atol=1e-3)
    assert "maps" not in attribution.faithfulness_study(tiny_gc, x[:2], b, n_steps=2, steps=2, keep_maps=False)


def test_faithfulness_row_and_example_rule():
    big = 60.0  # margins of +-60 nats: decision probabilities 1 and 0 to 1e-26
    curves = {"fraction": np.array([0.0, 0.5, 1.0]),
              "deletion": np.array([[big, -big, -big], [big, big, -big]]),  # AUCs 0.25 and 0.75
              "insertion": np.array([[-big, big, big], [-big, -big, big]])}  # AUCs 0.75 and 0.25
    row = attribution.faithfulness_row("m", "saliency", curves, completeness=[0.1, -0.3])
    assert row["deletion_auc"] == 0.5 and row["deletion_sem"] == 0.25 and row["n"] == 2
    assert row["difference"] == 0.0 and row["difference_sem"] == 0.5 and row["completeness_gap"] == 0.2
    assert row["flipped_pct"] == 50.0 and row["flipped_se"] == pytest.approx(100 * math.sqrt(0.25 / 2), abs=0.05)
    assert set(row) == set(attribution.FAITHFULNESS_HEADERS)
    correct = torch.tensor([[True, True], [False, True], [True, False], [True, True], [False, False]])
    picked = attribution.pick_examples(correct, n_correct=2, seed=0)
    assert len(picked) == 3 and all(bool(correct[i].all()) for i in picked[:2]) and not bool(correct[picked[2], 0])
    assert picked == attribution.pick_examples(correct, n_correct=2, seed=0)
    with pytest.raises(InputError, match="found 2"):
        attribution.pick_examples(correct, n_correct=3)


def test_bad_input_raises_input_error(linear):
    model, x, b, top, runner = linear
    with pytest.raises(InputError, match="unknown attribution method"):
        attribution.attribute(model, x, "lime", b, top, runner)
    with pytest.raises(InputError, match="baseline"):
        attribution.attribute(model, x, "saliency", torch.zeros(1, 1, 3, 3), top, runner)
    with pytest.raises(InputError, match="must differ"):
        attribution.attribute(model, x, "saliency", b, top, top)
    with pytest.raises(InputError, match=r"\[N, C, H, W\]"):
        attribution.attribute(model, x[0], "saliency", b, top, runner)
    with pytest.raises(InputError, match="class indices"):
        attribution.attribute(model, x, "saliency", b, top, torch.tensor([5]))
    with pytest.raises(InputError, match="class indices"):
        attribution.margin(model, x, top, torch.tensor([-1]))
    with pytest.raises(InputError, match="delta"):
        attribution.attribute(model, x, "saliency", b, top, runner, return_delta=True)
    with pytest.raises(InputError, match="n_steps"):
        attribution.attribute(model, x, "integrated_gradients", b, top, runner, n_steps=0)
    with pytest.raises(InputError, match="steps"):
        attribution.perturbation_curves(model, x, x, b, top, runner, steps=0)
    with pytest.raises(InputError, match="shape of x"):
        attribution.perturbation_curves(model, x, torch.zeros(1, 1, 3, 3), b, top, runner)
    with pytest.raises(InputError, match="one class per image"):
        attribution.margin(model, x, torch.tensor([0, 1]), torch.tensor([1, 0]))
    with pytest.raises(InputError, match="fractions"):
        attribution.auc(np.zeros((2, 3)), [0.0, 1.0])
    with pytest.raises(InputError, match="NaN"):
        attribution.auc([[0.0, np.nan]], [0.0, 1.0])
