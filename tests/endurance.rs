//! Endurance, bounded in time: a burst of 10,000 namespaces at full speed
//! with every event accounted for (delivered, or counted as lost). Alone in
//! its test binary, so no other test's namespaces run beside the burst.

use std::time::Duration;

use nstrail::event::EventBody;
use nstrail_tests::{field, run_ok, TestAgent};

fn helper() -> &'static str {
    env!("CARGO_BIN_EXE_netns-helper")
}

#[test]
fn a_burst_of_10000_namespaces_is_accounted_for_exactly() {
    const COUNT: u64 = 10_000;
    let mut agent = TestAgent::start();
    let ran = run_ok(helper(), &["churn", &COUNT.to_string()]);
    assert_eq!(field(&ran.stdout, "created"), COUNT);
    let churn = ran.pid;
    // Creates are ours when the creator's parent is the helper; destroys are
    // matched by the namespace ids those creates named.
    let tally = |log: &nstrail_tests::EventLog| {
        let created: std::collections::HashSet<u64> = log
            .of_type("netns_create")
            .filter(|e| e.body.actor().is_some_and(|a| a.ppid == churn))
            .filter_map(|e| e.body.netns().map(|n| n.id))
            .collect();
        let destroyed =
            log.of_type("netns_destroy").filter(|e| e.body.netns().is_some_and(|n| created.contains(&n.id))).count();
        (created.len() as u64, destroyed as u64)
    };
    let lost = |log: &nstrail_tests::EventLog, kind: &str| -> u64 {
        log.events
            .iter()
            .filter_map(|e| match &e.body {
                EventBody::Lost { count, event_type } if event_type == kind => Some(*count),
                _ => None,
            })
            .sum()
    };
    agent.wait_until(Duration::from_secs(120), "every create and destroy delivered or counted lost", |log| {
        let (created, destroyed) = tally(log);
        created + lost(log, "netns_create") >= COUNT && destroyed + lost(log, "netns_destroy") >= created
    });
    agent.settle(Duration::from_secs(2));
    let summary = agent.stop();
    let (created, destroyed) = tally(&agent.log);
    let (lost_creates, lost_destroys) = (lost(&agent.log, "netns_create"), lost(&agent.log, "netns_destroy"));
    eprintln!("10,000-namespace burst: {created} creates and {destroyed} destroys delivered, {lost_creates} + {lost_destroys} lost");
    assert_eq!(created + lost_creates, COUNT, "every create delivered or counted");
    assert_eq!(destroyed + lost_destroys, created, "every destroy delivered or counted");
    assert_eq!(summary.lost, agent.log.lost(), "lost records match the kernel's counters");
    assert_eq!(summary.decode_errors, 0);
}
