//! Instance pinning: a run deletes only with a secret key of the Clerk instance whose data the
//! services hold. Before anything else the run asks Clerk which instance its key belongs to
//! (`GET /instance`) and asks both services which instances they applied webhooks of or had
//! confirmed (`ListClerkInstances`). A key of another instance lists none of our data, so
//! every confirmation would answer 404: deleting with it would delete everything.
//!
//! The rules ([`decide`]), with K the key's instance, `--instance F` and
//! `--move-to-instance M`:
//! - F or M given and not K: the run stops before it lists anything.
//! - M given (= K): the operator moves this deployment to K. K is recorded as confirmed and the
//!   run deletes what K's listing lacks (still within the deletion budget).
//! - Instances are recorded but K is not among them (with or without F): the key is another
//!   deployment's, and the run stops before it lists anything (a backfill would copy that
//!   instance's users and organizations into ours).
//! - F given (= K): deletion is allowed when nothing is recorded or K is among the records;
//!   K is then recorded as confirmed, so later runs need no flag.
//! - No flag: deletion is allowed when K is recorded and no other instance was first seen or
//!   confirmed after K's last confirmation (never confirmed: no other instance at all).
//!
//! Otherwise (nothing recorded yet, or several instances recorded) the run still creates and
//! updates (a backfill of a new instance is the first thing a user does), counts what it would
//! delete, deletes nothing, and exits 1 with one line that names the key's instance and the
//! recorded ones.

use super::RunError;
use super::retry::Retrier;
use crate::clerk_api::ClerkBackend;
use crate::forward::{Downstream, failure};
use std::collections::BTreeMap;
use vbase_proto::ops::v1 as ops;

/// One service's record of one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub instance_id: String,
    pub service: &'static str,
    /// Milliseconds since the epoch.
    pub first_seen: i64,
    pub confirmed: Option<i64>,
}

/// What the run may do about deletions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pin {
    /// Delete; `confirm`: record the key's instance as confirmed in both services first.
    Allowed { instance: String, confirm: bool },
    /// Create and update only; why.
    Refused(String),
}

/// "ins_A (identity-service, workspace-service), ins_B (workspace-service)".
fn named(records: &[Recorded]) -> String {
    let mut by_id: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for r in records {
        by_id.entry(&r.instance_id).or_default().push(r.service);
    }
    by_id
        .into_iter()
        .map(|(id, services)| format!("{id} ({})", services.join(", ")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The flags that name an instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flags<'a> {
    /// `--instance`: the instance the key must belong to.
    pub instance: Option<&'a str>,
    /// `--move-to-instance`: move this deployment to the key's instance.
    pub move_to: Option<&'a str>,
}

/// The decision for key instance `key`, the flags and the services' records; `Err` stops the
/// run before it lists anything.
pub fn decide(key: &str, flags: Flags<'_>, records: &[Recorded]) -> Result<Pin, String> {
    let allowed = |confirm| Pin::Allowed {
        instance: key.to_owned(),
        confirm,
    };
    for (name, flag) in [
        ("--instance", flags.instance),
        ("--move-to-instance", flags.move_to),
    ] {
        if let Some(flag) = flag
            && flag != key
        {
            return Err(format!(
                "{name} {flag} was given, but CLERK_SECRET_KEY belongs to Clerk instance \
                 {key}: nothing was read or written (check the Secret holds this deployment's key)"
            ));
        }
    }
    if flags.move_to.is_some() {
        return Ok(allowed(true));
    }
    let known = records.iter().any(|r| r.instance_id == key);
    if !records.is_empty() && !known {
        return Err(format!(
            "CLERK_SECRET_KEY belongs to Clerk instance {key}, but the webhooks applied here \
             came from {}: nothing was read or written (check the Secret holds this \
             deployment's key; to move this deployment to {key}, run once with \
             --move-to-instance {key})",
            named(records)
        ));
    }
    if flags.instance.is_some() {
        return Ok(allowed(true));
    }
    if records.is_empty() {
        return Ok(Pin::Refused(format!(
            "no Clerk instance is recorded here yet (no webhook was applied); CLERK_SECRET_KEY \
             belongs to {key}: nothing was deleted. If that is this deployment's instance, run \
             once with --instance {key}"
        )));
    }
    let confirmed = records
        .iter()
        .filter(|r| r.instance_id == key)
        .filter_map(|r| r.confirmed)
        .max()
        .unwrap_or(i64::MIN);
    let later = records.iter().any(|r| {
        r.instance_id != key && r.first_seen.max(r.confirmed.unwrap_or(i64::MIN)) > confirmed
    });
    if !later {
        return Ok(allowed(false));
    }
    Ok(Pin::Refused(format!(
        "webhooks of several Clerk instances were applied here ({}); CLERK_SECRET_KEY belongs \
         to {key}: nothing was deleted. If {key} is this deployment's instance, run once with \
         --instance {key}",
        named(records)
    )))
}

fn millis(t: Option<&prost_types::Timestamp>) -> Option<i64> {
    t.map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
}

fn from_proto(service: &'static str, r: ops::ListClerkInstancesResponse) -> Vec<Recorded> {
    r.instances
        .into_iter()
        .map(|i| Recorded {
            first_seen: millis(i.first_seen_at.as_ref()).unwrap_or(i64::MIN),
            confirmed: millis(i.confirmed_at.as_ref()),
            instance_id: i.instance_id,
            service,
        })
        .collect()
}

/// Asks Clerk for the key's instance and both services for their records, and decides;
/// returns the key's instance too.
pub async fn check(
    clerk: &impl ClerkBackend,
    down: &Downstream,
    retry: &Retrier,
    flags: Flags<'_>,
) -> Result<(String, Pin), RunError> {
    let key = crate::clerk_api::instance(clerk).await?;
    let list = async |service: &str| {
        retry
            .call("list_clerk_instances", async |_| {
                let r = down.request(service, ops::ListClerkInstancesRequest {})?;
                let r = down.intake(service).list_clerk_instances(r).await;
                r.map_err(|s| failure("list_clerk_instances", &s))
            })
            .await
            .map(|r| r.into_inner())
    };
    let identity = list("identity-service").await?;
    let workspace = list("workspace-service").await?;
    let mut records = from_proto("identity-service", identity);
    records.extend(from_proto("workspace-service", workspace));
    tracing::info!(key_instance = key.id, environment = ?key.environment_type, recorded = named(&records), "Clerk instance of the key");
    let pin = decide(&key.id, flags, &records).map_err(RunError::Instance)?;
    Ok((key.id, pin))
}

/// Records the key's instance as confirmed in both services.
pub async fn confirm(down: &Downstream, retry: &Retrier, instance: &str) -> Result<(), RunError> {
    for service in ["identity-service", "workspace-service"] {
        retry
            .call("confirm_clerk_instance", async |_| {
                let msg = ops::ConfirmClerkInstanceRequest {
                    instance_id: instance.to_owned(),
                };
                let r = down.request(service, msg)?;
                let r = down.intake(service).confirm_clerk_instance(r).await;
                r.map_err(|s| failure("confirm_clerk_instance", &s))
            })
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, service: &'static str, first_seen: i64, confirmed: Option<i64>) -> Recorded {
        Recorded {
            instance_id: id.into(),
            service,
            first_seen,
            confirmed,
        }
    }

    const NONE: Flags<'static> = Flags {
        instance: None,
        move_to: None,
    };

    fn inst(id: &str) -> Flags<'_> {
        Flags {
            instance: Some(id),
            move_to: None,
        }
    }

    fn move_to(id: &str) -> Flags<'_> {
        Flags {
            instance: None,
            move_to: Some(id),
        }
    }

    fn allowed(p: &Pin) -> bool {
        matches!(p, Pin::Allowed { .. })
    }

    #[test]
    fn a_key_of_the_recorded_instance_deletes_and_others_do_not() {
        let one = [
            rec("ins_a", "identity-service", 1, None),
            rec("ins_a", "workspace-service", 2, None),
        ];
        assert!(allowed(&decide("ins_a", NONE, &one).unwrap()));
        // Another instance's key stops the run: it may neither delete nor copy its data in.
        let stop = decide("ins_b", NONE, &one).unwrap_err();
        assert!(stop.contains("ins_b") && stop.contains("ins_a"), "{stop}");
        // --instance cannot make another instance's key list or delete: the run stops and
        // names the flag that moves this deployment.
        let stop = decide("ins_b", inst("ins_b"), &one).unwrap_err();
        assert!(
            stop.contains("ins_a") && stop.contains("--move-to-instance ins_b"),
            "{stop}"
        );
        // --instance naming another instance than the key's stops the run.
        let stop = decide("ins_b", inst("ins_a"), &one).unwrap_err();
        assert!(stop.contains("ins_a") && stop.contains("ins_b"), "{stop}");
    }

    #[test]
    fn nothing_recorded_needs_the_flag_and_the_flag_is_confirmed() {
        let Pin::Refused(why) = decide("ins_a", NONE, &[]).unwrap() else {
            panic!()
        };
        assert!(why.contains("--instance ins_a"), "{why}");
        assert_eq!(
            decide("ins_a", inst("ins_a"), &[]).unwrap(),
            Pin::Allowed {
                instance: "ins_a".into(),
                confirm: true
            }
        );
    }

    #[test]
    fn services_that_disagree_refuse_until_an_operator_confirms_one() {
        let split = [
            rec("ins_a", "identity-service", 1, None),
            rec("ins_b", "workspace-service", 2, None),
        ];
        for key in ["ins_a", "ins_b"] {
            let Pin::Refused(why) = decide(key, NONE, &split).unwrap() else {
                panic!("{key}")
            };
            assert!(
                why.contains("ins_a (identity-service)")
                    && why.contains("ins_b (workspace-service)"),
                "{why}"
            );
        }
        assert!(allowed(&decide("ins_b", inst("ins_b"), &split).unwrap()));
        // Confirmed after ins_a was seen: later runs need no flag.
        let confirmed = [
            rec("ins_a", "identity-service", 1, None),
            rec("ins_b", "workspace-service", 2, Some(5)),
        ];
        assert!(allowed(&decide("ins_b", NONE, &confirmed).unwrap()));
        assert!(!allowed(&decide("ins_a", NONE, &confirmed).unwrap()));
        // An instance first seen after the confirmation makes it doubtful again.
        let mut newer = confirmed.to_vec();
        newer.push(rec("ins_c", "identity-service", 9, None));
        assert!(!allowed(&decide("ins_b", NONE, &newer).unwrap()));
    }

    /// Another instance seen before the key's last confirmation but confirmed after it (an
    /// operator pinned the deployment to it since) makes the key's instance doubtful too: the
    /// later of its first sight and its confirmation counts, not its first sight alone.
    #[test]
    fn an_instance_confirmed_after_the_keys_refuses_without_the_flag() {
        let repinned = [
            rec("ins_k", "identity-service", 1, Some(5)),
            rec("ins_a", "workspace-service", 3, Some(10)),
        ];
        assert!(!allowed(&decide("ins_k", NONE, &repinned).unwrap()));
        assert!(allowed(&decide("ins_a", NONE, &repinned).unwrap()));
    }

    #[test]
    fn moving_to_the_keys_instance_is_explicit_and_confirmed() {
        let one = [rec("ins_a", "identity-service", 1, None)];
        assert_eq!(
            decide("ins_b", move_to("ins_b"), &one).unwrap(),
            Pin::Allowed {
                instance: "ins_b".into(),
                confirm: true
            }
        );
        // The flag must name the key's instance.
        let stop = decide("ins_b", move_to("ins_c"), &one).unwrap_err();
        assert!(
            stop.contains("--move-to-instance ins_c") && stop.contains("ins_b"),
            "{stop}"
        );
        // Once confirmed, later runs of ins_b need no flag; ins_a is refused.
        let moved = [
            rec("ins_a", "identity-service", 1, None),
            rec("ins_b", "identity-service", 5, Some(5)),
        ];
        assert!(allowed(&decide("ins_b", NONE, &moved).unwrap()));
        assert!(!allowed(&decide("ins_a", NONE, &moved).unwrap()));
    }
}
