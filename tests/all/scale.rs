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

#[test]
fn with_a_small_instance_pool_calls_wait_for_a_slot_instead_of_failing() {
    let config = format!("[limits]\npooling_instances = 2\n{}", era_tests::fixture_plugins());
    let erad = Erad::start_with(&config, &[]);
    let specs: Vec<_> =
        (0..12).map(|i| erad.deployment(&format!("pooled-{i}"), "noop", &format!("v{i}"), "")).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = specs.iter().map(|spec| s.spawn(|| erad.apply_wait(spec))).collect();
        for h in handles {
            let a = h.join().unwrap();
            assert_eq!(a.code, 0, "{a:?}");
        }
    });
    // The sandbox limits still hold with pooling.
    let a = erad.apply_wait(&erad.deployment("hogger", "hog", "v1", ""));
    assert_eq!(a.code, 1);
    assert!(erad.get("hogger")["message"].as_str().unwrap().contains("exceeded its memory limit of 16 MiB"));
}
