//! The audit log on real files: verify passes on intact logs and names the
//! first deleted, altered, reordered or cut record, across rotations and
//! restarts; a full disk (a tiny tmpfs) loses nothing the backlog can hold
//! and marks what it could not.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use nstrail::{
    audit::{rotated, verify, AuditLog, AuditOptions, Fsync, Verdict},
    event::{Event, EventBody},
    export::Exporter,
};

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("nstrail-audit-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn event(seq: u64) -> Event {
    Event { ts: "2026-11-28T00:00:00.000000000Z".into(), seq, body: EventBody::Lost { count: seq, event_type: "netns_create".into() } }
}

/// Hands one event to the log the way the agent does (serialised once).
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
    assert_eq!(verify(&[path.clone()]).unwrap(), Verdict::Intact { records: 101, segments: 1, gaps: 0 });
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
    assert_eq!(broken_at(&[path.clone()]), (11, "records seq 10 to 10 are missing (deleted)".into()));

    let mut edited = original.clone();
    edited[5] = edited[5].replace("\"count\":5", "\"count\":6");
    rewrite(&path, &edited);
    assert_eq!(broken_at(&[path.clone()]), (6, "record (seq 5) was altered: its hash does not match its content".into()));

    let mut swapped = original.clone();
    swapped.swap(7, 8); // seq 7 and 8
    rewrite(&path, &swapped);
    assert_eq!(broken_at(&[path.clone()]), (8, "record seq 8 comes before seq 7: records were reordered".into()));

    let mut cut = original.join("\n");
    cut.truncate(cut.len() - 40);
    std::fs::write(&path, cut).unwrap();
    assert_eq!(broken_at(&[path.clone()]), (21, "the file ends in a cut-off record (truncated)".into()));
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
    assert_eq!(verify(&[path.clone()]).unwrap(), Verdict::Intact { records: 17, segments: 2, gaps: 1 });
    let restart = lines(&path).into_iter().find(|l| l.contains("\"reason\":\"agent_start\"")).expect("segment");
    assert!(restart.contains("\"previous_truncated\":true"), "{restart}");
}

/// A tmpfs of a few pages, unmounted on drop.
struct TinyDisk(PathBuf);

impl TinyDisk {
    fn mount(dir: &Path) -> Self {
        let mount = dir.join("disk");
        std::fs::create_dir_all(&mount).unwrap();
        let ok = Command::new("mount").args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"]).arg(&mount).status().unwrap();
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
    let metrics = std::sync::Arc::new(nstrail::metrics::Metrics::new(Default::default(), &[]));
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
    assert_eq!(verify(&[path.clone()]).unwrap(), Verdict::Intact { records: 201, segments: 1, gaps: 0 }, "nothing lost");

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
        verify(&[path.clone()]).unwrap(),
        Verdict::Intact { records: written.len() as u64 + 2, segments: 1, gaps: 1 }
    );
}
