//! Numerical parity with the PyTorch/transformers reference on the shared models.

mod common;

use candle_core::{Device, Tensor};
use easynlp::data::tokenize::BertTokenizer;
use easynlp::model::bert::{Bert, ForwardCtx, Taps};
use easynlp::model::config::BertConfig;
use easynlp::model::params::{read_weights, Params};
use serde_json::Value;

#[test]
fn tokenization_matches_reference() {
    let Some(shared) = common::shared_dir("tokenization_matches_reference") else {
        return;
    };
    let model = shared.join("models/minilm-l6");
    let text = std::fs::read_to_string(shared.join("reference/torch/tokenization.json")).unwrap();
    let cases: Value = serde_json::from_str(&text).unwrap();
    let cases = cases["cases"].as_array().unwrap();
    assert!(cases.len() >= 8);
    for (i, case) in cases.iter().enumerate() {
        let max_len = case["max_length"].as_u64().unwrap() as usize;
        let tok = BertTokenizer::load(&model, max_len, false).unwrap();
        let a = case["text_a"].as_str().unwrap();
        let b = case["text_b"].as_str();
        let enc = &tok.encode_batch(&[(a, b)]).unwrap()[0];
        let ids: Vec<u64> = case["input_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        let types: Vec<u64> = case["token_type_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        let mask: Vec<u64> = case["attention_mask"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        let mut got_ids: Vec<u64> = enc.ids.iter().map(|&x| x as u64).collect();
        let mut got_types: Vec<u64> = enc.type_ids.iter().map(|&x| x as u64).collect();
        let mut got_mask = vec![1u64; got_ids.len()];
        got_ids.resize(max_len, 0);
        got_types.resize(max_len, 0);
        got_mask.resize(max_len, 0);
        assert_eq!(got_ids, ids, "case {i} ({a:?}, {b:?}): input_ids");
        assert_eq!(got_types, types, "case {i}: token_type_ids");
        assert_eq!(got_mask, mask, "case {i}: attention_mask");
    }
}

/// Largest absolute difference at the rows/positions where `mask` is 1 (`mask` is `[B, L]`;
/// `a`, `b` are `[B, L, ...]`).
fn max_masked_diff(a: &Tensor, b: &Tensor, mask: &Tensor) -> f32 {
    let mut m = mask.clone();
    while m.rank() < a.rank() {
        m = m.unsqueeze(m.rank()).unwrap();
    }
    let diff = (a - b).unwrap().abs().unwrap().broadcast_mul(&m).unwrap();
    diff.flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn check_encoder(name: &str, with_pooler: bool) {
    let Some(shared) = common::shared_dir(name) else {
        return;
    };
    let dev = Device::Cpu;
    let model_dir = shared.join(format!("models/{name}"));
    let cfg = BertConfig::load(&model_dir).unwrap();
    let (weights, _) = read_weights(&model_dir, &dev).unwrap();
    let params = Params::from_tensors(&weights).unwrap();
    let bert = Bert::load(&cfg, &|n| params.frozen(n), with_pooler).unwrap();
    let reference =
        candle_core::safetensors::load(shared.join(format!("reference/torch/{name}-encoder.safetensors")), &dev)
            .unwrap();
    let ids = reference["input_ids"].to_dtype(candle_core::DType::U32).unwrap();
    let types = reference["token_type_ids"].to_dtype(candle_core::DType::U32).unwrap();
    let mask = reference["attention_mask"].to_dtype(candle_core::DType::F32).unwrap();
    let taps = Taps { hidden_states: true, attentions: true, first_position_only: false };
    let out = bert.forward(&ids, &types, &mask, taps, &ForwardCtx::eval()).unwrap();
    let d_last = max_masked_diff(&out.last_hidden, &reference["last_hidden_state"], &mask);
    let d_emb = max_masked_diff(&out.hidden_states[0], &reference["hidden_state_0"], &mask);
    // Attention [B, heads, Lq, Lk]: compare real query rows (keys at padding are ~0 in both).
    let att = out.attentions.last().unwrap().transpose(1, 2).unwrap();
    let ref_att = reference["attention_last_layer"].transpose(1, 2).unwrap();
    let d_att = max_masked_diff(&att, &ref_att, &mask);
    // Without taps the attention core runs as one fused kernel: same numbers.
    let fused = bert.forward(&ids, &types, &mask, Taps::default(), &ForwardCtx::eval()).unwrap();
    let d_fused = max_masked_diff(&fused.last_hidden, &reference["last_hidden_state"], &mask);
    assert!(d_fused < 1e-4, "{name} fused-attention last_hidden_state differs by {d_fused}");
    eprintln!("{name}: last_hidden {d_last:.2e} (fused {d_fused:.2e}), hidden_0 {d_emb:.2e}, attention {d_att:.2e}");
    assert!(d_last < 1e-4, "{name} last_hidden_state differs by {d_last}");
    assert!(d_emb < 1e-4, "{name} hidden_state_0 differs by {d_emb}");
    assert!(d_att < 1e-4, "{name} attention_last_layer differs by {d_att}");
    // When only the pooler reads the last layer, that layer computes the first position alone.
    let first = Taps { first_position_only: true, ..Taps::default() };
    let first = bert.forward(&ids, &types, &mask, first, &ForwardCtx::eval()).unwrap();
    assert_eq!(first.last_hidden.dims(), [mask.dim(0).unwrap(), 1, cfg.hidden_size]);
    let ones = Tensor::ones(mask.dim(0).unwrap(), candle_core::DType::F32, &dev).unwrap();
    let ref_first = reference["last_hidden_state"].narrow(1, 0, 1).unwrap().squeeze(1).unwrap();
    let d_first = max_masked_diff(&first.last_hidden.squeeze(1).unwrap(), &ref_first, &ones);
    eprintln!("{name}: first position only {d_first:.2e}");
    assert!(d_first < 1e-4, "{name} first-position last layer differs by {d_first}");
    if with_pooler {
        let d_pool = max_masked_diff(out.pooled.as_ref().unwrap(), &reference["pooler_output"], &ones);
        let d_first_pool = max_masked_diff(first.pooled.as_ref().unwrap(), &reference["pooler_output"], &ones);
        eprintln!("{name}: pooler {d_pool:.2e} (first position only {d_first_pool:.2e})");
        assert!(d_pool < 1e-4, "{name} pooler_output differs by {d_pool}");
        assert!(d_first_pool < 1e-4, "{name} first-position pooler_output differs by {d_first_pool}");
    }
}

#[test]
fn minilm_l6_encoder_matches_reference() {
    check_encoder("minilm-l6", true);
}

#[test]
fn minilm_l3_encoder_matches_reference() {
    check_encoder("minilm-l3", false);
}
