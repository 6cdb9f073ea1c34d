//! Prints the log directory a `log_recovery` input builds (for triage).
//!
//! ```sh
//! cd fuzz && cargo run --example show_log_input -- artifacts/log_recovery/crash-...
//! ```

use events_router_fuzz::log_input::{self, HEADER};

fn main() {
    for path in std::env::args().skip(1) {
        let data = std::fs::read(&path).expect("read input");
        let spec = log_input::parse(&data);
        println!("{path}: {} bytes", data.len());
        for (base, bytes) in &spec.segments {
            println!("  segment {base:020}.seg: {} bytes", bytes.len());
            let mut i = 0;
            while i + HEADER <= bytes.len() {
                let found = log_input::valid_frames(&bytes[i..]);
                let Some((seq, payload)) = found.first() else {
                    break;
                };
                // Offset of that frame: the first valid frame at or after i.
                let off = (i..bytes.len())
                    .find(|&o| {
                        log_input::valid_frames(&bytes[o..]).first()
                            == Some(&(*seq, payload.clone()))
                    })
                    .unwrap_or(i);
                println!(
                    "    @{off:<6} seq {seq:<20} {} bytes {:?}",
                    payload.len(),
                    String::from_utf8_lossy(&payload[..payload.len().min(24)])
                );
                i = off + HEADER + payload.len();
            }
        }
        for c in &spec.cursors {
            let seq = (c.bytes.len() == 20)
                .then(|| u64::from_le_bytes(c.bytes[8..16].try_into().unwrap()));
            let valid = c.bytes == log_input::cursor_bytes(seq.unwrap_or(0));
            println!(
                "  cursor {}: {} bytes, seq {:?}, valid {valid}",
                c.dest,
                c.bytes.len(),
                seq
            );
        }
        for (name, body, dir) in &spec.strays {
            println!("  stray {name} ({} bytes, dir {dir})", body.len());
        }
        println!(
            "  reader: {} records, {} bytes",
            spec.max_records, spec.max_bytes
        );
    }
}
