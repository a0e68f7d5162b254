//! The sysctl write policy: rules from the config file, checked for sense
//! and compiled into the kernel's rule table. Off unless enabled.
//!
//! ```toml
//! [sysctl_policy]
//! enabled = true
//!
//! [[sysctl_policy.rules]]
//! action = "allow"            # allow | deny; the first matching rule decides
//! sysctl = "net.ipv4.conf.*.forwarding"   # dotted name, `*` matches any run
//! netns = "other"             # host | other | any (default any)
//! comm = "runc:[2:INIT]"      # optional: only writes by this thread name
//! ```

use nstrail_abi::{
    sysctl::{netns_scope, rule_action, SysctlRule, MAX_SYSCTL_RULES, SYSCTL_NAME_LEN},
    TASK_COMM_LEN,
};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    #[serde(default)]
    enabled: bool,
    #[serde(default)]
    rules: Vec<toml::Spanned<RuleSpec>>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    #[default]
    Any,
    Host,
    Other,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    action: Action,
    sysctl: String,
    #[serde(default)]
    netns: Scope,
    #[serde(default)]
    comm: Option<String>,
}

/// A checked rule, as the user wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub action: Action,
    /// Dotted glob, as in the config.
    pub sysctl: String,
    pub netns: Scope,
    pub comm: Option<String>,
}

/// The enabled rules, in order (empty when the policy is off).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SysctlPolicy {
    pub rules: Vec<Rule>,
}

/// sysctl(8) writes names with dots and turns dots inside a component (an
/// interface called `eth0.1`) into slashes; the kernel names files with
/// slashes. Swapping the two converts either way.
pub fn swap_dots_and_slashes(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            '.' => '/',
            '/' => '.',
            c => c,
        })
        .collect()
}

/// A rule that makes no sense, and where in the config text it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// Byte offset in the config text (0 when it is about the whole section).
    pub at: usize,
    pub message: String,
}

impl SysctlPolicy {
    pub fn compile(section: &PolicySection) -> Result<Self, PolicyError> {
        if section.rules.len() > MAX_SYSCTL_RULES as usize {
            let message =
                format!("sysctl_policy has {} rules; at most {MAX_SYSCTL_RULES} are supported", section.rules.len());
            return Err(PolicyError { at: section.rules[MAX_SYSCTL_RULES as usize].span().start, message });
        }
        let mut rules = Vec::new();
        for spanned in &section.rules {
            let at = spanned.span().start;
            let spec = spanned.get_ref();
            let reject = |why: String| PolicyError { at, message: format!("sysctl_policy rule: {why}") };
            if spec.sysctl.is_empty() {
                return Err(reject("`sysctl` is empty; use \"*\" to match every sysctl".into()));
            }
            if spec.sysctl.len() >= SYSCTL_NAME_LEN {
                return Err(reject(format!(
                    "`sysctl` is {} bytes; at most {} fit",
                    spec.sysctl.len(),
                    SYSCTL_NAME_LEN - 1
                )));
            }
            if let Some(bad) = spec.sysctl.chars().find(|c| c.is_whitespace() || c.is_control()) {
                return Err(reject(format!("`sysctl` contains {bad:?}; names have no spaces or control characters")));
            }
            if let Some(comm) = &spec.comm {
                if comm.is_empty() || comm.len() >= TASK_COMM_LEN {
                    return Err(reject(format!(
                        "`comm` {comm:?} must be 1 to {} bytes (the kernel keeps that much of a thread name)",
                        TASK_COMM_LEN - 1
                    )));
                }
            }
            rules.push(Rule {
                action: spec.action,
                sysctl: spec.sysctl.clone(),
                netns: spec.netns,
                comm: spec.comm.clone(),
            });
        }
        if !section.enabled {
            if !rules.is_empty() {
                log::info!("sysctl_policy has {} rules but is not enabled (enabled = true turns it on)", rules.len());
            }
            rules.clear();
        }
        Ok(Self { rules })
    }

    pub fn needs_host_netns(&self) -> bool {
        self.rules.iter().any(|r| r.netns != Scope::Any)
    }

    /// The kernel's rule table: the rules in order, then empty slots.
    pub fn kernel_rules(&self) -> Vec<SysctlRule> {
        self.rules
            .iter()
            .map(|rule| {
                let mut out = SysctlRule::empty();
                out.action = match rule.action {
                    Action::Allow => rule_action::ALLOW,
                    Action::Deny => rule_action::DENY,
                };
                out.netns_scope = match rule.netns {
                    Scope::Any => netns_scope::ANY,
                    Scope::Host => netns_scope::HOST,
                    Scope::Other => netns_scope::OTHER,
                };
                let pattern = swap_dots_and_slashes(&rule.sysctl);
                out.pattern[..pattern.len()].copy_from_slice(pattern.as_bytes());
                out.pattern_len = pattern.len() as u32;
                if let Some(comm) = &rule.comm {
                    out.comm[..comm.len()].copy_from_slice(comm.as_bytes());
                    out.comm_len = comm.len() as u32;
                }
                out
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct File {
        sysctl_policy: PolicySection,
    }

    fn compile(text: &str) -> Result<SysctlPolicy, PolicyError> {
        SysctlPolicy::compile(&toml::from_str::<File>(text).expect("valid TOML").sysctl_policy)
    }

    fn line_of(text: &str, err: PolicyError) -> (usize, String) {
        (text[..err.at].matches('\n').count() + 1, err.message)
    }

    const EXAMPLE: &str = r#"
[sysctl_policy]
enabled = true

[[sysctl_policy.rules]]
action = "allow"
sysctl = "net.ipv4.conf.*.forwarding"
comm = "runc:[2:INIT]"

[[sysctl_policy.rules]]
action = "deny"
sysctl = "net.*"
netns = "host"
"#;

    #[test]
    fn compiles_rules_in_order() {
        let policy = compile(EXAMPLE).unwrap();
        assert_eq!(policy.rules.len(), 2);
        assert!(policy.needs_host_netns());
        let kernel = policy.kernel_rules();
        assert_eq!(kernel[0].action, rule_action::ALLOW);
        assert_eq!(&kernel[0].pattern[..kernel[0].pattern_len as usize], b"net/ipv4/conf/*/forwarding");
        assert_eq!(&kernel[0].comm[..kernel[0].comm_len as usize], b"runc:[2:INIT]");
        assert_eq!(
            (kernel[1].action, kernel[1].netns_scope, kernel[1].comm_len),
            (rule_action::DENY, netns_scope::HOST, 0)
        );
    }

    #[test]
    fn a_disabled_policy_has_no_rules() {
        let text = EXAMPLE.replace("enabled = true", "enabled = false");
        assert!(compile(&text).unwrap().rules.is_empty());
    }

    #[test]
    fn bad_rules_name_their_line() {
        let text = "[sysctl_policy]\nenabled = true\n[[sysctl_policy.rules]]\naction = \"deny\"\nsysctl = \"\"\n";
        assert_eq!(
            line_of(text, compile(text).unwrap_err()),
            (3, "sysctl_policy rule: `sysctl` is empty; use \"*\" to match every sysctl".to_owned())
        );
        let text = "[sysctl_policy]\n[[sysctl_policy.rules]]\naction = \"deny\"\nsysctl = \"a\"\ncomm = \"a-very-long-thread-name\"\n";
        let (line, message) = line_of(text, compile(text).unwrap_err());
        assert!(line == 2 && message.starts_with("sysctl_policy rule: `comm`"), "{line}: {message}");
    }

    #[test]
    fn dots_and_slashes_swap_like_sysctl8() {
        assert_eq!(swap_dots_and_slashes("net.ipv4.conf.eth0/1.forwarding"), "net/ipv4/conf/eth0.1/forwarding");
        assert_eq!(swap_dots_and_slashes("net/ipv4/ip_forward"), "net.ipv4.ip_forward");
    }
}
