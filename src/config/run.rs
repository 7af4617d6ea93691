//! The validated run configuration built from the flags and `user_defined_parameters`.

use super::args::{Args, Mode};
use super::kd::{KdSettings, TeacherSource};
use super::metakd::{parse_domain_label, MetaStudentSettings, MetaTeacherSettings};
use super::udp::UserParams;
pub use crate::data::encode::TextColumns;
use crate::data::schema::{Column, ColumnType, Schema};
use crate::data::table::{check_table_path, first_line};
use crate::ops::Precision;
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// The applications this program runs.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum App {
    /// Single-sentence (or pair) classification.
    TextClassify,
    /// Single-tower sentence-pair matching (same model as classification).
    TextMatch,
}

/// The layout of the tables, decided once from the schema (here, and nowhere else).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum TableKind {
    /// Any other schema.
    Plain,
    /// The Meta-KD layout: a schema with a `domain` column (the tables EasyNLP's Meta-KD scripts
    /// write). Its header line is skipped when it spells the schema's column names, and evaluate
    /// reports every domain and their average (`genre=` picks one).
    MetaKd {
        /// Schema index of the `domain` column.
        domain_column: usize,
    },
}

/// Everything a run needs, checked up front.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// The flags as given.
    pub args: Args,
    /// The application.
    pub app: App,
    /// Tables of `--tables`, in order.
    pub tables: Vec<PathBuf>,
    /// `--input_schema` of the tables (without a trailing KD logits column).
    pub schema: Schema,
    /// The layout of the tables.
    pub table_kind: TableKind,
    /// The KD logits column split off the end of `--input_schema`, if any.
    pub logits_column: Option<Column>,
    /// Vanilla KD settings, when `enable_distillation=True`.
    pub kd: Option<KdSettings>,
    /// Meta-KD meta-teacher settings, when training with `use_sample_weights`/`use_domain_loss`.
    pub meta_teacher: Option<MetaTeacherSettings>,
    /// Meta-KD student settings, when training with `distill_stage`.
    pub meta_student: Option<MetaStudentSettings>,
    /// Column positions.
    pub columns: TextColumns,
    /// `--user_defined_parameters`.
    pub udp: UserParams,
    /// The run's seed.
    pub seed: u64,
    /// The precision of the encoder's matrix products (`--precision`, `--use_amp`).
    pub precision: Precision,
}

/// The precision that `--precision` and `--use_amp` select for `mode`.
fn precision_of(args: &Args) -> Result<Precision> {
    let named = args.precision.as_deref().map(|p| Precision::parse(p).expect("clap checked the value"));
    let precision = match (named, args.use_amp) {
        (Some(p), true) if p != Precision::Bf16 => {
            bail!("--use_amp means --precision=bf16; it conflicts with --precision={}", p.name())
        }
        (Some(p), _) => p,
        (None, true) => Precision::Bf16,
        (None, false) => Precision::F32,
    };
    if precision == Precision::Int8 && args.mode == Mode::Train {
        bail!("--precision=int8 is for --mode=evaluate and --mode=predict; train with --precision=bf16 (or --use_amp) or f32");
    }
    Ok(precision)
}

impl RunConfig {
    /// Validates the flags for the chosen mode (train, evaluate or predict).
    pub fn from_args(args: Args) -> Result<Self> {
        if args.mode.is_metakd_prep() {
            bail!("--mode={} is a Meta-KD data-preparation step, not a text-app mode", args.mode.name());
        }
        let app = match args.app_name.as_str() {
            "text_classify" => App::TextClassify,
            "text_match" => App::TextMatch,
            other => bail!("--app_name={other}: supported apps are text_classify and text_match (single tower)"),
        };
        let udp = UserParams::parse(args.user_defined_parameters.as_deref())?;
        let precision = precision_of(&args)?;
        if args.micro_batch_size == 0 {
            bail!("--micro_batch_size must be at least 1");
        }
        if args.sequence_length < 2 {
            bail!("--sequence_length={} is too short: [CLS] and [SEP] alone take 2 tokens", args.sequence_length);
        }
        if args.gradient_accumulation_steps == 0 {
            bail!("--gradient_accumulation_steps must be at least 1");
        }
        if args.mode == Mode::Train {
            if !(args.epoch_num > 0.0 && args.epoch_num.is_finite()) {
                bail!("--epoch_num must be positive");
            }
            if !(args.learning_rate > 0.0 && args.learning_rate.is_finite()) {
                bail!("--learning_rate must be positive");
            }
            if !(0.0..1.0).contains(&args.warmup_proportion) {
                bail!("--warmup_proportion must be in [0, 1)");
            }
            if args.save_checkpoint_steps == Some(0) {
                bail!("--save_checkpoint_steps must be at least 1");
            }
        }
        let Some(tables) = args.tables.as_deref().filter(|t| !t.is_empty()) else {
            bail!("--tables is required");
        };
        let tables: Vec<PathBuf> = tables.split(',').map(PathBuf::from).collect();
        for t in &tables {
            check_table_path(t, "--tables")?;
        }
        if args.checkpoint_dir.is_none() {
            bail!(
                "--checkpoint_dir is required (train: where the model is saved; evaluate/predict: the model to load)"
            );
        }
        if args.mode == Mode::Predict && args.outputs.is_none() {
            bail!("--outputs is required in predict mode");
        }
        let Some(schema_text) = args.input_schema.as_deref() else {
            bail!("--input_schema is required, e.g. --input_schema=sent:str:1,label:str:1");
        };
        let mut schema = Schema::parse(schema_text)?;
        let kd = KdSettings::from_udp(&udp)?;
        let logits_column = split_logits_column(&mut schema, kd.as_ref())?;
        let table_kind = match schema.columns.iter().position(|c| c.name == "domain") {
            Some(domain_column) => TableKind::MetaKd { domain_column },
            None => TableKind::Plain,
        };
        let Some(first) = args.first_sequence.as_deref() else {
            bail!("--first_sequence is required: the column that holds the text");
        };
        let first = schema.index_of(first, "--first_sequence")?;
        let second = args.second_sequence.as_deref().map(|s| schema.index_of(s, "--second_sequence")).transpose()?;
        if second.is_some() && args.sequence_length < 3 {
            bail!(
                "--sequence_length={} is too short for sentence pairs: [CLS] and two [SEP] alone take 3 tokens",
                args.sequence_length
            );
        }
        let label = match (args.mode, args.label_name.as_deref()) {
            (Mode::Predict, _) => None,
            (_, Some(l)) => Some(schema.index_of(l, "--label_name")?),
            (_, None) => bail!("--label_name is required in {:?} mode", args.mode),
        };
        if let (Some(stage), false) = (udp.get("distill_stage"), args.mode == Mode::Train) {
            bail!(
                "--user_defined_parameters: distill_stage={stage} trains a Meta-KD student (--mode=train); \
                 evaluate a student with its checkpoint and genre=<domain>"
            );
        }
        let meta_student = if args.mode == Mode::Train { MetaStudentSettings::from_udp(&udp, &schema)? } else { None };
        let meta_teacher = if args.mode == Mode::Train && meta_student.is_none() {
            MetaTeacherSettings::from_udp(&udp, &schema)?
        } else {
            None
        };
        // A drawn seed fits --random_seed, so that the run can be repeated with it.
        let seed = if args.random_seed > 0 {
            args.random_seed as u64
        } else {
            1 + crate::rng::Rng::from_entropy().next_u64() % (i32::MAX as u64)
        };
        Ok(RunConfig {
            app,
            tables,
            schema,
            table_kind,
            logits_column,
            kd,
            meta_teacher,
            meta_student,
            columns: TextColumns { first, second, label },
            udp,
            seed,
            precision,
            args,
        })
    }

    /// The checkpoint directory.
    pub fn checkpoint_dir(&self) -> PathBuf {
        PathBuf::from(self.args.checkpoint_dir.as_deref().unwrap_or("."))
    }

    /// The table read by evaluate and predict (and used for validation in train).
    pub fn last_table(&self) -> &PathBuf {
        self.tables.last().expect("at least one table")
    }

    /// Whether to skip the first line of `path`: with `--skip_first_line`, or, for
    /// [`TableKind::MetaKd`] tables, when that line spells the schema's column names (EasyNLP's
    /// Meta-KD scripts always skip the header of these tables).
    pub fn skip_header(&self, path: &Path) -> Result<bool> {
        if self.args.skip_first_line {
            return Ok(true);
        }
        if self.table_kind == TableKind::Plain {
            return Ok(false);
        }
        Ok(first_line(path)?.split('\t').eq(self.schema.names()))
    }
}

/// In KD, the logits column named by `logits_name` ends `--input_schema` (as in EasyNLP) and comes
/// from the logits file, not from the tables: split it off.
fn split_logits_column(schema: &mut Schema, kd: Option<&KdSettings>) -> Result<Option<Column>> {
    let Some(kd) = kd else { return Ok(None) };
    let Some(name) = kd.logits_name.as_deref() else { return Ok(None) };
    let last = schema.columns.last().expect("a schema has at least one column");
    if last.name != name {
        if matches!(kd.source, TeacherSource::File { .. }) || schema.columns.iter().any(|c| c.name == name) {
            bail!("--input_schema: the logits column `{name}` (logits_name) must be the last column, e.g. ...,{name}:float:2");
        }
        return Ok(None);
    }
    if last.kind != ColumnType::Float {
        bail!("--input_schema: the logits column `{name}` must be float:N (N = number of labels)");
    }
    if schema.columns.len() < 2 {
        bail!("--input_schema: besides the logits column `{name}` the tables need their own columns");
    }
    Ok(schema.columns.pop())
}

/// Everything a Meta-KD data-preparation step needs, checked up front.
#[derive(Clone, Debug)]
pub struct PrepConfig {
    /// The flags as given.
    pub args: Args,
    /// `--tables`: the input folder (metakd_split) or table.
    pub input: PathBuf,
    /// `--outputs`: the output folder (metakd_split) or table.
    pub output: PathBuf,
    /// `domain_label`, in domain-id order (default `books,dvd,electronics,kitchen`).
    pub domains: Vec<String>,
    /// `--user_defined_parameters`.
    pub udp: UserParams,
    /// The run's seed (used by metakd_split).
    pub seed: u64,
}

impl PrepConfig {
    /// Validates the flags of a Meta-KD preparation step.
    pub fn from_args(args: Args) -> Result<Self> {
        let mode = args.mode.name();
        let udp = UserParams::parse(args.user_defined_parameters.as_deref())?;
        let allowed: &[&str] = match args.mode {
            Mode::MetakdEmbeddings => &["domain_label", "pretrain_model_name_or_path"],
            _ => &["domain_label"],
        };
        let known = super::udp::KNOWN_KEYS.iter().map(|(k, _)| *k);
        if let Some(key) = known.filter(|k| udp.get(k).is_some()).find(|k| !allowed.contains(k)) {
            bail!(
                "--user_defined_parameters: `{key}` has no meaning in --mode={mode} (it takes: {})",
                allowed.join(", ")
            );
        }
        let domains = parse_domain_label(udp.get("domain_label"))?;
        let Some(tables) = args.tables.as_deref().filter(|t| !t.is_empty()) else {
            bail!("--tables is required in --mode={mode}");
        };
        if tables.contains(',') {
            bail!("--tables={tables}: --mode={mode} reads one input, not a list");
        }
        let input = PathBuf::from(tables);
        let Some(outputs) = args.outputs.as_deref().filter(|t| !t.is_empty()) else {
            bail!("--outputs is required in --mode={mode}");
        };
        let output = PathBuf::from(outputs);
        if args.mode == Mode::MetakdSplit {
            if !input.is_dir() {
                bail!(
                    "--tables: `{}` is not a folder (metakd_split reads a folder of per-domain folders)",
                    input.display()
                );
            }
            if output.exists() && !output.is_dir() {
                bail!("--outputs: `{}` exists and is not a folder", output.display());
            }
        } else {
            check_table_path(&input, "--tables")?;
            if output.is_dir() {
                bail!("--outputs: `{}` is a folder; --mode={mode} writes a table file", output.display());
            }
            if same_file(&input, &output) {
                bail!("--outputs: `{}` is the input table; write to another file", output.display());
            }
        }
        if args.mode == Mode::MetakdEmbeddings {
            udp.require("pretrain_model_name_or_path")?;
            if args.micro_batch_size == 0 {
                bail!("--micro_batch_size must be at least 1");
            }
            if args.sequence_length < 2 {
                bail!("--sequence_length={} is too short: [CLS] and [SEP] alone take 2 tokens", args.sequence_length);
            }
            if args.use_amp || args.precision.as_deref().is_some_and(|p| p != "f32") {
                bail!("--use_amp / --precision: --mode=metakd_embeddings runs in f32; lower precisions apply to train, evaluate and predict");
            }
        }
        // A drawn seed fits --random_seed, so that the run can be repeated with it.
        let seed = if args.random_seed > 0 {
            args.random_seed as u64
        } else {
            1 + crate::rng::Rng::from_entropy().next_u64() % (i32::MAX as u64)
        };
        Ok(PrepConfig { args, input, output, domains, udp, seed })
    }
}

/// Whether two paths name the same existing file.
fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}
