"""Every invertible piece and the whole model: round trip, log|det J| against slogdet, fwd = -rev."""

import pytest
import torch
from FrEIA.modules import AllInOneBlock, HaarDownsampling
from torch.autograd.functional import jacobian

import gclib
from gclib.modules import BottleneckSubnet, CouplingBlock, DCTPooling, Normalize, ResNetSubnet, dct_matrix

from .conftest import randomize, tiny_config


def _coupling(dims, subnet, cls=CouplingBlock):
    return cls([dims], subnet_constructor=lambda ci, co: subnet(ci, co, 6, 1), affine_clamping=2.0)


MODULES = {
    "normalize": lambda: Normalize([(2, 2, 2)], mean=(0.3, 0.6), std=(0.2, 0.7)),
    "haar": lambda: HaarDownsampling([(2, 2, 2)]),
    "dct": lambda: DCTPooling([(2, 2, 3)]),
    "coupling-resnet": lambda: _coupling((4, 2, 2), ResNetSubnet),
    "coupling-bottleneck": lambda: _coupling((4, 2, 2), BottleneckSubnet),
    "freia-allinone": lambda: _coupling((4, 2, 2), ResNetSubnet, AllInOneBlock),
}


def _shape(name):
    return {"normalize": (2, 2, 2), "haar": (2, 2, 2), "dct": (2, 2, 3)}.get(name, (4, 2, 2))


@pytest.mark.parametrize("name", list(MODULES))
def test_module_round_trip_and_log_det(name):
    torch.manual_seed(0)
    module = randomize(MODULES[name]().double(), scale=0.3)
    x = torch.randn(3, *_shape(name), dtype=torch.float64)
    (y,), log_det = module((x,))
    (x_back,), log_det_rev = module((y.clone(),), rev=True)
    assert (x_back - x).abs().max() <= 1e-10
    log_det = torch.as_tensor(log_det, dtype=torch.float64).expand(3)
    log_det_rev = torch.as_tensor(log_det_rev, dtype=torch.float64).expand(3)
    torch.testing.assert_close(log_det, -log_det_rev, atol=1e-10, rtol=0)
    for i in range(3):
        jac = jacobian(lambda v: module((v[None],))[0][0][0].reshape(-1), x[i])
        jac = jac.reshape(y[0].numel(), x[0].numel())
        sign, logabsdet = torch.linalg.slogdet(jac)
        assert sign != 0
        assert abs(float(logabsdet) - float(log_det[i].detach())) <= 1e-8


def test_dct_matrix_is_orthogonal_and_dc_first():
    d = dct_matrix(7)
    torch.testing.assert_close(d @ d.T, torch.eye(7, dtype=torch.float64))
    pool = DCTPooling([(3, 7, 7)]).double()
    x = torch.rand(2, 3, 7, 7, dtype=torch.float64)
    (z,), _ = pool((x,))
    # The first C latent dims are the DC terms: channel means times sqrt(H*W).
    torch.testing.assert_close(z[:, :3], x.mean((2, 3)) * 7)


def test_whole_model_round_trip_and_log_det():
    torch.manual_seed(0)
    model = randomize(gclib.GenerativeClassifier(tiny_config()).double(), scale=0.2)
    x = torch.rand(4, 1, 4, 4, dtype=torch.float64)
    z, log_det = model._encode(x)
    assert z.shape == (4, 16)
    assert (model.inverse(z) - x).abs().max() <= 1e-5
    _, log_det_rev = model.flow(z.clone(), rev=True)
    torch.testing.assert_close(log_det, -log_det_rev, atol=1e-8, rtol=0)
    for i in range(4):
        jac = jacobian(lambda v: model._encode(v[None])[0][0], x[i]).reshape(16, 16)
        assert abs(float(torch.linalg.slogdet(jac)[1]) - float(log_det[i].detach())) <= 1e-6


def test_fashion_mnist_model_round_trip_on_real_images(fashion):
    torch.manual_seed(0)
    model = randomize(gclib.GenerativeClassifier.from_config("fashion-mnist-small", seed=0), scale=0.02)
    x, _ = fashion[2][:64]
    z = model.encode(x)
    assert z.shape == (64, 784)
    assert (model.inverse(z) - x).abs().max() <= 1e-4


def test_inverse_does_not_modify_its_input():
    model = gclib.GenerativeClassifier(tiny_config())
    z = torch.randn(2, 16)
    before = z.clone()
    model.inverse(z)
    assert torch.equal(z, before)


def test_coupling_block_equals_freia_all_in_one_block_after_loading_weights():
    torch.manual_seed(0)
    reference = randomize(_coupling((6, 3, 3), ResNetSubnet, AllInOneBlock).double(), scale=0.3)
    torch.manual_seed(1)  # another permutation, replaced by the reference's on loading
    fast = _coupling((6, 3, 3), ResNetSubnet).double()
    fast.load_state_dict(reference.state_dict())
    x = torch.randn(4, 6, 3, 3, dtype=torch.float64)
    (y_ref,), j_ref = reference((x,))
    (y,), j = fast((x,))
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(j, j_ref, rtol=0, atol=1e-12)
    (x_back,), _ = fast((y,), rev=True)
    torch.testing.assert_close(x_back, x)


@pytest.mark.parametrize("rev", [False, True])
def test_coupling_block_gradients_equal_freia_all_in_one_block(rev):
    # CouplingBlock's permutation has its own backward (a gather, not autograd's scatter): the gradients
    # of input and parameters must match FrEIA's block in both directions.
    torch.manual_seed(0)
    reference = randomize(_coupling((6, 3, 3), ResNetSubnet, AllInOneBlock).double(), scale=0.3)
    fast = _coupling((6, 3, 3), ResNetSubnet).double()
    fast.load_state_dict(reference.state_dict())
    x = torch.randn(4, 6, 3, 3, dtype=torch.float64)
    weights = torch.randn(4, 6, 3, 3, dtype=torch.float64)
    grads = []
    for module in (reference, fast):
        xi = x.clone().requires_grad_()
        (y,), log_det = module((xi,), rev=rev)
        ((y * weights).sum() + log_det.sum()).backward()
        grads.append([xi.grad] + [p.grad for p in module.parameters() if p.requires_grad])
    for g_ref, g in zip(*grads):
        torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-12)


def test_channel_permutation_gradient_and_second_derivative():
    from gclib.modules import _ChannelPermutation

    perm = torch.tensor([2, 0, 3, 1])
    perm_inv = torch.argsort(perm)
    x = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.equal(_ChannelPermutation.apply(x, perm, perm_inv), x[:, perm])
    assert torch.autograd.gradcheck(lambda v: _ChannelPermutation.apply(v, perm, perm_inv) ** 2, (x,))
    assert torch.autograd.gradgradcheck(lambda v: _ChannelPermutation.apply(v, perm, perm_inv) ** 2, (x,))
