//! `--mode=metakd_weights`: the prototype ("meta") weight of every training instance (spec §5.3).
//!
//! With `c_d` the centroid (mean embedding) of domain d and `o_d` the unweighted mean of the other
//! domains' centroids, an instance x of domain d gets `weight = (cos(x, c_d) + cos(x, o_d)) / 2`.
//! The centroids are per domain (not per class), as in EasyNLP's code.

use super::write_files_atomic;
use crate::config::run::PrepConfig;
use crate::format::python_float;
use crate::logging;
use crate::metakd::tables::{format_meta, read_meta, MetaRow};
use anyhow::{bail, Result};

/// Cosine similarity in f64; 0 when either vector is all zeros.
pub fn cosine(u: &[f64], v: &[f64]) -> f64 {
    let dot: f64 = u.iter().zip(v).map(|(a, b)| a * b).sum();
    let nu = u.iter().map(|a| a * a).sum::<f64>().sqrt();
    let nv = v.iter().map(|a| a * a).sum::<f64>().sqrt();
    if nu == 0.0 || nv == 0.0 {
        0.0
    } else {
        dot / (nu * nv)
    }
}

/// The prototype weight of each instance: `embeddings[i]` belongs to domain `domain_ids[i]`
/// (an index into `domain_names`). Needs at least two domains, every domain with at least one
/// instance, and embeddings of one length.
pub fn prototype_weights(embeddings: &[Vec<f32>], domain_ids: &[usize], domain_names: &[String]) -> Result<Vec<f64>> {
    let nd = domain_names.len();
    if nd < 2 {
        bail!("prototype weights need at least two domains (domain_label has {nd})");
    }
    if embeddings.len() != domain_ids.len() {
        bail!("{} embeddings but {} domain ids", embeddings.len(), domain_ids.len());
    }
    let dim = embeddings.first().map(Vec::len).unwrap_or(0);
    let mut sums = vec![vec![0f64; dim]; nd];
    let mut counts = vec![0usize; nd];
    for (x, &d) in embeddings.iter().zip(domain_ids) {
        if d >= nd {
            bail!("domain id {d} out of range ({nd} domains)");
        }
        if x.len() != dim {
            bail!("embeddings of different lengths ({} and {dim})", x.len());
        }
        counts[d] += 1;
        sums[d].iter_mut().zip(x).for_each(|(s, &v)| *s += v as f64);
    }
    if let Some(d) = counts.iter().position(|&c| c == 0) {
        bail!("domain `{}` has no rows: every domain of domain_label needs instances", domain_names[d]);
    }
    let centroids: Vec<Vec<f64>> =
        sums.iter().zip(&counts).map(|(s, &c)| s.iter().map(|v| v / c as f64).collect()).collect();
    let others: Vec<Vec<f64>> = (0..nd)
        .map(|d| {
            let mut o = vec![0f64; dim];
            for c in centroids.iter().enumerate().filter(|(e, _)| *e != d).map(|(_, c)| c) {
                o.iter_mut().zip(c).for_each(|(a, b)| *a += b / (nd - 1) as f64);
            }
            o
        })
        .collect();
    Ok(embeddings
        .iter()
        .zip(domain_ids)
        .map(|(x, &d)| {
            let x: Vec<f64> = x.iter().map(|&v| v as f64).collect();
            (cosine(&x, &centroids[d]) + cosine(&x, &others[d])) / 2.0
        })
        .collect())
}

/// Parses an `embeddings` field: space-separated finite numbers.
fn parse_embedding(text: &str, at: &str) -> Result<Vec<f32>> {
    let values: Vec<f32> = text
        .split_whitespace()
        .map(|v| match v.parse::<f32>() {
            Ok(x) if x.is_finite() => Ok(x),
            _ => bail!("{at}: column `embeddings`: `{v}` is not a finite number"),
        })
        .collect::<Result<_>>()?;
    if values.is_empty() {
        bail!("{at}: column `embeddings` is empty");
    }
    Ok(values)
}

/// `--mode=metakd_weights`.
pub fn run(cfg: &PrepConfig) -> Result<()> {
    let rows = read_meta(&cfg.input, "embeddings", &cfg.domains)?;
    let mut embeddings = Vec::with_capacity(rows.len());
    let mut ids = Vec::with_capacity(rows.len());
    for row in &rows {
        let at = format!("{}:{}", cfg.input.display(), row.line);
        let e = parse_embedding(&row.last, &at)?;
        if let Some(first) = embeddings.first().map(Vec::len) {
            if e.len() != first {
                bail!("{at}: {} embedding values, but the first row has {first}", e.len());
            }
        }
        embeddings.push(e);
        ids.push(cfg.domains.iter().position(|d| *d == row.domain).unwrap_or(0));
    }
    let weights = prototype_weights(&embeddings, &ids, &cfg.domains)
        .map_err(|e| anyhow::anyhow!("{}: {e}", cfg.input.display()))?;
    let out: Vec<MetaRow> =
        rows.into_iter().zip(&weights).map(|(r, w)| MetaRow { last: python_float(*w), ..r }).collect();
    write_files_atomic(&[(cfg.output.clone(), format_meta("weight", &out))])?;
    for (d, name) in cfg.domains.iter().enumerate() {
        let w: Vec<f64> = weights.iter().zip(&ids).filter(|(_, &i)| i == d).map(|(w, _)| *w).collect();
        let mean = w.iter().sum::<f64>() / w.len().max(1) as f64;
        let (lo, hi) = w.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        logging::info(format!("{name}: {} rows, weight mean {mean:.4} (min {lo:.4}, max {hi:.4})", w.len()));
    }
    logging::info(format!("wrote {} weights to {}", weights.len(), cfg.output.display()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_two_domain_example() {
        // Domain A: x1 = (1,0), x2 = (0,1)  -> c_A = (0.5, 0.5), |c_A| = 1/sqrt(2).
        // Domain B: x3 = (1,0), x4 = (0,2)  -> c_B = (0.5, 1.0), |c_B| = sqrt(1.25).
        // Two domains, so o_A = c_B and o_B = c_A.
        // x1: cos(x1,c_A) = 0.5/(1/sqrt2) = 1/sqrt2 = 0.70710678; cos(x1,c_B) = 0.5/sqrt(1.25) = 0.44721360
        //     -> (0.70710678 + 0.44721360)/2 = 0.57716019
        // x2: cos(x2,c_A) = 0.70710678; cos(x2,c_B) = 1/sqrt(1.25) = 0.89442719 -> 0.80076699
        // x3: cos(x3,c_B) = 0.44721360; cos(x3,c_A) = 0.70710678 -> 0.57716019
        // x4: cos(x4,c_B) = 2/(2 sqrt1.25) = 0.89442719; cos(x4,c_A) = 0.70710678 -> 0.80076699
        let x = vec![vec![1.0, 0.0], vec![0.0, 1.0], vec![1.0, 0.0], vec![0.0, 2.0]];
        let names = vec!["A".to_string(), "B".to_string()];
        let w = prototype_weights(&x, &[0, 0, 1, 1], &names).unwrap();
        let want = [0.57716019, 0.80076699, 0.57716019, 0.80076699];
        for (got, want) in w.iter().zip(want) {
            assert!((got - want).abs() < 1e-7, "{w:?}");
        }
    }

    #[test]
    fn three_domains_use_the_mean_of_the_other_centroids() {
        // c_0 = (1,0), c_1 = (0,1), c_2 = (0,1): for x = (1,0) in domain 0, o_0 = (0,1) -> (1 + 0)/2.
        let x = vec![vec![1.0, 0.0], vec![0.0, 1.0], vec![0.0, 1.0]];
        let names: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let w = prototype_weights(&x, &[0, 1, 2], &names).unwrap();
        assert!((w[0] - 0.5).abs() < 1e-12);
        // x = (0,1) in domain 1: c_1 = (0,1), o_1 = mean((1,0),(0,1)) = (0.5,0.5) -> (1 + 1/sqrt2)/2.
        assert!((w[1] - (1.0 + 0.5f64.sqrt()) / 2.0).abs() < 1e-12);
    }

    #[test]
    fn empty_domain_and_single_domain_are_errors() {
        let names = vec!["A".to_string(), "B".to_string()];
        let e = prototype_weights(&[vec![1.0]], &[0], &names).unwrap_err().to_string();
        assert!(e.contains("`B` has no rows"), "{e}");
        assert!(prototype_weights(&[vec![1.0]], &[0], &names[..1]).is_err());
    }
}
