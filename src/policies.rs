//! The policy versions a replica knows, and which one is in force at an instant.
//!
//! The built-in version (the policy file in the binary) is always known; versions applied at
//! run time come from the store ([`crate::store::Store::policy_versions`]) and are installed
//! here when the server starts and whenever a replica applies one (it announces the change like
//! any other, see [`crate::cache::SubjectCache::policy_changes`]). A version is in force from
//! its effective date until the next version's.
//!
//! Architecture Invariant: a compiled version is never unloaded. A check `as_of` any past
//! instant needs the version then in force, so every version lives as long as the process;
//! each one is compiled once and leaked, which lets every decision borrow its rule for
//! `'static` without reference counting on the request path. The set itself is replaced whole
//! (`ArcSwap`), so a reader sees either the old set or the new one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::policy::{CompiledPolicy, PolicyError};
use crate::revision::Revision;
use crate::store::StoredPolicy;

#[derive(Debug)]
pub struct Policies {
    /// The versions in force over time, by effective date (the earliest first, never empty).
    current: ArcSwap<Vec<&'static CompiledPolicy>>,
    /// Every version compiled so far, by name, with the text it was compiled from.
    compiled: Mutex<HashMap<String, &'static CompiledPolicy>>,
    /// The revision up to which every policy version applied is installed: a Check that
    /// demands a revision waits for it ([`Policies::wait_installed_through`]).
    installed_through: watch::Sender<Revision>,
}

/// Why a set of stored versions cannot be installed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("stored policy version {version} does not compile: {error}")]
    Invalid {
        version: String,
        #[source]
        error: PolicyError,
    },
    #[error("stored policy version {version} names itself {named} in its text")]
    Misnamed { version: String, named: String },
    #[error("two policy versions take effect at the same instant: {first} and {second}")]
    SameEffectiveDate { first: String, second: String },
}

impl Default for Policies {
    fn default() -> Policies {
        Policies::builtin()
    }
}

impl Policies {
    /// Only the built-in version.
    pub fn builtin() -> Policies {
        let builtin = CompiledPolicy::builtin();
        Policies {
            current: ArcSwap::from_pointee(vec![builtin]),
            compiled: Mutex::new(HashMap::from([(builtin.version().to_owned(), builtin)])),
            installed_through: watch::channel(Revision::ZERO).0,
        }
    }

    /// The version in force at `at_micros` (microseconds since the epoch); the earliest
    /// version for an instant before every effective date.
    pub fn in_force(&self, at_micros: i64) -> &'static CompiledPolicy {
        let versions = self.current.load();
        versions
            .iter()
            .rev()
            .find(|policy| policy.effective_from_micros() <= at_micros)
            .copied()
            .unwrap_or(versions[0])
    }

    /// The instant the first version taking effect after `at_micros` does, if one is known:
    /// until then the version in force at `at_micros` stays in force.
    pub fn next_effective_after(&self, at_micros: i64) -> Option<i64> {
        self.current
            .load()
            .iter()
            .map(|policy| policy.effective_from_micros())
            .find(|effective| *effective > at_micros)
    }

    /// Every known version, by effective date.
    pub fn all(&self) -> Arc<Vec<&'static CompiledPolicy>> {
        self.current.load_full()
    }

    /// The version named `version`, if known.
    pub fn get(&self, version: &str) -> Option<&'static CompiledPolicy> {
        self.all()
            .iter()
            .copied()
            .find(|policy| policy.version() == version)
    }

    /// When the earliest version takes effect: no decision can be asked about before it.
    pub fn first_effective_micros(&self) -> i64 {
        self.current.load()[0].effective_from_micros()
    }

    /// Says that the versions installed include every one applied up to `revision` (the caller
    /// read them from the store after learning of that revision).
    pub fn installed_through(&self, revision: Revision) {
        self.installed_through.send_if_modified(|through| {
            let newer = revision > *through;
            *through = (*through).max(revision);
            newer
        });
    }

    pub fn is_installed_through(&self, revision: Revision) -> bool {
        *self.installed_through.borrow() >= revision
    }

    /// Waits, at most `timeout`, until the versions applied up to `revision` are installed.
    pub async fn wait_installed_through(&self, revision: Revision, timeout: Duration) -> bool {
        let mut through = self.installed_through.subscribe();
        if *through.borrow_and_update() >= revision {
            return true;
        }
        tokio::time::timeout(timeout, through.wait_for(|through| *through >= revision))
            .await
            .is_ok_and(|waited| waited.is_ok())
    }

    /// Installs the built-in version and `stored`, compiling the versions not compiled yet.
    /// Nothing changes when one of them cannot be installed.
    pub fn install(&self, stored: &[StoredPolicy]) -> Result<(), InstallError> {
        let mut compiled = self
            .compiled
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let builtin = CompiledPolicy::builtin();
        let mut versions = vec![builtin];
        for stored in stored {
            let policy = &stored.policy;
            let known = compiled
                .get(&policy.version)
                .filter(|known| known.source() == policy.source);
            let version = match known {
                Some(known) => *known,
                None => {
                    let fresh =
                        compile_stored(&policy.version, &policy.source).map_err(|error| {
                            InstallError::Invalid {
                                version: policy.version.clone(),
                                error,
                            }
                        })?;
                    if fresh.version() != policy.version {
                        return Err(InstallError::Misnamed {
                            version: policy.version.clone(),
                            named: fresh.version().to_owned(),
                        });
                    }
                    let leaked: &'static CompiledPolicy = Box::leak(Box::new(fresh));
                    compiled.insert(policy.version.clone(), leaked);
                    leaked
                }
            };
            if version.version() != builtin.version() {
                versions.push(version);
            }
        }
        versions.sort_by_key(|policy| policy.effective_from_micros());
        if let Some(pair) = versions
            .windows(2)
            .find(|pair| pair[0].effective_from_micros() == pair[1].effective_from_micros())
        {
            return Err(InstallError::SameEffectiveDate {
                first: pair[0].version().to_owned(),
                second: pair[1].version().to_owned(),
            });
        }
        self.current.store(Arc::new(versions));
        Ok(())
    }
}

/// Compiles a stored version. One stored before a new version had to declare its ALLOWs
/// where the state says to stop (`degraded.allow`, `deleted.allow`, `restricted.allow`) is
/// loaded as it was accepted, with a warning: refusing it would stop every replica from
/// starting, and the answers it gave in its time must stay reproducible.
fn compile_stored(version: &str, source: &str) -> Result<CompiledPolicy, PolicyError> {
    match CompiledPolicy::compile(source) {
        Err(error) if error.is_undeclared_allow() => {
            tracing::warn!(
                version,
                %error,
                "stored policy version allows what it does not declare; loaded as stored \
                 (apply a new version that declares it, or one that denies it)"
            );
            CompiledPolicy::compile_stored(source)
        }
        compiled => compiled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::BUILTIN_POLICY;
    use crate::revision::Revision;
    use crate::store::NewPolicy;

    /// The built-in file under another name and effective date.
    fn version(name: &str, effective_from: &str) -> StoredPolicy {
        let builtin = CompiledPolicy::builtin();
        let source = BUILTIN_POLICY
            .replacen(
                &format!("version = \"{}\"", builtin.version()),
                &format!("version = \"{name}\""),
                1,
            )
            .replacen(
                "effective_from = 2026-01-01",
                &format!("effective_from = {effective_from}"),
                1,
            );
        let compiled = CompiledPolicy::compile(&source).unwrap();
        assert_eq!(
            compiled.version(),
            name,
            "the test renames the built-in file"
        );
        StoredPolicy {
            policy: NewPolicy {
                version: name.to_owned(),
                effective_from_micros: compiled.effective_from_micros(),
                description: String::new(),
                source,
            },
            applied_at_micros: 0,
            revision: Revision::new(1),
        }
    }

    #[test]
    fn the_version_in_force_is_the_latest_effective() {
        let policies = Policies::builtin();
        let builtin = CompiledPolicy::builtin().effective_from_micros();
        assert_eq!(policies.in_force(builtin).version(), "2026-01-01");
        let june = version("2026-06-01", "2026-06-01");
        let december = version("2026-12-01", "2026-12-01T12:00:00Z");
        let (june_at, december_at) = (
            june.policy.effective_from_micros,
            december.policy.effective_from_micros,
        );
        policies.install(&[december, june]).unwrap();
        let names: Vec<&str> = policies
            .all()
            .iter()
            .map(|policy| policy.version())
            .collect();
        assert_eq!(names, ["2026-01-01", "2026-06-01", "2026-12-01"]);
        assert_eq!(policies.in_force(builtin - 1).version(), "2026-01-01");
        assert_eq!(policies.in_force(june_at - 1).version(), "2026-01-01");
        assert_eq!(policies.in_force(june_at).version(), "2026-06-01");
        assert_eq!(policies.in_force(december_at - 1).version(), "2026-06-01");
        assert_eq!(policies.in_force(december_at).version(), "2026-12-01");
        assert_eq!(policies.in_force(i64::MAX).version(), "2026-12-01");
        assert_eq!(policies.first_effective_micros(), builtin);
        assert!(policies.get("2026-06-01").is_some());
        assert_eq!(policies.next_effective_after(builtin), Some(june_at));
        assert_eq!(policies.next_effective_after(june_at - 1), Some(june_at));
        assert_eq!(policies.next_effective_after(june_at), Some(december_at));
        assert_eq!(policies.next_effective_after(december_at), None);
    }

    #[test]
    fn a_stored_version_without_declarations_still_loads() {
        let policies = Policies::builtin();
        let mut june = version("2026-06-01", "2026-06-01");
        june.policy.source = june
            .policy
            .source
            .replacen("allow = [\"SERVICE_DELIVERY\"]\n", "", 1);
        assert!(
            CompiledPolicy::compile(&june.policy.source)
                .unwrap_err()
                .is_undeclared_allow()
        );
        policies.install(std::slice::from_ref(&june)).unwrap();
        let loaded = policies.get("2026-06-01").unwrap();
        assert_eq!(
            loaded
                .degraded(crate::policy::Purpose::ServiceDelivery)
                .decision,
            crate::policy::Decision::Allow
        );
        // Any other fault still stops the start.
        let mut broken = version("2026-07-01", "2026-07-01");
        broken.policy.source = broken.policy.source.replacen("[rules.G1]", "[rules.G0]", 1);
        let error = policies.install(&[june, broken]).unwrap_err();
        assert!(matches!(error, InstallError::Invalid { .. }), "{error}");
    }

    #[test]
    fn a_version_is_compiled_once_and_a_bad_set_changes_nothing() {
        let policies = Policies::builtin();
        let june = version("2026-06-01", "2026-06-01");
        policies.install(std::slice::from_ref(&june)).unwrap();
        let first = policies.get("2026-06-01").unwrap();
        policies.install(std::slice::from_ref(&june)).unwrap();
        assert!(std::ptr::eq(first, policies.get("2026-06-01").unwrap()));

        let mut misnamed = version("2026-07-01", "2026-07-01");
        misnamed.policy.version = "2026-08-01".to_owned();
        let error = policies.install(&[june.clone(), misnamed]).unwrap_err();
        assert!(matches!(error, InstallError::Misnamed { .. }), "{error}");
        let twin = version("2026-06-02", "2026-06-01");
        let error = policies.install(&[june, twin]).unwrap_err();
        assert!(
            matches!(error, InstallError::SameEffectiveDate { .. }),
            "{error}"
        );
        let names: Vec<&str> = policies
            .all()
            .iter()
            .map(|policy| policy.version())
            .collect();
        assert_eq!(names, ["2026-01-01", "2026-06-01"]);
    }
}
