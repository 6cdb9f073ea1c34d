//! Model-based test: random sequences of Append / Read / Ack / Flush / Sync / Crash / Reopen
//! against an in-memory model.
//!
//! Invariants checked:
//! - every append whose future resolved (and, under `Interval`, that a sync covered) is
//!   readable after any crash until every destination acknowledged it;
//! - after a clean reopen a destination never reads again what it acknowledged, and after a
//!   crash it resumes exactly at its last persisted cursor;
//! - each destination reads records in append order with identical bytes;
//! - recovery after a simulated power loss (unsynced bytes dropped, partly kept, or
//!   zero-filled) finds no corruption, only a cut tail, and nothing durable is lost.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;

use super::{fast_tempdir, small_config};
use crate::buffer::{BufferError, Log, LogConfig, Reader, SyncPolicy};

const DESTS: [&str; 2] = ["a", "b"];

#[derive(Debug, Clone)]
enum Action {
    Append(Vec<usize>),
    Read { dest: usize, max: usize },
    Ack { dest: usize, picks: Vec<usize> },
    Flush,
    Sync,
    Crash { keep: u64, zero_fill: bool },
    Reopen,
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        5 => prop::collection::vec(0usize..60, 1..5).prop_map(Action::Append),
        4 => (0usize..2, 1usize..8).prop_map(|(dest, max)| Action::Read { dest, max }),
        4 => (0usize..2, prop::collection::vec(0usize..16, 0..6))
            .prop_map(|(dest, picks)| Action::Ack { dest, picks }),
        2 => Just(Action::Flush),
        1 => Just(Action::Sync),
        1 => (0u64..200, any::<bool>()).prop_map(|(keep, zero_fill)| Action::Crash { keep, zero_fill }),
        1 => Just(Action::Reopen),
    ]
}

#[derive(Debug, Default, Clone)]
struct DestModel {
    /// Sequence number of the next record the reader returns.
    read_pos: u64,
    /// Delivered, not yet acknowledged, in delivery order.
    delivered: Vec<u64>,
    /// Persisted cursor.
    durable: u64,
}

impl DestModel {
    /// The contiguous acknowledged prefix, as the log computes it.
    fn acked(&self) -> u64 {
        self.delivered
            .iter()
            .copied()
            .min()
            .unwrap_or(self.read_pos)
            .min(self.read_pos)
    }
}

struct Harness {
    config: LogConfig,
    log: Option<Log>,
    readers: Vec<Reader>,
    /// Every record that exists: sequence number -> payload.
    records: BTreeMap<u64, Bytes>,
    /// Sequence number the next append gets.
    next_seq: u64,
    /// Records below this are durable.
    durable_upto: u64,
    dests: Vec<DestModel>,
    counter: u64,
}

impl Harness {
    fn open(&mut self) -> super::RecoveryReport {
        let (log, report) = Log::open(self.config.clone()).unwrap();
        self.readers = DESTS.iter().map(|d| log.reader(d).unwrap()).collect();
        self.log = Some(log);
        report
    }

    fn log(&self) -> &Log {
        self.log.as_ref().unwrap()
    }

    /// Under `Always` every resolved append is durable; under `Interval` the log says what is.
    fn refresh_durable(&mut self) {
        let sut = self.log().metrics().next_seq;
        assert!(
            sut <= self.next_seq,
            "durable watermark {sut} past the appends {}",
            self.next_seq
        );
        assert!(sut >= self.durable_upto, "durable watermark went back");
        if self.config.sync == SyncPolicy::Always {
            assert_eq!(sut, self.next_seq, "a resolved append is not durable");
        }
        self.durable_upto = sut;
    }

    fn check_cursors(&self) {
        let m = self.log().metrics();
        for (i, d) in self.dests.iter().enumerate() {
            assert_eq!(
                m.destinations[i].acked_seq,
                d.acked(),
                "acked prefix of {}",
                DESTS[i]
            );
            assert_eq!(
                m.destinations[i].durable_cursor, d.durable,
                "cursor of {}",
                DESTS[i]
            );
            assert_eq!(self.readers[i].position(), d.read_pos);
        }
    }

    async fn step(&mut self, a: &Action) {
        match a {
            Action::Append(sizes) => {
                let batch: Vec<Bytes> = sizes
                    .iter()
                    .map(|&n| {
                        self.counter += 1;
                        let mut p = format!("{}:", self.counter).into_bytes();
                        p.resize(p.len().max(n), b'.');
                        Bytes::from(p)
                    })
                    .collect();
                let before = self.log().metrics();
                match self.log().append(batch.clone()).await {
                    Ok(r) => {
                        assert_eq!(r.first, self.next_seq);
                        assert_eq!(r.count, batch.len() as u64);
                        for (i, b) in batch.into_iter().enumerate() {
                            self.records.insert(r.first + i as u64, b);
                        }
                        self.next_seq = r.end();
                    }
                    Err(BufferError::Full { requested, .. }) => {
                        assert!(before.bytes_on_disk + requested > self.config.max_total_bytes);
                        assert_eq!(
                            self.log().metrics().records_appended,
                            before.records_appended
                        );
                    }
                    Err(e) => panic!("append failed: {e}"),
                }
                self.refresh_durable();
            }
            Action::Read { dest, max } => {
                self.refresh_durable();
                let got = self.readers[*dest]
                    .try_read_batch(*max, usize::MAX)
                    .unwrap();
                let d = &mut self.dests[*dest];
                let expected: Vec<(u64, Bytes)> = self
                    .records
                    .range(d.read_pos..self.durable_upto)
                    .take(*max)
                    .map(|(s, b)| (*s, b.clone()))
                    .collect();
                assert_eq!(got, expected, "reader {} at {}", DESTS[*dest], d.read_pos);
                if let Some((s, _)) = got.last() {
                    d.read_pos = s + 1;
                }
                d.delivered.extend(got.iter().map(|(s, _)| *s));
            }
            Action::Ack { dest, picks } => {
                let d = &mut self.dests[*dest];
                let mut seqs = Vec::new();
                for p in picks {
                    if !d.delivered.is_empty() {
                        let i = p % d.delivered.len();
                        seqs.push(d.delivered.remove(i));
                    }
                }
                self.readers[*dest].ack(seqs);
            }
            Action::Flush => {
                self.log().flush_cursors().await.unwrap();
                self.refresh_durable();
                for d in &mut self.dests {
                    d.durable = d.durable.max(d.acked().min(self.durable_upto));
                }
                // Retention: no sealed segment is entirely below every cursor.
                let min = self.dests.iter().map(|d| d.durable).min().unwrap();
                let report = crate::buffer::inspect(&self.config.dir).unwrap();
                for w in report.segments.windows(2) {
                    assert!(w[1].base_seq > min, "segment {} should be gone", w[0].file);
                }
            }
            Action::Sync => {
                self.log().sync().await.unwrap();
                self.refresh_durable();
                assert_eq!(self.durable_upto, self.next_seq);
            }
            Action::Crash { keep, zero_fill } => {
                self.refresh_durable();
                self.readers.clear();
                let log = self.log.take().unwrap();
                log.crash(*keep, *zero_fill);
                let report = self.open();
                assert_eq!(report.corrupt_records, 0, "{report:?}");
                assert_eq!(report.missing_records, 0, "{report:?}");
                assert!(report.cursors_ahead.is_empty(), "{report:?}");
                let n = report.next_seq;
                assert!(
                    n >= self.durable_upto,
                    "lost durable records: {report:?}, durable {}",
                    self.durable_upto
                );
                assert!(n <= self.next_seq);
                // Unsynced records past the surviving prefix are gone.
                self.records.retain(|s, _| *s < n);
                self.next_seq = n;
                self.durable_upto = n;
                for d in &mut self.dests {
                    d.read_pos = d.durable;
                    d.delivered.clear();
                }
            }
            Action::Reopen => {
                self.readers.clear();
                let log = self.log.take().unwrap();
                log.close().await.unwrap();
                let report = self.open();
                assert!(report.is_clean(), "{report:?}");
                assert_eq!(report.next_seq, self.next_seq);
                self.durable_upto = self.next_seq;
                for d in &mut self.dests {
                    d.durable = d.acked();
                    d.read_pos = d.durable;
                    d.delivered.clear();
                }
            }
        }
        self.check_cursors();
    }

    /// At the end every destination reads exactly the records past its acknowledged prefix.
    fn drain_check(&mut self) {
        self.refresh_durable();
        for (i, d) in self.dests.iter_mut().enumerate() {
            let got = self.readers[i]
                .try_read_batch(usize::MAX, usize::MAX)
                .unwrap();
            let expected: Vec<(u64, Bytes)> = self
                .records
                .range(d.read_pos..self.durable_upto)
                .map(|(s, b)| (*s, b.clone()))
                .collect();
            assert_eq!(got, expected, "final drain of {}", DESTS[i]);
        }
    }
}

async fn run(policy: SyncPolicy, actions: Vec<Action>) {
    let dir = fast_tempdir();
    let mut config = small_config(dir.path());
    config.segment_max_bytes = 256;
    config.max_total_bytes = 3072;
    config.sync = policy;
    let mut h = Harness {
        config,
        log: None,
        readers: Vec::new(),
        records: BTreeMap::new(),
        next_seq: 0,
        durable_upto: 0,
        dests: vec![DestModel::default(); DESTS.len()],
        counter: 0,
    };
    h.open();
    for a in &actions {
        h.step(a).await;
    }
    h.drain_check();
    if let Some(log) = h.log.take() {
        h.readers.clear();
        log.close().await.unwrap();
    }
}

fn policy() -> impl Strategy<Value = SyncPolicy> {
    prop_oneof![
        Just(SyncPolicy::Always),
        Just(SyncPolicy::Interval(Duration::from_secs(3600))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn log_matches_model(policy in policy(), actions in prop::collection::vec(action(), 1..60)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(policy, actions));
    }
}
