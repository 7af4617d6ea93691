//! A training run's log folder, `<checkpoint_dir>/log/`: TensorBoard event files with EasyNLP's
//! content and `metrics.jsonl`, their machine-readable twin; and the reader of both back.
//!
//! EasyNLP's content: the texts `config/training` and `config/model_config` at step 0, the
//! scalars `losses/loss` and `learning_rate/lr` at every optimizer step, `eval/<metric>` at every
//! evaluation. Here `losses/loss` is the running mean since the start of the epoch, the value the
//! log line prints (EasyNLP plots the last micro-batch's loss), and the terms of a loss that has
//! them follow as `losses/<term>` (KD: `kd_loss`, `ce_loss`; Meta-KD: its parts).
//!
//! `metrics.jsonl` holds one JSON object per line: `{"event": "start"}` when a process starts
//! training into the folder, `{"event": "train"}` per log line, `{"event": "eval"}` per evaluation.
//!
//! Appending survives the checkpoint directory's swaps ([`crate::persist::DirTxn`]): every version
//! hard-links the files of the one before, so the open files stay the files of the directory.
//! A resumed run appends a new event file and a start record; TensorBoard (through the
//! `SessionLog.START` event, at the first step the run logs) and [`read_records`] then forget
//! what an interrupted process logged after the state it resumed from, so each step appears once.

use crate::metrics::EvalReport;
use crate::tensorboard::EventWriter;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The log folder inside a checkpoint directory.
pub const LOG_DIR: &str = "log";
/// The JSON-lines file in [`LOG_DIR`].
pub const METRICS_FILE: &str = "metrics.jsonl";

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum Record {
    /// A process started training at `step` optimizer steps done (`resumed`: from a saved state).
    Start {
        /// Steps done before this process.
        step: usize,
        /// Whether the run continues a saved state.
        resumed: bool,
        /// Seconds since the epoch.
        wall_time: f64,
    },
    /// A log line.
    Train(TrainRecord),
    /// An evaluation.
    Eval(EvalRecord),
}

impl Record {
    /// The optimizer step of the record.
    pub fn step(&self) -> usize {
        match self {
            Record::Start { step, .. } => *step,
            Record::Train(t) => t.step,
            Record::Eval(e) => e.step,
        }
    }
}

/// What a log line says.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainRecord {
    /// Optimizer steps done.
    pub step: usize,
    /// The epoch (1-based) of the step.
    pub epoch: usize,
    /// Optimizer steps of the run.
    pub total_steps: usize,
    /// The learning rate of the step.
    pub lr: f64,
    /// The mean loss since the start of the epoch.
    pub loss: f64,
    /// The loss's terms, means since the start of the epoch (`kd_loss`, `ce_loss`, ...).
    #[serde(flatten)]
    pub parts: BTreeMap<String, f64>,
    /// Training rows per second since the previous log line.
    pub examples_per_sec: f64,
    /// Seconds since the epoch.
    pub wall_time: f64,
}

/// What an evaluation found.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    /// Optimizer steps done.
    pub step: usize,
    /// The epoch (1-based) of the step.
    pub epoch: usize,
    /// The metrics (`accuracy`, `f1` or `macro_f1` / `micro_f1`, `eval_loss`, `rows`).
    pub metrics: serde_json::Value,
    /// Row counts by `[label][prediction]`.
    pub confusion: Vec<Vec<usize>>,
    /// Whether this evaluation made the best model so far.
    pub best: bool,
    /// Seconds since the epoch.
    pub wall_time: f64,
}

/// The open log folder of a running training.
pub struct RunLog {
    events: EventWriter,
    jsonl: File,
    jsonl_path: PathBuf,
}

impl RunLog {
    /// Opens `<dir>/log/` for a process that starts training with `start_step` optimizer steps
    /// done (`resumed`: from a saved state): a new event file, `metrics.jsonl` appended to (a line
    /// torn by a killed process is cut off), the start marks, and, for a run from the start, the
    /// `texts` (`(tag, text)`) at step 0.
    pub fn open(dir: &Path, start_step: usize, resumed: bool, texts: &[(&str, String)]) -> Result<Self> {
        let log = dir.join(LOG_DIR);
        std::fs::create_dir_all(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let jsonl_path = log.join(METRICS_FILE);
        let jsonl = open_appending(&jsonl_path)?;
        let mut events = EventWriter::create(&log)?;
        // TensorBoard keeps what earlier files logged before this step and forgets the rest.
        events.session_start(if resumed { start_step + 1 } else { 0 })?;
        if !resumed {
            for (tag, text) in texts {
                events.text(0, tag, text)?;
            }
        }
        let mut run = RunLog { events, jsonl, jsonl_path };
        run.append(&Record::Start { step: start_step, resumed, wall_time: now() })?;
        Ok(run)
    }

    /// The scalars of optimizer step `step`: `losses/<name>` for each `(name, value)` of
    /// `losses` (the first is `loss`) and `learning_rate/lr`.
    pub fn step(&mut self, step: usize, lr: f64, losses: &[(&str, f64)]) -> Result<()> {
        let tags: Vec<String> = losses.iter().map(|(n, _)| format!("losses/{n}")).collect();
        let mut values: Vec<(&str, f64)> = tags.iter().map(String::as_str).zip(losses.iter().map(|l| l.1)).collect();
        values.push(("learning_rate/lr", lr));
        self.events.scalars(step, &values)
    }

    /// A log line's record.
    pub fn train_line(&mut self, record: TrainRecord) -> Result<()> {
        self.append(&Record::Train(record))
    }

    /// An evaluation after `step` steps, in epoch `epoch` (1-based): `eval/<metric>` scalars and
    /// its record.
    pub fn evaluation(&mut self, step: usize, epoch: usize, report: &EvalReport, best: bool) -> Result<()> {
        let tags: Vec<(String, f64)> =
            report.named_metrics().into_iter().map(|(n, v)| (format!("eval/{n}"), v)).collect();
        let values: Vec<(&str, f64)> = tags.iter().map(|(t, v)| (t.as_str(), *v)).collect();
        self.events.scalars(step, &values)?;
        self.append(&Record::Eval(EvalRecord {
            step,
            epoch,
            metrics: report.to_json(),
            confusion: report.confusion.clone(),
            best,
            wall_time: now(),
        }))
    }

    /// Makes what was logged durable (at save points).
    pub fn sync(&self) -> Result<()> {
        self.events.sync()?;
        self.jsonl.sync_data().with_context(|| format!("cannot flush {}", self.jsonl_path.display()))
    }

    fn append(&mut self, record: &Record) -> Result<()> {
        let mut line = serde_json::to_string(record)?;
        line.push('\n');
        // One write per line: a kill leaves at most the last line torn.
        self.jsonl.write_all(line.as_bytes()).with_context(|| format!("cannot write {}", self.jsonl_path.display()))
    }
}

/// Opens `path` for appending, cutting off a last line without its newline.
fn open_appending(path: &Path) -> Result<File> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).with_context(|| format!("cannot read {}", path.display()))?;
    if !bytes.is_empty() && !bytes.ends_with(b"\n") {
        let keep = bytes.iter().rposition(|&b| b == b'\n').map(|i| i + 1).unwrap_or(0);
        file.set_len(keep as u64).with_context(|| format!("cannot repair {}", path.display()))?;
        file.seek(SeekFrom::End(0))?;
    }
    Ok(file)
}

/// The records of a checkpoint directory's `log/metrics.jsonl`, as the run's history: what a
/// process logged after the state a later process resumed from (or anything before a run that
/// started over) is dropped. A directory without the file has no records.
pub fn read_records(dir: &Path) -> Result<Vec<Record>> {
    let path = dir.join(LOG_DIR).join(METRICS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    // A last line without its newline was torn by a killed process (the next run cuts it off).
    let whole = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    let mut out: Vec<Record> = Vec::new();
    for (i, line) in whole.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let record: Record = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not a metrics record", path.display(), i + 1))?;
        if let Record::Start { step, resumed, .. } = &record {
            let keep_below = if *resumed { step + 1 } else { 0 };
            out.retain(|r| r.step() < keep_below);
        }
        out.push(record);
    }
    Ok(out)
}

/// Seconds since the epoch.
pub fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::persist::DirTxn;

    fn train(step: usize, loss: f64) -> TrainRecord {
        TrainRecord {
            step,
            epoch: 1,
            total_steps: 10,
            lr: 1e-5,
            loss,
            parts: BTreeMap::from([("kd_loss".to_string(), loss / 2.0)]),
            examples_per_sec: 3.0,
            wall_time: 0.0,
        }
    }

    #[test]
    fn the_log_survives_directory_swaps_and_a_resume_replaces_the_orphans() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ck");
        DirTxn::begin(&dir).unwrap().commit().unwrap();
        let mut log = RunLog::open(&dir, 0, false, &[("config/training", "{}".into())]).unwrap();
        for step in 1..=4 {
            log.train_line(train(step, step as f64)).unwrap();
            // A save point swaps in a new version of the whole directory.
            let txn = DirTxn::begin(&dir).unwrap();
            txn.write("latest/state", step.to_string().as_bytes()).unwrap();
            txn.commit().unwrap();
        }
        let report = EvalReport::new(&[1, 0], &[1, 1], 2, 1.0);
        log.evaluation(4, 1, &report, true).unwrap();
        // A killed process: a torn last line.
        let path = dir.join(LOG_DIR).join(METRICS_FILE);
        drop(log);
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"event\":\"tra").unwrap();
        assert_eq!(read_records(&dir).unwrap().len(), 6, "the torn line is not a record");
        // Resumed from the state saved at step 2: steps 3 and 4 are logged again.
        let mut log = RunLog::open(&dir, 2, true, &[]).unwrap();
        log.train_line(train(3, 30.0)).unwrap();
        let records = read_records(&dir).unwrap();
        let steps: Vec<(usize, bool)> = records.iter().map(|r| (r.step(), matches!(r, Record::Start { .. }))).collect();
        assert_eq!(steps, [(0, true), (1, false), (2, false), (2, true), (3, false)]);
        let Record::Train(t) = &records[4] else { panic!() };
        assert_eq!((t.loss, t.parts["kd_loss"]), (30.0, 15.0));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.lines().all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()), "{text}");
        let events = std::fs::read_dir(dir.join(LOG_DIR)).unwrap().count();
        assert_eq!(events, 3, "two event files and metrics.jsonl");
        // A run that starts over forgets everything before it.
        drop(log);
        RunLog::open(&dir, 0, false, &[]).unwrap();
        assert_eq!(read_records(&dir).unwrap().len(), 1);
        // A broken line in the middle is an error naming the file and the line.
        std::fs::write(&path, "{\"event\":\"start\",\"step\":0,\"resumed\":false,\"wall_time\":0}\nnope\n").unwrap();
        let e = read_records(&dir).unwrap_err().to_string();
        assert!(e.contains("metrics.jsonl:2: not a metrics record"), "{e}");
    }
}
