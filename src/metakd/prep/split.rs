//! `--mode=metakd_split`: the multi-domain reviews -> `{train,dev,test}.tsv` in EasyNLP's SENTI
//! format, stratified by (domain, sentiment) and seeded.
//!
//! Within each (domain, sentiment) group of n reviews (in file order), shuffled by the seed:
//! `round(n/10)` go to test, then `round(m/10)` of the remaining m to dev, the rest to train, i.e.
//! 81/9/10 % as EasyNLP's two stratified 10-fold splits (1000 reviews: 810/90/100). Each output is
//! then shuffled, so the domains are interleaved. The same input and seed give the same files.

use super::source::{read_domains, Review};
use super::write_files_atomic;
use crate::config::run::PrepConfig;
use crate::logging;
use crate::metakd::tables::format_senti;
use crate::rng::Rng;
use anyhow::{Context, Result};

/// One review assigned to a split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitRow<'a> {
    /// Index of the domain in `domain_label`.
    pub domain: usize,
    /// The review.
    pub review: &'a Review,
}

/// The three splits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Splits<'a> {
    /// 81 %.
    pub train: Vec<SplitRow<'a>>,
    /// 9 %.
    pub dev: Vec<SplitRow<'a>>,
    /// 10 %.
    pub test: Vec<SplitRow<'a>>,
}

/// `(train, dev, test)` sizes of a group of `n` reviews: test = round(n/10), dev = round(rest/10).
pub fn group_sizes(n: usize) -> (usize, usize, usize) {
    let test = (n + 5) / 10;
    let rest = n - test;
    let dev = (rest + 5) / 10;
    (rest - dev, dev, test)
}

/// Splits the reviews of each domain (in `domain_label` order), stratified by (domain, sentiment).
pub fn stratified_split(domains: &[Vec<Review>], seed: u64) -> Splits<'_> {
    let mut rng = Rng::new(seed);
    let mut splits = Splits::default();
    for (d, reviews) in domains.iter().enumerate() {
        for positive in [true, false] {
            let mut group: Vec<&Review> = reviews.iter().filter(|r| r.positive == positive).collect();
            rng.shuffle(&mut group);
            let (_, dev, test) = group_sizes(group.len());
            for (i, review) in group.into_iter().enumerate() {
                let row = SplitRow { domain: d, review };
                match i {
                    i if i < test => splits.test.push(row),
                    i if i < test + dev => splits.dev.push(row),
                    _ => splits.train.push(row),
                }
            }
        }
    }
    rng.shuffle(&mut splits.train);
    rng.shuffle(&mut splits.dev);
    rng.shuffle(&mut splits.test);
    splits
}

/// The SENTI table of one split.
fn senti_table(rows: &[SplitRow], domains: &[String]) -> String {
    format_senti(rows.iter().map(|r| {
        (r.review.text.as_str(), domains[r.domain].as_str(), if r.review.positive { "positive" } else { "negative" })
    }))
}

/// `--mode=metakd_split`.
pub fn run(cfg: &PrepConfig) -> Result<()> {
    let reviews = read_domains(&cfg.input, &cfg.domains)?;
    let splits = stratified_split(&reviews, cfg.seed);
    std::fs::create_dir_all(&cfg.output).with_context(|| format!("cannot create {}", cfg.output.display()))?;
    let parts = [("train", &splits.train), ("dev", &splits.dev), ("test", &splits.test)];
    let files: Vec<_> = parts
        .iter()
        .map(|(name, rows)| (cfg.output.join(format!("{name}.tsv")), senti_table(rows, &cfg.domains)))
        .collect();
    write_files_atomic(&files)?;
    for (d, name) in cfg.domains.iter().enumerate() {
        let count = |rows: &[SplitRow]| rows.iter().filter(|r| r.domain == d).count();
        logging::info(format!(
            "{name}: train {}, dev {}, test {}",
            count(&splits.train),
            count(&splits.dev),
            count(&splits.test)
        ));
    }
    logging::info(format!(
        "wrote {} (train {}, dev {}, test {} rows; seed {})",
        cfg.output.display(),
        splits.train.len(),
        splits.dev.len(),
        splits.test.len(),
        cfg.seed
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_easynlp_proportions() {
        assert_eq!(group_sizes(1000), (810, 90, 100));
        assert_eq!(group_sizes(20), (16, 2, 2));
        assert_eq!(group_sizes(1), (1, 0, 0));
        assert_eq!(group_sizes(0), (0, 0, 0));
    }

    #[test]
    fn split_is_stratified_and_seeded() {
        let mk = |n: usize, tag: &str| -> Vec<Review> {
            (0..n).map(|i| Review { text: format!("{tag}{i}"), positive: i % 2 == 0 }).collect()
        };
        let domains = vec![mk(200, "a"), mk(100, "b")];
        let s = stratified_split(&domains, 3);
        let count = |rows: &[SplitRow], d: usize, pos: bool| {
            rows.iter().filter(|r| r.domain == d && r.review.positive == pos).count()
        };
        assert_eq!((count(&s.train, 0, true), count(&s.dev, 0, true), count(&s.test, 0, true)), (81, 9, 10));
        assert_eq!((count(&s.train, 1, false), count(&s.dev, 1, false), count(&s.test, 1, false)), (40, 5, 5));
        assert_eq!(s, stratified_split(&domains, 3));
        assert_ne!(s, stratified_split(&domains, 4));
    }
}
