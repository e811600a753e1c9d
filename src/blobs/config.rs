//! The `[attachments]` table of the configuration.

use serde::Deserialize;

/// Where blob bytes are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobStoreKind {
    /// Chunks in PostgreSQL: nothing else to run.
    #[default]
    Postgres,
    /// S3-compatible object storage (`s3_bucket`; credentials from the `AWS_*` environment).
    S3,
}

impl BlobStoreKind {
    /// The `store` label of the blob metrics, as the configuration spells it.
    pub fn label(self) -> &'static str {
        match self {
            BlobStoreKind::Postgres => "postgres",
            BlobStoreKind::S3 => "s3",
        }
    }
}

/// Attachment limits and storage.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachmentsConfig {
    /// `postgres` (default) or `s3`.
    #[serde(default)]
    pub store: BlobStoreKind,
    /// Largest blob accepted, in bytes; a larger declared length is RESOURCE_EXHAUSTED.
    #[serde(default = "default_attachment_bytes_max")]
    pub attachment_bytes_max: u64,
    /// Largest chunk of an Upload message and of a Download message, in bytes. The server's
    /// memory per transfer is bounded by it (object storage: by its 5 MiB multipart parts).
    #[serde(default = "default_chunk_bytes_max")]
    pub chunk_bytes_max: usize,
    /// Uploads one principal may have in flight in this process; more is RESOURCE_EXHAUSTED.
    #[serde(default = "default_uploads_per_principal_max")]
    pub uploads_per_principal_max: usize,
    /// Most digests in one Missing request (INVALID_ARGUMENT beyond).
    #[serde(default = "default_missing_digests_max")]
    pub missing_digests_max: usize,
    /// How long an unreferenced blob is kept (`"24h"`: a number with s, m, h or d): an upload
    /// waits this long for the push that references it.
    #[serde(default = "default_attachment_gc_grace")]
    pub attachment_gc_grace: String,
    /// Blobs the GC deletes per batch (each batch one transaction).
    #[serde(default = "default_gc_batch_blobs")]
    pub gc_batch_blobs: u32,
    /// `s3`: the bucket.
    #[serde(default)]
    pub s3_bucket: Option<String>,
    /// `s3`: a key prefix inside the bucket (`syncline/`); empty for the bucket's root.
    #[serde(default)]
    pub s3_prefix: String,
    /// `s3`: an endpoint other than AWS (MinIO, Ceph, R2...); unset: `AWS_ENDPOINT` or AWS.
    #[serde(default)]
    pub s3_endpoint: Option<String>,
    /// `s3`: the region; unset: `AWS_REGION` / `AWS_DEFAULT_REGION`, else `us-east-1`.
    #[serde(default)]
    pub s3_region: Option<String>,
    /// `s3`: allow a plain `http://` endpoint (tests, a private network).
    #[serde(default)]
    pub s3_allow_http: bool,
}

impl Default for AttachmentsConfig {
    fn default() -> Self {
        AttachmentsConfig {
            store: BlobStoreKind::Postgres,
            attachment_bytes_max: default_attachment_bytes_max(),
            chunk_bytes_max: default_chunk_bytes_max(),
            uploads_per_principal_max: default_uploads_per_principal_max(),
            missing_digests_max: default_missing_digests_max(),
            attachment_gc_grace: default_attachment_gc_grace(),
            gc_batch_blobs: default_gc_batch_blobs(),
            s3_bucket: None,
            s3_prefix: String::new(),
            s3_endpoint: None,
            s3_region: None,
            s3_allow_http: false,
        }
    }
}

impl AttachmentsConfig {
    /// The parsed `attachment_gc_grace`.
    pub fn gc_grace(&self) -> Result<std::time::Duration, String> {
        crate::config::parse_retention(&self.attachment_gc_grace)
            .map_err(|why| format!("attachments.attachment_gc_grace {why}"))
    }

    /// Checks the values that must make sense together.
    pub fn check(&self) -> Result<(), String> {
        self.gc_grace()?;
        if self.chunk_bytes_max < 1024 || self.chunk_bytes_max > 16 * 1024 * 1024 {
            return Err("attachments.chunk_bytes_max must be between 1 KiB and 16 MiB".into());
        }
        if self.uploads_per_principal_max == 0 || self.missing_digests_max == 0 {
            return Err(
                "attachments.uploads_per_principal_max and missing_digests_max must be at least 1"
                    .into(),
            );
        }
        if self.store == BlobStoreKind::S3 && self.s3_bucket.as_deref().unwrap_or("").is_empty() {
            return Err("attachments.store = \"s3\" needs attachments.s3_bucket".into());
        }
        Ok(())
    }
}

fn default_attachment_bytes_max() -> u64 {
    1024 * 1024 * 1024
}
fn default_chunk_bytes_max() -> usize {
    1024 * 1024
}
fn default_uploads_per_principal_max() -> usize {
    4
}
fn default_missing_digests_max() -> usize {
    1000
}
fn default_attachment_gc_grace() -> String {
    "24h".into()
}
fn default_gc_batch_blobs() -> u32 {
    100
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const BASE: &str = "[auth]\nmode = \"none\"\n[[collections]]\nname = \"tasks\"\n";

    #[test]
    fn the_table_is_optional_checked_and_strict() {
        let c = Config::from_toml(BASE).unwrap();
        assert_eq!(c.attachments.store, super::BlobStoreKind::Postgres);
        assert!(c.attachments.check().is_ok());
        assert_eq!(c.attachments.gc_grace().unwrap().as_secs(), 86_400);

        let c = Config::from_toml(&format!("{BASE}[attachments]\nstore = \"s3\"\n")).unwrap();
        assert!(c.attachments.check().unwrap_err().contains("s3_bucket"));
        let c = Config::from_toml(&format!(
            "{BASE}[attachments]\nstore = \"s3\"\ns3_bucket = \"b\"\nattachment_gc_grace = \"2h\"\n"
        ))
        .unwrap();
        assert!(c.attachments.check().is_ok());
        assert_eq!(c.attachments.gc_grace().unwrap().as_secs(), 7200);

        for bad in [
            "attachment_gc_grace = \"soon\"",
            "chunk_bytes_max = 10",
            "uploads_per_principal_max = 0",
        ] {
            let c = Config::from_toml(&format!("{BASE}[attachments]\n{bad}\n")).unwrap();
            assert!(c.attachments.check().is_err(), "{bad}");
        }
        assert!(Config::from_toml(&format!("{BASE}[attachments]\nstorage = \"s3\"\n")).is_err());
        assert!(Config::from_toml(&format!("{BASE}[attachments]\nstore = \"disk\"\n")).is_err());
    }
}
