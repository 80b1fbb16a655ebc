//! The wasm runtime with images that are wrong in the ways a user gets them wrong: each is a
//! clear start error or exit status, never a panic.

use runtime::images::ImageStore;
use runtime::logs::LogFile;
use runtime::wasm::WasmRuntime;
use runtime::{ContainerSpec, ExitStatus, Runtime, StartError};

/// A preview 1 module: `(module (memory 2) (func (export "_start")))`, hand-assembled.
const TWO_PAGE_START: &[u8] = &[
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version 1
    0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // type section: one func type () -> ()
    0x03, 0x02, 0x01, 0x00, // function section: one function of type 0
    0x05, 0x03, 0x01, 0x00, 0x02, // memory section: one memory, min 2 pages
    0x07, 0x0a, 0x01, 0x06, b'_', b's', b't', b'a', b'r', b't', 0x00, 0x00, // export _start
    0x0a, 0x04, 0x01, 0x02, 0x00, 0x0b, // code section: an empty body
];

fn spec(dir: &std::path::Path, bytes: &[u8], memory_limit: Option<u64>) -> ContainerSpec {
    let store = ImageStore::open(&dir.join("images")).unwrap();
    let image = store.add("test:v1", bytes).unwrap();
    ContainerSpec {
        pod_namespace: "default".into(),
        pod_name: "p".into(),
        pod_uid: "u".into(),
        container: "c".into(),
        image,
        args: vec!["c".into()],
        env: vec![],
        mounts: vec![],
        log: LogFile::create(&dir.join("c.log")).unwrap(),
        memory_limit,
        cpu_limit: None,
        listen: None,
        max_concurrency: None,
        netns: None,
        outbound: None,
        usage: Default::default(),
        linux: Default::default(),
    }
}

async fn start(bytes: &[u8], memory_limit: Option<u64>) -> Result<ExitStatus, StartError> {
    let dir = tempfile::tempdir().unwrap();
    let rt = WasmRuntime::new(dir.path().join("cache")).unwrap();
    let running = rt.start(spec(dir.path(), bytes, memory_limit)).await?;
    Ok(running.exit.await.unwrap())
}

#[tokio::test]
async fn a_module_that_does_not_validate_is_a_start_error() {
    let mut broken = TWO_PAGE_START.to_vec();
    broken.truncate(20);
    match start(&broken, None).await {
        Err(StartError::InvalidImage(m)) => assert!(m.contains("does not validate"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_module_without_start_is_not_a_program() {
    match start(b"\0asm\x01\0\0\0", None).await {
        Err(StartError::InvalidImage(m)) => assert!(m.contains("no _start"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_memory_limit_below_what_the_module_declares_is_oom_and_enough_runs() {
    assert_eq!(
        start(TWO_PAGE_START, None).await.unwrap(),
        ExitStatus::Exited(0)
    );
    assert_eq!(
        start(TWO_PAGE_START, Some(200_000)).await.unwrap(),
        ExitStatus::Exited(0)
    );
    assert_eq!(
        start(TWO_PAGE_START, Some(64 * 1024)).await.unwrap(),
        ExitStatus::OomKilled
    );
}

#[tokio::test]
async fn the_compile_cache_is_reused_and_a_stale_entry_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let rt = WasmRuntime::new(dir.path().join("cache")).unwrap();
    let s = spec(dir.path(), TWO_PAGE_START, None);
    assert_eq!(
        rt.start(s.clone()).await.unwrap().exit.await.unwrap(),
        ExitStatus::Exited(0)
    );
    let cached: Vec<_> = walk(&dir.path().join("cache"));
    assert_eq!(cached.len(), 1, "{cached:?}");
    // A corrupted cache entry is recompiled, not trusted.
    std::fs::write(&cached[0], b"garbage").unwrap();
    let fresh = WasmRuntime::new(dir.path().join("cache")).unwrap();
    assert_eq!(
        fresh.start(s).await.unwrap().exit.await.unwrap(),
        ExitStatus::Exited(0)
    );
    assert_ne!(std::fs::read(&cached[0]).unwrap(), b"garbage");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else if e.path().extension().is_some_and(|x| x == "cwasm") {
            out.push(e.path());
        }
    }
    out
}
