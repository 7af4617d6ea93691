//! Named model parameters (candle `Var`s), their loading from HF weight files and initialisation.

mod pytorch;

use crate::rng::Rng;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Named trainable parameters, in name order.
#[derive(Default)]
pub struct Params {
    vars: BTreeMap<String, Var>,
}

impl Params {
    /// Parameters from named tensors (e.g. the weights [`read_weights`] returns), each copied as f32.
    pub fn from_tensors<'a>(tensors: impl IntoIterator<Item = (&'a String, &'a Tensor)>) -> Result<Params> {
        let mut params = Params::default();
        for (name, t) in tensors {
            params.insert(name, t)?;
        }
        Ok(params)
    }

    /// Adds (or replaces) a parameter, copied into its own storage as f32.
    pub fn insert(&mut self, name: &str, tensor: &Tensor) -> Result<()> {
        let var = Var::from_tensor(&tensor.to_dtype(DType::F32)?.contiguous()?)?;
        self.vars.insert(name.to_string(), var);
        Ok(())
    }

    /// Whether a parameter exists.
    pub fn contains(&self, name: &str) -> bool {
        self.vars.contains_key(name)
    }

    /// The parameter `name` as a tracked tensor (gradients flow to it).
    pub fn trainable(&self, name: &str) -> Result<Tensor> {
        Ok(self.var(name)?.as_tensor().clone())
    }

    /// The parameter `name` as a detached tensor sharing its storage (no autograd graph).
    pub fn frozen(&self, name: &str) -> Result<Tensor> {
        Ok(self.var(name)?.as_tensor().detach())
    }

    fn var(&self, name: &str) -> Result<&Var> {
        self.vars.get(name).with_context(|| format!("the model has no weight `{name}`"))
    }

    /// All parameters in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Var)> {
        self.vars.iter()
    }

    /// Total number of scalar parameters.
    pub fn count(&self) -> usize {
        self.vars.values().map(|v| v.elem_count()).sum()
    }

    /// The parameters as plain tensors, for saving.
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        self.vars.iter().map(|(k, v)| (k.clone(), v.as_tensor().detach())).collect()
    }

    /// Adds `name` drawn from N(0, std) (or zeros when `std` is 0) unless it already exists.
    /// Returns whether it was added.
    pub fn init_missing(
        &mut self,
        name: &str,
        shape: &[usize],
        std: f64,
        rng: &mut Rng,
        device: &Device,
    ) -> Result<bool> {
        if self.contains(name) {
            return Ok(false);
        }
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|_| if std == 0.0 { 0.0 } else { rng.normal() * std as f32 }).collect();
        self.insert(name, &Tensor::from_vec(data, shape, device)?)?;
        Ok(true)
    }

    /// Adds each `(name, shape, std)` of `wanted`: from `source/model.safetensors` when it holds
    /// that name with that shape (a resumed run), else as [`Params::init_missing`] draws it.
    /// Returns the names it initialised.
    pub fn adopt_or_init(
        &mut self,
        source: &Path,
        wanted: &[(String, Vec<usize>, f64)],
        rng: &mut Rng,
        device: &Device,
    ) -> Result<Vec<String>> {
        let file = source.join("model.safetensors");
        let saved = if file.is_file() {
            candle_core::safetensors::load(&file, device).with_context(|| format!("cannot read {}", file.display()))?
        } else {
            Default::default()
        };
        let mut created = Vec::new();
        for (name, shape, std) in wanted {
            match saved.get(name) {
                Some(t) if t.dims() == shape.as_slice() => self.insert(name, t)?,
                _ => {
                    if self.init_missing(name, shape, *std, rng, device)? {
                        created.push(name.clone());
                    }
                }
            }
        }
        Ok(created)
    }
}

/// Reads the weights of a model directory (`model.safetensors` or `pytorch_model.bin`) and
/// normalises HF names: a `bert.` prefix is added where missing, `gamma`/`beta` become
/// `weight`/`bias`. Returns the weights and the names that are not BERT/classifier weights.
pub fn read_weights(dir: &Path, device: &Device) -> Result<(HashMap<String, Tensor>, Vec<String>)> {
    let st = dir.join("model.safetensors");
    let bin = dir.join("pytorch_model.bin");
    let raw: Vec<(String, Tensor)> = if st.is_file() {
        candle_core::safetensors::load(&st, device)
            .with_context(|| format!("{}: cannot read the weights", st.display()))?
            .into_iter()
            .collect()
    } else if bin.is_file() {
        pytorch::read(&bin)?.into_iter().map(|(k, t)| Ok((k, t.to_device(device)?))).collect::<Result<_>>()?
    } else {
        bail!("{}: no model.safetensors or pytorch_model.bin", dir.display());
    };
    let mut weights = HashMap::new();
    let mut unexpected = Vec::new();
    for (name, tensor) in raw {
        let mut n = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias");
        if n.starts_with("embeddings.") || n.starts_with("encoder.") || n.starts_with("pooler.") {
            n = format!("bert.{n}");
        }
        let known = n.starts_with("bert.") || n.starts_with("classifier.") || n.starts_with("fit_dense.");
        if !known || n.ends_with("position_ids") {
            unexpected.push(name);
            continue;
        }
        weights.insert(n, tensor.to_dtype(DType::F32)?);
    }
    Ok((weights, unexpected))
}
