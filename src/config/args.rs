//! The command-line flags, with EasyNLP's names, aliases and defaults (spec §1.1).

pub use crate::train::optimizer::OptimizerKind;
use clap::{ArgAction, Parser, ValueEnum};

/// Which pipeline runs.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
pub enum Mode {
    /// Fine-tune (or distil) a model on `--tables` and save it to `--checkpoint_dir`.
    Train,
    /// Score a checkpoint on the last table of `--tables`.
    Evaluate,
    /// Write model outputs for every row of the last table of `--tables` to `--outputs`.
    Predict,
    /// Meta-KD step 1: split the per-domain reviews in the folder `--tables` into
    /// `--outputs`/{train,dev,test}.tsv (columns review, domain, sentiment), stratified and seeded.
    #[value(name = "metakd_split")]
    MetakdSplit,
    /// Meta-KD step 2: mean-pooled embeddings of the pretrained encoder for each review of `--tables`.
    #[value(name = "metakd_embeddings")]
    MetakdEmbeddings,
    /// Meta-KD step 3: per-instance prototype weights from an embeddings table.
    #[value(name = "metakd_weights")]
    MetakdWeights,
    /// Meta-KD step 4: a dev/test split in the Meta-KD table layout, with weight 0.
    #[value(name = "metakd_dev")]
    MetakdDev,
    /// Draw the logs of training runs (`--checkpoint_dir=a,b,c`) into `--outputs`/report.svg,
    /// report.png and report.md: loss, learning rate and metrics against step, confusion matrices,
    /// a KD temperature x alpha heatmap.
    Report,
}

impl Mode {
    /// Whether this is one of the Meta-KD data-preparation steps.
    pub fn is_metakd_prep(self) -> bool {
        matches!(self, Mode::MetakdSplit | Mode::MetakdEmbeddings | Mode::MetakdWeights | Mode::MetakdDev)
    }

    /// The name as given to `--mode`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Train => "train",
            Mode::Evaluate => "evaluate",
            Mode::Predict => "predict",
            Mode::MetakdSplit => "metakd_split",
            Mode::MetakdEmbeddings => "metakd_embeddings",
            Mode::MetakdWeights => "metakd_weights",
            Mode::MetakdDev => "metakd_dev",
            Mode::Report => "report",
        }
    }
}

/// `easynlp`: fine-tune, distil, evaluate and run BERT text classifiers, with Alibaba EasyNLP's flags.
///
/// Commands from EasyNLP's tutorials run unchanged. Differences from EasyNLP are listed in the README.
#[derive(Parser, Debug, Clone, serde::Serialize)]
#[command(name = "easynlp", version, about, long_about = None, max_term_width = 110, args_override_self = true)]
pub struct Args {
    /// Pipeline to run: train, evaluate or predict; or a Meta-KD data-preparation step:
    /// metakd_split, metakd_embeddings, metakd_weights, metakd_dev; or report (plots of training runs).
    #[arg(long, value_enum, default_value = "train")]
    pub mode: Mode,

    /// Application: text_classify or text_match (single tower).
    #[arg(long = "app_name", default_value = "text_classify")]
    pub app_name: String,

    /// Comma-separated tables. Train: the first is the training table, the last the validation table
    /// (one table: both). Evaluate/predict: the last one is read. Meta-KD steps: one input (metakd_split:
    /// a folder of per-domain review folders).
    #[arg(long)]
    pub tables: Option<String>,

    /// Predict: the output file (written atomically). Evaluate: where the metrics JSON goes. Meta-KD
    /// steps: the output table (metakd_split: the output folder). Report: the output folder.
    #[arg(long)]
    pub outputs: Option<String>,

    /// Columns of the tables, `name:type:len,...`, type str/int/float (a float:N column holds N
    /// comma-separated numbers).
    #[arg(long = "input_schema")]
    pub input_schema: Option<String>,

    /// Column holding the first text.
    #[arg(long = "first_sequence")]
    pub first_sequence: Option<String>,

    /// Column holding the second text of a pair (optional).
    #[arg(long = "second_sequence")]
    pub second_sequence: Option<String>,

    /// Column holding the label.
    #[arg(long = "label_name")]
    pub label_name: Option<String>,

    /// Labels in class-index order: a comma list, or a file with one label per line. Default `0,1`.
    #[arg(long = "label_enumerate_values")]
    pub label_enumerate_values: Option<String>,

    /// Predict: output columns, any of predictions,probabilities,logits,output,id.
    #[arg(long = "output_schema", default_value = "")]
    pub output_schema: String,

    /// Predict: input columns appended after the output columns.
    #[arg(long = "append_cols")]
    pub append_cols: Option<String>,

    /// Train: the output directory (with TensorBoard logs and metrics.jsonl in its log/). Evaluate/predict:
    /// the checkpoint to load. Report: comma-separated checkpoint directories of training runs.
    #[arg(long = "checkpoint_dir", visible_alias = "checkpoint_path")]
    pub checkpoint_dir: Option<String>,

    /// Maximum tokens per row (truncation, longest_first); batches are padded to their longest row.
    #[arg(long = "sequence_length", default_value_t = 16)]
    pub sequence_length: usize,

    /// Rows per batch, for training, evaluation and prediction.
    #[arg(long = "micro_batch_size", visible_alias = "train_batch_size", default_value_t = 2)]
    pub micro_batch_size: usize,

    /// Training epochs.
    #[arg(long = "epoch_num", default_value_t = 3.0)]
    pub epoch_num: f64,

    /// Peak learning rate.
    #[arg(long = "learning_rate", default_value_t = 5e-5)]
    pub learning_rate: f64,

    /// Weight decay (not applied to biases and LayerNorm weights).
    #[arg(long = "weight_decay", visible_alias = "wd", default_value_t = 1e-4)]
    pub weight_decay: f64,

    /// Micro-batches per optimizer step; the loss is averaged over them.
    #[arg(long = "gradient_accumulation_steps", default_value_t = 1)]
    pub gradient_accumulation_steps: usize,

    /// Seed for initialisation, shuffling and dropout (0 or less: seed from the clock).
    #[arg(long = "random_seed", default_value_t = 1234, allow_negative_numbers = true)]
    pub random_seed: i64,

    /// Evaluate and keep the best checkpoint every N optimizer steps (absent: at each epoch end).
    #[arg(long = "save_checkpoint_steps")]
    pub save_checkpoint_steps: Option<usize>,

    /// Workers per machine (GPUs in a CUDA build, else CPU workers): N > 1 starts N data-parallel workers through mpirun (`--features mpi`). -1: one, or what mpirun started.
    #[arg(long = "worker_gpu", default_value_t = -1, allow_negative_numbers = true)]
    pub worker_gpu: i64,

    /// Number of machines (several: start the workers with `mpirun -H ...`, `--features mpi`).
    #[arg(long = "worker_count", default_value_t = 1)]
    pub worker_count: usize,

    /// Whitespace-separated key=value settings (pretrain_model_name_or_path, distillation keys, ...).
    #[arg(long = "user_defined_parameters")]
    pub user_defined_parameters: Option<String>,

    /// Skip the first line (a header) of every table read.
    #[arg(long = "skip_first_line", action = ArgAction::SetTrue)]
    pub skip_first_line: bool,

    /// Threads for tokenization and the compute kernels (default: all cores).
    #[arg(long = "data_threads")]
    pub data_threads: Option<usize>,

    /// Model zoo folder for pretrain_model_name_or_path names (else $EASYNLP_MODELZOO, else
    /// ~/.easynlp/modelzoo).
    #[arg(long = "modelzoo_base_dir", default_value = "")]
    pub modelzoo_base_dir: String,

    /// Log a training line every N optimizer steps.
    #[arg(long = "logging_steps", default_value_t = 100)]
    pub logging_steps: usize,

    /// Fraction of the optimizer steps with a linear warmup.
    #[arg(long = "warmup_proportion", default_value_t = 0.1)]
    pub warmup_proportion: f64,

    /// Optimizer.
    #[arg(long = "optimizer_type", visible_alias = "optimizer", value_enum, default_value = "AdamW")]
    pub optimizer_type: OptimizerKind,

    /// Clip the global gradient norm to this value (0 or less: no clipping).
    #[arg(long = "max_grad_norm", visible_alias = "mn", default_value_t = 1.0)]
    pub max_grad_norm: f64,

    /// Also keep a copy of the model at every evaluation (model_step_N.safetensors).
    #[arg(long = "save_all_checkpoints", action = ArgAction::SetTrue)]
    pub save_all_checkpoints: bool,

    /// Resume training from a checkpoint directory written by this program (weights, optimizer, step).
    #[arg(long = "resume_from_checkpoint")]
    pub resume_from_checkpoint: Option<String>,

    /// Lower-case the text before tokenization (uncased models already do).
    #[arg(long = "do_lower_case", action = ArgAction::SetTrue)]
    pub do_lower_case: bool,

    /// Mixed precision: the same as --precision=bf16.
    #[arg(long = "use_amp", action = ArgAction::SetTrue)]
    pub use_amp: bool,

    /// Precision of the encoder's matrix products: f32 (default); bf16 (bf16 inputs, f32
    /// accumulation, f32 weights, optimizer and checkpoints; fast with AVX512-BF16, else emulated);
    /// int8 (evaluate and predict only: s8 weights per channel, u8 activations per row; fast with
    /// AVX512-VNNI, else portable integer code).
    #[arg(long = "precision", value_parser = ["f32", "bf16", "int8"])]
    pub precision: Option<String>,

    /// Predict: rows read and written per chunk (bounds memory on large tables).
    #[arg(long = "predict_slice_size", default_value_t = 4096)]
    pub predict_slice_size: usize,

    /// Accepted for compatibility with EasyNLP scripts; predict streams in chunks of predict_slice_size.
    #[arg(long = "predict_queue_size", default_value_t = 1024)]
    pub predict_queue_size: usize,

    /// Predict: threads (same effect as --data_threads when that is absent).
    #[arg(long = "predict_thread_num")]
    pub predict_thread_num: Option<usize>,

    /// Accepted for compatibility; tables are read by one thread.
    #[arg(long = "predict_table_read_thread_num", default_value_t = 16)]
    pub predict_table_read_thread_num: usize,

    /// The worker's rank on its machine: must equal MPI's (0 without MPI); leave it out.
    #[arg(long = "local_rank")]
    pub local_rank: Option<i64>,

    /// Collectives of the workers: `mpi` (the only one built in; needs `--features mpi`).
    #[arg(long = "distributed_backend")]
    pub distributed_backend: Option<String>,
}
