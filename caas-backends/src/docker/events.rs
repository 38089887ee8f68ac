//! Container events from the Engine's `/events` stream, reduced to what the host agent acts
//! on: a managed container started, died (deregister it at once, don't wait for the health
//! checker to notice) or was OOM-killed.

use std::collections::HashMap;

use bollard::models::EventMessage;

use super::spec::{LABEL_APP, LABEL_INSTANCE, LABEL_VERSION};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// The container started.
    Start,
    /// The container's process ended (crash, kill, stop, exit).
    Die {
        /// The process exit code, when the Engine gave one.
        exit_code: Option<i64>,
    },
    /// The kernel OOM killer hit the container (a `die` follows).
    Oom,
}

/// One event about a managed container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerEvent {
    /// Full container id.
    pub id: String,
    /// What happened.
    pub kind: EventKind,
    /// The container's labels and the Engine's attributes (`name`, `image`, `exitCode`).
    pub attributes: HashMap<String, String>,
    /// Event time, nanoseconds since the epoch (0 if absent).
    pub time_nano: i64,
}

impl ContainerEvent {
    /// The `caas.app` label.
    pub fn app(&self) -> Option<&str> {
        self.attributes.get(LABEL_APP).map(String::as_str)
    }

    /// The `caas.version` label.
    pub fn version(&self) -> Option<&str> {
        self.attributes.get(LABEL_VERSION).map(String::as_str)
    }

    /// The `caas.instance` label.
    pub fn instance(&self) -> Option<&str> {
        self.attributes.get(LABEL_INSTANCE).map(String::as_str)
    }

    /// Maps an Engine event; `None` for actions this module does not report.
    pub(crate) fn from_message(m: EventMessage) -> Option<Self> {
        let actor = m.actor?;
        let attributes = actor.attributes.unwrap_or_default();
        let kind = match m.action.as_deref()? {
            "start" => EventKind::Start,
            "die" => EventKind::Die {
                exit_code: attributes.get("exitCode").and_then(|c| c.parse().ok()),
            },
            "oom" => EventKind::Oom,
            _ => return None,
        };
        Some(Self {
            id: actor.id?,
            kind,
            attributes,
            time_nano: m.time_nano.unwrap_or(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use bollard::models::EventActor;

    use super::*;

    #[test]
    fn die_carries_exit_code_and_labels() {
        let m = EventMessage {
            action: Some("die".into()),
            actor: Some(EventActor {
                id: Some("abc".into()),
                attributes: Some(HashMap::from([
                    ("exitCode".into(), "137".into()),
                    ("caas.app".into(), "hello".into()),
                    ("caas.instance".into(), "i1".into()),
                ])),
            }),
            ..Default::default()
        };
        let e = ContainerEvent::from_message(m).unwrap();
        assert_eq!(
            e.kind,
            EventKind::Die {
                exit_code: Some(137)
            }
        );
        assert_eq!(e.app(), Some("hello"));
        assert_eq!(e.instance(), Some("i1"));
        let other = EventMessage {
            action: Some("attach".into()),
            actor: Some(EventActor::default()),
            ..Default::default()
        };
        assert!(ContainerEvent::from_message(other).is_none());
    }
}
