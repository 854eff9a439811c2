//! [`LayerType`]: which attention each decoder layer runs, as transformers 5's `layer_types`
//! says (`full_attention` or `sliding_attention`), read from the list or derived as each
//! family's config class derives it when the list is absent: Qwen2/Qwen3 slide from layer
//! `max_window_layers` on when `use_sliding_window` is set, Gemma 3 slides except every
//! `sliding_window_pattern`-th layer, Mistral and Phi-3 slide everywhere when `sliding_window`
//! is set.

use serde_json::Value;

use crate::LlamaError;
use crate::config::{Fields, err};

/// The attention of one decoder layer (an entry of HF `layer_types`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerType {
    /// Full causal attention.
    Full,
    /// Each query sees the last `sliding_window` keys up to its own.
    Sliding,
}

impl LayerType {
    /// The HF name (`full_attention`, `sliding_attention`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full_attention",
            Self::Sliding => "sliding_attention",
        }
    }
}

/// The longest layer list derived from a count (a config with more layers than this is not a
/// model but a typo; it is refused before anything is allocated for it).
const MAX_LAYERS: usize = 1 << 16;

/// `layer_types` as given, `Ok(None)` when absent; each entry `full_attention` or
/// `sliding_attention`, one per layer.
pub(crate) fn read_list(
    f: &Fields<'_>,
    layers: usize,
) -> Result<Option<Vec<LayerType>>, LlamaError> {
    let Some(v) = f.map.get("layer_types").filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let list = v
        .as_array()
        .ok_or_else(|| err(f.path, "layer_types", format!("expected a list, found {v}")))?;
    if list.len() != layers {
        return Err(err(
            f.path,
            "layer_types",
            format!("{} entries for num_hidden_layers {layers}", list.len()),
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, t)| match t.as_str() {
            Some("full_attention") => Ok(LayerType::Full),
            Some("sliding_attention") => Ok(LayerType::Sliding),
            _ => Err(err(
                f.path,
                &format!("layer_types[{i}]"),
                format!("{t} is not supported (`full_attention` or `sliding_attention`)"),
            )),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// Refuses a layer count too large to list.
fn check_count(f: &Fields<'_>, layers: usize) -> Result<(), LlamaError> {
    if layers > MAX_LAYERS {
        return Err(err(
            f.path,
            "num_hidden_layers",
            format!("{layers} layers is not a model (at most {MAX_LAYERS})"),
        ));
    }
    Ok(())
}

/// Qwen2/Qwen3 (as `Qwen2Config` derives them): the window is `sliding_window` when
/// `use_sliding_window` is set (else none); without a list, layers from `max_window_layers`
/// on slide (where there is a window).
pub(crate) fn qwen(
    f: &Fields<'_>,
    layers: usize,
) -> Result<(Option<usize>, Option<Vec<LayerType>>), LlamaError> {
    let window = if f.bool_or("use_sliding_window", false)? {
        // `Qwen2Config.sliding_window` defaults to 4096; a `null` one is no window.
        match f.map.get("sliding_window") {
            None => Some(4096),
            Some(Value::Null) => None,
            Some(_) => Some(f.usize("sliding_window")?),
        }
    } else {
        None
    };
    let list = read_list(f, layers)?;
    if window.is_none() {
        // Sliding entries without a window attend to every key (`sliding_window` is `None`
        // in their attention): full attention everywhere.
        return Ok((None, None));
    }
    if let Some(list) = list {
        return Ok((window, Some(list)));
    }
    check_count(f, layers)?;
    let first = match f.map.get("max_window_layers") {
        None | Some(Value::Null) => 28,
        Some(v) => v
            .as_u64()
            .and_then(|x| usize::try_from(x).ok())
            .ok_or_else(|| {
                err(
                    f.path,
                    "max_window_layers",
                    format!("expected a layer count, found {v}"),
                )
            })?,
    };
    let list = (0..layers)
        .map(|i| {
            if i >= first {
                LayerType::Sliding
            } else {
                LayerType::Full
            }
        })
        .collect();
    Ok((window, Some(list)))
}

/// Gemma 3: without a list, every layer slides but each `sliding_window_pattern`-th (default
/// 6; `_sliding_window_pattern` as transformers 5 writes it).
pub(crate) fn gemma(f: &Fields<'_>, layers: usize) -> Result<Vec<LayerType>, LlamaError> {
    if let Some(list) = read_list(f, layers)? {
        return Ok(list);
    }
    check_count(f, layers)?;
    let key = ["sliding_window_pattern", "_sliding_window_pattern"]
        .into_iter()
        .find(|k| f.map.get(*k).is_some_and(|v| !v.is_null()));
    let pattern = match key {
        Some(k) => f.usize(k)?,
        None => 6,
    };
    Ok((0..layers)
        .map(|i| {
            if (i + 1) % pattern != 0 {
                LayerType::Sliding
            } else {
                LayerType::Full
            }
        })
        .collect())
}
