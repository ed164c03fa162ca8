//! `queue salvage`, `queue list` and `queue show` on a damaged embedded queue, through the
//! binary: a guard killed with messages pending, bytes flipped inside one record found by its
//! content; list and show name the damage and exit non-zero; salvage refuses a live guard,
//! writes every intact record as a payload file named by sequence and MSH-10, rebuilds the
//! queue, and the guard then delivers exactly the intact ones, in order.

use crate::custody::{custody_yaml, free_addr};
use crate::damage::{queue_cmd, queue_kill_and_flip, receive};
use crate::harness::*;

#[test]
fn salvage_writes_every_intact_record_and_rebuilds_a_queue_that_list_and_show_call_clean() {
    let dir = TestDir::new();
    let receiver = free_addr(); // down: everything stays queued
    let listen = free_addr();
    let config = dir.path("custody.yaml");
    std::fs::write(
        &config,
        custody_yaml(&dir, receiver, &listen.to_string(), ""),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let ids: Vec<String> = (1..=20).map(|i| format!("SAL-{i:02}")).collect();
    let queue = queue_kill_and_flip(&config, listen, &ids, "SAL-07", &dir.path("state"));

    // list and show name the damage and fail; nothing is changed by them.
    let (ok, out, err) = queue_cmd(&["list", "--config", cfg]);
    assert!(!ok, "list of a damaged queue succeeded: {out}");
    assert!(
        out.contains("route lab: 19 pending")
            && out.contains(
                "route lab: DAMAGED: pending: seq 7, 1 acknowledged messages lost (MSH-10 SAL-07)"
            ),
        "{out}"
    );
    assert!(err.contains("damaged queue: lab"), "{err}");
    let (ok, out, _) = queue_cmd(&["list", "--json", "--config", cfg]);
    assert!(!ok);
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    let damaged = &rows[0]["damaged"];
    assert_eq!(
        (
            &damaged[0]["queue"],
            &damaged[0]["first_seq"],
            &damaged[0]["last_seq"],
            &damaged[0]["lost"],
            &damaged[0]["control_ids"][0]
        ),
        (
            &"pending".into(),
            &7.into(),
            &7.into(),
            &1.into(),
            &"SAL-07".into()
        ),
        "{out}"
    );
    let (ok, out, err) = queue_cmd(&["show", "--config", cfg]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("route lab: pending: 19")
            && out.contains(
                "DAMAGED seq 7\t1 acknowledged messages lost\tMSH-10 still readable: SAL-07"
            )
            && !out.contains("\tSAL-07\t"),
        "{out}"
    );
    assert!(err.contains("damaged queue: lab"), "{err}");
    assert!(
        !queue.join("damaged").exists(),
        "list/show changed the queue"
    );

    // Salvage: every intact record as a file named by seq and MSH-10, then a clean queue.
    let out_dir = dir.path("rescued");
    let (ok, out, err) = queue_cmd(&[
        "salvage",
        "--config",
        cfg,
        "--route",
        "lab",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("route lab: pending: 19 intact records written to")
            && out.contains("route lab: pending: damaged: seq 7: 1 acknowledged messages lost (MSH-10 still readable: SAL-07)")
            && out.contains("route lab: pending: queue rebuilt: 19 pending, 1 acknowledged messages lost to damage"),
        "{out}"
    );
    let mut files: Vec<String> = std::fs::read_dir(out_dir.join("pending"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let expected: Vec<(u64, &String)> = (1..=20u64)
        .zip(&ids)
        .filter(|(_, id)| *id != "SAL-07")
        .collect();
    assert_eq!(
        files,
        expected
            .iter()
            .map(|(seq, id)| format!("{seq:020}-{id}.hl7"))
            .collect::<Vec<_>>()
    );
    for (seq, id) in &expected {
        let written =
            std::fs::read(out_dir.join("pending").join(format!("{seq:020}-{id}.hl7"))).unwrap();
        assert_eq!(written, message(id, 300), "payload of {id} not byte-exact");
    }
    let evidence: Vec<String> = std::fs::read_dir(queue.join("damaged"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        evidence.iter().any(
            |n| n.starts_with("00000000000000000007-00000000000000000007-") && n.ends_with(".bin")
        ),
        "{evidence:?}"
    );

    // Clean now: list and show succeed and say what was lost earlier.
    let (ok, out, err) = queue_cmd(&["list", "--config", cfg]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("route lab: 19 pending")
            && out.contains(
                "route lab: 1 acknowledged messages were lost to damage set aside earlier"
            ),
        "{out}"
    );
    let (ok, out, err) = queue_cmd(&["show", "--config", cfg]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("1 stretches of damage set aside earlier (1 acknowledged messages lost)"),
        "{out}"
    );

    // A running guard: salvage refuses it, and the guard delivers the 19, in order, once.
    let (guard, _, _logs) = crate::cli::start_guard(&config);
    let (ok, _, err) = queue_cmd(&["salvage", "--config", cfg, "--route", "lab"]);
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "the guard is running (pid {}); stop it first",
            guard.0.id()
        )),
        "{err}"
    );
    let intact: Vec<String> = expected.iter().map(|(_, id)| (*id).clone()).collect();
    let (_sink, delivered) = receive(receiver, &dir.path("saved"), &intact);
    assert_eq!(delivered, intact);
}
