//! `cairn check` and `cairn repair`: verifying a stopped embedded store
//! (`DATA/db`) record by record, and salvaging what can be salvaged.
//!
//! `check` refuses a store whose RocksDB lock a host holds, opens it
//! read-only (it changes nothing), reads every record of every column family
//! with block checksums verified, decodes each with the decoder the backend
//! uses, and checks that the tables agree with the snapshots:
//! - every instance has a fence equal to its snapshot's, and its version a
//!   definition, whose component bytes are stored;
//! - every inbox, outbox, timer, history, held-call (`in_transit`) and parked
//!   entry, and every correlation, refers to a stored instance;
//! - keys agree with their records (an inbox key's sequence number with the
//!   delivery's, a history key's fence with the entry's, …), and no history
//!   entry is beyond its instance's fence.
//!
//! Not problems: a fence without an instance (a microflow that keeps no
//! final state leaves its fence behind), messages and replies of instances
//! that are gone (intake stays exactly once by message id), a component
//! without a definition record. They are counted in the notes.
//!
//! A damaged block of a table file makes RocksDB fail the read with a
//! Corruption error naming the file. `check` reports it with the key range it
//! cannot read (found by bisecting seeks: the smallest key past the damage
//! that reads again) and the keys it holds as read without checksums, then
//! reads on past it. A write-ahead log damaged before its tail is reported,
//! and the rest checked as `cairn serve --salvage-wal` would open it.
//!
//! `repair` first keeps the store as it is, as `DATA/before-repair-MS/db`
//! (table files hard-linked, so it costs little disk), then changes `DATA/db`
//! in place:
//! 1. A store that does not open (its MANIFEST, or a table file's footer or
//!    index, damaged) goes through RocksDB's own repair (`DB::repair`), which
//!    rebuilds the MANIFEST from the table files and moves the files it
//!    cannot read to `db/lost/`.
//! 2. A store with a damaged table file or write-ahead log is rebuilt
//!    record by record into a fresh RocksDB: every record that reads with its
//!    checksum verified is copied, the damaged key ranges are skipped, and
//!    the log is replayed up to its damage. Unlike `DB::repair` alone this
//!    loses one damaged block, not a whole table file, and it cannot bring
//!    back a record whose deletion was in the damaged part.
//! 3. Records that do not decode are deleted, and with them every entry of
//!    another table that refers to an instance that is not (or no longer)
//!    stored; a fence that disagrees with its snapshot is set to the
//!    snapshot's fence (the snapshot is what the host resumes from).
//!
//! Every record dropped, lost or rewritten is one `Action` (table, key, what,
//! why). What `repair` cannot fix (an instance whose version has no
//! definition: redeploy that component) stays in the report's problems.
//!
//! PostgreSQL is not covered: its own tools (`pg_amcheck`) check the
//! database, and `cairn backup` of a PostgreSQL store decodes every row
//! into a RocksDB data directory that `check` then verifies.

use crate::codec::{self, decode};
use crate::error::StoreError;
use crate::records::{DeployedRecord, HistoryEntry, InTransit, IntakeRecord, Reply, ResourceInfo, TokenRecord};
use crate::rocks::{keys, parse_resource, show_key, wal_files, Cf};
use cairn_engine::{Delivery, Effect, Snapshot, Status};
use rocksdb::{ColumnFamilyDescriptor, DBRecoveryMode, ErrorKind, LiveFile, Options, ReadOptions, WriteOptions, DB};
use serde::{de::DeserializeOwned, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

/// What kind of problem a record has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// RocksDB cannot read it: a damaged table file or write-ahead log, or a store that does not open.
    Storage,
    /// The record, or its key, does not decode as its table's type.
    Decode,
    /// The record decodes but disagrees with another table (it refers to a missing instance, say).
    Reference,
}

/// What `cairn repair` does about a problem.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fix {
    /// Rebuild the store from what reads (RocksDB's repair first if it does not open).
    Rebuild,
    /// Delete the record.
    Drop,
    /// Set the instance's fence to its snapshot's.
    SetFence,
    /// Rewrite an index entry (the live index) from the instance's snapshot.
    SetIndex,
    /// Nothing: an operator has to act (the problem says how).
    None,
}

/// One problem: where, and what is wrong.
#[derive(Clone, Debug, Serialize)]
pub struct Problem {
    /// The table (column family); `wal` for the write-ahead log, `store` for the store as a whole.
    pub table: String,
    /// The key, printable: bytes outside printable ASCII as `\xNN`; a range as `FROM … TO`.
    pub key: String,
    pub kind: Kind,
    pub what: String,
    /// What `cairn repair` does about it.
    pub repair: Fix,
    #[serde(skip)]
    raw_key: Vec<u8>,
    /// For `Fix::SetFence` and `Fix::SetIndex`: the value to write.
    #[serde(skip)]
    put: Vec<u8>,
}

/// Records read and problems found in one table.
#[derive(Clone, Debug, Serialize)]
pub struct TableSummary {
    pub table: String,
    pub records: u64,
    pub problems: u64,
}

/// Something `repair` did to one record (or, where the records themselves
/// cannot be told, to a key range or a file).
#[derive(Clone, Debug, Serialize)]
pub struct Action {
    pub table: String,
    pub key: String,
    /// `dropped` (deleted: it did not decode, or referred to a missing
    /// instance), `lost` (in a damaged part of a table file or the
    /// write-ahead log: not carried over), `changed` (an older value came
    /// back: the newer one was lost), `set-fence`, `rebuilt` (the store as a
    /// whole), `kept` (where the original store was kept).
    pub action: String,
    pub reason: String,
}

/// The outcome of a check or a repair.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub data_dir: String,
    /// Whether no problem was found (after a repair: none is left).
    pub clean: bool,
    /// Per table (column family), in the store's order.
    pub tables: Vec<TableSummary>,
    pub problems: Vec<Problem>,
    /// Findings that are not problems, and what the check could not see.
    pub notes: Vec<String>,
    /// What a repair did (empty for a check).
    pub actions: Vec<Action>,
}

impl Report {
    fn new(data_dir: &Path) -> Report {
        Report { data_dir: data_dir.display().to_string(), ..Report::default() }
    }

    fn problem(&mut self, table: &str, raw_key: &[u8], kind: Kind, repair: Fix, what: String) {
        self.problems.push(Problem { table: table.to_string(), key: show_key(raw_key), kind, what, repair, raw_key: raw_key.to_vec(), put: Vec::new() });
    }

    fn action(&mut self, table: &str, key: String, action: &str, reason: String) {
        self.actions.push(Action { table: table.to_string(), key, action: action.to_string(), reason });
    }

    /// Fills in `clean` and each table's problem count.
    fn finish(&mut self) {
        for t in &mut self.tables {
            t.problems = self.problems.iter().filter(|p| p.table == t.table).count() as u64;
        }
        self.clean = self.problems.is_empty();
    }
}

/// Why a store could not be checked (or repaired) at all.
#[derive(Clone, Debug)]
pub enum CheckError {
    /// Not a store, held by a running host, written by a newer cairn, …: nothing was done.
    Refused(String),
    /// RocksDB refused to open it for a reason other than damage (permissions, say).
    Open(String),
}

impl std::fmt::Display for CheckError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CheckError::Refused(m) | CheckError::Open(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for CheckError {}

/// Progress, for large stores: called now and then with a line to show.
pub type Progress<'a> = &'a mut dyn FnMut(&str);

/// The index of live instances (instance id -> status name), and the meta
/// key that marks it built. Read by name: a store written before it has none.
const LIVE: &str = "live";
const LIVE_INDEX_MARK: &[u8] = b"live-index";

/// Records between two progress lines.
const PROGRESS_EVERY: u64 = 250_000;

/// Checks the stopped embedded store of `data_dir`; changes nothing.
pub fn check(data_dir: &Path) -> Result<Report, CheckError> {
    check_with(data_dir, &mut |_| {})
}

/// `check`, calling `progress` now and then.
pub fn check_with(data_dir: &Path, progress: Progress) -> Result<Report, CheckError> {
    let path = preflight(data_dir)?;
    let mut report = Report::new(data_dir);
    let families = match DB::list_cf(&Options::default(), &path) {
        Ok(f) => f,
        Err(e) => return unopenable(report, &path, e),
    };
    let db = match open_read_only(&path, &families, DBRecoveryMode::TolerateCorruptedTailRecords) {
        Ok(db) => db,
        Err(e) if e.kind() == ErrorKind::Corruption && !wal_files(&path).is_empty() => {
            // If it opens when the log is replayed only up to its damage, the log was what failed.
            match open_read_only(&path, &families, DBRecoveryMode::PointInTime) {
                Ok(db) => {
                    let files = crate::rocks::damaged_wal(&path, &e);
                    report.problem(
                        "wal",
                        files.join(", ").as_bytes(),
                        Kind::Storage,
                        Fix::Rebuild,
                        format!("the write-ahead log is damaged before its last record: {e}"),
                    );
                    report.notes.push(
                        "the store was checked as `cairn serve --salvage-wal` would open it: without the writes logged after the damage".into(),
                    );
                    db
                }
                Err(_) => return unopenable(report, &path, e),
            }
        }
        Err(e) => return unopenable(report, &path, e),
    };
    refuse_newer_format(&db, data_dir)?;
    let mut scan = Scan::new(&db, &families, report, progress);
    scan.run();
    let mut report = scan.report;
    report.finish();
    Ok(report)
}

/// Repairs the stopped embedded store of `data_dir` in place (keeping the
/// original as `DATA/before-repair-MS/db`); the report lists every action
/// and the problems left.
pub fn repair(data_dir: &Path) -> Result<Report, CheckError> {
    repair_with(data_dir, &mut |_| {})
}

/// `repair`, calling `progress` now and then.
pub fn repair_with(data_dir: &Path, progress: Progress) -> Result<Report, CheckError> {
    let path = preflight(data_dir)?;
    let before = match check_with(data_dir, progress) {
        Ok(r) => Some(r),
        Err(CheckError::Open(_)) => None,
        Err(e) => return Err(e),
    };
    let mut report = Report::new(data_dir);
    if let Some(before) = &before {
        if before.clean {
            let mut r = before.clone();
            r.notes.push("nothing to repair".into());
            return Ok(r);
        }
    }
    let kept = keep_original(data_dir, &path)?;
    report.action("store", kept.display().to_string(), "kept", "the store as it was before this repair (delete it once satisfied)".into());

    let storage = before.as_ref().is_none_or(|r| r.problems.iter().any(|p| p.repair == Fix::Rebuild));
    if storage {
        let wal_damaged = before.as_ref().is_some_and(|r| r.problems.iter().any(|p| p.table == "wal"));
        let opens = before.as_ref().is_some_and(|r| !r.problems.iter().any(|p| p.table == "store"));
        if !opens {
            rocksdb_repair(&path, &mut report)?;
        }
        rebuild(data_dir, &path, wal_damaged, &mut report, progress)?;
    }

    // Records: delete what does not decode and what refers to missing instances; align fences.
    let families = DB::list_cf(&Options::default(), &path).map_err(|e| CheckError::Open(format!("listing the column families of {}: {e}", path.display())))?;
    let db = open_read_write(&path, &families, DBRecoveryMode::TolerateCorruptedTailRecords)
        .map_err(|e| CheckError::Open(format!("opening {} to repair its records: {e}", path.display())))?;
    let mut scan = Scan::new(&db, &families, Report::new(data_dir), progress);
    scan.run();
    let mut wb = rocksdb::WriteBatch::default();
    for p in &scan.report.problems {
        let Some(cf) = db.cf_handle(&p.table) else { continue };
        match p.repair {
            Fix::Drop => {
                wb.delete_cf(cf, &p.raw_key);
                report.action(&p.table, p.key.clone(), "dropped", p.what.clone());
            }
            Fix::SetFence => {
                wb.put_cf(cf, &p.raw_key, &p.put);
                report.action(&p.table, p.key.clone(), "set-fence", format!("{}: set to {}", p.what, keys::trailing_u64(&p.put)));
            }
            Fix::SetIndex => {
                wb.put_cf(cf, &p.raw_key, &p.put);
                report.action(&p.table, p.key.clone(), "set-index", format!("{}: set to {}", p.what, show_key(&p.put)));
            }
            Fix::Rebuild | Fix::None => {}
        }
    }
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    db.write_opt(wb, &opts).map_err(|e| CheckError::Open(format!("writing the repair: {e}")))?;
    for name in &families {
        if let Some(cf) = db.cf_handle(name) {
            db.flush_cf(cf).map_err(|e| CheckError::Open(format!("flushing {name}: {e}")))?;
        }
    }
    drop(scan);
    drop(db);

    let after = check_with(data_dir, progress)?;
    report.tables = after.tables;
    report.problems = after.problems;
    report.notes = after.notes;
    report.finish();
    Ok(report)
}

// ---------------------------------------------------------------------------
// Opening

/// `DATA/db`, if it is a store no host holds.
fn preflight(data_dir: &Path) -> Result<PathBuf, CheckError> {
    if !data_dir.is_dir() {
        return Err(CheckError::Refused(format!("{} is not a directory", data_dir.display())));
    }
    let path = data_dir.join("db");
    if !path.is_dir() && data_dir.join("CURRENT").exists() {
        return Err(CheckError::Refused(format!(
            "{} is the store's db directory itself: give the data directory that holds it ({})",
            data_dir.display(),
            data_dir.parent().map(|p| p.display().to_string()).unwrap_or_default()
        )));
    }
    if !path.is_dir() {
        return Err(CheckError::Refused(format!(
            "{} holds no embedded store (no db directory); a PostgreSQL store is checked with PostgreSQL's tools (pg_amcheck)",
            data_dir.display()
        )));
    }
    if let Some(pid) = lock_holder(&path.join("LOCK")) {
        return Err(CheckError::Refused(format!(
            "a host (process {pid}) is serving {}: it holds {}. Stop it first (SIGTERM: a controlled shutdown), or check a backup of it (`cairn backup NAME`, then `cairn check` on the directory it prints)",
            data_dir.display(),
            path.join("LOCK").display()
        )));
    }
    Ok(path)
}

/// The process holding RocksDB's lock on `lock` (an fcntl write lock), if any.
#[allow(unsafe_code)]
fn lock_holder(lock: &Path) -> Option<i32> {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new().read(true).write(true).open(lock).or_else(|_| std::fs::File::open(lock)).ok()?;
    // SAFETY: `flock` is plain old data; all zeroes is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: F_GETLK on an open descriptor with a valid `flock` to fill in.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut fl) };
    (r != -1 && fl.l_type != libc::F_UNLCK as libc::c_short).then_some(fl.l_pid)
}

fn db_options(mode: DBRecoveryMode) -> Options {
    let mut opts = Options::default();
    opts.set_paranoid_checks(true);
    opts.set_wal_recovery_mode(mode);
    opts.set_disable_auto_compactions(true);
    opts
}

fn descriptors(families: &[String]) -> Vec<ColumnFamilyDescriptor> {
    families.iter().map(|f| ColumnFamilyDescriptor::new(f, Options::default())).collect()
}

fn open_read_only(path: &Path, families: &[String], mode: DBRecoveryMode) -> Result<DB, rocksdb::Error> {
    DB::open_cf_descriptors_read_only(&db_options(mode), path, descriptors(families), false)
}

fn open_read_write(path: &Path, families: &[String], mode: DBRecoveryMode) -> Result<DB, rocksdb::Error> {
    DB::open_cf_descriptors(&db_options(mode), path, descriptors(families))
}

/// A store RocksDB does not open: damage is a problem of the report (which
/// `repair` rebuilds), anything else (permissions, say) an error.
fn unopenable(mut report: Report, path: &Path, e: rocksdb::Error) -> Result<Report, CheckError> {
    let message = e.to_string();
    // A file of the store's own missing (its MANIFEST, a table file) is damage too; a permission is not.
    let missing = e.kind() == ErrorKind::IOError
        && !message.contains("Permission denied")
        && ["MANIFEST", "CURRENT", ".sst"].iter().any(|f| message.contains(f));
    if e.kind() != ErrorKind::Corruption && !missing {
        return Err(CheckError::Open(format!("cannot open the store at {}: {e}", path.display())));
    }
    report.problem("store", b"-", Kind::Storage, Fix::Rebuild, format!("the store does not open: {e}"));
    report.finish();
    Ok(report)
}

/// Refuses a store stamped with a format newer than this cairn's: its records would look damaged.
fn refuse_newer_format(db: &DB, data_dir: &Path) -> Result<(), CheckError> {
    let Some(meta) = db.cf_handle(Cf::Meta.name()) else { return Ok(()) };
    if let Ok(Some(v)) = db.get_cf(meta, keys::STORE_FORMAT) {
        if v.first().copied().unwrap_or(0) > codec::FORMAT {
            return Err(CheckError::Refused(format!(
                "{} was written in store format {} by a newer cairn; this one reads format {} and older: check it with that cairn",
                data_dir.display(),
                v[0],
                codec::FORMAT
            )));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Reading every record, past damaged blocks

/// A part of a table that does not read.
struct Damage {
    error: String,
    /// The last key read before it.
    after: Option<Vec<u8>>,
    /// How to show the end of the range: `to the end` (the rest of the table
    /// does not read), `before KEY` (reading went on at KEY), or `through KEY`
    /// when reading went on just past KEY (a block's last key, as RocksDB's
    /// index knows it).
    end: String,
    /// The table files the error names, described.
    files: Vec<String>,
    /// The keys of the skipped range as read without checksums (the keys
    /// themselves may be damaged), and whether that read got through.
    lost: Vec<Vec<u8>>,
    lost_complete: bool,
}

impl Damage {
    fn range(&self) -> String {
        let from = self.after.as_deref().map(|k| format!("after {}", show_key(k))).unwrap_or_else(|| "from the start".into());
        format!("{from} … {}", self.end)
    }

    fn describe(&self) -> String {
        let files = if self.files.is_empty() { String::new() } else { format!(" in table file {}", self.files.join(", ")) };
        let shown: Vec<String> = self.lost.iter().take(20).map(|k| show_key(k)).collect();
        let more = if self.lost.len() > 20 { format!(", … ({} more)", self.lost.len() - 20) } else { String::new() };
        let incomplete = if self.lost_complete { "" } else { " (reading them without checksums stopped early too)" };
        format!(
            "cannot be read{files}: {}; {} record(s) in this range, as read without checksums{incomplete}: {}{more}",
            self.error,
            self.lost.len(),
            shown.join(", ")
        )
    }
}

fn read_options(verify: bool) -> ReadOptions {
    let mut o = ReadOptions::default();
    o.set_verify_checksums(verify);
    o.fill_cache(false);
    o
}

/// Visits every record of the column family `cf` in key order, with
/// checksums verified. A part that does not read is handed to `damaged`
/// and skipped: reading goes on at the smallest key past it that reads.
fn read_table(db: &DB, live: &[LiveFile], cf: &str, visit: &mut dyn FnMut(&[u8], &[u8]), damaged: &mut dyn FnMut(Damage)) {
    let Some(handle) = db.cf_handle(cf) else { return };
    let mut start: Option<Vec<u8>> = None;
    let mut last: Option<Vec<u8>> = None;
    loop {
        let mut it = db.raw_iterator_cf_opt(handle, read_options(true));
        match &start {
            Some(s) => it.seek(s),
            None => it.seek_to_first(),
        }
        while it.valid() {
            if let (Some(k), Some(v)) = (it.key(), it.value()) {
                visit(k, v);
                last = Some(k.to_vec());
            }
            it.next();
        }
        let Err(e) = it.status() else { return };
        drop(it);
        let error = e.to_string();
        let named = named_files(&error, cf, live);
        let files: Vec<String> = named.iter().map(|f| describe_file(f)).collect();
        // Bisect between the last key read and just past the damaged file's keys.
        let after = match (&last, &start) {
            (Some(l), Some(s)) => Some(l.max(s).clone()),
            (l, s) => l.clone().or_else(|| s.clone()),
        };
        let limit = named.iter().filter_map(|f| f.end_key.clone()).max().map(successor);
        let skipped = limit.and_then(|limit| skip_damage(db, handle, after.as_deref().unwrap_or(b""), &limit));
        let skipped = skipped.filter(|(r, _)| start.as_ref().is_none_or(|s| r > s) && last.as_ref().is_none_or(|l| r > l));
        let (resume, end) = match skipped {
            Some((r, end)) => (Some(r), end),
            None => (None, "to the end".to_string()),
        };
        let (lost, lost_complete) = lenient_keys(db, handle, after.as_deref(), resume.as_deref());
        damaged(Damage { error, after, end, files, lost, lost_complete });
        match resume {
            Some(r) => start = Some(r),
            None => return,
        }
    }
}

/// The live table files of `cf` whose names (`000123.sst`) `error` mentions.
fn named_files<'l>(error: &str, cf: &str, live: &'l [LiveFile]) -> Vec<&'l LiveFile> {
    live.iter()
        .filter(|f| f.column_family_name == cf)
        .filter(|f| {
            let name = f.name.trim_start_matches('/');
            !name.is_empty() && error.contains(name)
        })
        .collect()
}

fn describe_file(f: &LiveFile) -> String {
    let key = |k: &Option<Vec<u8>>| k.as_deref().map(show_key).unwrap_or_default();
    format!(
        "{} (level {}, {} entries, keys {} … {})",
        f.name.trim_start_matches('/'),
        f.level,
        f.num_entries,
        key(&f.start_key),
        key(&f.end_key)
    )
}

/// The smallest key greater than `k`.
fn successor(mut k: Vec<u8>) -> Vec<u8> {
    k.push(0);
    k
}

/// Whether seeking to `target` reads without an error.
fn seeks(db: &DB, cf: &rocksdb::ColumnFamily, target: &[u8]) -> bool {
    let mut it = db.raw_iterator_cf_opt(cf, read_options(true));
    it.seek(target);
    it.status().is_ok()
}

/// Where to go on past a damaged block: the smallest key in (`after`,
/// `limit`] that seeks without an error, found by bisection over keys as
/// fixed-width numbers. Seeking to a key inside the damaged block fails;
/// past the block's last key it reads the next block. (With two damaged
/// blocks in one file the bisection may skip the good part between them.)
/// Also how to show the end of the skipped range.
fn skip_damage(db: &DB, cf: &rocksdb::ColumnFamily, after: &[u8], limit: &[u8]) -> Option<(Vec<u8>, String)> {
    if !seeks(db, cf, limit) {
        // More damage at the limit itself: go on there, and meet it next.
        return Some((limit.to_vec(), format!("before {}", show_key(limit))));
    }
    let width = after.len().max(limit.len()) + 1;
    let pad = |k: &[u8]| {
        let mut v = k.to_vec();
        v.resize(width, 0);
        v
    };
    let (mut lo, mut hi) = (pad(after), pad(limit));
    while let Some(mid) = midpoint(&lo, &hi) {
        if seeks(db, cf, &mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    // The padding's zeroes would step over a key that is `hi` without them.
    let mut trimmed = hi.clone();
    while trimmed.last() == Some(&0) && trimmed.len() > 1 {
        trimmed.pop();
    }
    if trimmed.as_slice() > after && seeks(db, cf, &trimmed) {
        let end = format!("before {}", show_key(&trimmed));
        return Some((trimmed, end));
    }
    // `hi` is the smallest key past `trimmed` (zeroes aside): the damage reaches through it.
    Some((hi, format!("through {}", show_key(&trimmed))))
}

/// The number halfway between `lo` and `hi` (same width, big-endian), if
/// there is one strictly between them.
fn midpoint(lo: &[u8], hi: &[u8]) -> Option<Vec<u8>> {
    // sum = lo + hi, one byte wider
    let mut sum = vec![0u8; lo.len() + 1];
    let mut carry = 0u16;
    for i in (0..lo.len()).rev() {
        let s = lo[i] as u16 + hi[i] as u16 + carry;
        sum[i + 1] = s as u8;
        carry = s >> 8;
    }
    sum[0] = carry as u8;
    // halve, dropping the extra byte
    let mut mid = vec![0u8; lo.len()];
    let mut rem = 0u16;
    for (i, b) in sum.iter().enumerate() {
        let cur = (rem << 8) | *b as u16;
        if i > 0 {
            mid[i - 1] = (cur >> 1) as u8;
        }
        rem = cur & 1;
    }
    (mid.as_slice() > lo && mid.as_slice() < hi).then_some(mid)
}

/// The keys strictly after `after` and before `before`, read without
/// checksums; and whether that read got through the range.
fn lenient_keys(db: &DB, cf: &rocksdb::ColumnFamily, after: Option<&[u8]>, before: Option<&[u8]>) -> (Vec<Vec<u8>>, bool) {
    let mut out = Vec::new();
    let mut it = db.raw_iterator_cf_opt(cf, read_options(false));
    match after {
        Some(a) => it.seek(successor(a.to_vec())),
        None => it.seek_to_first(),
    }
    while it.valid() {
        let Some(k) = it.key() else { break };
        if before.is_some_and(|b| k >= b) {
            return (out, true);
        }
        out.push(k.to_vec());
        if out.len() >= 100_000 {
            return (out, false);
        }
        it.next();
    }
    (out, it.status().is_ok())
}

// ---------------------------------------------------------------------------
// Checking every record

/// A problem found across tables: table, key, kind, repair, the value to write, what.
type Found = (&'static str, String, Kind, Fix, Vec<u8>, String);

/// What a check knows about one instance.
struct InstanceInfo {
    fence: u64,
    version: String,
    status: Status,
}

/// One pass over every table.
struct Scan<'a, 'p> {
    db: &'a DB,
    families: Vec<String>,
    /// The live table files (for naming damaged ones).
    files: Vec<LiveFile>,
    report: Report,
    progress: Progress<'p>,
    definitions: HashSet<String>,
    components: HashSet<String>,
    instances: HashMap<String, InstanceInfo>,
    /// Instances whose snapshot is stored but does not decode (repair drops it).
    undecodable: HashSet<String>,
    /// Instances whose snapshot is in a damaged part of a table file (as read without checksums).
    unreadable: HashSet<String>,
    /// The ids in the live index, and whether its built mark is stored (meta `live-index`).
    live_ids: HashSet<String>,
    live_index_built: bool,
    /// Fences as stored (`None`: the value is not a fence).
    fences: HashMap<String, Option<u64>>,
    resource_names: HashSet<String>,
    orphan_resource_rows: BTreeMap<String, u64>,
    unknown_meta: Vec<String>,
}

impl<'a, 'p> Scan<'a, 'p> {
    fn new(db: &'a DB, families: &[String], report: Report, progress: Progress<'p>) -> Scan<'a, 'p> {
        Scan {
            db,
            families: families.to_vec(),
            files: db.live_files().unwrap_or_default(),
            report,
            progress,
            definitions: HashSet::new(),
            components: HashSet::new(),
            instances: HashMap::new(),
            undecodable: HashSet::new(),
            unreadable: HashSet::new(),
            live_ids: HashSet::new(),
            live_index_built: false,
            fences: HashMap::new(),
            resource_names: HashSet::new(),
            orphan_resource_rows: BTreeMap::new(),
            unknown_meta: Vec::new(),
        }
    }

    fn run(&mut self) {
        // Tables that others refer to come first; the live index (read by its
        // name: not every store has it) after the snapshots and meta.
        let mut order: Vec<(&'static str, Option<Cf>)> = [
            Cf::Definitions,
            Cf::Components,
            Cf::Instances,
            Cf::Fences,
            Cf::ResourceNames,
            Cf::Inbox,
            Cf::Outbox,
            Cf::Timers,
            Cf::Correlations,
            Cf::Messages,
            Cf::History,
            Cf::Replies,
            Cf::Meta,
            Cf::InTransit,
            Cf::Resources,
            Cf::Tokens,
        ]
        .iter()
        .map(|cf| (cf.name(), Some(*cf)))
        .collect();
        order.push((LIVE, None));
        let mut counts: HashMap<&'static str, u64> = HashMap::new();
        for (name, cf) in order {
            if !self.families.iter().any(|f| f == name) {
                continue;
            }
            let db = self.db;
            let files = std::mem::take(&mut self.files);
            let mut n = 0u64;
            let mut damages = Vec::new();
            read_table(
                db,
                &files,
                name,
                &mut |k, v| {
                    n += 1;
                    if n.is_multiple_of(PROGRESS_EVERY) {
                        (self.progress)(&format!("{name}: {n} records"));
                    }
                    match cf {
                        Some(cf) => self.record(cf, k, v),
                        None => self.live_entry(k, v),
                    }
                },
                &mut |d| damages.push(d),
            );
            self.files = files;
            for d in damages {
                if cf == Some(Cf::Instances) {
                    self.unreadable.extend(d.lost.iter().map(|k| String::from_utf8_lossy(k).into_owned()));
                }
                let what = d.describe();
                self.report.problems.push(Problem {
                    table: name.to_string(),
                    key: d.range(),
                    kind: Kind::Storage,
                    what,
                    repair: Fix::Rebuild,
                    raw_key: Vec::new(),
                    put: Vec::new(),
                });
            }
            counts.insert(name, n);
        }
        self.after_tables();
        let mut names: Vec<&str> = Cf::ALL.iter().map(|cf| cf.name()).collect();
        if !names.contains(&LIVE) {
            names.push(LIVE);
        }
        for name in &names {
            if let Some(&records) = counts.get(name) {
                self.report.tables.push(TableSummary { table: name.to_string(), records, problems: 0 });
            }
        }
        for f in &self.families {
            if f != "default" && !names.contains(&f.as_str()) {
                self.report.notes.push(format!("column family {f} is not one this cairn knows: not checked"));
            }
        }
    }

    /// One entry of the index of live instances: instance id -> status name.
    fn live_entry(&mut self, k: &[u8], v: &[u8]) {
        let id = String::from_utf8_lossy(k).into_owned();
        self.live_ids.insert(id.clone());
        if !self.refers(LIVE, k, &id) {
            return;
        }
        let status = self.instances[&id].status;
        if status.is_terminal() {
            let what = format!("instance {id} has ended ({}): it is not live", status.as_str());
            self.report.problem(LIVE, k, Kind::Reference, Fix::Drop, what);
        } else if v != status.as_str().as_bytes() {
            let what = format!("the index says '{}', but the snapshot of instance {id} is {}", show_key(v), status.as_str());
            self.report.problem(LIVE, k, Kind::Reference, Fix::SetIndex, what);
            self.report.problems.last_mut().expect("just pushed").put = status.as_str().as_bytes().to_vec();
        }
    }

    /// Checks one record of `cf`.
    fn record(&mut self, cf: Cf, k: &[u8], v: &[u8]) {
        let table = cf.name();
        match cf {
            Cf::Definitions => {
                if let Some(r) = self.decoded::<DeployedRecord>(cf, k, v) {
                    if r.version.as_bytes() == k {
                        self.definitions.insert(r.version);
                    } else {
                        self.mismatch(cf, k, &format!("the record is version {}", r.version));
                    }
                }
            }
            Cf::Components => {
                // An external activity's component is empty: it has none.
                if v.is_empty() || v.starts_with(b"\0asm") {
                    self.components.insert(String::from_utf8_lossy(k).into_owned());
                } else {
                    let what = "not a WebAssembly component (it does not start with \\0asm)".into();
                    self.report.problem(table, k, Kind::Decode, Fix::Drop, what);
                }
            }
            Cf::Instances => {
                let id = String::from_utf8_lossy(k).into_owned();
                match self.decoded::<Snapshot>(cf, k, v) {
                    Some(s) if s.id.as_bytes() == k => {
                        self.instances.insert(id, InstanceInfo { fence: s.fence, version: s.version, status: s.status });
                    }
                    Some(s) => {
                        self.mismatch(cf, k, &format!("the snapshot is of instance {}", s.id));
                        self.undecodable.insert(id);
                    }
                    None => {
                        self.undecodable.insert(id);
                    }
                }
            }
            Cf::Fences => {
                let id = String::from_utf8_lossy(k).into_owned();
                if v.len() == 8 {
                    self.fences.insert(id, Some(keys::trailing_u64(v)));
                } else {
                    let what = format!("not a fence: {} bytes, not 8", v.len());
                    match self.instances.get(&id) {
                        Some(i) => {
                            let fence = i.fence;
                            self.report.problem(table, k, Kind::Decode, Fix::SetFence, what);
                            self.report.problems.last_mut().expect("just pushed").put = fence.to_be_bytes().to_vec();
                        }
                        None => self.report.problem(table, k, Kind::Decode, Fix::Drop, what),
                    }
                    self.fences.insert(id, None);
                }
            }
            Cf::Inbox => {
                let Some((id, seq)) = self.scoped(cf, k) else { return };
                if let Some(d) = self.decoded::<Delivery>(cf, k, v) {
                    if d.seq != seq {
                        return self.mismatch(cf, k, &format!("the delivery's sequence number is {}", d.seq));
                    }
                    self.refers(cf.name(), k, &id);
                }
            }
            Cf::Outbox => {
                let Some((id, _)) = self.scoped(cf, k) else { return };
                if self.decoded::<Effect>(cf, k, v).is_some() {
                    self.refers(cf.name(), k, &id);
                }
            }
            Cf::Timers => match keys::parse_timer(k) {
                Some(t) => {
                    self.refers(cf.name(), k, &t.instance);
                }
                None => self.report.problem(table, k, Kind::Decode, Fix::Drop, "not a timer key (due, instance, timer id)".into()),
            },
            Cf::Correlations => {
                let parts: Vec<&[u8]> = k.splitn(3, |b| *b == 0).collect();
                if parts.len() != 3 || parts.iter().any(|p| std::str::from_utf8(p).is_err()) {
                    return self.report.problem(table, k, Kind::Decode, Fix::Drop, "not a correlation key (process, set, values)".into());
                }
                match std::str::from_utf8(v) {
                    Ok(id) if !id.is_empty() => {
                        self.refers(cf.name(), k, &id.to_string());
                    }
                    _ => self.report.problem(table, k, Kind::Decode, Fix::Drop, "the value is not an instance id".into()),
                }
            }
            Cf::Messages => {
                self.decoded::<IntakeRecord>(cf, k, v);
            }
            Cf::History => {
                let Some((id, fence)) = self.scoped(cf, k) else { return };
                if let Some(e) = self.decoded::<HistoryEntry>(cf, k, v) {
                    if e.fence != fence {
                        return self.mismatch(cf, k, &format!("the entry's fence is {}", e.fence));
                    }
                    if self.refers(cf.name(), k, &id) {
                        let at = self.instances[&id].fence;
                        if fence > at {
                            self.report.problem(
                                table,
                                k,
                                Kind::Reference,
                                Fix::Drop,
                                format!("a history entry at fence {fence}, beyond the snapshot of instance {id} (fence {at})"),
                            );
                        }
                    }
                }
            }
            Cf::Replies => {
                self.decoded::<Reply>(cf, k, v);
            }
            Cf::Meta => self.meta(k, v),
            Cf::InTransit => {
                let Some((id, call_id)) = self.scoped(cf, k) else { return };
                if let Some(t) = self.decoded::<InTransit>(cf, k, v) {
                    if t.instance != id || t.call_id != call_id {
                        return self.mismatch(cf, k, &format!("the record is call {} of instance {}", t.call_id, t.instance));
                    }
                    self.refers(cf.name(), k, &id);
                }
            }
            Cf::Resources => {
                let Some(at) = k.iter().position(|b| *b == 0) else {
                    return self.report.problem(table, k, Kind::Decode, Fix::Drop, "not a resource row key (name, key)".into());
                };
                let (Ok(name), Ok(key)) = (std::str::from_utf8(&k[..at]), std::str::from_utf8(&k[at + 1..])) else {
                    return self.report.problem(table, k, Kind::Decode, Fix::Drop, "the resource name or key is not UTF-8".into());
                };
                if let Err(e) = parse_resource(name, key, v) {
                    return self.report.problem(table, k, Kind::Decode, Fix::Drop, reason(e));
                }
                if !self.resource_names.contains(name) {
                    *self.orphan_resource_rows.entry(name.to_string()).or_default() += 1;
                }
            }
            Cf::ResourceNames => {
                if let Some(r) = self.decoded::<ResourceInfo>(cf, k, v) {
                    if r.name.as_bytes() == k {
                        self.resource_names.insert(r.name);
                    } else {
                        self.mismatch(cf, k, &format!("the record is resource {}", r.name));
                    }
                }
            }
            Cf::Tokens => {
                if let Some(t) = self.decoded::<TokenRecord>(cf, k, v) {
                    if t.id.as_bytes() != k {
                        self.mismatch(cf, k, &format!("the record is token {}", t.id));
                    }
                }
            }
            // Tables this check reads by name (the live index), if this build's `Cf` has them.
            #[allow(unreachable_patterns)]
            _ => {}
        }
    }

    fn meta(&mut self, k: &[u8], v: &[u8]) {
        let table = Cf::Meta.name();
        if let Some(rest) = k.strip_prefix(keys::BREAKPOINT) {
            let ok = std::str::from_utf8(rest).ok().and_then(|r| r.split_once('\0')).is_some();
            if !ok {
                self.report.problem(table, k, Kind::Decode, Fix::Drop, "not a breakpoint key (process, activity path)".into());
            }
        } else if let Some(id) = k.strip_prefix(keys::PARKED) {
            self.refers(Cf::Meta.name(), k, &String::from_utf8_lossy(id).into_owned());
        } else if k == keys::STORE_FORMAT {
            if v.len() != 1 {
                self.report.problem(table, k, Kind::Decode, Fix::None, format!("the store format is {} bytes, not one", v.len()));
            }
        } else if k == LIVE_INDEX_MARK {
            self.live_index_built = true;
        } else if k != keys::CLEAN_SHUTDOWN && k != keys::ISOLATED {
            self.unknown_meta.push(show_key(k));
        }
    }

    /// The record decoded as a `T`, or a problem (dropped by repair).
    fn decoded<T: DeserializeOwned>(&mut self, cf: Cf, k: &[u8], v: &[u8]) -> Option<T> {
        match decode::<T>(cf.name(), &show_key(k), v) {
            Ok(t) => Some(t),
            Err(e) => {
                self.report.problem(cf.name(), k, Kind::Decode, Fix::Drop, reason(e));
                None
            }
        }
    }

    /// A record that decodes but is not the one its key says.
    fn mismatch(&mut self, cf: Cf, k: &[u8], found: &str) {
        self.report.problem(cf.name(), k, Kind::Decode, Fix::Drop, format!("does not belong under its key: {found}"));
    }

    /// The instance and number of an instance-scoped key, or a problem.
    fn scoped(&mut self, cf: Cf, k: &[u8]) -> Option<(String, u64)> {
        let ok = k.len() >= 9 && k[k.len() - 9] == 0;
        let id = ok.then(|| std::str::from_utf8(&k[..k.len() - 9]).ok()).flatten();
        match id {
            Some(id) if !id.is_empty() && !id.contains('\0') => Some((id.to_string(), keys::trailing_u64(k))),
            _ => {
                let what = "not an instance-scoped key (instance id, 0, a number)".into();
                self.report.problem(cf.name(), k, Kind::Decode, Fix::Drop, what);
                None
            }
        }
    }

    /// Whether instance `id` is stored (and decodes); if not, a problem (dropped by repair).
    fn refers(&mut self, table: &str, k: &[u8], id: &String) -> bool {
        if self.instances.contains_key(id) {
            return true;
        }
        let what = if self.undecodable.contains(id) {
            format!("refers to instance {id}, whose snapshot does not decode (repair drops both)")
        } else if self.unreadable.contains(id) {
            format!("refers to instance {id}, whose snapshot is in a damaged part of a table file (lost to repair)")
        } else {
            format!("refers to instance {id}, which is not stored")
        };
        self.report.problem(table, k, Kind::Reference, Fix::Drop, what);
        false
    }

    /// The checks across tables, once every table is read.
    fn after_tables(&mut self) {
        let mut ids: Vec<&String> = self.instances.keys().collect();
        ids.sort();
        let mut problems: Vec<Found> = Vec::new();
        for id in ids {
            let info = &self.instances[id];
            let fence = info.fence.to_be_bytes().to_vec();
            match self.fences.get(id) {
                None => {
                    let what = format!("instance {id} has no fence (its snapshot is at fence {})", info.fence);
                    problems.push((Cf::Fences.name(), id.clone(), Kind::Reference, Fix::SetFence, fence, what));
                }
                Some(Some(f)) if *f != info.fence => {
                    let what = format!("the fence of instance {id} is {f}, but its snapshot is at fence {}: the host could not write it", info.fence);
                    problems.push((Cf::Fences.name(), id.clone(), Kind::Reference, Fix::SetFence, fence, what));
                }
                _ => {}
            }
            if self.live_index_built && !info.status.is_terminal() && !self.live_ids.contains(id) {
                let what = format!("instance {id} is {} but not in the index of live instances: recovery would not find it", info.status.as_str());
                problems.push((LIVE, id.clone(), Kind::Reference, Fix::SetIndex, info.status.as_str().as_bytes().to_vec(), what));
            }
            let v = &info.version;
            let missing = if !self.definitions.contains(v) {
                Some("which has no definition record")
            } else if !self.components.contains(v) {
                Some("whose component bytes are lost")
            } else {
                None
            };
            if let Some(missing) = missing {
                let what = format!(
                    "pinned to version {v}, {missing}: it does not run until that component is deployed again (the same bytes and grants give the same version) and the host restarted"
                );
                problems.push((Cf::Instances.name(), id.clone(), Kind::Reference, Fix::None, Vec::new(), what));
            }
        }
        let mut versions: Vec<&String> = self.definitions.iter().collect();
        versions.sort();
        for v in versions {
            if !self.components.contains(v) {
                let what = format!(
                    "version {v} has no component bytes, and a host does not start without them: repair drops the definition record; deploy the same component again (the same bytes and grants) to bring the version back"
                );
                problems.push((Cf::Definitions.name(), v.clone(), Kind::Reference, Fix::Drop, Vec::new(), what));
            }
        }
        for (table, key, kind, repair, put, what) in problems {
            self.report.problems.push(Problem { table: table.into(), key: show_key(key.as_bytes()), kind, what, repair, raw_key: key.into_bytes(), put });
        }
        let left = self.fences.keys().filter(|id| !self.instances.contains_key(*id)).count();
        if left > 0 {
            self.report.notes.push(format!(
                "{left} fence(s) of instances that are not stored: harmless, kept (a microflow that keeps no final state leaves its fence behind, and so does an instance lost or dropped)"
            ));
        }
        let unused = self.components.iter().filter(|c| !self.definitions.contains(*c)).count();
        if unused > 0 {
            self.report.notes.push(format!("{unused} component(s) without a definition record: unused"));
        }
        for (name, n) in &self.orphan_resource_rows {
            self.report.notes.push(format!("{n} row(s) of resource {name}, which is not created: unused until it is"));
        }
        if !self.unknown_meta.is_empty() {
            self.report.notes.push(format!("meta keys this cairn does not use: {}", self.unknown_meta.join(", ")));
        }
    }
}

/// The reason of a decode error.
fn reason(e: StoreError) -> String {
    match e {
        StoreError::Integrity { reason, .. } => format!("does not decode: {reason}"),
        other => other.to_string(),
    }
}

// ---------------------------------------------------------------------------
// Repairing

/// Keeps the store as it is as `DATA/before-repair-MS/db`: table files
/// hard-linked (RocksDB never changes one once written), the rest copied.
fn keep_original(data_dir: &Path, path: &Path) -> Result<PathBuf, CheckError> {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    let kept = data_dir.join(format!("before-repair-{ms}"));
    let failed = |e: std::io::Error| CheckError::Open(format!("keeping the original store in {}: {e}", kept.display()));
    link_or_copy_dir(path, &kept.join("db")).map_err(failed)?;
    Ok(kept)
}

fn link_or_copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            link_or_copy_dir(&entry.path(), &target)?;
        } else if entry.path().extension().is_some_and(|x| x == "sst") {
            if std::fs::hard_link(entry.path(), &target).is_err() {
                std::fs::copy(entry.path(), &target)?;
            }
        } else if entry.file_name() != "LOCK" {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// RocksDB's own repair of a store that does not open: a new MANIFEST from
/// the table files; files it cannot read go to `db/lost/`.
fn rocksdb_repair(path: &Path, report: &mut Report) -> Result<(), CheckError> {
    let lost_dir = path.join("lost");
    let listed = |dir: &Path| -> HashSet<String> {
        std::fs::read_dir(dir).map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect()).unwrap_or_default()
    };
    let before = listed(&lost_dir);
    DB::repair(&db_options(DBRecoveryMode::TolerateCorruptedTailRecords), path)
        .map_err(|e| CheckError::Open(format!("RocksDB's repair of {} failed: {e}", path.display())))?;
    report.action("store", "-".into(), "rebuilt", "the store did not open: RocksDB's repair rebuilt its MANIFEST from the table files".into());
    // It also archives the old MANIFEST and the logs it turned into table files there: only table files are lost.
    let mut moved: Vec<String> = listed(&lost_dir).difference(&before).filter(|f| f.ends_with(".sst")).cloned().collect();
    moved.sort();
    for f in moved {
        report.action(
            "store",
            format!("lost/{f}"),
            "lost",
            "RocksDB's repair could not read this table file and moved it to db/lost/: its records are lost (those that belonged to instances are dropped below)".into(),
        );
    }
    Ok(())
}

/// A table's records as (key, hash of the value), in key order.
type Census = HashMap<String, Vec<(Vec<u8>, u64)>>;

fn value_hash(v: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
}

/// Rebuilds the store record by record into a fresh RocksDB: every record
/// that reads with its checksum verified, the damaged ranges left out, the
/// write-ahead log replayed up to its damage. One action per record lost.
fn rebuild(data_dir: &Path, path: &Path, wal_damaged: bool, report: &mut Report, progress: Progress) -> Result<(), CheckError> {
    let open_failed = |e: rocksdb::Error| CheckError::Open(format!("opening {} to rebuild it: {e}", path.display()));
    let families = DB::list_cf(&Options::default(), path).map_err(open_failed)?;
    // What the log holds past its damage, to name the records it loses.
    let everything: Option<Census> = if wal_damaged {
        open_read_only(path, &families, DBRecoveryMode::SkipAnyCorruptedRecord).ok().map(|db| census(&db, &families))
    } else {
        None
    };
    let mode = if wal_damaged { DBRecoveryMode::PointInTime } else { DBRecoveryMode::TolerateCorruptedTailRecords };
    let src = open_read_only(path, &families, mode).map_err(open_failed)?;
    let live = src.live_files().unwrap_or_default();
    let fresh = data_dir.join(format!("db.rebuild-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&fresh);
    let mut opts = db_options(DBRecoveryMode::TolerateCorruptedTailRecords);
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    let dst = DB::open_cf_descriptors(&opts, &fresh, descriptors(&families))
        .map_err(|e| CheckError::Open(format!("creating {}: {e}", fresh.display())))?;
    let mut no_wal = WriteOptions::default();
    no_wal.disable_wal(true);
    let write_failed = |e: rocksdb::Error| CheckError::Open(format!("writing the rebuilt store {}: {e}", fresh.display()));
    let mut kept: Census = HashMap::new();
    for name in &families {
        let to = dst.cf_handle(name).expect("created with every family");
        let mut wb = rocksdb::WriteBatch::default();
        let mut n = 0u64;
        let mut failed = None;
        let mut damages = Vec::new();
        let list = kept.entry(name.clone()).or_default();
        read_table(
            &src,
            &live,
            name,
            &mut |k, v| {
                wb.put_cf(to, k, v);
                if everything.is_some() {
                    list.push((k.to_vec(), value_hash(v)));
                }
                n += 1;
                if n.is_multiple_of(PROGRESS_EVERY) {
                    progress(&format!("rebuilding {name}: {n} records"));
                }
                if wb.size_in_bytes() > 4 << 20 && failed.is_none() {
                    if let Err(e) = dst.write_opt(std::mem::take(&mut wb), &no_wal) {
                        failed = Some(e);
                    }
                }
            },
            &mut |d| damages.push(d),
        );
        if let Some(e) = failed {
            return Err(write_failed(e));
        }
        dst.write_opt(wb, &no_wal).map_err(write_failed)?;
        dst.flush_cf(to).map_err(write_failed)?;
        for d in damages {
            let why = format!("in a damaged part of the store ({}), {}", d.range(), d.describe());
            if d.lost.is_empty() || !d.lost_complete {
                report.action(name, d.range(), "lost", format!("records that could not be read even without checksums: {why}"));
            }
            for k in &d.lost {
                report.action(name, show_key(k), "lost", format!("in a damaged block{}: {}", files_of(&d), d.error));
            }
        }
    }
    drop(dst);
    drop(src);
    if wal_damaged {
        let logs: Vec<String> = wal_files(path).iter().filter_map(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()).collect();
        report.action(
            "wal",
            logs.join(", "),
            "lost",
            "the write-ahead log was replayed up to its damage: the writes in the damaged part cannot be read at all, those logged after it are listed one by one".into(),
        );
    }
    if let Some(everything) = everything {
        for name in &families {
            let before = everything.get(name).map(Vec::as_slice).unwrap_or_default();
            let after = kept.get(name).map(Vec::as_slice).unwrap_or_default();
            let after: HashMap<&[u8], u64> = after.iter().map(|(k, h)| (k.as_slice(), *h)).collect();
            for (k, h) in before {
                match after.get(k.as_slice()) {
                    None => report.action(name, show_key(k), "lost", "written to the write-ahead log after its damage".into()),
                    Some(h2) if h2 != h => report.action(
                        name,
                        show_key(k),
                        "changed",
                        "its value written to the write-ahead log after the damage is lost: the one before stays".into(),
                    ),
                    Some(_) => {}
                }
            }
        }
    }
    // Swap: the original is kept in before-repair-MS.
    std::fs::remove_dir_all(path).map_err(|e| CheckError::Open(format!("removing the damaged {}: {e}", path.display())))?;
    std::fs::rename(&fresh, path).map_err(|e| CheckError::Open(format!("moving {} to {}: {e}", fresh.display(), path.display())))?;
    report.action("store", "-".into(), "rebuilt", "copied record by record: every record that reads with its checksum verified".into());
    Ok(())
}

fn files_of(d: &Damage) -> String {
    if d.files.is_empty() {
        String::new()
    } else {
        format!(" of {}", d.files.iter().map(|f| f.split(' ').next().unwrap_or("")).collect::<Vec<_>>().join(", "))
    }
}

/// Every record readable with checksums verified, as (key, hash of the value).
fn census(db: &DB, families: &[String]) -> Census {
    let live = db.live_files().unwrap_or_default();
    let mut out = Census::new();
    for name in families {
        let list = out.entry(name.clone()).or_default();
        read_table(db, &live, name, &mut |k, v| list.push((k.to_vec(), value_hash(v))), &mut |_| {});
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CorrelationKey, Location, TimerKey, Write, WriteBatch};

    #[test]
    fn midpoint_is_strictly_between() {
        assert_eq!(midpoint(&[0, 0], &[0, 4]), Some(vec![0, 2]));
        assert_eq!(midpoint(&[0, 255], &[1, 1]), Some(vec![1, 0]));
        assert_eq!(midpoint(&[0, 1], &[0, 2]), None);
        assert_eq!(midpoint(&[255, 255], &[255, 255]), None);
        assert_eq!(midpoint(&[200, 0], &[255, 0]), Some(vec![227, 128]));
    }

    fn temp(tag: &str) -> PathBuf {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let p = std::env::temp_dir().join(format!("cairn-check-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    fn id(i: usize) -> String {
        format!("inst-{i:05}")
    }

    /// A store of `n` instances (each with a fence, history entry, inbox
    /// entry, timer and correlation) of one deployed version; `flush`
    /// writes them into table files, else they stay in the write-ahead log.
    fn populate(dir: &Path, n: usize, flush: bool) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let store = crate::open(&Location::Embedded { data_dir: dir.to_path_buf() }, false).await.unwrap();
            let record: DeployedRecord = serde_json::from_value(serde_json::json!({
                "name": "p", "version": "v1", "kind": "process", "deployed_ms": 0, "size": 8, "definition": null,
            }))
            .unwrap();
            let mut b = WriteBatch::new();
            b.push(Write::Definition { record: Box::new(record), component: b"\0asm\x01\0\0\0".to_vec() });
            store.commit(b).await.unwrap();
            for i in 0..n {
                let id = id(i);
                let snap: Snapshot = serde_json::from_value(serde_json::json!({
                    "id": id, "process": "p", "version": "v1", "status": "waiting",
                    "variables": format!(r#"{{"payload":"{}"}}"#, "x".repeat(600)),
                    "stack": [{ "node": 0, "phase": "await-timer", "timer_id": 1, "due_ms": 0 }],
                    "correlations": {}, "requests": [], "fault": null, "next_id": 2, "fence": 1, "created_ms": 0, "updated_ms": 0,
                }))
                .unwrap();
                let mut b = WriteBatch::new();
                b.fence(&id, 0, 1);
                let entry: HistoryEntry = serde_json::from_value(serde_json::json!({
                    "fence": 1, "at_ms": 0, "reason": "created", "status": "waiting", "path": "",
                }))
                .unwrap();
                b.push(Write::History { instance: id.clone(), entry });
                let delivery = Delivery { seq: i as u64, message_id: format!("m{i}"), operation: "go".into(), body: "{}".into() };
                b.push(Write::Inbox { instance: id.clone(), delivery });
                b.push(Write::Timer(TimerKey { due_ms: 1000 + i as u64, instance: id.clone(), timer_id: 1 }));
                let key = CorrelationKey { process: "p".into(), set: "order".into(), values: format!("[{i}]") };
                b.push(Write::Correlation { key, instance: id.clone() });
                b.push(Write::Instance(Box::new(snap)));
                store.commit(b).await.unwrap();
            }
            if flush {
                store.flush().await.unwrap();
            }
            store.close().await;
        });
    }

    /// Opens the store's RocksDB directly (every family), for writing damage.
    fn raw(dir: &Path) -> DB {
        let path = dir.join("db");
        let families = DB::list_cf(&Options::default(), &path).unwrap();
        open_read_write(&path, &families, DBRecoveryMode::TolerateCorruptedTailRecords).unwrap()
    }

    fn instance_count(dir: &Path) -> usize {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let store = crate::open(&Location::Embedded { data_dir: dir.to_path_buf() }, false).await.unwrap();
            let n = store.instances(&Default::default(), usize::MAX).await.unwrap().len();
            store.close().await;
            n
        })
    }

    fn summary(r: &Report) -> String {
        serde_json::to_string_pretty(r).unwrap()
    }

    #[test]
    fn a_clean_store_checks_clean_and_repair_changes_nothing() {
        let dir = temp("clean");
        populate(&dir, 20, true);
        let r = check(&dir).unwrap();
        assert!(r.clean, "{}", summary(&r));
        let instances = r.tables.iter().find(|t| t.table == "instances").unwrap();
        assert_eq!(instances.records, 20);
        let r = repair(&dir).unwrap();
        assert!(r.clean && r.actions.is_empty(), "{}", summary(&r));
        assert!(!std::fs::read_dir(&dir).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().starts_with("before-repair")));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_undecodable_snapshot_is_reported_by_key_and_repair_drops_it_and_what_refers_to_it() {
        let dir = temp("undecodable");
        populate(&dir, 10, true);
        {
            let db = raw(&dir);
            db.put_cf(db.cf_handle("instances").unwrap(), id(3), b"\x01{not json").unwrap();
            db.put_cf(db.cf_handle("fences").unwrap(), id(5), 7u64.to_be_bytes()).unwrap();
            let ghost = Delivery { seq: 1, message_id: "m".into(), operation: "go".into(), body: "{}".into() };
            db.put_cf(db.cf_handle("inbox").unwrap(), keys::instance_scoped("ghost", 1), codec::encode(&ghost)).unwrap();
        }
        let r = check(&dir).unwrap();
        assert!(!r.clean);
        let find = |table: &str, key: &str| r.problems.iter().find(|p| p.table == table && p.key.starts_with(key));
        let p = find("instances", &id(3)).unwrap_or_else(|| panic!("{}", summary(&r)));
        assert_eq!((p.kind, p.repair), (Kind::Decode, Fix::Drop));
        for table in ["inbox", "history", "timers", "correlations"] {
            assert!(r.problems.iter().any(|p| p.table == table && p.what.contains(&id(3))), "{table}: {}", summary(&r));
        }
        let p = find("fences", &id(5)).unwrap();
        assert_eq!(p.repair, Fix::SetFence);
        let p = find("inbox", "ghost").unwrap();
        assert!(p.what.contains("not stored"), "{}", p.what);
        let r = repair(&dir).unwrap();
        assert!(r.clean, "{}", summary(&r));
        // The snapshot, the ghost's inbox entry, and the victim's inbox entry, timer, correlation and history
        // (and its live index entry, where the store has that index).
        let dropped: Vec<&Action> = r.actions.iter().filter(|a| a.action == "dropped" && a.table != LIVE).collect();
        assert_eq!(dropped.len(), 6, "{}", summary(&r));
        assert!(r.actions.iter().any(|a| a.action == "set-fence" && a.key == id(5)));
        assert!(r.actions.iter().any(|a| a.action == "kept"));
        assert_eq!(instance_count(&dir), 9);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_live_index_is_checked_against_the_snapshots_and_rewritten_from_them() {
        let dir = temp("live");
        populate(&dir, 5, true);
        {
            let db = raw(&dir);
            let Some(live) = db.cf_handle(LIVE) else { return }; // a store without the index
            if db.get_cf(db.cf_handle("meta").unwrap(), LIVE_INDEX_MARK).unwrap().is_none() {
                return;
            }
            db.put_cf(live, id(1), b"running").unwrap();
            db.delete_cf(live, id(2)).unwrap();
            db.put_cf(live, "ghost", b"waiting").unwrap();
        }
        let r = check(&dir).unwrap();
        let find = |key: &str| r.problems.iter().find(|p| p.table == LIVE && p.key == key).unwrap_or_else(|| panic!("{key}: {}", summary(&r)));
        assert_eq!(find(&id(1)).repair, Fix::SetIndex);
        assert_eq!(find(&id(2)).repair, Fix::SetIndex);
        assert_eq!(find("ghost").repair, Fix::Drop);
        let r = repair(&dir).unwrap();
        assert!(r.clean, "{}", summary(&r));
        assert_eq!(r.actions.iter().filter(|a| a.action == "set-index").count(), 2, "{}", summary(&r));
        let db = raw(&dir);
        let live = db.cf_handle(LIVE).unwrap();
        assert_eq!(db.get_cf(live, id(1)).unwrap().as_deref(), Some(&b"waiting"[..]));
        assert_eq!(db.get_cf(live, id(2)).unwrap().as_deref(), Some(&b"waiting"[..]));
        assert_eq!(db.get_cf(live, "ghost").unwrap(), None);
        drop(db);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The largest table file of the store.
    fn largest_sst(dir: &Path) -> PathBuf {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("db"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "sst"))
            .collect();
        files.sort_by_key(|p| std::fs::metadata(p).unwrap().len());
        files.pop().expect("a table file")
    }

    #[test]
    fn a_flipped_byte_in_a_table_file_is_found_and_repair_loses_only_its_block() {
        let dir = temp("flipped");
        populate(&dir, 400, true);
        let sst = largest_sst(&dir);
        let mut bytes = std::fs::read(&sst).unwrap();
        let mid = bytes.len() / 3;
        bytes[mid] ^= 0x5a;
        std::fs::write(&sst, &bytes).unwrap();
        let r = check(&dir).unwrap();
        let p = r.problems.iter().find(|p| p.kind == Kind::Storage).unwrap_or_else(|| panic!("{}", summary(&r)));
        assert_eq!(p.table, "instances", "{}", summary(&r));
        let name = sst.file_name().unwrap().to_string_lossy().into_owned();
        assert!(p.what.contains(&name), "{}", p.what);
        // Read on past the damage: the instances after it are counted.
        let read = r.tables.iter().find(|t| t.table == "instances").unwrap().records;
        assert!(read > 380 && read < 400, "{read} instances read\n{}", summary(&r));
        let r = repair(&dir).unwrap();
        assert!(r.clean, "{}", summary(&r));
        // Each lost record is named; those the flipped byte left unreadable
        // even without checksums are not, and then one action names the
        // damaged range instead.
        let lost: Vec<_> = r.actions.iter().filter(|a| a.table == "instances" && a.action == "lost").collect();
        let named = lost.iter().filter(|a| a.reason.starts_with("in a damaged block")).count() as u64;
        let ranges = lost.len() as u64 - named;
        assert!(named <= 400 - read, "{named} named for {} lost\n{}", 400 - read, summary(&r));
        assert_eq!(ranges, u64::from(named < 400 - read), "{}", summary(&r));
        assert_eq!(instance_count(&dir) as u64, read);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The table file of `family` with the most entries.
    fn table_file(dir: &Path, family: &str) -> PathBuf {
        let path = dir.join("db");
        let families = DB::list_cf(&Options::default(), &path).unwrap();
        let db = open_read_only(&path, &families, DBRecoveryMode::TolerateCorruptedTailRecords).unwrap();
        let f = db.live_files().unwrap().into_iter().filter(|f| f.column_family_name == family).max_by_key(|f| f.num_entries).unwrap();
        path.join(f.name.trim_start_matches('/'))
    }

    #[test]
    fn a_table_file_whose_footer_is_damaged_is_moved_aside_by_rocksdb_repair_and_its_instances_entries_dropped() {
        let dir = temp("footer");
        populate(&dir, 30, true);
        let sst = table_file(&dir, "instances");
        let mut bytes = std::fs::read(&sst).unwrap();
        let n = bytes.len();
        bytes[n - 3] ^= 0x20;
        std::fs::write(&sst, &bytes).unwrap();
        let r = check(&dir).unwrap();
        assert!(!r.clean);
        assert!(r.problems.iter().any(|p| p.table == "store" && p.repair == Fix::Rebuild), "{}", summary(&r));
        assert!(!r.problems.iter().any(|p| p.table == "wal"), "not the log's fault: {}", summary(&r));
        let r = repair(&dir).unwrap();
        assert!(r.clean, "{}", summary(&r));
        let name = sst.file_name().unwrap().to_string_lossy().into_owned();
        assert!(r.actions.iter().any(|a| a.action == "lost" && a.key == format!("lost/{name}")), "{}", summary(&r));
        assert!(!r.actions.iter().any(|a| a.action == "lost" && !a.key.ends_with(".sst")), "{}", summary(&r));
        // Every instance was in that file: what belonged to them is dropped.
        assert_eq!(instance_count(&dir), 0);
        assert!(r.actions.iter().filter(|a| a.action == "dropped" && a.table == "timers").count() == 30, "{}", summary(&r));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_write_ahead_log_damaged_in_the_middle_is_found_and_repair_names_what_is_lost() {
        let dir = temp("wal");
        populate(&dir, 200, false);
        let db = dir.join("db");
        let log = wal_files(&db).pop().expect("a write-ahead log");
        let mut bytes = std::fs::read(&log).unwrap();
        let mid = bytes.len() / 2;
        for b in &mut bytes[mid..mid + 16] {
            *b ^= 0xff;
        }
        std::fs::write(&log, &bytes).unwrap();
        let r = check(&dir).unwrap();
        assert!(r.problems.iter().any(|p| p.table == "wal" && p.kind == Kind::Storage), "{}", summary(&r));
        let seen = r.tables.iter().find(|t| t.table == "instances").unwrap().records;
        assert!(seen > 50 && seen < 200, "{seen}");
        let r = repair(&dir).unwrap();
        assert!(r.clean, "{}", summary(&r));
        let lost = r.actions.iter().filter(|a| a.table == "instances" && a.action == "lost").count();
        // Those in the damaged part itself cannot be named.
        assert!(lost > 0 && lost as u64 <= 200 - seen, "{lost} lost\n{}", summary(&r));
        assert!(r.actions.iter().any(|a| a.table == "wal" && a.action == "lost"), "{}", summary(&r));
        assert_eq!(instance_count(&dir) as u64, seen);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
