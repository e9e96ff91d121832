import numpy as np
import pytest
import torch

from caffeinit.init import draws


# The module docstring's constants, written out so that the oracles below do not take them from the code under test:
# components below 1e-6 of the largest eigenvalue are dropped, at most samples / 4 are kept, and the whitening gains
# are 1 / sqrt(lambda + 1e-2 lambda_max).
EIG_DROP, EIG_FLOOR = 1e-6, 1e-2


def _gen(seed=0):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def _patches(n=2000, f=12, seed=0):
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((f, f)) * np.linspace(3, 0.1, f)
    return torch.from_numpy((rng.standard_normal((n, f)) @ mix.T + 5).astype(np.float32))


@pytest.mark.parametrize("n_out,fan_in", [(4, 9), (9, 4), (6, 6), (300, 700), (700, 300), (400, 400)])
def test_orthogonal(n_out, fan_in):
    """Orthonormal rows or columns to float32 accuracy, Cholesky QR (the tall draws) included."""
    w = draws.orthogonal(n_out, fan_in, _gen(), "cpu")
    assert w.dtype == torch.float32 and w.shape == (n_out, fan_in)
    w = w.double()
    gram = w @ w.T if n_out <= fan_in else w.T @ w
    np.testing.assert_allclose(gram.numpy(), np.eye(min(n_out, fan_in)), atol=2e-6)


def test_float32_cholesky_qr_is_the_householder_factor():
    a = torch.randn(1000, 300, generator=_gen(4))
    q = draws.orthonormal_columns(a).double().numpy()
    reference, r = np.linalg.qr(a.double().numpy())
    np.testing.assert_allclose(q, reference * np.sign(np.diag(r)), atol=1e-5)


def test_pca_filters_whiten_the_patches():
    p = _patches()
    w = draws.from_patches("pca", p, 12, _gen())
    responses = ((p - p.mean(0)).double() @ w.double().T).numpy()
    cov = np.cov(responses.T, bias=True)
    # decorrelated, and each component's variance is lambda / (lambda + floor * lambda_max)
    lam = np.linalg.eigvalsh(np.cov(p.double().numpy().T, bias=True))[::-1]
    np.testing.assert_allclose(np.diag(cov), lam / (lam + EIG_FLOOR * lam[0]), rtol=1e-5)
    off = cov - np.diag(np.diag(cov))
    assert np.abs(off).max() < 1e-6


def test_zca_filters_are_centred_on_inputs_that_vary():
    """An input that is constant in every patch (a dead channel, a zero border) has a zero row in V S V^T; asking
    for as many filters as inputs used to return it, a filter whose output is constant."""
    p = _patches(f=6).clone()
    p[:, 2] = 0.0
    w = draws.from_patches("zca", p, 6, _gen()).double()
    responses = (p.double() - p.double().mean(0)) @ w.T
    assert responses.std(dim=0).min() > 1e-3 * responses.std(dim=0).max()


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


def test_kmeans_reseeds_an_emptied_cluster_with_the_worst_served_row():
    """Repeated rows make the random start pick the same row twice: the duplicate centre gets no rows and must be
    re-seeded, so every distinct direction ends up a centre (a stale duplicate would leave one unserved)."""
    directions = np.eye(6)[:3]
    z = torch.from_numpy(np.concatenate([np.repeat(directions[:1], 200, axis=0), directions[1:]]))
    for seed in range(5):
        found = draws.spherical_kmeans(z, 3, _gen(seed), 20).numpy()
        np.testing.assert_allclose(np.sort(found @ directions.T, axis=None)[-3:], 1, atol=1e-12)
        assert sorted((found @ directions.T).argmax(axis=1)) == [0, 1, 2], seed


@pytest.mark.parametrize("method", ["pca", "zca", "kmeans", "rand"])
def test_too_few_samples_gives_none(method):
    assert draws.from_patches(method, _patches(n=5), 8, _gen()) is None


@pytest.mark.parametrize("method", ["pca", "zca", "kmeans", "rand"])
def test_more_outputs_than_inputs(method):
    w = draws.from_patches(method, _patches(f=4), 10, _gen())
    assert w.shape == (10, 4) and torch.isfinite(w).all() and (w.norm(dim=1) > 0).all()


def _spectrum_patches(n, f, power, seed=0):
    """Patches with covariance eigenvalues ~ i^-power in a random basis: like conv-layer inputs, a steep spectrum
    whose eigenvalues near the samples/4 cut are ~1e-7 of the largest apart (power 1.5, f 800)."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((f, f)))[0]
    scale = np.arange(1, f + 1) ** (-power / 2)
    return torch.from_numpy(((rng.standard_normal((n, f)) * scale) @ basis.T + 3).astype(np.float32))


def _float64_whitening(patches):
    """The module docstring's whitening in numpy float64: (covariance, eigenvalues descending, V, gains)."""
    x = patches.double().numpy()
    x = x - x.mean(axis=0)
    cov = x.T @ x / x.shape[0]
    lam, vec = np.linalg.eigh(cov)
    lam, vec = lam[::-1], vec[:, ::-1]
    kept = min(x.shape[0] // 4, int((lam > EIG_DROP * lam[0]).sum()))
    return cov, lam, vec[:, :kept], 1 / np.sqrt(lam[:kept] + EIG_FLOOR * lam[0])


def test_float32_whitening_matches_the_float64_metric():
    p = _spectrum_patches(1600, 800, 1.5)
    assert draws._whitening_from_float32(p) is not None  # this case takes the float32 path
    cov, lam, vec64, gain64 = _float64_whitening(p)
    vec, gain = (t.numpy() for t in draws.whitening(p))
    assert vec.shape == vec64.shape
    # it whitens the float64 covariance: S V^T C V S = S^2 Lambda. The float32 eigendecomposition is off by
    # ~3e-7 lambda_max; the gains amplify that by at most 1 / EIG_FLOOR = 100.
    whitened = (gain[:, None] * vec.T) @ cov @ (vec * gain)
    np.testing.assert_allclose(whitened, np.diag(lam[:len(gain)] * gain64**2), rtol=0, atol=1e-4)
    # the metric V S^2 V^T: float32 eigenvectors alone put it 2e-2 off here (which components are kept changes
    # across the cut); re-solving the cut in float64 brings it to ~6e-4 (<= 1.5e-3 on CaffeNet's patches)
    metric64 = (vec64 * gain64**2) @ vec64.T
    metric = (vec * gain**2) @ vec.T
    assert np.linalg.norm(metric - metric64) / np.linalg.norm(metric64) < 2e-3


@pytest.mark.parametrize("n, f", [(48, 20), (48, 100), (400, 12)], ids=["cap", "gram-cap", "rank"])
def test_float64_whitening_keeps_at_most_a_quarter_of_the_samples(n, f):
    """The float64 path (covariance, or Gram matrix with fewer samples than inputs): min(samples / 4, the components
    above 1e-6 of the largest) components, with the docstring's gains."""
    p = torch.from_numpy(np.random.default_rng(3).standard_normal((n, f)).astype(np.float32))
    vec, gain = draws.whitening(p, exact=True)
    x = p.double().numpy() - p.double().numpy().mean(axis=0)
    lam = np.linalg.eigvalsh(x.T @ x / n)[::-1]
    kept = min(n // 4, int((lam > EIG_DROP * lam[0]).sum()))
    assert vec.shape == (f, kept) and gain.shape == (kept,)
    np.testing.assert_allclose(gain.numpy(), 1 / np.sqrt(lam[:kept] + EIG_FLOOR * lam[0]), rtol=1e-9)


def test_unresolved_cut_falls_back_to_float64():
    p = _spectrum_patches(1200, 600, 2.0)  # the samples/4 cut falls at 1e-5 of the largest eigenvalue
    assert draws._whitening_from_float32(p) is None
    for fast, exact in zip(draws.whitening(p), draws.whitening(p, exact=True)):
        assert torch.equal(fast, exact)


def test_pca_whitens_exactly_on_an_ill_conditioned_covariance():
    # pca takes single eigenvectors, so it stays on the float64 path: responses decorrelated to float32 rounding
    # of the filters (the float32 path would leave ~4e-5 here)
    p = _spectrum_patches(1600, 800, 1.5)
    cov, lam, _, gain64 = _float64_whitening(p)
    w = draws.from_patches("pca", p, 64, _gen()).double().numpy()
    np.testing.assert_allclose(w @ cov @ w.T, np.diag(lam[:64] * gain64[:64]**2), rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", ["zca", "kmeans", "rand"])
def test_float32_path_is_deterministic(method):
    p = _spectrum_patches(1600, 800, 1.5)
    assert torch.equal(draws.from_patches(method, p, 32, _gen(5)), draws.from_patches(method, p, 32, _gen(5)))


@pytest.mark.parametrize("m,n", [(1200, 300), (600, 300), (500, 300)])
def test_orthonormal_columns_equal_householder_qr_with_positive_diagonal(m, n):
    """Cholesky QR (tall draws) and Householder QR (the others) give the same unique factor."""
    a = torch.randn(m, n, generator=_gen(3), dtype=torch.float64)
    q = draws.orthonormal_columns(a)
    np.testing.assert_allclose((q.T @ q).numpy(), np.eye(n), atol=1e-13)
    reference, r = np.linalg.qr(a.numpy())
    reference *= np.sign(np.diag(r))
    np.testing.assert_allclose(q.numpy(), reference, atol=1e-13)
    # Q^T a is R: upper triangular with a positive diagonal
    r = (q.T @ a).numpy()
    assert np.abs(np.tril(r, -1)).max() < 1e-12 and (np.diag(r) > 0).all()


def test_one_centre_is_the_direction_closest_to_all_rows():
    """k = 1 (a depthwise convolution's single output per group): the centre maximizes the summed cosine similarity,
    which no row and no other direction beats."""
    z = torch.randn(500, 9, generator=_gen(6)) + torch.linspace(-1, 2, 9)
    z = z / z.norm(dim=1, keepdim=True)
    centre = draws.spherical_kmeans(z, 1, _gen(), 20)
    assert centre.shape == (1, 9) and abs(float(centre.norm()) - 1) < 1e-6
    best = float((z @ centre.t()).sum())
    others = torch.cat([z, torch.randn(200, 9, generator=_gen(7))])
    others = others / others.norm(dim=1, keepdim=True)
    assert float((z @ others.t()).sum(dim=0).max()) < best


def _group_patches(groups=6, n=300, f=9, seed=8):
    rng = np.random.default_rng(seed)
    mixes = rng.standard_normal((groups, f, f)) * np.linspace(2, 0.2, f)
    p = rng.standard_normal((groups, n, f)) @ mixes.transpose(0, 2, 1) + 3
    p[1, :, 4] = 0.5  # group 1: one input never varies
    p[5] = 1.0  # group 5: nothing varies
    return torch.from_numpy(p.astype(np.float32))


@pytest.mark.parametrize("method", ["pca", "kmeans"])
def test_single_filters_for_all_groups_are_those_of_each_group(method):
    """The batched depthwise path gives each group the filter ``from_patches`` gives it alone (up to the sign of an
    eigenvector), and flags the group whose patches do not vary."""
    p = _group_patches()
    filters, ok = draws.single_filters(method, p, _gen())
    assert ok.tolist() == [True] * 5 + [False]
    for g in range(5):
        alone = draws.from_patches(method, p[g], 1, _gen())[0].double()
        cosine = float(filters[g].double() @ alone / (filters[g].double().norm() * alone.norm()))
        assert abs(cosine) > 0.9999, (g, cosine)


@pytest.mark.parametrize("method", ["zca", "rand"])
def test_random_single_filters_respond_to_their_group(method):
    p = _group_patches()
    filters, ok = draws.single_filters(method, p, _gen())
    assert ok.tolist() == [True] * 5 + [False]
    for g in range(5):
        responses = (p[g].double() - p[g].double().mean(0)) @ filters[g].double()
        assert float(responses.std()) > 1e-3 * float(filters[g].double().norm() * p[g].double().std(0).max())
    if method == "zca":  # each filter is a row of V S V^T centred on an input that varies (never input 4 of group 1)
        vec, gain = draws.whitening(p[1].double(), exact=True)
        rows = vec @ (gain[:, None] * vec.t())
        cosines = (rows @ filters[1].double()) / (rows.norm(dim=1) * filters[1].double().norm())
        assert float(cosines.max()) > 0.9999 and int(cosines.argmax()) != 4
    assert torch.equal(draws.single_filters(method, p, _gen())[0], filters)  # the seed decides


@pytest.mark.parametrize("method", ["pca", "zca", "kmeans", "rand"])
def test_filters_from_fewer_samples_than_inputs_keep_their_std_on_fresh_samples(method):
    """An InnerProduct on a 4-D blob has one sample per image: 128 samples of 588 ReLU features. Directions picked
    in all 588 dimensions fit the samples' noise, so filters normalized on them had std ~0.5 on fresh samples
    (Marchenko-Pastur: the top sample eigenvalues of n samples in f > n dimensions are inflated several-fold). Drawn
    in n / 8 dimensions, the sample eigenvalues lie within (1 -+ sqrt(1/8))^2 of the true ones: each filter's fresh
    std over its in-sample std within 1 / (1 +- sqrt(1/8)) = 0.74 .. 1.55, widened by 0.1 for the fresh samples'
    noise and the features' non-Gaussian tails; on average near 1."""
    rng = np.random.default_rng(0)
    f, n = 588, 128
    mix = (rng.standard_normal((f, f)) * np.linspace(3, 0.3, f)).astype(np.float32)

    def features(count):
        return torch.from_numpy(np.maximum(rng.standard_normal((count, f)).astype(np.float32) @ mix.T, 0))
    samples, fresh = features(n), features(4000)
    ratios = []
    for seed in range(3):
        w = draws.from_patches(method, samples, 16, _gen(seed)).double()
        assert w.shape == (16, f)
        ratios.append(((fresh.double() @ w.T).std(0) / (samples.double() @ w.T).std(0)).numpy())
    ratios = np.concatenate(ratios)
    edge = np.sqrt(1 / 8)
    assert 1 / (1 + edge) - 0.1 < ratios.min() and ratios.max() < 1 / (1 - edge) + 0.1, ratios
    assert 0.9 < ratios.mean() < 1.15
