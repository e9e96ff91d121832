"""The within-layer draws, as (outputs x fan-in) filter matrices, in torch on the layer's device.

``gaussian`` and ``orthogonal`` ignore the data. ``pca``, ``zca``, ``kmeans`` and ``rand`` work on input patches P
(samples x fan-in): centre P, eigendecompose its covariance, keep components with eigenvalue above 1e-6 of the
largest, and whiten with S = diag(1 / sqrt(lambda + 1e-2 lambda_max)) (a relative floor, so the scale of the data does
not matter). At most samples / 4 components are kept: the rest are not estimated well enough to be whitened (they
would amplify noise on fresh images). Then:
  pca: rows of S V^T (the top components, whitened);   zca: rows of V S V^T (filters centred on one input each,
  of the inputs that vary in the patches);
  kmeans: spherical k-means on the L2-normalized whitened patches Z = P_c V S, centres c mapped back as c S V^T;
  rand: random rows of Z mapped back the same way.
zca, kmeans and rand depend on the whitening only through the metric V S^2 V^T, which tolerates a rotation of V within
near-equal eigenvalues; pca takes single eigenvectors and always uses the float64 eigendecomposition. The others use
a faster one when it resolves the cut between kept and dropped components: covariance and eigendecomposition in
float32, then the eigenvectors around the cut re-solved in float64 (Rayleigh-Ritz), so that which components are
kept is decided on float64 eigenvalues (fan-ins up to 2 x CUT_WINDOW, where that window is everything, go straight to
float64). float32 eigenvalues are off by ~3e-7 of the largest, so this path is taken only when the cut's eigenvalue
is at least 3e-5 of the largest; otherwise float64 throughout. On CaffeNet's patches
the metric stays within 1.5e-3 of the float64 one (relative Frobenius norm; the difference sits at the cut, far
within the metric's sampling noise) and still whitens the covariance: S V^T C V S = S^2 Lambda to ~5e-5.
Z and the k-means run in float32; Lloyd's iterations stop once at most 0.1% of the rows change cluster.
Filters are not normalized here: the within-layer step rescales every output afterwards. With fewer usable samples
than outputs the caller falls back to gaussian.
With fewer than two samples per input (an InnerProduct on a 4-D blob: one sample per image, thousands of inputs),
directions picked in the whole input space fit the samples' noise: the top sample eigenvalues of n samples in f > n
dimensions are inflated far beyond the true ones (Marchenko-Pastur), so filters normalized on those samples had a
std of 0.5 (588 inputs, 128 images) to 0.17 (9,216 inputs, 160 images) on fresh images. There the filters are
drawn as above in a random Gaussian projection of the patches to n / 8 dimensions, q = P T, and mapped back as
W = A T^T (so W p = A q exactly, as the reference's projected draws): with d / n = 1/8 the sample eigenvalues stay
within (1 +- sqrt(1/8))^2 of the true ones and fresh-image stds within about 0.75-1.5 (mean 1.07).
"""
from __future__ import annotations

import torch

PROJECT_BELOW = 2  # fewer samples than this per input: drawn in a random subspace (see the module docstring)
EIG_DROP = 1e-6  # components below this fraction of the largest eigenvalue are discarded
EIG_FLOOR = 1e-2  # whitening regularizer, relative to the largest eigenvalue
FLOAT32_CUT = 3e-5  # the float32 eigendecomposition is used only if the cut's eigenvalue is this far above zero
CUT_WINDOW = 128  # eigenvectors on each side of the cut re-solved in float64


def gaussian(n_out: int, fan_in: int, gen: torch.Generator, device) -> torch.Tensor:
    return torch.randn(n_out, fan_in, generator=gen, device=device)


def orthogonal(n_out: int, fan_in: int, gen: torch.Generator, device) -> torch.Tensor:
    """Orthonormal rows (n_out <= fan_in) or orthonormal columns (n_out > fan_in): the Q factor, with R's diagonal
    made positive, of a Gaussian matrix's QR decomposition (a uniformly distributed orthonormal frame)."""
    a = torch.randn(max(n_out, fan_in), min(n_out, fan_in), generator=gen, device=device)
    q = orthonormal_columns(a)  # float32: orthonormal to ~1e-6, twice as fast as float64 on fc6/fc7
    return (q if n_out >= fan_in else q.t()).contiguous()


CHOLESKY_QR_MIN_ASPECT = 2  # a Gaussian m x n matrix with m >= 2n has condition number below ~6 (Marchenko-Pastur)
CHOLESKY_QR_MIN_COLUMNS = 256  # below this Householder QR is cheap anyway


def orthonormal_columns(a: torch.Tensor) -> torch.Tensor:
    """Q of the thin QR decomposition a = QR (a: m x n, m >= n) with R's diagonal positive, so Q is unique.

    Tall, well-conditioned matrices (m >= 2n: every Gaussian draw of that shape) go through Cholesky QR: R^T R =
    a^T a, Q = a R^-1. Its loss of orthogonality is ~cond(a)^2 * eps (~4e-15 in float64 here), and it runs on matrix
    products, about twice as fast as Householder QR on fc6-sized draws. Others, or a failed Cholesky, use Householder
    QR with the signs fixed. The products run in ``a``'s precision, the Cholesky factorization in float64."""
    m, n = a.shape
    if m >= CHOLESKY_QR_MIN_ASPECT * n and n >= CHOLESKY_QR_MIN_COLUMNS:
        lower, info = torch.linalg.cholesky_ex((a.t() @ a).to(torch.float64))
        if int(info) == 0:
            return torch.linalg.solve_triangular(lower.t().to(a.dtype), a, upper=True, left=False)
    q, r = torch.linalg.qr(a)
    diag = torch.diagonal(r)
    return q * torch.sign(diag).where(diag != 0, torch.ones((), dtype=q.dtype, device=q.device))


def whitening(patches: torch.Tensor, exact: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(V, s): principal directions (fan-in x r, largest first, float64) and whitening gains 1/sqrt(lambda + floor).
    Float64 throughout when ``exact``, else from the float32 eigendecomposition where it resolves the cut."""
    n, f = patches.shape
    if not exact and n >= f > 2 * CUT_WINDOW:  # below, the window would be all of it: float64 alone is cheaper
        fast = _whitening_from_float32(patches)
        if fast is not None:
            return fast
    x = patches.to(torch.float64)
    x = x - x.mean(dim=0, keepdim=True)
    if n >= f:
        lam, vec = torch.linalg.eigh(x.t() @ x / n)
    else:  # fewer samples than inputs: eigendecompose the Gram matrix instead
        lam, u = torch.linalg.eigh(x @ x.t() / n)
        vec = x.t() @ u
        vec = vec / vec.norm(dim=0, keepdim=True).clamp_min(1e-300)
    lam, vec = lam.flip(0), vec.flip(1)
    gain, top = _gains(lam, n)
    if not top > 0:
        return vec[:, :0], lam[:0]
    kept = int((gain > 0).sum())  # a leading run
    return vec[:, :kept], gain[:kept]


def _gains(lam: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Whitening gains 1/sqrt(lambda + floor) for the descending eigenvalues ``lam`` (..., fan-in) of n samples'
    covariance, zero for the dropped components (below EIG_DROP of the largest, or beyond n/4), and the largest
    eigenvalue (..., 1)."""
    top = lam[..., :1].clamp_min(0)
    keep = (lam > EIG_DROP * top) & (torch.arange(lam.shape[-1], device=lam.device) < max(1, n // 4))
    gain = torch.where(keep, 1.0 / torch.sqrt(lam.clamp_min(0) + EIG_FLOOR * top), torch.zeros_like(lam))
    return gain, top


def _whitening_from_float32(patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``whitening`` from the float32 covariance and eigendecomposition, the eigenvectors around the cut re-solved
    in float64; None where the cut lies below FLOAT32_CUT of the largest eigenvalue (not resolved in float32)."""
    n = patches.shape[0]
    x = patches.to(torch.float32)
    x = x - patches.mean(dim=0, dtype=torch.float64).to(torch.float32)
    cov = (x.t() @ x).to(torch.float64) / n
    lam, vec = torch.linalg.eigh(cov.to(torch.float32))
    lam, vec = lam.flip(0).to(torch.float64), vec.flip(1).to(torch.float64)
    top = lam[0]
    if not top > 0:
        return None
    kept = _kept_count(lam, n)
    lo, hi = max(0, kept - CUT_WINDOW), min(len(lam), kept + CUT_WINDOW)
    window = vec[:, lo:hi]
    lam_window, rotation = torch.linalg.eigh(window.t() @ (cov @ window))
    vec[:, lo:hi] = window @ rotation.flip(1)
    lam[lo:hi] = lam_window.flip(0)
    top = lam[0]
    kept = _kept_count(lam, n)
    if not lam[kept - 1] >= FLOAT32_CUT * top:
        return None
    return vec[:, :kept], 1.0 / torch.sqrt(lam[:kept] + EIG_FLOOR * top)


def _kept_count(lam: torch.Tensor, n: int) -> int:
    """How many of the leading (descending) eigenvalues are kept: those above EIG_DROP of the largest, at most n/4."""
    above = int((lam > EIG_DROP * lam[0]).sum())
    return max(1, min(above, n // 4))


def _rows_with_mixes(basis: torch.Tensor, n_out: int, gen: torch.Generator, pick_random: bool) -> torch.Tensor:
    """n_out rows from ``basis`` (r x fan-in): its rows (first ones, or a random subset), and when r < n_out random
    unit-norm mixes of them for the rest."""
    r = basis.shape[0]
    if n_out <= r:
        if pick_random:
            index = torch.randperm(r, generator=gen, device=gen.device)[:n_out].to(basis.device)
            return basis[index]
        return basis[:n_out]
    mix = torch.randn(n_out - r, r, generator=gen, device=gen.device, dtype=torch.float64).to(basis.device)
    mix = mix / mix.norm(dim=1, keepdim=True)
    return torch.cat([basis, mix @ basis])


def from_patches(method: str, patches: torch.Tensor, n_out: int, gen: torch.Generator,
                 kmeans_iters: int = 20) -> torch.Tensor | None:
    """Filters (n_out x fan-in, float32) from input patches, or None if the patches cannot give n_out filters.
    Fewer than PROJECT_BELOW samples per input: drawn in a random subspace of samples / 8 dimensions (see the
    module docstring)."""
    n, f = patches.shape
    if n < n_out:
        return None
    if n < PROJECT_BELOW * f and n // 8 >= 1:
        t = torch.randn(f, n // 8, generator=gen, device=gen.device).to(patches.device)
        inner = _filters(method, patches.to(torch.float32) @ t, n_out, gen, kmeans_iters)
        return None if inner is None else inner @ t.t()
    return _filters(method, patches, n_out, gen, kmeans_iters)


def _filters(method: str, patches: torch.Tensor, n_out: int, gen: torch.Generator, kmeans_iters: int
             ) -> torch.Tensor | None:
    """``from_patches`` in the patches' own space."""
    vec, gain = whitening(patches, exact=method == "pca")
    if vec.shape[1] == 0:
        return None
    whiten = gain[:, None] * vec.t()  # S V^T, r x fan-in
    if method == "pca":
        filters = _rows_with_mixes(whiten, n_out, gen, pick_random=False)
    elif method == "zca":
        # row i is centred on input i; an input without variance in the patches (a dead input, a zero border) has a
        # zero row, whose output would be constant: draw among the others
        varying = (patches.amax(dim=0) > patches.amin(dim=0)).nonzero().flatten().to(vec.device)
        filters = _rows_with_mixes(vec[varying] @ whiten, n_out, gen, pick_random=True)
    else:  # float32 from here: z only steers the k-means / random picks, whose results are rescaled anyway
        whiten = whiten.to(torch.float32)
        z = (patches.to(torch.float32) - patches.mean(dim=0, dtype=torch.float64).to(torch.float32)) @ whiten.t()
        norms = z.norm(dim=1)
        z = z[norms > 0]
        if z.shape[0] < n_out:
            return None
        z = z / z.norm(dim=1, keepdim=True)
        if method == "rand":
            centres = z[torch.randperm(z.shape[0], generator=gen, device=gen.device)[:n_out].to(z.device)]
        else:
            centres = spherical_kmeans(z, n_out, gen, kmeans_iters)
        filters = centres @ whiten
    return filters.to(torch.float32)


def single_filters(method: str, patches: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``from_patches`` with one filter per group, for all groups at once (depthwise convolutions: thousands of
    groups of a few inputs): ``patches`` is groups x samples x fan-in with samples >= fan-in (the float64 path of
    ``whitening``, batched). Returns the filters (groups x fan-in, float32) and which groups have them (False: the
    patches do not vary; the caller draws those)."""
    groups, n, f = patches.shape
    x = patches.to(torch.float64)
    x = x - x.mean(dim=1, keepdim=True)
    lam, vec = torch.linalg.eigh(x.transpose(1, 2) @ x / n)
    lam, vec = lam.flip(-1), vec.flip(-1)
    gain, top = _gains(lam, n)
    whiten = gain[:, :, None] * vec.transpose(1, 2)  # S V^T per group; rows of dropped components are zero
    ok = top[:, 0] > 0
    if method == "pca":
        filters = whiten[:, 0]
    elif method == "zca":  # a random row of V S V^T among the inputs that vary
        varying = patches.amax(dim=1) > patches.amin(dim=1)
        keys = torch.rand(groups, f, generator=gen, device=gen.device, dtype=torch.float64).to(x.device)
        pick = torch.where(varying, keys, torch.full_like(keys, -1.0)).argmax(dim=1)
        filters = (vec[torch.arange(groups, device=x.device), pick][:, None, :] @ whiten)[:, 0]
    else:  # kmeans (one centre: the normalized sum) or rand, on the L2-normalized whitened patches
        z = (x @ whiten.transpose(1, 2)).to(torch.float32)
        norms = z.norm(dim=2, keepdim=True)
        z = torch.where(norms > 0, z / norms.clamp_min(1e-30), torch.zeros_like(z))
        ok &= (norms[:, :, 0] > 0).any(dim=1)
        if method == "rand":
            keys = torch.rand(groups, n, generator=gen, device=gen.device).to(z.device)
            pick = torch.where(norms[:, :, 0] > 0, keys, torch.full_like(keys, -1.0)).argmax(dim=1)
            centres = z[torch.arange(groups, device=z.device), pick]
        else:
            total = z.sum(dim=1)
            centres = total / total.norm(dim=1, keepdim=True).clamp_min(1e-30)
        filters = (centres[:, None, :] @ whiten.to(torch.float32))[:, 0]
    return filters.to(torch.float32), ok


def spherical_kmeans(z: torch.Tensor, k: int, gen: torch.Generator, iters: int) -> torch.Tensor:
    """k unit-norm centres of the unit-norm rows of ``z`` (Lloyd's algorithm on cosine similarity, batched in
    torch). Starts from k distinct random rows; an emptied cluster is re-seeded with the row worst served so far."""
    n = z.shape[0]
    if k == 1:  # what Lloyd's algorithm reaches from any start (depthwise convolutions: one output per group)
        total = z.sum(dim=0, keepdim=True)
        return total / total.norm().clamp_min(1e-30)
    centres = z[torch.randperm(n, generator=gen, device=gen.device)[:k].to(z.device)].clone()
    settled = n // 1000  # stop once at most 0.1% of the rows change cluster
    previous = None
    for _ in range(iters):
        best, assign = (z @ centres.t()).max(dim=1)
        if previous is not None and int((assign != previous).sum()) <= settled:
            break
        previous = assign
        sums = torch.zeros_like(centres).index_add_(0, assign, z)
        counts = torch.bincount(assign, minlength=k)
        empty = (counts == 0).nonzero().flatten()
        if len(empty):
            worst = torch.argsort(best)[:len(empty)]
            sums[empty] = z[worst]
        norms = sums.norm(dim=1, keepdim=True)
        centres = torch.where(norms > 0, sums / norms.clamp_min(1e-300), centres)
    return centres
