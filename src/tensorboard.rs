//! TensorBoard event files: the record framing and the few `Event` protobuf messages a training
//! run writes (scalars, text, the session start that tells TensorBoard a run restarted).
//!
//! A file is a sequence of records `u64 length (LE) | masked CRC32C of the length | Event bytes |
//! masked CRC32C of the bytes`, named `events.out.tfevents.<secs>.<host>.<pid>.<n>` like
//! TensorFlow's and PyTorch's writers, starting with a `file_version: "brain.Event:2"` event. The
//! messages are the fields of TensorFlow's `event.proto` / `summary.proto` / `tensor.proto` that
//! are used here, with their field numbers (unknown fields are simply absent).

use anyhow::{Context, Result};
use prost::Message;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// `tensorflow.Event`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    /// Seconds since the epoch.
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    /// The global step.
    #[prost(int64, tag = "2")]
    pub step: i64,
    /// What the event holds.
    #[prost(oneof = "What", tags = "3, 5, 7")]
    pub what: Option<What>,
}

/// `Event.what`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum What {
    /// `file_version`, the first event of a file.
    #[prost(string, tag = "3")]
    FileVersion(String),
    /// `summary`.
    #[prost(message, tag = "5")]
    Summary(Summary),
    /// `session_log`.
    #[prost(message, tag = "7")]
    SessionLog(SessionLog),
}

/// `tensorflow.SessionLog`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SessionLog {
    /// `SessionStatus`: [`SESSION_START`] and others.
    #[prost(int32, tag = "1")]
    pub status: i32,
}

/// `SessionLog.START`: TensorBoard drops the events at and after this event's step that it read
/// before it (a restarted run's orphans).
pub const SESSION_START: i32 = 1;

/// `tensorflow.Summary`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    /// The values.
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<Value>,
}

/// `tensorflow.Summary.Value`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Value {
    /// The tag.
    #[prost(string, tag = "1")]
    pub tag: String,
    /// The value.
    #[prost(oneof = "ValueKind", tags = "2, 8")]
    pub value: Option<ValueKind>,
    /// Which plugin reads it (text). (Fields are declared in field-number order, the order they
    /// are encoded in, as protobuf's own encoders do.)
    #[prost(message, optional, tag = "9")]
    pub metadata: Option<SummaryMetadata>,
}

/// `Summary.Value.value`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum ValueKind {
    /// `simple_value`: a scalar.
    #[prost(float, tag = "2")]
    SimpleValue(f32),
    /// `tensor`.
    #[prost(message, tag = "8")]
    Tensor(TensorProto),
}

/// `tensorflow.SummaryMetadata`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryMetadata {
    /// The plugin.
    #[prost(message, optional, tag = "1")]
    pub plugin_data: Option<PluginData>,
}

/// `SummaryMetadata.PluginData`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PluginData {
    /// `text`, ...
    #[prost(string, tag = "1")]
    pub plugin_name: String,
    /// The plugin's own serialized data (empty: its version 0 defaults).
    #[prost(bytes = "vec", tag = "2")]
    pub content: Vec<u8>,
}

/// `tensorflow.TensorProto` (string tensors only).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorProto {
    /// `DataType`: [`DT_STRING`].
    #[prost(int32, tag = "1")]
    pub dtype: i32,
    /// The shape.
    #[prost(message, optional, tag = "2")]
    pub tensor_shape: Option<TensorShapeProto>,
    /// The strings.
    #[prost(bytes = "vec", repeated, tag = "8")]
    pub string_val: Vec<Vec<u8>>,
}

/// `DataType.DT_STRING`.
pub const DT_STRING: i32 = 7;

/// `tensorflow.TensorShapeProto`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorShapeProto {
    /// The dimensions.
    #[prost(message, repeated, tag = "2")]
    pub dim: Vec<Dim>,
}

/// `TensorShapeProto.Dim`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Dim {
    /// The size.
    #[prost(int64, tag = "1")]
    pub size: i64,
}

/// The masked CRC32C of TFRecord files: `rotr(crc, 15) + 0xa282ead8`.
pub fn masked_crc32c(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes).rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One record: length, its masked CRC, the data, its masked CRC.
pub fn frame(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    out
}

/// Splits a file's bytes into its records' data, checking every length and CRC. A torn last
/// record (a writer killed mid-write) ends the list, as it ends TensorBoard's reading.
pub fn read_records(bytes: &[u8]) -> Result<Vec<&[u8]>> {
    let mut out = Vec::new();
    let mut at = 0;
    while bytes.len() - at >= 12 {
        let len_bytes: [u8; 8] = bytes[at..at + 8].try_into().expect("8 bytes");
        let len_crc = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().expect("4 bytes"));
        anyhow::ensure!(masked_crc32c(&len_bytes) == len_crc, "record at byte {at}: bad length CRC");
        let len = u64::from_le_bytes(len_bytes) as usize;
        let start = at + 12;
        if bytes.len() - start < len.saturating_add(4) {
            break;
        }
        let data = &bytes[start..start + len];
        let crc = u32::from_le_bytes(bytes[start + len..start + len + 4].try_into().expect("4 bytes"));
        anyhow::ensure!(masked_crc32c(data) == crc, "record at byte {at}: bad data CRC");
        out.push(data);
        at = start + len + 4;
    }
    Ok(out)
}

/// An open event file, appended to and flushed record by record.
pub struct EventWriter {
    file: File,
    path: PathBuf,
}

impl EventWriter {
    /// Creates a new event file in `dir` (which must exist) and writes its file-version event.
    /// Its name sorts after the event files already there (TensorBoard reads them in name order):
    /// its seconds are past theirs even when this process started within the same second.
    pub fn create(dir: &Path) -> Result<Self> {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let latest = std::fs::read_dir(dir)
            .with_context(|| format!("cannot list {}", dir.display()))?
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_prefix("events.out.tfevents.")?.split('.').next()?.parse::<u64>().ok()
            })
            .max();
        let secs = (now().floor() as u64).max(latest.map_or(0, |s| s + 1));
        let name = format!(
            "events.out.tfevents.{secs}.{}.{}.{}",
            hostname(),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let path = dir.join(name);
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot create the event file {}", path.display()))?;
        let mut w = EventWriter { file, path };
        w.write(0, What::FileVersion("brain.Event:2".into()))?;
        Ok(w)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one event at `step` and hands it to the OS (a running job can be watched).
    pub fn write(&mut self, step: usize, what: What) -> Result<()> {
        let event = Event { wall_time: now(), step: step as i64, what: Some(what) };
        self.file
            .write_all(&frame(&event.encode_to_vec()))
            .with_context(|| format!("cannot write {}", self.path.display()))
    }

    /// Scalars at `step`, one event holding them all.
    pub fn scalars(&mut self, step: usize, values: &[(&str, f64)]) -> Result<()> {
        let value = values
            .iter()
            .map(|(tag, v)| Value {
                tag: tag.to_string(),
                metadata: None,
                value: Some(ValueKind::SimpleValue(*v as f32)),
            })
            .collect();
        self.write(step, What::Summary(Summary { value }))
    }

    /// A text at `step`, as PyTorch's `SummaryWriter.add_text` writes it (tag `TAG/text_summary`).
    pub fn text(&mut self, step: usize, tag: &str, text: &str) -> Result<()> {
        let value = Value {
            tag: format!("{tag}/text_summary"),
            metadata: Some(SummaryMetadata {
                plugin_data: Some(PluginData { plugin_name: "text".into(), content: Vec::new() }),
            }),
            value: Some(ValueKind::Tensor(TensorProto {
                dtype: DT_STRING,
                tensor_shape: Some(TensorShapeProto { dim: vec![Dim { size: 1 }] }),
                string_val: vec![text.as_bytes().to_vec()],
            })),
        };
        self.write(step, What::Summary(Summary { value: vec![value] }))
    }

    /// A session start at `step`: TensorBoard forgets what earlier files logged at `step` and later.
    pub fn session_start(&mut self, step: usize) -> Result<()> {
        self.write(step, What::SessionLog(SessionLog { status: SESSION_START }))
    }

    /// fsyncs the file.
    pub fn sync(&self) -> Result<()> {
        self.file.sync_data().with_context(|| format!("cannot flush {}", self.path.display()))
    }
}

/// Seconds since the epoch.
fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// This machine's host name, as it goes into file names.
fn hostname() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let clean: String = name.chars().filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c)).collect();
    if clean.is_empty() {
        "localhost".into()
    } else {
        clean
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two records written by TensorBoard's own `RecordWriter` (tensorboard 2.21), made with:
    ///
    /// ```text
    /// python -c 'import io; from tensorboard.summary.writer.record_writer import RecordWriter
    /// from tensorboard.compat.proto.event_pb2 import Event
    /// from tensorboard.compat.proto.summary_pb2 import Summary
    /// b = io.BytesIO(); w = RecordWriter(b)
    /// w.write(Event(wall_time=1.5, step=3, summary=Summary(value=[Summary.Value(tag="losses/loss",
    ///     simple_value=0.25)])).SerializeToString())
    /// w.write(Event(wall_time=1.5, file_version="brain.Event:2").SerializeToString())
    /// print(b.getvalue().hex())'
    /// ```
    const KNOWN: &str =
        "2100000000000000017becf609000000000000f83f10032a140a120a0b6c6f737365732f6c6f7373150000803e69693194\
                         1800000000000000a37f4b2209000000000000f83f1a0d627261696e2e4576656e743a322a28646c";

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn records_and_events_are_byte_identical_to_tensorboards_writer() {
        let scalar = Event {
            wall_time: 1.5,
            step: 3,
            what: Some(What::Summary(Summary {
                value: vec![Value {
                    tag: "losses/loss".into(),
                    metadata: None,
                    value: Some(ValueKind::SimpleValue(0.25)),
                }],
            })),
        };
        let version = Event { wall_time: 1.5, step: 0, what: Some(What::FileVersion("brain.Event:2".into())) };
        let mine = [frame(&scalar.encode_to_vec()), frame(&version.encode_to_vec())].concat();
        let known = unhex(KNOWN);
        assert_eq!(mine, known);
        let records = read_records(&known).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(Event::decode(records[0]).unwrap(), scalar);
        assert_eq!(Event::decode(records[1]).unwrap(), version);
        // A flipped bit is caught; a torn tail ends the records.
        let mut bad = known.clone();
        bad[20] ^= 1;
        assert!(read_records(&bad).unwrap_err().to_string().contains("bad data CRC"));
        assert_eq!(read_records(&known[..known.len() - 3]).unwrap().len(), 1);
    }

    #[test]
    fn masked_crc_of_known_values() {
        // CRC32C("123456789") = 0xe3069283 (RFC 3720 check value), masked.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(masked_crc32c(b"123456789"), 0xe306_9283u32.rotate_right(15).wrapping_add(0xa282_ead8));
    }

    #[test]
    fn a_writer_appends_decodable_events() {
        let tmp = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(tmp.path()).unwrap();
        w.text(0, "config/training", "{\"a\": 1}").unwrap();
        w.scalars(1, &[("losses/loss", 0.5), ("learning_rate/lr", 1e-5)]).unwrap();
        w.session_start(2).unwrap();
        let name = w.path().file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("events.out.tfevents."), "{name}");
        // A second file, even within the same second, sorts after the first.
        let second = EventWriter::create(tmp.path()).unwrap();
        assert!(second.path() > w.path(), "{:?} {:?}", second.path(), w.path());
        let bytes = std::fs::read(w.path()).unwrap();
        let events: Vec<Event> = read_records(&bytes).unwrap().into_iter().map(|r| Event::decode(r).unwrap()).collect();
        assert_eq!(events.len(), 4);
        assert_eq!(events[0].what, Some(What::FileVersion("brain.Event:2".into())));
        let Some(What::Summary(s)) = &events[1].what else { panic!("{:?}", events[1]) };
        assert_eq!(s.value[0].tag, "config/training/text_summary");
        let Some(ValueKind::Tensor(t)) = &s.value[0].value else { panic!() };
        assert_eq!(t.string_val, vec![b"{\"a\": 1}".to_vec()]);
        let Some(What::Summary(s)) = &events[2].what else { panic!() };
        assert_eq!((events[2].step, s.value.len()), (1, 2));
        assert_eq!(s.value[1].value, Some(ValueKind::SimpleValue(1e-5)));
        assert_eq!(events[3].what, Some(What::SessionLog(SessionLog { status: SESSION_START })));
    }
}
