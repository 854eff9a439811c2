//! [`ParameterCount`]: trainable and total parameters of a model, as PEFT's
//! `print_trainable_parameters` reports them (a 4-bit weight counts as its element count).

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Int, Tensor};

/// Trainable and total parameter counts of a module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ParameterCount {
    /// Elements of float parameters whose value requires a gradient. In Burn that is only the
    /// case on an autodiff device, so an inference model counts 0.
    pub trainable: usize,
    /// Elements of every float parameter plus the element count of every NF4 weight.
    pub total: usize,
}

impl ParameterCount {
    /// Counts the parameters of `module`.
    pub fn of<M: Module>(module: &M) -> Self {
        let mut v = Counter {
            count: Self::default(),
            field: None,
        };
        module.visit(&mut v);
        v.count
    }
}

impl core::fmt::Display for ParameterCount {
    /// PEFT's line: `trainable params: 1,024 || all params: 65,536 || trainable%: 1.5625`.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let pct = if self.total == 0 {
            0.0
        } else {
            100.0 * self.trainable as f64 / self.total as f64
        };
        write!(
            f,
            "trainable params: {} || all params: {} || trainable%: {pct:.4}",
            thousands(self.trainable),
            thousands(self.total)
        )
    }
}

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

struct Counter {
    count: ParameterCount,
    /// The field being visited and its container, e.g. `("shape", "Struct:Nf4Weight")`.
    field: Option<(String, String)>,
}

impl ModuleVisitor for Counter {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.field = Some((name.to_string(), container_type.to_string()));
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let n = param.lazy_shape().num_elements();
        self.count.total += n;
        if param.val().is_require_grad() {
            self.count.trainable += n;
        }
    }

    fn visit_int<const D: usize>(&mut self, param: &Param<Tensor<D, Int>>) {
        if let Some((name, container)) = &self.field
            && name == "shape"
            && container == "Struct:Nf4Weight"
        {
            let dims = param
                .val()
                .into_data()
                .convert::<u64>()
                .try_to_vec::<u64>()
                .unwrap_or_default();
            self.count.total += dims.iter().product::<u64>() as usize;
        }
    }
}
