//! The audit log on real files: verify passes on intact logs and names the
//! first deleted, altered, reordered or cut record, across rotations and
//! restarts; a full disk (a tiny tmpfs) loses nothing the backlog can hold
//! and marks what it could not.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use nstrail::{
    audit::{rotated, verify, Verdict},
    event::{Event, EventBody},
    export::{
        audit_log::{AuditLog, AuditOptions, Fsync},
        Exporter,
    },
};
use nstrail_tests::{audit::rechain, Scratch};

fn event(seq: u64) -> Event {
    Event {
        ts: "2026-11-28T00:00:00.000000000Z".into(),
        seq,
        body: EventBody::Lost { count: seq, event_type: "netns_create".into() },
    }
}

/// Hands one event to the log the way the agent does (serialised once).
/// Records 1..=`count` into `log`, flushed every `flush_every`, then a clean close.
fn write_closed(mut log: AuditLog, count: u64, flush_every: u64) {
    for seq in 1..=count {
        export(&mut log, seq);
        if seq % flush_every == 0 {
            log.flush().unwrap();
        }
    }
    log.close();
}

fn export(log: &mut AuditLog, seq: u64) {
    let event = event(seq);
    log.export(&event, &serde_json::to_string(&event).unwrap()).expect("export");
}

fn options(path: &Path) -> AuditOptions {
    AuditOptions { path: path.to_path_buf(), fsync: Fsync::Never, ..Default::default() }
}

fn write_log(opts: AuditOptions, seqs: std::ops::RangeInclusive<u64>) {
    let mut log = AuditLog::open(opts, None).expect("open log");
    for seq in seqs {
        export(&mut log, seq);
    }
    log.flush().expect("flush");
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).expect("read log").lines().map(str::to_owned).collect()
}

fn rewrite(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).expect("rewrite");
}

fn broken_at(files: &[PathBuf]) -> (u64, String) {
    match verify(files).expect("verify") {
        Verdict::Broken { line, problem, .. } => (line, problem),
        intact => panic!("expected a broken log, got {intact:?}"),
    }
}

#[test]
fn an_intact_log_verifies() {
    let dir = Scratch::new("intact");
    let path = dir.0.join("events.jsonl");
    write_log(options(&path), 1..=100);
    assert_eq!(verify(std::slice::from_ref(&path)).unwrap(), Verdict::Intact { records: 101, segments: 1, gaps: 0 });
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn verify_names_the_first_deleted_altered_swapped_or_cut_record() {
    let dir = Scratch::new("tamper");
    let path = dir.0.join("events.jsonl");
    write_log(options(&path), 1..=20);
    let original = lines(&path); // line 1 is the segment start; line N+1 holds seq N

    let mut deleted = original.clone();
    deleted.remove(10); // seq 10
    rewrite(&path, &deleted);
    assert_eq!(broken_at(std::slice::from_ref(&path)), (11, "records seq 10 to 10 are missing (deleted)".into()));

    let mut edited = original.clone();
    edited[5] = edited[5].replace("\"count\":5", "\"count\":6");
    rewrite(&path, &edited);
    assert_eq!(
        broken_at(std::slice::from_ref(&path)),
        (6, "record (seq 5) was altered: its hash does not match its content".into())
    );

    let mut swapped = original.clone();
    swapped.swap(7, 8); // seq 7 and 8
    rewrite(&path, &swapped);
    assert_eq!(
        broken_at(std::slice::from_ref(&path)),
        (8, "record seq 8 comes before seq 7: records were reordered".into())
    );

    let mut cut = original.join("\n");
    cut.truncate(cut.len() - 40);
    std::fs::write(&path, cut).unwrap();
    assert_eq!(broken_at(std::slice::from_ref(&path)), (21, "the file ends in a cut-off record (truncated)".into()));
}

#[test]
fn the_chain_runs_across_rotations_and_restarts() {
    let dir = Scratch::new("rotate");
    let path = dir.0.join("events.jsonl");
    let small = AuditOptions { max_bytes: 8 * 1024, keep: 50, ..options(&path) };
    write_log(small.clone(), 1..=300);
    // A restart continues the chain with a marked segment.
    write_log(small.clone(), 1..=50);
    let mut files: Vec<PathBuf> = (1..=50).rev().map(|n| rotated(&path, n)).filter(|p| p.exists()).collect();
    assert!(files.len() >= 3, "rotated into several files");
    files.push(path.clone());
    assert_eq!(verify(&files).unwrap(), Verdict::Intact { records: 352, segments: 2, gaps: 0 });

    // Every seq of each run is there, in order: nothing lost to rotation.
    let seqs: Vec<u64> = files
        .iter()
        .flat_map(|f| lines(f))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok()?["seq"].as_u64())
        .collect();
    let expected: Vec<u64> = (1..=300).chain(1..=50).collect();
    assert_eq!(seqs, expected);

    // A missing middle file breaks the chain where it was.
    let without_one: Vec<PathBuf> = files.iter().enumerate().filter(|(i, _)| *i != 1).map(|(_, f)| f.clone()).collect();
    let (line, problem) = broken_at(&without_one);
    assert_eq!(line, 1);
    assert!(problem.contains("missing (deleted)"), "{problem}");
}

#[test]
fn a_record_cut_by_a_kill_is_marked_by_the_next_run() {
    let dir = Scratch::new("kill");
    let path = dir.0.join("events.jsonl");
    write_log(options(&path), 1..=10);
    // What a SIGKILL mid-write leaves: half a line.
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(r#"{"ts":"2026-11-28T00:00:01.000000000Z","seq":11,"type":"lo"#);
    std::fs::write(&path, text).unwrap();
    write_log(options(&path), 1..=5);
    assert_eq!(verify(std::slice::from_ref(&path)).unwrap(), Verdict::Intact { records: 17, segments: 2, gaps: 1 });
    let restart = lines(&path).into_iter().find(|l| l.contains("\"reason\":\"agent_start\"")).expect("segment");
    assert!(restart.contains("\"previous_truncated\":true"), "{restart}");
}

/// A tmpfs of a few pages, unmounted on drop.
struct TinyDisk(PathBuf);

impl TinyDisk {
    fn mount(dir: &Path) -> Self {
        Self::mount_sized(dir, "64k")
    }

    fn mount_sized(dir: &Path, size: &str) -> Self {
        let mount = dir.join("disk");
        std::fs::create_dir_all(&mount).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&mount)
            .status()
            .unwrap();
        assert!(ok.success(), "mount a tmpfs (tests run as root)");
        Self(mount)
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Fills the disk with a file of its own, to free later.
fn fill(disk: &Path) -> PathBuf {
    use std::io::Write;
    let filler = disk.join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    let block = vec![0u8; 4096];
    while file.write_all(&block).is_ok() {}
    let _ = file.sync_all();
    filler
}

#[test]
fn a_full_disk_is_counted_and_writing_resumes_when_space_returns() {
    nstrail_tests::require_root();
    let dir = Scratch::new("full");
    let disk = TinyDisk::mount(&dir.0);
    let path = disk.0.join("events.jsonl");
    let metrics = std::sync::Arc::new(nstrail::metrics::Metrics::new(Default::default(), &[], &[], &[]));
    let mut log = AuditLog::open(options(&path), Some(metrics.clone())).expect("open");
    let filler = fill(&disk.0);
    for seq in 1..=200 {
        export(&mut log, seq);
    }
    log.flush().expect("a full disk is not fatal");
    assert!(metrics.log_write_errors.get() > 0, "write errors are counted");
    std::fs::remove_file(filler).unwrap();
    log.flush().unwrap();
    drop(log);
    assert_eq!(
        verify(std::slice::from_ref(&path)).unwrap(),
        Verdict::Intact { records: 201, segments: 1, gaps: 0 },
        "nothing lost"
    );

    // A backlog too small for the outage: the loss is marked in the chain.
    let path = disk.0.join("small.jsonl");
    let mut log = AuditLog::open(AuditOptions { backlog_limit: 10, ..options(&path) }, None).expect("open");
    let filler = fill(&disk.0);
    for seq in 1..=50 {
        export(&mut log, seq);
        log.flush().unwrap();
    }
    std::fs::remove_file(filler).unwrap();
    log.flush().unwrap();
    drop(log);
    let written: Vec<u64> = lines(&path)
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["seq"].as_u64())
        .collect();
    let gap = lines(&path).into_iter().find(|l| l.contains("audit_gap")).expect("gap record");
    let lost = serde_json::from_str::<serde_json::Value>(&gap).unwrap()["records_lost"].as_u64().unwrap();
    assert!(lost > 0);
    assert_eq!(written.len() as u64 + lost, 50, "every record is either written or counted in the gap");
    assert_eq!(written[written.len() - 10..], (41..=50).collect::<Vec<_>>()[..], "the backlog kept the newest");
    assert_eq!(
        verify(std::slice::from_ref(&path)).unwrap(),
        Verdict::Intact { records: written.len() as u64 + 2, segments: 1, gaps: 1 }
    );
}

#[test]
fn a_full_disk_is_retried_at_a_bounded_rate_not_per_event() {
    nstrail_tests::require_root();
    let dir = Scratch::new("retry");
    let disk = TinyDisk::mount_sized(&dir.0, "16m");
    let path = disk.0.join("events.jsonl");
    let metrics = std::sync::Arc::new(nstrail::metrics::Metrics::new(Default::default(), &[], &[], &[]));
    let mut log = AuditLog::open(options(&path), Some(metrics.clone())).expect("open");
    let filler = fill(&disk.0);
    // The agent's pattern under load: a burst of events, flushed every few.
    let start = std::time::Instant::now();
    for seq in 1..=20_000 {
        export(&mut log, seq);
        if seq % 4 == 0 {
            log.flush().expect("a full disk is not fatal");
        }
    }
    let elapsed = start.elapsed();
    let attempts = metrics.log_write_errors.get();
    // At most one attempt per 100 ms (the first retry delay), plus the first.
    let bound = 1 + (elapsed.as_millis() / 100) as u64;
    assert!(attempts >= 1, "the failure is counted");
    assert!(attempts <= bound, "{attempts} failed writes in {elapsed:?}: retried per event, not at a bounded rate");
    std::fs::remove_file(filler).unwrap();
    drop(log);
    assert_eq!(
        verify(std::slice::from_ref(&path)).unwrap(),
        Verdict::Intact { records: 20_001, segments: 1, gaps: 0 },
        "the backlog held every record"
    );
}

/// A sealing key in `dir`, and its verification key.
fn keys(dir: &Path) -> (PathBuf, nstrail::audit::seal::VerificationKey) {
    let path = dir.join("keys/seal.key");
    let verification = nstrail::audit::seal::setup_keys(&path, false).expect("setup keys");
    (path, verification)
}

/// Sealed at every flush that follows new records.
fn sealed(path: &Path, key: &Path) -> AuditOptions {
    AuditOptions { seal_key: Some(key.to_path_buf()), seal_interval: std::time::Duration::ZERO, ..options(path) }
}

fn check(
    files: &[PathBuf],
    key: &nstrail::audit::seal::VerificationKey,
    host_key: Option<&Path>,
) -> nstrail::audit::Report {
    let options = nstrail::audit::VerifyOptions {
        keys: vec![nstrail::audit::seal::VerificationKey::parse(&key.to_hex()).unwrap()],
        seal_key: host_key.map(Path::to_path_buf),
        expect_epoch: None,
    };
    nstrail::audit::verify_with(files, &options).expect("verify")
}

fn broken_problem(report: &nstrail::audit::Report) -> String {
    match &report.verdict {
        Verdict::Broken { problem, .. } => problem.clone(),
        intact => panic!("expected a broken log, got {intact:?}: {:?}", report.notes),
    }
}

#[test]
fn every_rotated_file_of_a_sealed_log_ends_with_a_seal_and_verifies_alone() {
    let dir = Scratch::new("sealrot");
    let (key_path, key) = keys(&dir.0);
    let path = dir.0.join("events.jsonl");
    let opts = AuditOptions { max_bytes: 8 * 1024, keep: 50, ..sealed(&path, &key_path) };
    write_closed(AuditLog::open(opts, None).expect("open"), 300, 7);
    let mut files: Vec<PathBuf> = (1..=50).rev().map(|n| rotated(&path, n)).filter(|p| p.exists()).collect();
    assert!(files.len() >= 3, "rotated into several files");
    for file in &files {
        let last = lines(file).pop().unwrap();
        assert!(last.contains("\"type\":\"audit_seal\"") && last.contains("\"reason\":\"rotation\""), "{last}");
        let report = check(std::slice::from_ref(file), &key, None);
        assert!(matches!(report.verdict, Verdict::Intact { .. }), "{}: {report:?}", file.display());
    }
    files.push(path.clone());
    let report = check(&files, &key, Some(&key_path));
    assert!(matches!(report.verdict, Verdict::Intact { segments: 1, gaps: 0, .. }), "{report:?}");
    assert!(report.notes.iter().any(|n| n.starts_with("start: the log is complete from its first record")));
    assert!(report.notes.iter().any(|n| n.contains("the log ends with the agent's clean stop")), "{:?}", report.notes);
    // Without the oldest file: verified, and said where it begins.
    let report = check(&files[1..], &key, Some(&key_path));
    assert!(matches!(report.verdict, Verdict::Intact { .. }), "{report:?}");
    assert!(report.notes.iter().any(|n| n.contains("the first verifiable seal is epoch")), "{:?}", report.notes);
}

#[test]
fn a_seal_written_just_before_a_crash_is_not_sealed_again() {
    let dir = Scratch::new("sealcrash");
    let (key_path, key) = keys(&dir.0);
    let path = dir.0.join("events.jsonl");
    let mut log = AuditLog::open(sealed(&path, &key_path), None).expect("open");
    export(&mut log, 1);
    log.flush().unwrap();
    // The key file as it is between writing a seal and evolving the key.
    let before_stop = std::fs::read(&key_path).unwrap();
    log.close();
    drop(log);
    std::fs::write(&key_path, before_stop).unwrap();
    write_log(sealed(&path, &key_path), 1..=3);
    let report = check(std::slice::from_ref(&path), &key, Some(&key_path));
    assert!(matches!(report.verdict, Verdict::Intact { segments: 2, .. }), "{report:?}");
}

#[test]
fn a_sealed_log_continued_without_its_key_fails_verification_with_the_key() {
    let dir = Scratch::new("sealgone");
    let (key_path, key) = keys(&dir.0);
    let path = dir.0.join("events.jsonl");
    write_log(sealed(&path, &key_path), 1..=5);
    std::fs::remove_file(&key_path).unwrap();
    write_log(sealed(&path, &key_path), 1..=5);
    let restart = lines(&path).into_iter().filter(|l| l.contains("\"type\":\"audit_segment\"")).nth(1).unwrap();
    assert!(restart.contains("\"seal_missing\":\"no sealing key at "), "{restart}");
    let problem = broken_problem(&check(std::slice::from_ref(&path), &key, None));
    assert!(problem.contains("did not seal the log (no sealing key at"), "{problem}");
    // Without a key, the chain still holds and the report says so.
    assert!(matches!(verify(std::slice::from_ref(&path)).unwrap(), Verdict::Intact { .. }));
}

#[test]
fn a_seal_made_with_another_key_or_a_deleted_seal_is_named() {
    let dir = Scratch::new("sealother");
    let (key_path, key) = keys(&dir.0);
    let path = dir.0.join("events.jsonl");
    write_closed(AuditLog::open(sealed(&path, &key_path), None).expect("open"), 20, 5);
    let original = lines(&path);
    let other = dir.0.join("other");
    std::fs::create_dir_all(&other).unwrap();
    let (_, other_key) = keys(&other);
    let problem = broken_problem(&check(std::slice::from_ref(&path), &other_key, None));
    assert!(problem.contains("this seal was made with another key"), "{problem}");

    // A seal in the middle removed and the chain mended around it.
    let seal_at = original.iter().enumerate().filter(|(_, l)| l.contains("audit_seal")).nth(2).unwrap().0;
    let mut cut = original.clone();
    cut.remove(seal_at);
    rewrite(&path, &rechain(&cut));
    let problem = broken_problem(&check(std::slice::from_ref(&path), &key, None));
    assert!(problem.contains("bytes were removed from or inserted into this file"), "{problem}");
}

#[test]
fn a_restart_after_the_tail_was_cut_shows_the_missing_seals() {
    let dir = Scratch::new("sealcut");
    let (key_path, key) = keys(&dir.0);
    let path = dir.0.join("events.jsonl");
    write_closed(AuditLog::open(sealed(&path, &key_path), None).expect("open"), 30, 5);
    // Cut back to the third seal, then the agent starts again on the rest.
    let original = lines(&path);
    let third = original.iter().enumerate().filter(|(_, l)| l.contains("audit_seal")).nth(2).unwrap().0;
    rewrite(&path, &original[..=third]);
    write_log(sealed(&path, &key_path), 1..=3);
    let report = check(std::slice::from_ref(&path), &key, None);
    let problem = broken_problem(&report);
    assert!(problem.starts_with("seal epochs 3 to 7 are missing: sealed records were deleted after"), "{problem}");
}

#[test]
fn a_sealed_log_deleted_then_moved_is_reopened_and_verifies_across() {
    let dir = Scratch::new("sealwatch");
    let (key_path, key) = keys(&dir.0);
    let path = dir.0.join("events.jsonl");
    let metrics = std::sync::Arc::new(nstrail::metrics::Metrics::new(Default::default(), &[], &[], &[]));
    let mut log = AuditLog::open(sealed(&path, &key_path), Some(metrics.clone())).expect("open");
    let batch = |log: &mut AuditLog, seqs: std::ops::RangeInclusive<u64>| {
        for seq in seqs {
            export(log, seq);
        }
        log.flush().unwrap();
    };
    batch(&mut log, 1..=5);
    std::fs::remove_file(&path).unwrap();
    batch(&mut log, 6..=10);
    let moved = dir.0.join("moved.jsonl");
    std::fs::rename(&path, &moved).unwrap();
    batch(&mut log, 11..=15);
    log.close();
    drop(log);
    for (reason, count) in [("deleted", 1), ("moved", 1), ("replaced", 0), ("truncated", 0)] {
        assert_eq!(metrics.audit_log_reopened.with_label_values(&[reason]).get(), count, "{reason}");
    }
    let gap = lines(&moved).into_iter().next().unwrap();
    assert!(
        gap.contains("\"type\":\"audit_gap\",\"cause\":\"deleted\",\"records_lost\":8,\"file_records\":8"),
        "{gap}"
    );
    let report = check(&[moved.clone(), path.clone()], &key, Some(&key_path));
    assert!(matches!(report.verdict, Verdict::Intact { gaps: 2, .. }), "{report:?}");
    assert!(report.notes.iter().any(|n| n.contains("its 8 records are lost")), "{:?}", report.notes);

    // Replaced by another file: appended to it, the chain broken there for verify.
    let mut log = AuditLog::open(sealed(&path, &key_path), Some(metrics.clone())).expect("open");
    batch(&mut log, 1..=3);
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, "someone else's file\n").unwrap();
    batch(&mut log, 4..=6);
    drop(log);
    assert_eq!(metrics.audit_log_reopened.with_label_values(&["replaced"]).get(), 1);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("someone else's file\n{") && text.contains("\"cause\":\"replaced\""), "{text}");
}

/// `f` on another thread; panics when it takes longer than `limit`.
fn within<T: Send + 'static>(limit: std::time::Duration, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).unwrap_or_else(|_| panic!("{what} took longer than {limit:?}"))
}

#[test]
fn a_seal_with_a_forged_epoch_far_ahead_is_refused_without_deriving_keys_for_ever() {
    let dir = Scratch::new("sealfar");
    let (key_path, key) = keys(&dir.0);
    let path = dir.0.join("events.jsonl");
    write_log(sealed(&path, &key_path), 1..=3);
    let original = lines(&path);
    let far = |line: &str| {
        assert!(line.contains("\"type\":\"audit_seal\""), "{line}");
        let epoch = line.split("\"epoch\":").nth(1).unwrap().split(',').next().unwrap().to_owned();
        line.replacen(&format!("\"epoch\":{epoch},"), &format!("\"epoch\":{},", u64::MAX / 2), 1)
    };
    // The first seal claims an epoch no agent reaches, the chain mended:
    // nothing before it bounds the epoch, only the key would tell.
    let first = original.iter().position(|l| l.contains("\"type\":\"audit_seal\"")).unwrap();
    let mut forged = original.clone();
    forged[first] = far(&forged[first]);
    let copy = dir.0.join("forged.jsonl");
    rewrite(&copy, &rechain(&forged));
    let hex = key.to_hex().to_string();
    let report = within(std::time::Duration::from_secs(20), "verify --key", move || {
        check(&[copy], &nstrail::audit::seal::VerificationKey::parse(&hex).unwrap(), None)
    });
    let problem = broken_problem(&report);
    assert!(problem.contains("is beyond any an agent reaches"), "{problem}");
    // The last seal (the run ended without a stop, just after it) forged
    // the same way: the agent starting on that log does not derive its way
    // there either, and the seals it goes on with show the forgery.
    let mut forged = original;
    let last = forged.len() - 1;
    forged[last] = far(&forged[last]);
    rewrite(&path, &rechain(&forged));
    let opts = sealed(&path, &key_path);
    within(std::time::Duration::from_secs(20), "the agent's start", move || write_log(opts, 1..=2));
    assert!(matches!(check(std::slice::from_ref(&path), &key, None).verdict, Verdict::Broken { .. }));
}
