//! The training loop: seeded shuffling, gradient accumulation, clipping, schedule, periodic
//! evaluation with best-checkpoint keeping, logging; data parallel over the ranks of
//! [`crate::dist::world`] (see [`super::sync`]): a step's global batch is ranks x micro-batch x
//! accumulation rows, each rank computes its strided share of every global micro-batch, the
//! gradients are summed over the ranks, and rank 0 alone saves and logs.

use super::optimizer::Optimizer;
use super::optimizer::OptimizerKind;
use super::schedule::LinearSchedule;
use super::sync;
use crate::data::batch::{bucketed_batches, make_batch, Batch, Example};
use crate::logging;
use crate::metrics::EvalReport;
use crate::model::bert::ForwardCtx;
use crate::model::params::Params;
use crate::rng::Rng;
use crate::runlog::{now, RunLog, TrainRecord};
use anyhow::{bail, Result};
use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor};
use std::time::Instant;

/// Settings of one training run (from the flags).
#[derive(Clone, Debug)]
pub struct TrainSettings {
    /// Epochs (may be fractional).
    pub epochs: f64,
    /// Rows per micro-batch of one worker (a global micro-batch holds this many per rank).
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

/// How a run's micro-batches group into optimizer steps: every epoch is cut the same way, so
/// step `g` (0-based) is step `g % steps_per_epoch` of epoch `g / steps_per_epoch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepPlan {
    /// Micro-batches in one epoch.
    pub batches_per_epoch: usize,
    /// Micro-batches per optimizer step (the last step of an epoch may hold fewer).
    pub accumulation: usize,
    /// Optimizer steps per epoch: `ceil(batches_per_epoch / accumulation)`.
    pub steps_per_epoch: usize,
    /// Optimizer steps of the run: `ceil(steps_per_epoch * epochs)`.
    pub total_steps: usize,
    /// Epochs the run touches (the last one partly when `epochs` is fractional).
    pub epochs: usize,
}

impl StepPlan {
    /// The plan for `rows` rows in micro-batches of `batch_size`.
    pub fn new(rows: usize, batch_size: usize, accumulation: usize, epochs: f64) -> Self {
        let batches_per_epoch = rows.div_ceil(batch_size.max(1)).max(1);
        let accumulation = accumulation.max(1);
        let steps_per_epoch = batches_per_epoch.div_ceil(accumulation);
        let total_steps = ((steps_per_epoch as f64) * epochs).ceil().max(1.0) as usize;
        StepPlan {
            batches_per_epoch,
            accumulation,
            steps_per_epoch,
            total_steps,
            epochs: total_steps.div_ceil(steps_per_epoch),
        }
    }

    /// `(epoch, step within the epoch)` of optimizer step `step` (0-based).
    pub fn locate(&self, step: usize) -> (usize, usize) {
        (step / self.steps_per_epoch, step % self.steps_per_epoch)
    }

    /// The cursor before optimizer step `step` (0-based): its epoch and the position, in that
    /// epoch's batch order, of its first micro-batch.
    pub fn cursor(&self, step: usize) -> (usize, usize) {
        let (epoch, in_epoch) = self.locate(step);
        (epoch, in_epoch * self.accumulation)
    }

    /// The positions, in its epoch's batch order, of the micro-batches of step `step_in_epoch`.
    pub fn micro_batches(&self, step_in_epoch: usize) -> std::ops::Range<usize> {
        let start = step_in_epoch * self.accumulation;
        start..(start + self.accumulation).min(self.batches_per_epoch)
    }
}

/// Progress of a run, saved with its latest state: enough to continue it bit for bit.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainState {
    /// Optimizer steps done.
    pub global_step: usize,
    /// The epoch (0-based) of the next step.
    pub epoch: usize,
    /// The position in that epoch's batch order of the next micro-batch.
    pub next_micro_batch: usize,
    /// The seed actually used (drawn when `--random_seed` is not positive).
    pub seed: u64,
    /// Best validation accuracy so far.
    pub best_accuracy: Option<f64>,
    /// The step of the best validation accuracy.
    pub best_step: Option<usize>,
    /// The step of the last evaluation (or save without evaluation).
    pub last_eval_step: Option<usize>,
    /// The data-parallel workers of the run (1 before they existed).
    #[serde(default = "one")]
    pub world_size: usize,
}

fn one() -> usize {
    1
}

impl TrainState {
    /// The state before the first step.
    pub fn start(seed: u64) -> Self {
        TrainState {
            global_step: 0,
            epoch: 0,
            next_micro_batch: 0,
            seed,
            best_accuracy: None,
            best_step: None,
            last_eval_step: None,
            world_size: 1,
        }
    }
}

/// A run's latest state read back for `--resume_from_checkpoint`.
pub struct Resume {
    /// Progress.
    pub state: TrainState,
    /// AdamW moments.
    pub optimizer: std::collections::HashMap<String, Tensor>,
}

/// One save point: the latest state always, the model as the new best when `new_best`.
pub struct Snapshot<'a> {
    /// The weights now.
    pub params: &'a Params,
    /// The optimizer now.
    pub optimizer: &'a Optimizer,
    /// Progress now.
    pub state: &'a TrainState,
    /// The weights are the best so far (or the run does not evaluate).
    pub new_best: bool,
    /// Also keep a copy of the weights of this step (`--save_all_checkpoints`).
    pub step_copy: bool,
}

/// The training loss of one batch: the scalar to minimise and, for the logs, the named terms it
/// is the sum of (scalars, no gradient needed), if it has terms.
pub struct Loss {
    /// The loss.
    pub total: Tensor,
    /// `(name, term)`: `kd_loss`, `ce_loss`, ...
    pub parts: Vec<(&'static str, Tensor)>,
}

impl From<Tensor> for Loss {
    fn from(total: Tensor) -> Self {
        Loss { total, parts: Vec::new() }
    }
}

/// What the loop needs from an application.
pub trait TrainTask {
    /// The training loss of one batch.
    fn loss(&self, params: &Params, batch: &Batch, ctx: &ForwardCtx) -> Result<Loss>;
    /// Validation metrics, or None when the run does not evaluate.
    fn evaluate(&self, params: &Params) -> Result<Option<EvalReport>>;
}

/// Where a training run persists its model and its latest state.
pub trait Checkpoints {
    /// Persists one save point, whole or not at all.
    fn save(&self, snapshot: &Snapshot) -> Result<()>;
    /// Whether to keep a copy at every evaluation.
    fn save_all(&self) -> bool;
    /// Where the state is saved (for the resume hint).
    fn location(&self) -> &std::path::Path;
    /// The run's log folder, opened for a process that starts with `state` (None: no log).
    fn run_log(&self, _state: &TrainState, _resumed: bool) -> Result<Option<RunLog>> {
        Ok(None)
    }
}

/// The mean loss (and its terms) since the start of the epoch, as the log lines print it.
#[derive(Default)]
struct RunningLoss {
    sum: f64,
    n: usize,
    parts: Vec<(&'static str, f64)>,
}

impl RunningLoss {
    fn add(&mut self, loss: f64, parts: &[(&'static str, f64)]) {
        self.sum += loss;
        self.n += 1;
        for (name, v) in parts {
            match self.parts.iter_mut().find(|(n, _)| n == name) {
                Some((_, sum)) => *sum += v,
                None => self.parts.push((name, *v)),
            }
        }
    }

    fn mean(&self) -> f64 {
        self.sum / self.n.max(1) as f64
    }

    /// `("loss", mean)` and each term's mean.
    fn means(&self) -> Vec<(&'static str, f64)> {
        let n = self.n.max(1) as f64;
        std::iter::once(("loss", self.mean())).chain(self.parts.iter().map(|(k, v)| (*k, v / n))).collect()
    }
}

/// A micro-batch's loss and terms on this rank, kept on the device until the next log line.
struct Share {
    /// `[loss, terms...]`, detached scalars.
    values: Vec<Tensor>,
    /// This rank's part of the global micro-batch's rows.
    weight: f64,
}

/// An optimizer step whose losses were not read back yet.
struct PendingStep {
    step: usize,
    lr: f64,
    /// Per micro-batch; None where this rank had no rows.
    shares: Vec<Option<Share>>,
}

/// The losses of the steps since the last log line, read back together: the training step
/// itself reads nothing back. [`LossWindow::flush`] runs at every log line, evaluation, epoch
/// end and interruption (the same steps on every rank: it sums over the ranks).
#[derive(Default)]
struct LossWindow {
    pending: Vec<PendingStep>,
    running: RunningLoss,
    /// The names of the loss terms, known once a batch was computed here (rank 0 always has rows).
    term_names: Vec<&'static str>,
}

impl LossWindow {
    /// Keeps the loss of one micro-batch of the current step (`push_step` first).
    fn push(&mut self, loss: &Loss, weight: f64) {
        let mut values = vec![loss.total.detach()];
        for (name, t) in &loss.parts {
            values.push(t.detach());
            if !self.term_names.contains(name) {
                self.term_names.push(name);
            }
        }
        self.last().shares.push(Some(Share { values, weight }));
    }

    /// A micro-batch this rank had no rows of.
    fn push_empty(&mut self) {
        self.last().shares.push(None);
    }

    fn push_step(&mut self, step: usize) {
        self.pending.push(PendingStep { step, lr: 0.0, shares: Vec::new() });
    }

    fn last(&mut self) -> &mut PendingStep {
        self.pending.last_mut().expect("push_step first")
    }

    /// Reads the pending losses back (one transfer), checks them, sums them over the ranks,
    /// adds them to the running means and writes each step's scalars to `log`.
    fn flush(&mut self, world: &crate::dist::World, log: &mut Option<RunLog>) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let flat: Vec<Tensor> = self
            .pending
            .iter()
            .flat_map(|p| p.shares.iter().flatten())
            .flat_map(|s| s.values.iter())
            .map(|t| t.to_dtype(candle_core::DType::F64)?.reshape(1))
            .collect::<candle_core::Result<_>>()?;
        let mut values =
            if flat.is_empty() { Vec::new() } else { crate::ops::read_back::<f64>(&Tensor::cat(&flat, 0)?)? }
                .into_iter();
        // Per micro-batch: this rank's share of the loss and of each term (summed over the ranks below).
        let mut shares: Vec<Vec<f64>> = Vec::new();
        for p in &self.pending {
            for share in &p.shares {
                let Some(share) = share else {
                    shares.push(Vec::new());
                    continue;
                };
                let v: Vec<f64> = values.by_ref().take(share.values.len()).collect();
                if !v[0].is_finite() {
                    bail!("training diverged: loss is {} at optimizer step {}", v[0], p.step);
                }
                // The loss of a batch is the mean over its rows: this share weighs its rows' part.
                shares.push(v.into_iter().map(|x| x * share.weight).collect());
            }
        }
        let mut sums = reduce_losses(world, &shares, &self.term_names)?.into_iter();
        for p in std::mem::take(&mut self.pending) {
            for (value, parts) in sums.by_ref().take(p.shares.len()) {
                let parts: Vec<(&'static str, f64)> = self.term_names.iter().copied().zip(parts).collect();
                self.running.add(value, &parts);
            }
            if let Some(log) = log {
                log.step(p.step, p.lr, &self.running.means())?;
            }
        }
        Ok(())
    }
}

/// Trains `params` on `examples`, saving to `checkpoints`; `resume` continues a saved state.
/// Every micro-batch of every epoch is used once; a step averages the micro-batches it holds.
pub fn train(
    settings: &TrainSettings,
    params: &Params,
    examples: &[Example],
    task: &dyn TrainTask,
    checkpoints: &dyn Checkpoints,
    resume: Option<Resume>,
    device: &Device,
) -> Result<TrainState> {
    // From here a signal stops the run at the end of a step, with its latest state saved.
    crate::interrupt::defer();
    let s = settings;
    let world = crate::dist::world();
    let (rank, ranks) = (world.rank(), world.size());
    if examples.len() < ranks {
        bail!("{} training rows for {ranks} workers: every worker needs at least one row", examples.len());
    }
    // A global micro-batch holds `batch_size` rows per rank: the batches of one worker with
    // micro-batches of ranks x batch_size.
    let global_batch = s.batch_size * ranks;
    let plan = StepPlan::new(examples.len(), global_batch, s.grad_accum, s.epochs);
    let schedule = LinearSchedule::new(s.learning_rate, s.warmup_proportion, plan.total_steps);
    let mut opt = Optimizer::new(params, s.optimizer, s.weight_decay)?;
    let mut state = TrainState::start(s.seed);
    state.world_size = ranks;
    let mut saved_step = None;
    sync::broadcast_params(params, world)?;
    if let Some(resume) = resume {
        check_world_size(resume.state.world_size, ranks)?;
        let saved_cursor = (resume.state.epoch, resume.state.next_micro_batch);
        if resume.state.seed != s.seed || saved_cursor != plan.cursor(resume.state.global_step) {
            bail!(
                "the saved training state (step {}, epoch {}, micro-batch {}, seed {}) does not fit this run (seed {})",
                resume.state.global_step,
                resume.state.epoch,
                resume.state.next_micro_batch,
                resume.state.seed,
                s.seed
            );
        }
        opt.load_state(&resume.optimizer, resume.state.global_step)?;
        logging::info(format!(
            "resumed at optimizer step {} (epoch {}, micro-batch {})",
            resume.state.global_step,
            resume.state.epoch + 1,
            resume.state.next_micro_batch
        ));
        state = resume.state;
        saved_step = Some(state.global_step);
    }
    logging::info(format!(
        "training on {} rows: {} batches/epoch, {} optimizer steps ({}/epoch, {} micro-batches each), {} parameters",
        examples.len(),
        plan.batches_per_epoch,
        plan.total_steps,
        plan.steps_per_epoch,
        plan.accumulation,
        params.count()
    ));
    if ranks > 1 {
        logging::info(format!(
            "data parallel over {ranks} workers: {global_batch} rows per global micro-batch ({} per worker), {} per \
             optimizer step",
            s.batch_size,
            global_batch * plan.accumulation
        ));
    }
    let lengths: Vec<usize> = examples.iter().map(|e| e.enc.ids.len()).collect();
    let mut order: Option<(usize, Vec<Vec<usize>>)> = None;
    let mut losses = LossWindow::default();
    let (mut window_rows, mut window_start) = (0usize, Instant::now());
    // Rank 0 alone writes the log and the checkpoints.
    let mut log = if world.is_root() { checkpoints.run_log(&state, saved_step.is_some())? } else { None };
    stop_if_interrupted(checkpoints, params, &opt, &state, saved_step, (&mut losses, &mut log))?;
    while state.global_step < plan.total_steps {
        let (epoch, step_in_epoch) = plan.locate(state.global_step);
        if order.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let mut rng = Rng::new(s.seed.wrapping_add(epoch as u64).wrapping_mul(0x9E37_79B9));
            order = Some((epoch, bucketed_batches(&lengths, global_batch, Some(&mut rng))));
            // The logged loss is the mean since the start of the epoch, as in EasyNLP.
            // (The window was flushed at the end of the previous epoch.)
            losses.running = RunningLoss::default();
        }
        let batches = &order.as_ref().expect("set above").1;
        let group = plan.micro_batches(step_in_epoch);
        let micro_in_step = group.len();
        let mut acc: Option<GradStore> = None;
        losses.push_step(state.global_step + 1);
        for pos in group {
            let global = &batches[pos];
            window_rows += global.len();
            let mine = sync::shard(global, rank, ranks);
            if mine.is_empty() {
                // A short last batch with fewer rows than ranks: nothing to compute here.
                losses.push_empty();
                continue;
            }
            let rows: Vec<&Example> = mine.iter().map(|&j| &examples[j]).collect();
            let batch = make_batch(&rows, device)?;
            // Dropout keyed by the micro-batch's place in the run (so a resumed run draws the same
            // masks) and by each row's index in the training set (so a row draws the same masks on
            // whichever worker, in whichever share of the batch).
            let micro = (epoch * plan.batches_per_epoch + pos + 1) as u64;
            let ids: std::sync::Arc<[u64]> = mine.iter().map(|&j| j as u64).collect();
            let ctx = ForwardCtx::train_rows(s.seed ^ micro.wrapping_mul(0xD1B5_4A32_D192_ED03), ids);
            let loss = task.loss(params, &batch, &ctx)?;
            // The loss of a batch is the mean over its rows: this share weighs its rows' part.
            let weight = mine.len() as f64 / global.len() as f64;
            losses.push(&loss, weight);
            let loss = if ranks > 1 { (loss.total * weight)? } else { loss.total };
            let grads = loss.backward()?;
            acc = Some(match acc.take() {
                None => grads,
                Some(prev) => add_grads(prev, grads, params)?,
            });
        }
        let mut grads = match acc.take() {
            Some(grads) => grads,
            // Every micro-batch of this step was empty on this rank: zero gradients.
            None => crate::ops::upload(vec![0f32], (), device)?.backward()?,
        };
        sync::all_reduce_grads(&mut grads, params, world)?;
        let scale = opt.grad_scale(&grads, 1.0 / micro_in_step as f64, s.max_grad_norm)?;
        let lr = schedule.lr(opt.steps);
        opt.step_scaled(&grads, lr, &scale)?;
        drop(grads);
        losses.last().lr = lr;
        state.global_step = opt.steps;
        (state.epoch, state.next_micro_batch) = plan.cursor(state.global_step);
        let log_now = opt.steps.is_multiple_of(s.logging_steps.max(1));
        let epoch_end = state.epoch != epoch || state.global_step == plan.total_steps;
        let evaluate_now = match s.save_checkpoint_steps {
            Some(n) => opt.steps.is_multiple_of(n),
            None => epoch_end,
        };
        if log_now || epoch_end || evaluate_now {
            losses.flush(world, &mut log)?;
        }
        // The loss shown is the one of the last read-back.
        logging::progress(opt.steps, plan.total_steps, &format!("loss {:.4}", losses.running.mean()));
        if log_now {
            let secs = window_start.elapsed().as_secs_f64();
            let rate = window_rows as f64 / secs.max(1e-9);
            logging::info(format!(
                "Epoch [{}/{}], step [{}/{}], lr {lr:.6}, loss {:.4}, {rate:.1} examples/s",
                epoch + 1,
                plan.epochs,
                opt.steps,
                plan.total_steps,
                losses.running.mean(),
            ));
            if let Some(log) = &mut log {
                log.train_line(TrainRecord {
                    step: opt.steps,
                    epoch: epoch + 1,
                    total_steps: plan.total_steps,
                    lr,
                    loss: losses.running.mean(),
                    parts: losses.running.means().into_iter().skip(1).map(|(k, v)| (k.to_string(), v)).collect(),
                    examples_per_sec: rate,
                    wall_time: now(),
                })?;
            }
            (window_rows, window_start) = (0, Instant::now());
        }
        if epoch_end && s.save_checkpoint_steps.is_none() {
            logging::info(format!("epoch {} done", epoch + 1));
        }
        if evaluate_now {
            evaluate_and_keep((task, checkpoints), params, &opt, &mut state, (&mut log, epoch + 1))?;
            saved_step = Some(state.global_step);
        } else if epoch_end {
            if world.is_root() {
                checkpoints.save(&Snapshot {
                    params,
                    optimizer: &opt,
                    state: &state,
                    new_best: false,
                    step_copy: false,
                })?;
                sync_log(&log)?;
            }
            saved_step = Some(state.global_step);
        }
        stop_if_interrupted(checkpoints, params, &opt, &state, saved_step, (&mut losses, &mut log))?;
    }
    if state.last_eval_step != Some(state.global_step) {
        let epoch = plan.locate(state.global_step.max(1) - 1).0 + 1;
        evaluate_and_keep((task, checkpoints), params, &opt, &mut state, (&mut log, epoch))?;
    }
    Ok(state)
}

/// Every rank's shares of the loss of each micro-batch of a step (`shares`: `[loss, terms...]`
/// weighted by the rank's part of the batch, empty where the rank had no rows) summed into the
/// loss of the whole global batch: `(loss, terms)` per micro-batch. Rank 0 knows the terms'
/// names (`names`) and tells the others how many there are.
fn reduce_losses(
    world: &crate::dist::World,
    shares: &[Vec<f64>],
    names: &[&'static str],
) -> Result<Vec<(f64, Vec<f64>)>> {
    let width = if world.is_distributed() {
        let mut n = [if world.is_root() { names.len() as f64 } else { 0.0 }];
        world.all_reduce_sum_f64(&mut n);
        1 + n[0] as usize
    } else {
        1 + names.len()
    };
    let mut flat = vec![0f64; shares.len() * width];
    for (slot, share) in flat.chunks_mut(width).zip(shares) {
        if share.len() > width {
            bail!("a loss with {} terms, other workers have {}", share.len() - 1, width - 1);
        }
        slot[..share.len()].copy_from_slice(share);
    }
    world.all_reduce_sum_f64(&mut flat);
    Ok(flat.chunks(width).map(|c| (c[0], c[1..].to_vec())).collect())
}

/// A saved state of `saved` workers continues only with as many.
pub fn check_world_size(saved: usize, now: usize) -> Result<()> {
    if saved != now {
        bail!(
            "the saved training state was written by a run of {saved} worker(s); this run has {now}: resume with the \
             same number of workers (--worker_gpu / mpirun -np), or train anew"
        );
    }
    Ok(())
}

/// Makes the log durable along with a save point.
fn sync_log(log: &Option<RunLog>) -> Result<()> {
    log.as_ref().map_or(Ok(()), RunLog::sync)
}

/// After a signal (on any rank: the ranks stop at the same step): logs the pending losses,
/// saves the latest state (unless saved at this step already; rank 0), says how to resume, and
/// returns the interruption.
fn stop_if_interrupted(
    checkpoints: &dyn Checkpoints,
    params: &Params,
    opt: &Optimizer,
    state: &TrainState,
    saved_step: Option<usize>,
    (losses, log): (&mut LossWindow, &mut Option<RunLog>),
) -> Result<()> {
    let world = crate::dist::world();
    let mine = crate::interrupt::check().err();
    let interrupted = match (mine, world.is_distributed()) {
        (Some(i), false) => i,
        (None, false) => return Ok(()),
        (mine, true) => {
            let mut signal = [mine.map_or(0.0, |i| i.signal as f64)];
            world.all_reduce_sum_f64(&mut signal);
            match (mine, signal[0] > 0.0) {
                (_, false) => return Ok(()),
                (Some(i), true) => i,
                // Another rank got the signal: stop with it (as SIGTERM).
                (None, true) => crate::interrupt::Interrupted { signal: 15 },
            }
        }
    };
    losses.flush(world, log)?;
    if state.global_step == 0 {
        logging::warn(format!("{interrupted} before the first optimizer step: nothing to save"));
        return Err(interrupted.into());
    }
    if saved_step != Some(state.global_step) && world.is_root() {
        checkpoints.save(&Snapshot { params, optimizer: opt, state, new_best: false, step_copy: false })?;
    }
    let dir = checkpoints.location().display();
    logging::warn(format!(
        "{interrupted} at optimizer step {}: the latest state is saved in {dir}; continue with --resume_from_checkpoint={dir}",
        state.global_step
    ));
    Err(interrupted.into())
}

/// Evaluates and saves the latest state, as the new best when the accuracy beats the best so far
/// (always when there is no evaluation); the evaluation goes to the run's log (in epoch `epoch`,
/// 1-based) before the save, so a save point never lacks it.
fn evaluate_and_keep(
    (task, checkpoints): (&dyn TrainTask, &dyn Checkpoints),
    params: &Params,
    opt: &Optimizer,
    state: &mut TrainState,
    (log, epoch): (&mut Option<RunLog>, usize),
) -> Result<()> {
    state.last_eval_step = Some(opt.steps);
    // Every rank evaluates its share; the report is the whole validation set's.
    let report = task.evaluate(params)?;
    let world = crate::dist::world();
    let new_best = match &report {
        Some(report) => {
            logging::info(format!("Evaluation at global step {}: {}", opt.steps, report.summary()));
            // Rank 0 decides; every rank keeps the same state.
            let better = world.broadcast_bool(state.best_accuracy.is_none_or(|b| report.accuracy > b));
            if better {
                state.best_accuracy = Some(report.accuracy);
                state.best_step = Some(opt.steps);
            }
            better
        }
        None => true,
    };
    if !world.is_root() {
        return Ok(());
    }
    if let (Some(log), Some(report)) = (log.as_mut(), &report) {
        log.evaluation(opt.steps, epoch, report, new_best)?;
    }
    let step_copy = report.is_some() && checkpoints.save_all();
    checkpoints.save(&Snapshot { params, optimizer: opt, state, new_best, step_copy })?;
    sync_log(log)?;
    if let (true, Some(report)) = (new_best, &report) {
        logging::info(format!("new best accuracy {:.4}: checkpoint saved", report.accuracy));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_step_plan_uses_every_micro_batch_of_every_epoch_once() {
        // 200 rows in micro-batches of 16 = 13 per epoch; 3 per step: 3+3+3+3+1.
        let plan = StepPlan::new(200, 16, 3, 2.0);
        assert_eq!((plan.batches_per_epoch, plan.steps_per_epoch, plan.total_steps, plan.epochs), (13, 5, 10, 2));
        let mut used = vec![vec![0usize; 13]; 2];
        for step in 0..plan.total_steps {
            let (epoch, in_epoch) = plan.locate(step);
            for pos in plan.micro_batches(in_epoch) {
                used[epoch][pos] += 1;
            }
        }
        assert!(used.iter().flatten().all(|&n| n == 1), "{used:?}");
        assert_eq!(plan.micro_batches(4), 12..13, "the last step of an epoch holds the remainder");
        // Fractional epochs round the step count up; the epoch count follows.
        let half = StepPlan::new(200, 16, 3, 1.5);
        assert_eq!((half.total_steps, half.epochs), (8, 2));
        assert_eq!(StepPlan::new(5, 16, 4, 1.0).total_steps, 1);
    }
}
