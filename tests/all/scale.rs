//! Many deployments at once.

use era_tests::Erad;

#[test]
fn fifty_deployments_applied_concurrently_all_reach_running() {
    let erad = Erad::start();
    let specs: Vec<_> = (0..50).map(|i| erad.deployment(&format!("app-{i}"), "noop", &format!("v{i}"), "")).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = specs.iter().map(|spec| s.spawn(|| erad.apply_wait(spec))).collect();
        for h in handles {
            let a = h.join().unwrap();
            assert_eq!(a.code, 0, "{a:?}");
        }
    });
    let list = erad.era(&["-o", "json", "list"]).json();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 50);
    assert!(list.iter().all(|d| d["state"] == "Running"), "{list:?}");
}
