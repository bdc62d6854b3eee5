//! `[storage] kind = "redis"`: the storage contract against a real redis-server
//! (`common::redis_server`, a private instance on loopback), encryption of secret values at
//! rest, the key-encryption key check, leased and fenced locks between instances, an
//! unreachable Redis, and a server that keeps its state there.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::redis_server::Redis;
use common::*;
use portcullis::config::admin::Token;
use portcullis::config::storage::RedisSettings;
use portcullis::storage::crypt::Kek;
use portcullis::storage::{FileStorage, RedisLock, RedisStorage, Storage};
use rustls::HandshakeKind;

const KEY_PEM: &[u8] = b"-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----\n";

/// A KEK file of 32 random bytes in `dir`.
fn kek_file(dir: &Path, name: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    let mut raw = [0u8; 32];
    aws_lc_rs::rand::fill(&mut raw).unwrap();
    std::fs::write(&p, raw).unwrap();
    p
}

fn settings(redis: &Redis, prefix: &str, kek: Option<&Path>) -> RedisSettings {
    RedisSettings {
        url: redis.url(),
        ca: None,
        username: None,
        password: None,
        prefix: prefix.into(),
        kek: kek.map(|p| Arc::new(Kek::read(p).unwrap())),
        lock_lease: Duration::from_secs(30),
        sentinels: Vec::new(),
        sentinel_username: None,
        sentinel_password: None,
    }
}

fn open(redis: &Redis, prefix: &str, kek: Option<&Path>) -> RedisStorage {
    RedisStorage::open(settings(redis, prefix, kek)).unwrap()
}

fn open_err(s: RedisSettings) -> String {
    match RedisStorage::open(s) {
        Ok(s) => panic!("opened: {s:?}"),
        Err(e) => e.to_string(),
    }
}

/// What every [`Storage`] does, files or Redis.
fn contract(s: &dyn Storage) {
    assert_eq!(s.load("certs/a.example/cert.pem").unwrap(), None);
    s.store("certs/a.example/cert.pem", b"CERT", false).unwrap();
    s.store("certs/a.example/key.pem", KEY_PEM, true).unwrap();
    s.store("certs/*.b.example/cert.pem", b"W", false).unwrap();
    s.store("certsx/other", b"O", false).unwrap();
    assert_eq!(
        s.load("certs/a.example/cert.pem").unwrap().as_deref(),
        Some(&b"CERT"[..])
    );
    assert_eq!(
        s.load("certs/a.example/key.pem").unwrap().as_deref(),
        Some(KEY_PEM),
        "a secret value reads back in clear"
    );
    assert_eq!(
        s.list("certs").unwrap(),
        vec![
            "certs/*.b.example/cert.pem",
            "certs/a.example/cert.pem",
            "certs/a.example/key.pem"
        ]
    );
    assert_eq!(
        s.list("certs/*.b.example").unwrap(),
        vec!["certs/*.b.example/cert.pem"],
        "'*' in a key is matched literally"
    );
    assert_eq!(s.list("nothing").unwrap(), Vec::<String>::new());
    s.store("certs/a.example/cert.pem", b"NEW", false).unwrap();
    assert_eq!(
        s.load("certs/a.example/cert.pem").unwrap().as_deref(),
        Some(&b"NEW"[..])
    );
    s.delete("certs/a.example/cert.pem").unwrap();
    s.delete("certs/a.example/cert.pem").unwrap();
    assert_eq!(s.load("certs/a.example/cert.pem").unwrap(), None);
    // A lock: exclusive, the plain fenced write for its holder, released on drop.
    let held = s.try_lock("order/a.example").unwrap().expect("free");
    s.store_fenced(&*held, "certs/a.example/cert.pem", b"FENCED", false)
        .unwrap();
    assert_eq!(
        s.load("certs/a.example/cert.pem").unwrap().as_deref(),
        Some(&b"FENCED"[..])
    );
    drop(held);
    assert!(s.try_lock("order/a.example").unwrap().is_some());
}

#[test]
fn store_load_list_delete_as_with_files() {
    let dir = tempfile::tempdir().unwrap();
    contract(&FileStorage::new(dir.path().join("data")));
    let redis = Redis::start(dir.path());
    let kek = kek_file(dir.path(), "kek");
    let s = open(&redis, "portcullis:", Some(&kek));
    contract(&s);
    // The whole store: the bookkeeping (`.kek-id`, locks, fence counters) is not listed.
    let _lock = s.try_lock("order/b.example").unwrap().unwrap();
    assert_eq!(
        s.list("").unwrap(),
        vec![
            "certs/*.b.example/cert.pem",
            "certs/a.example/cert.pem",
            "certs/a.example/key.pem",
            "certsx/other"
        ]
    );
    assert!(redis.keys().iter().all(|k| k.starts_with("portcullis:")));
}

#[test]
fn keys_cannot_leave_the_prefix_and_prefixes_are_apart() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(dir.path());
    let kek = kek_file(dir.path(), "kek");
    let a = open(&redis, "a:", Some(&kek));
    let ab = open(&redis, "a:b:", Some(&kek));
    for bad in [
        "",
        "/etc/passwd",
        "../x",
        "a/../../x",
        "a//b",
        "a/./b",
        ".hidden",
        ".kek-id",
        "a/",
        "a\\b",
        "a b",
        "a\0b",
        "x:y",
    ] {
        assert_eq!(
            a.store(bad, b"x", false).unwrap_err().kind(),
            std::io::ErrorKind::InvalidInput,
            "{bad:?}"
        );
        assert!(a.load(bad).is_err(), "{bad:?}");
        assert!(a.try_lock(bad).is_err(), "{bad:?}");
    }
    a.store("certs/x/cert.pem", b"A", false).unwrap();
    ab.store("certs/x/cert.pem", b"AB", false).unwrap();
    ab.store("acme/acct.json", b"{}", false).unwrap();
    assert_eq!(a.load("certs/x/cert.pem").unwrap().unwrap(), b"A");
    assert_eq!(ab.load("certs/x/cert.pem").unwrap().unwrap(), b"AB");
    assert_eq!(a.list("").unwrap(), vec!["certs/x/cert.pem"]);
    assert_eq!(
        ab.list("").unwrap(),
        vec!["acme/acct.json", "certs/x/cert.pem"]
    );
    let _held = a.try_lock("order/x").unwrap().expect("free");
    assert!(
        ab.try_lock("order/x").unwrap().is_some(),
        "locks are per prefix too"
    );
}

#[test]
fn secret_values_are_encrypted_at_rest_and_others_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(dir.path());
    let kek = kek_file(dir.path(), "kek");
    let s = open(&redis, "portcullis:", Some(&kek));
    s.store("certs/a/key.pem", KEY_PEM, true).unwrap();
    s.store("certs/a/chain.pem", b"-----BEGIN CERTIFICATE-----\n", false)
        .unwrap();
    let raw = redis.get("portcullis:certs/a/key.pem").unwrap();
    assert!(
        !raw.windows(11).any(|w| w == b"PRIVATE KEY") && !raw.windows(5).any(|w| w == b"-----"),
        "stored in clear: {:?}",
        String::from_utf8_lossy(&raw)
    );
    assert!(!raw.windows(8).any(|w| w == &KEY_PEM[40..48]));
    assert_eq!(
        redis.get("portcullis:certs/a/chain.pem").unwrap(),
        b"-----BEGIN CERTIFICATE-----\n",
        "certificates are stored as they are"
    );
    // A value copied under another key does not decrypt there.
    let mut c = redis.conn();
    redis::cmd("SET")
        .arg("portcullis:certs/b/key.pem")
        .arg(&raw)
        .query::<()>(&mut c)
        .unwrap();
    let e = s.load("certs/b/key.pem").unwrap_err().to_string();
    assert!(e.contains("does not decrypt"), "{e}");
    // The explicit waiver stores keys as they are (under its own prefix).
    let plain = open(&redis, "plain:", None);
    plain.store("certs/a/key.pem", KEY_PEM, true).unwrap();
    assert_eq!(redis.get("plain:certs/a/key.pem").unwrap(), KEY_PEM);
}

#[test]
fn a_wrong_key_encryption_key_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(dir.path());
    let (right, wrong) = (kek_file(dir.path(), "right"), kek_file(dir.path(), "wrong"));
    let first = open(&redis, "portcullis:", Some(&right));
    first
        .store("acme/x/account.json", b"{\"key\":1}", true)
        .unwrap();
    // The same key file (another instance) opens and reads.
    let again = open(&redis, "portcullis:", Some(&right));
    assert!(again.load("acme/x/account.json").unwrap().is_some());

    let e = open_err(settings(&redis, "portcullis:", Some(&wrong)));
    assert_eq!(
        e,
        format!(
            "key-encryption key does not match the one these values were stored with ({}): use the same key file on every instance sharing the prefix",
            wrong.display()
        )
    );
    let e = open_err(settings(&redis, "portcullis:", None));
    assert!(
        e.contains("are encrypted") && e.contains("key_encryption_key_file"),
        "{e}"
    );
    // Another prefix is another store: its first KEK is recorded.
    open(&redis, "other:", Some(&wrong));
}

#[test]
fn a_lock_is_exclusive_across_instances_until_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(dir.path());
    let kek = kek_file(dir.path(), "kek");
    // Two stores on one Redis stand for two instances.
    let a = open(&redis, "portcullis:", Some(&kek));
    let b = open(&redis, "portcullis:", Some(&kek));
    let held = a
        .try_lock("order/example.com")
        .unwrap()
        .expect("first taker gets it");
    assert!(held.is_held());
    assert!(
        b.try_lock("order/example.com").unwrap().is_none(),
        "second taker must not"
    );
    let other = b
        .try_lock("order/other.example")
        .unwrap()
        .expect("other names are independent");
    let mut holders = b.lock_holders().unwrap();
    holders.sort_by(|x, y| x.name.cmp(&y.name));
    assert_eq!(holders.len(), 2, "{holders:?}");
    assert_eq!(holders[0].name, "order/example.com");
    assert_eq!(holders[0].fence, held.fence());
    let me = format!(":{}", std::process::id());
    assert!(holders[0].instance.ends_with(&me), "{holders:?}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((now - holders[0].since).abs() < 60, "{holders:?}");
    drop(other);
    let first_fence = held.fence();
    drop(held);
    let again = b
        .try_lock("order/example.com")
        .unwrap()
        .expect("released on drop");
    assert!(again.fence() > first_fence, "fence numbers only grow");
    assert_eq!(b.lock_holders().unwrap().len(), 1);
}

/// The lease in the expiry tests: short, yet with a second of slack between renewals (every
/// third of it) and its end, for a loaded machine.
const TEST_LEASE: Duration = Duration::from_millis(2400);

fn short_lease(redis: &Redis, kek: &Path, lease: Duration) -> RedisStorage {
    let mut s = settings(redis, "portcullis:", Some(kek));
    s.lock_lease = lease;
    RedisStorage::open(s).unwrap()
}

#[test]
fn a_lease_is_renewed_while_held_and_runs_out_when_the_holder_stops() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(dir.path());
    let kek = kek_file(dir.path(), "kek");
    let lease = TEST_LEASE;
    let a = short_lease(&redis, &kek, lease);
    let b = short_lease(&redis, &kek, lease);
    let old = a.try_lock("order/x").unwrap().unwrap();
    // Three leases long, the holder keeps it: nobody else gets it.
    let until = Instant::now() + lease * 3;
    while Instant::now() < until {
        assert!(b.try_lock("order/x").unwrap().is_none(), "taken while held");
        std::thread::sleep(Duration::from_millis(100));
    }
    a.store_fenced(&*old, "certs/x/chain.pem", b"OLD", false)
        .unwrap();

    // The holder stops renewing (as if it hung or died): the lease runs out, and only then
    // does another instance get the lock.
    old.as_any()
        .downcast_ref::<RedisLock>()
        .unwrap()
        .simulate_crash();
    let stopped = Instant::now();
    let new = loop {
        if let Some(l) = b.try_lock("order/x").unwrap() {
            break l;
        }
        assert!(stopped.elapsed() < lease * 3, "the lease never ran out");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        stopped.elapsed() >= lease / 2,
        "taken {:?} after renewal stopped: before the lease could run out",
        stopped.elapsed()
    );
    assert!(new.fence() > old.fence());
    b.store_fenced(&*new, "certs/x/chain.pem", b"NEW", false)
        .unwrap();

    // The old holder wakes up and writes its result: refused, and the new result stays.
    let e = a
        .store_fenced(&*old, "certs/x/chain.pem", b"STALE", false)
        .unwrap_err();
    assert!(e.to_string().contains("lock lost"), "{e}");
    assert!(!old.is_held());
    assert_eq!(b.load("certs/x/chain.pem").unwrap().unwrap(), b"NEW");
    // Dropping the old guard does not release the new holder's lock.
    drop(old);
    assert!(a.try_lock("order/x").unwrap().is_none());
    // A plain file-style store through the trait's default works for the holder too.
    b.store_fenced(&*new, "certs/x/key.pem", KEY_PEM, true)
        .unwrap();
    assert_eq!(b.load("certs/x/key.pem").unwrap().unwrap(), KEY_PEM);
}

/// Run by [`a_killed_holder_leaves_a_lease_that_expires`] in a child process: takes the lock,
/// says so on stdout, and holds it until killed.
#[test]
#[ignore = "a child process, started by a_killed_holder_leaves_a_lease_that_expires"]
fn lock_holder_child() {
    let url = std::env::var("LOCK_CHILD_URL").expect("started by its parent test");
    let kek = std::env::var("LOCK_CHILD_KEK").unwrap();
    let s = RedisStorage::open(RedisSettings {
        url,
        ca: None,
        username: None,
        password: None,
        prefix: "portcullis:".into(),
        kek: Some(Arc::new(Kek::read(Path::new(&kek)).unwrap())),
        lock_lease: TEST_LEASE,
        sentinels: Vec::new(),
        sentinel_username: None,
        sentinel_password: None,
    })
    .unwrap();
    let lock = s.try_lock("order/killed").unwrap().expect("free");
    println!("HELD {}", lock.fence());
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn a_killed_holder_leaves_a_lease_that_expires() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(dir.path());
    let kek = kek_file(dir.path(), "kek");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["lock_holder_child", "--exact", "--ignored", "--nocapture"])
        .env("LOCK_CHILD_URL", redis.url())
        .env("LOCK_CHILD_KEK", &kek)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("HELD") {
                let _ = tx.send(line);
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the child took the lock");
    let child_fence: u64 = line["HELD ".len()..].trim().parse().unwrap();
    let lease = TEST_LEASE;
    let me = short_lease(&redis, &kek, lease);
    // Alive, the child renews its lease: two leases long, it keeps the lock.
    let until = Instant::now() + lease * 2;
    while Instant::now() < until {
        assert!(me.try_lock("order/killed").unwrap().is_none());
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let killed = Instant::now();
    let mine = loop {
        if let Some(l) = me.try_lock("order/killed").unwrap() {
            break l;
        }
        assert!(
            killed.elapsed() < lease * 3,
            "the dead holder's lease never ran out"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(mine.fence() > child_fence);
}

#[test]
fn an_unreachable_redis_fails_fast_naming_it_and_is_used_again_when_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = Redis::start(dir.path());
    let kek = kek_file(dir.path(), "kek");
    let s = open(&redis, "portcullis:", Some(&kek));
    s.store("ocsp/a.der", b"DER", false).unwrap();
    redis.stop();
    let started = Instant::now();
    for e in [
        s.load("ocsp/a.der").unwrap_err(),
        s.store("ocsp/a.der", b"X", false).unwrap_err(),
        s.list("ocsp").unwrap_err(),
        s.try_lock("order/a").unwrap_err(),
    ] {
        assert!(
            e.to_string().contains(&redis.url())
                && e.kind() == std::io::ErrorKind::ConnectionRefused,
            "the error names the URL: {e}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    let e = open_err(settings(&redis, "portcullis:", Some(&kek)));
    assert!(e.contains(&redis.url()) && e.contains("refused"), "{e}");

    // Back (empty: nothing was persisted): the same store works again.
    redis.restart();
    assert_eq!(s.load("ocsp/a.der").unwrap(), None);
    s.store("ocsp/a.der", b"DER2", false).unwrap();
    assert_eq!(s.load("ocsp/a.der").unwrap().unwrap(), b"DER2");
    assert!(s.try_lock("order/a").unwrap().is_some());
}

#[test]
fn tls_with_a_private_ca_and_a_password() {
    require_tool("redis-server");
    let env = TestEnv::new();
    env.write_chain("redis", &pki().leaf(&["127.0.0.1"], Alg::Ecdsa));
    let redis = Redis::start_tls(
        env.dir.path(),
        &env.path("certs/redis.pem"),
        &env.path("certs/redis.key"),
        &["--requirepass", "s3cret-pass"],
    );
    let kek = kek_file(env.dir.path(), "kek");
    let root = std::fs::read(env.path("certs/root.pem")).unwrap();
    let mut s = settings(&redis, "portcullis:", Some(&kek));
    s.ca = Some((env.path("certs/root.pem"), root.clone()));
    s.password = Some(Token("s3cret-pass".into()));
    let store = RedisStorage::open(s.clone()).unwrap();
    store.store("certs/t/key.pem", KEY_PEM, true).unwrap();
    assert_eq!(store.load("certs/t/key.pem").unwrap().unwrap(), KEY_PEM);

    let mut wrong = s.clone();
    wrong.password = Some(Token("not-it".into()));
    let e = open_err(wrong);
    assert!(
        e.contains(&redis.url()) && e.contains("authentication failed"),
        "{e}"
    );
    // Without the private CA, the server's certificate is not trusted.
    let mut public_roots = s;
    public_roots.ca = None;
    let e = open_err(public_roots);
    assert!(
        e.contains(&redis.url()) && e.contains("UnknownIssuer"),
        "{e}"
    );
}

#[test]
fn a_server_with_redis_storage_serves_its_files_and_keeps_staples_in_redis() {
    use common::ocsp::{Mode, Responder};
    use std::sync::atomic::Ordering;
    require_tool("openssl");
    let env = TestEnv::new();
    let p = pki();
    env.write("ca.pem", &p.inter_pem);
    env.write("ca.key", p.inter_key_pem());
    let responder = Responder::start(
        env.dir.path(),
        &env.path("ca.pem"),
        (&env.path("ca.pem"), &env.path("ca.key")),
        60,
    );
    env.write_chain("ocsp", &p.leaf_with_ocsp(&[ALPHA], &responder.url, false));
    let redis = Redis::start(env.dir.path());
    kek_file(env.dir.path(), "storage.kek");
    let body = format!(
        "[storage]\nkind = \"redis\"\nurl = \"{}\"\nprefix = \"edge:\"\nkey_encryption_key_file = \"storage.kek\"\n\n\
         [[site]]\nname = \"alpha\"\nhosts = [\"{ALPHA}\"]\ncert = \"certs/ocsp.pem\"\nkey = \"certs/ocsp.key\"\n\
         [[site.route]]\npath = \"/\"\nrespond = {{ body = \"ok\" }}\n",
        redis.url()
    );
    let staple_of = |addr| {
        let staple = Arc::new(std::sync::Mutex::new(Vec::new()));
        let opts = ClientOpts {
            staple: Some(staple.clone()),
            ..Default::default()
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async { tls_connect(addr, Some(ALPHA), opts.build()).await.unwrap() });
        let der = staple.lock().unwrap().clone();
        der
    };

    let mut server = env.start(&body);
    // The responder is asked right after start; its answer is stored, then stapled.
    let deadline = Instant::now() + Duration::from_secs(15);
    let cached = loop {
        if let Some(k) = redis
            .keys()
            .into_iter()
            .find(|k| k.starts_with("edge:ocsp/"))
        {
            break k;
        }
        assert!(
            Instant::now() < deadline,
            "no staple in Redis: {:?}",
            redis.keys()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let staple = loop {
        let s = staple_of(server.https);
        if !s.is_empty() || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        !staple.is_empty(),
        "the file certificate is served with a staple"
    );
    assert_eq!(redis.get(&cached).unwrap(), staple);
    let keys = redis.keys();
    assert!(keys.contains(&"edge:.kek-id".to_string()), "{keys:?}");
    assert!(
        !server.env.path("data/ocsp").exists(),
        "nothing of it in the data directory"
    );

    // Restarted with the responder down: the staple comes from Redis at once.
    server.take().shutdown();
    responder.set_mode(Mode::Down);
    let hits = responder.hits.load(Ordering::SeqCst);
    let path = server.env.path("portcullis.toml");
    let (config, _) = server.env.load(&path).unwrap();
    let again = portcullis::server::Server::start(config).unwrap();
    assert_eq!(staple_of(again.https_addrs()[0]), staple);
    assert_eq!(responder.hits.load(Ordering::SeqCst), hits);
    again.shutdown();

    // Redis unreachable at start: the instance serves from its copy of what it held...
    drop(redis);
    let (config, _) = server.env.load(&path).unwrap();
    let again = portcullis::server::Server::start(config).expect("starts from its copy");
    assert_eq!(staple_of(again.https_addrs()[0]), staple);
    again.shutdown();
    // ...and one that holds nothing does not start, and says why.
    std::fs::remove_dir_all(server.env.path("data/shared-copy")).unwrap();
    let (config, _) = server.env.load(&path).unwrap();
    let e = match portcullis::server::Server::start(config) {
        Ok(_) => panic!("started without its storage"),
        Err(e) => e,
    };
    assert!(e.contains("[storage]") && e.contains("refused"), "{e}");
}

#[test]
fn acme_state_goes_to_redis_with_private_keys_encrypted() {
    use common::pebble::*;
    let PebbleEnv {
        env,
        dir,
        test_ca,
        http_port,
        pebble,
    } = PebbleEnv::start();
    let redis = Redis::start(env.dir.path());
    kek_file(env.dir.path(), "storage.kek");
    let config = format!(
        "{}\n[storage]\nkind = \"redis\"\nurl = \"{}\"\nkey_encryption_key_file = \"storage.kek\"\n",
        pebbled_config(1, http_port, &pebble.directory, &test_ca, ""),
        redis.url()
    );
    let path = env.write_config_raw(&config);
    let root = pebble_root(&dir, &pebble, &test_ca);
    let (cfg, _) = env.load(&path).unwrap();
    let server = portcullis::server::Server::start(cfg).expect("start");
    let port = server.https_addrs()[0].port();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !curl_localhost(&root, port).status.success() {
        assert!(Instant::now() < deadline, "no certificate after 30 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    server.shutdown();

    let keys = redis.keys();
    let find = |suffix: &str| {
        keys.iter()
            .find(|k| k.starts_with("portcullis:") && k.ends_with(suffix))
            .unwrap_or_else(|| panic!("no *{suffix} in Redis: {keys:?}"))
            .clone()
    };
    let chain = redis.get(&find("/chain.pem")).unwrap();
    assert!(chain.starts_with(b"-----BEGIN CERTIFICATE-----"));
    for secret in [find("/key.pem"), find("/account.json")] {
        let raw = redis.get(&secret).unwrap();
        assert!(
            !raw.windows(11).any(|w| w == b"PRIVATE KEY") && !raw.windows(5).any(|w| w == b"-----"),
            "{secret} stored in clear"
        );
    }
    for local in ["data/certs", "data/acme"] {
        assert!(!env.path(local).exists(), "{local} written");
    }

    // The CLI reads the same store, and a restart serves the stored certificate at once.
    let out = run_with_timeout(
        Command::new(bin()).args(["certs", "--config"]).arg(&path),
        Duration::from_secs(30),
    );
    let stdout = text(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("pebbled: ACME") && stdout.contains("renews"),
        "{stdout}{}",
        text(&out.stderr)
    );
    let (cfg, _) = env.load(&path).unwrap();
    let server = portcullis::server::Server::start(cfg).expect("restart");
    let out = curl_localhost(&root, server.https_addrs()[0].port());
    assert!(
        out.status.success(),
        "stored certificate not served right after restart: {}",
        text(&out.stderr)
    );
    server.shutdown();
}

#[tokio::test]
async fn a_ticket_from_one_instance_resumes_on_the_others() {
    let env = TestEnv::new();
    let redis = Redis::start(env.dir.path());
    let kek = kek_file(env.dir.path(), "storage.kek");
    let shared = format!(
        "[storage]\nkind = \"redis\"\nurl = \"{}\"\nkey_encryption_key_file = \"{}\"\n{ONE_SITE}",
        redis.url(),
        kek.display()
    );
    // Three instances, each with its own data directory, one Redis.
    let a = env.start(&shared);
    let b = TestEnv::new().start(&shared);
    let c = TestEnv::new().start(&shared);
    for (version, opts) in [
        ("TLS 1.3", ClientOpts::default().tls13()),
        ("TLS 1.2", ClientOpts::default().tls12()),
    ] {
        let cfg = opts.build();
        let first = request(a.https, cfg.clone(), Some(ALPHA), Req::get(ALPHA, "/"))
            .await
            .unwrap();
        assert_eq!(first.tls.kind, Some(HandshakeKind::Full), "{version}");
        for (name, srv) in [("B", &b), ("C", &c), ("A", &a)] {
            let r = request(srv.https, cfg.clone(), Some(ALPHA), Req::get(ALPHA, "/"))
                .await
                .unwrap();
            assert_eq!(
                r.tls.kind,
                Some(HandshakeKind::Resumed),
                "{version}: a ticket from A does not resume at {name}"
            );
            assert_eq!(r.status, 200);
        }
    }
    // The keys are stored sealed, like every secret.
    let raw = redis
        .get("portcullis:tls/ticket-keys")
        .expect("ticket keys in Redis");
    assert!(!raw.starts_with(b"v1"), "ticket keys stored in clear");

    // Instances with their own files keep their own keys: no resumption across them.
    let d = start(ONE_SITE);
    let e = start(ONE_SITE);
    let cfg = ClientOpts::default().tls13().build();
    request(d.https, cfg.clone(), Some(ALPHA), Req::get(ALPHA, "/"))
        .await
        .unwrap();
    let r = request(e.https, cfg, Some(ALPHA), Req::get(ALPHA, "/"))
        .await
        .unwrap();
    assert_eq!(r.tls.kind, Some(HandshakeKind::Full));
}

#[tokio::test]
async fn a_certificate_another_instance_stored_is_served_by_all_within_seconds() {
    let env = TestEnv::new();
    let redis = Redis::start(env.dir.path());
    let kek = kek_file(env.dir.path(), "storage.kek");
    // What an instance that obtained (then renewed) the certificate leaves in the store.
    let store = RedisStorage::open(settings(&redis, "portcullis:", Some(&kek))).unwrap();
    let put = |leaf: &Leaf| put_cert(&store, leaf);
    let first = pki().leaf_expiring_in(&["localhost"], 60);
    put(&first);
    // Two instances of an ACME site whose CA is unreachable: they serve what the store holds.
    let config = stored_cert_config(&redis, &kek);
    let a = env.start(&config);
    let b = TestEnv::new().start(&config);
    let served = served_leaf;
    assert_eq!(served(a.https).await, first.der);
    assert_eq!(served(b.https).await, first.der);
    // The renewal lands in the store: both serve it within seconds, without a CA of their own.
    let second = pki().leaf_expiring_in(&["localhost"], 70);
    put(&second);
    let stored_at = Instant::now();
    loop {
        if served(a.https).await == second.der && served(b.https).await == second.der {
            break;
        }
        assert!(
            stored_at.elapsed() < Duration::from_secs(3),
            "the renewed certificate is not served by both instances within 3 s (pub/sub)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // An older certificate (a stale writer) is not taken.
    put(&first);
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(served(a.https).await, second.der);
}

#[tokio::test]
async fn redis_stopped_under_load_fails_no_request_and_is_reported_until_it_returns() {
    let env = TestEnv::new();
    let mut redis = Redis::start(env.dir.path());
    let kek = kek_file(env.dir.path(), "storage.kek");
    let srv = env.start(&format!(
        "[storage]\nkind = \"redis\"\nurl = \"{}\"\nkey_encryption_key_file = \"{}\"\n{ONE_SITE}\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        redis.url(),
        kek.display()
    ));
    let admin = common::scrape::admin_addr(&srv);
    let storage_up = || async move {
        let s = common::scrape::scrape(admin).await;
        assert!(
            s.samples
                .iter()
                .any(|x| x.metric == "portcullis_storage_up"),
            "no portcullis_storage_up"
        );
        common::scrape::value(&s, "portcullis_storage_up", &[]).to_string()
    };
    assert_eq!(storage_up().await, "1");
    // Requests keep coming, new handshakes and resumed ones, while Redis is away.
    let cfg = ClientOpts::default().tls13().build();
    let https = srv.https;
    let mut requests = 0;
    let step = |deadline: Duration, want: &'static str| {
        let cfg = cfg.clone();
        async move {
            let started = Instant::now();
            let mut n = 0;
            loop {
                let r = request(https, cfg.clone(), Some(ALPHA), Req::get(ALPHA, "/"))
                    .await
                    .expect("a request failed");
                assert_eq!(r.status, 200);
                n += 1;
                if storage_up().await == want {
                    return n;
                }
                assert!(
                    started.elapsed() < deadline,
                    "portcullis_storage_up is not {want} after {deadline:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    redis.stop();
    let stopped = Instant::now();
    requests += step(Duration::from_secs(15), "0").await;
    // Thirty seconds without Redis: longer than a lock lease and a ticket-key sync round.
    while stopped.elapsed() < Duration::from_secs(30) {
        let r = request(https, cfg.clone(), Some(ALPHA), Req::get(ALPHA, "/"))
            .await
            .expect("a request failed while Redis was away");
        assert_eq!(r.status, 200);
        requests += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    redis.restart();
    requests += step(Duration::from_secs(15), "1").await;
    assert!(requests > 100, "{requests} requests");
}

#[tokio::test]
async fn the_status_page_shows_the_shared_storage_and_who_holds_which_lock() {
    let env = TestEnv::new();
    let redis = Redis::start(env.dir.path());
    let kek = kek_file(env.dir.path(), "storage.kek");
    let srv = env.start(&format!(
        "[storage]\nkind = \"redis\"\nurl = \"{}\"\nkey_encryption_key_file = \"{}\"\n{ONE_SITE}\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        redis.url(),
        kek.display()
    ));
    let admin = common::scrape::admin_addr(&srv);
    // Another instance holds a lock.
    let other = open(&redis, "portcullis:", Some(&kek));
    let _held = other.try_lock("order-example.com").unwrap().expect("free");
    let r = raw_tcp(
        admin,
        b"GET /status.json HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_str(&r.text()).unwrap();
    let st = &v["storage"];
    assert_eq!(st["kind"], "redis", "{st}");
    assert_eq!(st["up"], true, "{st}");
    let locks = st["locks"].as_array().unwrap();
    let held = locks
        .iter()
        .find(|l| l["lock"] == "order-example.com")
        .unwrap_or_else(|| panic!("the held lock is not shown: {st}"));
    assert!(held["instance"].as_str().unwrap().contains(':'), "{held}");
    assert!(held["fence"].as_u64().unwrap() >= 1, "{held}");
}

#[test]
fn a_local_copy_serves_reads_while_redis_is_away_and_refills_an_emptied_redis() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = Redis::start(dir.path());
    let kek = kek_file(dir.path(), "kek");
    let copy = dir.path().join("copy");
    let base = settings(&redis, "portcullis:", Some(&kek));
    let with_copy = |kek: &Path| {
        let mut s = base.clone();
        s.kek = Some(Arc::new(Kek::read(kek).unwrap()));
        RedisStorage::open_with_copy(s, copy.clone())
    };
    let s = with_copy(&kek).unwrap();
    s.store("certs/a/key.pem", KEY_PEM, true).unwrap();
    s.store("certs/a/chain.pem", b"CHAIN", false).unwrap();
    s.store("ocsp/gone.der", b"OLD", false).unwrap();
    // Another instance deletes a value: the next read removes it from this copy too.
    open(&redis, "portcullis:", Some(&kek))
        .delete("ocsp/gone.der")
        .unwrap();
    assert_eq!(s.load("ocsp/gone.der").unwrap(), None);

    redis.stop();
    // Reads answer from the copy; writes and locks need Redis.
    assert_eq!(s.load("certs/a/chain.pem").unwrap().unwrap(), b"CHAIN");
    assert_eq!(s.load("certs/a/key.pem").unwrap().unwrap(), KEY_PEM);
    assert_eq!(s.load("ocsp/gone.der").unwrap(), None);
    assert_eq!(
        s.list("certs").unwrap(),
        ["certs/a/chain.pem", "certs/a/key.pem"]
    );
    assert!(s.store("certs/a/chain.pem", b"X", false).is_err());
    assert!(s.try_lock("order-a").is_err());
    // A new instance opens from the copy while Redis is away (with a KEK it cannot check yet);
    // without a copy, an unreachable Redis is an error at open.
    let s2 = with_copy(&kek).expect("opens from the copy");
    assert_eq!(s2.load("certs/a/key.pem").unwrap().unwrap(), KEY_PEM);
    let wrong = with_copy(&kek_file(dir.path(), "other-kek")).expect("opens from the copy");
    let e = open_err(settings(&redis, "portcullis:", Some(&kek)));
    assert!(e.contains("refused"), "{e}");

    // Redis returns empty (nothing was persisted): the first read writes the copy back.
    redis.restart();
    assert!(redis.keys().is_empty());
    assert_eq!(s2.load("certs/a/chain.pem").unwrap().unwrap(), b"CHAIN");
    let keys = redis.keys();
    for k in ["portcullis:certs/a/chain.pem", "portcullis:certs/a/key.pem"] {
        assert!(keys.iter().any(|x| x == k), "{k} not restored: {keys:?}");
    }
    assert_eq!(
        redis.get("portcullis:certs/a/chain.pem").unwrap(),
        b"CHAIN",
        "public values are restored as they were"
    );
    let sealed = redis.get("portcullis:certs/a/key.pem").unwrap();
    assert!(
        !sealed.windows(11).any(|w| w == b"PRIVATE KEY"),
        "a restored private key is stored in clear"
    );
    assert!(
        !keys.iter().any(|k| k.contains("gone")),
        "a deleted value came back: {keys:?}"
    );
    // Every instance reads the restored values, sealed with the cluster's KEK...
    assert_eq!(
        open(&redis, "portcullis:", Some(&kek))
            .load("certs/a/key.pem")
            .unwrap()
            .unwrap(),
        KEY_PEM
    );
    // ...and the instance that opened with another KEK while Redis was away is refused now.
    let e = wrong
        .store("ocsp/x.der", b"X", false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not match"), "{e}");
    // The copy keeps private keys readable by the owner only.
    let mode = |p: std::path::PathBuf| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    };
    let kept = std::fs::read_dir(&copy)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert_eq!(mode(kept.join("certs/a/key.pem")), 0o600);
}

/// An ACME site whose CA cannot be reached: the instance serves what the store holds.
fn stored_cert_config(redis: &Redis, kek: &Path) -> String {
    format!(
        "[storage]\nkind = \"redis\"\nurl = \"{}\"\nkey_encryption_key_file = \"{}\"\n\
         [acme]\nca = \"https://127.0.0.1:1/directory\"\n\
         [[site]]\nname = \"shared\"\nhosts = [\"localhost\"]\nissuer = \"acme\"\n\
         [[site.route]]\npath = \"/\"\nrespond = {{ body = \"ok\" }}\n",
        redis.url(),
        kek.display()
    )
}

/// Stores `leaf` as the certificate of `localhost`, as the instance that obtained it would.
fn put_cert(store: &dyn Storage, leaf: &Leaf) {
    let dir = portcullis::acme::manager::cert_dir(&["localhost".to_string()]);
    store
        .store(
            &format!("{dir}/chain.pem"),
            pki().chain_pem(leaf).as_bytes(),
            false,
        )
        .unwrap();
    store
        .store(&format!("{dir}/key.pem"), leaf.key_pem.as_bytes(), true)
        .unwrap();
}

async fn served_leaf(addr: std::net::SocketAddr) -> rustls::pki_types::CertificateDer<'static> {
    let r = request(
        addr,
        ClientOpts::default().build(),
        Some("localhost"),
        Req::get("localhost", "/"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    r.tls.chain[0].clone()
}

#[tokio::test]
async fn an_instance_starts_without_redis_from_its_copy_refills_it_and_converges() {
    let env = TestEnv::new();
    let mut redis = Redis::start(env.dir.path());
    let kek = kek_file(env.dir.path(), "storage.kek");
    let store = open(&redis, "portcullis:", Some(&kek));
    let first = pki().leaf_expiring_in(&["localhost"], 60);
    put_cert(&store, &first);
    let path = env.write_config_raw(&stored_cert_config(&redis, &kek));
    let start = || {
        let (cfg, _) = env.load(&path).unwrap();
        portcullis::server::Server::start(cfg).expect("start")
    };
    let server = start();
    assert_eq!(served_leaf(server.https_addrs()[0]).await, first.der);
    server.shutdown();

    // Redis is away: the instance starts anyway and serves the certificate it held.
    redis.stop();
    let server = start();
    let https = server.https_addrs()[0];
    assert_eq!(served_leaf(https).await, first.der);

    // Redis returns empty: the instance writes back what it holds (no new order: the CA is
    // unreachable anyway, and the certificate is served throughout).
    redis.restart();
    let back = Instant::now();
    let chain = format!(
        "portcullis:{}/chain.pem",
        portcullis::acme::manager::cert_dir(&["localhost".to_string()])
    );
    while redis.get(&chain).is_none() {
        assert!(
            back.elapsed() < Duration::from_secs(8),
            "Redis not refilled from the instance's copy: {:?}",
            redis.keys()
        );
        assert_eq!(served_leaf(https).await, first.der);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        redis
            .keys()
            .iter()
            .any(|k| k == "portcullis:tls/ticket-keys"),
        "ticket keys not refilled: {:?}",
        redis.keys()
    );

    // The cluster goes on: a renewal another instance stores is served at once (pub/sub).
    let second = pki().leaf_expiring_in(&["localhost"], 70);
    put_cert(&store, &second);
    let stored_at = Instant::now();
    while served_leaf(https).await != second.der {
        assert!(
            stored_at.elapsed() < Duration::from_secs(3),
            "the renewal is not served within 3 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.shutdown();
}

#[tokio::test]
async fn a_challenge_placed_by_one_instance_is_answered_by_the_others() {
    let env = TestEnv::new();
    let redis = Redis::start(env.dir.path());
    let kek = kek_file(env.dir.path(), "storage.kek");
    let store = open(&redis, "portcullis:", Some(&kek));
    put_cert(&store, &pki().leaf(&["localhost"], Alg::Ecdsa));
    let srv = env.start(&stored_cert_config(&redis, &kek));
    // What the order holder does (another instance: this test's own store).
    let holder = portcullis::acme::Challenges {
        shared: Some(Arc::new(store)),
        ..Default::default()
    };
    let http = srv.http();
    let fetch = |token: &'static str| async move {
        let req = format!(
            "GET /.well-known/acme-challenge/{token} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        );
        raw_tcp(http, req.as_bytes()).await.unwrap()
    };
    let wait_for = |token: &'static str, want: u16| async move {
        let placed = Instant::now();
        loop {
            let r = fetch(token).await;
            if r.status == want {
                return r;
            }
            assert!(
                placed.elapsed() < Duration::from_millis(1500),
                "{token}: {} instead of {want} after 1.5 s",
                r.status
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    assert_eq!(fetch("tok-1").await.status, 404);
    holder.present_http01("tok-1", "tok-1.thumbprint");
    let r = wait_for("tok-1", 200).await;
    assert_eq!(r.text(), "tok-1.thumbprint");
    holder.withdraw_http01("tok-1");
    wait_for("tok-1", 404).await;

    // A challenge whose announcement this instance missed (written straight into Redis): the
    // miss is looked up in the store, within the lookup budget.
    let token = "missed-announcement-token-0123456789abcdef";
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let _: () = redis::cmd("SET")
        .arg(format!("portcullis:acme/challenges/http-01/{token}"))
        .arg(format!("{now} {token}.thumbprint"))
        .query(&mut redis.conn())
        .unwrap();
    let r = fetch(token).await;
    assert_eq!(r.status, 200, "a missed announcement is not looked up");
    assert_eq!(r.text(), format!("{token}.thumbprint"));
    // Unknown tokens cannot turn into a Redis read each: 100 of them cost at most the budget
    // (a burst of 20, then 10 a second), and strings not shaped like tokens none at all.
    let gets = || -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut redis.conn())
            .unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("cmdstat_get:calls="))
            .and_then(|v| v.split(',').next())
            .map_or(0, |v| v.parse().unwrap())
    };
    let before = gets();
    let started = Instant::now();
    for i in 0..100 {
        let probe: &'static str =
            Box::leak(format!("unknown-token-{i:04}-0123456789abcdef").into_boxed_str());
        assert_eq!(fetch(probe).await.status, 404);
        assert_eq!(fetch("short").await.status, 404);
    }
    let looked_up = gets() - before;
    let allowed = 20 + 10 * started.elapsed().as_secs() + 5; // and a few reads of the server's own
    assert!(
        (1..=allowed).contains(&looked_up),
        "{looked_up} GETs for 100 unknown tokens (allowed {allowed})"
    );

    // TLS-ALPN-01: the challenge certificate is presented over ALPN acme-tls/1.
    let digest = [7u8; 32];
    holder.present_tls_alpn("localhost", &digest).unwrap();
    let placed = Instant::now();
    let https = srv.https.to_string();
    loop {
        let out = Command::new("openssl")
            .args(["s_client", "-connect", &https, "-servername", "localhost"])
            .args(["-alpn", "acme-tls/1", "-showcerts"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stdout = text(&out.stdout);
        if stdout.contains("ALPN protocol: acme-tls/1") {
            use rustls::pki_types::pem::PemObject;
            let leaf = rustls::pki_types::CertificateDer::pem_slice_iter(stdout.as_bytes())
                .next()
                .expect("a certificate")
                .unwrap();
            assert!(
                leaf.windows(32).any(|w| w == digest),
                "the challenge certificate does not carry the key authorization digest"
            );
            break;
        }
        assert!(
            placed.elapsed() < Duration::from_millis(1500),
            "no acme-tls/1 answer after 1.5 s:\n{stdout}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    holder.withdraw_tls_alpn("localhost");
}

#[test]
fn with_sentinel_the_store_follows_a_failover_to_the_new_master() {
    use common::redis_server::Sentinel;
    let dir = tempfile::tempdir().unwrap();
    let mut master = Redis::start(dir.path());
    let replica = Redis::start_with(
        dir.path(),
        &["--replicaof", "127.0.0.1", &master.port.to_string()],
    );
    let sentinel = Sentinel::start_with(dir.path(), master.port, Some("sentinel-pass"));
    let kek = kek_file(dir.path(), "kek");
    let mut s = settings(&master, "portcullis:", Some(&kek));
    s.url = "redis://mymaster/0".into();
    // One sentinel that does not answer first: the next one is asked.
    s.sentinels = vec![
        ("127.0.0.1".into(), common::pebble::free_port()),
        ("127.0.0.1".into(), sentinel.port),
    ];
    // The sentinels ask for their own password.
    let e = open_err(s.clone());
    assert!(
        e.contains("sentinel") && e.to_lowercase().contains("auth"),
        "{e}"
    );
    s.sentinel_password = Some(Token("sentinel-pass".into()));
    let store = RedisStorage::open(s.clone()).unwrap();
    store.store("certs/a/key.pem", KEY_PEM, true).unwrap();
    store.store("certs/a/chain.pem", b"CHAIN", false).unwrap();
    assert_eq!(
        master.get("portcullis:certs/a/chain.pem").unwrap(),
        b"CHAIN"
    );
    // Replicated before the master goes away.
    let deadline = Instant::now() + Duration::from_secs(10);
    while replica.get("portcullis:certs/a/chain.pem").is_none() {
        assert!(Instant::now() < deadline, "not replicated");
        std::thread::sleep(Duration::from_millis(50));
    }

    master.stop();
    // Calls fail (naming the sentinels) until the sentinel has promoted the replica, then the
    // same store works against the new master.
    let stopped = Instant::now();
    loop {
        match store.store("ocsp/after.der", b"NEW", false) {
            Ok(()) => break,
            Err(e) => {
                let e = e.to_string();
                assert!(e.contains("sentinels") && e.contains("mymaster"), "{e}");
                assert!(
                    stopped.elapsed() < Duration::from_secs(30),
                    "no failover after 30 s: {e}"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    assert_eq!(
        sentinel.master(),
        Some(("127.0.0.1".to_string(), replica.port)),
        "the sentinel names the promoted replica"
    );
    assert_eq!(replica.get("portcullis:ocsp/after.der").unwrap(), b"NEW");
    assert_eq!(store.load("certs/a/key.pem").unwrap().unwrap(), KEY_PEM);
    assert!(store.try_lock("order-a").unwrap().is_some());

    // A master name the sentinels do not know is an error that says so.
    let mut unknown = s;
    unknown.url = "redis://nosuchmaster/0".into();
    let e = open_err(unknown);
    assert!(e.contains("nosuchmaster"), "{e}");
}
