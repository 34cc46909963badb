//! Ember's data layer: real corpora, tokenizers and packed token datasets.
//!
//! A *prepared dataset* is a directory holding `dataset.json` (the manifest),
//! a copy of the `tokenizer.json` it was made with, and Arrow IPC shards
//! `train-NNNNN.arrow` / `validation-NNNNN.arrow`. Each shard row is one
//! fixed-length sequence of token ids (`input_ids: FixedSizeList<Int32, seq_len>`).
//! Teachers record against these rows; students train on them.

mod chat;
mod compact;
mod dataset;
mod error;
mod logits;
mod prepare;
mod rans;
mod tokenizer;

pub use chat::{
    ChatInfo, ChatPrepareConfig, ChatRecord, ChatTemplate, IGNORE_LABEL, encode_record,
    prepare_chat, read_chat_jsonl,
};
pub use compact::{
    CodecStats, CompactCodec, EntryCoder, IpcCompression, LogitsCodec, id_bits, pack_bits,
    unpack_bits,
};
pub use dataset::{Split, TokenDataset, read_token_shard};
pub use error::DataError;
pub use logits::{
    LOGITS_FORMAT_VERSION, LogitsManifest, LogitsMeta, LogitsRow, LogitsShard, convert_logits,
    logits_schema, read_logits_shard, write_logits_shard,
};
pub use prepare::{
    DatasetManifest, PrepareConfig, PrepareReport, ShardInfo, UnigramBaseline, prepare,
};
pub use tokenizer::{
    TokenizerInfo, TrainTokenizerConfig, load_tokenizer, tokenizer_hash, train_tokenizer,
};

/// Version of the token-shard format written by [`prepare`].
pub const TOKENS_FORMAT_VERSION: u32 = 1;

/// Write `bytes` to `path` atomically: a temporary file in the same directory,
/// fsync, then rename, so a crash never leaves a half-written file behind.
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> Result<(), DataError> {
    write_atomic_io(path, bytes).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// [`write_atomic`] for crates with their own error types: every file Ember writes goes
/// through here (temporary sibling, fsync, rename, then fsync of the directory so the
/// rename itself survives a crash).
pub fn write_atomic_io(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = tmp_path(path);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    sync_parent(path);
    Ok(())
}

/// Best-effort fsync of `path`'s directory (not every filesystem allows opening one).
pub fn sync_parent(path: &std::path::Path) {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
}

/// The temporary sibling used while `path` is being written.
pub fn tmp_path(path: &std::path::Path) -> std::path::PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Write one record batch of `columns` as an Arrow IPC file at `path`, atomically
/// (temporary file, fsync, rename).
pub(crate) fn write_ipc_atomic(
    path: &std::path::Path,
    schema: std::sync::Arc<arrow::datatypes::Schema>,
    columns: Vec<arrow::array::ArrayRef>,
    compression: IpcCompression,
) -> Result<(), DataError> {
    let arrow_err = |source| DataError::Arrow {
        path: path.to_path_buf(),
        source,
    };
    let batch =
        arrow::record_batch::RecordBatch::try_new(schema.clone(), columns).map_err(arrow_err)?;
    let tmp = tmp_path(path);
    let file = std::fs::File::create(&tmp).map_err(|source| DataError::Io {
        path: tmp.clone(),
        source,
    })?;
    let codec = match compression {
        IpcCompression::None => None,
        IpcCompression::Lz4 => Some(arrow::ipc::CompressionType::LZ4_FRAME),
        IpcCompression::Zstd => Some(arrow::ipc::CompressionType::ZSTD),
    };
    let options = arrow::ipc::writer::IpcWriteOptions::default()
        .try_with_compression(codec)
        .map_err(arrow_err)?;
    let mut writer = arrow::ipc::writer::FileWriter::try_new_with_options(file, &schema, options)
        .map_err(arrow_err)?;
    writer.write(&batch).map_err(arrow_err)?;
    writer.finish().map_err(arrow_err)?;
    let file = writer.into_inner().map_err(arrow_err)?;
    file.sync_all().map_err(|source| DataError::Io {
        path: tmp.clone(),
        source,
    })?;
    std::fs::rename(&tmp, path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    sync_parent(path);
    Ok(())
}

/// Open an Arrow IPC file for reading.
pub(crate) fn open_ipc(
    path: &std::path::Path,
) -> Result<arrow::ipc::reader::FileReader<std::fs::File>, DataError> {
    let file = std::fs::File::open(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    arrow::ipc::reader::FileReader::try_new(file, None).map_err(|source| DataError::Arrow {
        path: path.to_path_buf(),
        source,
    })
}

/// Read the JSON manifest at `path`, checking that `found` (its format name and version)
/// is `format` at one of `versions`.
pub(crate) fn read_manifest<T: serde::de::DeserializeOwned>(
    path: &std::path::Path,
    format: &str,
    versions: &[u32],
    found: impl Fn(&T) -> (&str, u32),
) -> Result<T, DataError> {
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let manifest: T = serde_json::from_str(&text).map_err(|source| DataError::Manifest {
        path: path.to_path_buf(),
        source,
    })?;
    let (f, v) = found(&manifest);
    if f != format || !versions.contains(&v) {
        let want: Vec<String> = versions.iter().map(|v| format!("v{v}")).collect();
        return Err(DataError::Format {
            path: path.to_path_buf(),
            message: format!("format {f:?} v{v} is not {format} {}", want.join(" or ")),
        });
    }
    Ok(manifest)
}
