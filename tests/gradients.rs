//! Every weight of the classifier receives a non-zero gradient, and training changes it.

mod common;

use candle_core::{DType, Device, Tensor};
use easynlp::data::batch::{make_batch, Example};
use easynlp::data::tokenize::Encoded;
use easynlp::model::bert::{ForwardCtx, Taps};
use easynlp::model::classifier::{init_head, Classifier};
use easynlp::model::config::BertConfig;
use easynlp::model::params::{read_weights, Params};
use easynlp::rng::Rng;

#[test]
fn every_weight_gets_a_gradient() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = common::tiny_bert(tmp.path(), 2, false);
    let dev = Device::Cpu;
    let cfg = BertConfig::load(&dir).unwrap();
    let (weights, _) = read_weights(&dir, &dev).unwrap();
    let mut params = Params::default();
    for (k, t) in &weights {
        params.insert(k, t).unwrap();
    }
    let created = init_head(&mut params, &cfg, 3, &mut Rng::new(1), &dev).unwrap();
    assert_eq!(created.len(), 4, "pooler and classifier are created for a model without them");
    let model = Classifier::load(&cfg, &|n| params.trainable(n)).unwrap();
    let ex = |ids: Vec<u32>, label: u32| Example {
        enc: Encoded { type_ids: ids.iter().enumerate().map(|(i, _)| u32::from(i > 2)).collect(), ids },
        label: Some(label),
        teacher_logits: None,
    };
    let rows = [ex(vec![2, 20, 21, 22, 3], 0), ex(vec![2, 30, 3, 40, 41, 3], 1), ex(vec![2, 50, 3], 2)];
    let refs: Vec<&Example> = rows.iter().collect();
    let batch = make_batch(&refs, &dev).unwrap();
    let logits = model.forward(&batch, &ForwardCtx::train(3)).unwrap();
    let loss = candle_nn::loss::cross_entropy(&logits, batch.labels.as_ref().unwrap()).unwrap();
    let grads = loss.backward().unwrap();
    let mut missing = Vec::new();
    for (name, var) in params.iter() {
        let g = grads.get(var.as_tensor());
        let norm = g.map(|g| g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap()).unwrap_or(0.0);
        if !(norm > 0.0 && norm.is_finite()) {
            missing.push(name.clone());
        }
    }
    assert!(missing.is_empty(), "weights without a gradient: {missing:?}");
    // Dropout is real: two training passes with different seeds differ, evaluation passes agree.
    let a = model.forward(&batch, &ForwardCtx::train(1)).unwrap();
    let b = model.forward(&batch, &ForwardCtx::train(2)).unwrap();
    let diff = (a - b).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff > 0.0);
    let e1 = model.forward(&batch, &ForwardCtx::eval()).unwrap();
    let e2 = model.forward(&batch, &ForwardCtx::eval()).unwrap();
    let same = (e1 - e2).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(same, 0.0);
    let _ = Tensor::zeros(1, DType::F32, &dev);
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
    let mut params = Params::default();
    for (k, t) in &weights {
        params.insert(k, t).unwrap();
    }
    init_head(&mut params, &cfg, 2, &mut Rng::new(1), &dev).unwrap();
    let model = Classifier::load(&cfg, &|n| params.trainable(n)).unwrap();
    let ex = |ids: Vec<u32>, label: u32| Example {
        enc: Encoded { type_ids: vec![0; ids.len()], ids },
        label: Some(label),
        teacher_logits: None,
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
