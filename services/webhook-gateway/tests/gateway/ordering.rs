//! The ordering guard's keys: each test here failed before memberships were ordered by their
//! own clock, deletes stopped using the delivery time, and ties were broken by the event time.

use crate::support::*;
use serde_json::{Value, json};
/// A removal and an invitation again, close together: the event clock (envelope `timestamp`)
/// of the removal runs ahead of the new membership's `updated_at`. Whatever order they arrive
/// in, the member stays, as in Clerk: memberships are ordered by Clerk's clock of the
/// membership itself, and a removal of one membership does not end a later one.
#[tokio::test]
async fn a_removal_and_a_new_invitation_converge_in_any_order() {
    let s = stack(SECRET).await;
    let first = ("orgmem_first", T);
    let again = ("orgmem_again", T + 90);
    let mut removal = membership_event_of(
        "organizationMembership.deleted",
        first,
        "org_a",
        "user_a",
        "org:member",
        T,
    );
    removal["timestamp"] = json!(T + 100);
    let created = membership_event_of(
        "organizationMembership.created",
        first,
        "org_a",
        "user_a",
        "org:member",
        T,
    );
    let invited = membership_event_of(
        "organizationMembership.created",
        again,
        "org_a",
        "user_a",
        "org:admin",
        T + 90,
    );
    let orders: [[(&str, &Value); 3]; 3] = [
        [("c", &created), ("i", &invited), ("r", &removal)],
        [("c", &created), ("r", &removal), ("i", &invited)],
        [("i", &invited), ("r", &removal), ("c", &created)],
    ];
    for (n, order) in orders.iter().enumerate() {
        let org = format!("org_order{n}");
        s.send(
            &format!("msg_{n}o"),
            &org_event("organization.created", &org, "Acme", T),
        )
        .await;
        for (id, event) in order {
            let mut event = (*event).clone();
            event["data"]["organization"]["id"] = json!(org);
            assert_eq!(s.send(&format!("msg_{n}{id}"), &event).await.0, 200);
        }
        assert_eq!(
            s.members(&org).await,
            vec![("user_a".to_string(), "org:admin".to_string())],
            "order {n}"
        );
    }
}

/// A delete delivered without an envelope `timestamp`, retried hours later: the delivery time
/// (`svix-timestamp`) orders nothing, so it cannot override a newer membership.
#[tokio::test]
async fn a_late_delete_without_a_timestamp_does_not_override_newer_state() {
    let s = stack(SECRET).await;
    let first = ("orgmem_first", T);
    let created = membership_event_of(
        "organizationMembership.created",
        first,
        "org_a",
        "user_a",
        "org:member",
        T,
    );
    let invited = membership_event_of(
        "organizationMembership.created",
        ("orgmem_again", T + 10),
        "org_a",
        "user_a",
        "org:admin",
        T + 10,
    );
    let mut removal = membership_event_of(
        "organizationMembership.deleted",
        first,
        "org_a",
        "user_a",
        "org:member",
        T,
    );
    removal.as_object_mut().unwrap().remove("timestamp");
    s.send(
        "msg_o",
        &org_event("organization.created", "org_a", "Acme", T),
    )
    .await;
    for (id, event) in [
        ("msg_c", &created),
        ("msg_i", &invited),
        ("msg_r", &removal),
    ] {
        assert_eq!(s.send(id, event).await.0, 200);
    }
    assert_eq!(
        s.members("org_a").await,
        vec![("user_a".to_string(), "org:admin".to_string())]
    );
    // The same for a user: a deletion is final whatever its time, and is still applied.
    s.send("msg_u", &user_event("user.created", "user_b", "Bea", T))
        .await;
    let mut gone = deleted_event("user.deleted", "user", "user_b", T);
    gone.as_object_mut().unwrap().remove("timestamp");
    assert_eq!(s.send("msg_ud", &gone).await.0, 200);
    assert!(s.user("user_b").await.is_none());
}

/// Two different states with the same `updated_at`: the one the source said later (envelope
/// `timestamp`) wins, whichever arrives first.
#[tokio::test]
async fn equal_timestamps_are_broken_by_the_event_time() {
    let s = stack(SECRET).await;
    let said = |e: Value, at: i64| {
        let mut e = e;
        e["timestamp"] = json!(at);
        e
    };
    for (n, later_first) in [(0, true), (1, false)] {
        let user = format!("user_tie{n}");
        let org = format!("org_tie{n}");
        let early_user = said(user_event("user.updated", &user, "Early", T + 5), T + 6);
        let late_user = said(user_event("user.updated", &user, "Late", T + 5), T + 7);
        let early_org = said(
            org_event("organization.updated", &org, "Early", T + 5),
            T + 6,
        );
        let late_org = said(
            org_event("organization.updated", &org, "Late", T + 5),
            T + 7,
        );
        let mut sends = vec![
            (format!("msg_{n}eu"), early_user),
            (format!("msg_{n}lu"), late_user),
            (format!("msg_{n}eo"), early_org),
            (format!("msg_{n}lo"), late_org),
        ];
        if later_first {
            sends.swap(0, 1);
            sends.swap(2, 3);
        }
        for (id, event) in &sends {
            assert_eq!(s.send(id, event).await.0, 200);
        }
        assert_eq!(
            s.user(&user).await.unwrap().name,
            "Late Example",
            "later_first={later_first}"
        );
        assert_eq!(
            s.workspace_name(&org).await.as_deref(),
            Some("Late"),
            "later_first={later_first}"
        );
    }
}
