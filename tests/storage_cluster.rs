//! Several instances as one front door (`[storage] kind = "redis"`): three instances on
//! 127.0.0.1, 127.0.0.2 and 127.0.0.3 share one redis-server and one pebble. Each certificate
//! is ordered once for the whole cluster (counted in pebble's log), every instance serves it,
//! a TLS ticket from one instance resumes on the others, and an instance killed while it holds
//! an order lock leaves a lease that runs out before another instance finishes the order.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::*;
use common::pebble::*;
use common::redis_server::Redis;
use common::*;
use rustls::pki_types::CertificateDer;
use rustls::HandshakeKind;

/// A client trusting pebble's root only.
fn pebble_client(root: &Path, tls13_only: bool) -> Arc<rustls::ClientConfig> {
    let pem = std::fs::read(root).unwrap();
    let mut opts = ClientOpts {
        root: Some(pem_leaf(&pem)),
        ..Default::default()
    };
    if tls13_only {
        opts = opts.tls13();
    }
    opts.build()
}

/// The leaf `addr` presents for `name` to a client trusting pebble's root, once a request
/// for `/` is answered with `body`; `Err` says why not (yet).
async fn served_leaf(
    addr: SocketAddr,
    name: &str,
    root: &Path,
    body: &str,
) -> Result<CertificateDer<'static>, String> {
    let r = request(
        addr,
        pebble_client(root, false),
        Some(name),
        Req::get(name, "/"),
    )
    .await?;
    if r.status != 200 || r.text() != body {
        return Err(format!("{name} at {addr}: {} {:?}", r.status, r.text()));
    }
    Ok(r.tls.chain[0].clone())
}

/// Polls [`served_leaf`] until it succeeds, for at most `within`, failing at once should
/// pebble have been asked for more than `max_orders` orders.
async fn wait_served(
    addr: SocketAddr,
    name: &str,
    root: &Path,
    body: &str,
    within: Duration,
    (pebble_dir, max_orders): (&Path, usize),
) -> CertificateDer<'static> {
    let deadline = Instant::now() + within;
    loop {
        let orders = new_orders(pebble_dir);
        assert!(
            orders <= max_orders,
            "{orders} orders at pebble, {max_orders} expected, while waiting for {addr} to serve {name}:\n{}",
            pebble_log_tail(pebble_dir)
        );
        match served_leaf(addr, name, root, body).await {
            Ok(leaf) => return leaf,
            Err(e) => assert!(
                Instant::now() < deadline,
                "{addr} does not serve a certificate from pebble for {name} after {within:?}: {e}\n\
                 new orders at pebble: {}\npebble log:\n{}",
                new_orders(pebble_dir),
                pebble_log_tail(pebble_dir)
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn three_instances_order_each_name_once_and_serve_the_same_certificate() {
    let env = TestEnv::new();
    let dir = env.path("acme");
    std::fs::create_dir_all(&dir).unwrap();
    let test_ca = env.write("test-root.pem", &pki().root_pem);
    let (http_port, tls_port) = (free_port(), free_port());
    // Every name resolves to 127.0.0.1 (A): whichever instance orders, the CA validates at A.
    let (pebble, _dns) = start_pebble_resolving(&dir, http_port, tls_port);
    let root = pebble_root(&dir, &pebble, &test_ca);
    let redis = Redis::start(env.dir.path());
    let kek = kek_file(env.dir.path(), "storage.kek");
    let shared = Shared {
        http_port,
        tls_port,
        pebble: &pebble,
        test_ca: &test_ca,
        redis: &redis,
        kek: &kek,
        lease: None,
    };
    let names = ["a.test", "b.test"];

    // Three instances, each with its own data directory, loaded first and started together.
    let configs: Vec<_> = INSTANCES
        .iter()
        .map(|ip| {
            let e = TestEnv::new();
            let path = e.write_config_raw(&shared.config(*ip, &names));
            let (config, _) = e
                .load(&path)
                .unwrap_or_else(|p| panic!("instance {ip}: {}", p[0]));
            (e, config)
        })
        .collect();
    let barrier = std::sync::Barrier::new(INSTANCES.len());
    let servers: Vec<TestServer> = std::thread::scope(|s| {
        let started: Vec<_> = configs
            .into_iter()
            .map(|(e, config)| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    let server = portcullis::server::Server::start(config).expect("start");
                    TestServer {
                        https: server.https_addrs()[0],
                        http: server.http_addrs().first().copied(),
                        server: Some(server),
                        env: e,
                    }
                })
            })
            .collect();
        started.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (srv, ip) in servers.iter().zip(INSTANCES) {
        assert_eq!(srv.https, SocketAddr::from((ip, tls_port)));
    }

    // Every instance serves each name, with one certificate per name for the whole cluster.
    let mut leaves = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let body = format!("s{i}");
        let mut served = Vec::new();
        for srv in &servers {
            let leaf = wait_served(
                srv.https,
                name,
                &root,
                &body,
                Duration::from_secs(40),
                (&dir, names.len()),
            )
            .await;
            served.push(leaf);
        }
        for (leaf, srv) in served.iter().zip(&servers).skip(1) {
            assert!(
                *leaf == served[0],
                "{name}: {} serves another certificate than {}",
                srv.https,
                servers[0].https
            );
        }
        let stored = redis
            .get(&chain_key(&[name.to_string()]))
            .unwrap_or_else(|| panic!("{name}: no chain in Redis: {:?}", redis.keys()));
        assert!(
            pem_leaf(&stored) == served[0],
            "{name}: the instances serve another certificate than the one in Redis"
        );
        leaves.push(served[0].clone());
    }
    assert!(leaves[0] != leaves[1], "one certificate for both names");
    // pebble's log does not name an order's identifiers; but each name has a certificate,
    // so as many orders as names means one order per name.
    assert_eq!(
        new_orders(&dir),
        names.len(),
        "pebble was asked for another number of orders than one per name:\n{}",
        pebble_log_tail(&dir)
    );
    // Settled: the waiting instances look again every 2 s and the stored certificates are
    // compared every 10 s; none of that orders anything or changes what is served.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        new_orders(&dir),
        names.len(),
        "more orders after every instance served the certificates:\n{}",
        pebble_log_tail(&dir)
    );
    for (i, name) in names.iter().enumerate() {
        for srv in &servers {
            let leaf = served_leaf(srv.https, name, &root, &format!("s{i}"))
                .await
                .unwrap();
            assert!(
                leaf == leaves[i],
                "{name}: {} changed its certificate",
                srv.https
            );
        }
    }

    // A TLS 1.3 ticket from A resumes at B and at C (a new client for each: its only
    // tickets are A's).
    let (a, others) = servers.split_first().unwrap();
    for (label, srv) in ["B", "C"].iter().zip(others) {
        let cfg = pebble_client(&root, true);
        let first = request(
            a.https,
            cfg.clone(),
            Some(names[0]),
            Req::get(names[0], "/"),
        )
        .await
        .unwrap();
        assert_eq!(first.tls.kind, Some(HandshakeKind::Full));
        let r = request(srv.https, cfg, Some(names[0]), Req::get(names[0], "/"))
            .await
            .unwrap();
        assert_eq!(
            r.tls.kind,
            Some(HandshakeKind::Resumed),
            "a TLS 1.3 ticket from A does not resume at {label} ({})",
            srv.https
        );
        assert_eq!((r.status, r.text()), (200, "s0".to_string()));
    }
}

/// The lease of the lock-holder test: short, and still a second and more between the
/// holder's renewals (every third of it) and its end.
const LEASE: &str = "4s";

#[tokio::test]
async fn a_lock_holder_killed_mid_order_is_finished_by_another_after_the_lease() {
    let env = TestEnv::new();
    let dir = env.path("acme");
    std::fs::create_dir_all(&dir).unwrap();
    let test_ca = env.write("test-root.pem", &pki().root_pem);
    let (http_port, tls_port) = (free_port(), free_port());
    let (pebble, dns) = start_pebble_resolving(&dir, http_port, tls_port);
    let root = pebble_root(&dir, &pebble, &test_ca);
    // The CA reaches the cluster through a door on 127.0.0.4 that holds its first
    // validation requests: the first order hangs there while its holder holds the lock.
    let name = "slow.test";
    resolve(&dns, name, Ipv4Addr::new(127, 0, 0, 4));
    let door = Door::hold(SocketAddr::from(([127, 0, 0, 4], http_port)));
    let redis = Redis::start(env.dir.path());
    let kek = kek_file(env.dir.path(), "storage.kek");
    let shared = Shared {
        http_port,
        tls_port,
        pebble: &pebble,
        test_ca: &test_ca,
        redis: &redis,
        kek: &kek,
        lease: Some(LEASE),
    };

    // Three instances as child processes, so that one can be killed.
    let mut instances: Vec<(Ipv4Addr, ServeProcess)> = INSTANCES
        .iter()
        .map(|ip| {
            let path = env.write(
                &format!("{ip}/portcullis.toml"),
                shared.config(*ip, &[name]),
            );
            let p = ServeProcess::spawn(&["serve", "--config", path.to_str().unwrap()], &[]);
            (*ip, p)
        })
        .collect();
    for (ip, p) in &mut instances {
        let line = p.wait_for_line("listening on https://", Duration::from_secs(15));
        assert_eq!(parse_listen_line(&line), SocketAddr::from((*ip, tls_port)));
    }

    // The first validation request reaches the door: the order runs, its holder has the lock.
    let deadline = Instant::now() + Duration::from_secs(30);
    while door.accepted() == 0 {
        assert!(
            Instant::now() < deadline,
            "no validation request from pebble within 30 s:\n{}",
            pebble_log_tail(&dir)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let names = vec![name.to_string()];
    let lock_key = order_lock_key(&names);
    let held = redis
        .get(&lock_key)
        .map(|v| String::from_utf8_lossy(&v).into_owned())
        .unwrap_or_else(|| panic!("an order runs, but no lock {lock_key}: {:?}", redis.keys()));
    let pid = holder_pid(&held);
    let holder = instances
        .iter()
        .position(|(_, p)| p.child.id() == pid)
        .unwrap_or_else(|| panic!("the lock {held:?} is held by none of the instances"));
    let (killed_ip, mut killed) = instances.remove(holder);
    killed.child.kill().unwrap();
    killed.child.wait().unwrap();
    let killed_at = Instant::now();
    let left = pttl(&redis, &lock_key);
    assert_eq!(
        redis
            .get(&lock_key)
            .map(|v| String::from_utf8_lossy(&v).into_owned()),
        Some(held.clone()),
        "the lock changed hands while its holder ({killed_ip}) lived"
    );
    assert!(left > 0, "the lock has no lease: PTTL {left}");
    let expires = killed_at + Duration::from_millis(left as u64);
    assert!(
        redis.get(&chain_key(&names)).is_none(),
        "a certificate was stored before the holder was killed"
    );
    assert_eq!(new_orders(&dir), 1, "{}", pebble_log_tail(&dir));

    // From now on the door forwards each validation request to the surviving instance that
    // does not hold the order lock: the challenge is answered by one that did not place it.
    let url = redis.url();
    let alive: Vec<(u32, Ipv4Addr)> = instances
        .iter()
        .map(|(ip, p)| (p.child.id(), *ip))
        .collect();
    let route_key = lock_key.clone();
    door.open(Box::new(move || {
        let pid = holder_pid(&get_text(&url, &route_key)?);
        let ip = alive.iter().find(|(p, _)| *p != pid)?.1;
        Some(SocketAddr::from((ip, http_port)))
    }));

    // While the dead holder's lease runs, nobody orders; it ends when it expires, not before.
    let deadline = expires + Duration::from_secs(10);
    let successor = loop {
        // Counted before the lock is read: while the lock still holds the dead holder's
        // token, every order counted was placed during its lease.
        let orders = new_orders(&dir);
        let now = redis.get(&lock_key);
        match now.map(|v| String::from_utf8_lossy(&v).into_owned()) {
            Some(v) if v == held => assert_eq!(
                orders,
                1,
                "a second order {:?} after the holder was killed, while its lease ran:\n{}",
                killed_at.elapsed(),
                pebble_log_tail(&dir)
            ),
            other => {
                assert!(
                    Instant::now() + Duration::from_millis(100) >= expires,
                    "the dead holder's lock ended {:?} after the kill, before its lease ({left} ms)",
                    killed_at.elapsed()
                );
                if let Some(v) = other {
                    break v;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "no instance took the order lock within 10 s after the lease ran out"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let successor_pid = holder_pid(&successor);
    assert!(
        instances.iter().any(|(_, p)| p.child.id() == successor_pid),
        "the order lock went to no surviving instance: {successor:?}"
    );

    // The successor orders and stores the certificate; both survivors serve it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let stored = loop {
        if let Some(chain) = redis.get(&chain_key(&names)) {
            break pem_leaf(&chain);
        }
        assert!(
            Instant::now() < deadline,
            "no certificate stored 30 s after the lease ran out (validated at the survivor \
             that did not order); new orders: {}\n{}",
            new_orders(&dir),
            pebble_log_tail(&dir)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let issued_key = chain_key(&names).replace("/chain.pem", "/issued.json");
    let issued: serde_json::Value = serde_json::from_slice(
        &redis
            .get(&issued_key)
            .unwrap_or_else(|| panic!("no {issued_key}: {:?}", redis.keys())),
    )
    .unwrap();
    assert!(
        issued["by"]
            .as_str()
            .is_some_and(|by| by.ends_with(&format!(":{successor_pid}"))),
        "the certificate is not recorded as obtained by the lock's successor (pid {successor_pid}): {issued}"
    );
    for (ip, _) in &instances {
        let leaf = wait_served(
            SocketAddr::from((*ip, tls_port)),
            name,
            &root,
            "s0",
            Duration::from_secs(15),
            (&dir, 2),
        )
        .await;
        assert!(
            leaf == stored,
            "{ip} serves another certificate than the stored one"
        );
    }
    assert_eq!(
        new_orders(&dir),
        2,
        "one order by the killed holder, one by its successor:\n{}",
        pebble_log_tail(&dir)
    );
}
