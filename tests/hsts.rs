//! Staged HSTS (`hsts.ramp`) on a running server: the first stage at first start, a stored
//! stage resumed and advanced by the background check, a certificate problem sending the ramp
//! back to the first stage, and the stage stored for the next start. The stage logic itself
//! (durations, gaps, clock) is tested with an injected time in `src/ops/hsts.rs`.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use portcullis::ops::hsts::Ramp;
use portcullis::tls::names::HostPattern;

const NAME: &str = "example.com";

fn site(ramp: &str) -> String {
    format!(
        r#"
[[site]]
name = "public"
hosts = ["{NAME}"]
cert = "certs/example.pem"
key = "certs/example.key"
[site.hsts]
ramp = {ramp}
include_subdomains = true
[[site.route]]
path = "/hello"
respond = {{ status = 200, body = "hello" }}
[[site.route]]
path = "/files"
files = {{ root = "www", strip_prefix = true }}
"#
    )
}

fn env_with(leaf: &Leaf) -> TestEnv {
    let env = TestEnv::new();
    env.write_chain("example", leaf);
    env.write("www/small.txt", "small file");
    env
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Where the ramp of `NAME` is stored, below the data directory.
fn stored_path(env: &TestEnv) -> std::path::PathBuf {
    let key = Ramp::storage_key(&[HostPattern::parse(NAME).unwrap()]);
    env.path("data").join(key)
}

fn store(env: &TestEnv, stage: usize, max_age: u64, since: u64) {
    let json = format!(
        r#"{{"site":"public","stage":{stage},"max_age":{max_age},"since":{since},"checked":{}}}"#,
        now() - 30
    );
    let path = stored_path(env);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, json).unwrap();
}

/// The HSTS header on a fixed and a static-file response, over both protocols (all four
/// must agree).
async fn hsts(srv: &TestServer) -> String {
    let mut seen = Vec::new();
    for alpn in ["http/1.1", "h2"] {
        for path in ["/hello", "/files/small.txt", "/files/small.txt"] {
            let r = get(srv.https, Some(NAME), path, alpn).await;
            assert_eq!(r.status, 200, "{path} over {alpn}");
            let all: Vec<&str> = r
                .headers
                .get_all("strict-transport-security")
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect();
            assert_eq!(all.len(), 1, "{path} over {alpn}: {all:?}");
            seen.push(all[0].to_string());
        }
    }
    assert!(seen.iter().all(|s| *s == seen[0]), "{seen:?}");
    seen.swap_remove(0)
}

/// Polls until the header is `want` (the background check runs at start).
async fn wait_for(srv: &TestServer, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = hsts(srv).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "HSTS stays {got:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn stored(env: &TestEnv) -> serde_json::Value {
    let text = std::fs::read_to_string(stored_path(env)).unwrap_or_default();
    serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
}

async fn wait_stored(env: &TestEnv, stage: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = stored(env);
        if v["stage"] == stage {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "stored state {v}, expected stage {stage}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_new_ramp_starts_at_five_minutes_and_is_stored() {
    let env = env_with(&pki().leaf(&[NAME], Alg::Ecdsa));
    let srv = env.start(&site("true"));
    assert_eq!(hsts(&srv).await, "max-age=300; includeSubDomains");
    let v = wait_stored(&srv.env, 0).await;
    assert_eq!(v["max_age"], 300);
    let st = srv.server.as_ref().unwrap().state().front.hsts_ramps();
    assert_eq!(st.len(), 1);
    assert_eq!((st[0].stage, st[0].stages), (0, 4));
    assert_eq!(st[0].max_age, Duration::from_secs(300));
    let next = st[0].next.unwrap();
    assert_eq!(next.max_age, Duration::from_secs(86_400));
    assert_eq!(next.at, st[0].since + 300);
    assert_eq!(st[0].problem, None);
}

/// A stored stage is resumed at start (the header of that stage at once), and moves on when
/// the stage has been served long enough: here a day on the second stage.
#[tokio::test]
async fn a_stored_stage_is_resumed_and_advances_when_served_long_enough() {
    let env = env_with(&pki().leaf(&[NAME], Alg::Ecdsa));
    store(&env, 1, 86_400, now() - 2 * 86_400);
    let srv = env.start(&site(r#"["5m", "1d", "1w", "1y"]"#));
    wait_for(&srv, "max-age=604800; includeSubDomains").await;
    let v = wait_stored(&srv.env, 2).await;
    assert_eq!(v["max_age"], 604_800);
    let st = &srv.server.as_ref().unwrap().state().front.hsts_ramps()[0];
    assert_eq!(st.stage, 2);
    assert!(now() - st.since < 60, "the new stage starts now: {st:?}");
}

/// The last stage, with a certificate three days from its end (its renewal has failed):
/// back to the first stage, and the problem is named; ten days from its end is no problem.
#[tokio::test]
async fn a_certificate_problem_sends_the_ramp_back_to_the_first_stage() {
    let env = env_with(&pki().leaf_expiring_in(&[NAME], 3));
    store(&env, 3, 31_536_000, now() - 30 * 86_400);
    let srv = env.start(&site("true"));
    wait_for(&srv, "max-age=300; includeSubDomains").await;
    wait_stored(&srv.env, 0).await;
    let st = &srv.server.as_ref().unwrap().state().front.hsts_ramps()[0];
    assert_eq!(st.stage, 0);
    let why = st.problem.as_deref().unwrap_or_default();
    assert!(why.contains("days and has not been renewed"), "{why:?}");

    let env = env_with(&pki().leaf_expiring_in(&[NAME], 10));
    store(&env, 3, 31_536_000, now() - 30 * 86_400);
    let srv = env.start(&site("true"));
    let st = wait_checked(&srv).await;
    assert_eq!((st.stage, st.problem), (3, None));
    assert_eq!(hsts(&srv).await, "max-age=31536000; includeSubDomains");
}

/// An expired certificate (served anyway, with a loud warning) drops the ramp too.
#[tokio::test]
async fn an_expired_certificate_sends_the_ramp_back_to_the_first_stage() {
    let env = env_with(&pki().expired_leaf(&[NAME]));
    store(&env, 2, 604_800, now() - 3 * 86_400);
    let srv = env.start(&site("true"));
    let st = wait_checked(&srv).await;
    assert_eq!(st.stage, 0);
    let why = st.problem.as_deref().unwrap_or_default();
    assert!(why.contains("has expired"), "{why:?}");
    assert_eq!(wait_stored(&srv.env, 0).await["max_age"], 300);
}

/// The ramp's status once the first check has run (it stores the check time).
async fn wait_checked(srv: &TestServer) -> portcullis::ops::hsts::RampStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = stored(&srv.env);
        if v["checked"].as_u64().is_some_and(|c| c + 20 > now()) {
            return srv.server.as_ref().unwrap().state().front.hsts_ramps()[0].clone();
        }
        assert!(Instant::now() < deadline, "no check stored: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
