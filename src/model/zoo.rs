//! Resolving `pretrain_model_name_or_path`: a directory, a name in the model zoo folder, one of
//! EasyNLP's model names, or a Hugging Face Hub id (`org/name[@revision]`, fetched by [`hub`]).

use super::hub::{self, HubModel, HubSettings, EASYNLP_MODELS};
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

/// Resolves a model directory, in order: an existing directory; a value that looks like a path
/// (`./`, `../`, `/`, `~`, or more than one `/`), which must exist; a name installed in the model
/// zoo; one of EasyNLP's model names or an `org/name[@revision]` Hub id, from the Hugging Face
/// cache or downloaded.
pub fn resolve_model(name_or_path: &str, modelzoo_base_dir: &str) -> Result<PathBuf> {
    let as_path = Path::new(name_or_path);
    if as_path.is_dir() {
        return Ok(as_path.to_path_buf());
    }
    let looks_like_path =
        ["./", "../", "/", "~"].iter().any(|p| name_or_path.starts_with(p)) || name_or_path.matches('/').count() > 1;
    if looks_like_path {
        bail!("pretrain_model_name_or_path: directory `{name_or_path}` does not exist");
    }
    let zoo = zoo_dir(modelzoo_base_dir);
    if !name_or_path.contains('/') {
        let dir = zoo.join(name_or_path);
        if dir.join("config.json").is_file() {
            return Ok(dir);
        }
    }
    if let Some(model) = HubModel::parse(name_or_path) {
        return hub::fetch(&model, &HubSettings::from_env()?);
    }
    let installed: Vec<String> = std::fs::read_dir(&zoo)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().join("config.json").is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let names: Vec<&str> = EASYNLP_MODELS.iter().map(|(n, _)| *n).collect();
    bail!(
        "unknown model `{name_or_path}`: not a directory, not installed in the model zoo {} (installed: {}), not \
         one of EasyNLP's model names ({}), and not a Hugging Face Hub id (`org/name`, optionally `@revision`). \
         Pass a model directory or a Hub id, or install minilm-l6/minilm-l3 with `bash scripts/fetch_models.sh` \
         (set EASYNLP_MODELZOO or --modelzoo_base_dir for another zoo folder)",
        zoo.display(),
        if installed.is_empty() { "none".to_string() } else { installed.join(", ") },
        names.join(", ")
    )
}
