//! Resolving `pretrain_model_name_or_path`: a directory, or a name in the model zoo folder.

use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// The model zoo folder: `--modelzoo_base_dir`, else `$EASYNLP_MODELZOO`, else `~/.easynlp/modelzoo`.
pub fn zoo_dir(modelzoo_base_dir: &str) -> PathBuf {
    if !modelzoo_base_dir.is_empty() {
        return PathBuf::from(modelzoo_base_dir);
    }
    if let Some(dir) = std::env::var_os("EASYNLP_MODELZOO").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".easynlp").join("modelzoo")
}

/// Resolves a model directory from a path or a model-zoo name. An existing directory wins; a value
/// that looks like a path (`./`, `../`, `/`, `~`) must exist; anything else is a zoo name.
pub fn resolve_model(name_or_path: &str, modelzoo_base_dir: &str) -> Result<PathBuf> {
    let as_path = Path::new(name_or_path);
    if as_path.is_dir() {
        return Ok(as_path.to_path_buf());
    }
    let looks_like_path =
        ["./", "../", "/", "~"].iter().any(|p| name_or_path.starts_with(p)) || name_or_path.contains('/');
    if looks_like_path {
        bail!("pretrain_model_name_or_path: directory `{name_or_path}` does not exist");
    }
    let zoo = zoo_dir(modelzoo_base_dir);
    let dir = zoo.join(name_or_path);
    if dir.join("config.json").is_file() {
        return Ok(dir);
    }
    let installed: Vec<String> = std::fs::read_dir(&zoo)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().join("config.json").is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    bail!(
        "unknown model `{name_or_path}`: not a directory, and not installed in the model zoo {} \
         (installed: {}). Pass a model directory, or install minilm-l6/minilm-l3 with \
         `bash scripts/fetch_models.sh` (set EASYNLP_MODELZOO or --modelzoo_base_dir for another zoo folder)",
        zoo.display(),
        if installed.is_empty() { "none".to_string() } else { installed.join(", ") }
    )
}
