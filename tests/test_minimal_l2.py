"""gclib.attacks.minimal_l2 / median_l2: HopSkipJump and FMN (foolbox) against a linear classifier whose minimal
L2 adversarial distance is known in closed form, the bookkeeping (misclassified, queries, budget), the median."""

import math

import pytest
import torch
from torch import nn

from gclib import attacks
from gclib.abs import ABSClassifier, ABSConfig
from gclib.errors import InputError

torch.set_num_threads(1)


def linear_problem(n: int = 4, seed: int = 0):
    """A two-class nn.Linear on 1x28x28 images and n images in the middle of the box, both classes.

    The logit difference is w . x + b with b = -w . 0.5 (uniform noise falls on either side), so the minimal
    L2 perturbation that flips an image is |w . x + b| / ||w||, set here to t in [0.4, 0.8]: each pixel moves by
    at most ~0.1, far from the box's walls, which therefore do not bind.
    """
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(784, generator=g)
    b = -0.5 * float(w.sum())
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 2))
    with torch.no_grad():
        net[1].weight.copy_(torch.stack([w / 2, -w / 2]))
        net[1].bias.copy_(torch.tensor([b / 2, -b / 2]))
    u = w / w.norm()
    x = 0.5 + 0.1 * (2 * torch.rand(n, 784, generator=g) - 1)
    t = (0.4 + 0.4 * torch.rand(n, generator=g)) * torch.tensor([1.0, -1.0]).repeat(n)[:n]
    x = x + (t - (x - 0.5) @ u)[:, None] * u  # now w . x + b = t ||w||
    x = x.view(n, 1, 28, 28)
    assert 0.05 < float(x.min()) and float(x.max()) < 0.95
    exact = ((x.flatten(1) @ w + b).abs() / w.norm()).double()
    y = (x.flatten(1) @ w + b < 0).long()  # class 0 where the logit difference is positive
    return net.eval(), x, y, exact


@pytest.mark.parametrize("method,steps", [("hsj", 40), ("fmn", 30)])
def test_both_attacks_find_the_closed_form_distance_of_a_linear_classifier(method, steps):
    model, x, y, exact = linear_problem()
    with torch.no_grad():
        assert torch.equal(model(x).argmax(1), y)
    result = attacks.minimal_l2(model, x, y, method, steps, seed=0, batch_size=4)
    assert not result.misclassified.any() and not result.failed.any()
    assert (result.distance >= exact - 1e-4).all()  # nothing is closer than the boundary
    assert (result.distance <= 1.1 * exact).all(), (result.distance / exact).tolist()
    with torch.no_grad():
        assert (model(result.x_adv).argmax(1) != y).all()
    torch.testing.assert_close((result.x_adv - x).flatten(1).norm(dim=1).double(), result.distance)
    # the attack starts from a misclassified point further out and only shrinks it
    assert (result.start_distance > 2 * result.distance).all() and torch.isfinite(result.start_distance).all()
    assert all(p.grad is None for p in model.parameters()) and all(p.requires_grad for p in model.parameters())
    if method == "fmn":  # one backward pass per step; besides them the clean classification, the start's
        # draws and check, foolbox's 10-pass binary search from the start, and the final check
        assert result.gradients.tolist() == [steps] * 4 and (result.queries >= steps + 2 + 1 + 10).all()
    else:  # the gradient estimates alone take sum_t 100 sqrt(t) label queries
        estimates = sum(int(100 * math.sqrt(t)) for t in range(1, steps + 1))
        assert (result.queries >= estimates).all() and (result.queries < 1.2 * estimates).all()
        assert (result.gradients == 0).all()
    assert result.settings["steps"] == steps and result.settings["foolbox"] == "3.3.4"


def test_misclassified_images_are_flagged_not_attacked_and_the_budget_holds():
    model, x, y, exact = linear_problem(n=3, seed=1)
    y_bad = y.clone()
    y_bad[1] = 1 - y_bad[1]  # the model gets image 1 "wrong"
    result = attacks.minimal_l2(model, x, y_bad, "hsj", 40, max_queries=800, seed=0)
    assert result.misclassified.tolist() == [False, True, False]
    assert math.isinf(result.distance[1]) and not result.failed[1] and result.queries[1] == 1
    assert math.isinf(result.start_distance[1])  # not attacked: no start
    assert torch.equal(result.x_adv[1], x[1])
    assert (result.queries <= 800).all() and (result.queries[[0, 2]] > 700).all()  # stopped by the cap
    assert torch.isfinite(result.distance[[0, 2]]).all()  # the best point so far is kept
    assert (result.distance[[0, 2]] >= exact[[0, 2]] - 1e-4).all()
    again = attacks.minimal_l2(model, x, y_bad, "hsj", 40, max_queries=800, seed=0)
    assert torch.equal(again.distance, result.distance)  # seeded
    capped = attacks.minimal_l2(model, x, y, "fmn", 50, max_queries=30, options={"init_draws": 5})
    assert (capped.queries <= 30).all() and (capped.gradients < 30).all() and (capped.gradients > 0).all()


def test_an_image_without_a_misclassified_start_fails_with_inf():
    # every input is class 0 (the weights are 0, the bias decides): no start, no adversarial
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 2)).eval()
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([1.0, 0.0]))
    x, y = torch.full((2, 1, 28, 28), 0.5), torch.zeros(2, dtype=torch.long)
    for method in ("hsj", "fmn"):
        result = attacks.minimal_l2(model, x, y, method, 5, options={"init_draws": 3})
        assert result.failed.all() and torch.isinf(result.distance).all() and not result.misclassified.any()
        assert torch.isinf(result.start_distance).all()
        assert torch.equal(result.x_adv, x)
        assert result.queries.tolist() == [1 + 3] * 2 and result.gradients.tolist() == [0, 0]  # clean pass, draws


def test_fmn_runs_through_an_unrolled_abs_search():
    cfg = ABSConfig(num_classes=3, width=4, n_prior_samples=16, n_steps=2, n_bound_samples=2, unroll=True,
                    logit_scale=0.05)
    model = ABSClassifier(cfg, seed=0).eval()
    a = model.sample([0, 1, 2], generator=torch.Generator().manual_seed(0))
    # blends of two classes' samples; the model puts them in two classes, so each has a start in the other
    x = torch.stack([0.7 * a[0] + 0.3 * a[1], 0.7 * a[1] + 0.3 * a[2], 0.7 * a[2] + 0.3 * a[0]])
    with torch.no_grad():
        y = model(x).argmax(1)
    assert len(set(y.tolist())) > 1
    result = attacks.minimal_l2(model, x, y, "fmn", 4, batch_size=3)
    assert result.gradients.tolist() == [4, 4, 4] and (result.queries > 4 + 2).all()
    assert not result.failed.any()
    with torch.no_grad():
        assert (model(result.x_adv).argmax(1) != y).all()
    assert all(p.grad is None for p in model.parameters())


def test_median_l2_and_its_order_statistic_interval():
    median, (lo, hi) = attacks.median_l2(torch.arange(1.0, 102.0))  # 1..101
    assert median == 51.0 and lo < 51.0 < hi
    assert hi - lo == pytest.approx(2 * math.sqrt(101) / 2, abs=2)  # about +-sqrt(n)/2 ranks
    # inf is larger than anything: the median moves up with it, and can be inf
    assert attacks.median_l2([1.0, 2.0, math.inf]) == (2.0, (1.0, math.inf))
    assert attacks.median_l2([1.0, math.inf, math.inf])[0] == math.inf
    assert attacks.median_l2([1.0, 3.0])[0] == 2.0 and attacks.median_l2([1.0, 3.0])[1] == (1.0, 3.0)
    # coverage of the 68 % interval on exponential samples: about 68 %, at least 60 %
    g = torch.Generator().manual_seed(0)
    hits = 0
    for _ in range(300):
        d = -torch.log(torch.rand(25, generator=g, dtype=torch.float64))
        _, (lo, hi) = attacks.median_l2(d)
        hits += lo <= math.log(2) <= hi
    assert 0.6 < hits / 300 < 0.85
    for bad in ([], [1.0, float("nan")], [-1.0]):
        with pytest.raises(InputError):
            attacks.median_l2(bad)


def test_bad_arguments_raise_input_errors():
    model, x, y, _ = linear_problem(n=2)
    for kwargs in (dict(method="boundary"), dict(steps=0), dict(options={"steps": 3}), dict(max_queries=2),
                   dict(batch_size=0), dict(method="fmn", options={"initial_gradient_eval_steps": 3})):
        with pytest.raises(InputError):
            attacks.minimal_l2(model, x, y, **kwargs)
    with pytest.raises(InputError):
        attacks.minimal_l2(model, x * 2, y)
    with pytest.raises(InputError):
        attacks.minimal_l2(model, x, y.float())


def test_a_tight_query_cap_still_holds_with_the_start_search():
    model, x, y, exact = linear_problem(n=2, seed=3)
    for cap in (3, 5, 60):
        result = attacks.minimal_l2(model, x, y, "hsj", 10, max_queries=cap, options={"init_draws": 100})
        assert (result.queries <= cap).all()
        found = torch.isfinite(result.distance)
        assert (result.distance[found] >= exact[found] - 1e-4).all()
