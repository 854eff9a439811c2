//! Value parsers for the example programs' options: each refuses, with the option's rule, what
//! would otherwise divide by zero, loop forever or train on nonsense, before any work starts
//! (clap names the option and exits with status 2).

/// A count of at least 1.
pub fn at_least_1(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("`{s}` is not a whole number")),
    }
}

/// A sequence length: at least 2 tokens (one to read, one to predict).
pub fn seq_len(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n < 2 => Err("must be at least 2 tokens".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("`{s}` is not a whole number")),
    }
}

fn number(s: &str) -> Result<f64, String> {
    let v = s
        .parse::<f64>()
        .map_err(|_| format!("`{s}` is not a number"))?;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(format!("must be a finite number, not {s}"))
    }
}

/// A finite number above 0 (learning rates, alpha, epochs).
pub fn positive(s: &str) -> Result<f64, String> {
    match number(s)? {
        v if v > 0.0 => Ok(v),
        _ => Err("must be above 0".into()),
    }
}

/// A finite number of at least 0 (a norm bound where 0 turns it off).
pub fn non_negative(s: &str) -> Result<f64, String> {
    match number(s)? {
        v if v >= 0.0 => Ok(v),
        _ => Err("must be 0 or more".into()),
    }
}

/// A fraction in [0, 1) (dropout, the held-out share).
pub fn fraction(s: &str) -> Result<f64, String> {
    match number(s)? {
        v if (0.0..1.0).contains(&v) => Ok(v),
        _ => Err("must be in [0, 1)".into()),
    }
}

/// A probability mass in (0, 1] (top-p).
pub fn mass(s: &str) -> Result<f32, String> {
    match number(s)? {
        v if v > 0.0 && v <= 1.0 => Ok(v as f32),
        _ => Err("must be in (0, 1]".into()),
    }
}

/// A sampling temperature above 0.
pub fn temperature(s: &str) -> Result<f32, String> {
    positive(s).map(|v| v as f32)
}

/// `--init-lora-weights`: `default`, `gaussian`, `pissa`, `pissa_niter_K` or `loftq` (PEFT's
/// `init_lora_weights` values a new adapter starts from).
pub fn init_lora_weights(s: &str) -> Result<burn_qlora::nn::InitLoraWeights, String> {
    use burn_qlora::nn::InitLoraWeights;
    match InitLoraWeights::parse(s) {
        Some(InitLoraWeights::Random) | None => Err(
            "expected default, gaussian, pissa, pissa_niter_K (K power iterations) or loftq".into(),
        ),
        Some(v) => Ok(v),
    }
}

/// `--init-lora-weights` with `--loftq-iter`'s count where it is `loftq`.
pub fn with_loftq_iter(
    init: burn_qlora::nn::InitLoraWeights,
    iters: u32,
) -> burn_qlora::nn::InitLoraWeights {
    use burn_qlora::nn::InitLoraWeights;
    match init {
        InitLoraWeights::Loftq { .. } => InitLoraWeights::Loftq {
            iters: iters as usize,
        },
        other => other,
    }
}
