//! Each caller's last write, remembered for its reads: the later position stays, entries
//! expire, and the map stays within its bound (the oldest writes go first).

use service_runtime::replica::{Lsn, OwnWrites};
use std::time::Duration;

fn lsn(n: u64) -> Lsn {
    format!("{:X}/{:X}", n >> 32, n & 0xFFFF_FFFF)
        .parse()
        .unwrap()
}

#[test]
fn a_caller_is_remembered_until_it_expires() {
    let w = OwnWrites::new(Duration::from_millis(50), 10);
    assert!(w.after("user:a").is_none());
    w.record("user:a", lsn(1));
    assert_eq!(w.after("user:a"), Some(lsn(1)));
    assert!(w.after("user:b").is_none());
    std::thread::sleep(Duration::from_millis(60));
    assert!(w.after("user:a").is_none(), "expired");
    // The next write trims what expired.
    w.record("user:b", lsn(2));
    assert_eq!(w.len(), 1);
}

#[test]
fn the_map_keeps_at_most_its_bound_dropping_the_oldest_writes() {
    let w = OwnWrites::new(Duration::from_secs(60), 3);
    for caller in ["a", "b", "c", "d", "e"] {
        w.record(caller, lsn(0));
    }
    assert_eq!(w.len(), 3);
    assert!(w.after("a").is_none() && w.after("b").is_none());
    assert!(w.after("c").is_some() && w.after("e").is_some());
    // A caller that writes again is the newest: its older entry does not evict it.
    w.record("c", lsn(0));
    w.record("f", lsn(0));
    assert!(w.after("c").is_some(), "c wrote again");
    assert!(w.after("d").is_none(), "d is now the oldest");
    assert_eq!(w.len(), 3);
}

#[test]
fn the_later_position_of_a_caller_stays() {
    let w = OwnWrites::new(Duration::from_secs(60), 10);
    w.record("user:a", lsn(0x1_0000_0010));
    // A write that committed earlier but recorded later (concurrent calls) keeps the later one.
    w.record("user:a", lsn(0x20));
    assert_eq!(w.after("user:a"), Some(lsn(0x1_0000_0010)));
    w.record("user:a", lsn(0x2_0000_0000));
    assert_eq!(w.after("user:a"), Some(lsn(0x2_0000_0000)));
}

#[test]
fn positions_parse_and_compare_as_numbers() {
    let a: Lsn = "16/B374D848".parse().unwrap();
    assert_eq!(a.position(), Some((0x16 << 32) | 0xB374_D848));
    assert_eq!(a.to_string(), "16/B374D848");
    assert!("16-B3".parse::<Lsn>().is_err());
    assert_eq!(Lsn::unknown().position(), Some(u64::MAX));
}

#[test]
fn the_queue_holds_each_caller_once_however_often_it_writes() {
    let w = OwnWrites::new(Duration::from_secs(60), 3);
    for n in 0..10_000 {
        w.record("user:a", lsn(n));
    }
    assert_eq!((w.len(), w.queued()), (1, 1));
    for n in 0..1_000 {
        w.record(["a", "b", "c", "d"][n % 4], lsn(n as u64));
    }
    assert!(
        w.len() <= 3 && w.queued() <= 3,
        "{} {}",
        w.len(),
        w.queued()
    );
    // Expired callers leave the queue too.
    let w = OwnWrites::new(Duration::from_millis(20), 100);
    for n in 0..50 {
        w.record(&format!("c{n}"), lsn(0));
    }
    std::thread::sleep(Duration::from_millis(30));
    w.record("last", lsn(0));
    assert_eq!((w.len(), w.queued()), (1, 1));
}

#[test]
fn an_unknown_position_is_replaced_by_the_next_known_one() {
    let w = OwnWrites::new(Duration::from_secs(60), 10);
    w.record("user:a", Lsn::unknown());
    assert_eq!(w.after("user:a"), Some(Lsn::unknown()));
    w.record("user:a", lsn(0x30));
    assert_eq!(w.after("user:a"), Some(lsn(0x30)));
    // An unknown one after a known one: unknown (the later write's position is not known).
    w.record("user:a", Lsn::unknown());
    assert_eq!(w.after("user:a"), Some(Lsn::unknown()));
}
