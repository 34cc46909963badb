use std::path::Path;

use anyhow::{Context, bail};
use ember_data::{DatasetManifest, load_tokenizer, tokenizer_hash};

/// Refuse to pair a model with a dataset tokenized by another tokenizer.
pub fn check_same_tokenizer(model_dir: &Path, dataset_dir: &Path) -> anyhow::Result<()> {
    let manifest = DatasetManifest::load(dataset_dir)?;
    let tok_path = model_dir.join("tokenizer.json");
    if !tok_path.is_file() {
        return Ok(());
    }
    let info = tokenizer_hash(&load_tokenizer(&tok_path)?, &tok_path)?;
    if info.sha256 != manifest.tokenizer_sha256 {
        bail!(
            "{} was trained with another tokenizer than dataset {} (sha256 {} vs {}); prepare the data with the model's tokenizer.json",
            model_dir.display(),
            dataset_dir.display(),
            &info.sha256[..12],
            &manifest.tokenizer_sha256[..12]
        );
    }
    Ok(())
}

pub fn write_json(path: &Path, value: &impl serde::Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    ember_data::write_atomic(path, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}
