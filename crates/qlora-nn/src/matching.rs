//! Which modules a [`LoraConfig`] adapts, with which rank and alpha: PEFT's matching rules
//! (`check_target_module_exists`, `get_pattern_key`), on dotted module paths such as
//! `model.layers.3.self_attn.q_proj`.

use regex::Regex;

use crate::{LayerIndices, LayersPattern, LoraConfig, ModuleSelector};

/// What a module is to its model, which PEFT's `"all-linear"` needs to know: it adapts every
/// linear layer but the model's output head (`lm_head`), and nothing that is not a linear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleKind {
    /// A linear layer inside the model.
    Linear,
    /// The linear that projects to the output (vocabulary logits, class scores).
    OutputHead,
    /// Anything else (an embedding, a norm).
    Other,
}

/// A compiled [`LoraConfig`]: answers "is this module adapted, and how".
#[derive(Debug, Clone)]
pub struct LoraMatcher {
    targets: Selector,
    exclude: Option<Selector>,
    layers: Option<Vec<usize>>,
    layer_regexes: Vec<Regex>,
    rank_pattern: Vec<(Regex, String, usize)>,
    alpha_pattern: Vec<(Regex, String, f64)>,
    r: usize,
    lora_alpha: f64,
    use_rslora: bool,
    modules_to_save: Vec<String>,
}

#[derive(Debug, Clone)]
enum Selector {
    None,
    AllLinear,
    Names(Vec<String>),
    Pattern(Regex),
}

impl Selector {
    fn new(
        s: Option<&ModuleSelector>,
        field: &'static str,
    ) -> Result<Self, (&'static str, String)> {
        Ok(match s {
            None => Selector::None,
            Some(ModuleSelector::Pattern(p)) if p == "all-linear" && field == "target_modules" => {
                Selector::AllLinear
            }
            Some(ModuleSelector::Pattern(p)) => {
                Selector::Pattern(full_match(p).map_err(|e| (field, e))?)
            }
            Some(ModuleSelector::List(names)) => Selector::Names(names.clone()),
        })
    }
}

/// `re.fullmatch(p, key)` as an anchored Rust regex.
fn full_match(p: &str) -> Result<Regex, String> {
    Regex::new(&format!("^(?:{p})$")).map_err(|e| format!("pattern `{p}` does not compile: {e}"))
}

fn suffix_match(names: &[String], key: &str) -> bool {
    names
        .iter()
        .any(|n| key == n || key.ends_with(&format!(".{n}")))
}

impl LoraMatcher {
    /// Compiles the patterns of `config`. Errors name the field and the pattern.
    pub fn new(config: &LoraConfig) -> Result<Self, (&'static str, String)> {
        let layer_regexes = match &config.layers_pattern {
            None => vec![Regex::new(r"^.*\.[^.]*\.(\d+)\.").expect("valid")],
            Some(LayersPattern::One(p)) if p.is_empty() => {
                vec![Regex::new(r"^.*\.[^.]*\.(\d+)\.").expect("valid")]
            }
            Some(LayersPattern::One(p)) => vec![layer_regex(p)?],
            Some(LayersPattern::Many(ps)) => ps
                .iter()
                .map(|p| layer_regex(p))
                .collect::<Result<_, _>>()?,
        };
        let pattern = |k: &str, field: &'static str| {
            Regex::new(&format!(r"^(.*\.)?({k})$"))
                .map_err(|e| (field, format!("pattern `{k}` does not compile: {e}")))
        };
        Ok(Self {
            targets: Selector::new(config.target_modules.as_ref(), "target_modules")?,
            exclude: match &config.exclude_modules {
                None => None,
                Some(s) => Some(Selector::new(Some(s), "exclude_modules")?),
            },
            layers: match &config.layers_to_transform {
                None => None,
                Some(LayerIndices::One(i)) => Some(vec![*i]),
                Some(LayerIndices::Many(v)) if v.is_empty() => None,
                Some(LayerIndices::Many(v)) => Some(v.clone()),
            },
            layer_regexes,
            rank_pattern: config
                .rank_pattern
                .iter()
                .map(|(k, r)| Ok((pattern(k, "rank_pattern")?, k.clone(), *r)))
                .collect::<Result<_, _>>()?,
            alpha_pattern: config
                .alpha_pattern
                .iter()
                .map(|(k, a)| Ok((pattern(k, "alpha_pattern")?, k.clone(), *a)))
                .collect::<Result<_, _>>()?,
            r: config.r,
            lora_alpha: config.lora_alpha,
            use_rslora: config.use_rslora,
            modules_to_save: config.modules_to_save.clone().unwrap_or_default(),
        })
    }

    /// True if the module at `path` is one of `modules_to_save`: trained in full and saved
    /// with the adapter. A name matches the module of that name or any module whose dotted
    /// path ends with it, as for `target_modules` lists.
    pub fn is_module_to_save(&self, path: &str) -> bool {
        suffix_match(&self.modules_to_save, path)
    }

    /// True if the module at `path`, of kind `kind`, gets an adapter (`"all-linear"` takes
    /// every [`ModuleKind::Linear`], so neither the head nor other modules).
    pub fn is_target(&self, path: &str, kind: ModuleKind) -> bool {
        if let Some(ex) = &self.exclude {
            let excluded = match ex {
                Selector::Pattern(re) => re.is_match(path),
                Selector::Names(n) => suffix_match(n, path),
                Selector::None | Selector::AllLinear => false,
            };
            if excluded {
                return false;
            }
        }
        match &self.targets {
            Selector::None => false,
            Selector::AllLinear => kind == ModuleKind::Linear && self.in_layers(path),
            Selector::Pattern(re) => re.is_match(path),
            Selector::Names(names) => {
                if names.iter().any(|n| n == path) {
                    true
                } else {
                    suffix_match(names, path) && self.in_layers(path)
                }
            }
        }
    }

    /// `layers_to_transform`: the layer index found in `path` is one of them.
    fn in_layers(&self, path: &str) -> bool {
        let Some(layers) = &self.layers else {
            return true;
        };
        let index = self.layer_regexes.iter().find_map(|re| {
            re.captures(path)
                .and_then(|c| c.get(1))
                .and_then(|m| m.as_str().parse::<usize>().ok())
        });
        index.is_some_and(|i| layers.contains(&i))
    }

    /// The rank of the module at `path` (`rank_pattern`, else `r`).
    pub fn rank(&self, path: &str) -> usize {
        pattern_value(&self.rank_pattern, path).unwrap_or(self.r)
    }

    /// The alpha of the module at `path` (`alpha_pattern`, else `lora_alpha`).
    pub fn alpha(&self, path: &str) -> f64 {
        pattern_value(&self.alpha_pattern, path).unwrap_or(self.lora_alpha)
    }

    /// `alpha / r`, or `alpha / sqrt(r)` with rsLoRA.
    pub fn scaling(&self, path: &str) -> f64 {
        let (r, alpha) = (self.rank(path) as f64, self.alpha(path));
        if self.use_rslora {
            alpha / r.sqrt()
        } else {
            alpha / r
        }
    }
}

fn layer_regex(p: &str) -> Result<Regex, (&'static str, String)> {
    Regex::new(&format!(r"^.*\.{p}\.(\d+)\.")).map_err(|e| {
        (
            "layers_pattern",
            format!("pattern `{p}` does not compile: {e}"),
        )
    })
}

/// PEFT's `get_pattern_key`: the first key (in file order) that equals `path` or matches
/// `(.*\.)?(key)$` at its start.
fn pattern_value<T: Copy>(patterns: &[(Regex, String, T)], path: &str) -> Option<T> {
    patterns
        .iter()
        .find(|(_, k, _)| k == path)
        .or_else(|| patterns.iter().find(|(re, _, _)| re.is_match(path)))
        .map(|(_, _, v)| *v)
}
