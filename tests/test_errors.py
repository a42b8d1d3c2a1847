"""Bad input: each case raises one gclib exception whose message says what was wrong and how to fix it."""

import math

import pytest
import torch

import gclib
from gclib.train import parse_beta


@pytest.fixture(scope="module")
def model():
    return gclib.GenerativeClassifier.from_config("fashion-mnist-small", seed=0)


@pytest.mark.parametrize("x, match", [
    (torch.rand(2, 3, 28, 28), "1 channel"),
    (torch.rand(2, 1, 32, 32), "28x28"),
    ((torch.rand(2, 1, 28, 28) * 255).to(torch.uint8), "x.float\\(\\) / 255"),
    (torch.rand(2, 1, 28, 28) * 255, "\\[0, 1\\]"),
    (torch.full((2, 1, 28, 28), float("nan")), "NaN"),
    (torch.full((2, 1, 28, 28), float("inf")), "NaN or inf"),
    (torch.rand(0, 1, 28, 28), "empty batch"),
    (torch.rand(1, 28, 28), "unsqueeze"),
    (torch.rand(28, 28), "4-D"),
    ([[0.5]], "torch.Tensor"),
])
def test_bad_images(model, x, match):
    for method in (model, model.class_log_likelihoods, model.log_px, model.predict, model.encode, model.bits_per_dim):
        with pytest.raises(gclib.InputError, match=match):
            method(x)


def test_bad_images_for_the_feed_forward_model():
    model = gclib.FeedForwardClassifier("fashion-mnist")
    with pytest.raises(gclib.InputError, match="channel"):
        model(torch.rand(2, 3, 28, 28))


def test_input_errors_are_value_errors_too(model):
    with pytest.raises(ValueError):
        model(torch.rand(2, 1, 27, 27))


def test_bad_latents(model):
    with pytest.raises(gclib.InputError, match="784"):
        model.inverse(torch.randn(2, 100))


def test_unknown_config_lists_the_known_ones():
    with pytest.raises(gclib.ConfigError, match="cifar10, fashion-mnist, fashion-mnist-large, fashion-mnist-small, imagenet"):
        gclib.GenerativeClassifier.from_config("mnist")


@pytest.mark.parametrize("beta", [-1, "abc", float("nan"), None, "-inf"])
def test_bad_beta(beta):
    with pytest.raises(gclib.ConfigError, match="beta must be"):
        parse_beta(beta)


def test_good_beta():
    assert parse_beta("inf") == math.inf and parse_beta(8) == 8.0 and parse_beta("0") == 0.0


def test_fit_rejects_bad_beta_before_training(fashion):
    model = gclib.GenerativeClassifier.from_config("fashion-mnist-small", seed=0)
    with pytest.raises(gclib.ConfigError):
        gclib.train.fit(model, fashion[0].subset(64), beta=-2, epochs=1, progress=False)


def test_batch_larger_than_the_data(fashion):
    model = gclib.GenerativeClassifier.from_config("fashion-mnist-small", seed=0)
    with pytest.raises(gclib.ConfigError, match="smaller than one batch"):
        gclib.train.fit(model, fashion[0].subset(10), beta=1, epochs=1, batch_size=64, progress=False)
