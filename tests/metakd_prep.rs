//! Meta-KD data preparation through the real binary: split, embeddings, weights, dev layout.

mod common;

use common::{easynlp_owned, sample, stderr, tiny_bert};
use easynlp::metakd::prep::source::parse_review_file;
use easynlp::metakd::prep::weights::prototype_weights;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Runs `easynlp --mode=<mode> --tables=<tables> --outputs=<outputs> <extra...>`.
fn prep(mode: &str, tables: &Path, outputs: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        format!("--mode={mode}"),
        format!("--tables={}", tables.display()),
        format!("--outputs={}", outputs.display()),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    easynlp_owned(&args)
}

fn ok(out: &std::process::Output) {
    assert!(out.status.success(), "easynlp failed: {}", stderr(out));
}

fn fails_with(out: &std::process::Output, needles: &[&str]) {
    common::assert_failed_with(out, needles);
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Data rows of a tab-separated file with header, split into fields.
fn rows(path: &Path) -> Vec<Vec<String>> {
    read(path).lines().skip(1).map(|l| l.split('\t').map(String::from).collect()).collect()
}

/// Per (domain, sentiment) counts of a SENTI table.
fn counts(path: &Path) -> BTreeMap<(String, String), usize> {
    let mut m = BTreeMap::new();
    for r in rows(path) {
        assert_eq!(r.len(), 3, "{r:?}");
        *m.entry((r[1].clone(), r[2].clone())).or_insert(0) += 1;
    }
    m
}

/// Writes a review table as the shared data has it: CRLF, quoted fields, "title\n\tbody" texts.
fn write_review_table(path: &Path, reviews: &[(String, u8)]) {
    let mut out = String::from("sentence\tlabel\r\n");
    for (text, label) in reviews {
        out.push_str(&format!("\"{}\"\t{label}\r\n", text.replace('"', "\"\"")));
    }
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, out).unwrap();
}

/// A review-table corpus with `n` reviews per domain (half positive), from the sample sentences.
fn tiny_corpus(root: &Path, domains: &[&str], n: usize) -> PathBuf {
    let sentences: Vec<String> = read(Path::new(&sample("sentiment-train.tsv")))
        .lines()
        .map(|l| l.split('\t').next().unwrap().to_string())
        .collect();
    let data = root.join("corpus");
    for (d, domain) in domains.iter().enumerate() {
        let make = |i: usize| {
            let s = &sentences[(d * n + i) % sentences.len()];
            (format!("Title {i}\n\t{s} \"quoted\"\tand tabbed.\n\nSecond paragraph {i}."), (i % 2) as u8)
        };
        let all: Vec<(String, u8)> = (0..n).map(make).collect();
        let cut = n * 85 / 100;
        write_review_table(&data.join(domain).join("train.tsv"), &all[..cut]);
        write_review_table(&data.join(domain).join("dev.tsv"), &all[cut..]);
    }
    data
}

#[test]
fn split_of_the_shared_blitzer_data_is_stratified_and_seeded() {
    let Some(shared) = common::shared_dir("split_of_the_shared_blitzer_data") else { return };
    let data = shared.join("data/blitzer-amazon");
    let tmp = tempfile::tempdir().unwrap();
    let run = |name: &str, seed: &str| {
        let out_dir = tmp.path().join(name);
        ok(&prep("metakd_split", &data, &out_dir, &[&format!("--random_seed={seed}")]));
        out_dir
    };
    let a = run("a", "42");
    for domain in ["books", "dvd", "electronics", "kitchen"] {
        for sentiment in ["positive", "negative"] {
            let key = (domain.to_string(), sentiment.to_string());
            let got: Vec<usize> =
                ["train", "dev", "test"].iter().map(|s| counts(&a.join(format!("{s}.tsv")))[&key]).collect();
            assert_eq!(got, [810, 90, 100], "{domain}/{sentiment}");
        }
    }
    assert!(!counts(&a.join("train.tsv")).keys().any(|(d, _)| d == "airline"), "airline is not in domain_label");
    let header = read(&a.join("train.tsv")).lines().next().unwrap().to_string();
    assert_eq!(header, "review\tdomain\tsentiment");
    assert!(!read(&a.join("train.tsv")).contains('\r'));
    // Label 1 is positive: a review known from the data (books, label 1) comes out positive.
    let all: Vec<Vec<String>> =
        ["train", "dev", "test"].iter().flat_map(|s| rows(&a.join(format!("{s}.tsv")))).collect();
    let oz = all.iter().find(|r| r[0].starts_with("The Medicine of the Future Dr. Oz")).expect("review present");
    assert_eq!((oz[1].as_str(), oz[2].as_str()), ("books", "positive"));
    let b = run("b", "42");
    let c = run("c", "7");
    for s in ["train", "dev", "test"] {
        let f = format!("{s}.tsv");
        assert_eq!(read(&a.join(&f)), read(&b.join(&f)), "same seed, same {f}");
        assert_ne!(read(&a.join(&f)), read(&c.join(&f)), "another seed, another {f}");
    }
}

#[test]
fn split_reads_quoted_multiline_tables_into_one_line_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tiny_corpus(tmp.path(), &["books", "dvd", "airline"], 40);
    let out_dir = tmp.path().join("SENTI");
    ok(&prep("metakd_split", &data, &out_dir, &["--user_defined_parameters=domain_label=books,dvd"]));
    for (split, n) in [("train", 16), ("dev", 2), ("test", 2)] {
        let c = counts(&out_dir.join(format!("{split}.tsv")));
        assert_eq!(c.len(), 4, "{c:?}");
        assert!(c.values().all(|&v| v == n), "{split}: {c:?}");
    }
    let all: Vec<Vec<String>> =
        ["train", "dev", "test"].iter().flat_map(|s| rows(&out_dir.join(format!("{s}.tsv")))).collect();
    assert_eq!(all.len(), 80);
    let r = all.iter().find(|r| r[0].starts_with("Title 3 ") && r[1] == "dvd").unwrap();
    assert!(r[0].ends_with("\"quoted\" and tabbed. Second paragraph 3."), "{}", r[0]);
    assert_eq!(r[2], "positive");
}

#[test]
fn blitzer_review_files_parse_without_duplicating_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sorted_data_acl/kitchen_&_housewares");
    std::fs::create_dir_all(&dir).unwrap();
    let review = |id: usize, body: &str| {
        format!(
            "<review>\n<unique_id>\n{id}\n</unique_id>\n<title>\nT{id}\n</title>\n<review_text>\n{body}</review_text>\n</review>\n"
        )
    };
    let positive = review(1, "Great pan.\n\n\tHeats evenly.\nWould buy again!\n") + &review(2, "Love it\n");
    std::fs::write(dir.join("positive.review"), positive).unwrap();
    std::fs::write(dir.join("negative.review"), review(3, "Rusted\tfast.\n\n\n")).unwrap();
    let parsed = parse_review_file(&dir.join("positive.review"), true).unwrap();
    let texts: Vec<&str> = parsed.iter().map(|r| r.text.as_str()).collect();
    assert_eq!(texts, ["Great pan. Heats evenly. Would buy again!", "Love it"]);
    let neg = parse_review_file(&dir.join("negative.review"), false).unwrap();
    assert_eq!((neg[0].text.as_str(), neg[0].positive), ("Rusted fast.", false));
    let out_dir = tmp.path().join("SENTI");
    ok(&prep("metakd_split", tmp.path(), &out_dir, &["--user_defined_parameters=domain_label=kitchen"]));
    let all: Vec<Vec<String>> =
        ["train", "dev", "test"].iter().flat_map(|s| rows(&out_dir.join(format!("{s}.tsv")))).collect();
    assert_eq!(all.len(), 3);
    assert!(all.iter().all(|r| r[1] == "kitchen"));
    assert!(all.iter().any(|r| r[0] == "Rusted fast." && r[2] == "negative"));
    // A review_text that is never closed is an error with file and line.
    std::fs::write(dir.join("negative.review"), "<review>\n<review_text>\nBad\n</review>\n").unwrap();
    let e = parse_review_file(&dir.join("negative.review"), false).unwrap_err().to_string();
    assert!(e.contains("negative.review:2") && e.contains("never closed"), "{e}");
}

/// Embeddings of `reviews` (all of domain books) with the tiny model, batch size `bs`.
fn embed(root: &Path, model: &Path, name: &str, reviews: &[&str], bs: usize) -> Vec<Vec<String>> {
    let table = root.join(format!("{name}.tsv"));
    let body: String = reviews.iter().map(|r| format!("{r}\tbooks\tpositive\n")).collect();
    std::fs::write(&table, format!("review\tdomain\tsentiment\n{body}")).unwrap();
    let out = root.join(format!("{name}.embeddings.tsv"));
    let udp = format!("--user_defined_parameters=pretrain_model_name_or_path={}", model.display());
    ok(&prep("metakd_embeddings", &table, &out, &["--sequence_length=64", &format!("--micro_batch_size={bs}"), &udp]));
    let text = read(&out);
    assert_eq!(text.lines().next().unwrap(), "guid\ttext_a\ttext_b\tlabel\tdomain\tembeddings");
    rows(&out)
}

fn floats(field: &str) -> Vec<f32> {
    field.split(' ').map(|v| v.parse().unwrap()).collect()
}

#[test]
fn embeddings_exclude_padding_and_cls() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_bert(&tmp.path().join("model"), 2, false);
    let short = "The toy broke.";
    let long = "The lead actress gives a stunning, award worthy performance, and the battery died after a week \
                and the charger broke, best headphones I have ever owned, crisp sound and very comfortable.";
    let alone = embed(tmp.path(), &model, "alone", &[short], 1);
    let batched = embed(tmp.path(), &model, "batched", &[long, short], 2);
    assert_eq!(alone[0][0], "alone-0");
    assert_eq!(batched[1][0], "batched-1");
    assert_eq!((batched[1][1].as_str(), batched[1][2].as_str(), batched[1][3].as_str()), (short, "", "positive"));
    let (a, b) = (floats(&alone[0][5]), floats(&batched[1][5]));
    assert_eq!(a.len(), 32, "H = 32 values");
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() < 1e-5, "padding changed the embedding: {x} vs {y}");
    }
    // Reference: the mean of the last hidden states at positions 1..L of the unpadded row.
    use easynlp::model::bert::{Bert, ForwardCtx, Taps};
    let device = candle_core::Device::Cpu;
    let config = easynlp::model::config::BertConfig::load(&model).unwrap();
    let (weights, _) = easynlp::model::params::read_weights(&model, &device).unwrap();
    let get = |n: &str| -> anyhow::Result<candle_core::Tensor> {
        weights.get(n).cloned().ok_or_else(|| anyhow::anyhow!("no weight {n}"))
    };
    let bert = Bert::load(&config, &get, false).unwrap();
    let tok = easynlp::data::tokenize::BertTokenizer::load(&model, 64, false).unwrap();
    let enc = tok.encode_batch(&[(short, None)]).unwrap().remove(0);
    let n = enc.ids.len();
    let ids = candle_core::Tensor::from_vec(enc.ids, (1, n), &device).unwrap();
    let types = candle_core::Tensor::from_vec(enc.type_ids, (1, n), &device).unwrap();
    let mask = candle_core::Tensor::ones((1, n), candle_core::DType::F32, &device).unwrap();
    let hidden = bert.forward(&ids, &types, &mask, Taps::default(), &ForwardCtx::eval()).unwrap().last_hidden;
    let hidden: Vec<Vec<f32>> = hidden.squeeze(0).unwrap().to_vec2().unwrap();
    for (j, x) in a.iter().enumerate() {
        let want = hidden[1..].iter().map(|h| h[j]).sum::<f32>() / (n - 1) as f32;
        assert!((x - want).abs() < 1e-5, "dim {j}: {x} vs {want}");
    }
}

#[test]
fn weights_of_a_hand_made_two_domain_table() {
    // books: (1,0), (0,1) -> c = (0.5,0.5); dvd: (1,0), (0,2) -> c = (0.5,1). With two domains o_d is
    // the other centroid. (1,0) in books: (1/sqrt2 + 0.5/sqrt1.25)/2 = (0.70710678 + 0.44721360)/2;
    // (0,1) in books: (0.70710678 + 0.89442719)/2; dvd symmetric.
    let want = [0.577_160_19, 0.800_766_99, 0.577_160_19, 0.800_766_99];
    let names = vec!["books".to_string(), "dvd".to_string()];
    let x = vec![vec![1.0, 0.0], vec![0.0, 1.0], vec![1.0, 0.0], vec![0.0, 2.0]];
    let w = prototype_weights(&x, &[0, 0, 1, 1], &names).unwrap();
    assert!(w.iter().zip(want).all(|(g, e)| (g - e).abs() < 1e-7), "{w:?}");
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("train.embeddings.tsv");
    let table = "guid\ttext_a\ttext_b\tlabel\tdomain\tembeddings\n\
                 g1\tone\t\tpositive\tbooks\t1.0 0.0\n\
                 g2\ttwo\t\tnegative\tbooks\t0.0 1.0\n\
                 g3\tthree\t\tpositive\tdvd\t1 0\n\
                 g4\tfour\tNone\tnegative\tdvd\t0.0 2e+00\n";
    std::fs::write(&input, table).unwrap();
    let output = tmp.path().join("train_with_weights.tsv");
    ok(&prep("metakd_weights", &input, &output, &["--user_defined_parameters=domain_label=books,dvd"]));
    let text = read(&output);
    assert_eq!(text.lines().next().unwrap(), "guid\ttext_a\ttext_b\tlabel\tdomain\tweight");
    let out = rows(&output);
    assert_eq!(out[3][..5], ["g4", "four", "None", "negative", "dvd"]);
    for (r, e) in out.iter().zip(want) {
        let got: f64 = r[5].parse().unwrap();
        assert!((got - e).abs() < 1e-7, "{r:?}");
    }
    // Errors name the file and line, and leave no output behind.
    let bad = tmp.path().join("bad.tsv");
    let fresh = tmp.path().join("fresh.tsv");
    std::fs::write(&bad, table.replace("0.0 2e+00", "0.0 x")).unwrap();
    fails_with(
        &prep("metakd_weights", &bad, &fresh, &["--user_defined_parameters=domain_label=books,dvd"]),
        &["bad.tsv:5", "`x` is not a finite number"],
    );
    std::fs::write(&bad, table.replace("0.0 2e+00", "0.0 2.0 3.0")).unwrap();
    fails_with(
        &prep("metakd_weights", &bad, &fresh, &["--user_defined_parameters=domain_label=books,dvd"]),
        &["bad.tsv:5", "3 embedding values"],
    );
    fails_with(
        &prep("metakd_weights", &input, &fresh, &["--user_defined_parameters=domain_label=books,dvd,kitchen"]),
        &["`kitchen` has no rows"],
    );
    fails_with(&prep("metakd_weights", &input, &fresh, &[]), &["`electronics` has no rows"]);
    std::fs::write(&bad, table.replace("positive\tdvd", "positive\tmusic")).unwrap();
    fails_with(
        &prep("metakd_weights", &bad, &fresh, &["--user_defined_parameters=domain_label=books,dvd"]),
        &["bad.tsv:4", "unknown domain `music`"],
    );
    assert!(!fresh.exists(), "a failed step wrote {}", fresh.display());
}

#[test]
fn dev_file_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("dev.tsv");
    std::fs::write(&input, "review\tdomain\tsentiment\nGood \"pan\".\tkitchen\tpositive\nDull.\tbooks\tnegative\n")
        .unwrap();
    let output = tmp.path().join("dev_standard.tsv");
    ok(&prep("metakd_dev", &input, &output, &[]));
    assert_eq!(
        read(&output),
        "guid\ttext_a\ttext_b\tlabel\tdomain\tweight\n\
         dev-0\tGood \"pan\".\t\tpositive\tkitchen\t0\n\
         dev-1\tDull.\t\tnegative\tbooks\t0\n"
    );
    let bad = tmp.path().join("bad.tsv");
    let fresh = tmp.path().join("fresh.tsv");
    std::fs::write(&bad, "review\tdomain\tsentiment\nGood.\tkitchen\tpositive\nDull.\tbooks\n").unwrap();
    fails_with(&prep("metakd_dev", &bad, &fresh, &[]), &["bad.tsv:3", "expected 3 tab-separated fields"]);
    std::fs::write(&bad, "").unwrap();
    fails_with(&prep("metakd_dev", &bad, &fresh, &[]), &["bad.tsv", "empty"]);
    std::fs::write(&bad, "review\tdomain\tsentiment\r\n").unwrap();
    fails_with(&prep("metakd_dev", &bad, &fresh, &[]), &["bad.tsv", "no rows"]);
    std::fs::write(&bad, "sentence\tlabel\nGood.\t1\n").unwrap();
    fails_with(&prep("metakd_dev", &bad, &fresh, &[]), &["bad.tsv:1", "expected the header"]);
    fails_with(
        &prep("metakd_dev", &input, &fresh, &["--user_defined_parameters=alpha=0.5"]),
        &["`alpha` has no meaning"],
    );
    assert!(!fresh.exists());
}

#[test]
fn split_errors_leave_no_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tiny_corpus(tmp.path(), &["books", "dvd"], 20);
    let out_dir = tmp.path().join("SENTI");
    fails_with(&prep("metakd_split", &data, &out_dir, &[]), &["no folder for domain `electronics`", "books, dvd"]);
    write_review_table(&data.join("dvd/train.tsv"), &[("Fine\n\tgood".into(), 1), ("Odd".into(), 3)]);
    fails_with(
        &prep("metakd_split", &data, &out_dir, &["--user_defined_parameters=domain_label=books,dvd"]),
        &["dvd/train.tsv:4", "label `3`"],
    );
    write_review_table(&data.join("dvd/train.tsv"), &[]);
    write_review_table(&data.join("dvd/dev.tsv"), &[]);
    fails_with(
        &prep("metakd_split", &data, &out_dir, &["--user_defined_parameters=domain_label=books,dvd"]),
        &["domain `dvd` has no reviews"],
    );
    assert!(!out_dir.exists());
}

#[test]
fn the_four_steps_chain_on_a_tiny_corpus() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_bert(&tmp.path().join("model"), 2, false);
    let data = tiny_corpus(tmp.path(), &["books", "dvd", "electronics", "kitchen"], 20);
    let senti = tmp.path().join("SENTI");
    ok(&prep("metakd_split", &data, &senti, &[]));
    let emb = tmp.path().join("train.embeddings.tsv");
    let udp = format!("--user_defined_parameters=pretrain_model_name_or_path={}", model.display());
    ok(&prep(
        "metakd_embeddings",
        &senti.join("train.tsv"),
        &emb,
        &["--sequence_length=32", "--micro_batch_size=8", &udp],
    ));
    let weighted = tmp.path().join("train_with_weights.tsv");
    ok(&prep("metakd_weights", &emb, &weighted, &[]));
    let w = rows(&weighted);
    assert_eq!(w.len(), 4 * 16);
    assert!(w.iter().all(|r| r[0].starts_with("train-") && r[2].is_empty()));
    assert!(w.iter().all(|r| r[5].parse::<f64>().map(|x| (-1.0..=1.0).contains(&x)).unwrap_or(false)));
    for split in ["dev", "test"] {
        let out = tmp.path().join(format!("{split}_standard.tsv"));
        ok(&prep("metakd_dev", &senti.join(format!("{split}.tsv")), &out, &[]));
        assert_eq!(rows(&out).len(), 4 * 2);
    }
}

#[test]
fn example_script_runs_on_a_slice_of_the_shared_data() {
    let Some(shared) = common::shared_dir("metakd_prep.sh") else { return };
    let work = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new("bash")
        .arg(root.join("examples/metakd_prep.sh"))
        .env("EASYNLP", env!("CARGO_BIN_EXE_easynlp"))
        .env("EASYNLP_SHARED", &shared)
        .env("WORK", work.path())
        .env("ROWS_PER_DOMAIN", "6")
        .output()
        .unwrap();
    let log = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "metakd_prep.sh failed:\n{log}");
    let senti = work.path().join("data/SENTI");
    assert_eq!(rows(&senti.join("train_with_weights.tsv")).len(), 24, "{log}");
    assert_eq!(rows(&senti.join("dev_standard.tsv")).len(), 24);
    assert_eq!(rows(&senti.join("test_standard.tsv")).len(), 24);
}
