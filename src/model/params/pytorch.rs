//! `pytorch_model.bin`: a state dict as `torch.save` writes it, in the zip format (torch >= 1.6,
//! read by candle's pickle reader) or the legacy one (a pickle stream, then the raw storages),
//! read without Python.

use anyhow::{anyhow, bail, Context, Result};
use candle_core::pickle::{Object, Stack, TensorInfo};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

/// The first bytes of a legacy file: pickle protocol 2, then torch's magic number
/// 0x1950a86a20f9469cfc6c as a 10-byte long, then STOP.
const LEGACY_MAGIC: &[u8] = &[0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, b'.'];

/// The protocol version torch's legacy format writes after the magic number.
const LEGACY_PROTOCOL: i64 = 1001;

/// Every tensor of the state dict in `path`, on the CPU, in the file's dtypes.
pub fn read(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let file = path.display();
    let mut head = Vec::with_capacity(LEGACY_MAGIC.len());
    std::fs::File::open(path)
        .with_context(|| format!("cannot open {file}"))?
        .take(LEGACY_MAGIC.len() as u64)
        .read_to_end(&mut head)
        .with_context(|| format!("cannot read {file}"))?;
    let tensors = if head.starts_with(b"PK\x03\x04") {
        candle_core::pickle::read_all(path).map_err(|e| {
            anyhow!("{file}: cannot read this PyTorch zip archive (a truncated or damaged download?): {e}")
        })?
    } else if head == LEGACY_MAGIC {
        read_legacy(path).with_context(|| format!("{file}: cannot read this legacy (pre-1.6) PyTorch file"))?
    } else {
        bail!("{file}: not a PyTorch weights file (neither torch.save's zip format nor its legacy format)");
    };
    if tensors.is_empty() {
        bail!(
            "{file}: no tensors at the top level: not a state dict as torch.save(model.state_dict()) writes \
             it (a whole pickled model, or a checkpoint dict with the state dict under a key?)"
        );
    }
    Ok(tensors)
}

/// One pickle of the stream.
fn pickle(r: &mut impl BufRead, what: &str) -> Result<Object> {
    let mut stack = Stack::empty();
    stack.read_loop(r).with_context(|| format!("cannot read the {what} (a truncated file?)"))?;
    stack.finalize().with_context(|| format!("cannot read the {what}"))
}

/// The legacy format (`torch.save(..., _use_new_zipfile_serialization=False)`, the only one before
/// torch 1.6): the magic number, the protocol version and the system info, the state dict (its
/// tensors name their storages by key), the list of storage keys, then each storage in that
/// order as an 8-byte little-endian element count and its raw little-endian elements.
fn read_legacy(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let mut r = BufReader::new(std::fs::File::open(path)?);
    std::io::copy(&mut (&mut r).take(LEGACY_MAGIC.len() as u64), &mut std::io::sink())?;
    match pickle(&mut r, "protocol version")? {
        Object::Int(v) if i64::from(v) == LEGACY_PROTOCOL => {}
        Object::Long(v) if v == LEGACY_PROTOCOL => {}
        other => bail!("unknown protocol version {other:?} (expected {LEGACY_PROTOCOL})"),
    }
    if let Object::Dict(info) = pickle(&mut r, "system info")? {
        let big_endian =
            info.iter().any(|(k, v)| *k == Object::Unicode("little_endian".into()) && *v == Object::Bool(false));
        if big_endian {
            bail!("written on a big-endian machine, which is not supported");
        }
    }
    let Object::Dict(entries) = pickle(&mut r, "state dict")? else {
        return Ok(Vec::new());
    };
    let mut infos: Vec<TensorInfo> = Vec::new();
    for (name, value) in entries {
        if let Some(info) = value.into_tensor_info(name, Path::new("")).context("cannot read a tensor entry")? {
            infos.push(info);
        }
    }
    let Object::List(keys) = pickle(&mut r, "storage list")? else {
        bail!("the storage list is not a list");
    };
    let mut by_storage: HashMap<String, Vec<TensorInfo>> = HashMap::new();
    for info in infos.drain(..) {
        by_storage.entry(info.path.trim_start_matches('/').to_string()).or_default().push(info);
    }
    let mut tensors = Vec::new();
    for key in keys {
        let Object::Unicode(key) = key else { bail!("a storage key is not a string: {key:?}") };
        let users = by_storage.remove(&key).unwrap_or_default();
        let mut count = [0u8; 8];
        r.read_exact(&mut count).with_context(|| format!("storage `{key}` is missing (a truncated file?)"))?;
        let count = u64::from_le_bytes(count) as usize;
        // A storage no tensor uses has no known element size; a state dict has none.
        let Some(dtype) = users.first().map(|i| i.dtype) else {
            bail!("storage `{key}` is used by no tensor of the state dict")
        };
        let bytes = count.checked_mul(dtype.size_in_bytes()).context("storage size overflows")?;
        let mut data = Vec::new();
        (&mut r).take(bytes as u64).read_to_end(&mut data)?;
        if data.len() != bytes {
            bail!("storage `{key}` has {} of its {bytes} bytes (a truncated file?)", data.len());
        }
        for info in users {
            tensors.push((info.name.clone(), tensor_from_storage(&info, &data, dtype)?));
        }
    }
    if let Some((key, infos)) = by_storage.into_iter().next() {
        bail!("tensor `{}` uses storage `{key}`, which the file does not hold", infos[0].name);
    }
    Ok(tensors)
}

/// The tensor `info` describes, a view of `storage` (elements of `dtype`).
fn tensor_from_storage(info: &TensorInfo, storage: &[u8], dtype: DType) -> Result<Tensor> {
    if info.dtype != dtype {
        bail!("tensor `{}` reads its storage as {:?}, another tensor as {dtype:?}", info.name, info.dtype);
    }
    let layout = &info.layout;
    if !layout.is_contiguous() {
        bail!("tensor `{}` is not contiguous (strides {:?}), which is not supported", info.name, layout.stride());
    }
    let start = layout.start_offset();
    let len = layout.shape().elem_count() * dtype.size_in_bytes();
    let bytes = start.checked_add(len).and_then(|end| storage.get(start..end)).with_context(|| {
        format!("tensor `{}` lies beyond the end of its storage ({} bytes)", info.name, storage.len())
    })?;
    Ok(Tensor::from_raw_buffer(bytes, dtype, layout.dims(), &Device::Cpu)?)
}
