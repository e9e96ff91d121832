import numpy as np
import pytest
import torch

from caffeinit.init import draws


def _gen(seed=0):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def _patches(n=2000, f=12, seed=0):
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((f, f)) * np.linspace(3, 0.1, f)
    return torch.from_numpy((rng.standard_normal((n, f)) @ mix.T + 5).astype(np.float32))


@pytest.mark.parametrize("n_out,fan_in", [(4, 9), (9, 4), (6, 6)])
def test_orthogonal(n_out, fan_in):
    w = draws.orthogonal(n_out, fan_in, _gen(), "cpu").double()
    gram = w @ w.T if n_out <= fan_in else w.T @ w
    np.testing.assert_allclose(gram.numpy(), np.eye(min(n_out, fan_in)), atol=1e-6)


def test_pca_filters_whiten_the_patches():
    p = _patches()
    w = draws.from_patches("pca", p, 12, _gen())
    responses = ((p - p.mean(0)).double() @ w.double().T).numpy()
    cov = np.cov(responses.T, bias=True)
    # decorrelated, and each component's variance is lambda / (lambda + floor * lambda_max)
    lam = np.linalg.eigvalsh(np.cov(p.double().numpy().T, bias=True))[::-1]
    np.testing.assert_allclose(np.diag(cov), lam / (lam + draws.EIG_FLOOR * lam[0]), rtol=1e-5)
    off = cov - np.diag(np.diag(cov))
    assert np.abs(off).max() < 1e-6


def test_zca_is_symmetric_whitening():
    p = _patches()
    w = draws.from_patches("zca", p, 12, _gen()).double().numpy()
    # all 12 rows of V S V^T, in some order: together a symmetric matrix
    order = np.argsort(np.argmax(np.abs(w), axis=1))
    wz = w[order]
    np.testing.assert_allclose(wz, wz.T, atol=1e-5)


def test_kmeans_finds_separated_clusters():
    rng = np.random.default_rng(3)
    centres = np.linalg.qr(rng.standard_normal((8, 4)))[0].T  # 4 orthonormal directions
    z = np.concatenate([c + 0.05 * rng.standard_normal((100, 8)) for c in centres])
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    found = draws.spherical_kmeans(torch.from_numpy(z), 4, _gen(), 20).numpy()
    sim = np.abs(found @ centres.T)
    assert (sim.max(axis=1) > 0.99).all() and len(set(sim.argmax(axis=1))) == 4


@pytest.mark.parametrize("method", ["pca", "zca", "kmeans", "rand"])
def test_too_few_samples_gives_none(method):
    assert draws.from_patches(method, _patches(n=5), 8, _gen()) is None


@pytest.mark.parametrize("method", ["pca", "zca", "kmeans", "rand"])
def test_more_outputs_than_inputs(method):
    w = draws.from_patches(method, _patches(f=4), 10, _gen())
    assert w.shape == (10, 4) and torch.isfinite(w).all() and (w.norm(dim=1) > 0).all()
