//! The `route` and `check` commands, run as a user runs them.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_events-router"));
    for v in [
        "POSTHOG_API_KEY",
        "MIXPANEL_TOKEN",
        "ROUTER_CONFIG",
        "ROUTER_LISTEN",
        "ROUTER_DATA_DIR",
    ] {
        c.env_remove(v);
    }
    c
}

fn run(args: &[&str], stdin: &str) -> Output {
    let mut child = bin()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn lines(o: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn examples() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/events.jsonl"
    ))
    .unwrap()
}

#[test]
fn routes_the_seed_examples_as_the_table_says() {
    let o = run(&["route"], &examples());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    let expected = [
        r#"{"index":0,"event":"Sign Up","destinations":["mixpanel"],"rules":["product"]}"#,
        r#"{"index":1,"event":"Page View","destinations":["mixpanel"],"rules":["product"]}"#,
        r#"{"index":2,"event":"Request Demo","destinations":["mixpanel"],"rules":["product"]}"#,
        r#"{"index":3,"event":"Purchase","destinations":["posthog"],"rules":["purchase-attributed","campaign"]}"#,
        r#"{"index":4,"event":"Purchase","destinations":["mixpanel"],"rules":["purchase-product"]}"#,
        r#"{"index":5,"event":"Newsletter Click","destinations":["posthog"],"rules":["campaign"]}"#,
        r#"{"index":6,"event":"Session Start","destinations":["posthog"],"rules":["sessions"]}"#,
        r#"{"index":7,"event":"$identify","destinations":["mixpanel","posthog"],"rules":["identify"]}"#,
        r#"{"index":8,"event":"Sign Up","destinations":["mixpanel","posthog"],"rules":["product","campaign"]}"#,
        r#"{"index":9,"event":"Button Clicked","destinations":["mixpanel"],"rules":["fallback"]}"#,
        r#"{"index":10,"event":"Sign Up","destinations":["mixpanel"],"rules":["product"]}"#,
        r#"{"index":11,"error":"must not be empty","field":"event"}"#,
    ];
    assert_eq!(out, expected);
}

#[test]
fn reads_a_file_argument_and_dash_for_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("in.jsonl");
    std::fs::write(&f, examples()).unwrap();
    let a = run(&["route", f.to_str().unwrap()], "");
    let b = run(&["route", "-"], &examples());
    assert!(a.status.success());
    assert_eq!(a.stdout, b.stdout);
    let missing = run(&["route", "/nonexistent/x.jsonl"], "");
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot open /nonexistent/x.jsonl"));
}

#[test]
fn payloads_show_exact_records() {
    let o = run(&["route", "--payloads"], &examples());
    let l = lines(&o);
    let ph = &l[3]["payloads"]["posthog"][0];
    assert_eq!(ph["event"], "Purchase");
    assert_eq!(ph["distinct_id"], "user123");
    assert_eq!(ph["properties"]["utm_source"], "google");
    assert_eq!(ph["uuid"].as_str().unwrap().len(), 36);
    let mp = &l[0]["payloads"]["mixpanel"][0];
    assert_eq!(mp["endpoint"], "import");
    assert_eq!(mp["body"]["properties"]["$insert_id"], "seed-1");
    assert_eq!(mp["body"]["properties"]["time"], 1_738_065_600_000_i64);
    let identify = &l[7]["payloads"];
    assert_eq!(identify["posthog"][0]["event"], "$identify");
    assert_eq!(identify["mixpanel"][1]["endpoint"], "engage");
    assert_eq!(
        identify["mixpanel"][1]["body"]["$set"]["$email"],
        "ada@example.com"
    );
}

#[test]
fn explain_shows_every_rule_verdict() {
    let o = run(
        &["route", "--explain"],
        r#"{"event":"Purchase","userId":"u","properties":{"utm_source":"x"}}"#,
    );
    let l = lines(&o);
    assert_eq!(l[0]["verdicts"]["purchase-attributed"], true);
    assert_eq!(l[0]["verdicts"]["purchase-product"], false);
    assert_eq!(l[0]["fallback"], false);
    assert_eq!(l[0]["canonical"]["userId"], "u");
}

#[test]
fn a_line_that_is_not_json_fails_with_its_number() {
    let o = run(
        &["route"],
        "{\"event\":\"A\",\"userId\":\"u\"}\n\n{broken\n",
    );
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(lines(&o).len(), 1, "lines before the bad one are printed");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("line 3: not JSON"), "{err}");
}

#[test]
fn check_prints_the_table_and_rejects_bad_config() {
    let o = run(&["check"], "");
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("purchase-attributed"));
    assert!(out.contains("no rule matched"));

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("router.toml");
    std::fs::write(&cfg, "[routing]\nfallback = []\n").unwrap();
    let o = run(&["check", "--config", cfg.to_str().unwrap()], "");
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("routing.fallback: must name at least one destination")
    );

    std::fs::write(&cfg, "[limits]\nmax_depth = -1\n").unwrap();
    let o = run(&["check", "--config", cfg.to_str().unwrap()], "");
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("limits.max_depth"));

    std::fs::write(&cfg, "[posthog]\napi_key = \"${ROUTER_TEST_UNSET_VAR}\"\n").unwrap();
    let o = run(&["check", "--config", cfg.to_str().unwrap()], "");
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("posthog.api_key: environment variable ROUTER_TEST_UNSET_VAR is not set")
    );
}

#[test]
fn custom_table_from_a_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("router.toml");
    std::fs::write(
        &cfg,
        r#"
[aliases]
"signup" = "Sign Up"

[routing]
fallback = ["archive"]

[[routing.rules]]
name = "signups"
to = ["posthog"]
[routing.rules.when]
event = "Sign Up"
"#,
    )
    .unwrap();
    let o = run(
        &["route", "--config", cfg.to_str().unwrap()],
        "{\"event\":\"signup\",\"userId\":\"u\"}\n{\"event\":\"x\",\"userId\":\"u\"}\n",
    );
    let l = lines(&o);
    assert_eq!(l[0]["destinations"], serde_json::json!(["posthog"]));
    assert_eq!(l[1]["destinations"], serde_json::json!(["archive"]));
}

#[test]
fn no_subcommand_shows_help() {
    let o = run(&[], "");
    assert_ne!(o.status.code(), Some(0));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("Usage: events-router <COMMAND>"), "{err}");
    assert!(err.contains("route"));
}

#[test]
fn example_router_toml_reproduces_the_default_table() {
    let cfg = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/router.toml");
    let a = run(&["route"], &examples());
    let b = run(&["route", "--config", cfg], &examples());
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    assert_eq!(a.stdout, b.stdout);
}

#[test]
fn buffer_inspect_reads_an_empty_log_and_names_a_missing_dir() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("buffer")).unwrap();
    let o = run(
        &[
            "buffer",
            "inspect",
            "--json",
            "--data-dir",
            dir.path().to_str().unwrap(),
        ],
        "",
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["total_records"], 0);
    let o = run(&["buffer", "inspect", "--data-dir", "/nonexistent-dir"], "");
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot inspect /nonexistent-dir/buffer"));
}

#[test]
fn the_readme_config_example_is_valid() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let at = readme.find("## Configuration").unwrap();
    let start = readme[at..].find("```toml\n").unwrap() + at + 8;
    let end = readme[start..].find("```").unwrap() + start;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("router.toml");
    std::fs::write(&cfg, &readme[start..end]).unwrap();
    let o = run(&["check", "--config", cfg.to_str().unwrap()], "");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("posthog: no api_key: outbox file"), "{out}");
}
