//! Gradients of the training path checked against finite differences, and the equivalence of
//! the encoder's layer paths.

mod common;

use candle_core::{Device, Tensor, Var};
use easynlp::data::batch::{make_batch, Batch, Example};
use easynlp::data::tokenize::Encoded;
use easynlp::model::bert::{ForwardCtx, Taps};
use easynlp::model::classifier::{init_head, Classifier};
use easynlp::model::config::BertConfig;
use easynlp::model::params::{read_weights, Params};
use easynlp::rng::Rng;

/// Dropout seed of every forward pass of the finite-difference check: with dropout on, every
/// pass draws the same masks, so the loss is still a smooth function of the weights.
const SEED: u64 = 31;
/// Steps of the central differences (and half of it, for one Richardson extrapolation).
const STEP: f32 = 3e-2;
/// Absolute tolerance: about 3x the largest error measured on correct gradients (1.1e-4, the f32
/// noise of the forward pass over the step; it does not grow with the gradient).
const ATOL: f64 = 3e-4;
/// Relative tolerance (measured: below 5e-4 on gradients above 0.2). The worst checked entry
/// uses about a fifth of its tolerance; a 1% error on a gradient above about 0.05 fails.
const RTOL: f64 = 1e-3;

/// A tiny random classifier (2 layers, hidden 32, 4 heads, feed-forward 64, 41 tokens) whose
/// weights are large enough that attention is far from uniform, with random LayerNorms, a batch
/// with padding and both segments, and the fixed weights `r` of the loss `sum(logits * r)`.
struct Fixture {
    _tmp: tempfile::TempDir,
    cfg: BertConfig,
    params: Params,
    batch: Batch,
    r: Vec<Vec<f32>>,
}

impl Fixture {
    fn new(dropout: f64) -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let opts = common::TinyBert {
            layers: 2,
            with_pooler: true,
            vocab_words: Some(24),
            dropout,
            initializer_range: 0.3,
            weight_scale: 4.0,
            random_norms: true,
            seed: 777,
        };
        let dir = common::tiny_bert_with(tmp.path(), &opts);
        let dev = Device::Cpu;
        let cfg = BertConfig::load(&dir).unwrap();
        assert_eq!((cfg.hidden_dropout_prob, cfg.attention_probs_dropout_prob), (dropout, dropout));
        let (weights, _) = read_weights(&dir, &dev).unwrap();
        let mut params = Params::from_tensors(&weights).unwrap();
        init_head(&mut params, &cfg, 3, &mut Rng::new(5), &dev).unwrap();
        let ex = |ids: Vec<u32>, sep: usize| Example {
            enc: Encoded { type_ids: (0..ids.len()).map(|i| u32::from(i > sep)).collect(), ids },
            label: Some(0),
            teacher_logits: None,
            domain: None,
        };
        let rows = [
            ex(vec![2, 20, 21, 22, 3, 30, 31, 3], 4),
            ex(vec![2, 25, 3, 18, 3], 2),
            ex(vec![2, 33, 19, 24, 26, 3], 9),
            ex(vec![2, 17, 3], 9),
        ];
        let refs: Vec<&Example> = rows.iter().collect();
        let batch = make_batch(&refs, &dev).unwrap();
        let mut rng = Rng::new(99);
        let r = rows.iter().map(|_| (0..3).map(|_| rng.uniform() * 2.0 - 1.0).collect()).collect();
        Fixture { _tmp: tmp, cfg, params, batch, r }
    }

    /// The classifier on the current weights, tracking gradients as in training (reloaded after
    /// every change: the model keeps the query, key and value weights concatenated).
    fn model(&self) -> Classifier {
        Classifier::load(&self.cfg, &|n| self.params.trainable(n)).unwrap()
    }

    /// The gradient of every parameter from the training forward (`Classifier::forward` in a
    /// training context: fused layers, first-position last layer) and its backward.
    fn analytic(&self) -> Vec<(String, Var, Vec<f32>)> {
        let logits = self.model().forward(&self.batch, &ForwardCtx::train(SEED)).unwrap();
        let r: Vec<f32> = self.r.iter().flatten().copied().collect();
        let r = Tensor::from_vec(r, logits.shape(), &Device::Cpu).unwrap();
        let grads = (logits * r).unwrap().sum_all().unwrap().backward().unwrap();
        self.params
            .iter()
            .map(|(name, var)| {
                let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{name}: no gradient"));
                (name.clone(), var.clone(), g.flatten_all().unwrap().to_vec1().unwrap())
            })
            .collect()
    }

    /// The loss on the current weights, summed in f64.
    fn loss(&self) -> f64 {
        let logits: Vec<Vec<f32>> =
            self.model().forward(&self.batch, &ForwardCtx::train(SEED)).unwrap().to_vec2().unwrap();
        logits.iter().zip(&self.r).flat_map(|(l, r)| l.iter().zip(r)).map(|(&l, &r)| l as f64 * r as f64).sum()
    }

    /// The loss with entry `idx` of `var` moved by about `delta`, and the step actually taken.
    fn moved(&self, var: &Var, idx: usize, delta: f32) -> (f64, f64) {
        let orig: Vec<f32> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        let mut v = orig.clone();
        v[idx] += delta;
        let step = v[idx] as f64 - orig[idx] as f64;
        var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap()).unwrap();
        let loss = self.loss();
        var.set(&Tensor::from_vec(orig, var.shape(), &Device::Cpu).unwrap()).unwrap();
        (loss, step)
    }

    /// The derivative along entry `idx` of `var`: central differences with steps `STEP` and
    /// `STEP / 2`, Richardson-extrapolated (truncation error O(STEP^4)).
    fn finite_difference(&self, var: &Var, idx: usize) -> f64 {
        let central = |h: f32| {
            let ((up, s_up), (down, s_down)) = (self.moved(var, idx, h), self.moved(var, idx, -h));
            (up - down) / (s_up - s_down)
        };
        (4.0 * central(STEP / 2.0) - central(STEP)) / 3.0
    }
}

/// Whether an analytic gradient `an` agrees with its finite difference `fd`.
fn close(fd: f64, an: f64) -> bool {
    (fd - an).abs() <= ATOL + RTOL * fd.abs().max(an.abs())
}

/// Every parameter's gradient from the training path against finite differences: per tensor
/// four uniformly random entries, two random entries with a non-zero gradient (most rows of the
/// embedding tables are unused) and the entry of the largest gradient.
fn check_against_finite_differences(dropout: f64) {
    let f = Fixture::new(dropout);
    let mut rng = Rng::new(2024);
    let mut failures = Vec::new();
    let mut checked = 0;
    for (name, var, g) in f.analytic() {
        let largest = (0..g.len()).max_by(|&a, &b| g[a].abs().total_cmp(&g[b].abs())).unwrap();
        let nonzero: Vec<usize> = (0..g.len()).filter(|&i| g[i] != 0.0).collect();
        let mut picks: Vec<usize> = (0..4).map(|_| rng.below(g.len())).collect();
        if !nonzero.is_empty() {
            picks.extend((0..2).map(|_| nonzero[rng.below(nonzero.len())]));
        }
        picks.push(largest);
        picks.sort_unstable();
        picks.dedup();
        for i in picks {
            let (fd, an) = (f.finite_difference(&var, i), g[i] as f64);
            checked += 1;
            if !close(fd, an) {
                failures.push(format!("{name}[{i}]: analytic {an:.6e}, finite difference {fd:.6e}"));
            }
        }
    }
    assert!(checked > 41 * 5, "only {checked} entries checked");
    assert!(failures.is_empty(), "gradients disagree with finite differences:\n{}", failures.join("\n"));
}

/// The backward of the training path (fused encoder layers, the first-position last layer, the
/// pooler and head, embeddings) matches finite differences, dropout off.
#[test]
fn gradients_match_finite_differences() {
    check_against_finite_differences(0.0);
}

/// The same with dropout on: each pass uses the same seed, so the same masks, and the loss stays
/// a smooth function of the weights; this covers the dropout masks in the backward passes.
#[test]
fn gradients_match_finite_differences_with_dropout() {
    check_against_finite_differences(0.1);
}

/// Adding a bias to the keys adds `q . b` to every score of a query row, which the softmax
/// cancels: the key bias's exact gradient is zero. Analytic gradients are zero up to rounding
/// and so is the finite difference of every entry, while the query bias next to it has real
/// gradients.
#[test]
fn key_bias_gradient_is_zero() {
    let f = Fixture::new(0.0);
    let grads = f.analytic();
    let grad = |name: &str| grads.iter().find(|(n, _, _)| n == name).unwrap_or_else(|| panic!("no {name}"));
    for layer in 0..2 {
        let (name, var, g) = grad(&format!("bert.encoder.layer.{layer}.attention.self.key.bias"));
        // Measured: 3e-8 at most.
        let largest = g.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(largest <= 1e-6, "{name}: analytic gradient {largest:e}, expected 0");
        for i in 0..g.len() {
            let fd = f.finite_difference(var, i);
            assert!(fd.abs() <= ATOL, "{name}[{i}]: finite difference {fd:e}, expected 0");
        }
        let (name, _, g) = grad(&format!("bert.encoder.layer.{layer}.attention.self.query.bias"));
        let largest = g.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(largest >= 1e-2, "{name}: largest gradient {largest:e}, expected a real gradient");
    }
}

/// The head is created for a model without one, and dropout is real in training only.
#[test]
fn head_init_and_dropout() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = common::tiny_bert(tmp.path(), 2, false);
    let dev = Device::Cpu;
    let cfg = BertConfig::load(&dir).unwrap();
    let (weights, _) = read_weights(&dir, &dev).unwrap();
    let mut params = Params::from_tensors(&weights).unwrap();
    let created = init_head(&mut params, &cfg, 3, &mut Rng::new(1), &dev).unwrap();
    assert_eq!(created.len(), 4, "pooler and classifier are created for a model without them");
    let model = Classifier::load(&cfg, &|n| params.trainable(n)).unwrap();
    let ex = |ids: Vec<u32>, label: u32| Example {
        enc: Encoded { type_ids: ids.iter().enumerate().map(|(i, _)| u32::from(i > 2)).collect(), ids },
        label: Some(label),
        teacher_logits: None,
        domain: None,
    };
    let rows = [ex(vec![2, 20, 21, 22, 3], 0), ex(vec![2, 30, 3, 40, 41, 3], 1), ex(vec![2, 50, 3], 2)];
    let refs: Vec<&Example> = rows.iter().collect();
    let batch = make_batch(&refs, &dev).unwrap();
    // Dropout is real: two training passes with different seeds differ, evaluation passes agree.
    let a = model.forward(&batch, &ForwardCtx::train(1)).unwrap();
    let b = model.forward(&batch, &ForwardCtx::train(2)).unwrap();
    let diff = (a - b).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff > 0.0);
    let e1 = model.forward(&batch, &ForwardCtx::eval()).unwrap();
    let e2 = model.forward(&batch, &ForwardCtx::eval()).unwrap();
    let same = (e1 - e2).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(same, 0.0);
}
/// The whole-layer fused op (used without attention taps; in place when no gradient is needed) and
/// the op-by-op path (used when the attention probabilities are kept) agree in training mode,
/// dropout included: same logits and the same gradient for every weight (1e-5 relative; the key
/// bias, whose gradient is zero in exact arithmetic, against an absolute floor).
#[test]
fn fused_layer_matches_the_op_by_op_path() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = common::tiny_bert(tmp.path(), 2, true);
    let dev = Device::Cpu;
    let cfg = BertConfig::load(&dir).unwrap();
    assert!(cfg.hidden_dropout_prob > 0.0 && cfg.attention_probs_dropout_prob > 0.0);
    let (weights, _) = read_weights(&dir, &dev).unwrap();
    let mut params = Params::from_tensors(&weights).unwrap();
    init_head(&mut params, &cfg, 2, &mut Rng::new(1), &dev).unwrap();
    let model = Classifier::load(&cfg, &|n| params.trainable(n)).unwrap();
    let ex = |ids: Vec<u32>, label: u32| Example {
        enc: Encoded { type_ids: vec![0; ids.len()], ids },
        label: Some(label),
        teacher_logits: None,
        domain: None,
    };
    let rows = [ex(vec![2, 20, 21, 22, 23, 24, 3], 0), ex(vec![2, 30, 3], 1), ex(vec![2, 50, 51, 3], 1)];
    let refs: Vec<&Example> = rows.iter().collect();
    let batch = make_batch(&refs, &dev).unwrap();
    let run = |taps: Taps| {
        let (logits, _) = model.forward_with(&batch, taps, &ForwardCtx::train(11)).unwrap();
        let loss = candle_nn::loss::cross_entropy(&logits, batch.labels.as_ref().unwrap()).unwrap();
        (logits, loss.backward().unwrap())
    };
    let (fused, fused_grads) = run(Taps::default());
    let (plain, plain_grads) = run(Taps { hidden_states: false, attentions: true, first_position_only: false });
    let rel = |a: &Tensor, b: &Tensor| {
        let diff = (a - b).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
        let norm = b.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
        diff / norm.max(1e-4)
    };
    assert!(rel(&fused, &plain) < 1e-5, "logits differ: {}", rel(&fused, &plain));
    // Frozen weights take the in-place forward (no activations kept): same logits, same dropout.
    let frozen = Classifier::load(&cfg, &|n| params.frozen(n)).unwrap();
    let in_place = frozen.forward(&batch, &ForwardCtx::train(11)).unwrap();
    assert!(rel(&in_place, &fused) < 1e-6, "in-place forward differs: {}", rel(&in_place, &fused));
    // At inference the classifier's last layer computes the [CLS] position alone: same logits
    // as the whole last layer, padded rows included.
    let eval = ForwardCtx::eval();
    let (whole, out) = frozen.forward_with(&batch, Taps::default(), &eval).unwrap();
    assert_eq!(out.last_hidden.dims()[1], 7);
    let first = frozen.forward(&batch, &eval).unwrap();
    assert!(rel(&first, &whole) < 1e-6, "first-position last layer differs: {}", rel(&first, &whole));
    for (name, var) in params.iter() {
        let (a, b) = (fused_grads.get(var.as_tensor()).unwrap(), plain_grads.get(var.as_tensor()).unwrap());
        assert!(rel(a, b) < 1e-5, "{name}: gradients differ by {} (relative)", rel(a, b));
    }
    // The classifier's own forward computes the last layer for the [CLS] position alone, in
    // training too: same logits and gradients as the whole last layer, dropout included.
    let logits = model.forward(&batch, &ForwardCtx::train(11)).unwrap();
    assert!(rel(&logits, &fused) < 1e-5, "first-position logits differ: {}", rel(&logits, &fused));
    let loss = candle_nn::loss::cross_entropy(&logits, batch.labels.as_ref().unwrap()).unwrap();
    let first_grads = loss.backward().unwrap();
    for (name, var) in params.iter() {
        let (a, b) = (first_grads.get(var.as_tensor()).unwrap(), fused_grads.get(var.as_tensor()).unwrap());
        assert!(rel(a, b) < 1e-5, "{name}: first-position gradients differ by {} (relative)", rel(a, b));
    }
}
