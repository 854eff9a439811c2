//! [`KvCache`]: the keys and values of the tokens seen so far, per decoder layer, so that
//! generation computes each new token's attention without recomputing the prefix.

use burn::tensor::Tensor;

/// Past keys and values of every layer, each `[batch, kv_heads, past_len, head_dim]`.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor<4>, Tensor<4>)>>,
    len: usize,
}

impl KvCache {
    /// An empty cache for `num_layers` decoder layers.
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
            len: 0,
        }
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True before the first forward.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends layer `layer`'s new keys/values and returns the full ones (past + new).
    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: Tensor<4>,
        v: Tensor<4>,
    ) -> (Tensor<4>, Tensor<4>) {
        let slot = self.layers.get_mut(layer).unwrap_or_else(|| {
            panic!("KvCache has no layer {layer}; build it for the model's layer count")
        });
        let (k, v) = match slot.take() {
            None => (k, v),
            Some((pk, pv)) => (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)),
        };
        *slot = Some((k.clone(), v.clone()));
        (k, v)
    }

    /// Records that `n` positions were added (after every layer appended).
    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }
}
