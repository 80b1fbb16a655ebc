//! End-to-end tests of the replicated store: real `drover server` processes on loopback.
//!
//! The fault test needs root (it cuts a member off with nftables); it fails with a clear
//! message when run without. CI runs as root.

use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::chrono;
use raft_store::{Consistency, KeySpan, RangeRequest, StoreError, Txn};
use testkit::linearizability::check_kv;
use testkit::workload::{final_reads, run_client, Recorder};
use testkit::{Cluster, Partition};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_drover"))
}

fn require_root() {
    let uid = std::process::Command::new("id")
        .arg("-u")
        .output()
        .expect("id -u");
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "this test needs root: it installs nftables rules to cut a member off"
    );
}

/// Waits until every running member has applied the same revision.
async fn converge(c: &Cluster) -> anyhow::Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut revs = Vec::new();
        for i in 0..c.members.len() {
            if c.members[i].is_running() {
                revs.push(c.status(i).await.map(|s| s.revision).unwrap_or(0));
            }
        }
        if revs.windows(2).all(|w| w[0] == w[1]) {
            return Ok(revs[0]);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "members did not converge: {revs:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn root_three_members_stay_linearizable_through_kill_restart_partition_and_membership_changes(
) {
    require_root();
    let mut c = Cluster::start(bin(), 21, 3).await.expect("start 3 members");
    let rec = Recorder::new();
    // The recorder's clock against the members' log timestamps.
    eprintln!(
        "recorder started at {:?} since the epoch",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
    );
    // What the test does when, on the recorder's clock (to read a failing history by).
    let step = |what: &str| eprintln!("at {} ms: {what}", rec.now() / 1_000_000);
    let keys: Vec<String> = (0..6).map(|i| format!("/reg/{i}")).collect();
    let until = Instant::now() + Duration::from_secs(36);
    let mut clients = Vec::new();
    for id in 0..6 {
        let mut client = c.client();
        client.patience = Duration::from_secs(20);
        clients.push(tokio::spawn(run_client(
            client,
            rec.clone(),
            id,
            keys.clone(),
            until,
        )));
    }

    step("1. kill -9 the leader");
    // 1. kill -9 the leader, let the others elect, bring it back.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let leader = c.leader(Duration::from_secs(10)).await.unwrap();
    c.kill(leader);
    step(&format!("killed member {leader}"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    eprintln!(
        "at {} ms: restarting member {leader}",
        rec.now() / 1_000_000
    );
    c.restart(leader).await.expect("restart killed leader");
    eprintln!(
        "at {} ms: member {leader} serves again",
        rec.now() / 1_000_000
    );

    step("2. kill -9 and restart a follower.");
    // 2. kill -9 and restart a follower.
    let follower = (c.leader(Duration::from_secs(10)).await.unwrap() + 1) % 3;
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.restart(follower).await.expect("restart follower");

    step("3. Cut the current leader off");
    // 3. Cut the current leader off from everybody (peers and clients), then heal.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let leader = c.leader(Duration::from_secs(10)).await.unwrap();
    {
        let _cut = Partition::isolate(c.members[leader].addr.ip()).expect("partition");
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    step("4. Add a fourth member");
    // 4. Add a fourth member, then remove one of the originals.
    let added = c.add_member().await.expect("add a member");
    let victim = (c.leader(Duration::from_secs(10)).await.unwrap() + 1) % 3;
    let victim_id = c.status(victim).await.unwrap().node_id;
    c.client()
        .remove_member(victim_id)
        .await
        .expect("remove a member");
    c.kill(victim);

    for t in clients {
        t.await.unwrap();
    }
    let client = c.client();
    final_reads(&client, &rec, &keys).await;

    let counts = rec.counts.lock().unwrap().clone();
    eprintln!("workload: {counts:?}");
    assert!(
        counts.ok > 200,
        "too few operations completed: {counts:?}\n{}",
        c.all_logs()
    );

    // Every acknowledged unique write is on every remaining member.
    let acked: Vec<String> = rec.acked.lock().unwrap().iter().cloned().collect();
    assert!(!acked.is_empty());
    assert_all_present(&c, "/acked/", &acked).await;
    let status = c.status(added).await.unwrap();
    assert_eq!(status.voters.len(), 3, "after add and remove: {status:?}");
    assert!(!status.voters.contains_key(&victim_id));

    let history = rec.ops.lock().unwrap().clone();
    if let Err(e) = check_kv(&history) {
        panic!("{e}\n{}", c.all_logs());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9_of_a_single_member() {
    let mut c = Cluster::start(bin(), 41, 1).await.unwrap();
    let client = c.client();
    let mut last = 0;
    for i in 0..200 {
        last = client
            .put(format!("/k/{i:03}").as_bytes(), format!("v{i}").as_bytes())
            .await
            .unwrap()
            .revision;
    }
    c.kill(0);
    c.restart(0).await.unwrap();
    let client = c.client();
    let resp = client
        .range(
            &RangeRequest::new(KeySpan::prefix("/k/")),
            Consistency::Linearizable,
        )
        .await
        .unwrap();
    assert_eq!(resp.count, 200);
    assert!(
        resp.revision >= last,
        "revision went back from {last} to {}",
        resp.revision
    );
    assert_eq!(resp.kvs[199].value, b"v199");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_purge_the_log_and_bring_a_new_member_up_to_date() {
    let mut c = Cluster::new(bin(), 45).unwrap();
    c.flags
        .extend(["--snapshot-every".to_string(), "200".to_string()]);
    c.add_member().await.unwrap();
    let client = c.client();
    let mut last = 0;
    for i in 0..700 {
        last = client
            .put(
                format!("/s/{}", i % 50).as_bytes(),
                format!("v{i}").as_bytes(),
            )
            .await
            .unwrap()
            .revision;
    }
    assert!(
        c.members[0].data_dir.join("snapshot.bin").exists(),
        "no snapshot was built"
    );
    // The new member cannot replay from index 1 (purged): it must install the snapshot.
    let added = c.add_member().await.unwrap();
    if let Err(e) = converge(&c).await {
        panic!("{e}\n{}", c.all_logs());
    }
    let member = c.client_of(&[c.members[added].peer.to_string()]);
    let resp = member
        .range(
            &RangeRequest::new(KeySpan::prefix("/s/")),
            Consistency::Serializable,
        )
        .await
        .unwrap();
    assert_eq!(resp.count, 50);
    // At least the last put (a starting member may write too: it points the `kubernetes`
    // Service's endpoints at itself).
    assert!(resp.revision >= last, "{} < {last}", resp.revision);
    let newest = resp.kvs.iter().find(|kv| kv.key == b"/s/49").unwrap();
    assert_eq!(newest.value, b"v699");
    // And a restart of a snapshotted member recovers everything, history included.
    c.kill(0);
    c.restart(0).await.unwrap();
    // It loads its snapshot, then replays the log after it once it learns the commit index.
    if let Err(e) = converge(&c).await {
        panic!("{e}\n{}", c.all_logs());
    }
    let resp = c
        .client_of(&[c.members[0].peer.to_string()])
        .range(
            &RangeRequest::new(KeySpan::prefix("/s/")).at(last - 50),
            Consistency::Serializable,
        )
        .await
        .unwrap();
    assert_eq!(resp.count, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors() {
    let c = Cluster::start(bin(), 49, 1).await.unwrap();
    let client = c.client();
    let big = vec![b'x'; 2 * 1024 * 1024];
    let err = client.put(b"/big", &big).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::InvalidArgument(m) if m.contains("success[0].value")),
        "{err}"
    );
    let err = client.put(&[b'k'; 5000], b"v").await.unwrap_err();
    assert!(
        matches!(&err, StoreError::InvalidArgument(m) if m.contains("key is 5000 bytes")),
        "{err}"
    );
    let err = client.remove_member(12345).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Membership(m) if m.contains("not in the cluster")),
        "{err}"
    );
    let err = client
        .range(
            &RangeRequest::new(KeySpan::key("/x")).at(999),
            Consistency::Linearizable,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::FutureRevision { requested: 999, .. }),
        "{err}"
    );
    // A malformed body is a 400, not a crash.
    let resp = post(&c, "/store/v1/txn", b"garbage".to_vec()).await;
    assert!(resp.starts_with("400"), "{resp}");
    let err = client.txn(&Txn::put("", "v")).await.unwrap_err();
    assert!(err.to_string().contains("must not be empty"), "{err}");
    // The member is still fine afterwards.
    client.put(b"/after", b"ok").await.unwrap();
}

async fn post(c: &Cluster, path: &str, body: Vec<u8>) -> String {
    let resp = raft_store::network::Transport::new(None, Some(&c.tls().unwrap()))
        .post(&c.addrs()[0], path)
        .body(body)
        .send()
        .await
        .unwrap();
    format!("{} {}", resp.status().as_u16(), resp.text().await.unwrap())
}

/// Runs `drover server` to completion and returns its exit code and stderr.
fn run_server(args: &[&str]) -> (i32, String) {
    let mut child = std::process::Command::new(bin())
        .arg("server")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            return (
                status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            );
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("drover server {args:?} did not exit on bad input");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_is_tied_to_its_cluster_and_checked_at_start() {
    let mut a = Cluster::start(bin(), 53, 1).await.unwrap();
    let b = Cluster::start(bin(), 54, 1).await.unwrap();
    // A member of cluster A restarted with --join pointing at cluster B: refused.
    a.kill(0);
    let dir = a.members[0].data_dir.to_str().unwrap().to_string();
    let listen = a.members[0].addr.to_string();
    let peer = a.members[0].peer.to_string();
    let join = b.members[0].addr.to_string();
    let (code, err) = run_server(&[
        "--data-dir",
        &dir,
        "--listen",
        &listen,
        "--peer-listen",
        &peer,
        "--join",
        &join,
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("belongs to cluster") && err.contains("fresh --data-dir"),
        "{err}"
    );
    // A data dir in use by a running member is not opened twice.
    let busy = b.members[0].data_dir.to_str().unwrap().to_string();
    let (code, err) = run_server(&["--data-dir", &busy, "--listen", "127.0.0.54:3"]);
    assert_ne!(code, 0);
    assert!(err.contains("in use by another drover process"), "{err}");
    // The same data dir on another address: refused with the fix named.
    let (code, err) = run_server(&["--data-dir", &dir, "--listen", "127.0.0.53:1"]);
    assert_ne!(code, 0);
    assert!(err.contains("was created for peer address"), "{err}");
    // A directory full of something else is not taken over.
    let foreign = a.dir.path().join("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("precious.txt"), "data").unwrap();
    let (code, err) = run_server(&[
        "--data-dir",
        foreign.to_str().unwrap(),
        "--listen",
        "127.0.0.53:2",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("not a Drover data dir"), "{err}");
    assert!(foreign.join("precious.txt").exists());
    // A damaged log (a flipped byte in an acknowledged entry) is reported, not replayed into
    // a panic and not silently cut off.
    let segment = a.members[0]
        .data_dir
        .join("raft-log")
        .join("0000000000000000.wal");
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[20] ^= 0x5a;
    std::fs::write(&segment, bytes).unwrap();
    let (code, err) = run_server(&[
        "--data-dir",
        &dir,
        "--listen",
        &listen,
        "--peer-listen",
        &peer,
    ]);
    assert_ne!(code, 0, "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        err.contains("Raft log") && err.contains("is damaged") && err.contains("corrupt at byte 0"),
        "{err}"
    );
}

/// Three members started at the same moment, as systemd on three machines would start them,
/// twenty times over: half with the same `--initial-cluster` list, half with the second and
/// third told to `--join` the first. Each time all three must end as voters of one cluster (a
/// join that met another member's join in progress used to exit, leaving two voters).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_started_together_form_one_cluster_every_time() {
    for round in 0..20 {
        let how = if round % 2 == 0 {
            testkit::Together::InitialCluster
        } else {
            testkit::Together::JoinTheFirst
        };
        let c = Cluster::start_together(bin(), 210, 3, how)
            .await
            .unwrap_or_else(|e| panic!("round {round} ({how:?}): {e}"));
        let statuses: Vec<_> = futures_util::future::join_all((0..3).map(|i| c.status(i)))
            .await
            .into_iter()
            .map(|s| s.unwrap())
            .collect();
        for s in &statuses {
            assert_eq!(
                s.cluster_id, statuses[0].cluster_id,
                "round {round}: two clusters"
            );
            assert_eq!(
                s.voters.len(),
                3,
                "round {round} ({how:?}): voters {:?}\n{}",
                s.voters,
                c.all_logs()
            );
        }
    }
}

/// A member that does not know the shared secret gets no CA proof, so a server told to join
/// it refuses at once (it does not send its secret to an unproven member, nor wait).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_secret_joins_only_a_member_that_proves_it() {
    let c = Cluster::start_together(bin(), 214, 1, testkit::Together::JoinTheFirst)
        .await
        .unwrap();
    let other = Cluster::new(bin(), 215).unwrap();
    let wrong = other.dir.path().join("wrong.token");
    let secret = std::process::Command::new(bin())
        .args(["token", "generate"])
        .output()
        .unwrap()
        .stdout;
    std::fs::write(&wrong, secret).unwrap();
    let data = other.dir.path().join("data");
    let join = c.members[0].addr.to_string();
    let start = |peer_port: &str| {
        run_server(&[
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.215:0",
            "--peer-listen",
            &format!("127.0.0.215:{peer_port}"),
            "--join",
            &join,
            "--token-file",
            wrong.to_str().unwrap(),
        ])
    };
    let (code, stderr) = start("26501");
    assert_ne!(code, 0);
    assert!(
        stderr.contains("does not know the shared secret"),
        "{stderr}"
    );
    // A secret too short to be beyond guessing is refused before anything is sent.
    std::fs::write(&wrong, "drover1:secret:abcd").unwrap();
    let (code, stderr) = start("26502");
    assert_ne!(code, 0);
    assert!(stderr.contains("at least 32 hex digits"), "{stderr}");
}

/// A client given every member's address (as `drover node --server A,B,C` is) keeps working
/// when the member it talks to dies: the next request goes to a member that answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_several_servers_moves_on_when_one_dies() {
    let mut c = Cluster::start(bin(), 217, 3).await.unwrap();
    let data = &c.members[0].data_dir;
    let ca = std::fs::read_to_string(data.join("pki/ca.crt")).unwrap();
    let token = std::fs::read_to_string(data.join("pki/admin.token")).unwrap();
    let urls: Vec<String> = c
        .members
        .iter()
        .map(|m| format!("https://{}", m.addr))
        .collect();
    let client = kubeclient::connect(&urls.join(","), &ca, token.trim()).unwrap();
    let maps: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(client, "default");
    let map = |name: &str| {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}
        }))
        .unwrap()
    };
    maps.create(&Default::default(), &map("before"))
        .await
        .unwrap();
    c.kill(0);
    // The next request finds member 0 refusing connections and is sent to member 1.
    maps.create(&Default::default(), &map("after"))
        .await
        .unwrap();
    let names: Vec<String> = maps
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|m| m.metadata.name)
        .collect();
    assert!(names.contains(&"before".to_string()) && names.contains(&"after".to_string()));
}

/// Puts `n` unique keys under `prefix` through `c`'s client; returns those acknowledged.
async fn acknowledged_puts(c: &Cluster, prefix: &str, n: usize) -> Vec<String> {
    let client = c.client();
    let mut acked = Vec::new();
    for i in 0..n {
        let key = format!("{prefix}{i:05}");
        if client.put(key.as_bytes(), b"x").await.is_ok() {
            acked.push(key);
        }
    }
    acked
}

/// Every key in `acked` is on every running member (read from each member's own state once
/// they have converged).
async fn assert_all_present(c: &Cluster, prefix: &str, acked: &[String]) {
    converge(c)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", c.all_logs()));
    for i in 0..c.members.len() {
        if !c.members[i].is_running() {
            continue;
        }
        let member = c.client_of(&[c.members[i].peer.to_string()]);
        let resp = member
            .range(
                &RangeRequest::new(KeySpan::prefix(prefix)),
                Consistency::Serializable,
            )
            .await
            .unwrap();
        let present: std::collections::BTreeSet<String> = resp
            .kvs
            .iter()
            .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
            .collect();
        let missing: Vec<_> = acked.iter().filter(|k| !present.contains(*k)).collect();
        assert!(
            missing.is_empty(),
            "member {i} lost acknowledged writes: {missing:?}"
        );
    }
}

/// A power cut: every member killed at once, then all started again together. They elect a
/// leader among themselves, every acknowledged write is there, and writes go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_member_killed_at_once_comes_back_with_every_acknowledged_write() {
    let mut c = Cluster::start(bin(), 220, 3).await.unwrap();
    let acked = acknowledged_puts(&c, "/cut/", 300).await;
    assert_eq!(acked.len(), 300, "a healthy cluster acknowledges every put");
    c.restart_all()
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", c.all_logs()));
    assert_all_present(&c, "/cut/", &acked).await;
    let after = acknowledged_puts(&c, "/after/", 10).await;
    assert_eq!(after.len(), 10);
}

/// The last segment of a member's Raft log (the one written last).
fn last_wal_segment(data_dir: &Path) -> std::path::PathBuf {
    let mut segments: Vec<_> = std::fs::read_dir(data_dir.join("raft-log"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    segments.sort();
    segments.pop().expect("a Raft log segment")
}

/// Two members of three (a quorum) die in the middle of writing a batch to their logs: one
/// with half a frame header written, one with a zeroed block the file system allocated but
/// never filled. Both cut the torn tail (it was never acknowledged: its fsync never returned),
/// and nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_log_tail_on_two_members_at_once_is_cut_and_loses_nothing_acknowledged() {
    use std::io::Write;
    let mut c = Cluster::start(bin(), 223, 3).await.unwrap();
    let acked = acknowledged_puts(&c, "/torn/", 200).await;
    assert_eq!(acked.len(), 200);
    for i in 0..3 {
        c.kill(i);
    }
    let tails: [&[u8]; 2] = [&[0x2a, 0x01, 0, 0, 0x99, 0x12, 0x7f], &[0u8; 4096]];
    for (i, tail) in tails.iter().enumerate() {
        let segment = last_wal_segment(&c.members[i].data_dir);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&segment)
            .unwrap()
            .write_all(tail)
            .unwrap();
    }
    c.restart_all()
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", c.all_logs()));
    for i in 0..2 {
        let log = std::fs::read_to_string(&c.members[i].log).unwrap();
        assert!(
            log.contains("cut a torn write off the end of the Raft log"),
            "member {i} did not say it cut its torn tail:\n{}",
            c.log_tail(i)
        );
    }
    assert_all_present(&c, "/torn/", &acked).await;
    assert_eq!(acknowledged_puts(&c, "/after/", 10).await.len(), 10);
}

/// A tmpfs mounted on a directory until dropped: a disk that can be filled.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, megabytes: u32) -> SmallDisk {
        std::fs::create_dir_all(dir).unwrap();
        let status = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={megabytes}m,mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .expect("mount (this test needs root)");
        assert!(
            status.success(),
            "cannot mount a tmpfs on {}",
            dir.display()
        );
        SmallDisk(dir.to_path_buf())
    }

    /// Fills the disk with one file; returns it (removing it frees the space).
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.0.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let block = vec![0xa5u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A member whose disk fills up stops taking writes with an error that says why (not a
/// timeout, not a dead store), loses and corrupts nothing, and takes writes again once space
/// is freed, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_a_full_disk_refuses_writes_clearly_and_recovers_when_space_returns() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(&dir.path().join("member-0"), 64);
    let mut c = Cluster::new(bin(), 227).unwrap();
    c.dir = dir;
    c.add_member().await.unwrap();
    let acked = acknowledged_puts(&c, "/full/", 50).await;
    assert_eq!(acked.len(), 50);

    let filler = disk.fill();
    let mut client = c.client();
    client.patience = Duration::from_secs(3);
    // The first write after the disk filled waits in the log writer; the member then knows,
    // and refuses writes with the reason.
    let deadline = Instant::now() + Duration::from_secs(30);
    let said = loop {
        match client.put(b"/full/while", b"x").await {
            Err(e) if e.to_string().contains("No space left on device") => break e.to_string(),
            Err(_) | Ok(_) => {}
        }
        assert!(
            Instant::now() < deadline,
            "writes on a full disk never said why:\n{}",
            c.log_tail(0)
        );
    };
    assert!(said.contains("free space"), "{said}");

    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.put(b"/full/after", b"x").await.is_err() {
        assert!(
            Instant::now() < deadline,
            "writes did not resume once space was freed:\n{}",
            c.log_tail(0)
        );
    }
    // Nothing on disk is damaged: the member restarts with every acknowledged write.
    c.restart(0).await.unwrap();
    let mut all = acked.clone();
    all.push("/full/after".into());
    assert_all_present(&c, "/full/", &all).await;
}

/// A member brought back from an old copy of its data dir (a restored backup, a VM snapshot)
/// has forgotten entries it acknowledged, and perhaps votes it gave. It must not take part:
/// it refuses to start, says why and what to do, and the cluster carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_restored_from_an_old_copy_of_its_data_dir_refuses_to_start() {
    let mut c = Cluster::start(bin(), 229, 3).await.unwrap();
    acknowledged_puts(&c, "/old/", 20).await;
    let leader = c.leader(Duration::from_secs(10)).await.unwrap();
    let stale = (leader + 1) % 3;
    let dir = c.members[stale].data_dir.clone();
    let copy = c.dir.path().join("old-copy");
    c.kill(stale);
    let cp = std::process::Command::new("cp")
        .arg("-a")
        .arg(&dir)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(cp.success());
    c.restart(stale).await.unwrap();
    // The member acknowledges more after the copy was taken...
    let acked = acknowledged_puts(&c, "/new/", 200).await;
    assert_eq!(acked.len(), 200);
    converge(&c).await.unwrap();
    // ...then comes back from the copy.
    c.kill(stale);
    std::fs::remove_dir_all(&dir).unwrap();
    let mv = std::process::Command::new("mv")
        .arg(&copy)
        .arg(&dir)
        .status()
        .unwrap();
    assert!(mv.success());
    let err = c
        .restart(stale)
        .await
        .expect_err("a member behind what it acknowledged started");
    assert!(
        err.to_string().contains("older than the member")
            && err.to_string().contains("remove-member"),
        "{err}"
    );
    // The others go on.
    assert_eq!(acknowledged_puts(&c, "/after/", 10).await.len(), 10);
}

/// The interleaving behind the root test's rare non-linearizable histories (issue 15): the
/// leader is killed and started again before the others notice (their election timeout is
/// long here), so they still follow it. openraft 0.9 made it leader again in its old term
/// without knowing what had been committed, and it answered linearizable reads, confirmed by
/// those followers, from a state machine still replaying its log. Now it comes back as a
/// follower, and every linearizable read it answers, from the first, sees the last
/// acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_and_restarted_at_once_serves_no_stale_read() {
    let mut c = Cluster::new(bin(), 231).unwrap();
    c.flags = [
        "--heartbeat-ms",
        "100",
        "--election-timeout-ms",
        "3000-4000",
    ]
    .map(String::from)
    .to_vec();
    for _ in 0..3 {
        c.add_member().await.unwrap();
    }
    let leader = c.leader(Duration::from_secs(10)).await.unwrap();
    // Many entries for the restarted member to replay: the window stale reads came from.
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let client = c.client();
            tokio::spawn(async move {
                for i in 0..2500 {
                    let key = format!("/restart/{w}/{}", i % 20);
                    client.put(key.as_bytes(), b"x").await.unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    c.client().put(b"/restart/last", b"done").await.unwrap();
    c.kill(leader);
    c.start_again(leader).unwrap();
    let mut member = c.client_of(&[c.members[leader].peer.to_string()]);
    member.patience = Duration::from_millis(200);
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut answered = 0;
    while answered < 50 {
        assert!(
            Instant::now() < deadline,
            "the restarted member answered {answered} reads in 40 s\n{}",
            c.all_logs()
        );
        let read = member
            .range(
                &RangeRequest::new(KeySpan::key("/restart/last")),
                Consistency::Linearizable,
            )
            .await;
        match read {
            Ok(resp) => {
                let value = resp.kvs.first().map(|kv| kv.value.clone());
                assert_eq!(
                    value.as_deref(),
                    Some(&b"done"[..]),
                    "linearizable read {answered} after the restart saw an old state"
                );
                answered += 1;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// libfaketime (Debian's `libfaketime`, installed by scripts/test.sh): preloaded into a
/// member, it offsets the wall clock by what a file says, read on every call; the monotonic
/// clock stays real, as when NTP or a person steps a machine's clock.
const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// The creation time the API of member `i` gives a new ConfigMap: that member's wall clock.
async fn wall_clock_of(c: &Cluster, i: usize, name: &str) -> chrono::DateTime<chrono::Utc> {
    let data = &c.members[i].data_dir;
    let ca = std::fs::read_to_string(data.join("pki/ca.crt")).unwrap();
    let token = std::fs::read_to_string(data.join("pki/admin.token")).unwrap();
    let url = format!("https://{}", c.members[i].addr);
    let client = kubeclient::connect(&url, &ca, token.trim()).unwrap();
    let maps: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(client, "default");
    let map = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}
    }))
    .unwrap();
    let created = maps
        .create(&Default::default(), &map)
        .await
        .unwrap_or_else(|e| panic!("member {i}'s API refused a create: {e}\n{}", c.all_logs()));
    created.metadata.creation_timestamp.unwrap().0
}

/// The wall clock stepped forward an hour on a follower and back two hours on the leader,
/// under writes: Raft's timers run on the monotonic clock, so no election follows (the term
/// stays), writes go on through every step, every acknowledged write is on every member and
/// the stepped members' APIs keep answering. Timers on the wall clock would show here: a
/// follower's election timeout would fire at once, a leader's next heartbeat would wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wall_clock_stepped_forward_and_back_disturbs_nothing() {
    assert!(
        Path::new(FAKETIME_LIB).exists(),
        "{FAKETIME_LIB} is missing: run ./scripts/test.sh, which installs libfaketime"
    );
    let mut c = Cluster::new(bin(), 240).unwrap();
    // Long election timeouts: an election within the test is then a clock fault, not load.
    c.flags = [
        "--heartbeat-ms",
        "100",
        "--election-timeout-ms",
        "2000-3000",
    ]
    .map(String::from)
    .to_vec();
    for _ in 0..3 {
        c.add_member().await.unwrap();
    }
    let clocks = c.dir.path().to_path_buf();
    let clock_file = |i: usize| clocks.join(format!("clock-{i}"));
    for i in 0..3 {
        std::fs::write(clock_file(i), "+0\n").unwrap();
        let env = [
            ("LD_PRELOAD", FAKETIME_LIB.to_string()),
            (
                "FAKETIME_TIMESTAMP_FILE",
                clock_file(i).display().to_string(),
            ),
            ("FAKETIME_NO_CACHE", "1".into()),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1".into()),
        ]
        .map(|(k, v)| (k.to_string(), v))
        .to_vec();
        c.restart_with_env(i, env)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", c.all_logs()));
    }
    let leader = c.leader(Duration::from_secs(20)).await.unwrap();
    let follower = (leader + 1) % 3;
    let term = c.status(leader).await.unwrap().term;

    // Writers through every member, counting what was acknowledged.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let writer = {
        let (client, stop, acked) = (c.client(), stop.clone(), acked.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let key = format!("/clock/{n:06}");
                n += 1;
                if client.put(key.as_bytes(), b"x").await.is_ok() {
                    acked.lock().unwrap().push(key);
                }
            }
        })
    };
    // Waits until `more` further writes are acknowledged (writes go on across the step).
    let writes_go_on = |more: usize| {
        let acked = acked.clone();
        async move {
            let from = acked.lock().unwrap().len();
            let deadline = Instant::now() + Duration::from_secs(20);
            while acked.lock().unwrap().len() < from + more {
                assert!(
                    Instant::now() < deadline,
                    "writes stopped after a clock step"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    writes_go_on(200).await;

    std::fs::write(clock_file(follower), "+1h\n").unwrap();
    let seen = wall_clock_of(&c, follower, "forward").await;
    let ahead = seen - chrono::Utc::now();
    assert!(
        ahead > chrono::Duration::minutes(50),
        "the follower's clock was not stepped (it is {ahead} ahead): is libfaketime working?"
    );
    writes_go_on(300).await;

    std::fs::write(clock_file(leader), "-2h\n").unwrap();
    let seen = wall_clock_of(&c, leader, "back").await;
    let behind = chrono::Utc::now() - seen;
    assert!(
        behind > chrono::Duration::minutes(110),
        "the leader's clock was not stepped back (it is {behind} behind)"
    );
    writes_go_on(300).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.await.unwrap();

    let now_term = c.status(leader).await.unwrap().term;
    assert_eq!(
        (c.leader(Duration::from_secs(5)).await.unwrap(), now_term),
        (leader, term),
        "a clock step caused an election\n{}",
        c.all_logs()
    );
    let acked = acked.lock().unwrap().clone();
    assert_all_present(&c, "/clock/", &acked).await;
}

/// A leader cut off from its peers but not from its clients (issue 15's soak: writes stood
/// still for up to 7 s). A write in flight on it is answered as unknown once it sees it lost
/// its quorum, not at the 10 s commit timeout, and a new write is refused before it is
/// proposed (nothing done, so the client may try elsewhere); the others elect a leader and
/// take writes; healed, the old leader follows and every acknowledged write is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_a_leader_cut_off_from_its_peers_says_so_instead_of_waiting() {
    require_root();
    let mut c = Cluster::new(bin(), 243).unwrap();
    for _ in 0..3 {
        c.add_member().await.unwrap();
    }
    let leader = c.leader(Duration::from_secs(20)).await.unwrap();
    let acked = acknowledged_puts(&c, "/cut-off/", 50).await;
    let ip = |i: usize| c.members[i].addr.ip();
    let others: Vec<_> = (0..3).filter(|i| *i != leader).map(ip).collect();
    let cut = Partition::between(ip(leader), &others).expect("partition");
    let mut on_leader = c.client_of(&[c.members[leader].peer.to_string()]);
    on_leader.patience = Duration::ZERO;
    match on_leader.put(b"/cut-off/in-flight", b"x").await {
        Err(StoreError::Indeterminate(why)) => {
            assert!(why.contains("lost its quorum"), "{why}")
        }
        Err(StoreError::Unavailable(why)) => assert!(why.contains("lost its quorum"), "{why}"),
        other => panic!("a write to a cut-off leader: {other:?}\n{}", c.all_logs()),
    }
    match on_leader.put(b"/cut-off/new", b"x").await {
        Err(StoreError::Unavailable(why)) => assert!(why.contains("lost its quorum"), "{why}"),
        other => panic!("a new write to a cut-off leader: {other:?}"),
    }
    // The two others go on without it.
    let survivors: Vec<String> = (0..3)
        .filter(|i| *i != leader)
        .map(|i| c.members[i].peer.to_string())
        .collect();
    c.client_of(&survivors)
        .put(b"/cut-off/after", b"x")
        .await
        .unwrap_or_else(|e| panic!("the majority took no write: {e}\n{}", c.all_logs()));
    drop(cut);
    assert_all_present(&c, "/cut-off/", &acked).await;
}
