//! The reference scenario of docs/semantics.md section 8 under load: OrderHandling
//! with CheckCustomerAccountStatus (started asynchronously), the
//! UpdateOrderDatabase microflow (sent one way), and, on a bad account,
//! CancelOrderAndSendNotification (a microflow with a one-way notification).
//! Every order's outcome and effects are checked, and the order database
//! (the resource `orders`) agrees with the orders, also after a restore.

use cairn_tests::{Host, TempDir};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(120);
const ORDERS: usize = 60;

fn is_bad(i: usize) -> bool {
    i.is_multiple_of(3)
}

fn count_by_order(log: &[Value], message: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for r in log.iter().filter(|r| r["message"] == message) {
        *out.entry(r["fields"]["order"].as_str().unwrap_or("").to_string()).or_default() += 1;
    }
    out
}

/// The order database is the resource `orders`, written by `order-db` (granted it).
fn deploy_scenario(h: &Host) {
    h.ok_json(&["resource", "create", "orders"]);
    let order_db = cairn_tests::guest("order_db");
    let out = h.cairn(&["deploy", order_db.to_str().unwrap(), "--name", "order-db", "--resource", "orders"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    for (file, name) in [("account_service", "account-service"), ("notifier", "notifier")] {
        h.deploy(file, Some(name));
    }
    for file in ["check_customer_account_status", "update_order_database", "cancel_order_and_send_notification", "order_handling"] {
        h.deploy(file, None);
    }
}

/// Waits until every order's row in the `orders` resource agrees with its
/// instance (accepted: recorded; cancelled: cancelled) and no row is
/// without an instance; returns the number of orders.
fn rows_agree_with_instances(h: &Host) -> usize {
    let deadline = Instant::now() + WAIT;
    loop {
        let orders = h.instances("order-handling");
        let rows = h.ok_json(&["resource", "scan", "orders", "--limit", "1000"])["rows"].as_array().cloned().unwrap_or_default();
        let rows: BTreeMap<String, String> = rows
            .iter()
            .map(|r| (r["key"].as_str().unwrap().to_string(), r["value"]["status"].as_str().unwrap_or("").to_string()))
            .collect();
        let mut agree = orders.iter().all(|o| o["status"] == "completed") && rows.len() == orders.len();
        for o in &orders {
            let v = h.instance(o["id"].as_str().unwrap());
            assert_eq!(v["variables"]["previous_status"], Value::Null, "a new order: the lookup found no row");
            let want = match v["variables"]["status"].as_str() {
                Some("accepted") => "recorded",
                Some("cancelled") => "cancelled",
                _ => "?",
            };
            agree &= rows.get(v["variables"]["order_id"].as_str().unwrap()).map(String::as_str) == Some(want);
        }
        if agree {
            return orders.len();
        }
        assert!(Instant::now() < deadline, "order rows do not agree with the orders: {rows:?}\n{}", h.server_log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn orders_with_good_and_bad_accounts_each_end_as_the_scenario_says() {
    let dir = TempDir::new("reference");
    let h = Host::start(dir.path(), &["--quiet-guests"], &[]);
    deploy_scenario(&h);
    for i in 0..ORDERS {
        let customer = if is_bad(i) { format!("bad-customer-{i}") } else { format!("customer-{i}") };
        let body = json!({ "order_id": format!("o-{i:03}"), "customer": customer, "amount": 10.0 * i as f64 });
        let (status, v) = h.send("order", body, Some(&format!("order-{i}")));
        assert_eq!(status, 202, "{v}");
    }

    let deadline = Instant::now() + WAIT;
    let orders = loop {
        let all = h.instances("order-handling");
        if all.len() == ORDERS && all.iter().all(|o| o["status"] == "completed") {
            break all;
        }
        assert!(Instant::now() < deadline, "orders did not all complete: {all:#?}\n{}", h.server_log());
        std::thread::sleep(Duration::from_millis(100));
    };
    let bad = (0..ORDERS).filter(|i| is_bad(*i)).count();
    for o in &orders {
        let v = h.instance(o["id"].as_str().unwrap());
        let id: usize = v["variables"]["order_id"].as_str().unwrap()[2..].parse().unwrap();
        let expected = if is_bad(id) { "cancelled" } else { "accepted" };
        assert_eq!(v["variables"]["status"], expected, "order {id}");
    }
    let checks = h.instances("check-customer-account-status");
    assert_eq!(checks.len(), ORDERS, "one account check per order");
    assert!(checks.iter().all(|c| c["status"] == "completed"));
    assert!(h.instances("update-order-database").is_empty(), "that microflow keeps no final state");

    // One-way effects leave after their commits: wait for them, then count.
    let deadline = Instant::now() + WAIT;
    loop {
        let log = h.guest_log();
        let written = count_by_order(&log, "order row written");
        let notified = log.iter().filter(|r| r["message"] == "notified customer of rejection").count();
        let cancels = h.instances("cancel-order-and-send-notification");
        if written.len() == ORDERS && notified == bad && cancels.len() == bad && cancels.iter().all(|c| c["status"] == "completed") {
            let looked_up = count_by_order(&log, "account looked up");
            assert_eq!(looked_up.len(), ORDERS);
            assert!(looked_up.values().all(|n| *n == 1), "each account looked up once: {looked_up:?}");
            let cancelled = count_by_order(&log, "order row cancelled");
            assert_eq!(cancelled.len(), bad);
            assert!(cancelled.keys().all(|o| is_bad(o[2..].parse().unwrap())), "only bad accounts cancel: {cancelled:?}");
            break;
        }
        assert!(Instant::now() < deadline, "effects incomplete: {} rows, {notified}/{bad} notices, {} cancels", written.len(), cancels.len());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(rows_agree_with_instances(&h), ORDERS);
    // Each row took exactly the writes its order made: a good account's
    // upsert, and a bad account's upsert and cancel. The row's version counts
    // committed writes; the guest log would not, since a call that loses a
    // resource conflict (a bad order's cancel and upsert touch the same row
    // at once) runs again and logs again, while only one of its runs commits.
    let versions: BTreeMap<String, u64> = h.ok_json(&["resource", "scan", "orders", "--limit", "1000"])["rows"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|r| (r["key"].as_str().unwrap().to_string(), r["version"].as_u64().unwrap()))
        .collect();
    assert_eq!(versions.len(), ORDERS);
    for (order, version) in &versions {
        let writes = if is_bad(order[2..].parse().unwrap()) { 2 } else { 1 };
        assert_eq!(*version, writes, "order {order}'s row was written {version} times, not {writes}: {versions:?}");
    }
}

/// docs/semantics.md section 8's procedure: load the host, take a backup while
/// orders are in flight, restore it into an isolated environment, and watch
/// every order in the backup finish there, with its effects recorded there.
#[test]
fn orders_in_flight_in_a_backup_finish_in_the_isolated_environment() {
    let primary_dir = TempDir::new("reference-primary");
    let primary = Host::start(primary_dir.path(), &["--quiet-guests"], &[]);
    deploy_scenario(&primary);
    let backup = primary.data.join("store").join("backups").join("b");
    // Orders keep arriving while the backup is taken.
    for i in 0..ORDERS {
        let customer = if is_bad(i) { format!("bad-customer-{i}") } else { format!("customer-{i}") };
        let body = json!({ "order_id": format!("o-{i:03}"), "customer": customer, "amount": 1.0 });
        primary.send("order", body, None);
        if i == ORDERS / 2 {
            primary.ok_json(&["backup", "b"]);
        }
    }
    let restored_dir = TempDir::new("reference-restored");
    let restored = Host::restore(&backup, restored_dir.path());
    let in_backup = restored.instances("order-handling");
    assert!(!in_backup.is_empty() && in_backup.len() <= ORDERS / 2 + 1, "{} orders in the backup", in_backup.len());
    let in_flight = in_backup.iter().filter(|o| o["status"] != "completed").count();
    let deadline = Instant::now() + WAIT;
    loop {
        let all = restored.instances("order-handling");
        if all.iter().all(|o| o["status"] == "completed") {
            for o in &all {
                let v = restored.instance(o["id"].as_str().unwrap());
                let id: usize = v["variables"]["order_id"].as_str().unwrap()[2..].parse().unwrap();
                let expected = if is_bad(id) { "cancelled" } else { "accepted" };
                assert_eq!(v["variables"]["status"], expected, "order {id} in the isolated environment");
            }
            assert_eq!(all.len(), in_backup.len(), "no order appeared or vanished");
            break;
        }
        assert!(Instant::now() < deadline, "orders in the backup did not finish: {all:#?}\n{}", restored.server_log());
        std::thread::sleep(Duration::from_millis(100));
    }
    // The order database came with the instances: in both environments,
    // once every order has finished, each row agrees with its order.
    rows_agree_with_instances(&restored);
    rows_agree_with_instances(&primary);
    if in_flight > 0 {
        let effects = std::fs::read_to_string(restored_dir.path().join("store").join("isolated-effects.jsonl")).unwrap_or_default();
        assert!(effects.lines().count() > 0, "{in_flight} orders continued there, and their calls are recorded there");
    }
}
