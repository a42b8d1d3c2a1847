"""Every model family passes the same interface tests (gclib.classifier)."""

import pytest
import torch

import gclib
from gclib.classifier import CapabilityError, check_classifier, describe, is_generative, require, supports

from .conftest import randomize, tiny_config


def _ibinn():
    return randomize(gclib.GenerativeClassifier(tiny_config()), scale=0.1).eval()


def _resnet():
    return gclib.FeedForwardClassifier.from_config(tiny_config(), seed=0).eval()


def _resnet20():
    return gclib.FeedForwardClassifier.from_config(tiny_config(), seed=0, arch="resnet20").eval()


FAMILIES = {"ibinn": _ibinn, "resnet": _resnet, "resnet20": _resnet20}


@pytest.fixture(params=list(FAMILIES))
def model(request):
    torch.manual_seed(0)
    return FAMILIES[request.param]()


def _x(n=5):
    return torch.rand(n, 1, 4, 4)


def test_declares_the_interface(model):
    check_classifier(model)
    info = describe(model)
    assert info["family"] in FAMILIES and info["parameters"] > 0 and info["evaluations_per_image"] >= 1


def test_shapes_and_logits_are_the_log_posterior(model):
    x = _x()
    scores, logits = model.class_scores(x), model(x)
    assert scores.shape == logits.shape == (5, model.num_classes)
    if is_generative(model):
        prior = torch.full((model.num_classes,), -torch.log(torch.tensor(float(model.num_classes))))
        torch.testing.assert_close(logits, torch.log_softmax(scores + prior, 1))
        torch.testing.assert_close(model.log_px(x), torch.logsumexp(scores + prior, 1))
    else:
        torch.testing.assert_close(logits, scores)
        with pytest.raises(CapabilityError, match="density"):
            model.log_px(x)
    assert torch.equal(model.predict(x), logits.argmax(1))


@pytest.mark.parametrize("bad, match", [
    (lambda: torch.rand(2, 1, 5, 5), "4x4"),
    (lambda: torch.rand(2, 3, 4, 4), "channel"),
    (lambda: 2 * torch.rand(2, 1, 4, 4) + 1, r"\[0, 1\]"),
    (lambda: torch.zeros(2, 1, 4, 4, dtype=torch.uint8), "floating"),
])
def test_bad_input_is_rejected_with_one_clear_error(model, bad, match):
    with pytest.raises(gclib.InputError, match=match):
        model.class_scores(bad())
    with pytest.raises(gclib.InputError, match=match):
        model(bad())


def test_save_load_round_trip(model, tmp_path):
    gclib.save(model, tmp_path / "m")
    loaded = gclib.load(tmp_path / "m").eval()
    assert type(loaded) is type(model) and describe(loaded) == describe(model)
    x = _x()
    torch.testing.assert_close(loaded.class_scores(x), model.class_scores(x))


def test_capabilities_are_checked_by_name(model):
    assert supports(model, "latent") == (model.family == "ibinn")
    if not supports(model, "latent"):
        with pytest.raises(CapabilityError, match="fig_latent needs an invertible latent space; a resnet model"):
            require(model, "latent", "fig_latent")
    with pytest.raises(ValueError, match="unknown capability"):
        supports(model, "telepathy")


def test_check_classifier_rejects_what_is_not_one():
    with pytest.raises(TypeError, match="missing"):
        check_classifier(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("name, family", [("gc-beta-8", "ibinn"), ("resnet18", "resnet")])
def test_shipped_models_load_by_name_and_list_by_family(name, family):
    model = gclib.get_model(name)
    assert model.family == family
    assert name in gclib.list_models(family=family)
    assert name not in gclib.list_models(family="ibinn" if family == "resnet" else "resnet")
    same = gclib.pretrained("fashion-mnist", name)
    assert same.manifest["sha256"] == model.manifest["sha256"]
    with pytest.raises(gclib.CheckpointError, match="shipped"):
        gclib.get_model("gc-beta-12345")
