//! Which internal callers may call which methods (`SERVICE_CALLERS`), by the `sub` of their
//! service token. The webhook gateway's subject may call the methods declared for service
//! tokens only (the sync commands) and those named for it; any other subject only the methods
//! it is granted. Operators (`OPERATOR_SUBJECTS`) may call the admin services and nothing else.
//! A subject not listed gets PERMISSION_DENIED.

use std::collections::{HashMap, HashSet};

/// The `sub` of the webhook gateway's service tokens.
pub const GATEWAY_SUBJECT: &str = "webhook-gateway";

/// What one internal caller may call.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Grant {
    /// Every method that admits service tokens (not those named for one caller).
    All,
    /// These methods (bare names, e.g. `GetUser`).
    Methods(HashSet<String>),
}

/// Internal callers and their grants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceCallers {
    grants: HashMap<String, Grant>,
    /// Subjects that may call the admin services.
    operators: HashSet<String>,
}

/// The default operator subject.
pub const DEFAULT_OPERATOR_SUBJECT: &str = "operator";

impl ServiceCallers {
    /// Parses `sub=Method,Method;sub2=*` (spaces around items ignored; empty: nobody).
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut grants = HashMap::new();
        for entry in spec.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            let (sub, methods) = entry.split_once('=').ok_or_else(|| {
                format!(
                    "SERVICE_CALLERS entry {entry:?} must be `subject=Method,Method` or `subject=*`"
                )
            })?;
            let sub = sub.trim();
            if sub.is_empty() || sub.len() > 100 || !sub.chars().all(|c| c.is_ascii_graphic()) {
                return Err(format!(
                    "SERVICE_CALLERS: {sub:?} is not a token subject (1 to 100 printable characters)"
                ));
            }
            let methods: Vec<&str> = methods
                .split(',')
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .collect();
            let grant = if methods == ["*"] {
                Grant::All
            } else {
                if methods.is_empty()
                    || methods
                        .iter()
                        .any(|m| !m.chars().all(|c| c.is_ascii_alphanumeric()))
                {
                    return Err(format!(
                        "SERVICE_CALLERS: {sub} must list method names (e.g. GetUser,BatchGetUsers) or *"
                    ));
                }
                Grant::Methods(methods.into_iter().map(str::to_owned).collect())
            };
            if sub == GATEWAY_SUBJECT {
                return Err(format!(
                    "SERVICE_CALLERS must not name the webhook gateway's subject ({GATEWAY_SUBJECT}): its methods are fixed, and a leaked gateway key must not reach the others"
                ));
            }
            if grants.insert(sub.to_owned(), grant).is_some() {
                return Err(format!("SERVICE_CALLERS names {sub} twice"));
            }
        }
        Ok(Self {
            grants,
            operators: HashSet::new(),
        })
    }

    /// Adds the operator subjects of `OPERATOR_SUBJECTS` (comma-separated). The gateway's
    /// subject cannot be an operator: a leaked gateway key must not open the admin services.
    pub fn with_operators(mut self, spec: &str) -> Result<Self, String> {
        for sub in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if sub.len() > 100 || !sub.chars().all(|c| c.is_ascii_graphic()) {
                return Err(format!(
                    "OPERATOR_SUBJECTS: {sub:?} is not a token subject (1 to 100 printable characters)"
                ));
            }
            if sub == GATEWAY_SUBJECT {
                return Err(format!(
                    "OPERATOR_SUBJECTS must not name the webhook gateway's subject ({GATEWAY_SUBJECT}): give operators a subject of their own"
                ));
            }
            if self.grants.contains_key(sub) {
                return Err(format!(
                    "OPERATOR_SUBJECTS names {sub}, which SERVICE_CALLERS grants methods: give operators a subject of their own, so an operator's token opens the admin services only"
                ));
            }
            self.operators.insert(sub.to_owned());
        }
        Ok(self)
    }

    /// Whether `subject` is an operator.
    pub fn is_operator(&self, subject: &str) -> bool {
        self.operators.contains(subject)
    }

    /// Whether `subject` was granted `method` (a bare method name).
    pub fn allows(&self, subject: &str, method: &str) -> bool {
        match self.grants.get(subject) {
            Some(Grant::All) => true,
            Some(Grant::Methods(m)) => m.contains(method),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_parse_and_refuse_nonsense() {
        let c = ServiceCallers::parse(" reporting = GetUser, BatchGetUsers ; ops=* ").unwrap();
        assert!(c.allows("reporting", "GetUser"));
        assert!(!c.allows("reporting", "ListMembers"));
        assert!(c.allows("ops", "ListMembers"));
        assert!(!c.allows("nobody", "GetUser"));
        assert_eq!(
            ServiceCallers::parse("").unwrap(),
            ServiceCallers::default()
        );
        for bad in [
            "reporting",
            "=GetUser",
            "a=",
            "a=Get User",
            "a=*;a=GetUser",
            "a b=GetUser",
            "webhook-gateway=*",
            "reporting=GetUser;webhook-gateway=ListMembers",
        ] {
            assert!(ServiceCallers::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn operators_are_listed_subjects_never_the_gateway() {
        let c = ServiceCallers::default()
            .with_operators(" operator , oncall ")
            .unwrap();
        assert!(c.is_operator("operator") && c.is_operator("oncall"));
        assert!(!c.is_operator("reporting"));
        assert!(!ServiceCallers::default().is_operator("operator"));
        assert!(
            ServiceCallers::default()
                .with_operators(GATEWAY_SUBJECT)
                .is_err()
        );
        assert!(ServiceCallers::default().with_operators("a b").is_err());
        assert!(
            ServiceCallers::parse("reporting=GetUser")
                .unwrap()
                .with_operators("operator,reporting")
                .is_err(),
            "a service caller is not also an operator"
        );
    }
}
