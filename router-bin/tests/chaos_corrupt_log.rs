//! Corrupt log on start (RELIABILITY.md §E3, end to end): events are written with delivery
//! down, the router is SIGKILLed, and its buffer is damaged on disk: a flipped byte in a
//! record, garbage over two records, a sealed segment cut in the middle of a record, the
//! active segment cut in its last record, plus stray files (text, a `.seg.bak`, a directory, a
//! half-written cursor, junk files named like segments). The router must start within a
//! bound, report the damage in its log, and deliver exactly the intact events: every
//! acknowledged id except those whose records were damaged, which the test identifies by
//! parsing the segments (the documented frame format) before damaging them.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{FAST_DELIVERY, Ledger, Outcome, Router, batch, cli, http_client, write_config};
use perf::mock::{Destination, Endpoint, Fault, MockConfig, MockDestinations};
use serde_json::Value;

/// Frame header: len u32, crc u32, magic u8, version u8, seq u64, append_ms u64.
const HEADER: usize = 26;

/// One record of a segment as found on disk.
#[derive(Debug, Clone)]
struct Frame {
    offset: u64,
    len: u64,
    seq: u64,
    id: String,
}

fn segments(buffer: &Path) -> Vec<(u64, PathBuf)> {
    let mut out: Vec<(u64, PathBuf)> = fs::read_dir(buffer)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.to_owned();
            let base = name.strip_suffix(".seg")?.parse().ok()?;
            Some((base, p))
        })
        .collect();
    out.sort();
    out
}

/// Parses an undamaged segment.
fn frames(path: &Path) -> Vec<Frame> {
    let b = fs::read(path).unwrap();
    let mut out = Vec::new();
    let mut o = 0usize;
    while o + HEADER <= b.len() {
        let len = u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) as usize;
        assert_eq!(b[o + 8], 0xEB, "magic at {o} of {}", path.display());
        let seq = u64::from_le_bytes(b[o + 10..o + 18].try_into().unwrap());
        let payload: Value = serde_json::from_slice(&b[o + HEADER..o + HEADER + len]).unwrap();
        out.push(Frame {
            offset: o as u64,
            len: (HEADER + len) as u64,
            seq,
            id: payload["e"]["messageId"].as_str().unwrap().to_owned(),
        });
        o += HEADER + len;
    }
    assert_eq!(o, b.len(), "{} ends in a whole frame", path.display());
    out
}

fn patch(path: &Path, at: u64, bytes: &[u8]) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
}

fn truncate(path: &Path, len: u64) {
    let f = fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_len(len).unwrap();
    f.sync_all().unwrap();
}

fn junk(n: usize, seed: u32) -> Vec<u8> {
    (0..n as u32)
        .map(|i| (i.wrapping_add(seed).wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_log_starts_reports_and_delivers_every_intact_event() {
    let mock = MockDestinations::start(MockConfig::default())
        .await
        .unwrap();
    mock.inject(Destination::Posthog, Fault::status(503).until_cleared());
    mock.inject(Destination::Mixpanel, Fault::status(503).until_cleared());
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let buffer = data.join("buffer");
    let config = write_config(
        dir.path(),
        &format!("{FAST_DELIVERY}\n[buffer]\nsegment_max_bytes = 16384\n"),
    );
    let router = Router::builder(&data).mock(&mock).config(&config).start();
    let ledger = Ledger::new();
    let client = http_client();
    for i in 0..40u64 {
        let events = batch(i * 10, 10, 100);
        assert_eq!(
            ledger.post(&client, &router.url, &events, false).await,
            Outcome::Status(200)
        );
    }
    router.kill();

    // Read every record before damaging anything.
    let segs = segments(&buffer);
    assert!(segs.len() >= 8, "{} segments", segs.len());
    let all: Vec<Vec<Frame>> = segs.iter().map(|(_, p)| frames(p)).collect();
    let in_log: HashSet<String> = all.iter().flatten().map(|f| f.id.clone()).collect();
    let acked: HashSet<String> = ledger.acked().into_iter().map(|(id, _)| id).collect();
    assert_eq!(
        in_log, acked,
        "the log holds exactly the acknowledged events"
    );
    let mut lost: Vec<&Frame> = Vec::new();

    // 1. A flipped byte in the payload of the third record of segment 1.
    let f = &all[1][2];
    let at = f.offset + HEADER as u64 + (f.len - HEADER as u64) / 2;
    let byte = fs::read(&segs[1].1).unwrap()[at as usize];
    patch(&segs[1].1, at, &[byte ^ 0x20]);
    lost.push(f);
    // 2. 100 bytes of garbage across the boundary of records 4 and 5 of segment 2.
    let (f4, f5) = (&all[2][4], &all[2][5]);
    patch(&segs[2].1, f5.offset - 50, &[0x5A; 100]);
    lost.extend([f4, f5]);
    // 3. Sealed segment 3 cut in the middle of its record 5: records 5.. are gone.
    truncate(&segs[3].1, all[3][5].offset + 40);
    lost.extend(all[3][5..].iter());
    // 4. The active (last) segment cut in its last record (a torn write).
    let last = all.last().unwrap().last().unwrap();
    truncate(&segs.last().unwrap().1, last.offset + last.len - 7);
    lost.push(last);
    let mid_segment_lost = lost.len() - 1;
    // 5. Stray files: text, a backup, a directory, a half-written cursor, and junk named like
    //    a segment between two real segments. (Junk named like a segment far ahead of the
    //    data comes later, on a clean log: after a torn tail, recovery would count the whole
    //    sequence gap up to it as corrupt records.)
    fs::write(buffer.join("notes.txt"), b"not a segment").unwrap();
    fs::write(buffer.join("00000000000000000003.seg.bak"), junk(3000, 1)).unwrap();
    fs::create_dir(buffer.join("subdir")).unwrap();
    fs::write(buffer.join("mixpanel.cursor.tmp"), b"half").unwrap();
    let between = segs[5].0 + 3;
    fs::write(buffer.join(format!("{between:020}.seg")), junk(5000, 2)).unwrap();

    let lost_ids: HashSet<String> = lost.iter().map(|f| f.id.clone()).collect();
    let (code, out, err) = cli(&[
        "buffer",
        "inspect",
        "--json",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{err}");
    let inspect: Value = serde_json::from_str(&out).unwrap();

    // The start: bounded, and the damage is in the log.
    mock.clear_faults();
    let started = Instant::now();
    let router = Router::builder(&data)
        .mock(&mock)
        .config(&config)
        .timeout(Duration::from_secs(15))
        .start();
    let took = started.elapsed();
    let report: Vec<Value> = router
        .startup
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| {
            v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("Buffer opened after repairs"))
        })
        .collect();
    assert_eq!(report.len(), 1, "one repair report: {:#?}", router.startup);
    let fields = &report[0]["fields"];
    println!(
        "chaos_corrupt_log: {} segments, {} records; damaged {} records ({} inside segments, 1 torn tail); start took {} ms; report {fields}",
        segs.len(),
        in_log.len(),
        lost_ids.len(),
        mid_segment_lost,
        took.as_millis()
    );
    println!(
        "chaos_corrupt_log: inspect before the start: corrupt_records {}, missing_records {}, garbage_files {}",
        inspect["corrupt_records"], inspect["missing_records"], inspect["garbage_files"]
    );
    assert!(took < Duration::from_secs(10), "start took {took:?}");
    assert_eq!(fields["warn"], Value::Null);
    assert_eq!(report[0]["level"], "WARN");
    assert_eq!(
        fields["corrupt_records"].as_u64(),
        Some(mid_segment_lost as u64),
        "the report counts exactly the records lost inside segments"
    );
    assert_eq!(fields["missing_records"].as_u64(), Some(0));
    assert_eq!(
        inspect["corrupt_records"].as_u64(),
        Some(mid_segment_lost as u64)
    );
    assert!(fields["truncated_bytes"].as_u64().unwrap() > 0);
    let garbage = fields["garbage_files"].as_str().unwrap_or("");
    for name in ["notes.txt", "00000000000000000003.seg.bak", "subdir"] {
        assert!(garbage.contains(name), "{name} reported: {garbage}");
    }

    // Exactly the intact events arrive, where routed.
    let routing = ledger.routing();
    let want = |dest: Destination| -> BTreeSet<String> {
        routing
            .iter()
            .filter(|(id, d)| {
                !lost_ids.contains(*id)
                    && match dest {
                        Destination::Posthog => d.posthog(),
                        Destination::Mixpanel => d.mixpanel(),
                    }
            })
            .map(|(id, _)| id.clone())
            .collect()
    };
    let (want_ph, want_mp) = (want(Destination::Posthog), want(Destination::Mixpanel));
    let got = |e: Endpoint| -> BTreeSet<String> { mock.accepted_ids(e).into_iter().collect() };
    let deadline = Instant::now() + Duration::from_secs(30);
    while (got(Endpoint::PosthogCapture).len() < want_ph.len()
        || got(Endpoint::MixpanelImport).len() < want_mp.len())
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nothing else on its way.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (got_ph, got_mp) = (got(Endpoint::PosthogCapture), got(Endpoint::MixpanelImport));
    let missing_ph: Vec<_> = want_ph.difference(&got_ph).collect();
    let missing_mp: Vec<_> = want_mp.difference(&got_mp).collect();
    let lost_seqs: Vec<u64> = all
        .iter()
        .flatten()
        .filter(|f| missing_ph.contains(&&f.id) || missing_mp.contains(&&f.id))
        .map(|f| f.seq)
        .collect();
    assert!(
        missing_ph.is_empty() && missing_mp.is_empty(),
        "intact events not delivered: posthog {}, mixpanel {} (seqs {lost_seqs:?}; segments {:?})",
        missing_ph.len(),
        missing_mp.len(),
        segs.iter().map(|s| s.0).collect::<Vec<_>>()
    );
    assert_eq!(got_ph, want_ph, "posthog got exactly the intact events");
    assert_eq!(got_mp, want_mp, "mixpanel got exactly the intact events");
    let stats = mock.stats();
    println!(
        "chaos_corrupt_log: delivered posthog {} mixpanel {} (duplicates {} / {}); none of the {} damaged",
        got_ph.len(),
        got_mp.len(),
        stats.posthog.duplicates,
        stats.mixpanel.duplicates,
        lost_ids.len()
    );

    // And the router works normally afterwards.
    let fresh = batch(10_000, 4, 0);
    assert_eq!(
        ledger.post(&client, &router.url, &fresh, false).await,
        Outcome::Status(200)
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let fresh_ids: HashSet<String> = fresh.iter().map(|f| f.0.clone()).collect();
    loop {
        let ids = common::delivered_ids(&mock);
        if fresh_ids.iter().all(|id| ids.contains(id)) {
            break;
        }
        assert!(Instant::now() < deadline, "fresh events after the repair");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        buffer.join("notes.txt").exists(),
        "never deletes what it does not own"
    );

    // Junk named like a segment inside the last segment's range, then far ahead of the data
    // (each after a clean stop): the router starts, numbers new records past everything it
    // has, delivers them, and resends nothing.
    let mut router = router;
    let places = [
        "inside the last segment",
        "inside the last segment, with a backlog",
        "far ahead",
    ];
    for (round, place) in places.iter().enumerate() {
        // With a backlog: the cursors stay behind the end of the data.
        let backlog = if round == 1 {
            mock.inject(Destination::Posthog, Fault::status(503).until_cleared());
            mock.inject(Destination::Mixpanel, Fault::status(503).until_cleared());
            let events = batch(30_000, 8, 0);
            assert_eq!(
                ledger.post(&client, &router.url, &events, false).await,
                Outcome::Status(200)
            );
            events
        } else {
            Vec::new()
        };
        let (code, _) = router.terminate();
        assert_eq!(code, Some(0));
        let segs = segments(&buffer);
        let last_base = segs.last().unwrap().0;
        let base = if round < 2 {
            last_base + 2
        } else {
            last_base + 100_000
        };
        fs::write(
            buffer.join(format!("{base:020}.seg")),
            junk(5000, 3 + round as u32),
        )
        .unwrap();
        router = Router::builder(&data)
            .mock(&mock)
            .config(&config)
            .timeout(Duration::from_secs(15))
            .start();
        let mut fresh = batch(20_000 + 10 * round as u64, 4, 0);
        assert_eq!(
            ledger.post(&client, &router.url, &fresh, false).await,
            Outcome::Status(200)
        );
        mock.clear_faults();
        fresh.extend(backlog);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ids = common::delivered_ids(&mock);
            if fresh.iter().all(|f| ids.contains(&f.0)) {
                break;
            }
            if Instant::now() >= deadline {
                let missing: Vec<usize> = (0..fresh.len())
                    .filter(|i| !ids.contains(&fresh[*i].0))
                    .collect();
                let (_, out, _) = cli(&["buffer", "inspect", "--data-dir", data.to_str().unwrap()]);
                panic!(
                    "events after junk named like a segment {place} not delivered: indexes {missing:?} of {} (the last {} were posted before the stop)\nstart-up: {:#?}\n{out}",
                    fresh.len(),
                    fresh.len() - 4,
                    router.startup
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let stats = mock.stats();
        assert_eq!(
            stats.posthog.duplicates + stats.mixpanel.duplicates,
            0,
            "junk named like a segment {place}: a restart resent delivered events"
        );
    }
    let d = common::check_delivery(&mock, &ledger);
    let missing: Vec<_> = d
        .missing
        .iter()
        .filter(|(id, _)| !lost_ids.contains(id))
        .collect();
    assert!(missing.is_empty(), "{missing:?}");
    let (code, _) = router.terminate();
    assert_eq!(code, Some(0));
    mock.shutdown().await;
}
