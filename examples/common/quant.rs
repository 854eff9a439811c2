//! `--quant-type`, `--double-quant`, `--blocksize`: bitsandbytes' `BitsAndBytesConfig` for the
//! frozen base (`bnb_4bit_quant_type`, `bnb_4bit_use_double_quant`, the blocksize), as the
//! QLoRA paper's comparison of 16-bit LoRA, NF4 + DQ, NF4 and FP4 needs (Dettmers et al. 2023,
//! Tables 3–4).

use std::path::Path;

use burn_qlora::nf4::{AbsmaxRounding, Blocksize, QuantConfig, QuantType};

/// The base's quantization options, flattened into a program's own (`#[command(flatten)]`).
#[derive(Clone, Debug, clap::Args)]
pub struct QuantArgs {
    /// The frozen base's 4-bit type (bnb_4bit_quant_type): nf4, fp4, or none (a float base:
    /// plain LoRA). A bnb-4bit folder keeps its own codes; other settings are refused.
    #[arg(long, value_enum, default_value = "nf4")]
    pub quant_type: QuantKind,
    /// Quantize the 4-bit blocks' scales to 8 bits (bnb_4bit_use_double_quant): true or false.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub double_quant: bool,
    /// Elements per 4-bit block (a power of two from 32 to 4096) [default: 64].
    #[arg(long)]
    pub blocksize: Option<usize>,
    /// How double quantization rounds the scales to 8 bits: nearest (bitsandbytes on CUDA) or
    /// cpu-table (bitsandbytes' CPU build: the same bits as a bnb-4bit folder it wrote).
    #[arg(long, value_enum, default_value = "nearest")]
    pub absmax_rounding: RoundingKind,
}

impl QuantArgs {
    /// The base's quantization for `model` (see [`quant_config`]).
    pub fn config(&self, model: &Path) -> Result<Option<QuantConfig>, Box<dyn std::error::Error>> {
        Ok(
            quant_config(self.quant_type, self.double_quant, self.blocksize, model)?
                .map(|c| c.with_absmax_rounding(self.absmax_rounding.into())),
        )
    }
}

/// `--absmax-rounding`'s values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RoundingKind {
    /// The exact nearest 8-bit code (bitsandbytes' CUDA quantizer).
    Nearest,
    /// bitsandbytes' CPU build's 65 536-entry lookup table.
    CpuTable,
}

impl From<RoundingKind> for AbsmaxRounding {
    fn from(k: RoundingKind) -> Self {
        match k {
            RoundingKind::Nearest => AbsmaxRounding::Nearest,
            RoundingKind::CpuTable => AbsmaxRounding::CpuTable,
        }
    }
}

/// `--quant-type`'s values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum QuantKind {
    /// 4-bit NormalFloat (QLoRA's).
    Nf4,
    /// bitsandbytes' 4-bit float.
    Fp4,
    /// No quantization: the base stays float (plain LoRA).
    None,
}

/// The base's quantization from the options (`None`: a float base), checked against a
/// bnb-4bit `model` folder, whose 4-bit codes are kept as they are: other settings than its
/// own are refused rather than silently ignored (or re-quantizing rounded values).
pub fn quant_config(
    kind: QuantKind,
    double_quant: bool,
    blocksize: Option<usize>,
    model: &Path,
) -> Result<Option<QuantConfig>, Box<dyn std::error::Error>> {
    let quant_type = match kind {
        QuantKind::Nf4 => QuantType::Nf4,
        QuantKind::Fp4 => QuantType::Fp4,
        QuantKind::None => {
            if let Some(b) = blocksize {
                return Err(format!("--blocksize {b}: no blocks with --quant-type none").into());
            }
            return Ok(None);
        }
    };
    let config = QuantConfig {
        quant_type,
        blocksize: Blocksize::new(blocksize.unwrap_or(64), "--blocksize")?,
        double_quant,
        absmax_rounding: Default::default(),
    };
    if let Some((file_kind, file_dq)) = super::bnb_4bit_of(model)? {
        let refuse = |what: String| -> Result<(), Box<dyn std::error::Error>> {
            Err(format!(
                "{}: a bnb-4bit folder ({file_kind}, double quant {file_dq}); {what}: its 4-bit \
                 codes are kept as they are, so train on the float model instead",
                model.display()
            )
            .into())
        };
        if file_kind != quant_type.as_str() {
            refuse(format!(
                "--quant-type {} asks for another type",
                quant_type.as_str()
            ))?;
        }
        if file_dq != double_quant {
            refuse(format!("--double-quant {double_quant} asks otherwise"))?;
        }
        if let Some(b) = blocksize {
            refuse(format!("--blocksize {b} cannot change its blocks"))?;
        }
    }
    Ok(Some(config))
}

/// How the base is held, for the log line.
pub fn describe(config: Option<QuantConfig>) -> String {
    match config {
        None => "float (no quantization: plain LoRA)".into(),
        Some(c) => format!(
            "{}, blocksize {}, double quant {}",
            c.quant_type.as_str(),
            c.blocksize.get(),
            c.double_quant
        ),
    }
}
