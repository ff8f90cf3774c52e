//! Environment locks and protected environments, against the real erad and
//! `era` with the noop fixture: two real clients contending, a holder killed
//! with erad itself, force-unlock and what it does to older plans.

use era_tests::{Erad, eventually};
use std::path::{Path, PathBuf};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// A noop spec with a file artifact, in `dir`.
fn quick_spec(dir: &Path, name: &str, environment: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let content = format!("artifact of {name}");
    std::fs::write(dir.join(format!("{name}.bin")), &content).unwrap();
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: era.dev/v1\nkind: Deployment\nmetadata: {{name: {name}, environment: {environment}}}\nspec:\n  runtime: noop\n  artifact: {{file: {name}.bin, sha256: \"{}\"}}\n",
            era_tests::sha256(content.as_bytes())
        ),
    )
    .unwrap();
    path
}

/// A spec whose image is on a "registry" that accepts connections and never
/// answers: a plan of it holds its environment's lock until it is cut off.
fn stuck_spec(dir: &Path, environment: &str) -> (PathBuf, std::thread::JoinHandle<()>) {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let holder = std::thread::spawn(move || {
        let mut open = Vec::new();
        for c in silent.incoming().take(16) {
            open.push(c);
        }
    });
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("stuck.yaml");
    std::fs::write(
        &path,
        format!(
            "apiVersion: era.dev/v1\nkind: Deployment\nmetadata: {{name: stuck, environment: {environment}}}\nspec:\n  runtime: noop\n  artifact: {{image: \"{addr}/slow/app:1\"}}\n"
        ),
    )
    .unwrap();
    (path, holder)
}

fn locks(erad: &Erad) -> Vec<serde_json::Value> {
    let a = erad.era(&["-o", "json", "lock", "list"]);
    assert_eq!(a.code, 0, "{a:?}");
    a.json().as_array().cloned().unwrap()
}

fn plan_id(erad: &Erad, spec: &Path, env: &str) -> String {
    let a = erad.era(&["-o", "json", "plan", "-f", spec.to_str().unwrap(), "--env", env]);
    assert_eq!(a.code, 0, "{a:?}");
    a.json()["id"].as_str().unwrap().to_string()
}

#[test]
fn a_second_holder_waits_for_the_lock_then_fails_naming_the_holder_and_a_forced_unlock_voids_older_plans() {
    let config = format!("{}\n[locks]\nwait = \"1s\"\n", era_tests::fixture_plugins());
    let erad = Erad::start_with(&config, &[]);
    let dir = erad.dir.path().join("specs");
    let quick = quick_spec(&dir, "web", "prod");
    let older = plan_id(&erad, &quick, "prod");
    let (stuck, _registry) = stuck_spec(&dir, "prod");

    let mut first = erad.era_background(&["plan", "-f", stuck.to_str().unwrap(), "--env", "prod"]);
    eventually(T, || !locks(&erad).is_empty());
    let held = locks(&erad);
    assert_eq!(held[0]["environment"], "prod");
    assert_eq!(held[0]["operation"], "plan");
    assert!(held[0]["holder"].as_str().unwrap().starts_with("uid 0, erad pid"), "{held:?}");
    assert_eq!(held[0]["stale"], false);

    // A second plan of prod, and a single-deployment command in prod, wait
    // their second and fail naming the holder.
    let second = erad.era(&["plan", "-f", quick.to_str().unwrap(), "--env", "prod"]);
    assert_eq!(second.code, 1, "{second:?}");
    assert!(second.stderr.contains("environment prod is locked by plan (uid 0, erad pid"), "{second:?}");
    assert!(second.stderr.contains("waited 1s"), "{second:?}");
    let apply = erad.era(&["apply", "-f", quick.to_str().unwrap()]);
    assert!(apply.code == 1 && apply.stderr.contains("environment prod is locked by plan"), "{apply:?}");
    assert_eq!(erad.era(&["get", "web"]).code, 1, "the refused apply made nothing");
    // Another environment is not held up.
    let staging = quick_spec(&erad.dir.path().join("staging"), "api", "staging");
    assert_eq!(erad.era(&["plan", "-f", staging.to_str().unwrap(), "--env", "staging"]).code, 0);

    // Forcing it open needs the environment's name typed back.
    let unconfirmed = erad.era(&["lock", "force-unlock", "prod"]);
    assert!(unconfirmed.code == 2 && unconfirmed.stderr.contains("--confirm prod"), "{unconfirmed:?}");
    let wrong = erad.era(&["lock", "force-unlock", "prod", "--confirm", "staging"]);
    assert!(wrong.code == 1 && wrong.stderr.contains("not confirmed"), "{wrong:?}");
    assert_eq!(locks(&erad).len(), 1, "a refused force-unlock removed the lock");
    let forced = erad.era(&["lock", "force-unlock", "prod", "--confirm", "prod"]);
    assert_eq!(forced.code, 0, "{forced:?}");
    assert!(forced.stdout.contains("removed the lock uid 0, erad pid"), "{forced:?}");
    assert!(locks(&erad).is_empty());
    assert!(erad.log().contains("environment lock forced open"));
    // A plan made before the force-unlock is refused; a fresh one applies.
    let refused = erad.era(&["apply", "--plan", &older]);
    assert!(refused.code == 1 && refused.stderr.contains("lock was forced open at"), "{refused:?}");
    let fresh = plan_id(&erad, &quick, "prod");
    assert_eq!(erad.era(&["apply", "--plan", &fresh]).code, 0);
    erad.wait_for_state("web", "Running", T);

    // The stuck plan's client goes: its lock (taken again by nobody) is
    // not left behind.
    first.kill().unwrap();
    first.wait().unwrap();
    let mut again = erad.era_background(&["plan", "-f", stuck.to_str().unwrap(), "--env", "prod"]);
    eventually(T, || locks(&erad).len() == 1);
    again.kill().unwrap();
    again.wait().unwrap();
    eventually(T, || locks(&erad).is_empty());
}

#[test]
fn a_lock_outlives_its_killed_holder_only_until_it_goes_stale_then_it_is_taken_over() {
    let config = format!("{}\n[locks]\nwait = \"500ms\"\nstale_after = \"3s\"\n", era_tests::fixture_plugins());
    let mut erad = Erad::start_with(&config, &[]);
    let dir = erad.dir.path().join("specs");
    let (stuck, _registry) = stuck_spec(&dir, "qa");
    let mut client = erad.era_background(&["plan", "-f", stuck.to_str().unwrap(), "--env", "qa"]);
    eventually(T, || !locks(&erad).is_empty());
    // erad dies holding it; the lock is in the store when it comes back.
    erad.kill9();
    let _ = client.wait();
    erad.spawn(&[]).unwrap();
    let held = locks(&erad);
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0]["environment"], "qa");
    // Nobody refreshes it: it goes stale, and the next plan takes it over.
    eventually(T, || locks(&erad).first().is_some_and(|l| l["stale"] == true));
    let quick = quick_spec(&dir, "db", "qa");
    let a = erad.era(&["plan", "-f", quick.to_str().unwrap(), "--env", "qa"]);
    assert_eq!(a.code, 0, "{a:?}");
    assert!(locks(&erad).is_empty(), "the plan released what it took over");
}

#[test]
fn a_protected_environment_changes_only_through_fresh_plans() {
    let config =
        format!("{}\n[environments.prod]\nprotected = true\nplan_max_age = \"2s\"\n", era_tests::fixture_plugins());
    let erad = Erad::start_with(&config, &[]);
    let dir = erad.dir.path().join("specs");
    let spec = quick_spec(&dir, "web", "prod");

    let direct = erad.era(&["apply", "-f", spec.to_str().unwrap()]);
    assert_eq!(direct.code, 1, "{direct:?}");
    assert!(
        direct.stderr.contains("environment prod is protected")
            && direct.stderr.contains(&format!("era plan -f {} --env prod", spec.display())),
        "{direct:?}"
    );
    assert_eq!(erad.era(&["get", "web"]).code, 1);

    // A plan older than plan_max_age is refused; a fresh one applies.
    let old = plan_id(&erad, &spec, "prod");
    std::thread::sleep(Duration::from_millis(2500));
    let stale = erad.era(&["apply", "--plan", &old]);
    assert!(stale.code == 1 && stale.stderr.contains("environment prod takes plans at most 2s old"), "{stale:?}");
    let fresh = plan_id(&erad, &spec, "prod");
    let a = erad.era(&["apply", "--plan", &fresh]);
    assert_eq!(a.code, 0, "{a:?}");
    erad.wait_for_state("web", "Running", T);

    // Forcing its lock open takes the typed phrase, not just its name.
    let name_only = erad.era(&["lock", "force-unlock", "prod", "--confirm", "prod"]);
    assert!(name_only.code == 1 && name_only.stderr.contains("\"force-unlock prod\""), "{name_only:?}");
    let phrase = erad.era(&["lock", "force-unlock", "prod", "--confirm", "force-unlock prod"]);
    assert_eq!(phrase.code, 0, "{phrase:?}");
    // An unprotected environment's spec applies directly as before.
    let dev = quick_spec(&erad.dir.path().join("dev"), "tool", "dev");
    assert_eq!(erad.apply_wait(&dev).code, 0);
}

#[test]
fn destroy_removes_every_deployment_of_its_environment_once_confirmed() {
    let config = format!("{}\n[environments.prod]\nprotected = true\n", era_tests::fixture_plugins());
    let erad = Erad::start_with(&config, &[]);
    let qa = erad.dir.path().join("qa");
    for name in ["a", "b"] {
        assert_eq!(erad.apply_wait(&quick_spec(&qa, name, "qa")).code, 0);
    }
    let other = quick_spec(&erad.dir.path().join("dev"), "keep", "dev");
    assert_eq!(erad.apply_wait(&other).code, 0);

    let unconfirmed = erad.era(&["destroy", "--env", "qa"]);
    assert!(unconfirmed.code == 2 && unconfirmed.stderr.contains("--confirm qa"), "{unconfirmed:?}");
    let wrong = erad.era(&["destroy", "--env", "qa", "--confirm", "dev"]);
    assert!(wrong.code == 2 && wrong.stderr.contains("not confirmed"), "{wrong:?}");
    assert_eq!(erad.get("a")["state"], "Running", "a refused destroy deleted something");

    let done = erad.era(&["destroy", "--env", "qa", "--confirm", "qa", "--wait"]);
    assert_eq!(done.code, 0, "{done:?}");
    assert!(done.stdout.contains("a: deleted") && done.stdout.contains("b: deleted"), "{done:?}");
    for name in ["a", "b"] {
        assert_eq!(erad.get(name)["state"], "Deleted");
        assert!(!erad.data_dir().join("deployments").join(name).exists(), "{name}'s work dirs stay");
    }
    assert_eq!(erad.get("keep")["state"], "Running", "another environment was touched");
    let again = erad.era(&["destroy", "--env", "qa", "--confirm", "qa"]);
    assert!(again.code == 0 && again.stdout.contains("has no deployment"), "{again:?}");

    // A protected environment takes the phrase.
    let prod = quick_spec(&erad.dir.path().join("prod"), "web", "prod");
    let id = {
        let a = erad.era(&["-o", "json", "plan", "-f", prod.to_str().unwrap(), "--env", "prod"]);
        a.json()["id"].as_str().unwrap().to_string()
    };
    assert_eq!(erad.era(&["apply", "--plan", &id]).code, 0);
    erad.wait_for_state("web", "Running", T);
    let name_only = erad.era(&["destroy", "--env", "prod", "--confirm", "prod"]);
    assert!(name_only.code == 2 && name_only.stderr.contains("\"destroy prod\" (it is protected)"), "{name_only:?}");
    let phrase = erad.era(&["destroy", "--env", "prod", "--confirm", "destroy prod", "--wait"]);
    assert_eq!(phrase.code, 0, "{phrase:?}");
    assert_eq!(erad.get("web")["state"], "Deleted");
}

#[test]
fn every_plan_apply_destroy_and_force_unlock_is_a_run_on_record_without_the_specs_values() {
    let config = format!("{}\n[runs]\nretention = \"3s\"\n", era_tests::fixture_plugins());
    let erad = Erad::start_with(&config, &[]);
    let dir = erad.dir.path().join("qa");
    let secret = "s3cr3t-Value-9f2c";
    let spec = quick_spec(&dir, "web", "qa");
    let text = std::fs::read_to_string(&spec).unwrap();
    std::fs::write(&spec, format!("{text}  env: {{TOKEN: \"{secret}\"}}\n")).unwrap();

    let id = plan_id(&erad, &spec, "qa");
    assert_eq!(erad.era(&["apply", "--plan", &id]).code, 0);
    erad.wait_for_state("web", "Running", T);
    let refused = erad.era(&["apply", "--plan", &id]);
    assert_ne!(refused.code, 0);
    assert_eq!(erad.era(&["lock", "force-unlock", "qa", "--confirm", "qa"]).code, 0);
    assert_eq!(erad.era(&["destroy", "--env", "qa", "--confirm", "qa", "--wait"]).code, 0);

    let runs = erad.era(&["-o", "json", "runs", "--env", "qa"]).json();
    let runs = runs.as_array().unwrap();
    let seen: Vec<(&str, &str)> =
        runs.iter().map(|r| (r["kind"].as_str().unwrap(), r["result"].as_str().unwrap())).collect();
    assert_eq!(
        seen,
        [
            ("destroy", "succeeded"),
            ("force-unlock", "succeeded"),
            ("apply", "failed"),
            ("apply", "succeeded"),
            ("plan", "succeeded")
        ],
        "{runs:?}"
    );
    assert!(runs.iter().all(|r| r["caller"] == "uid 0" && r["environment"] == "qa"), "{runs:?}");
    assert!(runs[2]["summary"].as_str().unwrap().contains("was applied at"), "the failure says why: {runs:?}");
    let applied = runs[3]["id"].as_str().unwrap();
    let show = erad.era(&["runs", "show", applied]);
    assert!(show.stdout.contains("add web: revision 1"), "{show:?}");
    let plan_run = erad.era(&["-o", "json", "runs", "show", runs[4]["id"].as_str().unwrap()]).json();
    assert_eq!(plan_run["log"][0], "add web", "{plan_run}");
    // Another environment's view is its own.
    assert!(erad.era(&["-o", "json", "runs", "--env", "prod"]).json().as_array().unwrap().is_empty());

    // The spec's values are in no run.
    let db = erad.db();
    let dump: Vec<String> = db
        .prepare("SELECT kind || summary || log FROM runs")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    use base64::Engine;
    for form in
        [secret.to_string(), base64::engine::general_purpose::STANDARD.encode(secret), secret.replace('-', "%2D")]
    {
        assert!(!dump.iter().any(|r| r.contains(&form)), "{form} in the run history");
        assert!(!erad.log().contains(&form), "{form} in erad's log");
    }

    // Past the retention, the next run prunes the old ones.
    std::thread::sleep(Duration::from_millis(3200));
    let again = quick_spec(&dir, "api", "qa");
    plan_id(&erad, &again, "qa");
    let runs = erad.era(&["-o", "json", "runs"]).json();
    assert_eq!(runs.as_array().unwrap().len(), 1, "{runs}");
    let gone = erad.era(&["runs", "show", applied]);
    assert!(gone.code == 1 && gone.stderr.contains(&format!("no run {applied}")), "{gone:?}");
}

#[test]
fn drift_shows_in_the_report_and_the_plan_and_stops_a_protected_apply_until_accepted() {
    let config = format!("{}\n[environments.prod]\nprotected = true\n", era_tests::fixture_plugins());
    let erad = Erad::start_with(&config, &[]);
    let dir = erad.dir.path().join("prod");
    let web = quick_spec(&dir, "web", "prod");
    quick_spec(&dir, "job", "prod");
    let id = plan_id(&erad, &dir, "prod");
    assert_eq!(erad.era(&["apply", "--plan", &id]).code, 0);
    erad.wait_for_state("web", "Running", T);
    erad.wait_for_state("job", "Running", T);
    assert_eq!(erad.era(&["stop", "job", "--wait"]).code, 0);

    let report = |erad: &Erad| erad.era(&["-o", "json", "report", "--env", "prod"]).json();
    let r = report(&erad);
    assert_eq!(r["environments"][0]["standing"], "healthy", "{r}");
    let standings: Vec<&str> =
        r["deployments"].as_array().unwrap().iter().map(|d| d["standing"].as_str().unwrap()).collect();
    assert_eq!(standings, ["healthy", "healthy"], "{r}");

    // The stopped job runs again behind erad's back.
    erad.set_noop_running("prod-job", 1, true, None);
    let r = report(&erad);
    assert_eq!(r["environments"][0]["standing"], "drifted", "{r}");
    let job = r["deployments"].as_array().unwrap().iter().find(|d| d["name"] == "job").unwrap().clone();
    assert_eq!(job["standing"], "drifted");
    assert!(job["detail"].as_str().unwrap().contains("recorded Stopped, but the runtime says it runs"), "{job}");
    let text = erad.era(&["report", "--env", "prod"]);
    assert!(text.stdout.contains("environment prod: drifted (2 deployment(s))"), "{text:?}");

    // A plan shows it; a protected apply stops on it until accepted.
    std::fs::write(&web, std::fs::read_to_string(&web).unwrap() + "  env: {V: \"2\"}\n").unwrap();
    let plan = erad.era(&["plan", "-f", dir.to_str().unwrap(), "--env", "prod"]);
    assert!(plan.stdout.contains("! drifted: recorded Stopped, but the runtime says it runs"), "{plan:?}");
    let id = plan_id(&erad, &dir, "prod");
    let refused = erad.era(&["apply", "--plan", &id]);
    assert!(refused.code == 1 && refused.stderr.contains("deployment job is drifted"), "{refused:?}");
    assert_eq!(erad.get("web")["desired_revision"], 1, "nothing was applied");
    let accepted = erad.era(&["apply", "--plan", &id, "--accept-drift"]);
    assert_eq!(accepted.code, 0, "{accepted:?}");
    assert_eq!(erad.wait_for_state("web", "Running", T)["revision"], 2);
    // The report is a run too.
    let runs = erad.era(&["-o", "json", "runs"]).json();
    assert!(runs.as_array().unwrap().iter().any(|r| r["kind"] == "report"), "{runs}");
}

#[test]
fn erad_checks_drift_on_its_own_and_report_last_shows_it_without_asking() {
    let config = format!("{}\n[drift]\ninterval = \"300ms\"\n", era_tests::fixture_plugins());
    let erad = Erad::start_with(&config, &[]);
    let job = quick_spec(&erad.dir.path().join("qa"), "job", "qa");
    assert_eq!(erad.apply_wait(&job).code, 0);
    assert_eq!(erad.era(&["stop", "job", "--wait"]).code, 0);
    let last = |erad: &Erad| erad.era(&["-o", "json", "report", "--last", "--env", "qa"]).json();
    era_tests::eventually(T, || last(&erad)["deployments"][0]["standing"] == "healthy");
    // It runs again behind erad's back; nobody asks, erad finds it.
    erad.set_noop_running("qa-job", 1, true, None);
    era_tests::eventually(T, || last(&erad)["deployments"][0]["standing"] == "drifted");
    let r = last(&erad);
    assert_eq!(r["environments"][0]["standing"], "drifted", "{r}");
    assert!(r["deployments"][0]["checked_at"].as_str().unwrap().starts_with("20"), "{r}");
    assert!(erad.log().contains("drift check: deployments drifted"));
    // Reading the last check is not a run; asking now is.
    let runs = erad.era(&["-o", "json", "runs"]).json();
    assert!(runs.as_array().unwrap().is_empty(), "{runs}");
}
