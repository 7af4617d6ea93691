//! AdamW (and Adam, BertAdam, SGD) with EasyNLP's parameter groups, updating weights in place.
//!
//! On the CPU the update is one fused in-place pass per parameter (no temporaries) over moments
//! held in host memory; on other devices (and with `EASYNLP_KERNELS=portable`) the moments are
//! tensors on the parameters' device and the update is written with tensor ops, so a step moves
//! nothing between host and device.

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

/// The factor the gradients are multiplied by before an update ([`Optimizer::grad_scale`]).
pub enum GradScale {
    /// A host number.
    Host(f64),
    /// An f32 scalar on the parameters' device.
    Device(Tensor),
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
    moments: Moments,
}

/// The first and second moments of one parameter.
enum Moments {
    /// Host vectors, updated by the fused in-place CPU pass.
    Host { m: Vec<f32>, v: Vec<f32> },
    /// Tensors on the parameter's device, updated with tensor ops.
    Device { m: Tensor, v: Tensor },
}

impl Moments {
    fn zeros(var: &Var) -> Result<Self> {
        let t = var.as_tensor();
        if fused_update(var) {
            Ok(Moments::Host { m: vec![0.0; t.elem_count()], v: vec![0.0; t.elem_count()] })
        } else {
            Ok(Moments::Device { m: t.zeros_like()?, v: t.zeros_like()? })
        }
    }
}

/// Whether `var` is updated by the fused CPU pass.
fn fused_update(var: &Var) -> bool {
    var.device().is_cpu()
        && var.dtype() == candle_core::DType::F32
        && crate::ops::kernels() == crate::ops::Kernels::Fused
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
    pub fn new(params: &Params, kind: OptimizerKind, weight_decay: f64) -> Result<Self> {
        let slots = params
            .iter()
            .map(|(name, var)| {
                Ok(Slot { name: name.clone(), var: var.clone(), decay: decays(name), moments: Moments::zeros(var)? })
            })
            .collect::<Result<_>>()?;
        Ok(Optimizer { kind, weight_decay, slots, steps: 0 })
    }

    /// The global L2 norm of the gradients of all parameters. Gradients in host memory are
    /// summed on the host; the others on their device, read back once.
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        let mut total = 0f64;
        let mut on_device: Option<Tensor> = None;
        for slot in &self.slots {
            if let Some(g) = grads.get(slot.var.as_tensor()) {
                match host_squared_norm(g) {
                    Some(sq) => total += sq,
                    None => on_device = Some(add_squares(on_device, g)?),
                }
            }
        }
        if let Some(acc) = on_device {
            total += crate::ops::read_back::<f64>(&acc)?[0];
        }
        Ok(total.sqrt())
    }

    /// The factor every gradient is multiplied by in [`Optimizer::step_scaled`]: `avg` (the
    /// accumulation average) times the clipping factor `max_norm / (norm + 1e-6)` when the
    /// averaged gradients' global norm `norm` exceeds `max_norm` (`<= 0`: no clipping). With
    /// moments in host memory (the fused CPU pass) a host number; otherwise an f32 scalar on the
    /// parameters' device, computed there in f64 with the same arithmetic, so nothing is read back.
    pub fn grad_scale(&self, grads: &GradStore, avg: f64, max_norm: f64) -> Result<GradScale> {
        if self.slots.iter().all(|s| matches!(s.moments, Moments::Host { .. })) {
            let norm = if max_norm > 0.0 { self.grad_norm(grads)? * avg } else { 0.0 };
            let clip = if max_norm > 0.0 && norm > max_norm { max_norm / (norm + 1e-6) } else { 1.0 };
            return Ok(GradScale::Host(avg * clip));
        }
        if max_norm <= 0.0 {
            return Ok(GradScale::Host(avg));
        }
        let mut sum: Option<Tensor> = None;
        for slot in &self.slots {
            if let Some(g) = grads.get(slot.var.as_tensor()) {
                sum = Some(add_squares(sum, g)?);
            }
        }
        let Some(sum) = sum else { return Ok(GradScale::Host(avg)) };
        let norm = (sum.sqrt()? * avg)?;
        let ones = norm.ones_like()?;
        let clip = ((&ones * max_norm)? / (&norm + 1e-6)?)?;
        let clip = norm.gt(max_norm)?.where_cond(&clip, &ones)?;
        let scale = ((ones * avg)? * clip)?;
        Ok(GradScale::Device(scale.to_dtype(candle_core::DType::F32)?))
    }

    /// Applies one update from `grads`. Parameters without a gradient are left alone.
    pub fn step(&mut self, grads: &GradStore, sp: StepParams) -> Result<()> {
        self.step_scaled(grads, sp.lr, &GradScale::Host(sp.grad_scale))
    }

    /// [`Optimizer::step`] at learning rate `lr` with the gradients multiplied by `scale` (from
    /// [`Optimizer::grad_scale`]).
    pub fn step_scaled(&mut self, grads: &GradStore, lr: f64, scale: &GradScale) -> Result<()> {
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
            let rule = Rule {
                kind: self.kind,
                lr: lr as f32,
                wd: if slot.decay { self.weight_decay as f32 } else { 0.0 },
                scale: match scale {
                    GradScale::Host(s) => *s as f32,
                    // Host moments beside device ones (not a configuration the program makes).
                    GradScale::Device(t) if matches!(slot.moments, Moments::Host { .. }) => {
                        crate::ops::read_back::<f32>(t)?[0]
                    }
                    GradScale::Device(_) => 1.0,
                },
                bc1: bc1 as f32,
                bc2: bc2 as f32,
            };
            match &mut slot.moments {
                Moments::Host { m, v } => {
                    let update = Update { rule, m: RefCell::new(m), v: RefCell::new(v) };
                    slot.var.as_tensor().inplace_op2(&grad, &update)?;
                }
                Moments::Device { m, v } => {
                    let device_scale = match scale {
                        GradScale::Device(t) => Some(t),
                        GradScale::Host(_) => None,
                    };
                    rule.on_device(&slot.var, &grad, device_scale, m, v)?
                }
            }
        }
        Ok(())
    }

    /// The moments as tensors (`m.<name>`, `v.<name>`), for resumable checkpoints.
    pub fn state_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        let cpu = candle_core::Device::Cpu;
        for s in &self.slots {
            let shape = s.var.shape().clone();
            let (m, v) = match &s.moments {
                Moments::Host { m, v } => {
                    (Tensor::from_slice(m, shape.clone(), &cpu)?, Tensor::from_slice(v, shape, &cpu)?)
                }
                Moments::Device { m, v } => (m.to_device(&cpu)?, v.to_device(&cpu)?),
            };
            out.insert(format!("m.{}", s.name), m);
            out.insert(format!("v.{}", s.name), v);
        }
        Ok(out)
    }

    /// Restores moments saved by [`Optimizer::state_tensors`] and the step count.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, steps: usize) -> Result<()> {
        for s in &mut self.slots {
            let saved = |prefix: &str| -> Result<Tensor> {
                let key = format!("{prefix}.{}", s.name);
                let Some(t) = tensors.get(&key) else { bail!("optimizer state has no `{key}`") };
                if t.elem_count() != s.var.elem_count() {
                    bail!("optimizer state `{key}` has {} values, expected {}", t.elem_count(), s.var.elem_count());
                }
                Ok(t.to_dtype(candle_core::DType::F32)?.reshape(s.var.shape())?)
            };
            let (m, v) = (saved("m")?, saved("v")?);
            s.moments = match s.moments {
                Moments::Host { .. } => {
                    Moments::Host { m: m.flatten_all()?.to_vec1::<f32>()?, v: v.flatten_all()?.to_vec1::<f32>()? }
                }
                Moments::Device { .. } => {
                    Moments::Device { m: m.to_device(s.var.device())?, v: v.to_device(s.var.device())? }
                }
            };
        }
        self.steps = steps;
        Ok(())
    }
}

/// `acc` plus the sum of the squares of `g`, as an f64 scalar on `g`'s device.
fn add_squares(acc: Option<Tensor>, g: &Tensor) -> Result<Tensor> {
    let sq = g.sqr()?.sum_all()?.to_dtype(candle_core::DType::F64)?;
    Ok(match acc {
        Some(acc) => (acc + sq)?,
        None => sq,
    })
}

/// Sum of squares of contiguous f32 data in host memory (a parallel pass); None for any other
/// tensor, or with `EASYNLP_KERNELS=portable`.
fn host_squared_norm(t: &Tensor) -> Option<f64> {
    use rayon::prelude::*;
    if crate::ops::kernels() != crate::ops::Kernels::Fused {
        return None;
    }
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(CpuStorage::F32(data)) = &*storage else { return None };
    let (a, b) = layout.contiguous_offsets()?;
    // Partial sums collected, then added in chunk order: the same bits on every run.
    let partials: Vec<f64> = data[a..b].par_chunks(1 << 15).map(crate::ops::util::sum_squares).collect();
    Some(partials.iter().sum())
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

impl Rule {
    /// The rule with tensor ops on the parameter's device, moments updated in place.
    /// `device_scale` (an f32 scalar on the device) replaces `self.scale` when given.
    fn on_device(
        &self,
        var: &Var,
        grad: &Tensor,
        device_scale: Option<&Tensor>,
        m: &mut Tensor,
        v: &mut Tensor,
    ) -> Result<()> {
        let p = var.as_tensor().detach();
        let g = match device_scale {
            Some(s) => grad.broadcast_mul(&s.to_dtype(grad.dtype())?)?,
            None => (grad * self.scale as f64)?,
        };
        let (b1, b2) = (BETA1, BETA2);
        let (lr, wd) = (self.lr as f64, self.wd as f64);
        let new_p = match self.kind {
            OptimizerKind::Sgd => (&p - ((&g + (&p * wd)?)? * lr)?)?,
            kind => {
                let g = if kind == OptimizerKind::Adam { (&g + (&p * wd)?)? } else { g };
                *m = ((&*m * b1)? + (&g * (1.0 - b1))?)?;
                *v = ((&*v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
                let denom = ((&*v / self.bc2 as f64)?.sqrt()? + EPS)?;
                let mut np = (&p - ((&*m / denom)? * (lr / self.bc1 as f64))?)?;
                if kind != OptimizerKind::Adam {
                    np = (&np - (&np * (lr * wd))?)?;
                }
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
