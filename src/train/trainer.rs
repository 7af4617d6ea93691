//! The training loop: seeded shuffling, gradient accumulation, clipping, schedule, periodic
//! evaluation with best-checkpoint keeping, logging.

use super::metrics::EvalReport;
use super::optimizer::{Optimizer, StepParams};
use super::schedule::LinearSchedule;
use crate::cli::args::OptimizerKind;
use crate::data::batch::{bucketed_batches, make_batch, Batch, Example};
use crate::logging;
use crate::model::bert::ForwardCtx;
use crate::model::params::Params;
use crate::rng::Rng;
use anyhow::Result;
use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor};
use std::time::Instant;

/// Settings of one training run (from the flags).
#[derive(Clone, Debug)]
pub struct TrainSettings {
    /// Epochs (may be fractional).
    pub epochs: f64,
    /// Rows per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// Warmup fraction.
    pub warmup_proportion: f64,
    /// Gradient clipping norm (<= 0: off).
    pub max_grad_norm: f64,
    /// Weight decay.
    pub weight_decay: f64,
    /// Optimizer.
    pub optimizer: OptimizerKind,
    /// Log every N optimizer steps.
    pub logging_steps: usize,
    /// Evaluate every N optimizer steps (None: each epoch end).
    pub save_checkpoint_steps: Option<usize>,
    /// Seed for shuffling and dropout.
    pub seed: u64,
}

/// Progress of a run, saved beside resumable checkpoints.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct TrainState {
    /// Optimizer steps done.
    pub global_step: usize,
    /// Best validation accuracy so far.
    pub best_accuracy: Option<f64>,
}

/// Why the task is asked to save.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum SaveReason {
    /// A new best validation score (or the end of a run without evaluation).
    Best,
    /// A periodic copy (`--save_all_checkpoints`) after this many steps.
    Step(usize),
}

/// What the loop needs from an application.
pub trait TrainTask {
    /// The training loss of one batch (a scalar tensor).
    fn loss(&self, params: &Params, batch: &Batch, ctx: &ForwardCtx) -> Result<Tensor>;
    /// Validation metrics, or None when the run does not evaluate.
    fn evaluate(&self, params: &Params) -> Result<Option<EvalReport>>;
}

/// Where a training run persists its model.
pub trait Checkpoints {
    /// Persists the model (and optimizer state).
    fn save(&self, params: &Params, opt: &Optimizer, state: &TrainState, reason: SaveReason) -> Result<()>;
    /// Whether to keep a copy at every evaluation.
    fn save_all(&self) -> bool;
}

/// Trains `params` on `examples`, saving to `checkpoints`; `resume` restores optimizer state and
/// progress.
pub fn train(
    settings: &TrainSettings,
    params: &Params,
    examples: &[Example],
    task: &dyn TrainTask,
    checkpoints: &dyn Checkpoints,
    resume: Option<(TrainState, &std::collections::HashMap<String, Tensor>)>,
    device: &Device,
) -> Result<TrainState> {
    let s = settings;
    let batches_per_epoch = examples.len().div_ceil(s.batch_size);
    let total = ((batches_per_epoch as f64 / s.grad_accum as f64) * s.epochs).ceil().max(1.0) as usize;
    let schedule = LinearSchedule::new(s.learning_rate, s.warmup_proportion, total);
    let mut opt = Optimizer::new(params, s.optimizer, s.weight_decay);
    let mut state = TrainState::default();
    if let Some((saved, tensors)) = resume {
        opt.load_state(tensors, saved.global_step)?;
        logging::info(format!("resumed at optimizer step {}", saved.global_step));
        state = saved;
    }
    logging::info(format!(
        "training on {} rows: {batches_per_epoch} batches/epoch, {total} optimizer steps, {} parameters",
        examples.len(),
        params.count()
    ));
    let epochs = (total * s.grad_accum).div_ceil(batches_per_epoch.max(1));
    let lengths: Vec<usize> = examples.iter().map(|e| e.enc.ids.len()).collect();
    let mut micro = 0usize;
    let skip = state.global_step * s.grad_accum;
    let mut last_eval_step = None;
    'epochs: for epoch in 0..epochs {
        let mut rng = Rng::new(s.seed.wrapping_add(epoch as u64).wrapping_mul(0x9E37_79B9));
        let order = bucketed_batches(&lengths, s.batch_size, Some(&mut rng));
        let (mut loss_sum, mut loss_n) = (0f64, 0usize);
        let (mut window_rows, mut window_start) = (0usize, Instant::now());
        let mut acc: Option<GradStore> = None;
        for (i, idx) in order.iter().enumerate() {
            if opt.steps >= total {
                break 'epochs;
            }
            micro += 1;
            // Skip the micro-batches already consumed before a resume.
            if micro <= skip {
                continue;
            }
            let rows: Vec<&Example> = idx.iter().map(|&j| &examples[j]).collect();
            let batch = make_batch(&rows, device)?;
            let ctx = ForwardCtx::train(s.seed ^ (micro as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
            let loss = task.loss(params, &batch, &ctx)?;
            let loss_value = loss.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
            if !loss_value.is_finite() {
                anyhow::bail!("training diverged: loss is {loss_value} at optimizer step {}", opt.steps + 1);
            }
            loss_sum += loss_value;
            loss_n += 1;
            window_rows += batch.size;
            let grads = loss.backward()?;
            acc = Some(match acc.take() {
                None => grads,
                Some(prev) => add_grads(prev, grads, params)?,
            });
            let end_of_epoch = i + 1 == order.len();
            if !micro.is_multiple_of(s.grad_accum) && !end_of_epoch {
                continue;
            }
            let grads = acc.take().expect("accumulated gradients");
            let micro_in_step = (micro - 1) % s.grad_accum + 1;
            let avg = 1.0 / micro_in_step as f64;
            let norm = opt.grad_norm(&grads)? * avg;
            let clip =
                if s.max_grad_norm > 0.0 && norm > s.max_grad_norm { s.max_grad_norm / (norm + 1e-6) } else { 1.0 };
            let lr = schedule.lr(opt.steps);
            opt.step(&grads, StepParams { lr, grad_scale: avg * clip })?;
            drop(grads);
            state.global_step = opt.steps;
            logging::progress(opt.steps, total, &format!("loss {:.4}", loss_sum / loss_n as f64));
            if opt.steps.is_multiple_of(s.logging_steps.max(1)) {
                let secs = window_start.elapsed().as_secs_f64();
                logging::info(format!(
                    "Epoch [{}/{epochs}], step [{}/{total}], lr {lr:.6}, loss {:.4}, {:.1} examples/s",
                    epoch + 1,
                    opt.steps,
                    loss_sum / loss_n as f64,
                    window_rows as f64 / secs.max(1e-9)
                ));
                (window_rows, window_start) = (0, Instant::now());
            }
            if s.save_checkpoint_steps.is_some_and(|n| opt.steps.is_multiple_of(n)) {
                evaluate_and_keep((task, checkpoints), params, &opt, &mut state)?;
                last_eval_step = Some(opt.steps);
            }
        }
        if s.save_checkpoint_steps.is_none() && last_eval_step != Some(opt.steps) {
            logging::info(format!("epoch {} done", epoch + 1));
            evaluate_and_keep((task, checkpoints), params, &opt, &mut state)?;
            last_eval_step = Some(opt.steps);
        }
    }
    if last_eval_step != Some(opt.steps) {
        evaluate_and_keep((task, checkpoints), params, &opt, &mut state)?;
    }
    Ok(state)
}

/// Evaluates, saves when the accuracy beats the best so far (always when there is no evaluation).
fn evaluate_and_keep(
    (task, checkpoints): (&dyn TrainTask, &dyn Checkpoints),
    params: &Params,
    opt: &Optimizer,
    state: &mut TrainState,
) -> Result<()> {
    match task.evaluate(params)? {
        Some(report) => {
            logging::info(format!("Evaluation at global step {}: {}", opt.steps, report.summary()));
            if checkpoints.save_all() {
                checkpoints.save(params, opt, state, SaveReason::Step(opt.steps))?;
            }
            if state.best_accuracy.is_none_or(|b| report.accuracy > b) {
                state.best_accuracy = Some(report.accuracy);
                checkpoints.save(params, opt, state, SaveReason::Best)?;
                logging::info(format!("new best accuracy {:.4}: checkpoint saved", report.accuracy));
            }
        }
        None => checkpoints.save(params, opt, state, SaveReason::Best)?,
    }
    Ok(())
}

fn add_grads(mut acc: GradStore, new: GradStore, params: &Params) -> Result<GradStore> {
    for (_, var) in params.iter() {
        let t = var.as_tensor();
        if let Some(g) = new.get(t) {
            let sum = match acc.get(t) {
                Some(a) => (a + g)?,
                None => g.clone(),
            };
            acc.insert(t, sum);
        }
    }
    Ok(acc)
}
