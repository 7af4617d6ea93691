//! AdamW (and Adam, BertAdam, SGD) with EasyNLP's parameter groups, updating weights in place.
//!
//! On the CPU the update is one fused in-place pass per parameter (no temporaries); on other
//! devices it is written with tensor ops.

use crate::model::params::Params;
use anyhow::{bail, Result};
use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, InplaceOp2, Layout, Tensor, Var};
use std::cell::RefCell;
use std::collections::HashMap;

/// Optimizers accepted by `--optimizer_type`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum OptimizerKind {
    /// AdamW with decoupled weight decay and bias correction (EasyNLP's default).
    #[value(name = "AdamW")]
    AdamW,
    /// Adam with L2 weight decay added to the gradient (torch.optim.Adam).
    #[value(name = "Adam")]
    Adam,
    /// BERT's Adam: decoupled weight decay, no bias correction.
    #[value(name = "BertAdam")]
    BertAdam,
    /// Plain SGD with L2 weight decay.
    #[value(name = "SGD")]
    Sgd,
}

/// Hyper-parameters of one optimizer step.
#[derive(Copy, Clone, Debug)]
pub struct StepParams {
    /// Learning rate of this step.
    pub lr: f64,
    /// Factor applied to every gradient first (clipping and accumulation averaging).
    pub grad_scale: f64,
}

struct Slot {
    name: String,
    var: Var,
    decay: bool,
    m: Vec<f32>,
    v: Vec<f32>,
}

/// The optimizer and its per-parameter moments.
pub struct Optimizer {
    kind: OptimizerKind,
    weight_decay: f64,
    slots: Vec<Slot>,
    /// Optimizer steps taken so far.
    pub steps: usize,
}

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-6;

/// EasyNLP's no-decay group: biases and LayerNorm weights.
pub fn decays(name: &str) -> bool {
    !(name.contains("bias") || name.contains("LayerNorm.weight"))
}

impl Optimizer {
    /// An optimizer over every parameter in `params`.
    pub fn new(params: &Params, kind: OptimizerKind, weight_decay: f64) -> Self {
        let slots = params
            .iter()
            .map(|(name, var)| Slot {
                name: name.clone(),
                var: var.clone(),
                decay: decays(name),
                m: vec![0.0; var.elem_count()],
                v: vec![0.0; var.elem_count()],
            })
            .collect();
        Optimizer { kind, weight_decay, slots, steps: 0 }
    }

    /// The global L2 norm of the gradients of all parameters.
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        let mut total = 0f64;
        for slot in &self.slots {
            if let Some(g) = grads.get(slot.var.as_tensor()) {
                total += squared_norm(g)?;
            }
        }
        Ok(total.sqrt())
    }

    /// Applies one update from `grads`. Parameters without a gradient are left alone.
    pub fn step(&mut self, grads: &GradStore, sp: StepParams) -> Result<()> {
        self.steps += 1;
        let t = self.steps as i32;
        let (bc1, bc2) = match self.kind {
            OptimizerKind::AdamW | OptimizerKind::Adam => (1.0 - BETA1.powi(t), 1.0 - BETA2.powi(t)),
            _ => (1.0, 1.0),
        };
        for slot in &mut self.slots {
            let Some(grad) = grads.get(slot.var.as_tensor()) else {
                continue;
            };
            let grad = grad.contiguous()?;
            let update = Update {
                rule: Rule {
                    kind: self.kind,
                    lr: sp.lr as f32,
                    wd: if slot.decay { self.weight_decay as f32 } else { 0.0 },
                    scale: sp.grad_scale as f32,
                    bc1: bc1 as f32,
                    bc2: bc2 as f32,
                },
                m: RefCell::new(&mut slot.m),
                v: RefCell::new(&mut slot.v),
            };
            if slot.var.device().is_cpu() {
                slot.var.as_tensor().inplace_op2(&grad, &update)?;
            } else {
                update.on_device(&slot.var, &grad)?;
            }
        }
        Ok(())
    }

    /// The moments as tensors (`m.<name>`, `v.<name>`), for resumable checkpoints.
    pub fn state_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for s in &self.slots {
            let shape = s.var.shape().clone();
            out.insert(format!("m.{}", s.name), Tensor::from_slice(&s.m, shape.clone(), &candle_core::Device::Cpu)?);
            out.insert(format!("v.{}", s.name), Tensor::from_slice(&s.v, shape, &candle_core::Device::Cpu)?);
        }
        Ok(out)
    }

    /// Restores moments saved by [`Optimizer::state_tensors`] and the step count.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, steps: usize) -> Result<()> {
        for s in &mut self.slots {
            for (prefix, buf) in [("m", &mut s.m), ("v", &mut s.v)] {
                let key = format!("{prefix}.{}", s.name);
                let Some(t) = tensors.get(&key) else { bail!("optimizer state has no `{key}`") };
                let data = t.flatten_all()?.to_vec1::<f32>()?;
                if data.len() != buf.len() {
                    bail!("optimizer state `{key}` has {} values, expected {}", data.len(), buf.len());
                }
                *buf = data;
            }
        }
        self.steps = steps;
        Ok(())
    }
}

/// Sum of squares of a tensor: a parallel pass over CPU f32 data, tensor ops elsewhere.
fn squared_norm(t: &Tensor) -> Result<f64> {
    use rayon::prelude::*;
    let (storage, layout) = t.storage_and_layout();
    if let candle_core::Storage::Cpu(CpuStorage::F32(data)) = &*storage {
        if let Some((a, b)) = layout.contiguous_offsets() {
            // Partial sums collected, then added in chunk order: the same bits on every run.
            let partials: Vec<f64> = data[a..b].par_chunks(1 << 15).map(crate::ops::util::sum_squares).collect();
            return Ok(partials.iter().sum());
        }
    }
    Ok(t.sqr()?.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?)
}

struct Update<'a> {
    rule: Rule,
    m: RefCell<&'a mut Vec<f32>>,
    v: RefCell<&'a mut Vec<f32>>,
}

impl Update<'_> {
    /// The update rule on host slices, in parallel chunks.
    fn apply(&self, p: &mut [f32], g: &[f32]) {
        use rayon::prelude::*;
        const CHUNK: usize = 1 << 15;
        let mut m = self.m.borrow_mut();
        let mut v = self.v.borrow_mut();
        let rule = &self.rule; // the closure must not capture `self`, whose RefCells are not Sync
        p.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .for_each(|(((p, g), m), v)| apply_rule(rule, p, g, m, v));
    }
}

/// The scalar hyper-parameters of one update.
#[derive(Clone, Copy)]
struct Rule {
    kind: OptimizerKind,
    lr: f32,
    wd: f32,
    scale: f32,
    bc1: f32,
    bc2: f32,
}

crate::ops::util::simd_fn! {
    /// The update `rule` on one chunk of a parameter, its gradient and moments.
    fn apply_rule(rule: &Rule, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        let (b1, b2, eps) = (BETA1 as f32, BETA2 as f32, EPS as f32);
        let (lr, wd, s) = (rule.lr, rule.wd, rule.scale);
        match rule.kind {
            OptimizerKind::AdamW | OptimizerKind::BertAdam => {
                let step = lr / rule.bc1;
                let inv_bc2 = 1.0 / rule.bc2;
                for i in 0..p.len() {
                    let gi = g[i] * s;
                    m[i] = b1 * m[i] + (1.0 - b1) * gi;
                    v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
                    p[i] -= step * m[i] / ((v[i] * inv_bc2).sqrt() + eps);
                    p[i] -= lr * wd * p[i];
                }
            }
            OptimizerKind::Adam => {
                let step = lr / rule.bc1;
                let inv_bc2 = 1.0 / rule.bc2;
                for i in 0..p.len() {
                    let gi = g[i] * s + wd * p[i];
                    m[i] = b1 * m[i] + (1.0 - b1) * gi;
                    v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
                    p[i] -= step * m[i] / ((v[i] * inv_bc2).sqrt() + eps);
                }
            }
            OptimizerKind::Sgd => {
                for i in 0..p.len() {
                    p[i] -= lr * (g[i] * s + wd * p[i]);
                }
            }
        }
    }
}

impl Update<'_> {
    /// The same rule with tensor ops, for non-CPU devices.
    fn on_device(&self, var: &Var, grad: &Tensor) -> Result<()> {
        let dev = var.device();
        let mut m = self.m.borrow_mut();
        let mut v = self.v.borrow_mut();
        let shape = var.shape().clone();
        let p = var.as_tensor().detach();
        let r = self.rule;
        let g = (grad * r.scale as f64)?;
        let mt = Tensor::from_slice(m.as_slice(), shape.clone(), dev)?;
        let vt = Tensor::from_slice(v.as_slice(), shape.clone(), dev)?;
        let (b1, b2) = (BETA1, BETA2);
        let (lr, wd) = (r.lr as f64, r.wd as f64);
        let new_p = match r.kind {
            OptimizerKind::Sgd => (&p - ((&g + (&p * wd)?)? * lr)?)?,
            kind => {
                let g = if kind == OptimizerKind::Adam { (&g + (&p * wd)?)? } else { g };
                let m2 = ((&mt * b1)? + (&g * (1.0 - b1))?)?;
                let v2 = ((&vt * b2)? + (g.sqr()? * (1.0 - b2))?)?;
                let denom = ((&v2 / r.bc2 as f64)?.sqrt()? + EPS)?;
                let mut np = (&p - ((&m2 / denom)? * (lr / r.bc1 as f64))?)?;
                if kind != OptimizerKind::Adam {
                    np = (&np - (&np * (lr * wd))?)?;
                }
                **m = m2.flatten_all()?.to_vec1()?;
                **v = v2.flatten_all()?.to_vec1()?;
                np
            }
        };
        var.set(&new_p)?;
        Ok(())
    }
}

impl InplaceOp2 for Update<'_> {
    fn name(&self) -> &'static str {
        "optimizer-update"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        src: &CpuStorage,
        src_l: &Layout,
    ) -> candle_core::Result<()> {
        let (Some((p0, p1)), Some((g0, g1))) = (dst_l.contiguous_offsets(), src_l.contiguous_offsets()) else {
            candle_core::bail!("optimizer update needs contiguous tensors")
        };
        match (dst, src) {
            (CpuStorage::F32(p), CpuStorage::F32(g)) => {
                self.apply(&mut p[p0..p1], &g[g0..g1]);
                Ok(())
            }
            _ => candle_core::bail!("optimizer update needs f32 tensors"),
        }
    }
}
