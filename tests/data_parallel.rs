//! Data parallelism in any build: the sharding of global batches, the single-process world, the
//! worker flags' checks (what is refused without MPI and how), and that one worker is unchanged
//! by the machinery. The MPI runs themselves are in `tests/distributed.rs` (`--features mpi`).

mod common;

use clap::Parser;
use common::{easynlp_owned, sentiment_train_args, tiny_bert};
use easynlp::config::args::Args;
use easynlp::config::workers::{check_world, plan, threads_per_rank, Workers};
use easynlp::dist::World;
use easynlp::train::sync::{shard, shard_len};

fn args(extra: &[&str]) -> Args {
    let mut argv = vec!["easynlp", "--mode=train"];
    argv.extend_from_slice(extra);
    Args::try_parse_from(argv).unwrap()
}

fn err(r: anyhow::Result<Workers>) -> String {
    format!("{:#}", r.unwrap_err())
}

/// N workers with micro-batches of b see, between them, exactly the global batch of one worker
/// with micro-batches of N x b: strided shares, disjoint, covering it, rank 0 never empty.
#[test]
fn global_batches_split_into_strided_shares() {
    for n in [1usize, 2, 3, 4, 8] {
        for len in [1usize, 5, 16, 17, 31] {
            let batch: Vec<usize> = (100..100 + len).collect();
            let shares: Vec<Vec<usize>> = (0..n).map(|r| shard(&batch, r, n)).collect();
            let mut all = shares.concat();
            all.sort();
            assert_eq!(all, batch, "n={n} len={len}");
            assert!(!shares[0].is_empty());
            for (r, s) in shares.iter().enumerate() {
                assert_eq!(s.len(), shard_len(len, r, n));
                assert!(s.iter().enumerate().all(|(k, &row)| row == batch[r + k * n]));
                // Equal shares up to one row.
                assert!(s.len() + 1 >= len / n && s.len() <= len.div_ceil(n));
            }
        }
    }
}

#[test]
fn one_process_is_a_world_of_one() {
    let w = easynlp::dist::world();
    assert_eq!(*w, World::single());
    let mut v = [1f32, 2.0];
    w.all_reduce_sum_f32(&mut v);
    assert_eq!(v, [1.0, 2.0]);
    check_world(&args(&[]), w).unwrap();
    check_world(&args(&["--worker_gpu=1", "--local_rank=0"]), w).unwrap();
    let e = check_world(&args(&["--worker_gpu=2"]), w).unwrap_err().to_string();
    assert!(e.contains("= 2 workers, but MPI started 1"), "{e}");
    assert_eq!(threads_per_rank(16, 2), 8);
    assert_eq!(threads_per_rank(2, 4), 1);
}

#[test]
fn worker_flags_are_checked_never_ignored() {
    // One worker: the defaults, 1, and a local rank of 0.
    assert_eq!(plan(&args(&[]), None, false).unwrap(), Workers::Single);
    assert_eq!(plan(&args(&["--worker_gpu=1", "--local_rank=0"]), None, false).unwrap(), Workers::Single);
    // Without MPI: several workers, machines, a local rank or a backend are refused with the way out.
    let e = err(plan(&args(&["--worker_gpu=2"]), None, false));
    assert!(e.contains("--features mpi") && e.contains("scripts/install_mpi.sh"), "{e}");
    let e = err(plan(&args(&["--worker_count=2"]), None, false));
    assert!(e.contains("--features mpi"), "{e}");
    let e = err(plan(&args(&["--local_rank=1"]), None, false));
    assert!(e.contains("--local_rank=1"), "{e}");
    let e = err(plan(&args(&["--distributed_backend=mpi"]), None, false));
    assert!(e.contains("no MPI"), "{e}");
    let e = err(plan(&args(&["--distributed_backend=gloo"]), None, true));
    assert!(e.contains("--distributed_backend=mpi"), "{e}");
    if !easynlp::dist::NCCL_BUILD {
        let e = err(plan(&args(&["--distributed_backend=nccl"]), None, true));
        assert!(e.contains("no NCCL") && e.contains("--features nccl"), "{e}");
    }
    let e = err(plan(&args(&["--worker_gpu=0"]), None, true));
    assert!(e.contains("--worker_gpu=0"), "{e}");
    // Started by mpirun as one of several without MPI built in: refused, they would race.
    let e = err(plan(&args(&[]), Some(2), false));
    assert!(e.contains("race") && e.contains("--features mpi"), "{e}");
    // With MPI: N workers on this machine are started through mpirun; under mpirun, join.
    assert_eq!(plan(&args(&["--worker_gpu=2"]), None, true).unwrap(), Workers::Launch { np: 2 });
    assert_eq!(plan(&args(&["--worker_gpu=2"]), Some(2), true).unwrap(), Workers::Join);
    assert_eq!(plan(&args(&["--distributed_backend=mpi"]), Some(2), true).unwrap(), Workers::Join);
    let e = err(plan(&args(&["--worker_count=2"]), None, true));
    assert!(e.contains("mpirun -H"), "{e}");
}

/// The binary itself, without the feature: `--worker_gpu=2` fails before any work, saying how to
/// build with MPI, and writes nothing.
#[cfg(not(feature = "mpi"))]
#[test]
fn several_workers_need_the_mpi_build() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_bert(&tmp.path().join("model"), 1, true);
    let ckpt = tmp.path().join("ckpt");
    let mut a = sentiment_train_args(&model, &ckpt);
    a.push("--worker_gpu=2".into());
    common::assert_failed_with(&easynlp_owned(&a), &["--worker_gpu=2", "--features mpi", "install_mpi.sh"]);
    assert!(!ckpt.exists());
}

/// One worker trains as before the data-parallel machinery: twice the same run, the same weights
/// (masks keyed by row ids, the loss reduced over a world of one).
#[test]
fn one_worker_runs_are_reproducible() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_bert(&tmp.path().join("model"), 1, true);
    let run = |name: &str| {
        let ckpt = tmp.path().join(name);
        let out = easynlp_owned(&sentiment_train_args(&model, &ckpt));
        assert!(out.status.success(), "{}", common::stderr(&out));
        std::fs::read(ckpt.join("model.safetensors")).unwrap()
    };
    assert_eq!(run("a"), run("b"));
}
