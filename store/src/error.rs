//! Store errors: a stale fence, a resource conflict, a record that does not decode, or a storage failure.

/// What went wrong in the store, with the context to act on it.
#[derive(Debug, Clone)]
pub enum StoreError {
    /// The batch was based on a fence that is no longer current; nothing was written.
    Stale { instance: String, expected: u64, found: u64 },
    /// The batch was based on a version of a resource key that is no longer
    /// current (`WriteBatch::check`); nothing was written.
    Conflict { resource: String, key: String, expected: u64, found: u64 },
    /// A stored record does not decode: damaged data, or a format this host does not know.
    Integrity { table: &'static str, key: String, reason: String },
    /// The backend failed (I/O, connection, the committer stopped).
    Storage(String),
    /// The disk (or the database server's disk) is full; nothing was written.
    NoSpace(String),
    /// Cluster mode: the batch writes an instance of a partition this host
    /// does not hold under its current lease epoch (it lost or gave up the
    /// lease); nothing was written. The partition's new owner goes on.
    Fenced { instance: String, partition: u32 },
    /// Cluster mode: another host stored a message with this id first
    /// (exactly-once intake across hosts); nothing was written.
    Duplicate { message_id: String },
    /// Cluster mode: a new instance would initialize a correlation set whose
    /// values another instance (`holder`) already holds, created on another
    /// host at the same moment; nothing was written.
    Correlated { process: String, set: String, values: String, holder: String },
}

impl StoreError {
    /// A storage failure, told apart as a full disk when its message says so
    /// (RocksDB's and PostgreSQL's I/O errors carry the OS's words).
    pub fn storage(message: String) -> StoreError {
        let full = ["No space left on device", "could not extend file", "disk full", "ENOSPC"];
        if full.iter().any(|f| message.contains(f)) {
            StoreError::NoSpace(message)
        } else {
            StoreError::Storage(message)
        }
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Stale { instance, expected, found } => {
                write!(f, "stale write to instance {instance}: based on fence {expected}, but the store holds {found}")
            }
            StoreError::Conflict { resource, key, expected, found } => {
                write!(f, "conflict on resource {resource} key {key}: read at version {expected}, now {found}")
            }
            StoreError::Integrity { table, key, reason } => {
                write!(f, "integrity error: the record '{key}' of table {table} does not decode: {reason}")
            }
            StoreError::Storage(e) => write!(f, "storage error: {e}"),
            StoreError::NoSpace(e) => write!(f, "storage full: {e}"),
            StoreError::Fenced { instance, partition } => write!(
                f,
                "fenced write to instance {instance}: this host does not hold partition {partition} under its current lease epoch"
            ),
            StoreError::Duplicate { message_id } => write!(f, "message {message_id} was accepted already (by another host)"),
            StoreError::Correlated { process, set, values, holder } => write!(
                f,
                "correlation set '{set}' with values {values} already belongs to instance {holder} of process '{process}' (created at the same moment through another host)"
            ),
        }
    }
}

impl std::error::Error for StoreError {}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
