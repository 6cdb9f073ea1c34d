//! The harness's routing expectations (`perf::load::events::TEMPLATES`) agree with the
//! router's own answer, asked as a black box: `events-router route` on the rendered events.

use std::io::Write as _;
use std::process::{Command, Stdio};

use perf::load::events::{MIXPANEL, POSTHOG, TEMPLATES};
use perf::load::router::ensure_binary;
use serde_json::Value;

#[test]
fn templates_route_where_the_harness_expects() {
    let binary = ensure_binary("debug").unwrap_or_else(|e| panic!("{e}"));
    let input: String = TEMPLATES
        .iter()
        .map(|t| {
            t.json
                .replace("@ID@", "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b")
                .replace("@U@", "42")
                + "\n"
        })
        .collect();
    let mut child = Command::new(&binary)
        .args(["route", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run events-router route");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write events");
    let output = child.wait_with_output().expect("route output");
    assert!(output.status.success(), "{output:?}");
    let lines: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), TEMPLATES.len());
    for (template, line) in TEMPLATES.iter().zip(&lines) {
        let dests: Vec<&str> = line["destinations"]
            .as_array()
            .unwrap_or_else(|| panic!("{}: {line}", template.name))
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let bits = dests.iter().fold(0, |acc, d| match *d {
            "posthog" => acc | POSTHOG,
            "mixpanel" => acc | MIXPANEL,
            other => panic!("{}: unknown destination {other}", template.name),
        });
        assert_eq!(
            bits, template.dests,
            "{}: router says {line}",
            template.name
        );
    }
}
