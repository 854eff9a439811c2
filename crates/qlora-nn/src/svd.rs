//! The truncated SVDs of the adapter initialisations (PiSSA, LoftQ), in f64 with `faer`: pure
//! Rust, maintained, with fast dense decompositions, and no system library to install (the
//! README's commands must work on a fresh machine). Built without its `rayon` feature, so an
//! SVD runs on one thread and the same matrix gives the same bits whatever the thread count:
//! an adapter's initialisation is rebuilt exactly on resume or reload on the same machine. faer
//! picks its matrix-product kernels by CPU, so on another CPU the last bits may differ.

use faer::Mat;

/// The top singular triplets of a matrix.
pub(crate) struct TopSingular {
    /// Left vectors, `[rows, r]`.
    pub left: Mat<f64>,
    /// Singular values, falling.
    pub values: Vec<f64>,
    /// Right vectors, `[cols, r]`.
    pub right: Mat<f64>,
}

/// The top-`r` singular triplets of `w`. The full SVD when `niter` is `None`, else the randomized one with that
/// many power iterations (its random start drawn from `seed`).
pub(crate) fn top_singular(
    w: &Mat<f64>,
    r: usize,
    niter: Option<usize>,
    seed: u64,
) -> Result<TopSingular, String> {
    match niter {
        None => {
            let svd = w
                .thin_svd()
                .map_err(|e| format!("the SVD did not converge: {e:?}"))?;
            let s = svd.S().column_vector();
            Ok(TopSingular {
                left: svd.U().subcols(0, r).to_owned(),
                values: (0..r).map(|i| s[i]).collect(),
                right: svd.V().subcols(0, r).to_owned(),
            })
        }
        Some(niter) => randomized_svd(w, r, niter, seed),
    }
}

/// The thin Q of `x`'s QR decomposition.
fn orthonormal(x: &Mat<f64>) -> Mat<f64> {
    x.qr().compute_thin_Q()
}

/// Rank-`q` SVD of `w` by a random range (Halko et al. 2011, Algorithms 4.4 and 5.1): `Q` an
/// orthonormal basis of `(W·Wᵀ)^niter·W·Ω`, then the SVD of the small `Qᵀ·W`.
fn randomized_svd(w: &Mat<f64>, q: usize, niter: usize, seed: u64) -> Result<TopSingular, String> {
    let mut rng = Gaussian::new(seed);
    let omega = Mat::<f64>::from_fn(w.ncols(), q, |_, _| rng.next());
    let mut basis = orthonormal(&(w * &omega));
    for _ in 0..niter {
        let back = orthonormal(&(w.transpose() * &basis));
        basis = orthonormal(&(w * &back));
    }
    let small = basis.transpose() * w;
    let svd = small
        .thin_svd()
        .map_err(|e| format!("the SVD did not converge: {e:?}"))?;
    let s = svd.S().column_vector();
    Ok(TopSingular {
        left: &basis * svd.U().subcols(0, q),
        values: (0..q).map(|i| s[i]).collect(),
        right: svd.V().subcols(0, q).to_owned(),
    })
}

/// Standard normal draws (splitmix64, then Box–Muller).
struct Gaussian {
    state: u64,
}

impl Gaussian {
    fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    fn uniform(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn next(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}
