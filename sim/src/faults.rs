//! Fault injection: what can be armed on a rack, how an armed fault is consumed, and how
//! promote-time faults turn into the per-pod `PodFaults` that pods and the router act on.

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::state::{PodFaults, RackState};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    BuildFail,
    NeverReady,
    Unhealthy,
    ErrorLogs,
    SlowHealth,
    CrashAfter,
    Transient,
}

pub const ALL_KINDS: &[FaultKind] = &[
    FaultKind::BuildFail,
    FaultKind::NeverReady,
    FaultKind::Unhealthy,
    FaultKind::ErrorLogs,
    FaultKind::SlowHealth,
    FaultKind::CrashAfter,
    FaultKind::Transient,
];

impl FaultKind {
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::BuildFail => "build-fail",
            FaultKind::NeverReady => "never-ready",
            FaultKind::Unhealthy => "unhealthy",
            FaultKind::ErrorLogs => "error-logs",
            FaultKind::SlowHealth => "slow-health",
            FaultKind::CrashAfter => "crash-after",
            FaultKind::Transient => "transient",
        }
    }

    pub fn parse(text: &str) -> Result<FaultKind> {
        ALL_KINDS
            .iter()
            .copied()
            .find(|k| k.name() == text)
            .ok_or_else(|| {
                let names: Vec<&str> = ALL_KINDS.iter().map(|k| k.name()).collect();
                crate::fail!(
                    "unknown fault kind: {text} (use one of: {})",
                    names.join(", ")
                )
            })
    }

    /// The value used when `--value` is not given, for kinds that take one.
    pub fn default_value(self) -> Option<u64> {
        match self {
            FaultKind::SlowHealth => Some(2000),
            FaultKind::CrashAfter => Some(2),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    pub kind: FaultKind,
    #[serde(default)]
    pub value: Option<u64>,
}

/// Arms `kind` (replacing an armed fault of the same kind).
pub fn arm(state: &mut RackState, kind: FaultKind, value: Option<u64>) {
    state.faults.retain(|f| f.kind != kind);
    state.faults.push(Fault {
        kind,
        value: value.or(kind.default_value()),
    });
    state.faults.sort_by_key(|f| f.kind);
}

/// Removes one kind, or every fault when `kind` is `None`.
pub fn clear(state: &mut RackState, kind: Option<FaultKind>) {
    state.faults.retain(|f| kind.is_some_and(|k| k != f.kind));
}

/// Disarms and returns the fault of `kind`, if armed.
pub fn take(state: &mut RackState, kind: FaultKind) -> Option<Fault> {
    let index = state.faults.iter().position(|f| f.kind == kind)?;
    Some(state.faults.remove(index))
}

/// Consumes every promote-time fault into the faults the new release's pods will carry.
pub fn take_promote_faults(state: &mut RackState) -> PodFaults {
    let mut pod = PodFaults::default();
    if take(state, FaultKind::NeverReady).is_some() {
        pod.never_ready = true;
    }
    if take(state, FaultKind::Unhealthy).is_some() {
        pod.unhealthy = true;
    }
    if take(state, FaultKind::ErrorLogs).is_some() {
        pod.error_logs = true;
    }
    if let Some(f) = take(state, FaultKind::SlowHealth) {
        pod.slow_ms = f.value.unwrap_or(2000);
    }
    if let Some(f) = take(state, FaultKind::CrashAfter) {
        pod.crash_after_s = Some(f.value.unwrap_or(2));
    }
    pod
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn rack() -> RackState {
        RackState {
            name: "r".into(),
            region: "x".into(),
            created_ms: 0,
            faults: Vec::new(),
            apps: BTreeMap::new(),
        }
    }

    #[test]
    fn promote_faults_are_consumed_once_and_others_stay_armed() {
        let mut state = rack();
        arm(&mut state, FaultKind::SlowHealth, None);
        arm(&mut state, FaultKind::CrashAfter, Some(7));
        arm(&mut state, FaultKind::Transient, None);
        let pod = take_promote_faults(&mut state);
        assert_eq!(pod.slow_ms, 2000);
        assert_eq!(pod.crash_after_s, Some(7));
        assert_eq!(
            state.faults,
            vec![Fault {
                kind: FaultKind::Transient,
                value: None
            }]
        );
        assert_eq!(take_promote_faults(&mut state), PodFaults::default());
    }

    #[test]
    fn clear_one_kind_or_all() {
        let mut state = rack();
        arm(&mut state, FaultKind::BuildFail, None);
        arm(&mut state, FaultKind::Unhealthy, None);
        clear(&mut state, Some(FaultKind::BuildFail));
        assert_eq!(state.faults.len(), 1);
        clear(&mut state, None);
        assert!(state.faults.is_empty());
    }

    #[test]
    fn unknown_kind_lists_the_valid_ones() {
        let err = FaultKind::parse("meltdown").unwrap_err().0;
        assert!(err.starts_with("unknown fault kind: meltdown (use one of: build-fail"));
    }
}
